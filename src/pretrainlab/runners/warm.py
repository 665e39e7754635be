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
     (SIGKILL) closes its end: the child sees it and kills itself, as --die-with-parent makes a fresh sandbox do.
Signals reach the trainer by its pid (a pidfd: never another process that reused the number).

What is shared, and why that is enough: runs of one host see each other's run directories (the runs folder is
writable, not one run's directory) and one /tmp. The code in them is the lab's own, the same for all; a code
experiment's runs never come here and keep a fresh sandbox each. Pages of the host's import (~0.3 GB) are shared and
charged to the host, not to a run's memory cap.
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
START_TIMEOUT_S = 120.0  # how long a job waits for a host it started to listen
REQUEST_TIMEOUT_S = 10.0  # how long the host waits for a connected job's whole request
MAX_FDS = 8
GO, PID, EXIT = b"G", b"PID!", b"EXIT"
_HOSTS: list = []  # hosts this process started (kept so no Popen is collected while they run)


class Unavailable(Exception):
    """No warm host here (its folder is unsafe, it would not start): the job starts a fresh sandbox instead."""


def base_dir() -> Path:
    """This user's folder of hosts in the temp folder (short: a socket's path has at most 107 bytes), private to them."""
    path = Path(tempfile.gettempdir()) / f"pretrainlab-warm-{os.getuid()}"
    try:
        path.mkdir(mode=0o700, exist_ok=True)
        st = os.lstat(path)
    except OSError as e:
        raise Unavailable(f"{path}: {e.strerror or e}") from None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise Unavailable(f"{path} is not a private folder of this user's")
    return path


def host_key(code_src: Path, read_only: list[Path], writable: list[Path], sandboxed: bool) -> str:
    """One host per set of files its runs see (and per interpreter, and sandboxed or not)."""
    what = {"python": sys.executable, "code": str(code_src), "ro": sorted(map(str, read_only)), "rw": sorted(map(str, writable)),
            "sandboxed": sandboxed}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


class WarmProc:
    """A trainer forked by a host, as far as the job needs subprocess.Popen: pid, poll, wait, kill, send_signal."""

    def __init__(self, conn: socket.socket, pid: int, args: list[str]):
        self._conn, self.pid, self.args = conn, pid, args
        self.returncode: int | None = None
        self._buf = b""
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
        if self.returncode is not None:
            return
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.returncode is None:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not select.select([self._conn], [], [], left)[0]:
                return
            chunk = self._conn.recv(64)
            if not chunk:  # the host is gone without a word (killed): so is its sandbox, with the trainer in it
                self._done(-signal.SIGKILL)
                return
            self._buf += chunk
            if len(self._buf) >= 8 and self._buf[:4] == EXIT:
                self._done(struct.unpack("<i", self._buf[4:8])[0])

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
        except (ProcessLookupError, OSError):
            pass

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)


def start(argv: list[str], env: dict, fds: list[int], rlimits: dict[str, int], *, code_src: Path, read_only: list[Path],
          writable: list[Path], box) -> WarmProc:
    """A trainer `pretrainlab ARGV` forked by the host for these files (started here if there is none), waiting for
    attach(). `fds`: its stdin, stdout, stderr, then descriptors it keeps at numbers of its own, named in argv by the
    element "{fds}" (their numbers, comma-separated). `rlimits`: resource names (RLIMIT_FSIZE...) to soft = hard values.
    Raises Unavailable where no host can serve it."""
    where = base_dir() / host_key(code_src, read_only, writable, box.active)
    where.mkdir(mode=0o700, exist_ok=True)
    request = json.dumps({"argv": argv, "env": env, "rlimits": rlimits}).encode()
    with open(where / "lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the host exits under it too: it never leaves with a request in its backlog
        conn = _connect(where / "sock")
        if conn is None:
            _start_host(where, code_src, read_only, writable, box)
            conn = _connect(where / "sock", wait_s=START_TIMEOUT_S, log=where / "host.log")
        try:
            socket.send_fds(conn, [struct.pack("<I", len(request)) + request], fds)
        except OSError as e:
            conn.close()
            raise Unavailable(f"the warm host took no request ({e.strerror or e})") from None
    try:
        pid = _child_pid(conn)
    except Unavailable:
        conn.close()
        raise
    return WarmProc(conn, pid, argv)


def _connect(path: Path, wait_s: float = 0.0, log: Path | None = None) -> socket.socket | None:
    deadline = time.monotonic() + wait_s
    while True:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)  # before any message: the child's pid comes with its first
        try:
            conn.connect(str(path))
            return conn
        except OSError:
            conn.close()
        if time.monotonic() >= deadline:
            if wait_s:
                tail = log.read_text(errors="replace")[-500:] if log is not None and log.exists() else ""
                raise Unavailable(f"the warm host did not start within {wait_s:.0f} s{': ' + tail if tail else ''}")
            return None
        if _HOSTS and _HOSTS[-1].poll() is not None:
            raise Unavailable(f"the warm host exited at start (exit {_HOSTS[-1].returncode}); its log: {log}")
        time.sleep(0.02)


