"""Memory and process caps on what a run starts: its sandboxed trainer and the lab's scoring workers.

    cap = RunCap.create("exp3-s0-train", memory=8 << 30, tasks=1024)
    proc = subprocess.Popen(cmd, preexec_fn=cap.enter)    # the process and everything it starts are inside
    proc.wait()
    if cap.out_of_memory(): ...                           # the kernel killed something in it at the memory cap
    cap.remove()                                          # kills what is left, removes the cgroup

A cap is a cgroup of its own, under the job process's: cgroup v2 (memory.max, memory.swap.max
0, pids.max) where the job's cgroup delegates the memory and pids controllers, else v1's memory
and pids hierarchies where they are writable (root on most machines, a container's own
cgroups). The whole process tree is counted together, its tmpfs pages (the sandbox's /tmp and
/dev/shm) included, so neither a model that allocates without bound nor one that forks without
bound takes the machine with it: at the memory cap the kernel's OOM killer acts inside the
cgroup only, and past the task cap fork() and thread creation fail.

Disk: `run_disk` is the cap on what a trainer writes in its run directory (runners/job.py
measures the folder with `disk_use` every DISK_POLL_S and sets RLIMIT_FSIZE to it).

Where no cgroup can be made (a non-root user on a cgroup v2 machine without delegation), the
fallback is per process: RLIMIT_DATA (what each process may allocate; not set for GPU runs,
whose driver maps memory of its own) and no task cap. `RunCap.how` says which, and the job
prints it once; docs/research.md lists what each leaves open.
"""

from __future__ import annotations

import os
import re
import resource
import signal
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

PREFIX = "pretrainlab-"  # every cgroup the lab makes: <PREFIX><creator pid>-<name>
TASKS = 1024  # processes + threads of one run (a trainer uses a few dozen; torch.compile's workers a few more)
MEMORY_SHARE = 0.9  # of the machine's RAM, split over the runs beside each other
AUTO_MEMORY_FLOOR = 1 << 30  # the least --run-memory auto gives a run: torch and a small model
DISK_SHARE = 0.5  # of the space free on the run directory's disk when the run starts, split the same way
DISK_FLOOR = 256 << 20  # the least a run may write (auto never gives less)
MAX_RUN_ENTRIES = 100_000  # files and folders in one run directory (an honest run writes a few dozen)
MAX_OPEN_FILES = 4096  # a trainer's open files (RLIMIT_NOFILE): what the disk watcher looks through at each look
MAX_SIZE = 1 << 50  # the largest cap taken: 1 PiB
DISK_POLL_S = 0.25  # how often a run directory is measured while its trainer runs (a look costs well under a ms;
# a trainer writing at page-cache speed, ~2 GB/s, gets about this long past its cap)
_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


