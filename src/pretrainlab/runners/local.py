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
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pretrainlab

from ..errors import UserError
from ..rundir import read_summary
from .sandbox import Sandbox

PACKAGE_SRC = Path(pretrainlab.__file__).resolve().parent.parent  # the lab's own source tree (on PYTHONPATH of unpatched runs)
KILL_GRACE_S = 30.0  # after SIGTERM, how long a run may take to checkpoint before SIGKILL
OVERHEAD = "overhead"  # idle reason: a slot is free and the caller has not yet refilled it or said why


@dataclass
class Job:
    key: str  # unique within the runner
    recipe: str  # a recipe name or a recipe.json path
    out_dir: Path
    overrides: list[str] = field(default_factory=list)
    timeout_s: float | None = None  # wall-clock limit for the whole process
    pythonpath: str | None = None  # an isolated source tree (code experiments)
    env: dict[str, str] = field(default_factory=dict)
    resume: bool = False  # continue out_dir from its last checkpoint instead of starting it
    score_path: Path | None = None  # where the lab writes its own score of the run (runners/scoring.py); None: not scored
    # {"corpus", "tokenizer"} of the corpus the lab scores on (a campaign's base data, fixed for all its runs, a data
    # experiment's included); None: the corpus the run trains on
    score_data: dict | None = None


@dataclass
class JobResult:
    job: Job
    status: str  # summary.json's status, or 'crashed' / 'timeout' / 'stopped' when it has none
    returncode: int
    summary: dict | None
    stderr_tail: str
    slot: int
    started_at: float
    ended_at: float

    @property
    def seconds(self) -> float:
        return self.ended_at - self.started_at


@dataclass
class _Running:
    job: Job
    proc: subprocess.Popen
    slot: int
    started_at: float
    stderr_path: Path
    term_sent_at: float | None = None
    reason: str | None = None  # 'timeout' or 'stopped' once we signalled it
    pidfd: int | None = None  # readable once the process exits (Linux); None: poll


