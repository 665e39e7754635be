"""Trainers of the lab's own code forked from a warm host (runners/warm.py): the same run as a fresh trainer's, in the
same caps, stopped and killed as a fresh one is; a code experiment never goes there; the host goes when idle."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import tiny_overrides

from pretrainlab.runners import Job, LocalRunner
from pretrainlab.runners import warm
from pretrainlab.runners.limits import RunCap
from pretrainlab.runners.sandbox import Sandbox

SANDBOX = Sandbox.detect(warn=False)
PROBE = RunCap.create("probe", 256 << 20, 64)
PROBE.remove()
needs_sandbox = pytest.mark.skipif(not SANDBOX.active, reason=f"no sandbox here: {SANDBOX.reason}")
needs_cgroup = pytest.mark.skipif(not PROBE.version, reason=f"no cgroup can be made here: {PROBE.why}")
FORKED = re.compile(r"trainer forked from the warm host \(pid (\d+)\)")


def _run_all(runner: LocalRunner, jobs: list[Job]) -> dict:
    results = {}
    todo = list(jobs)
    deadline = time.time() + 240
    while (todo or runner.busy()) and time.time() < deadline:
        while todo and runner.free_slots():
            runner.submit(todo.pop(0))
        for r in runner.poll():
            results[r.job.key] = r
        runner.sleep(0.2)
    return results


def _rows(run_dir: Path) -> list[dict]:
    keep = ("type", "step", "tokens", "loss", "lr", "grad_norm", "val_bpb")
    return [{k: v for k, v in json.loads(line).items() if k in keep} for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _forked_pid(log: Path, timeout: float = 60) -> int:
    deadline = time.time() + timeout
    while time.time() < deadline:
        m = FORKED.search(log.read_text(errors="replace")) if log.exists() else None
        if m:
            return int(m.group(1))
        time.sleep(0.05)
    raise AssertionError(f"no forked trainer in {log}: {log.read_text(errors='replace') if log.exists() else ''}")


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def test_a_forked_trainer_trains_and_is_scored_as_a_fresh_one(corpus_dir, tmp_path):
    results = {}
    for mode in ("fresh", "warm"):
        runner = LocalRunner(num_slots=2, log_dir=tmp_path / mode / "logs", warm=mode == "warm")
        (tmp_path / mode / "scores").mkdir(parents=True)
        jobs = [Job(f"r{seed}", "tiny-cpu", tmp_path / mode / f"r{seed}", tiny_overrides(corpus_dir, seed=seed, **{"budget.tokens": 4096}),
                    timeout_s=120, score_path=tmp_path / mode / "scores" / f"r{seed}.json") for seed in range(2)]
        results[mode] = _run_all(runner, jobs)
    for seed in range(2):
        fresh, forked = results["fresh"][f"r{seed}"], results["warm"][f"r{seed}"]
        assert fresh.status == forked.status == "ok", (fresh.stderr_tail, forked.stderr_tail)
        assert FORKED.search(forked.stderr_tail) and not FORKED.search(fresh.stderr_tail)
        # the same steps, losses, gradients and evaluations to the last bit; the lab's score (its windows' secret order
        # sums them differently each time) to float rounding
        assert _rows(tmp_path / "warm" / f"r{seed}") == _rows(tmp_path / "fresh" / f"r{seed}")
        assert forked.summary["val_bpb"] == pytest.approx(fresh.summary["val_bpb"], abs=1e-9)
        assert forked.summary["scored_by"] == "lab" and forked.summary["lab_score"]["probes"]["in_trainer"]
        provenance = json.loads((tmp_path / "warm" / f"r{seed}" / "provenance.json").read_text())
        assert provenance["code_patched"] is False
    pids = {int(FORKED.search(results["warm"][f"r{s}"].stderr_tail).group(1)) for s in range(2)}
    assert len(pids) == 2  # a process each


@needs_sandbox
@needs_cgroup
def test_a_forked_trainer_is_capped_stopped_and_killed_as_a_fresh_one(corpus_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("PRETRAINLAB_TEST_SECRET", "hunter2")  # the job's environment, which no sandbox gets
    runner = LocalRunner(num_slots=2, log_dir=tmp_path / "logs")
    runner.run_disk = "1G"
    long = tiny_overrides(corpus_dir, **{"budget.tokens": 10**9})
    try:
        runner.submit(Job("a", "tiny-cpu", tmp_path / "a", long))
        runner.submit(Job("b", "tiny-cpu", tmp_path / "b", long))
        a, b = _forked_pid(tmp_path / "logs" / "a.stderr"), _forked_pid(tmp_path / "logs" / "b.stderr")
        while not ((tmp_path / "a" / "metrics.jsonl").exists() and (tmp_path / "b" / "metrics.jsonl").exists()):
            time.sleep(0.05)
        # in its own cgroup (the run's memory and task caps), with the disk cap's limits, and holding nothing of the host's
        # or of the other run's: its stdio, its files, and its one link to its job
        cgroups = Path(f"/proc/{a}/cgroup").read_text()
        assert re.search(r"memory:.*pretrainlab-\d+-a-train", cgroups) and re.search(r"pids:.*pretrainlab-\d+-a-train", cgroups)
        limits = Path(f"/proc/{a}/limits").read_text()
        assert re.search(r"Max file size\s+1073741824\s+1073741824", limits) and re.search(r"Max open files\s+4096\s+4096", limits)
        sockets = [os.readlink(f"/proc/{a}/fd/{fd}") for fd in os.listdir(f"/proc/{a}/fd")]
        assert sum(s.startswith("socket:") for s in sockets) == 1, sockets
        assert os.readlink(f"/proc/{a}/fd/2") == str(tmp_path / "logs" / "a.stderr")
        assert os.readlink(f"/proc/{a}/cwd") == "/tmp" and Path(f"/proc/{a}/comm").read_text().strip() == "pretrainlab-run"
        # (what /proc shows is the host's environment, scrubbed as every sandbox's is; the trainer's own is its job's)
        env = Path(f"/proc/{a}/environ").read_bytes().split(b"\0")
        assert b"PRETRAINLAB_SANDBOX=1" in env and not any(b"SECRET" in e or b"API_KEY" in e for e in env)
        # a stop: SIGTERM by its pid, a checkpoint, 'stopped'
        runner.stop("a")
        (stopped,) = runner.wait()
        assert stopped.job.key == "a" and stopped.status == "stopped" and stopped.summary["status"] == "preempted"
        assert list((tmp_path / "a" / "ckpt").glob("step_*.pt")) and not _alive(a)
        # its job killed outright (SIGKILL, as after a stop's grace period): the trainer goes with it, even one stopped
        # (SIGSTOP) that can run nothing of its own
        os.kill(b, signal.SIGSTOP)
        runner._kill(runner._running.pop("b"))
        deadline = time.time() + 20
        while _alive(b) and time.time() < deadline:
            time.sleep(0.05)
        assert not _alive(b)
    finally:  # (a failed assertion leaves no trainer running)
        runner.shutdown()


def test_a_host_is_for_the_files_code_and_load_time_environment_its_runs_have(tmp_path):
    (tmp_path / "shard.bin").write_bytes(b"x" * 10)
    (tmp_path / "src").mkdir()
    (tmp_path / "runs").mkdir()
    args = dict(code_src=tmp_path / "src", code_digest="abc", read_only=[tmp_path / "shard.bin"], writable=[tmp_path / "runs"],
                env={"PATH": "/usr/bin", "OMP_NUM_THREADS": "2", "PRETRAINLAB_MEMORY_CAP_MB": "512"}, sandboxed=True)
    key = warm.host_key(**args)
    assert warm.host_key(**{**args, "env": {**args["env"], "OMP_NUM_THREADS": "1", "PRETRAINLAB_MEMORY_CAP_MB": "9"}}) == key  # per run
    assert warm.host_key(**{**args, "env": {**args["env"], "PYTHONHASHSEED": "0"}}) != key  # read as the interpreter starts
    assert warm.host_key(**{**args, "code_digest": "abd"}) != key  # the lab's code edited: a host that imports it anew
    replaced = tmp_path / "new.bin"
    replaced.write_bytes(b"y" * 10)
    os.replace(replaced, tmp_path / "shard.bin")  # a corpus rebuilt (published by a rename): the old host keeps the old file
    assert warm.host_key(**args) != key
    key = warm.host_key(**args)
    # a campaign's folder removed and made again: the old host's bind is of the old one. The bind keeps the old folder's
    # inode in use, as the descriptor does here; with nothing holding it, the new folder could take its number
    held = os.open(tmp_path / "runs", os.O_RDONLY)
    try:
        (tmp_path / "runs").rmdir()
        (tmp_path / "runs").mkdir()
        assert warm.host_key(**args) != key
    finally:
        os.close(held)
    key = warm.host_key(**args)
    (tmp_path / "runs" / "scores").mkdir()  # a folder its runs must not see, made since: a host that hides it
    assert warm.host_key(**args) != key


@needs_sandbox
def test_the_hosts_folder_is_outside_every_sandbox(corpus_dir, tmp_path):
    (tmp_path / "scores").mkdir()
    (tmp_path / "scores" / "x.json").write_text("{}")  # a campaign's verdicts, beside its runs
    runner = LocalRunner(num_slots=1, log_dir=tmp_path / "logs")
    runner.submit(Job("a", "tiny-cpu", tmp_path / "a", tiny_overrides(corpus_dir, **{"budget.tokens": 10**9})))
    pid = _forked_pid(tmp_path / "logs" / "a.stderr")
    try:
        inside = Path(f"/proc/{pid}/root")
        os.listdir(inside)
    except PermissionError:
        pytest.skip("this user cannot look into another process's mounts")
    try:
        assert (inside / "tmp").is_dir() and not (inside / str(warm.base_dir()).lstrip("/")).exists()
        assert not list((inside / "tmp").glob("pretrainlab-warm-*"))
        # the campaign's folder is the runs', but its scores and job logs are not: empty where a run looks
        seen = inside / str(tmp_path).lstrip("/")
        assert (seen / "a").is_dir() and list((seen / "scores").iterdir()) == [] and list((seen / "logs").iterdir()) == []
    finally:
        runner.shutdown()


def test_a_code_experiments_run_is_never_forked(corpus_dir, tmp_path):
    import shutil

    from pretrainlab.runners.base import PACKAGE_SRC

    tree = tmp_path / "tree"
    shutil.copytree(PACKAGE_SRC / "pretrainlab", tree / "pretrainlab", ignore=shutil.ignore_patterns("__pycache__"))
    runner = LocalRunner(num_slots=1, log_dir=tmp_path / "logs")
    (tmp_path / "scores").mkdir()
    result = _run_all(runner, [Job("p", "tiny-cpu", tmp_path / "p", tiny_overrides(corpus_dir, **{"budget.tokens": 2048}),
                                   pythonpath=str(tree), score_path=tmp_path / "scores" / "p.json")])["p"]
    assert result.status == "ok", result.stderr_tail
    assert not FORKED.search(result.stderr_tail) and "warm" not in result.stderr_tail


@needs_sandbox
def test_the_host_goes_when_idle_and_a_killed_one_is_replaced(corpus_dir, tmp_path):
    # the host itself, unsandboxed, given its socket and lock, told to go after a second idle
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(tmp_path / "sock"))
    listener.listen(8)
    lock = os.open(tmp_path / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    host = subprocess.Popen([sys.executable, "-m", "pretrainlab.runners.warm", str(listener.fileno()), str(lock), "1"],
                            stderr=subprocess.PIPE, text=True, pass_fds=(listener.fileno(), lock))
    listener.close()
    os.close(lock)
    probe = socket.socket(socket.AF_UNIX)
    probe.connect(str(tmp_path / "sock"))
    request = json.dumps({"argv": ["data", "prepare"], "env": {}, "rlimits": {}}).encode()
    probe.sendall(len(request).to_bytes(4, "little") + request)  # not a trainer's request: dropped, and said
    probe.close()
    assert host.wait(timeout=90) == 0
    assert "a request dropped (not a trainer's request)" in host.stderr.read()
    refused = socket.socket(socket.AF_UNIX)
    with pytest.raises(ConnectionRefusedError):  # what the next job finds: a socket with no host, so it starts one
        refused.connect(str(tmp_path / "sock"))
    refused.close()
    # a campaign's host killed between its runs: the next run starts another, and is forked all the same
    runner = LocalRunner(num_slots=1, log_dir=tmp_path / "logs")
    first = _run_all(runner, [Job("one", "tiny-cpu", tmp_path / "one", tiny_overrides(corpus_dir, **{"budget.tokens": 2048}))])["one"]
    assert first.status == "ok" and FORKED.search(first.stderr_tail)
    # ours: the host (not its bwrap) whose sandbox has this test's folder writable
    ours = [pid for pid in map(int, filter(str.isdigit, os.listdir("/proc"))) if _cmdline(pid)[1:4] == ["-P", "-m", "pretrainlab.runners.warm"]
            and f"{tmp_path} {tmp_path}" in " ".join(_cmdline(int(Path(f"/proc/{pid}/stat").read_text().split()[3])))]
    assert len(ours) == 1, ours
    os.kill(ours[0], signal.SIGKILL)
    second = _run_all(runner, [Job("two", "tiny-cpu", tmp_path / "two", tiny_overrides(corpus_dir, **{"budget.tokens": 2048}))])["two"]
    assert second.status == "ok" and FORKED.search(second.stderr_tail), second.stderr_tail