def machine_memory() -> int:
    """Bytes of RAM on this machine."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (OSError, ValueError):
        return 16 << 30


def parse_size(text: str, what: str = "memory", floor: int = 64 << 20, why: str = "too little to import torch") -> int | None:
    """'8G', '512M', '0.5T' or a byte count -> bytes; 'off' -> None. Raises ValueError naming `what` and the fix."""
    text = str(text).strip()
    if text.lower() == "off":
        return None
    m = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)\s*(?:([KMGTP])(?:i?B?)?|B)?", text, re.IGNORECASE)
    if not m:
        raise ValueError(f"{what} {text!r} is not a size: give e.g. 8G, 512M or off")
    value = float(m.group(1)) * 1024 ** " KMGTP".index((m.group(2) or " ").upper())
    if value > MAX_SIZE:  # the kernel's limits are 64-bit: a larger number wraps round to a small one
        raise ValueError(f"{what} {text!r} is more than any machine has (over 1P): give e.g. 64G, or off")
    if value < floor:
        raise ValueError(f"{what} {text!r} is under {floor >> 20}M, {why}: give e.g. 8G, or off")
    return int(value)


def parse_memory(text: str) -> int | None:
    return parse_size(text)


def parse_disk(text: str) -> int | None:
    return parse_size(text, "disk", DISK_FLOOR, "too little for a run's checkpoints")


def run_memory(setting: str, share: float) -> int | None:
    """A run's memory cap in bytes from a campaign's --run-memory: 'auto' (`share` of MEMORY_SHARE of this machine's
    RAM), 'off' (None), or a size."""
    if str(setting).strip().lower() == "auto":  # never under what a small run needs (many slots on a small machine)
        return max(AUTO_MEMORY_FLOOR, int(machine_memory() * MEMORY_SHARE * min(1.0, max(share, 0.0))))
    return parse_memory(setting)


def run_disk(setting: str, share: float, where: Path) -> int | None:
    """A run's cap on what it writes in its run directory, from a campaign's --run-disk: 'auto' (`share` of DISK_SHARE
    of the space free on `where`'s file system now, at least DISK_FLOOR), 'off' (None), or a size."""
    if str(setting).strip().lower() == "auto":
        try:
            st = os.statvfs(where)
            free = st.f_bavail * st.f_frsize
        except OSError:
            return None
        return max(DISK_FLOOR, int(free * DISK_SHARE * min(1.0, max(share, 0.0))))
    return parse_disk(setting)


@dataclass
class DiskUse:
    bytes: int = 0  # allocated (st_blocks), files held open after their unlinking included
    entries: int = 0
    largest: int = 0  # the largest file's size
    unreadable: str | None = None  # a folder the lab could not list (made so by the trainer)


def disk_use(path: Path, max_entries: int = MAX_RUN_ENTRIES, holders: list[int] = ()) -> DiskUse:
    """What is under `path`, links not followed (counting stops past `max_entries`), plus the files that the processes
    `holders` hold open after unlinking them (space a folder listing never shows, and which stays in use until they exit)."""
    use, stack, seen = DiskUse(), [str(path)], set()
    while stack and use.entries <= max_entries:
        folder = stack.pop()
        try:
            with os.scandir(folder) as it:
                for entry in it:
                    use.entries += 1
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    use.bytes += st.st_blocks * 512
                    seen.add((st.st_dev, st.st_ino))
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
                    else:
                        use.largest = max(use.largest, st.st_size)
        except PermissionError:  # (root lists anything: only a lab run by a user meets this)
            use.unreadable = use.unreadable or folder
        except OSError:
            continue
    for pid in holders:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds[:MAX_OPEN_FILES]:
            try:
                st = os.stat(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if st.st_nlink == 0 and stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                use.bytes += st.st_blocks * 512
                use.largest = max(use.largest, st.st_size)
    return use


def _own_cgroups() -> dict[str, str]:
    """controller ('memory', 'pids', or '' for v2) -> this process's cgroup path, from /proc/self/cgroup."""
    found: dict[str, str] = {}
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return found
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) == 3:
            for controller in parts[1].split(",") if parts[1] else [""]:
                found[controller] = parts[2]
    return found


def _mounts() -> dict[str, tuple[str, str]]:
    """controller ('memory', 'pids', '' for the v2 hierarchy) -> (mount point, the hierarchy's path at that mount)."""
    found: dict[str, tuple[str, str]] = {}
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return found
    for line in lines:
        left, _, right = line.partition(" - ")
        fields, rest = left.split(), right.split()
        if len(fields) < 5 or len(rest) < 3:
            continue
        root, point = fields[3], fields[4].replace("\\040", " ")
        if rest[0] == "cgroup2":
            found.setdefault("", (point, root))
        elif rest[0] == "cgroup":
            for option in rest[2].split(","):
                if option in ("memory", "pids"):
                    found.setdefault(option, (point, root))
    return found


def _where(controller: str) -> Path | None:
    """The folder of this process's cgroup in `controller`'s hierarchy, if it is mounted here."""
    mount, own = _mounts().get(controller), _own_cgroups().get(controller)
    if mount is None or own is None:
        return None
    point, root = mount
    rel = own[len(root):] if root != "/" and own.startswith(root) else own
    path = Path(point) / rel.lstrip("/")
    return path if path.is_dir() else Path(point)  # a cgroup namespace can hide the path: its mount is this process's


def _write(path: Path, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _sweep(parent: Path) -> None:
    """Remove the lab's cgroups in `parent` whose creator is gone (a job killed with SIGKILL) and nothing runs in."""
    try:
        entries = list(parent.iterdir())
    except OSError:
        return
    for entry in entries:
        m = re.match(rf"{PREFIX}(\d+)-", entry.name)
        if not m or not entry.is_dir():
            continue
        try:
            os.kill(int(m.group(1)), 0)
            continue  # its creator lives
        except ProcessLookupError:
            pass
        except OSError:
            continue
        try:
            if not (entry / "cgroup.procs").read_text().strip():
                entry.rmdir()
        except OSError:
            pass


@dataclass
class RunCap:
    memory: int | None  # bytes for the whole process tree; None: none
    tasks: int | None  # processes + threads; None: none
    dirs: list[Path] = field(default_factory=list)  # the cgroup folders the process enters (v1: memory and pids)
    version: int = 0  # 2 or 1: a cgroup; 0: per-process limits only
    gpus: bool = False
    why: str = ""  # why there is no cgroup (version 0)
    _final: dict | None = field(default=None, repr=False)  # what the kernel said, kept at remove()
    _events: list = field(default_factory=list, repr=False)  # v1: (which, eventfd, oom_control fd) of OOM notifications
    _notified: dict = field(default_factory=dict, repr=False)  # which -> OOM notifications so far

    @classmethod
    def create(cls, name: str, memory: int | None, tasks: int | None = TASKS, gpus: bool = False) -> RunCap:
        """A cap for one process tree, named after `name` (the run and its part). Never raises: where no cgroup can be
        made here, the result caps each process's memory instead (`how` says so)."""
        cap = cls(memory, tasks, gpus=gpus)
        if memory is None and tasks is None:
            cap.why = "no caps asked for"
            return cap
        label = f"{PREFIX}{os.getpid()}-{_SAFE.sub('_', name)[:80]}"
        try:
            cap._make_v2(label) or cap._make_v1(label)
        except OSError as e:
            cap.remove()
            cap.dirs, cap.version = [], 0
            cap.why = f"the cgroup could not be set up ({e.strerror or e})"
        if not cap.version and not cap.why:
            cap.why = "no writable cgroup with the memory and pids controllers here"
        return cap

    def _make_v2(self, label: str) -> bool:
        parent = _where("")
        if parent is None or not (parent / "cgroup.subtree_control").exists():
            return False
        enabled = (parent / "cgroup.subtree_control").read_text().split()
        if not {"memory", "pids"} <= set(enabled):
            try:  # possible where the job's cgroup has no processes of its own (a delegated, empty subtree)
                _write(parent / "cgroup.subtree_control", "+memory +pids")
            except OSError:
                return False
        _sweep(parent)
        path = parent / label
        path.mkdir()
        self.dirs, self.version = [path], 2
        if self.memory is not None:
            _write(path / "memory.max", str(self.memory))
            if (path / "memory.swap.max").exists():
                _write(path / "memory.swap.max", "0")  # the cap is on memory, not on memory plus what swaps out
        if self.tasks is not None:
            _write(path / "pids.max", str(self.tasks))
        return True

    def _make_v1(self, label: str) -> bool:
        mem, pids = _where("memory"), _where("pids")
        if (self.memory is not None and mem is None) or (self.tasks is not None and pids is None):
            return False
        if not all(os.access(p, os.W_OK) for p in (mem, pids) if p is not None):
            return False
        self.version = 1
        if self.memory is not None:
            _sweep(mem)
            path = mem / label
            path.mkdir()
            self.dirs.append(path)
            _write(path / "memory.limit_in_bytes", str(self.memory))
            if (path / "memory.memsw.limit_in_bytes").exists():  # with swap accounting: no swapping past the cap either
                _write(path / "memory.memsw.limit_in_bytes", str(self.memory))
            # which limit an OOM kill was for: v1's oom_kill counts kills for a limit above the cap too, and failcnt stays
            # 0 on recent kernels. An OOM notifies its cgroup and every one below it: the cap's own limit notifies the cap
            # alone, one above notifies the job's cgroup as well
            for which, folder in (("own", path), ("above", mem)):
                try:
                    efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
                    ofd = os.open(folder / "memory.oom_control", os.O_RDONLY | os.O_CLOEXEC)
                    self._events.append((which, efd, ofd))
                    _write(folder / "cgroup.event_control", f"{efd} {ofd}")
                except OSError:
                    if which == "own":
                        break  # no notifications here: the kill is not the cap's (resumed once), never wrongly final
        if self.tasks is not None:
            _sweep(pids)
            path = pids / label
            path.mkdir()
            self.dirs.append(path)
            _write(path / "pids.max", str(self.tasks))
        return True

    @property
    def how(self) -> str:
        """One line: what caps this process tree."""
        mem = f"{self.memory / (1 << 30):.1f} GiB" if self.memory is not None else "no memory cap"
        tasks = f"{self.tasks} tasks" if self.tasks is not None else "no task cap"
        if self.version:
            return f"cgroup v{self.version}: {mem}, {tasks}"
        if self.memory is not None and not self.gpus:
            return f"per process only ({self.why}): {mem} each (RLIMIT_DATA), no task cap"
        return f"none ({self.why})"

    def enter(self) -> None:
        """preexec_fn: move the new process into the cap (or cap its memory where there is no cgroup)."""
        self.add(os.getpid())
        for name, value in self.rlimits().items():
            resource.setrlimit(getattr(resource, name), (value, value))

    def add(self, pid: int) -> None:
        """Move a process started elsewhere (a trainer forked by a warm host, runners/warm.py) into the cap; what enter()
        would set on the process itself is `rlimits()`, for it to set."""
        for path in self.dirs:
            _write(path / "cgroup.procs", str(pid))

    def rlimits(self) -> dict[str, int]:
        """The per-process limits enter() sets where there is no cgroup, by resource name."""
        if not self.version and self.memory is not None and not self.gpus:
            return {"RLIMIT_DATA": self.memory}
        return {}

    def _read(self, name: str) -> str:
        for path in self.dirs:
            if (path / name).exists():
                try:
                    return (path / name).read_text()
                except OSError:
                    return ""
        return ""

    def _counts(self) -> dict:
        """What the kernel says about the tree now: {"oom_kill", "hit", "peak", "tasks_hit"}."""
        def count(name: str, key: str) -> int:
            m = re.search(rf"^{key} (\d+)$", self._read(name), re.MULTILINE)
            return int(m.group(1)) if m else 0

        if self.version == 2:  # memory.events.local: OOMs at this cgroup's own limit, not one above it ("max" is reclaim)
            local = "memory.events.local" if any((d / "memory.events.local").exists() for d in self.dirs) else "memory.events"
            hit, oom_kill = count(local, "oom"), count("memory.events", "oom_kill")
        else:
            for which, efd, _ in self._events:
                try:
                    self._notified[which] = self._notified.get(which, 0) + os.eventfd_read(efd)
                except OSError:
                    pass
            oom_kill = count("memory.oom_control", "oom_kill")
            hit = int(self._notified.get("own", 0) > 0 and not self._notified.get("above", 0))
        peak = None
        for name in ("memory.peak", "memory.max_usage_in_bytes"):
            text = self._read(name).strip()
            if text.isdigit():
                peak = int(text)
                break
        return {"oom_kill": oom_kill, "hit": hit, "peak": peak, "tasks_hit": count("pids.events", "max")}

    def _state(self) -> dict:
        return self._final if self._final is not None else self._counts()

    def out_of_memory(self) -> bool:
        """True when the kernel killed a process of this tree at this cap: its own limit reached, and an OOM kill in it.
        A kill for a limit above it (the machine's, a SLURM job's) is not the run's cap: that run was killed from outside."""
        state = self._state()
        return self.memory is not None and state["oom_kill"] > 0 and state["hit"] > 0

    def peak(self) -> int | None:
        """The most memory the tree used at once, where the kernel says (bytes)."""
        return self._state()["peak"]

    def out_of_tasks(self) -> bool:
        """True when a fork or a new thread in the tree failed at the task cap."""
        return self.tasks is not None and self._state()["tasks_hit"] > 0

    def pids(self) -> list[int]:
        """The processes in the cap now."""
        for path in self.dirs:
            try:
                return [int(p) for p in (path / "cgroup.procs").read_text().split()]
            except (OSError, ValueError):
                continue
        return []

    def remove(self) -> None:
        """Kill whatever is still in the cgroup (a process that escaped its parent's end) and remove it; what the kernel
        said about it stays readable (out_of_memory, peak, out_of_tasks)."""
        if self.dirs and self._final is None:
            self._final = self._counts()
        for _, efd, ofd in self._events:
            for fd in (efd, ofd):
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._events = []
        for path in reversed(self.dirs):
            if (path / "cgroup.kill").exists():  # v2: the kernel kills the whole tree at once, no pid read then reused
                try:
                    _write(path / "cgroup.kill", "1")
                except OSError:
                    pass
            deadline = time.monotonic() + 5.0
            while True:
                try:
                    pids = [int(p) for p in (path / "cgroup.procs").read_text().split()]
                except (OSError, ValueError):
                    pids = []
                if not pids or time.monotonic() > deadline:
                    break
                for pid in pids:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except OSError:
                        pass
                time.sleep(0.05)
            for child in sorted((d for d in path.rglob("*") if d.is_dir()), key=lambda d: -len(d.parts)):
                try:  # (cgroups made inside it: the sandbox refuses the mounts that would allow it; removed all the same)
                    child.rmdir()
                except OSError:
                    pass
            try:
                path.rmdir()
            except OSError:
                pass  # busy still, or gone: the next cap made beside it sweeps it once its creator is gone
