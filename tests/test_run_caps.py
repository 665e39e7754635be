"""Memory and task caps on what a run starts (runners/limits.py), attacked: a model that allocates without bound, one that
forks without bound, and one that only blows up while the lab scores it, through the real runner, sandbox and scorer."""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import tiny_overrides

from pretrainlab.doctor import diagnose
from pretrainlab.errors import UserError
from pretrainlab.research.config import CampaignConfig, LadderConfig
from pretrainlab.research.patches import apply_patch
from pretrainlab.runners import Job, JobResult, LocalRunner, limits
from pretrainlab.runners.job import EXIT_OUT_OF_DISK, EXIT_OUT_OF_MEMORY
from pretrainlab.runners.limits import RunCap, parse_memory, run_disk, run_memory

PROBE = RunCap.create("probe", 256 << 20, 64)
PROBE.remove()
needs_cgroup = pytest.mark.skipif(not PROBE.version, reason=f"no cgroup can be made here: {PROBE.why}")
WRITE = "_out = _sys.argv[_sys.argv.index('--out') + 1]\n    _chunk = b'x' * (8 << 20)"
HOG = "import numpy as np\nx = np.ones(3 << 30, dtype=np.uint8)\nprint('survived', x.sum())\n"


def _in_sandbox(code: str, code_src: Path) -> subprocess.CompletedProcess:
    """`python -c code` in the sandbox every campaign run gets (skipped where there is none)."""
    from pretrainlab.runners.sandbox import Sandbox

    box = Sandbox.detect(warn=False)
    if not box.active:
        pytest.skip(f"no sandbox here: {box.reason}")
    return subprocess.run(box.wrap([sys.executable, "-c", code], code_src=code_src), capture_output=True, text=True, timeout=60)


def _spawn(cap: RunCap, code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], preexec_fn=cap.enter, capture_output=True, text=True, timeout=120)


@needs_cgroup
def test_a_process_tree_past_its_memory_cap_is_killed_inside_it_and_the_cgroup_goes():
    cap = RunCap.create("hog", 300 << 20, 64)
    assert cap.how.startswith(f"cgroup v{cap.version}: 0.3 GiB, 64 tasks")
    # the allocating process is a child of the one entered: the whole tree is counted together
    out = _spawn(cap, f"import subprocess, sys\nsys.exit(subprocess.run([sys.executable, '-c', {HOG!r}]).returncode)")
    assert out.returncode == 256 - 9, out  # the child's -9, as its parent's exit status
    assert "survived" not in out.stdout and cap.out_of_memory()
    cap.remove()
    assert not any(d.exists() for d in cap.dirs)
    # what the kernel said stays readable once the cgroup is gone (the job reads it after removing it)
    assert cap.out_of_memory() and 250 << 20 <= cap.peak() <= 300 << 20


@needs_cgroup
def test_a_kill_for_a_limit_above_the_runs_own_is_not_its_cap():
    """A run killed because something above it ran out (the machine, a SLURM job's --mem) was killed from outside: it is
    resumed once, not recorded as past its own cap for good."""
    outer = RunCap.create("outer", 600 << 20, None)
    inner = ("import subprocess, sys\nfrom pretrainlab.runners.limits import RunCap\n"
             "cap = RunCap.create('inner', 1 << 30, 64)\n"
             f"code = subprocess.run([sys.executable, '-c', {HOG!r}], preexec_fn=cap.enter).returncode\n"
             "cap.remove()\nprint(code, cap.out_of_memory(), cap.peak() < (1 << 30))\n")
    try:
        out = _spawn(outer, inner)
    finally:
        outer.remove()
    assert out.stdout.split() == ["-9", "False", "True"], out


