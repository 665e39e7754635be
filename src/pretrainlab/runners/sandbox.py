"""The sandbox experiment processes run in: bubblewrap (`bwrap`) on Linux.

    box = Sandbox.detect()                                     # bwrap when it works here, else none (warned once)
    cmd = box.wrap(["python", "-m", "pretrainlab", "train", ...],
                   code_src=tree / "src", read_only=[corpus files], writable=[run_dir])
    env = scrubbed_env(extra={"OMP_NUM_THREADS": "1"})      # never API keys, tokens or passwords

Inside: no network; no home directory, workspace, ledger or other run; the code copy, the
Python installation and the listed corpus files read-only; only the run directory
writable; a private /tmp and /dev/shm (tmpfs, at most 4 GiB and 1 GiB, 1/8 and 1/16 of the RAM). The decision and test splits are never listed, so experiment
code cannot read them from disk. The sandboxed process stays in the caller's process
group, so SIGTERM (early stop, preemption) reaches it; bwrap itself must not die of that
signal first, so it is started with SIGTERM ignored (`ignore_sigterm`), which bwrap
passes on and Python programs replace with their own handler.

Where bwrap is missing (install Debian's `bubblewrap` package) or cannot create
namespaces, processes run unsandboxed with the scrubbed environment, and `Sandbox.detect`
says so loudly once.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

# Environment variables an experiment process may inherit (by name prefix); everything else
# is dropped. A name that looks like a credential is dropped even when it matches.
ENV_ALLOWED = ("PATH", "LANG", "LC_", "TZ", "PYTHONHASHSEED", "PYTHONUNBUFFERED", "OMP_", "MKL_", "KMP_",
               "CUDA_", "NCCL_", "TORCH_", "TORCHINDUCTOR_", "TRITON_", "LD_LIBRARY_PATH", "PRETRAINLAB_HOME", "PRETRAINLAB_NO_LEDGER", "PRETRAINLAB_SANDBOX")
SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSW|CREDENTIAL|AUTH|COOKIE|SESSION", re.IGNORECASE)
# System files a Python + PyTorch process needs; /etc as a whole is not exposed.
ETC_FILES = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "passwd", "group", "nsswitch.conf", "hosts", "localtime",
             "alternatives")
INSTALL_HINT = "install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap; Fedora: dnf install bubblewrap)"

_warned = False
_SIZE_SUPPORT: dict[str, bool] = {}
TMP_BYTES, SHM_BYTES = 4 << 30, 1 << 30  # a sandbox's /tmp and /dev/shm, at most (and at most 1/8 and 1/16 of the RAM)


def _tmpfs_sizes() -> tuple[int, int]:
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (OSError, ValueError):
        ram = 16 << 30
    return min(TMP_BYTES, ram // 8), min(SHM_BYTES, ram // 16)


def scrubbed_env(extra: dict[str, str] | None = None, base: dict[str, str] | None = None) -> dict[str, str]:
    """The allowed part of `base` (default os.environ) plus `extra`, minus anything named like
    a secret: an experiment never sees API keys, tokens, passwords or database URLs."""
    base = os.environ if base is None else base
    env = {k: v for k, v in base.items() if k.startswith(ENV_ALLOWED) and not SECRET_NAME.search(k)}
    env.update({k: v for k, v in (extra or {}).items() if not SECRET_NAME.search(k)})
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env["HOME"] = "/tmp"
    env["LANG"] = env.get("LANG", "C.UTF-8")
    return env


# The seccomp filter every sandboxed process runs under (bwrap --seccomp). Nothing a single training or scoring process
# does needs any of what it refuses:
# - sockets but unix ones, and io_uring (which makes sockets without the socket call): loopback TCP and UDP buffers are
#   kernel memory a cgroup v1 memory cap does not count (a model parked 2 GiB in unread sockets under a 256 MiB cap);
# - fallocate() but the plain call: FALLOC_FL_KEEP_SIZE reserves disk without a file growing (no RLIMIT_FSIZE), 2 GiB in 6 ms;
# - new namespaces and mounts (unshare, setns, clone with a CLONE_NEW* flag, clone3, the mount calls): from a user
#   namespace of its own, a model mounted the cgroup file system, raised its own memory and task caps, froze the lab's
#   processes, and kept data in cgroup names for the second scoring worker to read;
# - inotify, fanotify and the kernel's keyrings: their quotas are per user, and a sandbox started by root shares root's
#   (it used up root's inotify instances and key bytes for the whole machine while it ran);
# - any other syscall ABI (i386's socketcall, x86_64's x32).
_ARCHES = {  # AUDIT_ARCH, then the syscall numbers by name
    "x86_64": (0xC000003E, {"socket": 41, "fallocate": 285, "clone": 56, "clone3": 435, "unshare": 272, "setns": 308,
                            "mount": 165, "umount2": 166, "pivot_root": 155, "open_tree": 428, "move_mount": 429, "fsopen": 430,
                            "fsconfig": 431, "fsmount": 432, "fspick": 433, "mount_setattr": 442, "inotify_init": 253,
                            "inotify_init1": 294, "fanotify_init": 300, "add_key": 248, "request_key": 249, "keyctl": 250,
                            "io_uring_setup": 425}),
    "aarch64": (0xC00000B7, {"socket": 198, "fallocate": 47, "clone": 220, "clone3": 435, "unshare": 97, "setns": 268,
                             "mount": 40, "umount2": 39, "pivot_root": 41, "open_tree": 428, "move_mount": 429, "fsopen": 430,
                             "fsconfig": 431, "fsmount": 432, "fspick": 433, "mount_setattr": 442, "inotify_init1": 26,
                             "fanotify_init": 262, "add_key": 217, "request_key": 218, "keyctl": 219, "io_uring_setup": 425}),
}
REFUSED = ("unshare", "setns", "mount", "umount2", "pivot_root", "open_tree", "move_mount", "fsopen", "fsconfig", "fsmount",
           "fspick", "mount_setattr", "inotify_init", "inotify_init1", "fanotify_init", "add_key", "request_key", "keyctl",
           "io_uring_setup")
CLONE_NEW = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000 | 0x00000080  # NS..TIME
AF_UNIX, EPERM, ENOSYS, EOPNOTSUPP, EAFNOSUPPORT = 1, 1, 38, 95, 97
_SECCOMP: dict[str, str | None] = {}
_SECCOMP_OK: dict[str, str | None] = {}  # bwrap path -> the filter's file where it works, else None
_USERNS_LOCK: dict[str, bool] = {}  # bwrap path -> whether it takes --disable-userns (0.8 and later)


def seccomp_program(machine: str | None = None) -> bytes | None:
    """The filter as classic BPF (struct sock_filter[]), or None on an architecture it does not know."""
    import platform
    import struct

    arch = _ARCHES.get(machine or platform.machine())
    if arch is None:
        return None
    audit_arch, nr = arch
    codes = {"ld": 0x20, "jeq": 0x15, "jge": 0x35, "jset": 0x45, "ret": 0x06}  # BPF_LD|W|ABS, BPF_JMP|JEQ/JGE/JSET|K, BPF_RET|K
    allow, errno = 0x7FFF0000, 0x00050000  # SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO | errno
    # (op, value, where to go when true, when false): a label, or None for the next instruction
    program = [
        ("ld", 4, None, None),                             # the syscall's ABI
        ("jeq", audit_arch, "native", None),
        ("ret", errno | EPERM, None, None),                # any other ABI
        ("native", None, None, None),
        ("ld", 0, None, None),                             # the syscall's number
        ("jge", 0x40000000, "eperm", None),                # x32 (x86_64's __X32_SYSCALL_BIT)
        *[("jeq", nr[name], "eperm", None) for name in REFUSED if name in nr],
        ("jeq", nr["clone3"], "enosys", None),             # its flags are in memory the filter cannot read: glibc falls back to clone
        ("jeq", nr["socket"], "socket", None),
        ("jeq", nr["fallocate"], "fallocate", None),
        ("jeq", nr["clone"], "clone", None),
        ("ret", allow, None, None),                        # everything else
        ("socket", None, None, None),
        ("ld", 16, None, None),                            # its family: args[0], low 32 bits
        ("jeq", AF_UNIX, "allow", None),
        ("ret", errno | EAFNOSUPPORT, None, None),         # inet, netlink, packet, ...
        ("fallocate", None, None, None),
        ("ld", 24, None, None),                            # its mode: args[1], low 32 bits
        ("jeq", 0, "allow", None),
        ("ret", errno | EOPNOTSUPP, None, None),           # KEEP_SIZE, PUNCH_HOLE, ...: glibc falls back to writing
        ("clone", None, None, None),
        ("ld", 16, None, None),                            # its flags: args[0], low 32 bits
        ("jset", CLONE_NEW, "eperm", None),                # a thread or a process, never a namespace
        ("allow", None, None, None),
        ("ret", allow, None, None),
        ("eperm", None, None, None),
        ("ret", errno | EPERM, None, None),
        ("enosys", None, None, None),
        ("ret", errno | ENOSYS, None, None),
    ]
    at, index = {}, 0
    for op, *_ in program:
        if op in codes:
            index += 1
        else:
            at[op] = index
    out, index = [], 0
    for op, value, yes, no in program:
        if op not in codes:
            continue
        index += 1
        jt, jf = (at[yes] - index if yes else 0), (at[no] - index if no else 0)
        assert 0 <= jt < 256 and 0 <= jf < 256, "a jump too far for classic BPF"
        out.append(struct.pack("=HBBI", codes[op], jt, jf, value))
    return b"".join(out)


def _seccomp_file() -> str | None:
    """The filter in a file for bwrap to read on fd 9: one per user and filter in the temp folder, reused by every job
    process (checked: this user's, written by no one else, never a link, the same bytes), else a private one."""
    import hashlib
    import stat
    import tempfile

    if "path" in _SECCOMP:
        return _SECCOMP["path"]
    program = seccomp_program()
    if program is None:
        _SECCOMP["path"] = None
        return None
    path = os.path.join(tempfile.gettempdir(), f"pretrainlab-seccomp-{os.getuid()}-{hashlib.sha256(program).hexdigest()[:12]}.bpf")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            st = os.fstat(fd)
            ours = st.st_uid == os.getuid() and stat.S_ISREG(st.st_mode) and not st.st_mode & 0o022
            if ours and os.read(fd, len(program) + 1) == program:
                _SECCOMP["path"] = path
                return path
        finally:
            os.close(fd)
    except OSError:
        pass
    fd, tmp = tempfile.mkstemp(prefix="pretrainlab-seccomp-", suffix=".bpf")
    with os.fdopen(fd, "wb") as f:
        f.write(program)
    try:
        os.replace(tmp, path)  # (the temp folder's sticky bit: fails where another user holds the name)
        tmp = path
    except OSError:
        pass  # a private file, this process's alone
    _SECCOMP["path"] = tmp
    return tmp


def ignore_sigterm() -> None:
    """preexec_fn for bwrap: SIG_IGN survives exec, so bwrap outlives a SIGTERM to the process
    group and the sandboxed program (which installs its own handler) checkpoints and exits."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


@dataclass
class Sandbox:
    bwrap: str | None  # path to bwrap, or None: no sandbox here
    reason: str = ""  # why there is none

    @classmethod
    def detect(cls, warn: bool = True) -> Sandbox:
        """bwrap if it is installed and can create namespaces here, else an unsandboxed one
        (with a loud warning, once per process)."""
        global _warned
        path = shutil.which("bwrap")
        reason = ""
        if path is None:
            reason = f"bwrap is not installed: {INSTALL_HINT}"
        else:
            try:
                probe = subprocess.run([path, *cls._system_binds(), "--unshare-all", "--die-with-parent", "--", "/bin/true"],
                                       capture_output=True, text=True, timeout=30)
                if probe.returncode != 0:
                    reason = f"bwrap cannot create a sandbox here ({probe.stderr.strip()[:200]}): allow unprivileged user namespaces"
            except (OSError, subprocess.TimeoutExpired) as e:
                reason = f"bwrap failed to start ({e})"
        if reason:
            if warn and not _warned:
                _warned = True
                print(f"\n[pretrainlab] WARNING: experiment processes are NOT sandboxed: {reason}. They run with a scrubbed "
                      "environment but can read and write this machine's files, including the decision split.\n",
                      file=sys.stderr, flush=True)
            return cls(None, reason)
        return cls(path)

    @property
    def active(self) -> bool:
        return self.bwrap is not None

    def _sized(self, nbytes: int) -> list[str]:
        """bwrap's --size for the next tmpfs, where this bwrap takes it (0.7 and later, and not installed setuid)."""
        if self.bwrap not in _SIZE_SUPPORT:
            try:
                out = subprocess.run([self.bwrap, *self._system_binds(), "--size", str(1 << 20), "--tmpfs", "/tmp", "--unshare-all",
                                      "--die-with-parent", "--", "/bin/true"], capture_output=True, timeout=30)
                _SIZE_SUPPORT[self.bwrap] = out.returncode == 0
            except (OSError, subprocess.TimeoutExpired):
                _SIZE_SUPPORT[self.bwrap] = False
        return ["--size", str(nbytes)] if _SIZE_SUPPORT[self.bwrap] else []

    def _userns_lock(self) -> list[str]:
        """--unshare-user --disable-userns where this bwrap takes them (0.8 and later): no user namespace can be made inside,
        so no capability ever comes back (the seccomp filter refuses the calls too, for older ones)."""
        if self.bwrap not in _USERNS_LOCK:
            try:
                out = subprocess.run([self.bwrap, *self._system_binds(), "--unshare-all", "--unshare-user", "--disable-userns",
                                      "--die-with-parent", "--", "/bin/true"], capture_output=True, timeout=30)
                _USERNS_LOCK[self.bwrap] = out.returncode == 0
            except (OSError, subprocess.TimeoutExpired):
                _USERNS_LOCK[self.bwrap] = False
        return ["--unshare-user", "--disable-userns"] if _USERNS_LOCK[self.bwrap] else []

    def _seccomp(self) -> str | None:
        """The seccomp filter's file, where this bwrap and kernel take it (tried once: a kernel built without seccomp
        filters would fail every sandboxed run), else None, said once."""
        if self.bwrap not in _SECCOMP_OK:
            bpf = _seccomp_file()
            ok = False
            if bpf is not None:
                try:
                    out = subprocess.run(["/bin/sh", "-c", 'exec "$@" 9<"$0"', bpf, self.bwrap, *self._system_binds(), "--unshare-all",
                                          "--die-with-parent", "--seccomp", "9", "--", "/bin/true"], capture_output=True, timeout=30)
                    ok = out.returncode == 0
                except (OSError, subprocess.TimeoutExpired):
                    pass
            if not ok:
                why = "not written for this architecture" if bpf is None else "bwrap or the kernel refused it"
                print(f"[pretrainlab] warning: no seccomp filter in the sandbox here ({why}): experiment code can open inet "
                      "sockets on its private loopback, whose buffers a cgroup v1 memory cap does not count", file=sys.stderr,
                      flush=True)
            _SECCOMP_OK[self.bwrap] = bpf if ok else None
        return _SECCOMP_OK[self.bwrap]

    @staticmethod
    def _system_binds() -> list[str]:
        args: list[str] = []
        for top in ("/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32"):
            if os.path.islink(top):
                args += ["--symlink", os.readlink(top), top]
            elif os.path.isdir(top):
                args += ["--ro-bind", top, top]
        for name in ETC_FILES:
            if os.path.exists(f"/etc/{name}"):
                args += ["--ro-bind", f"/etc/{name}", f"/etc/{name}"]
        return args

    def wrap(self, cmd: list[str], *, code_src: Path, read_only: list[Path] = (), writable: list[Path] = (),
             gpus: bool = False, die_with_parent: bool = True, hidden: list[Path] = ()) -> list[str]:
        """`cmd` inside the sandbox (unchanged when there is none). `code_src` is the source
        tree on PYTHONPATH (the lab's, or a patched copy): mounted read-only. `die_with_parent`
        False: the sandbox outlives the process that starts it (a warm host, runners/warm.py). `hidden`:
        folders inside a writable one that the sandbox sees empty and read-only."""
        if not self.active:
            return cmd
        tmp, shm = _tmpfs_sizes()
        # /tmp first: later binds go on top. Its size is capped where bwrap can (a tmpfs is memory: an experiment that fills
        # it would take the machine's RAM, which a tmpfs's default cap lets grow to half of it per sandbox)
        args = [self.bwrap, *self._system_binds(), "--proc", "/proc", *self._sized(tmp), "--tmpfs", "/tmp"]
        # the kernel's settings read-only: bwrap started by root skips covering /proc/sys (root gets EACCES asking whether
        # it may write the folder, and can still write the files in it: kernel.core_pattern runs a program as root)
        args += ["--ro-bind", "/proc/sys", "/proc/sys", "--ro-bind-try", "/proc/sysrq-trigger", "/proc/sysrq-trigger"]
        args += ["--dev", "/dev"]  # a minimal /dev of the sandbox's own: its /dev/shm is private, never the host's
        args += [*self._sized(shm), "--tmpfs", "/dev/shm"]
        if gpus:  # CUDA needs the GPUs' device nodes (only those: the host's whole /dev would share /dev/shm between
            # sandboxes, a channel between the two scoring workers and from one run to the next) and the driver's /sys
            for node in sorted(glob.glob("/dev/nvidia*")) + sorted(glob.glob("/dev/dri")):
                args += ["--dev-bind", node, node]
            args += ["--ro-bind", "/sys", "/sys"]
        for prefix in {sys.base_prefix, sys.prefix, sys.exec_prefix}:  # the interpreter and its site-packages
            if not prefix.startswith(("/usr/", "/bin/", "/lib")):
                args += ["--ro-bind", prefix, prefix]
        args += ["--ro-bind", str(Path(code_src).resolve()), str(Path(code_src).resolve())]
        for path in read_only:
            path = Path(path).resolve()
            args += ["--ro-bind", str(path), str(path)]
        for path in writable:
            path = Path(path).resolve()
            args += ["--bind", str(path), str(path)]
        for path in hidden:
            path = Path(path).resolve()
            args += [*self._sized(1 << 16), "--tmpfs", str(path), "--remount-ro", str(path)]
        # the sandbox's root and /dev are tmpfs of bwrap's, uncapped (half the RAM each): read-only once everything is
        # mounted on them, so the capped /tmp and /dev/shm and the run directory are the only places to write
        args += ["--remount-ro", "/", "--remount-ro", "/dev"]
        # no capabilities: bwrap started by root keeps them all (a read-only bind could be remounted writable, the lab's own
        # Python installation with it). No --new-session: the sandboxed process must stay in the job's process group, where
        # the SIGTERM of an early stop, a timeout or a preemption reaches it (the job runs in a session of its own, with no
        # terminal to push keystrokes into)
        args += ["--chdir", "/tmp", "--unshare-all", *self._userns_lock(), *(["--die-with-parent"] if die_with_parent else []),
                 "--cap-drop", "ALL"]
        bpf = self._seccomp()
        if bpf is None:
            return [*args, "--", *cmd]
        # bwrap reads the filter from an open descriptor: a shell puts the file on fd 9 and becomes bwrap
        return ["/bin/sh", "-c", 'exec "$@" 9<"$0"', bpf, *args, "--seccomp", "9", "--", *cmd]
