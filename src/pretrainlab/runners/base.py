"""What every runner is: the `Runner` protocol the campaign loops program against, the job and
result types, and the slot bookkeeping the real runners share.

    runner = make_runner(cfg, workdir)          # cfg.runner: "local" (runners/local.py), "ray" (runners/ray.py), "slurm" (runners/slurm.py)
    runner.submit(Job("exp3-seed0", "tiny-cpu", Path("runs/exp3-seed0"), ["optim.lr=0.02"], timeout_s=120))
    for result in runner.poll(): ...            # finished jobs
    for event in runner.take_events(): ...      # what the runner did on its own (a run requeued after its node died)

Four implementations: LocalRunner (process slots on this machine), RayRunner (actors on a Ray
cluster), SlurmRunner (batch jobs on a SLURM cluster) and research/simulate.py's SimulatedRunner
(a virtual clock, for the campaign logic's tests). The three real ones share `SlotRunner`: slot
numbers, the idle and utilisation accounting, the job spec the job process reads
(runners/job.py), results from the run directory, and stopping a job process a previous
campaign loop left behind.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import tempfile
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import pretrainlab

from ..rundir import read_summary
from .limits import TASKS
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
    queued_at: float | None = None  # on the runner's clock: when the caller first had this run ready but no slot for it


@dataclass
class Attempt:
    """One try at running a job: where it ran, how long it waited, how it ended (the evidence
    behind the doctor's cluster findings, kept in the ledger's run_attempts)."""

    number: int  # 1-based
    node: str | None  # the Ray node id, or this host's name; None: it never reached a node
    submitted_at: float  # runner clock: handed to the runner (a requeue: handed again)
    started_at: float | None  # placed on a node, its job process starting; None: never placed
    ended_at: float
    lost: str | None = None  # why the attempt was lost (its node died, the cluster stopped it); None: it ended by itself

    def to_row(self, queued_at: float | None) -> dict:
        """The ledger's run_attempts fields: seconds queued before the runner had it (first
        attempt only), waiting for a node, running."""
        start = self.started_at if self.started_at is not None else self.ended_at
        return {"attempt": self.number, "node": self.node, "submitted_at": self.submitted_at,
                "queue_s": max(0.0, self.submitted_at - queued_at) if queued_at is not None and self.number == 1 else 0.0,
                "place_s": max(0.0, start - self.submitted_at), "run_s": max(0.0, self.ended_at - start), "lost": self.lost}


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
    attempts: list[Attempt] = field(default_factory=list)  # every try, the lost ones first; the last is this result's

    @property
    def seconds(self) -> float:
        return self.ended_at - self.started_at


@dataclass
class RunnerEvent:
    """Something a runner did on its own that belongs on the record (the campaign notes it)."""

    kind: str  # 'requeued' (a run lost with its node starts again elsewhere), 'excluded' (a node gets no more runs), 'gave_up',
    # 'adopted' (a job an earlier loop started, still queued or running, is followed as it is), 'sbatch_retry' (a submission
    # SLURM refused for a passing reason, tried again), 'arrays_off' (a cluster that refuses job arrays: a job per run)
    text: str  # one line for the ledger note
    key: str | None = None  # the job it concerns; None: the cluster


@runtime_checkable
class Runner(Protocol):
    """What a campaign loop (research/campaign.py, research/mixture_campaign.py) needs from a
    runner. Times are on the runner's clock (`time()`): wall time, or the simulator's virtual time."""

    num_slots: int  # runs in flight at once
    created: float  # when the runner was made: utilisation counts from here
    last_submit: float  # when the last job was started
    sandbox: Sandbox  # what experiment processes run in (the lab's scoring at close uses it too)

    def submit(self, job: Job) -> None:
        """Start `job` in a free slot (the caller checks free_slots() first)."""

    def flush(self) -> None:
        """Send what submit() took since the last call: the loops call it once they have filled
        their free slots, so a runner may start those jobs together (SLURM: replicates in one job
        array). Runners that start each job in submit() have nothing to do."""

    def poll(self) -> list[JobResult]:
        """Jobs finished since the last call, each once; enforces timeouts."""

    def running(self) -> list[Job]:
        """Jobs in flight (started, not yet returned by poll)."""

    def stop(self, key: str, reason: str = "stopped") -> None:
        """Ask a running job to stop now: it checkpoints and comes back with status `reason`."""

    def stopping(self, key: str) -> bool:
        """True once stop() (or a timeout) has signalled the job."""

    def free_slots(self) -> int:
        """Slots a submit() may fill now."""

    def busy(self) -> bool:
        """True while any job is in flight."""

    def sleep(self, seconds: float) -> None:
        """Wait up to `seconds`, returning early when a job ends."""

    def shutdown(self) -> None:
        """Stop every job (status 'shutdown': checkpointed, to be resumed) and let go of resources."""

    def release_orphan(self, key: str) -> bool:
        """Stop a job process for `key` that an earlier loop left running; True if there was one."""

    def adopt(self, key: str) -> bool:
        """Follow, as it is, a job for `key` that an earlier loop started and that still runs or
        waits where this runner can follow it (a SLURM job in the queue): the next submit() of
        `key` takes it over instead of starting another. True if there is one; runners whose jobs
        end with their loop return False (release_orphan stops what is left)."""

    def idle_because(self, reason: str) -> None:
        """Why the free slots stay empty from now until the next submit or finished job."""

    def idle_breakdown(self) -> dict[str, float]:
        """Idle slot-seconds so far, by reason."""

    def utilisation(self, until: float | None = None) -> float:
        """Share of slot-time spent running jobs, from `created` to `until` (default now)."""

    def time(self) -> float:
        """The runner's clock."""

    def scoring_resources(self) -> dict:
        """Keyword arguments for scoring.score_run when the lab scores in the loop's process (the hidden test split at close)."""

    def take_events(self) -> list[RunnerEvent]:
        """What the runner did on its own since the last call (requeues, excluded nodes), each once."""