@needs_cgroup
def test_a_fork_bomb_stops_at_the_task_cap_and_what_it_left_is_killed():
    cap = RunCap.create("bomb", None, 40)
    bomb = ("import os, time\nn = 0\ntry:\n    for _ in range(500):\n        if os.fork() == 0:\n"
            "            os.close(1)\n            os.close(2)\n            time.sleep(60)\n"
            "            os._exit(0)\n        n += 1\nexcept OSError as e:\n    print('stopped at', n, e.errno)\n")
    out = _spawn(cap, bomb)
    assert out.returncode == 0 and out.stdout.startswith("stopped at 39 11"), out  # EAGAIN, the 40th task
    assert not cap.out_of_memory()
    left = [int(p) for p in (cap.dirs[-1] / "cgroup.procs").read_text().split()]
    assert len(left) == 39  # the children outlived their parent, still in the cap
    cap.remove()
    time.sleep(0.2)
    assert not any(os.path.exists(f"/proc/{p}/status") and "State:\tZ" not in open(f"/proc/{p}/status").read() for p in left)
    assert not any(d.exists() for d in cap.dirs)


@needs_cgroup
def test_caps_left_by_a_killed_job_are_swept_and_a_live_ones_are_not():
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    folders = [d.parent / f"{limits.PREFIX}{dead.pid}-left" for d in PROBE.dirs]
    for d in folders:
        d.mkdir()
    live = RunCap.create("live", 256 << 20, 64)
    other = RunCap.create("other", 256 << 20, 64)  # made after: sweeps what the dead pid left, not `live`
    try:
        assert not any(d.exists() for d in folders)
        assert all(d.exists() for d in live.dirs)
    finally:
        for cap in (live, other):
            cap.remove()
        for d in folders:
            if d.exists():
                d.rmdir()


def test_without_a_cgroup_each_process_is_capped_and_says_so(monkeypatch):
    monkeypatch.setattr(limits, "_where", lambda controller: None)
    cap = RunCap.create("fallback", 512 << 20, 64)
    assert cap.version == 0 and not cap.dirs
    assert cap.how == ("per process only (no writable cgroup with the memory and pids controllers here): 0.5 GiB each "
                       "(RLIMIT_DATA), no task cap")
    out = _spawn(cap, "import numpy as np\ntry:\n    np.ones(3 << 30, dtype=np.uint8)\nexcept MemoryError:\n    print('refused')\n")
    assert out.stdout.strip() == "refused", out
    assert RunCap.create("gpu", 512 << 20, 64, gpus=True).how.startswith("none (")  # a GPU driver maps memory of its own


def test_memory_settings_are_parsed_and_bad_ones_refused_in_one_line():
    assert parse_memory("8G") == 8 << 30 and parse_memory("512M") == 512 << 20 and parse_memory("1.5GiB") == 3 << 29
    assert parse_memory("off") is None and parse_memory(str(1 << 30)) == 1 << 30
    assert parse_memory("8Gi") == parse_memory("8 gb") == 8 << 30 and parse_memory("1P") == 1 << 50
    assert run_memory("auto", 0.5) == max(1 << 30, int(limits.machine_memory() * 0.9 * 0.5))
    assert run_memory("auto", 0.0) == 1 << 30  # never less than a small run needs, however many slots
    for flag, bad, why in (("memory", "8X", "is not a size"), ("memory", "10M", "is under 64M"), ("memory", "-1G", "is not a size"),
                           ("memory", "", "is not a size"), ("disk", "100M", "is under 256M, too little for a run's checkpoints"),
                           ("memory", str(1 << 64), "is more than any machine has"), ("disk", "17179869184T", "is more than")):
        with pytest.raises(UserError, match=f"^--run-{flag} '{bad}' {why}") as e:
            CampaignConfig(**{f"run_{flag}": bad})
        assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="^--run-memory '8X' is not a size"):
        LadderConfig(run_memory="8X")  # the scaling ladder takes the caps too
    assert run_disk("auto", 0.5, Path("/")) >= limits.DISK_FLOOR and run_disk("1G", 0.5, Path("/")) == 1 << 30


