"""Trainers of the lab's own code forked from a warm host: `import torch` once per campaign, not once per run.

A fresh trainer spends 2.5-3 s of CPU importing torch before it reads its recipe; a campaign of tiny runs spends
most of its machine there. Runs of the lab's own code (never a code experiment's patched tree) are instead forked
from a host process that has imported torch and nothing else, in one sandbox shared by the runs that see the same
files (the same code, corpus files and runs folder):

    proc = warm.start(argv, env, fds, rlimits, code_src=..., read_only=[...], writable=[runs folder], box=sandbox)
    proc.attach(cap)                     # into the run's cgroup, then it may go on
    proc.wait(timeout) / poll() / kill() / send_signal(sig)     # as subprocess.Popen

How one run goes (the job process, runners/job.py, is on the lab's side of the sandbox; the host and its children in it):
  1. under a lock, the job connects to the host's unix socket, or starts the host (in the sandbox, a session of its
     own, no --die-with-parent: it serves the campaign's later runs, and exits after IDLE_S with nothing to do);
  2. it sends the trainer's argv, environment and rlimits, and its stdin, stdout, stderr and scoring pipes by
     SCM_RIGHTS;
  3. the host forks; the child puts the descriptors in place, closes the host's, sets its rlimits and environment, and
     sends its credentials: the kernel translates its pid into the job's pid namespace (the sandbox has its own);
  4. the job moves that pid into the run's cgroup (memory and task caps) and sends a go byte; the child imports the
     lab's package and runs `pretrainlab train` as `python -m pretrainlab` would;
  5. the host reaps the child and sends the job its exit code (a signal as -n, as Popen says it). A job that dies
     (SIGKILL) closes its end: the host sees it and kills the child's process group (it and all it started), as
     --die-with-parent makes a fresh sandbox do.
Signals reach the trainer by its pid (a pidfd: never another process that reused the number).

What is shared, and why that is enough: runs of one host see each other's run directories (the campaign's folder is
writable, not one run's directory; its scores, logs and code experiments' trees are hidden, and a corpus inside it
gets no host) and one /tmp, and a crash of the host takes its runs with it (their pid namespace goes). The code in
them is the lab's own, the same for all; a code experiment's runs never come here and keep a fresh sandbox each.
Pages of the host's import (~0.3 GB) are shared and charged to the host, not to a run's memory cap.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import select
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

IDLE_S = 30.0  # a host with no trainer and no request this long exits
START_TIMEOUT_S = 120.0  # how long a job waits for its trainer's pid (a host it started imports torch first)
LOCK_TIMEOUT_S = 120.0  # how long a job waits for another to be done with the host's lock
REQUEST_TIMEOUT_S = 10.0  # how long the host waits for a connected job's whole request
STALE_S = 3600.0  # a host folder nobody has used this long is removed (its host, if any, serves the runs it has)
MAX_FDS = 8
HOST_FDS = 64  # the host's socket and lock are passed at this number and above
# what a run's environment sets for itself; every other variable is read by the interpreter or a library as it loads
# (PYTHONHASHSEED, LD_LIBRARY_PATH, KMP_*, TORCH_*...): the host's own, one host per set of them
PER_RUN_ENV = ("OMP_NUM_THREADS", "PRETRAINLAB_MEMORY_CAP_MB")
GO, PID, EXIT = b"G", b"PID!", b"EXIT"
PR_SET_DUMPABLE, PR_SET_NAME = 4, 15
HIDDEN = ("scores", "logs", "trees")  # a campaign folder's (research/campaign.py): never a run's to see
_HOSTS: list = []  # hosts this process started (kept so no Popen is collected while they run)
_CRED = struct.calcsize("3i")


class Unavailable(Exception):
    """No warm host here (its folder is unsafe, it would not start): the job starts a fresh sandbox instead."""


def base_dir() -> Path:
    """This user's folder of hosts in the temp folder (short: a socket's path has at most 107 bytes), private to them.
    No sandbox sees it: a host gets its listening socket and its lock as open descriptors."""
    path = Path(tempfile.gettempdir()) / f"pretrainlab-warm-{os.getuid()}"
    try:
        path.mkdir(mode=0o700, exist_ok=True)
        st = os.lstat(path)
    except OSError as e:
        raise Unavailable(f"{path}: {e.strerror or e}") from None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise Unavailable(f"{path} is not a private folder of this user's")
    return path


def machine_has_gpus() -> bool:
    """Whether this machine has NVIDIA GPUs: its CPU runs then get fresh trainers (a host that touched CUDA as it imported
    would leave its children unable to use it, and a GPU run's import is a small part of it)."""
    import glob

    return bool(glob.glob("/dev/nvidia[0-9]*")) or bool(glob.glob("/proc/driver/nvidia/gpus/*"))


def host_key(code_src: Path, code_digest: str, read_only: list[Path], writable: list[Path], env: dict, sandboxed: bool) -> str:
    """One host per set of files its runs see, as they are now (a corpus rebuilt, or a recipe file outside the campaign's
    folder saved anew, is a new file; a folder made anew is a new folder; the code by its contents; torch and numpy by
    their files), per load-time environment, interpreter, and sandboxed or not."""
    def ident(path: Path) -> list:
        st = os.stat(path)
        return [str(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns]

    def folder(path: Path) -> list:  # a folder made anew at the same path is another bind
        st = os.stat(path)
        return [str(path), st.st_dev, st.st_ino]

    import importlib.util

    libraries = [ident(Path(spec.origin)) for spec in map(importlib.util.find_spec, ("torch", "numpy")) if spec and spec.origin]
    what = {"python": sys.executable, "code": [*folder(code_src), code_digest], "ro": sorted(map(ident, read_only)),
            "rw": sorted(map(folder, writable)), "hidden": sorted(map(str, hidden_in(writable))), "libraries": libraries,
            "env": sorted((k, v) for k, v in env.items() if not k.startswith(PER_RUN_ENV)), "sandboxed": sandboxed}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def hidden_in(writable: list[Path]) -> list[Path]:
    """What a host's runs never see in the campaign's folder it makes writable: the lab's verdicts, the job logs and
    specs, code experiments' trees (empty and read-only in its sandbox)."""
    return [path / name for path in writable for name in HIDDEN if (path / name).is_dir()]


class WarmProc:
    """A trainer forked by a host, as far as the job needs subprocess.Popen: pid, poll, wait, kill, send_signal."""

    def __init__(self, conn: socket.socket, pid: int, args: list[str]):
        self._conn, self.pid, self.args = conn, pid, args
        self.returncode: int | None = None
        try:
            self._pidfd = os.pidfd_open(pid)
        except OSError:  # it is waiting for its go byte, so alive: only a kernel without pidfds gets here
            self._pidfd = None

    def attach(self, cap) -> None:
        """Into the run's cgroup (its memory and task caps), then let it run."""
        if cap is not None:
            cap.add(self.pid)
        self._conn.sendall(GO)

    def _read(self, timeout: float | None) -> None:
        """The host's word on the trainer's exit. The trainer holds its end of the same connection: what it writes
        there (its pid on every message, which it cannot forge) is read and dropped."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.returncode is None:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not select.select([self._conn], [], [], left)[0]:
                return
            data, sender = _recv(self._conn)
            if not data:  # the host is gone without a word (killed): so is its sandbox, with the trainer in it
                self._done(-signal.SIGKILL)
            elif sender != self.pid and len(data) == 8 and data[:4] == EXIT:
                self._done(struct.unpack("<i", data[4:8])[0])

    def _done(self, code: int) -> None:
        self.returncode = code
        self._conn.close()
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None

    def poll(self) -> int | None:
        self._read(0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        self._read(timeout)
        if self.returncode is None:
            raise subprocess.TimeoutExpired(self.args, timeout)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.returncode is not None:
            return
        try:
            if self._pidfd is not None:
                signal.pidfd_send_signal(self._pidfd, sig)
            else:
                os.kill(self.pid, sig)
        except OSError:
            pass

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)


def _recv(conn: socket.socket) -> tuple[bytes, int | None]:
    """One message (a host's messages are 8 bytes and a child's 4; the kernel never merges two senders') and its
    sender's pid in this process's pid namespace."""
    try:
        data, ancdata, _, _ = conn.recvmsg(64, socket.CMSG_SPACE(_CRED))
    except OSError:
        return b"", None
    for level, kind, value in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS and len(value) >= _CRED:
            return data, struct.unpack("3i", value[:_CRED])[0]
    return data, None


def start(argv: list[str], env: dict, fds: list[int], rlimits: dict[str, int], *, code_src: Path, code_digest: str,
          read_only: list[Path], writable: list[Path], box) -> WarmProc:
    """A trainer `pretrainlab ARGV` forked by the host for these files (started here if there is none), waiting for
    attach(). `fds`: its stdin, stdout, stderr, then descriptors it keeps at numbers of its own, named in argv by the
    element "{fds}" (their numbers, comma-separated). `rlimits`: resource names (RLIMIT_FSIZE...) to soft = hard values.
    Raises Unavailable where no host can serve it."""
    base = base_dir()
    _sweep(base)
    where = base / host_key(code_src, code_digest, read_only, writable, env, box.active)
    request = json.dumps({"argv": argv, "env": env, "rlimits": rlimits}).encode()
    try:
        where.mkdir(mode=0o700, exist_ok=True)
        lock = os.open(where / "lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise Unavailable(f"{where}: {e.strerror or e}") from None
    try:
        _flock(lock, LOCK_TIMEOUT_S)  # the host exits under it too: it never leaves with a request in its backlog
        os.utime(lock)  # (used: not stale)
        conn = _connect(where / "sock")
        if conn is None:
            _start_host(where, code_src, read_only, writable, env, box)
            conn = _connect(where / "sock")
            if conn is None:
                raise Unavailable("the warm host's socket refused a connection as it started")
        try:
            socket.send_fds(conn, [struct.pack("<I", len(request)) + request], fds)
        except OSError as e:
            conn.close()
            raise Unavailable(f"the warm host took no request ({e.strerror or e})") from None
    finally:
        os.close(lock)
    try:
        pid = _child_pid(conn)
    except Unavailable:
        conn.close()
        raise
    return WarmProc(conn, pid, argv)


def _flock(fd: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise Unavailable(f"the warm host's lock was held for {timeout:.0f} s") from None
            time.sleep(0.02)


def _connect(path: Path) -> socket.socket | None:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)  # before any message: the child's pid comes with its first
    try:
        conn.connect(str(path))
        return conn
    except OSError:  # none there, or a host that has exited (a socket file with no listener)
        conn.close()
        return None


def _start_host(where: Path, code_src: Path, read_only: list[Path], writable: list[Path], env: dict, box) -> None:
    """The host, in a sandbox that outlives this process, given its listening socket and the lock as descriptors (the
    folder they are in is never in a sandbox: nothing there can replace them, or plant a link for this process)."""
    from .sandbox import scrubbed_env

    (where / "sock").unlink(missing_ok=True)  # a host that has exited left it
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(str(where / "sock"))
        listener.listen(64)
        log = os.open(where / "host.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as e:
        listener.close()
        raise Unavailable(f"the warm host's socket could not be made ({e.strerror or e})") from None
    # what libraries read as they load is the runs' own (one host per set of it); one thread by default: each trainer
    # sets its own (torch.set_num_threads)
    host_env = scrubbed_env({**{k: v for k, v in env.items() if not k.startswith(PER_RUN_ENV)}, "PYTHONPATH": str(code_src),
                             "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
                            base={})
    # its two descriptors above the ones the sandbox's start uses (the seccomp filter comes in on 9, and bwrap closes it);
    # the lock opened anew: a lock belongs to an open file, which a copy of this process's descriptor would share
    try:
        own_lock = os.open(where / "lock", os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        listener.close()
        os.close(log)
        raise Unavailable(f"the warm host's lock could not be opened ({e.strerror or e})") from None
    passed = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, HOST_FDS) for fd in (listener.fileno(), own_lock)]
    os.close(own_lock)
    # -P: nothing in its working directory (the runs' shared /tmp) is importable
    cmd = box.wrap([sys.executable, "-P", "-m", "pretrainlab.runners.warm", *map(str, passed)], code_src=code_src,
                   read_only=read_only, writable=writable, die_with_parent=False, hidden=hidden_in(writable))
    try:
        _HOSTS.append(subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log, env=host_env,
                                       start_new_session=True, cwd="/", pass_fds=passed))
    except OSError as e:
        raise Unavailable(f"the warm host did not start ({e.strerror or e})") from None
    finally:
        listener.close()  # the host's now: a connection waits in its backlog while it imports torch
        for fd in (log, *passed):
            os.close(fd)


def _child_pid(conn: socket.socket) -> int:
    """The forked child's pid in this process's pid namespace, from the credentials of its first message."""
    if not select.select([conn], [], [], START_TIMEOUT_S)[0]:
        raise Unavailable(f"the warm host forked no trainer within {START_TIMEOUT_S:.0f} s")
    data, pid = _recv(conn)
    if data == PID and pid:
        return pid
    raise Unavailable(f"the warm host answered {data[:40]!r} instead of a trainer's pid" if data else "the warm host "
                      "closed the connection (it exited, or failed to start: its log is host.log in its folder)")


def _sweep(base: Path) -> None:
    """Remove host folders nobody has used for STALE_S (and nobody holds the lock of)."""
    now = time.time()
    try:
        entries = list(base.iterdir())
    except OSError:
        return
    for entry in entries:
        try:
            if now - os.lstat(entry / "lock").st_mtime < STALE_S:
                continue
            fd = os.open(entry / "lock", os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            for name in ("sock", "host.log", "lock"):
                (entry / name).unlink(missing_ok=True)
            entry.rmdir()
        except OSError:
            pass
        finally:
            os.close(fd)


# ---- the host, in the sandbox ------------------------------------------------------------------------------------------


def _prctl(option: int, arg) -> None:
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(option, arg, 0, 0, 0)


def _undumpable() -> None:
    """No /proc/PID/fd, mem or ptrace of this process for the other processes of the sandbox (the runs beside it)."""
    _prctl(PR_SET_DUMPABLE, 0)


def serve(listen_fd: int, lock_fd: int, idle_s: float = IDLE_S) -> None:
    """Accept on LISTEN_FD, import torch, fork a trainer per request; exit after `idle_s` with none running (under the
    lock on LOCK_FD, with no request waiting)."""
    _undumpable()
    for fd, kind in ((listen_fd, stat.S_ISSOCK), (lock_fd, stat.S_ISREG)):
        if not kind(os.fstat(fd).st_mode):
            raise SystemExit(f"[pretrainlab] warm host: descriptor {fd} is not the socket and lock it should be")
    listener = socket.socket(fileno=listen_fd)
    import importlib

    # what every trainer forked from here skips: torch, and the lab's training and scoring code (the same files: the
    # host is one per digest of them)
    for module in ("torch", "pretrainlab.cli", "pretrainlab.train.trainer", "pretrainlab.scoring_worker"):
        importlib.import_module(module)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    os.set_blocking(wake_r, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a stop is for the trainers (by pid), never for the host
    children: dict[int, socket.socket] = {}
    orphans: set[int] = set()  # children whose job is gone, killed
    poller = select.poll()
    poller.register(listener, select.POLLIN)
    poller.register(wake_r, select.POLLIN)
    last = time.monotonic()
    while True:
        events = dict(poller.poll(1000))
        ready = [x for x in (listener, wake_r) if events.get(x if isinstance(x, int) else x.fileno(), 0) & select.POLLIN]
        for pid, conn in children.items():  # its job is gone (killed): the trainer and all it started go too, as with
            if events.get(conn.fileno(), 0) & (select.POLLRDHUP | select.POLLHUP):  # bwrap's --die-with-parent
                poller.unregister(conn)
                orphans.add(pid)
                try:
                    os.killpg(pid, signal.SIGKILL)
                except OSError:
                    pass
        if wake_r in ready:
            try:
                while os.read(wake_r, 512):
                    pass
            except BlockingIOError:
                pass
        while children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            conn = children.pop(pid, None)
            if conn is not None:
                if pid not in orphans:
                    poller.unregister(conn)
                orphans.discard(pid)
                try:
                    conn.sendall(EXIT + struct.pack("<i", os.waitstatus_to_exitcode(status)))
                except OSError:
                    pass
                conn.close()
            last = time.monotonic()
        if listener in ready:
            try:
                conn, _ = listener.accept()
            except (ConnectionAbortedError, BlockingIOError, InterruptedError):
                continue
            except OSError as e:  # no socket to serve: the next job finds none listening and starts another host
                print(f"[pretrainlab] warm host: cannot accept ({e}): exiting", file=sys.stderr, flush=True)
                return
            last = time.monotonic()
            pid = _fork_one(conn, listener, children, (wake_r, wake_w, lock_fd))
            if pid is None:
                conn.close()
            else:
                children[pid] = conn
                poller.register(conn, select.POLLRDHUP)
        if not children and time.monotonic() - last > idle_s:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            if select.select([listener], [], [], 0)[0]:
                fcntl.flock(lock_fd, fcntl.LOCK_UN)
                continue  # a request came in meanwhile: serve it
            return  # (the lock goes with this process; the next job finds no listener and starts another host)


def _fork_one(conn: socket.socket, listener: socket.socket, children: dict, own: tuple[int, ...]) -> int | None:
    fds: list[int] = []
    conn.settimeout(REQUEST_TIMEOUT_S)
    try:
        # only a job, outside the sandbox, may ask (its pid is 0 in this pid namespace): never a trainer in it
        peer = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CRED))[0]
        if peer != 0 and os.environ.get("PRETRAINLAB_SANDBOX") == "1":
            raise ValueError("a request from inside the sandbox")
        data, fds, _, _ = socket.recv_fds(conn, 1 << 16, MAX_FDS)
        if len(data) < 4:
            raise ValueError("no request")
        size = struct.unpack("<I", data[:4])[0]
        if size > 1 << 24:
            raise ValueError("a request too large")
        while len(data) < 4 + size:
            more = conn.recv(4 + size - len(data))
            if not more:
                raise ValueError("a cut request")
            data += more
        request = json.loads(data[4 : 4 + size])
        argv, env, rlimits = request["argv"], request["env"], request["rlimits"]
        if not (isinstance(argv, list) and argv[:1] == ["train"] and len(fds) >= 3):
            raise ValueError("not a trainer's request")
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"[pretrainlab] warm host: a request dropped ({e})", file=sys.stderr, flush=True)
        for fd in fds:
            os.close(fd)
        return None
    finally:
        conn.settimeout(None)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        for fd in fds:
            os.close(fd)
        return pid
    code = 1
    try:
        os.setpgid(0, 0)  # a group of its own: the host's kill when its job dies takes whatever it started too
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        listener.close()
        for other in children.values():
            other.close()
        for fd in own:
            os.close(fd)
        code = _child(conn, argv, env, rlimits, fds)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _child(conn: socket.socket, argv: list[str], env: dict, rlimits: dict, fds: list[int]) -> int:
    import resource
    import runpy

    # every descriptor above what any of them will land on first, then each in its place: 0-2, then its own numbers
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 512) for fd in fds]
    for fd in fds:
        os.close(fd)
    keep = fcntl.fcntl(conn.fileno(), fcntl.F_DUPFD_CLOEXEC, 512)
    conn.close()
    conn = socket.socket(fileno=keep)
    for target, fd in zip((0, 1, 2), high[:3]):
        os.dup2(fd, target)
        os.close(fd)
    extra = []
    for fd in high[3:]:
        new = fcntl.fcntl(fd, fcntl.F_DUPFD, 3)
        os.close(fd)
        extra.append(new)
    argv = [",".join(map(str, extra)) if a == "{fds}" else a for a in argv]
    for name, value in rlimits.items():
        resource.setrlimit(getattr(resource, name), (value, value))
    os.environ.clear()
    os.environ.update(env)
    os.chdir("/tmp")
    _prctl(PR_SET_NAME, b"pretrainlab-run")  # what top and ps -o comm show (its command line is still the host's)
    # who this is, in the job's pid namespace: the kernel checks the pid and translates it
    try:
        conn.sendmsg([PID], [(socket.SOL_SOCKET, socket.SCM_CREDENTIALS, struct.pack("3i", os.getpid(), os.getuid(), os.getgid()))])
        go = conn.recv(1)
    except OSError:  # its job is gone (its log may be the next attempt's by now: nothing is written there)
        return 1
    if go != GO:  # the job is gone, or let it go, before it ran
        return 1
    sys.argv = ["pretrainlab", *argv]
    runpy.run_module("pretrainlab", run_name="__main__", alter_sys=True)
    return 0


if __name__ == "__main__":
    serve(int(sys.argv[1]), int(sys.argv[2]), *(float(a) for a in sys.argv[3:4]))