class LocalRunner:
    def __init__(self, num_slots: int, gpus: list[int] | None = None, threads_per_slot: int | None = None, log_dir: Path | None = None,
                 sandbox: bool = True):
        if num_slots < 1:
            raise UserError(f"--parallel must be >= 1, got {num_slots}")
        if gpus is not None and len(gpus) < num_slots:
            raise UserError(f"--parallel {num_slots} needs {num_slots} GPUs, only {len(gpus)} given: lower --parallel")
        self.num_slots = num_slots
        self.gpus = gpus
        self.threads_per_slot = threads_per_slot or max(1, (os.cpu_count() or 1) // num_slots)
        self._running: dict[str, _Running] = {}
        self._logs = Path(log_dir) if log_dir else Path(tempfile.mkdtemp(prefix="pretrainlab-runner-"))
        self._logs.mkdir(parents=True, exist_ok=True)
        self.sandbox = Sandbox.detect() if sandbox else Sandbox(None, "disabled by the caller")
        self.created = time.time()
        self._intervals: list[tuple[float, float]] = []  # (start, end) of finished jobs
        self.last_submit = self.created
        # idle slot-seconds by why the free slots stayed empty; OVERHEAD until the caller says otherwise
        self.idle: dict[str, float] = {}
        self._idle_reason = OVERHEAD
        self._idle_since = self.created

    # ---- scheduling ------------------------------------------------------------------------

    def free_slots(self) -> int:
        return self.num_slots - len(self._running)

    def scoring_resources(self) -> dict:
        """What the lab's own scoring may use when no run is in flight (the hidden test split at
        close): the first GPU where runs had GPUs (its device nodes passed into the sandbox), else
        every slot's CPU threads. Keyword arguments for scoring.score_run."""
        if self.gpus:
            return {"threads": self.threads_per_slot, "gpus": True, "env": {"CUDA_VISIBLE_DEVICES": str(self.gpus[0])}}
        return {"threads": self.threads_per_slot * self.num_slots, "gpus": False, "env": {}}

    def busy(self) -> bool:
        return bool(self._running)

    def running(self) -> list[Job]:
        return [r.job for r in self._running.values()]

    def submit(self, job: Job) -> None:
        assert self.free_slots() > 0, "submit() with no free slot"
        assert job.key not in self._running, f"job {job.key} already running"
        slot = min(set(range(self.num_slots)) - {r.slot for r in self._running.values()})
        overrides = list(job.overrides)
        if self.gpus is None:
            overrides.append(f"train.num_threads={self.threads_per_slot}")
        env = {**job.env, "OMP_NUM_THREADS": str(self.threads_per_slot)}
        if self.gpus is not None:
            env["CUDA_VISIBLE_DEVICES"] = str(self.gpus[slot])
        # the run goes through the lab's job process (runners/job.py): sandboxed training, then the lab's own score
        spec = {"key": job.key, "recipe": job.recipe, "overrides": overrides, "run_dir": str(job.out_dir), "resume": job.resume,
                "code_src": job.pythonpath or str(PACKAGE_SRC), "env": env, "sandbox": self.sandbox.active,
                "score_path": str(job.score_path) if job.score_path else None, "score_data": job.score_data}
        spec_path = self._logs / f"{job.key}.spec.json"
        spec_path.write_text(json.dumps(spec, indent=1))
        cmd = [sys.executable, "-m", "pretrainlab.runners.job", str(spec_path)]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # the job process is the lab's: it imports only the lab's package
        stderr_path = self._logs / f"{job.key}.stderr"
        self._account(time.time())
        with open(stderr_path, "w") as err:
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env, start_new_session=True)
        self._running[job.key] = _Running(job, proc, slot, time.time(), stderr_path, pidfd=_pidfd(proc))
        self.last_submit = time.time()
        self._idle_reason = OVERHEAD  # until the caller says why any remaining slot stays free

    def release_orphan(self, key: str) -> bool:
        """A job process for `key` left running by an earlier runner on the same log dir (its
        campaign loop was killed) is stopped cleanly: SIGTERM to its process group (the trainer
        checkpoints), SIGKILL after the grace period. Returns True if there was one. Its run
        directory is then free to resume; it was never touched while the orphan held it."""
        from ..train.rundir_lock import lock_holder
        from .job import job_lock_dir

        lock = job_lock_dir(self._logs / f"{key}.spec.json")
        holder = lock_holder(lock)
        if holder is None or key in self._running:
            return False
        for _ in range(20):  # the holder writes its pid just after taking the lock
            if holder is None or holder.pgid:
                break
            time.sleep(0.05)
            holder = lock_holder(lock)
        if holder is None:
            return True
        if not holder.pgid or holder.pgid == os.getpgid(0):
            raise RuntimeError(f"job {key} is still running but its lock ({lock}) does not name a process group to stop")
        for sig, wait_s in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(holder.pgid, sig)
            except ProcessLookupError:
                pass
            deadline = time.time() + wait_s
            while lock_holder(lock) is not None and time.time() < deadline:
                time.sleep(0.05)
            if lock_holder(lock) is None:
                return True
        return True

    def stop(self, key: str, reason: str = "stopped") -> None:
        """Ask a run to stop now: it checkpoints and exits as 'preempted'."""
        r = self._running[key]
        if r.term_sent_at is None:
            r.reason = reason
            r.term_sent_at = time.time()
            _signal(r.proc, signal.SIGTERM)

    def stopping(self, key: str) -> bool:
        """True once stop() (or a timeout) has signalled the job."""
        return self._running[key].term_sent_at is not None

    def poll(self) -> list[JobResult]:
        """Finished jobs since the last call; enforces timeouts and the kill grace period."""
        done = []
        now = time.time()
        for key, r in list(self._running.items()):
            if r.proc.poll() is None:
                if r.job.timeout_s and r.term_sent_at is None and now - r.started_at > r.job.timeout_s:
                    self.stop(key, reason="timeout")
                elif r.term_sent_at is not None and now - r.term_sent_at > KILL_GRACE_S:
                    _signal(r.proc, signal.SIGKILL)
                continue
            ended = time.time()
            self._account(ended)
            self._idle_reason = OVERHEAD  # the freed slot waits on the caller's bookkeeping from here
            self._intervals.append((r.started_at, ended))
            del self._running[key]
            if r.pidfd is not None:
                os.close(r.pidfd)
            done.append(self._result(r, ended))
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

    # ---- accounting ------------------------------------------------------------------------

    def idle_because(self, reason: str) -> None:
        """Why the free slots stay empty from now until the next submit or finished job."""
        self._account(time.time())
        self._idle_reason = reason

    def _account(self, now: float) -> None:
        free = self.num_slots - len(self._running)
        if free and now > self._idle_since:
            self.idle[self._idle_reason] = self.idle.get(self._idle_reason, 0.0) + free * (now - self._idle_since)
        self._idle_since = now

    def idle_breakdown(self) -> dict[str, float]:
        """Idle slot-seconds so far, by reason (OVERHEAD: the caller's own bookkeeping)."""
        self._account(time.time())
        return dict(self.idle)

    def time(self) -> float:
        """The runner's clock (wall time here; virtual in the simulator): the campaign times its
        loop, its budget and its slot accounting by it."""
        return time.time()

    def utilisation(self, until: float | None = None) -> float:
        """Share of slot-time spent running jobs, from the runner's creation to `until`
        (default now; pass `last_submit` for "until the last job was started")."""
        now = time.time()
        end = now if until is None else until
        spans = self._intervals + [(r.started_at, now) for r in self._running.values()]
        busy = sum(max(0.0, min(b, end) - a) for a, b in spans)
        return busy / max(1e-9, self.num_slots * (end - self.created))

    def shutdown(self) -> None:
        """Stop everything (status 'shutdown': checkpointed, to be resumed, not a verdict)."""
        for key in list(self._running):
            self.stop(key, reason="shutdown")
        deadline = time.time() + KILL_GRACE_S
        while self._running and time.time() < deadline:
            self.poll()
            self.sleep(0.1)
        for r in self._running.values():
            _signal(r.proc, signal.SIGKILL)
            r.proc.wait()
            if r.pidfd is not None:
                os.close(r.pidfd)
        self._running.clear()

    # ---- results ---------------------------------------------------------------------------

    def _result(self, r: _Running, ended: float) -> JobResult:
        summary = read_summary(r.job.out_dir)  # written by the run: any content at all
        if summary is not None and not isinstance(summary.get("status"), str):
            summary = None
        if summary is not None:
            status = summary["status"]
            if status == "preempted" and r.reason:
                status = r.reason  # we stopped it: 'timeout' or 'stopped' (early stopping)
        else:
            status = r.reason or "crashed"
        tail = r.stderr_path.read_text(errors="replace")[-4000:] if r.stderr_path.exists() else ""
        return JobResult(r.job, status, r.proc.returncode, summary, tail, r.slot, r.started_at, ended)


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
