"""`pretrainlab train` as a real process of its own, without paying `import torch` again.

A fresh interpreter spends 2.5-3 s of CPU importing torch before the CLI parses its first argument;
the suite starts dozens of trainers to kill, preempt and resume them. Here they are forked from a
server process (multiprocessing's forkserver, one per pytest worker) that has imported torch and
nothing else: each trainer is still its own process (its own pid, signals, exit code, stdout and
stderr, environment and working directory), and it imports pretrainlab, reads its environment and
parses its arguments afresh, as `python -m pretrainlab` does. Only torch's import is shared.
Commands that do not import torch (runs, data, research...) keep a fresh interpreter each.
"""

from __future__ import annotations

import multiprocessing
import os
import runpy
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import weakref
from pathlib import Path

_CTX = None


def _context():
    global _CTX
    if _CTX is None:
        _CTX = multiprocessing.get_context("forkserver")
        _CTX.set_forkserver_preload(["torch"])
    return _CTX


def _child(argv: list[str], env: dict, cwd: str, out: str, err: str, sigint_ignored: bool) -> None:
    # SIGINT as a terminal's foreground command has it (Python's handler), whatever the suite inherited: run as a
    # background job (`make test &`), every process of it starts with SIGINT ignored, which the trainer keeps
    signal.signal(signal.SIGINT, signal.SIG_IGN if sigint_ignored else signal.default_int_handler)
    for fd, path in ((1, out), (2, err)):
        f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(f, fd)
        os.close(f)
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    sys.argv = ["pretrainlab", *argv]
    runpy.run_module("pretrainlab", run_name="__main__", alter_sys=True)


class Forked:
    """A subset of subprocess.Popen (text mode, stdout and stderr captured) for a forked `pretrainlab ARGS`."""

    def __init__(self, args: list[str], env: dict | None = None, cwd: str | Path | None = None, sigint_ignored: bool = False):
        self.args = args
        self._dir = tempfile.mkdtemp(prefix="forked-")
        weakref.finalize(self, shutil.rmtree, self._dir, ignore_errors=True)  # its output, once nobody can read it
        self._out, self._err = os.path.join(self._dir, "stdout"), os.path.join(self._dir, "stderr")
        env = dict(os.environ if env is None else env)
        cwd = os.getcwd() if cwd is None else cwd  # the caller's, as subprocess gives (the server's may differ)
        self._proc = _context().Process(target=_child, args=(list(args), env, str(cwd), self._out, self._err, sigint_ignored))
        self._proc.start()
        self.pid = self._proc.pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None and not self._proc.is_alive():
            self._proc.join()
            self.returncode = self._proc.exitcode
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        self._proc.join(timeout)
        if self.poll() is None:
            raise subprocess.TimeoutExpired(["pretrainlab", *self.args], timeout)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self._proc.kill()

    def terminate(self) -> None:
        self._proc.terminate()

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        self.wait(timeout)
        return (Path(self._out).read_text(errors="replace"), Path(self._err).read_text(errors="replace"))

    def read_stdout(self) -> str:
        """What it has written to stdout so far."""
        return Path(self._out).read_text(errors="replace")


def run(args: list[str], env: dict | None = None, cwd: str | Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """As subprocess.run([python, -m, pretrainlab, *args], capture_output=True, text=True, timeout=...)."""
    proc = Forked(args, env=env, cwd=cwd)
    deadline = time.monotonic() + timeout
    try:
        out, err = proc.communicate(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise
    return subprocess.CompletedProcess(["pretrainlab", *args], proc.returncode, out, err)