def _patch(body: str) -> str:
    from test_trust import hostile_import_patch

    return hostile_import_patch(body)


@needs_cgroup
def test_runs_past_their_caps_crash_with_the_reason_and_are_not_resumed(tmp_path, corpus_dir):
    """Through the real runner, sandbox and scorer, with a 1 GiB cap per run: a trainer that allocates 3 GiB, a model that
    does so only in the lab's scoring worker, a trainer that forks 5,000 processes, trainers that write past a 300 MiB
    disk cap. Each crashes with its reason; a run whose helper process alone was killed at the cap finishes and is scored
    as ever; the campaign would not resume the ones past their caps."""
    from pretrainlab.research.campaign import Campaign

    overrides = tiny_overrides(corpus_dir, **{"budget.seconds": 0, "budget.tokens": 4096})
    runner = LocalRunner(num_slots=2, log_dir=tmp_path / "logs")
    runner.run_memory, runner.run_disk = "1G", "300M"
    hog = "_np = __import__('numpy')\n_hog = _np.ones(3 << 30, dtype=_np.uint8)\n"
    patches = {"hog-train": _patch(f"if 'train' in _sys.argv:\n    {hog.replace(chr(10), chr(10) + '    ')}\n"),
               "hog-score": _patch(f"if 'train' not in _sys.argv:\n    {hog.replace(chr(10), chr(10) + '    ')}\n"),
               "bomb": _patch("if 'train' in _sys.argv:\n    _kids = [_os.fork() or _os.execv('/bin/sleep', ['sleep', '60']) "
                              "for _ in range(5000)]\n"),
               # 8 MiB files, up to 8 GiB in all, into the run directory; then one file of up to 2 GiB
               "disk-files": _patch(f"if 'train' in _sys.argv:\n    {WRITE}\n    for _i in range(1024):\n"
                                    "        open(f'{_out}/junk{_i}', 'wb').write(_chunk)\n"),
               "disk-file": _patch(f"if 'train' in _sys.argv:\n    {WRITE}\n    with open(f'{{_out}}/junk', 'wb') as _f:\n"
                                   "        for _i in range(256):\n            _f.write(_chunk)\n"),
               # 4 x 96 MiB unlinked but held open (no listing shows them), then waits to be seen
               "disk-hidden": _patch(f"if 'train' in _sys.argv:\n    {WRITE}\n    _held = []\n    for _i in range(4):\n"
                                     "        _f = open(f'{_out}/junk{_i}', 'wb+')\n        [_f.write(_chunk) for _ in range(12)]\n"
                                     "        _f.flush()\n        _os.unlink(f'{_out}/junk{_i}')\n        _held.append(_f)\n"
                                     "    __import__('time').sleep(5)\n"),
               # 3 x 200 MiB, each under the cap, in its last second: then it exits 0
               "disk-last": _patch(f"if 'train' in _sys.argv:\n    {WRITE}\n    for _i in range(3):\n"
                                   "        open(f'{_out}/junk{_i}', 'wb').write(_chunk * 25)\n    _sys.exit(0)\n")}
    # the trainer starts a helper that the cap kills, and trains on: its run is fine
    patches["plain"] = _patch(f"if 'train' in _sys.argv:\n    __import__('subprocess').run([_sys.executable, '-c', {HOG!r}])\n")
    jobs = []
    for key, patch in patches.items():
        tree = apply_patch(patch, tmp_path / "trees" / key)
        jobs.append(Job(key, "tiny-cpu", tmp_path / "runs" / key, overrides, pythonpath=tree.pythonpath,
                        score_path=tmp_path / "scores" / f"{key}.json"))
    results: dict[str, JobResult] = {}
    while jobs or runner.busy():
        while jobs and runner.free_slots():
            runner.submit(jobs.pop(0))
        for r in runner.wait():
            results[r.job.key] = r
    plain = results["plain"]
    assert plain.status == "ok" and plain.summary["scored_by"] == "lab", plain.stderr_tail[-2000:]
    assert "caps on the trainer: cgroup v" in plain.stderr_tail and "1.0 GiB, 1024 tasks" in plain.stderr_tail
    # the run records the memory it had: its cap, what the doctor's memory_pressure measures against
    provenance = json.loads((tmp_path / "runs" / "plain" / "provenance.json").read_text())
    assert provenance["memory_total_mb"] == 1024
    # the lab's commit, which the sandboxed trainer cannot see, recorded by the job; a code experiment's tree is patched
    from pretrainlab.code_state import code_state

    assert provenance["git_commit"] == code_state()["git_commit"] and provenance["code_patched"] is True
    for key, part in (("hog-train", "the training"), ("hog-score", "the model process the lab scored it with")):
        r = results[key]
        assert r.status == "crashed" and r.returncode == EXIT_OUT_OF_MEMORY, (key, r.stderr_tail[-2000:])
        assert re.match(f"out of memory: {part} was killed at the run's memory cap of 1.00 GiB \\(peak 1.00 GiB\\)",
                        r.summary["error"]), r.summary
        assert "--run-memory" in r.summary["error"] and f"[pretrainlab] {r.summary['error']}" in r.stderr_tail
        assert not (tmp_path / "scores" / f"{key}.json").exists() and r.summary["val_bpb"] is None
        assert not Campaign.killed_once(type("C", (), {"retried": set()})(), r)  # a summary says why: not resumed
        crash = next(f for f in diagnose(r.job.out_dir).findings if f.id == "run_crashed")
        assert "--run-memory" in crash.cause and "research resume ID --run-memory" in crash.fix
    bomb = results["bomb"]
    assert bomb.status == "crashed" and bomb.returncode == 1, bomb.stderr_tail[-2000:]  # at the 1,024th task, in its import
    assert bomb.summary["error"].startswith("out of tasks: the training reached the run's cap of 1,024 processes and threads")
    assert "BlockingIOError: [Errno 11] Resource temporarily unavailable" in bomb.stderr_tail  # (it died importing)
    assert "fork bomb" in next(f for f in diagnose(bomb.job.out_dir).findings if f.id == "run_crashed").cause
    for key, why in (("disk-files", r"wrote \d\.\d\d GiB to its run directory, past the run's disk cap of 0\.29 GiB \(killed\)"),
                     ("disk-file", r"wrote a file past the run's disk cap of 0\.29 GiB \((found when it ended|killed)\)")):
        r = results[key]
        assert r.status == "crashed" and r.returncode == EXIT_OUT_OF_DISK, (key, r.stderr_tail[-2000:])
        assert re.match(f"out of disk: the training {why}; ", r.summary["error"]), r.summary["error"]
        assert "--run-disk" in r.summary["error"] and not Campaign.killed_once(type("C", (), {"retried": set()})(), r)
        assert "--run-disk" in next(f for f in diagnose(r.job.out_dir).findings if f.id == "run_crashed").cause
        written = sum(f.stat().st_size for f in (tmp_path / "runs" / key).glob("junk*"))
        assert 300 << 20 <= written <= 4 << 30, written  # stopped within a poll or two (at page-cache speed), short of its 8
    for key, how in (("disk-hidden", "killed"), ("disk-last", "found when it ended|killed")):
        r = results[key]
        assert r.status == "crashed" and r.returncode == EXIT_OUT_OF_DISK, (key, r.stderr_tail[-2000:])
        assert re.match(rf"out of disk: the training wrote 0\.\d\d GiB to its run directory, past the run's disk cap of 0\.29 "
                        rf"GiB \(({how})\)", r.summary["error"]), r.summary["error"]
    # nothing is left of any of them: no sleeping children, no cgroups of this test's jobs
    assert not [p for p in os.listdir("/proc") if p.isdigit() and _cmdline(p) == "sleep\x0060\x00"]
    assert not [d for base in {d.parent for d in PROBE.dirs} for d in base.iterdir() if d.name.startswith(limits.PREFIX)
                and any(k in d.name for k in ("plain", "hog", "bomb"))]