class Slots:
    """`num_slots` slots and the runs in flight in them, `self._running` (key -> a record with
    .job and .slot): shared by every runner, the simulated one included."""

    num_slots: int
    _running: dict

    def free_slots(self) -> int:
        return self.num_slots - len(self._running)

    def flush(self) -> None:
        """Nothing: submit() started the job (SlurmRunner sends its jobs here)."""

    def busy(self) -> bool:
        return bool(self._running)

    def running(self) -> list[Job]:
        return [r.job for r in self._running.values()]

    def _free_slot(self) -> int:
        return min(set(range(self.num_slots)) - {r.slot for r in self._running.values()})


class SlotRunner(Slots):
    """Slots and their accounting for runners of real job processes (LocalRunner, RayRunner, SlurmRunner).

    A subclass keeps its runs in `self._running` (key -> a record with .job, .slot, .started_at,
    .term_sent_at and .reason), calls `_started` after it starts one and `_ended` when one is
    over, and implements submit, poll, sleep, scoring_resources, `_send` (a signal to a run's
    job process) and `_kill` (SIGKILL, waiting until it is gone)."""

    def __init__(self, num_slots: int, log_dir: Path | None, sandbox: bool):
        self.num_slots = num_slots
        self._running: dict = {}
        self._logs = Path(log_dir) if log_dir else Path(tempfile.mkdtemp(prefix="pretrainlab-runner-"))
        if not log_dir:  # the runner's own folder: gone with the runner (a campaign gives one in its workdir, kept)
            weakref.finalize(self, shutil.rmtree, self._logs, ignore_errors=True)
        self._logs.mkdir(parents=True, exist_ok=True)
        self.sandbox = Sandbox.detect() if sandbox else Sandbox(None, "disabled by the caller")
        self.created = time.time()
        self._intervals: list[tuple[float, float]] = []  # (start, end) of finished jobs
        self.last_submit = self.created
        # idle slot-seconds by why the free slots stayed empty; OVERHEAD until the caller says otherwise
        self.idle: dict[str, float] = {}
        self._idle_reason = OVERHEAD
        self._idle_since = self.created
        self.events: list[RunnerEvent] = []
        self.run_memory = "auto"  # each run's memory cap (a campaign's --run-memory): auto, off or a size (runners/limits.py)
        self.run_disk = "auto"  # what each run may write in its run directory (--run-disk)
        self.warm = False  # runs of the lab's own code on CPU forked from a warm host (runners/warm.py): this machine's runners

    # ---- slots -----------------------------------------------------------------------------

    def stopping(self, key: str) -> bool:
        """True once stop() (or a timeout) has signalled the job."""
        return self._running[key].term_sent_at is not None

    def _started(self, key: str, run) -> None:
        """Book a job that was just started (its record's started_at is now)."""
        self._account(run.started_at)
        self._running[key] = run
        self.last_submit = run.started_at
        self._idle_reason = OVERHEAD  # until the caller says why any remaining slot stays free

    def _ended(self, key: str, ended: float) -> None:
        """Book a job that is over: its slot is free from `ended`."""
        self._account(ended)
        self._idle_reason = OVERHEAD  # the freed slot waits on the caller's bookkeeping from here
        self._intervals.append((self._running.pop(key).started_at, ended))

    def stop(self, key: str, reason: str = "stopped") -> None:
        """Ask a run to stop now: it checkpoints and exits as 'preempted' (reported as `reason`)."""
        r = self._running[key]
        if r.term_sent_at is None:
            r.reason = reason
            r.term_sent_at = time.time()
            self._send(r, signal.SIGTERM)

    def _enforce_deadlines(self, key: str, r, now: float, since: float | None) -> None:
        """A run still going: stop it at its timeout (counted from `since`), SIGKILL it once
        the grace period after a stop has passed."""
        if r.job.timeout_s and r.term_sent_at is None and since is not None and now - since > r.job.timeout_s:
            self.stop(key, reason="timeout")
        elif r.term_sent_at is not None and now - r.term_sent_at > KILL_GRACE_S:
            self._send(r, signal.SIGKILL)

    def shutdown(self) -> None:
        """Stop everything (status 'shutdown': checkpointed, to be resumed, not a verdict)."""
        for key in list(self._running):
            self.stop(key, reason="shutdown")
        deadline = time.time() + KILL_GRACE_S
        while self._running and time.time() < deadline:
            self.poll()
            self.sleep(0.1)
        for r in self._running.values():
            self._kill(r)
        self._running.clear()

    def take_events(self) -> list[RunnerEvent]:
        events, self.events = self.events, []
        return events

    def adopt(self, key: str) -> bool:
        """A local process or a Ray actor does not outlive its loop in a form this runner can
        follow: never (release_orphan stops it instead)."""
        return False

    # ---- the job process's spec and result ---------------------------------------------------

    def _spec(self, job: Job, threads: int, gpus: bool, env: dict[str, str]) -> dict:
        """The job process's instructions (runners/job.py): the run, its recipe and overrides,
        this slot's threads on CPU, the code it trains with, its environment."""
        return {"key": job.key, "recipe": job.recipe, "overrides": list(job.overrides), "threads": None if gpus else threads,
                "run_dir": str(job.out_dir), "resume": job.resume,
                "code_src": job.pythonpath or str(PACKAGE_SRC), "env": {**job.env, "OMP_NUM_THREADS": str(threads), **env},
                "sandbox": self.sandbox.active, "score_path": str(job.score_path) if job.score_path else None,
                "score_data": job.score_data, "limits": {"memory": self.run_memory, "disk": self.run_disk, "share": self.memory_share(),
                                                       "tasks": TASKS}, "warm": self.warm}

    def memory_share(self) -> float | None:
        """A run's share of its machine's RAM under --run-memory auto; None: the job process takes its share of the
        machine's CPUs (a cluster's node, where runs of other campaigns may run beside it)."""
        return None

    def _spec_path(self, key: str) -> Path:
        """Where a job's spec lives, in the log dir (its job process's lock is beside it: job.job_lock_dir)."""
        return self._logs / f"{key}.spec.json"

    def _stderr_path(self, key: str) -> Path:
        return self._logs / f"{key}.stderr"

    def _result(self, run, returncode: int, ended: float, reason: str | None, note: str = "",
                attempts: list[Attempt] | None = None) -> JobResult:
        """The result of a job that is over, from what its run directory says (`reason`: why we
        signalled it, if we did; `note`: the runner's own word on it, after its stderr;
        `attempts`: its tries, default one on this host from submit to end)."""
        summary = read_summary(run.job.out_dir)  # written by the run: any content at all
        if summary is not None and not isinstance(summary.get("status"), str):
            summary = None
        if summary is not None:
            status = summary["status"]
            if status == "preempted" and reason:
                status = reason  # we stopped it: 'timeout' or 'stopped' (early stopping)
            elif status == "ok" and run.job.score_path is not None and not Path(run.job.score_path).exists():
                # its trainer finished, but the job ended before the lab's verdict: we stopped it, or it died (killed
                # from outside, its scoring worker killed): never 'ok' on the run's own number
                status = reason or "crashed"
        else:
            status = reason or "crashed"
        path = self._stderr_path(run.job.key)
        tail = _tail(path) + (f"\n{note}" if note else "")
        if attempts is None:
            attempts = [Attempt(1, socket.gethostname(), run.started_at, run.started_at, ended)]
        return JobResult(run.job, status, returncode, summary, tail[-4000:], run.slot, run.started_at, ended, attempts)

    def release_orphan(self, key: str) -> bool:
        """A job process for `key` left running by an earlier runner on the same log dir (its
        campaign loop was killed) is stopped cleanly: SIGTERM to its process group (the trainer
        checkpoints), SIGKILL after the grace period. One on another host (a Ray node) is not
        ours to signal: it stops itself when its loop's driver is gone (runners/ray.py), and
        this waits for it. Returns True if there was one. Its run directory is then free to
        resume; it was never touched while the orphan held it."""
        from ..train.rundir_lock import lock_holder
        from .job import job_lock_dir

        lock = job_lock_dir(self._spec_path(key))
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
        if holder.host is not None and holder.host != socket.gethostname():
            deadline = time.time() + KILL_GRACE_S + 30.0
            while lock_holder(lock) is not None and time.time() < deadline:
                time.sleep(0.5)
            if lock_holder(lock) is not None:
                raise RuntimeError(f"job {key} still runs on {holder.host} (pid {holder.pid}) and holds {lock}: stop it there, "
                                   "then resume the campaign")
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

    # ---- accounting --------------------------------------------------------------------------

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


def _tail(path: Path, size: int = 16384) -> str:
    """The end of a run's log, read from the end: a trainer may have written gigabytes to its stderr."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - size))
            return f.read().decode(errors="replace")
    except OSError:
        return ""