def _start_host(where: Path, code_src: Path, read_only: list[Path], writable: list[Path], box) -> None:
    from .sandbox import scrubbed_env

    try:
        (where / "sock").unlink()  # a host that died without its exit left it
    except FileNotFoundError:
        pass
    # one thread by default: each trainer sets its own (torch.set_num_threads); what the runtimes read at load is this
    env = scrubbed_env({"PYTHONPATH": str(code_src), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
                        "MKL_NUM_THREADS": "1", "PRETRAINLAB_SANDBOX": "1" if box.active else "0"})
    cmd = box.wrap([sys.executable, "-m", "pretrainlab.runners.warm", str(where)], code_src=code_src, read_only=read_only,
                   writable=[*writable, where], die_with_parent=False)
    with open(where / "host.log", "ab") as log:
        _HOSTS.append(subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log, env=env,
                                       start_new_session=True, cwd="/"))


def _child_pid(conn: socket.socket) -> int:
    """The forked child's pid in this process's pid namespace, from the credentials of its first message."""
    conn.settimeout(REQUEST_TIMEOUT_S + 30.0)
    try:
        data, ancdata, _, _ = conn.recvmsg(64, socket.CMSG_SPACE(struct.calcsize("3i")))
    except OSError as e:
        raise Unavailable(f"the warm host did not fork a trainer ({e.strerror or e})") from None
    finally:
        conn.settimeout(None)
    for level, kind, value in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS and data[:4] == PID:
            pid = struct.unpack("3i", value[: struct.calcsize("3i")])[0]
            if pid > 0:
                return pid
    raise Unavailable(f"the warm host answered {data[:40]!r} instead of a trainer's pid")


# ---- the host, in the sandbox ------------------------------------------------------------------------------------------


def serve(where: Path, idle_s: float = IDLE_S) -> None:
    """Listen at WHERE/sock, import torch, fork a trainer per request; exit after `idle_s` with none running."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(where / "sock"))
    listener.listen(64)
    import torch  # noqa: F401  (what every trainer forked from here skips)

    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    os.set_blocking(wake_r, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a stop is for the trainers (by pid), never for the host
    children: dict[int, socket.socket] = {}
    last = time.monotonic()
    while True:
        ready = select.select([listener, wake_r], [], [], 1.0)[0]
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
                try:
                    conn.sendall(EXIT + struct.pack("<i", os.waitstatus_to_exitcode(status)))
                except OSError:
                    pass
                conn.close()
            last = time.monotonic()
        if listener in ready:
            conn, _ = listener.accept()
            last = time.monotonic()
            pid = _fork_one(conn, listener, children, (wake_r, wake_w))
            if pid is None:
                conn.close()
            else:
                children[pid] = conn
        if not children and time.monotonic() - last > idle_s:
            with open(where / "lock", "a+") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                if select.select([listener], [], [], 0)[0]:
                    continue  # a request came in meanwhile: serve it (the lock is let go here)
                (where / "sock").unlink(missing_ok=True)
                return  # (the lock goes with this process)


def _fork_one(conn: socket.socket, listener: socket.socket, children: dict, pipe: tuple[int, int]) -> int | None:
    conn.settimeout(REQUEST_TIMEOUT_S)
    try:
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
        for fd in locals().get("fds") or []:
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
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        listener.close()
        for other in children.values():
            other.close()
        for fd in pipe:
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
    import threading

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
    # who this is, in the job's pid namespace: the kernel checks the pid and translates it
    conn.sendmsg([PID], [(socket.SOL_SOCKET, socket.SCM_CREDENTIALS, struct.pack("3i", os.getpid(), os.getuid(), os.getgid()))])
    if conn.recv(1) != GO:  # the job is gone before it let this run
        return 1

    def die_with_job() -> None:  # the job's end closes when it dies: so does this run, as a fresh sandbox would
        try:
            while conn.recv(64):
                pass
        except OSError:
            pass
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=die_with_job, daemon=True, name="warm-job-watch").start()
    sys.argv = ["pretrainlab", *argv]
    runpy.run_module("pretrainlab", run_name="__main__", alter_sys=True)
    return 0


if __name__ == "__main__":
    serve(Path(sys.argv[1]), *(float(a) for a in sys.argv[2:3]))