def _cmdline(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/cmdline") as f:
            return f.read()
    except OSError:
        return ""


def test_a_sandboxed_process_gets_unix_sockets_only_and_plain_fallocate(tmp_path):
    """Loopback TCP and UDP buffers are kernel memory a cgroup v1 memory cap does not count (a model parked 2 GiB in
    unread sockets under a 256 MiB cap): the sandbox's seccomp filter refuses every socket family but unix, io_uring
    (which makes sockets without the socket call), and fallocate() modes that reserve disk without a file growing."""
    code = ("import ctypes, socket\n"
            "for fam, kind in ((socket.AF_INET, socket.SOCK_STREAM), (socket.AF_INET, socket.SOCK_DGRAM), "
            "(socket.AF_INET6, socket.SOCK_STREAM), (socket.AF_NETLINK, socket.SOCK_RAW), (socket.AF_PACKET, socket.SOCK_RAW)):\n"
            "    try:\n        socket.socket(fam, kind)\n        print(fam, 'made')\n"
            "    except OSError as e:\n        print(fam, 'refused', e.errno)\n"
            "a, b = socket.socketpair()\na.send(b'x')\nprint('unix', b.recv(1))\n"
            "libc = ctypes.CDLL(None, use_errno=True)\n"
            "print('io_uring', libc.syscall(425, 8, ctypes.create_string_buffer(120)), ctypes.get_errno())\n"
            "import os\nfd = os.open('/tmp/f', os.O_CREAT | os.O_RDWR)\n"
            "print('keep_size', libc.fallocate(fd, 1, ctypes.c_long(0), ctypes.c_long(1 << 30)), ctypes.get_errno(), "
            "os.fstat(fd).st_blocks)\n"
            "os.posix_fallocate(fd, 0, 1 << 20)\nprint('plain', os.fstat(fd).st_size)\n")
    out = _in_sandbox(code, tmp_path)
    lines = out.stdout.splitlines()
    assert out.returncode == 0 and len(lines) == 9, out
    assert all(line.endswith("refused 97") for line in lines[:5]), lines  # EAFNOSUPPORT
    assert lines[5] == "unix b'x'" and lines[6] == "io_uring -1 1", lines  # EPERM
    # disk reserved without the file growing (FALLOC_FL_KEEP_SIZE: no RLIMIT_FSIZE) is refused; the plain call is not
    assert lines[7] == "keep_size -1 95 0" and lines[8] == f"plain {1 << 20}", lines  # EOPNOTSUPP


def test_where_bwrap_or_the_kernel_refuse_the_filter_runs_go_on_without_it_and_say_so(tmp_path, monkeypatch, capsys):
    from pretrainlab.runners import sandbox

    box = sandbox.Sandbox.detect(warn=False)
    if not box.active:
        pytest.skip(f"no sandbox here: {box.reason}")
    broken = tmp_path / "broken.bpf"
    broken.write_bytes(b"\x06\x00\x00")  # not a whole BPF instruction: bwrap refuses it
    monkeypatch.setattr(sandbox, "_seccomp_file", lambda: str(broken))
    monkeypatch.setattr(sandbox, "_SECCOMP_OK", {})
    cmd = box.wrap(["/bin/true"], code_src=tmp_path)
    assert "--seccomp" not in cmd and cmd[0] == box.bwrap and subprocess.run(cmd).returncode == 0
    assert "no seccomp filter in the sandbox here (bwrap or the kernel refused it)" in capsys.readouterr().err
    box.wrap(["/bin/true"], code_src=tmp_path)
    assert capsys.readouterr().err == ""  # said once


def test_a_sandboxed_process_has_no_capabilities_and_cannot_touch_the_kernels_settings(tmp_path):
    """bwrap started by root makes no user namespace: the sandbox kept every capability, remounted a read-only bind (the
    lab's own Python installation) writable and wrote kernel.core_pattern (a program the kernel runs as root)."""
    code = ("import ctypes, os, sys\n"
            "print([line.split()[1] for line in open('/proc/self/status') if line.startswith('CapEff')][0])\n"
            "for path in ('/proc/sys/kernel/core_pattern', '/proc/sys/vm/drop_caches', '/proc/sysrq-trigger'):\n"
            "    try:\n        open(path, 'w').close()\n        print(path, 'opened')\n"
            "    except OSError as e:\n        print(path, 'refused')\n"
            "libc = ctypes.CDLL(None, use_errno=True)\n"
            "print('remount', libc.mount(None, sys.prefix.encode(), None, 32 | 4096, None), ctypes.get_errno())\n")
    out = _in_sandbox(code, tmp_path)
    assert out.returncode == 0 and out.stdout.split("\n")[0] == "0000000000000000", out
    assert all(line.endswith("refused") for line in out.stdout.splitlines()[1:4]), out.stdout
    assert out.stdout.splitlines()[4] == "remount -1 1", out.stdout  # EPERM


def test_what_a_trainer_writes_after_the_last_look_is_still_counted(tmp_path, monkeypatch):
    """Files each under the cap, written between the watcher's last look and the trainer's exit: over is over."""
    from pretrainlab.runners.job import wait_within_disk

    monkeypatch.setattr(limits, "DISK_POLL_S", 600.0)  # no look while it runs: only the one when it has exited
    code = f"for i in range(3):\n    open('{tmp_path}/junk' + str(i), 'wb').write(b'x' * (100 << 20))\n"
    proc = subprocess.Popen([sys.executable, "-c", code])
    why = wait_within_disk(proc, tmp_path, 256 << 20)
    assert proc.returncode == 0 and why == ("the training wrote 0.29 GiB to its run directory, past the run's disk cap of "
                                             "0.25 GiB (found when it ended)"), why
    assert wait_within_disk(subprocess.Popen([sys.executable, "-c", "pass"]), tmp_path / "none", 256 << 20) is None


def test_a_sandboxed_process_makes_no_namespace_mount_watch_or_key_and_still_starts_threads(tmp_path):
    """From a user namespace of its own, a model mounted the cgroup file system and raised its own caps, froze the lab's
    processes, and left data in cgroup names for the second scoring worker; inotify instances and key bytes are counted
    per user, and a sandbox started by root used up root's for the machine."""
    code = ("import ctypes, os, threading\n"
            "libc = ctypes.CDLL(None, use_errno=True)\n"
            "def call(name, *args):\n"
            "    ctypes.set_errno(0)\n    r = getattr(libc, name)(*args)\n    print(name, r, ctypes.get_errno())\n"
            "call('unshare', 0x10000000)\n"           # CLONE_NEWUSER
            "call('unshare', 0x00020000)\n"           # CLONE_NEWNS
            "call('mount', b'cgroup', b'/tmp', b'cgroup', 0, b'memory')\n"
            "call('inotify_init1', 0)\n"
            "call('syscall', 248, b'user', b'k', b'v', 1, -3)\n"   # add_key (x86_64 numbering; aarch64 skips below)
            "t = threading.Thread(target=lambda: print('thread ran'))\nt.start()\nt.join()\n"
            "pid = os.fork()\nif pid == 0:\n    os._exit(7)\nprint('child', os.waitpid(pid, 0)[1] >> 8)\n")
    out = _in_sandbox(code, tmp_path)
    lines = out.stdout.splitlines()
    assert out.returncode == 0, out
    assert lines[:4] == ["unshare -1 1", "unshare -1 1", "mount -1 1", "inotify_init1 -1 1"], lines  # EPERM
    if os.uname().machine == "x86_64":
        assert lines[4] == "syscall -1 1", lines
    assert lines[5:] == ["thread ran", "child 7"], lines
