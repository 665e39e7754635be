"""The local runner: N slots on this machine, each run in its own `pretrainlab train`
process with a timeout.

    runner = LocalRunner(num_slots=2)                  # CPU: the cores split fairly across slots
    runner = LocalRunner(num_slots=4, gpus=[0, 1, 2, 3])  # one GPU per slot (CUDA_VISIBLE_DEVICES)
    runner.submit(Job("exp3-seed0", "tiny-cpu", Path("runs/exp3-seed0"), ["optim.lr=0.02"], timeout_s=120))
    while runner.busy():
        for result in runner.poll(): ...                # finished jobs, timeouts enforced
    runner.stop("exp3-seed0")                          # early stop: SIGTERM -> checkpoint, 'preempted'
    runner.idle_because("waiting for the baseline")    # why a free slot stays empty (idle_breakdown)

Waiting is event-driven where the OS allows it (a pidfd per child on Linux): `wait` and
`sleep` return the moment a run exits, so a freed slot is refilled at once and the
utilisation figures use each run's real exit time.

A run that crashes (a bad code patch, an import error, an OOM) comes back as a JobResult
with status 'crashed' and the tail of its stderr; the runner itself never raises for it.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from .base import Job, JobResult, SlotRunner


@dataclass
class _Running:
    job: Job
    proc: subprocess.Popen
    slot: int
    started_at: float
    term_sent_at: float | None = None
    reason: str | None = None  # 'timeout' or 'stopped' once we signalled it
    pidfd: int | None = None  # readable once the process exits (Linux); None: poll


class LocalRunner(SlotRunner):
    def __init__(self, num_slots: int, gpus: list[int] | None = None, threads_per_slot: int | None = None, log_dir: Path | None = None,
                 sandbox: bool = True, warm: bool = True):
        if num_slots < 1:
            raise UserError(f"--parallel must be >= 1, got {num_slots}")
        if gpus is not None and len(gpus) < num_slots:
            raise UserError(f"--parallel {num_slots} needs {num_slots} GPUs, only {len(gpus)} given: lower --parallel")
        super().__init__(num_slots, log_dir, sandbox)
        self.gpus = gpus
        self.threads_per_slot = threads_per_slot or max(1, (os.cpu_count() or 1) // num_slots)
        self.warm = warm  # runs of the lab's own code forked from a host that has imported torch (runners/warm.py)

    def memory_share(self) -> float:
        """Each slot's share of this machine's RAM: the runs beside each other split it evenly."""
        return 1.0 / self.num_slots

    # ---- scheduling ------------------------------------------------------------------------

    def scoring_resources(self) -> dict:
        """What the lab's own scoring may use when no run is in flight (the hidden test split at
        close): the first GPU where runs had GPUs (its device nodes passed into the sandbox), else
        every slot's CPU threads. Keyword arguments for scoring.score_run."""
        if self.gpus:
            return {"threads": self.threads_per_slot, "gpus": True, "env": {"CUDA_VISIBLE_DEVICES": str(self.gpus[0])}}
        return {"threads": self.threads_per_slot * self.num_slots, "gpus": False, "env": {}}

    def submit(self, job: Job) -> None:
        assert self.free_slots() > 0, "submit() with no free slot"
        assert job.key not in self._running, f"job {job.key} already running"
        slot = self._free_slot()
        env = {"CUDA_VISIBLE_DEVICES": str(self.gpus[slot])} if self.gpus is not None else {}
        # the run goes through the lab's job process (runners/job.py): sandboxed training, then the lab's own score
        spec_path = self._spec_path(job.key)
        spec_path.write_text(json.dumps(self._spec(job, self.threads_per_slot, self.gpus is not None, env), indent=1))
        cmd = [sys.executable, "-m", "pretrainlab.runners.job", str(spec_path)]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # the job process is the lab's: it imports only the lab's package
        with open(self._stderr_path(job.key), "w") as err:
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env, start_new_session=True)
        self._started(job.key, _Running(job, proc, slot, time.time(), pidfd=_pidfd(proc)))

    def _send(self, r: _Running, sig: int) -> None:
        _signal(r.proc, sig)

    def _kill(self, r: _Running) -> None:
        _signal(r.proc, signal.SIGKILL)
        r.proc.wait()
        if r.pidfd is not None:
            os.close(r.pidfd)

    def poll(self) -> list[JobResult]:
        """Finished jobs since the last call; enforces timeouts and the kill grace period."""
        done = []
        now = time.time()
        for key, r in list(self._running.items()):
            if r.proc.poll() is None:
                self._enforce_deadlines(key, r, now, since=r.started_at)
                continue
            ended = time.time()
            self._ended(key, ended)
            if r.pidfd is not None:
                os.close(r.pidfd)
            done.append(self._result(r, r.proc.returncode, ended, r.reason))
        return done

    def sleep(self, seconds: float) -> None:
        """Sleep up to `seconds`, returning early the moment a running job exits."""
        fds = [r.pidfd for r in self._running.values()]
        if fds and all(fd is not None for fd in fds):
            select.select(fds, [], [], seconds)
        elif self._running:  # no pidfds here: poll finely so a freed slot is not left idle long
            deadline = time.time() + seconds
            while time.time() < deadline and all(r.proc.poll() is None for r in self._running.values()):
                time.sleep(min(0.05, max(0.0, deadline - time.time())))
        else:
            time.sleep(seconds)

    def wait(self, poll_s: float = 0.5) -> list[JobResult]:
        """Block until at least one job finishes (or none is running)."""
        while self._running:
            done = self.poll()
            if done:
                return done
            self.sleep(poll_s)
        return []



def _pidfd(proc: subprocess.Popen) -> int | None:
    try:
        return os.pidfd_open(proc.pid)
    except (AttributeError, OSError):  # not Linux >= 5.3: poll instead
        return None


def _signal(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)  # the run and anything it spawned (torchrun workers)
    except ProcessLookupError:
        pass
