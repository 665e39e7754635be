"""The run directory lock: one writer per run dir, across processes, process groups and a
bubblewrap sandbox's mount and pid namespaces; the kernel frees it when the holder dies."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from conftest import cli, set_args, tiny_overrides

from pretrainlab.errors import UserError
from pretrainlab.train.rundir_lock import LOCK_FILE, RunDirLocked, acquire, lock_holder

# A separate process that takes the lock, says so, and holds it until killed.
HOLDER = ("import sys, time; from pretrainlab.train.rundir_lock import acquire; "
          "acquire(sys.argv[1]); print('locked', flush=True); time.sleep(300)")


def hold(run_dir, wrap=()):
    proc = subprocess.Popen([*wrap, sys.executable, "-c", HOLDER, str(run_dir)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    line = proc.stdout.readline()
    assert line.strip() == "locked", proc.communicate()[1][-2000:]
    return proc


def kill(proc):
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def test_holder_is_named_while_alive_and_the_lock_dies_with_it(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    assert lock_holder(run) is None  # no lock file yet
    proc = hold(run)
    try:
        holder = lock_holder(run)
        assert holder is not None
        assert holder.pid == proc.pid and holder.pgid == proc.pid  # its own session: pgid = pid, so killpg reaches it
        assert holder.signalable and holder.started_at
        with pytest.raises(RunDirLocked, match=f"in use by pid {proc.pid}") as e:
            acquire(run)
        assert isinstance(e.value, UserError) and "\n" not in str(e.value) and e.value.holder == holder
        assert lock_holder(run) == holder  # probing takes nothing away from the holder
    finally:
        kill(proc)
    # SIGKILL gave no chance to clean up: the file stays, the lock does not
    assert (run / LOCK_FILE).exists() and json.loads((run / LOCK_FILE).read_text())["pid"] == proc.pid
    assert lock_holder(run) is None
    acquire(run).release()  # free for the next run


def test_lock_holder_sees_the_lock_of_another_open_file_in_this_process(tmp_path):
    """flock belongs to the open file, so even this process's own probe sees its lock as held:
    the probe answers "is someone writing here", whoever that is."""
    with acquire(tmp_path) as lock:
        holder = lock_holder(tmp_path)
        assert holder is not None and holder.pid == os.getpid()
    assert lock._fd is None and lock_holder(tmp_path) is None


def test_release_removes_exactly_the_directories_it_created(tmp_path):
    existing = tmp_path / "existing"
    existing.mkdir()
    lock = acquire(existing / "a" / "b" / "run", create=True)
    assert (existing / "a" / "b" / "run" / LOCK_FILE).is_file()
    lock.release()
    assert existing.is_dir() and list(existing.iterdir()) == []  # a, b and run were ours; existing was not
    # a run directory with content keeps everything, the lock file included
    with acquire(tmp_path / "kept", create=True):
        (tmp_path / "kept" / "recipe.json").write_text("{}")
    assert sorted(p.name for p in (tmp_path / "kept").iterdir()) == [LOCK_FILE, "recipe.json"]
    # a pre-existing empty directory stays, without the lock file
    lock = acquire(existing)
    lock.release()
    assert existing.is_dir() and list(existing.iterdir()) == []


def test_an_uncreatable_lock_is_a_user_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")  # a path under a regular file can never be created, even by root
    with pytest.raises(UserError, match="cannot create its lock file"):
        acquire(blocker / "run", create=True)
    assert blocker.read_text() == "x"


def _bwrap_works() -> bool:
    bwrap = shutil.which("bwrap")
    return bool(bwrap) and subprocess.run([bwrap, "--dev-bind", "/", "/", "--unshare-pid", "--proc", "/proc", "true"],
                                          capture_output=True).returncode == 0


@pytest.mark.skipif(not _bwrap_works(), reason="bubblewrap is missing or cannot create namespaces here")
def test_lock_held_inside_a_sandbox_is_seen_outside_it(tmp_path):
    """The run dir bind-mounted into bwrap (own mount and pid namespaces): the flock is on the
    same inode, so the lab outside sees it held; the pid inside means nothing out here, and
    LockHolder says so instead of guessing from pid liveness."""
    run = tmp_path / "run"
    run.mkdir()
    wrap = ["bwrap", "--ro-bind", "/", "/", "--tmpfs", "/tmp", "--bind", str(run), str(run), "--dev", "/dev", "--proc", "/proc",
            "--unshare-pid", "--die-with-parent", "--"]
    proc = hold(run, wrap)
    try:
        holder = lock_holder(run)
        assert holder is not None and not holder.signalable
        assert holder.pid != proc.pid  # the pid in the sandbox's namespace (bwrap's child there is pid 2)
        with pytest.raises(RunDirLocked, match=f"in use by pid {holder.pid} of another pid namespace") as e:
            acquire(run)
        assert "kill" not in str(e.value)  # that pid is not this namespace's to signal
    finally:
        kill(proc)
    deadline = time.time() + 10  # bwrap's wait returned; the sandboxed process dies a moment later, and its lock with it
    while lock_holder(run) is not None:
        assert time.time() < deadline
        time.sleep(0.02)


def test_two_trainers_never_share_one_out(corpus_dir, tmp_path):
    run = tmp_path / "run"
    # a budget it never reaches: SIGTERM ends it below
    overrides = set_args(tiny_overrides(corpus_dir, **{"budget.tokens": 1024 * 100_000, "train.ckpt_every": 5}))
    first = subprocess.Popen([sys.executable, "-m", "pretrainlab", "train", "--recipe", "tiny-cpu", *overrides, "--out", str(run)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.time() + 120
        while not (run / "ckpt").is_dir():  # well into training: recipe, metrics and a checkpoint written
            assert first.poll() is None, first.communicate()[1][-2000:]
            assert time.time() < deadline
            time.sleep(0.05)
        holder = lock_holder(run)
        assert holder is not None and holder.pid == first.pid and holder.pgid == first.pid
        for args in (["--recipe", "tiny-cpu", *overrides, "--out", str(run)], ["--resume", str(run)]):
            res = cli("train", *args)
            assert res.returncode == 2, res.stderr
            assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
            assert f"in use by pid {first.pid}" in res.stderr and "kill -TERM" in res.stderr
        assert first.poll() is None  # the refused processes did not disturb it
    finally:
        os.killpg(first.pid, signal.SIGTERM)  # the trainer checkpoints and exits as preempted
        first.communicate(timeout=120)
    assert json.loads((run / "summary.json").read_text())["status"] == "preempted"
    assert lock_holder(run) is None
    assert [r["step"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["type"] == "train"] == \
        list(range(1, json.loads((run / "summary.json").read_text())["steps"] + 1))  # one writer: each step once


def test_a_failed_start_leaves_no_run_directory(corpus_dir, tmp_path):
    out = tmp_path / "new" / "run"
    res = cli("train", "--recipe", "tiny-cpu", *set_args(tiny_overrides(corpus_dir, **{"train.batch_tokens": 1000})), "--out", str(out))
    assert res.returncode == 2 and "batch_tokens" in res.stderr
    assert not (tmp_path / "new").exists()
