"""The run directory's lock: one writer per RUN_DIR, ever.

    lock = acquire(run_dir)        # RunDirLocked (exit 2, one line naming the holder) if in use
    ...train...
    lock.release()

    holder = lock_holder(run_dir)  # LockHolder(pid, pgid, host, ...) while a process holds it, else None

The lock is an exclusive flock(2) on RUN_DIR/.lock, held by the trainer's rank 0 from before
its first write to after summary.json. The kernel drops it when the holding process dies
(SIGKILL included), so a killed run never leaves a stale lock. flock locks the inode, so it
holds across mount namespaces: a run dir bind-mounted into a bubblewrap sandbox is locked
for the lab outside it too.

The file's content (JSON: pid, pgid, host, start time, pid namespace) only says who holds
it. The flock is the truth: a pid can be reused, and a pid recorded inside a sandbox's pid
namespace means nothing outside it, so nothing here tests a pid for liveness.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from ..errors import UserError

LOCK_FILE = ".lock"
CONTENDED_WAIT_S = 0.5  # a lock_holder() probe holds a shared lock for microseconds; retry past it before refusing


def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")  # e.g. "pid:[4026531836]"
    except OSError:
        return None  # no /proc (not Linux, or a sandbox without it)


@dataclass(frozen=True)
class LockHolder:
    """Who holds a run directory's lock, as it wrote itself into RUN_DIR/.lock (fields are
    None when the file could not be read, e.g. in the instant between flock and write)."""

    pid: int | None
    pgid: int | None  # its process group (`kill -TERM -PGID` stops it and its workers); 0 if the leader is outside its pid namespace
    host: str | None
    started_at: str | None  # ISO 8601, UTC
    pid_ns: str | None  # the holder's pid namespace ("pid:[N]"); pid/pgid mean nothing outside it

    @property
    def signalable(self) -> bool:
        """Whether pid/pgid name the holder for this process: same host, same pid namespace
        (a run in a sandbox with its own pid namespace must be stopped through its sandbox)."""
        return self.pid is not None and self.host == socket.gethostname() and self.pid_ns == _pid_namespace()

    def describe(self) -> str:
        if self.pid is None:
            return "another process"
        if self.host and self.host != socket.gethostname():
            return f"pid {self.pid} on {self.host} (since {self.started_at})"
        if not self.signalable:
            return f"pid {self.pid} of another pid namespace, e.g. a sandbox (since {self.started_at})"
        return f"pid {self.pid} (process group {self.pgid}, since {self.started_at})"


class RunDirLocked(UserError):
    """Another process holds the run directory's lock."""

    def __init__(self, run_dir: Path, holder: LockHolder):
        self.run_dir, self.holder = run_dir, holder
        # SIGTERM makes a trainer checkpoint and exit; a pid from another host or pid namespace is not ours to signal
        stop = f"stop it with `kill -TERM {holder.pid}` (it checkpoints and exits)" if holder.signalable else "stop it"
        super().__init__(f"run directory {run_dir} is in use by {holder.describe()}, which holds {run_dir / LOCK_FILE}: "
                         f"wait for it to finish, {stop}, or train into another --out")


class RunDirLock:
    """A held lock; release() (or leaving a `with` block) lets it go. A run directory that
    still holds nothing but the lock file loses it on release, and so do the directories
    acquire() created, so a run that fails before its first write leaves no trace."""

    def __init__(self, run_dir: Path, fd: int, created: list[Path]):
        self.run_dir, self._fd, self._created = run_dir, fd, created

    def release(self) -> None:
        if self._fd is None:
            return
        if [p.name for p in self.run_dir.iterdir()] == [LOCK_FILE]:
            (self.run_dir / LOCK_FILE).unlink()  # while still locked: a process waiting on this inode sees it gone and retries
            _remove_empty(self._created)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> RunDirLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def acquire(run_dir: Path | str, create: bool = False) -> RunDirLock:
    """Take RUN_DIR/.lock exclusively for this process (create=True makes RUN_DIR and its
    missing parents first). Raises RunDirLocked if another process holds it, UserError if
    the lock file cannot be created."""
    run_dir = Path(run_dir)
    path = run_dir / LOCK_FILE
    created: list[Path] = []
    deadline = time.monotonic() + CONTENDED_WAIT_S
    try:
        while True:
            if create:
                created += _make_dirs(run_dir)
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except FileNotFoundError:
                if create:
                    continue  # the directory was removed by a lock holder that created it; make it again
                raise
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                if time.monotonic() < deadline:
                    time.sleep(0.02)
                    continue
                raise RunDirLocked(run_dir, _read_holder(path)) from None
            if _is_same_file(fd, path):
                break
            os.close(fd)  # locked a lock file that its holder unlinked on release: lock the current one
    except OSError as e:
        _remove_empty(created)
        raise UserError(f"run directory {run_dir}: cannot create its lock file {path} ({e.strerror}); "
                        "choose a writable --out directory") from None
    except BaseException:
        _remove_empty(created)
        raise
    info = {"pid": os.getpid(), "pgid": os.getpgid(0), "host": socket.gethostname(),
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"), "pid_ns": _pid_namespace()}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
    return RunDirLock(run_dir, fd, created)


def lock_holder(run_dir: Path | str) -> LockHolder | None:
    """Who holds RUN_DIR's lock now, or None if nobody does (no lock file, or an unheld one
    left by a finished or killed run). Probes with a shared flock that it drops at once, so
    it never blocks or keeps anyone out. A lock file it cannot open (permissions) raises
    OSError rather than passing for unlocked."""
    path = Path(run_dir) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _read_holder(path)
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _read_holder(path: Path) -> LockHolder:
    for _ in range(10):  # the holder writes its details just after it locks: give it a moment
        try:
            info = json.loads(path.read_text())
            return LockHolder(info.get("pid"), info.get("pgid"), info.get("host"), info.get("started_at"), info.get("pid_ns"))
        except (OSError, ValueError, AttributeError):
            time.sleep(0.01)
    return LockHolder(None, None, None, None, None)


def _is_same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    fst = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (fst.st_dev, fst.st_ino)


def _make_dirs(run_dir: Path) -> list[Path]:
    """mkdir -p that returns the directories it created, outermost first."""
    missing = [p for p in (run_dir, *run_dir.parents) if not p.exists()][::-1]
    made = []
    for d in missing:
        try:
            d.mkdir()
        except FileExistsError:
            continue  # made by someone else in the meantime: not ours to remove
        made.append(d)
    return made


def _remove_empty(dirs: list[Path]) -> None:
    for d in reversed(dirs):
        try:
            d.rmdir()
        except OSError:
            if not d.exists():
                continue
            break
