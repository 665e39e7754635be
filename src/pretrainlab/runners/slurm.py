"""The SLURM runner: each run of a campaign is a SLURM batch job, submitted through submitit,
running the same job process as the local runner (runners/job.py: sandboxed training, then the
lab's own score), so sandboxing, scoring, checkpoints and the run directory are LocalRunner's.

    pretrainlab research start --runner slurm --slurm-partition gpu --slurm-account lab --slurm-time 2:00:00 --gpus 0 --parallel 16
    pretrainlab research start --runner slurm --slurm-profile slurm.toml --parallel 16     # the same settings in a file
    runner = SlurmRunner(num_slots=16, settings=SlurmSettings(partition="gpu", gpus_per_run=1))
    runner.submit(job); runner.poll(); runner.stop(job.key)       # as LocalRunner (runners/base.py: Runner)

The settings (`SlurmSettings`: partition, account, qos, time limit, CPUs and GPUs per run,
memory, constraint, setup lines, any other sbatch option) come from a TOML profile
(`--slurm-profile`, read by `load_profile`) with the `--slurm-*` flags over it; the runner
checks them against the cluster with `sbatch --test-only` before the first run is submitted.

A slot is one job in the queue: submitted when the campaign fills the slot, pending until SLURM
starts it (the run's timeout counts from then), over when it leaves the queue. The runner asks
`squeue` about its jobs (at most every QUEUE_POLL_S; no accounting database is needed) and
reads each job's exit from submitit's result file.

Every job is submitted with --requeue. SLURM requeues it when it is preempted, on
`scontrol requeue`, or when its node fails: it sends SIGTERM to every process of the job (the
trainer checkpoints and exits 'preempted'), and the job starts again later, maybe on another
node, as the same job id. Each start runs `RunAttempt`, which resumes the run from its last
checkpoint (from step 0 if it had none), waits first for the previous start's processes to let
go of the run, and does nothing for a run that had already finished (its summary and the lab's
score are on disk): no finished run is trained again. SIGNAL_DELAY_S (to 60 s more) before the job's
time limit SLURM sends SIGUSR2 (submitit's --signal): the run checkpoints and submitit requeues
the job (at most 3 times), so a run longer than the partition allows continues in a new
allocation. Each requeue the runner sees is a RunnerEvent, noted in the ledger.

A node that fails EXCLUDE_AFTER times under runs of the campaign (jobs ending NODE_FAIL or
BOOT_FAIL there, or requeued from it while sinfo shows it down, failing or silent, or after its
slurmd or machine started again; not a drain, preemption or `scontrol requeue`) is excluded: later
jobs are submitted with --exclude, pending ones get it through `scontrol update` (a running one at
its next requeue), and the campaign's next loop reads the list from logs/slurm.excluded.json; never
when SLURM could then place no run (`sbatch --test-only`).

A submission sbatch refuses for a passing reason (TRANSIENT_SBATCH: a controller that timed out or
restarts) is tried again after each of SBATCH_RETRY_S; one refused for its settings is a UserError
at once.

Each job's id is kept beside its spec (`logs/KEY.slurm.json`). A campaign loop that dies leaves
its jobs in the queue; the next loop (`research resume`) adopts those still queued or running
(`adopt`): it follows them as they are instead of starting them again.

Replicates go in job arrays: submit() takes a slot at once and flush() (the campaign calls it
once it has filled its free slots) sends what it took, so the seeds of one experiment started in
the same pass (the baseline's seeds at the start, an incumbent's confirmation seeds, the
replicates a screen earned) with the same sbatch settings are one `sbatch --array` job: one
submission for the controller, one line in `squeue`, job ids ARRAY_0, ARRAY_1, ... Each task is
still followed, requeued, excluded from a node, timed out and cancelled as a job of its own (its
id is the task's, ARRAY_I); a seed the campaign starts alone is a plain job. `arrays = false` in
the profile submits one job per run.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path

from .. import rundir
from ..config import doc
from ..data.sources import require
from ..errors import UserError
from ..rundir import read_summary
from .base import KILL_GRACE_S, PACKAGE_SRC, Attempt, Job, JobResult, RunnerEvent, SlotRunner

SLURM_EXTRA = "pip install 'pretrainlab[slurm]'"
# SLURM's warning signal (SIGUSR2) comes this long before a job's time limit: the run checkpoints (within
# KILL_GRACE_S) and the job is requeued before SLURM kills it
SIGNAL_DELAY_S = int(KILL_GRACE_S) + 60
SIGNAL_RESOLUTION_S = 60  # SLURM may send it up to this much earlier still (sbatch(1), --signal)
DEFAULT_TIME_MIN = 60  # a job's time limit when neither the settings nor the run's own timeout give one
# shorter limits leave a run little or no time between its start and the warning (up to 150 s before the end)
MIN_TIME_MIN = 5
QUEUE_POLL_S = 1.0  # squeue at most this often (slurmctld serves every user of the cluster)
COMMAND_TIMEOUT_S = 60.0  # for one sbatch / squeue / scancel call
# a submission sbatch refused for a reason that passes (a busy or restarting controller) is tried again after
# each of these pauses; one it refused for its settings is not
SBATCH_RETRY_S = (5.0, 20.0, 60.0)
TRANSIENT_SBATCH = ("timed out", "unable to contact", "connection refused", "temporarily unavailable", "temporarily unable",
                    "zero bytes were transmitted", "communication connection failure", "slurm_persist_conn", "try again")
TERM_REPEAT_S = 2.0  # SIGTERM again this often while a run has not stopped at SLURM's time-limit warning
# how long a new start of a job waits for the previous one's job process and trainer to let go of the run
# (an NFS lock lease of a node that died included)
LOCK_WAIT_S = KILL_GRACE_S + 60.0
# job states after which a job never runs again (anything else is pending, running or on its way back to the queue)
ENDED = {"BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "REVOKED",
         "SPECIAL_EXIT", "TIMEOUT"}
FINAL = ("rejected", "diverged")  # ends a run would come to again if run again ('ok' and 'timeout' once the lab scored them)
# failures of one node that took runs down before it gets no more (one can be the cluster's, two are the node's); one
# failure that takes several runs down at once counts once
EXCLUDE_AFTER = 2
NODE_ENDS = ("NODE_FAIL", "BOOT_FAIL")  # job states that are its node's failure, by SLURM's own word
# sinfo states (%T, flags stripped) of a node that failed; a trailing '*': it does not answer. Not 'drain' or 'maint':
# an administrator's work, whose requeues are no fault of the node
NODE_FAILED = ("down", "fail", "failing", "no_respond", "not_responding")
NODE_USABLE = ("idle", "mixed", "allocated", "completing", "planned")  # states of a node that runs jobs now or soon


@dataclass
class SlurmSettings:
    """What each run's job asks SLURM for. The keys of a --slurm-profile TOML file are these
    field names; the --slurm-* flags override them."""

    partition: str | None = doc("the partition each run's job goes to (default: the cluster's default partition)", None)
    account: str | None = doc("the account the jobs are charged to (sbatch --account)", None)
    qos: str | None = doc("the quality of service (sbatch --qos)", None)
    time: str | int | None = doc(f"each job's time limit, at least {MIN_TIME_MIN} minutes: minutes, HH:MM:SS or D-HH:MM:SS "
                                 f"(default: the run's own timeout plus {SIGNAL_DELAY_S + SIGNAL_RESOLUTION_S} s for SLURM's "
                                 f"warning, else {DEFAULT_TIME_MIN} minutes); a run still going at the warning checkpoints and "
                                 "its job is requeued", None)
    cpus_per_run: int = doc("CPUs per run (on CPU, its training threads)", 1)
    gpus_per_run: int = doc("GPUs per run: 0, or 1 (a run trains in one process)", 0)
    mem_gb: float | None = doc("memory per run in GB (sbatch --mem; default: the partition's)", None)
    constraint: str | None = doc("node features a run needs (sbatch --constraint)", None)
    setup: list[str] = doc("shell lines each job runs before its run starts (module load ..., source VENV/bin/activate)", [])
    sbatch: dict[str, str] = doc("any other sbatch option, by its long name without dashes (e.g. reservation = \"lab\")", {})
    arrays: bool = doc("replicates of one experiment started together go in one job array (sbatch --array); false: one job "
                       "per run", True)

    def __post_init__(self):
        if self.time is not None and time_minutes(self.time) < MIN_TIME_MIN:  # (a bad format raises UserError naming it)
            raise UserError(f"slurm time {self.time!r} is too short: SLURM warns a job up to "
                            f"{SIGNAL_DELAY_S + SIGNAL_RESOLUTION_S} s before its limit (the run then checkpoints and is "
                            f"requeued); give at least {MIN_TIME_MIN} minutes")
        if self.cpus_per_run < 1:
            raise UserError(f"slurm cpus_per_run must be >= 1, got {self.cpus_per_run}")
        if self.gpus_per_run not in (0, 1):
            raise UserError(f"slurm gpus_per_run must be 0 or 1 (a run trains in one process on one device), got {self.gpus_per_run}")
        if self.mem_gb is not None and self.mem_gb <= 0:
            raise UserError(f"slurm mem_gb must be > 0, got {self.mem_gb}")


PROFILE_KEYS = tuple(f.name for f in fields(SlurmSettings))


def load_profile(path: str | Path) -> dict:
    """A --slurm-profile TOML file's settings, checked key by key: an unknown key or a value of
    the wrong type is a UserError naming it and the valid keys (nothing heavy is imported)."""
    path = Path(path).expanduser()
    try:
        with open(path, "rb") as f:
            profile = tomllib.load(f)
    except FileNotFoundError:
        raise UserError(f"--slurm-profile {path}: no such file") from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"--slurm-profile {path}: not valid TOML ({e})") from None
    hints = typing.get_type_hints(SlurmSettings)
    for key, value in profile.items():
        if key not in PROFILE_KEYS:
            close = difflib.get_close_matches(key, PROFILE_KEYS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UserError(f"--slurm-profile {path}: unknown key {key!r}{hint}; the keys are {', '.join(PROFILE_KEYS)}")
        if not _fits(value, hints[key]):
            raise UserError(f"--slurm-profile {path}: {key} = {value!r} is not {_type_name(hints[key])}")
    return profile


def settings_from(profile: str | Path | None = None, **flags) -> SlurmSettings:
    """The settings of a profile file (if any) with the flags that were given (not None) over it."""
    values = load_profile(profile) if profile else {}
    values.update({k: v for k, v in flags.items() if v is not None})
    return SlurmSettings(**values)


def time_minutes(value: str | int) -> int:
    """A SLURM time limit (minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS) in whole minutes."""
    text = str(value).strip()
    try:
        if text.startswith("-"):
            raise ValueError
        days, _, rest = text.rpartition("-")
        parts = [int(p) for p in rest.split(":")]
        if days:  # D-HH[:MM[:SS]]
            if len(parts) > 3:
                raise ValueError
            h, m, s = (parts + [0, 0])[:3]
            seconds = int(days) * 86400 + h * 3600 + m * 60 + s
        else:
            seconds = {1: lambda m: m * 60, 2: lambda m, s: m * 60 + s, 3: lambda h, m, s: h * 3600 + m * 60 + s}[len(parts)](*parts)
        if seconds <= 0 or min(parts) < 0:
            raise ValueError
    except (ValueError, KeyError, TypeError):
        raise UserError(f"slurm time {value!r}: use minutes (90), HH:MM:SS (1:30:00) or D-HH:MM:SS (2-00:00:00)") from None
    return math.ceil(seconds / 60)


def _alternatives(hint) -> list:
    """The types a field's hint allows: a union's members (bar None), or the hint itself."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return [a for a in typing.get_args(hint) if a is not type(None)]
    return [hint]


def _fits(value, hint) -> bool:
    for kind in _alternatives(hint):
        origin = typing.get_origin(kind)
        if origin is list and isinstance(value, list) and all(isinstance(v, str) for v in value):
            return True
        if origin is dict and isinstance(value, dict) and all(isinstance(v, (str, int, bool)) for v in value.values()):
            return True
        if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return True
        if kind is bool and isinstance(value, bool):
            return True
        if kind in (str, int) and isinstance(value, kind) and not isinstance(value, bool):
            return True
    return False


def _type_name(hint) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}
    return " or ".join(names.get(a, "a list of strings" if typing.get_origin(a) is list else "a table") for a in _alternatives(hint))


def job_name(key: str) -> str:
    """The SLURM job name of run `key`'s job."""
    return f"pretrainlab-{key}"


REPLICATE = re.compile(r"^(?P<experiment>.+)-s\d+$")  # a run key of a campaign: EXPERIMENT-sSEED


def submissions(settings: SlurmSettings, jobs: list[Job], exclude: set[str] | frozenset = frozenset()) -> list[list[Job]]:
    """`jobs` as sbatch gets them: replicates of one experiment (keys EXP-sSEED) whose jobs ask
    for the same resources together (one job array), any other job alone; in `jobs` order."""
    groups: dict[tuple, list[Job]] = {}
    for job in jobs:
        params = sbatch_parameters(settings, job, exclude)
        params.pop("job_name")
        match = REPLICATE.match(job.key) if settings.arrays else None
        together = ("replicates", match["experiment"]) if match else ("alone", job.key)
        groups.setdefault((*together, repr(sorted(params.items()))), []).append(job)
    return list(groups.values())


def array_name(keys: list[str]) -> str:
    """The SLURM job name of one job array of replicates (run keys EXP-sA, EXP-sB, ...)."""
    seeds = [k.rsplit("-s", 1)[1] for k in keys]
    return job_name(f"{REPLICATE.match(keys[0])['experiment']}-s{','.join(seeds)}")


def sbatch_parameters(settings: SlurmSettings, job: Job, exclude: set[str] | frozenset = frozenset()) -> dict:
    """submitit's SlurmExecutor parameters for one run's job (its sbatch options); `exclude`: nodes
    the runner took out of the campaign, added to any the settings exclude."""
    if settings.time is not None:
        minutes = time_minutes(settings.time)
    elif job.timeout_s:  # the run's own timeout comes before SLURM's warning
        minutes = max(MIN_TIME_MIN, math.ceil((job.timeout_s + SIGNAL_DELAY_S + SIGNAL_RESOLUTION_S) / 60))
    else:
        minutes = DEFAULT_TIME_MIN
    params: dict = {"job_name": job_name(job.key), "time": minutes, "cpus_per_task": settings.cpus_per_run,
                    "signal_delay_s": SIGNAL_DELAY_S, "additional_parameters": {"requeue": True, **settings.sbatch}}
    for key in ("partition", "account", "qos", "constraint"):
        if getattr(settings, key):
            params[key] = getattr(settings, key)
    if settings.gpus_per_run:
        params["gpus_per_node"] = settings.gpus_per_run
    if settings.mem_gb:  # sbatch reads a bare number as MB
        params["mem"] = f"{settings.mem_gb:g}G" if settings.mem_gb == int(settings.mem_gb) else f"{math.ceil(settings.mem_gb * 1024)}M"
    if settings.setup:
        params["setup"] = list(settings.setup)
    if exclude:
        params["additional_parameters"].pop("exclude", None)
        params["exclude"] = exclude_list(settings, exclude)
    return params


def exclude_list(settings: SlurmSettings, exclude: set[str] | frozenset) -> str:
    """sbatch's --exclude: the nodes the settings exclude, then those the runner excluded."""
    theirs = [n for n in str(settings.sbatch.get("exclude", "")).split(",") if n]
    return ",".join(dict.fromkeys([*theirs, *sorted(exclude)]))


# ---- one start of a run's job, on a node ------------------------------------------------------


class RunAttempt:
    """What submitit runs in a run's SLURM job, at each start of the job (the first, and each
    after a requeue): the job process (runners/job.py), on the run's spec; returns its exit code.
    `checkpoint` is submitit's hook for SLURM's warning signal before the time limit."""

    def __init__(self, spec_path: str, stderr_path: str):
        self.spec_path, self.stderr_path = spec_path, stderr_path
        self._proc: subprocess.Popen | None = None
        self._stop = False  # SIGTERM arrived (cancel, requeue, preemption): start nothing

    def __getstate__(self) -> dict:
        return {"spec_path": self.spec_path, "stderr_path": self.stderr_path}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["spec_path"], state["stderr_path"])

    def __call__(self) -> int | None:
        from ..train.rundir_lock import lock_holder
        from .job import job_lock_dir
        from .sandbox import Sandbox

        # SLURM's SIGTERM reaches every process of the job (the trainer checkpoints on it); here it only means: start nothing
        signal.signal(signal.SIGTERM, self._on_sigterm)
        spec = rundir.load_json(self.spec_path)
        run_dir = Path(spec["run_dir"])
        job_id, restarts, node = _own_job_id(), int(os.environ.get("SLURM_RESTART_COUNT") or 0), socket.gethostname()
        if _finished_on_disk(run_dir, spec.get("score_path")):  # finished before SLURM started this job again
            print(f"[pretrainlab] run {spec['key']} has finished and is scored: SLURM job {job_id} does nothing", file=sys.stderr)
            return 0
        locks = (job_lock_dir(self.spec_path), run_dir)  # held by the previous start's job process and trainer while they stop
        deadline = time.time() + LOCK_WAIT_S
        while any(lock_holder(p) for p in locks) and time.time() < deadline and not self._stop:
            time.sleep(0.5)
        held = [str(p) for p in locks if lock_holder(p)]
        if held and not self._stop:
            raise RuntimeError(f"the previous start of run {spec['key']} still held {', '.join(held)} after {LOCK_WAIT_S:.0f} s")
        box = Sandbox.detect(warn=False)
        if spec["sandbox"] and not box.active:  # the campaign promised sandboxed runs
            raise RuntimeError(f"node {node} cannot sandbox runs: {box.reason}")
        if restarts:  # continue what the interrupted start left: from its checkpoint, or from step 0 (the trainer decides)
            from submitit import JobEnvironment

            JobEnvironment().paths.result_pickle.unlink(missing_ok=True)  # the interrupted start's result is not the job's
            spec["resume"] = rundir.is_run_dir(run_dir)
            if not spec["resume"] and run_dir.exists():
                shutil.rmtree(run_dir)  # stopped before it wrote its recipe: nothing to keep
        if "CUDA_VISIBLE_DEVICES" in spec["env"]:  # a GPU run: the GPU SLURM gave this job
            spec["env"]["CUDA_VISIBLE_DEVICES"] = os.environ.get("CUDA_VISIBLE_DEVICES", "")
        spec["code_src"] = spec["code_src"] or str(PACKAGE_SRC)  # an unpatched run trains with this node's lab
        spec.update(slurm_job=job_id, slurm_node=node, slurm_restarts=restarts)  # for people reading the logs
        rundir.write_json_atomic(Path(self.spec_path), spec)
        cmd = [sys.executable, "-m", "pretrainlab.runners.job", self.spec_path, "--stop-with-parent", str(os.getpid())]
        env = {**os.environ, "PYTHONUNBUFFERED": "1",
               "PYTHONPATH": os.pathsep.join(p for p in (str(PACKAGE_SRC), os.environ.get("PYTHONPATH")) if p)}
        with open(self.stderr_path, "a" if restarts else "w") as err:
            if restarts:
                err.write(f"\n[pretrainlab] SLURM job {job_id} started again (restart {restarts}) on {node}, "
                          f"{'resuming' if spec['resume'] else 'from the start'}\n")
                err.flush()
            if self._stop:
                return None
            # SIGUSR2 (SLURM's time-limit warning) is for submitit alone: ignored by the job process and, inherited, the trainer
            self._proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env, start_new_session=True,
                                          preexec_fn=lambda: signal.signal(signal.SIGUSR2, signal.SIG_IGN))
        return self._proc.wait()

    def _on_sigterm(self, *_) -> None:
        self._stop = True

    def checkpoint(self):
        """submitit calls this on SLURM's warning signal (the time limit is near, or the job is
        being preempted), from its signal handler, while __call__ waits for the job process: stop
        the run (it checkpoints), then the job is requeued with a new RunAttempt, which resumes it."""
        from submitit.helpers import DelayedSubmission

        signal.signal(signal.SIGUSR2, signal.SIG_IGN)  # a second warning would run this again, inside itself
        pid = self._proc.pid if self._proc is not None else None
        deadline = time.time() + KILL_GRACE_S
        while pid is not None and not _exited(pid) and time.time() < deadline:
            # to the job process's group, the trainer in it, again every few seconds: a trainer still starting up
            # ignores SIGTERM until it has its handler (runners/sandbox.py: ignore_sigterm)
            _killpg(pid, signal.SIGTERM)
            until = min(deadline, time.time() + TERM_REPEAT_S)
            while time.time() < until and not _exited(pid):
                time.sleep(0.1)
        if pid is not None and not _exited(pid):
            _killpg(pid, signal.SIGKILL)  # it resumes from its last periodic checkpoint
        return DelayedSubmission(RunAttempt(self.spec_path, self.stderr_path))


def _own_job_id() -> str:
    """The SLURM job id of the job this runs in, as the runner knows it: ARRAY_TASK for a task of
    a job array (its SLURM_JOB_ID is another number), else SLURM_JOB_ID."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID", "?")


def _exited(pid: int) -> bool:
    """Whether child `pid` has exited, without reaping it: __call__'s wait, interrupted by the
    signal handler this runs in, reaps it (Popen.wait here would wait for that wait's lock)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


# ---- the runner, in the campaign loop's process ------------------------------------------------


@dataclass
class QueueEntry:
    """One job as squeue shows it."""

    name: str  # the job's name: pretrainlab-KEY for a run's job
    state: str  # RUNNING, PENDING, COMPLETING, COMPLETED, ...
    restarts: int  # how many times SLURM has requeued it
    node: str  # where it runs (empty while pending)
    reason: str  # why it waits, or how it ended


@dataclass
class _SlurmRun:
    job: Job
    slot: int
    started_at: float  # submitted (or adopted): the slot is taken from here until the job leaves the queue
    job_id: str  # a plain job's id, or ARRAY_TASK for a task of a job array; "" until flush() submits it
    restarts: int = 0  # requeues seen so far
    node: str | None = None
    running_since: float | None = None  # when the current start of the job was first seen running (its timeout counts from here)
    term_sent_at: float | None = None
    kill_sent: bool = False
    reason: str | None = None  # 'timeout', 'stopped' or 'shutdown' once we signalled it
    attempts: list[Attempt] = field(default_factory=list)  # its starts that SLURM requeued, each lost with why
    attempt_submitted: float | None = None  # when the current start was handed to SLURM (submitted, or requeued)


class SlurmRunner(SlotRunner):
    def __init__(self, num_slots: int, settings: SlurmSettings | None = None, log_dir: Path | None = None, sandbox: bool = True):
        if num_slots < 1:
            raise UserError(f"--parallel must be >= 1, got {num_slots}")
        self._submitit = require("submitit", "submitit", "--runner slurm", install=SLURM_EXTRA)
        self.settings = settings or SlurmSettings()
        super().__init__(num_slots, log_dir, sandbox)
        self.folder = self._logs / "slurm"  # submitit's files: each job's script, pickles and output
        self.folder.mkdir(exist_ok=True)
        _check_cluster(self.settings, self.folder)
        if self.settings.arrays and (refused := _test_only(self.settings, self.folder, array=True)):
            self.settings = dataclasses.replace(self.settings, arrays=False)  # a site without job arrays: a job per run
            self.events.append(RunnerEvent("arrays_off", f"SLURM refuses job arrays here ({refused}): each run goes in a job "
                                                         "of its own (set arrays = false in the profile to skip this check)"))
        self._executor = self._submitit.SlurmExecutor(folder=self.folder)
        self._adoptable: dict[str, tuple[str, QueueEntry]] = {}  # key -> (job id, its queue entry) of an earlier loop's job
        self._unsent: list[str] = []  # runs submit() took a slot for, in order, that flush() has not yet sent to SLURM
        self._queried_at = 0.0
        self._results_seen: set[str] = set()  # job ids whose result file sleep() has seen
        self.losses: dict[str, dict[str, list[str]]] = {}  # node -> {one failure of it: the runs it took down}
        self._kept_last: set[str] = set()  # nodes past EXCLUDE_AFTER kept as the last ones that can run a job
        self._excluded_path = self._logs / "slurm.excluded.json"  # kept for the next loop of the campaign
        self.excluded: set[str] = set()
        if self._excluded_path.exists():  # an earlier loop's: nodes the cluster still has, if SLURM can still place a job
            known = _node_states(None)
            self.excluded = {n for n in rundir.load_json(self._excluded_path)["nodes"] if not known or n in known}
            if self.excluded and _test_only(self.settings, self.folder, self.excluded):
                self.events.append(RunnerEvent("not_excluded", f"SLURM nodes {', '.join(sorted(self.excluded))}, excluded by an "
                                                               "earlier loop, are in use again: without them SLURM could place no run"))
                self.excluded = set()

    def scoring_resources(self) -> dict:
        """The lab's scoring at close runs in the loop's own process, on this machine's CPU."""
        return {"threads": os.cpu_count() or 1, "gpus": False, "env": {}}

    # ---- scheduling ------------------------------------------------------------------------

    def submit(self, job: Job) -> None:
        assert self.free_slots() > 0, "submit() with no free slot"
        assert job.key not in self._running, f"job {job.key} already running"
        adopted = self._adoptable.pop(job.key, None)
        if adopted is not None:  # an earlier loop's job, still in the queue: follow it
            job_id, entry = adopted
            run = _SlurmRun(job, self._free_slot(), time.time(), job_id, restarts=entry.restarts, node=entry.node or None)
            self._exclude_from(run)
        else:  # sent to SLURM by flush(), with the replicates submitted beside it
            run = _SlurmRun(job, self._free_slot(), time.time(), "")
            self._unsent.append(job.key)
        self._started(job.key, run)

    def flush(self) -> None:
        """Send SLURM the runs submit() took since the last flush: replicates of one experiment
        (run keys EXP-sSEED) whose jobs ask for the same resources go in one job array, any other
        run in a job of its own."""
        unsent, self._unsent = [self._running[k] for k in self._unsent if k in self._running], []
        try:
            for jobs in submissions(self.settings, [r.job for r in unsent], self.excluded):
                self._sbatch([self._running[job.key] for job in jobs])
        except BaseException:  # refused or interrupted: runs that never reached SLURM leave their slots
            for r in unsent:
                if not r.job_id:
                    self._ended(r.job.key, time.time())
            raise

    def _sbatch(self, runs: list[_SlurmRun]) -> None:
        """Submit the runs' job (one job array for several) and set each run's job id. Each run's
        record beside its spec names the job before sbatch runs and gets the job's id after, so
        a loop that dies in between leaves the next one a job to find by name (adopt), not one
        to submit twice; a submission retried after an error sbatch may have sent is looked for
        the same way first."""
        jobs = [r.job for r in runs]
        gpus = bool(self.settings.gpus_per_run)
        attempts = []
        for job in jobs:
            spec = self._spec(job, self.settings.cpus_per_run, gpus, {"CUDA_VISIBLE_DEVICES": ""} if gpus else {})
            spec["code_src"] = job.pythonpath  # None: the node's own lab (installed at the same path on every node, or its own)
            spec_path = self._spec_path(job.key)
            rundir.write_json_atomic(spec_path, spec)
            attempts.append(RunAttempt(str(spec_path), str(self._stderr_path(job.key))))
        keys = [job.key for job in jobs]
        name = job_name(keys[0]) if len(jobs) == 1 else array_name(keys)
        tasks = [None] if len(jobs) == 1 else list(range(len(jobs)))
        for key, task in zip(keys, tasks):
            rundir.write_json_atomic(self._record_path(key), {"job_id": None, "name": name, "task": task, "submitted_at": time.time()})
        what = f"run {keys[0]}" if len(jobs) == 1 else f"runs {', '.join(keys)} (one job array)"
        self._executor.update_parameters(**{**sbatch_parameters(self.settings, jobs[0], self.excluded), "job_name": name})
        job_ids: list[str] | None = None
        for attempt in range(len(SBATCH_RETRY_S) + 1):
            try:
                with self._executor.batch():  # one submission: a plain job for one run, a job array for several
                    submitted = [self._executor.submit(a) for a in attempts]
                job_ids = [job.job_id for job in submitted]
                break
            except self._submitit.core.utils.FailedJobError as e:
                why = _sbatch_error(e)
                if not any(t in why.lower() for t in TRANSIENT_SBATCH):
                    raise UserError(f"sbatch refused {what}: {why}: check the --slurm-* settings") from None
                if attempt == len(SBATCH_RETRY_S):
                    raise UserError(f"sbatch failed {attempt + 1} times for {what}, last: {why}: check that the SLURM "
                                    "controller answers (`sinfo`), then `research resume` the campaign") from None
                pause = SBATCH_RETRY_S[attempt]
                self.events.append(RunnerEvent("sbatch_retry", f"{what}: sbatch failed ({why}); submitting again in "
                                                               f"{pause:g} s (attempt {attempt + 2} of {len(SBATCH_RETRY_S) + 1})", keys[0]))
                time.sleep(pause)
                found = self._find_by_name(name) or {}  # the controller may have taken the job before its answer was lost
                if all(task in found for task in tasks):
                    job_ids = [found[task] for task in tasks]
                    self.events.append(RunnerEvent("adopted", f"{what}: SLURM had taken the job after all ({', '.join(job_ids)}); "
                                                              "followed, not submitted again", keys[0]))
                    break
        for r, job_id in zip(runs, job_ids):
            r.job_id, r.attempt_submitted = job_id, time.time()
        for key, task, job_id in zip(keys, tasks, job_ids):
            rundir.write_json_atomic(self._record_path(key), {"job_id": job_id, "name": name, "task": task, "submitted_at": time.time()})

    def _find_by_name(self, name: str) -> dict[int | None, str] | None:
        """The newest job of this user named `name` that SLURM still has queued or running:
        {array task index (None for a plain job): its job id}; {} if none, None when squeue does
        not answer."""
        out = _command(["squeue", "--noheader", "--array", "--states=all", f"--user={os.getuid()}",
                        "--Format=JobArrayID:|,State:|,Name:"])
        if out is None:
            return None
        jobs: dict[int, dict[int | None, str]] = {}  # array (or plain) job number -> {task: id}
        for line in out.splitlines():
            parts = [p.strip() for p in line.split("|", 2)]
            if len(parts) < 3 or parts[2] != name or parts[1] in ENDED:
                continue
            number, _, task = parts[0].partition("_")
            if number.isdigit() and (not task or task.isdigit()):
                jobs.setdefault(int(number), {})[int(task) if task else None] = parts[0]
        return jobs[max(jobs)] if jobs else {}

    def _record_path(self, key: str) -> Path:
        return self._logs / f"{key}.slurm.json"

    def adopt(self, key: str) -> bool:
        """A job an earlier loop submitted for `key` and that SLURM still has queued or running
        is followed as it is: the next submit() of `key` takes it over instead of submitting
        another. True if there is one."""
        path = self._record_path(key)
        if key in self._running or not path.exists():
            return False
        record = rundir.load_json(path)
        if record.get("job_id") is None:  # the loop died while sbatch ran: the job SLURM took, if it took one
            found = self._find_by_name(record["name"])
            if found is None:
                raise UserError(f"cannot ask SLURM whether it took run {key}'s job ({record['name']}): check that `squeue` "
                                "answers, then resume the campaign")
            if record.get("task") not in found:
                return False
            record["job_id"] = found[record.get("task")]
            rundir.write_json_atomic(path, record)
        job_id = str(record["job_id"])
        queue = self._query([job_id])
        if queue is None:
            raise UserError(f"cannot ask SLURM whether job {job_id} (run {key}) is still queued: check that `squeue` answers, "
                            "then resume the campaign")
        entry = queue.get(job_id)
        if entry is None or entry.state in ENDED or entry.name != record.get("name", job_name(key)):  # over, forgotten, or its id reused since
            return False
        self._adoptable[key] = (job_id, entry)
        where = f" on {entry.node}" if entry.node and entry.state == "RUNNING" else ""
        self.events.append(RunnerEvent("adopted", f"run {key}: SLURM job {job_id} ({entry.state.lower()}{where}), submitted by an "
                                                  "earlier loop of this campaign, adopted: followed as it is, not started again", key))
        return True

    def _send(self, r: _SlurmRun, sig: int) -> None:
        """SIGTERM: to every process of a running job (the trainer checkpoints, the job ends on its
        own); a job that has not started is cancelled. SIGKILL: the job is cancelled outright."""
        if sig == signal.SIGKILL:
            if not r.kill_sent:
                r.kill_sent = True
                _command(["scancel", "--signal=KILL", r.job_id])
                _command(["scancel", r.job_id])
            return
        if r.running_since is None or _command(["scancel", "--signal=TERM", r.job_id]) is None:
            _command(["scancel", r.job_id])  # pending (or it just ended): nothing to checkpoint

    def _kill(self, r: _SlurmRun) -> None:
        self._send(r, signal.SIGKILL)

    def stop(self, key: str, reason: str = "stopped") -> None:
        self.flush()  # a run not yet sent has no job to cancel
        super().stop(key, reason)

    def shutdown(self) -> None:
        """Stop every job (status 'shutdown'); runs not yet sent to SLURM are not sent."""
        for key in self._unsent:
            if key in self._running:
                self._ended(key, time.time())
        self._unsent = []
        super().shutdown()

    def poll(self) -> list[JobResult]:
        """Jobs that left the queue since the last call; notes requeues; enforces timeouts and
        the kill grace period."""
        self.flush()
        if not self._running or time.time() - self._queried_at < QUEUE_POLL_S:
            return []
        queue = self._query([r.job_id for r in self._running.values()])
        if queue is None:  # squeue did not answer: nothing is concluded from silence
            return []
        done, now = [], time.time()
        for key, r in list(self._running.items()):
            entry = queue.get(r.job_id)
            if entry is not None and entry.state not in ENDED:
                self._follow(key, r, entry, now)
                continue
            ended = time.time()
            self._ended(key, ended)
            if entry is not None and entry.state in NODE_ENDS and (entry.node or r.node):
                node = entry.node or r.node
                self._node_lost(node, key, _node_failure(node, r.running_since) or f"{entry.state} of job {r.job_id}")
            code, note = self._outcome(r, entry)
            last = Attempt(len(r.attempts) + 1, entry.node or r.node if entry else r.node, r.attempt_submitted or r.started_at,
                           r.running_since, ended, f"its node failed: {entry.state}" if entry and entry.state in NODE_ENDS else None)
            done.append(self._result(r, code, ended, r.reason, note, attempts=[*r.attempts, last]))
        return done

    def _follow(self, key: str, r: _SlurmRun, entry: QueueEntry, now: float) -> None:
        if entry.restarts > r.restarts:  # SLURM requeued it: preempted, `scontrol requeue`, its node lost, or its time limit
            since, r.restarts, r.running_since = r.running_since, entry.restarts, None
            self._exclude_from(r)  # pending again: it may not go back to a node excluded while it ran
            failure = _node_failure(r.node, since) if r.node and r.reason is None else None
            lost = f"its node failed: {failure}" if failure else "requeued by SLURM (preemption, an administrator, a time limit)"
            r.attempts.append(Attempt(len(r.attempts) + 1, r.node, r.attempt_submitted or r.started_at, since, now, lost))
            r.attempt_submitted = now
            if r.reason is None:
                steps = sorted(int(p.stem.split("_")[1]) for p in (r.job.out_dir / "ckpt").glob("step_*") if p.stem.split("_")[1].isdigit())
                resume = f"resumes from its last checkpoint (step {steps[-1]} or later)" if steps else \
                    "it had no checkpoint yet: it starts again from step 0 unless its interrupted process wrote one as it stopped"
                where = f" on {r.node}" if r.node else ""
                why = f"its node {r.node} failed: {failure}" if failure else \
                    "preempted, requeued by an administrator, or its time limit"
                self.events.append(RunnerEvent("requeued", f"run {key}: SLURM job {r.job_id} requeued{where} ({why}; restart "
                                                           f"{entry.restarts}); {resume}", key))
                if failure:
                    self._node_lost(r.node, key, failure)
        if entry.state == "RUNNING" and r.running_since is None:
            r.running_since, r.node = now, entry.node or r.node
        self._enforce_deadlines(key, r, now, since=r.running_since)  # a timeout counts from SLURM starting it

    def _outcome(self, r: _SlurmRun, entry: QueueEntry | None) -> tuple[int, str]:
        """The job process's exit code (-1: none), and the runner's word on how the job ended."""
        paths = self._paths(r.job_id)
        state = f"SLURM job {r.job_id} ended {entry.state}" if entry else f"SLURM job {r.job_id} left the queue"
        code, note = -1, ""
        if paths.result_pickle.exists():
            outcome, value = self._submitit.core.utils.pickle_load(paths.result_pickle)
            if outcome == "success" and isinstance(value, int):
                code = value
            elif outcome != "success":
                note = f"{state}: {str(value).strip().splitlines()[-1]}"
        elif paths.stderr.exists():  # it never got to the run (the node could not start Python, submitit, the lab)
            note = f"{state} without a result; its log {paths.stderr} ends: {paths.stderr.read_text(errors='replace')[-1000:]}"
        if not note and entry is not None and entry.state != "COMPLETED":
            note = f"{state} ({entry.reason})"
        return code, f"[pretrainlab] {note}" if note else ""

    def _node_lost(self, node: str, key: str, failure: str) -> None:
        """Count run `key` lost to `failure` of `node` (one failure taking several runs down counts
        once); at EXCLUDE_AFTER failures the node gets no more runs of this campaign (new jobs and
        pending ones exclude it), unless SLURM could then place none."""
        self.losses.setdefault(node, {}).setdefault(failure, []).append(key)
        failures = self.losses[node]
        if node in self.excluded or len(failures) < EXCLUDE_AFTER:
            return
        told = "; ".join(f"{f}: {', '.join(keys)}" for f, keys in failures.items())
        usable = self._usable_nodes()
        if usable is None:  # sinfo did not answer: decided at the node's next failure
            return
        if not [n for n in usable if n != node] or _test_only(self.settings, self.folder, self.excluded | {node}):
            if node not in self._kept_last:  # excluding it would leave every run pending forever
                self._kept_last.add(node)
                self.events.append(RunnerEvent("not_excluded", f"SLURM node {node} failed {len(failures)} times under runs of this "
                                                               f"campaign ({told}), but no other node could run them: it stays in use"))
            return
        self.excluded.add(node)
        rundir.write_json_atomic(self._excluded_path, {"nodes": sorted(self.excluded)})
        for r in self._running.values():
            self._exclude_from(r)
        self.events.append(RunnerEvent("excluded", f"SLURM node {node} excluded: it failed {len(failures)} times under runs of this "
                                                   f"campaign ({told}); no more runs of the campaign go to it: new jobs and "
                                                   "pending ones exclude it, a running one from its next requeue"))

    def _exclude_from(self, r: _SlurmRun) -> None:
        """A pending job of this campaign excludes the excluded nodes (SLURM refuses this for a
        running job: it gets the list when it is requeued)."""
        if self.excluded and r.job_id:
            _command(["scontrol", "update", f"JobId={r.job_id}", f"ExcNodeList={exclude_list(self.settings, self.excluded)}"])

    def _usable_nodes(self) -> list[str] | None:
        """The nodes of the campaign's partition (the default one if none is set) that can run a job
        and that neither the settings nor this runner exclude; None when sinfo does not answer."""
        out = _command(["sinfo", "--noheader", "--Node", "--format=%N|%T|%P"])
        if out is None:
            return None
        theirs = set()
        if settings_exclude := self.settings.sbatch.get("exclude"):
            theirs = set((_command(["scontrol", "show", "hostnames", str(settings_exclude)]) or "").split())
        usable = []
        for line in out.splitlines():
            name, state, partition = (line.split("|") + ["", ""])[:3]
            name, state, partition = name.strip(), state.strip().lower(), partition.strip()
            mine = partition.rstrip("*") == self.settings.partition if self.settings.partition else partition.endswith("*")
            if mine and name not in self.excluded and name not in theirs and not _failed(state) and _base_state(state) in NODE_USABLE:
                usable.append(name)
        return usable

    def _paths(self, job_id: str):
        """submitit's files of a job: its result, its own stdout and stderr."""
        return self._submitit.core.utils.JobPaths(self.folder, job_id=job_id, task_id=0)

    def sleep(self, seconds: float) -> None:
        """Sleep up to `seconds`, returning early when a job's run has ended (its result file appears)."""
        self.flush()
        deadline = time.time() + seconds
        while time.time() < deadline:
            time.sleep(min(0.2, max(0.0, deadline - time.time())))
            for r in self._running.values():
                if r.job_id not in self._results_seen and self._paths(r.job_id).result_pickle.exists():
                    self._results_seen.add(r.job_id)
                    self._queried_at = 0.0  # poll asks squeue at once
                    return

    def _query(self, job_ids: list[str]) -> dict[str, QueueEntry] | None:
        """{job id: its entry} for the jobs SLURM still knows (a job it has forgotten is absent),
        or None when squeue does not answer."""
        self._queried_at = time.time()
        # --array and JobArrayID: each task of a job array on a line of its own, named ARRAY_TASK (a plain job: its id)
        out = _command(["squeue", "--noheader", "--array", "--states=all", f"--jobs={','.join(job_ids)}",
                        "--Format=JobArrayID:|,State:|,RestartCnt:|,NodeList:|,Name:|,Reason:"], unknown_ok=True)
        if out is None:
            return None
        queue = {}
        for line in out.splitlines():
            parts = [p.strip() for p in line.split("|")]
            if len(parts) >= 6 and parts[2].isdigit():
                queue[parts[0]] = QueueEntry(parts[4], parts[1], int(parts[2]), parts[3], "|".join(parts[5:]))
        return queue


def _node_states(nodes: list[str] | None) -> dict[str, str]:
    """{node: its sinfo state, lower case} for `nodes` (None: every node); empty when sinfo does
    not answer (nothing is concluded from that)."""
    cmd = ["sinfo", "--noheader", "--Node", "--format=%N|%T"] + ([f"--nodes={','.join(nodes)}"] if nodes else [])
    out = _command(cmd) or ""
    return {n.strip(): state.strip().lower() for n, state in (line.split("|", 1) for line in out.splitlines() if "|" in line)}


def _base_state(state: str) -> str:
    """A sinfo state without its flag suffixes (* ~ # ! % $ @ ^ - +)."""
    return state.rstrip("*~#!%$@^-+")


def _failed(state: str) -> bool:
    """Whether a sinfo state says the node failed: down, failing, or not answering ('*')."""
    return state.endswith("*") or _base_state(state) in NODE_FAILED


def _node_failure(node: str, since: float | None) -> str | None:
    """How `node` failed under a job that ran there since `since`, worded the same for every run one
    failure took down (it counts once), or None when SLURM shows no failure: the node down or silent
    now (with the time its reason was set), or its slurmd or machine started again since the job did."""
    for line in (_command(["sinfo", "--noheader", "--Node", f"--nodes={node}", "--format=%N|%T|%H"]) or "").splitlines():
        name, state, at = (line.split("|") + ["", ""])[:3]
        if name.strip() == node and _failed(state.strip().lower()):
            return f"{_base_state(state.strip().lower())} since {at.strip()}"
    shown = _command(["scontrol", "show", "node", node, "--oneliner"]) or ""
    for key, what in (("SlurmdStartTime", "its slurmd"), ("BootTime", "the machine")):
        m = re.search(rf"\b{key}=(\d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\d)", shown)
        if m and since is not None and time.mktime(time.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S")) >= since:
            return f"{what} started again at {m.group(1)}"
    return None


def _test_only(settings: SlurmSettings, folder: Path, exclude: set[str] | frozenset = frozenset(), array: bool = False) -> str | None:
    """Why sbatch would refuse a run's job with these settings and excluded nodes (`sbatch
    --test-only`; `array`: a job array of two runs' jobs), or None if it would take it."""
    from submitit.slurm.slurm import _make_sbatch_string  # the script submitit would write, to test it

    params = sbatch_parameters(settings, Job("settings-check", "-", folder / "settings-check", timeout_s=None), exclude)
    params.pop("setup", None)  # shell lines are the job's, not sbatch's
    if array:
        params["map_count"] = 2
    with tempfile.NamedTemporaryFile("w", suffix=".sh", dir=folder, delete=False) as f:
        f.write(_make_sbatch_string(command="true", folder=folder, **params))
    try:
        test = subprocess.run(["sbatch", "--test-only", f.name], capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return "sbatch --test-only timed out"
    finally:
        os.unlink(f.name)
    return _first_line(test.stderr) or "refused" if test.returncode != 0 else None


def _command(cmd: list[str], unknown_ok: bool = False) -> str | None:
    """A SLURM command's output, or None if it failed. `unknown_ok`: squeue's error for job ids it
    no longer knows means "none of them", an empty answer."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        return "" if unknown_ok and "Invalid job id" in proc.stderr else None
    return proc.stdout


def _check_cluster(settings: SlurmSettings, folder: Path) -> None:
    """A cluster that answers, the partition it is asked for, and settings sbatch accepts
    (`sbatch --test-only`: partition, account, qos, time limit, resources), or a UserError."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        raise UserError("--runner slurm needs the SLURM commands (sinfo, sbatch, squeue, scancel) on PATH: run the campaign on a "
                        "machine that submits to the cluster (a login node)")
    proc = subprocess.run(["sinfo", "--noheader", "--format=%P"], capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    if proc.returncode != 0:
        raise UserError(f"no SLURM cluster answers here (sinfo: {_first_line(proc.stderr)}): check that slurmctld is up and that "
                        "SLURM_CONF names its slurm.conf")
    partitions = [p.strip().rstrip("*") for p in proc.stdout.split()]
    if settings.partition and settings.partition not in partitions:
        raise UserError(f"--slurm-partition {settings.partition!r}: the cluster has no such partition; it has {', '.join(partitions)}")
    refused = _test_only(settings, folder)
    if refused:
        raise UserError(f"SLURM refuses a run's job with these settings ({refused}): check --slurm-partition, "
                        "--slurm-account, --slurm-time and the --slurm-profile")


def _finished_on_disk(run_dir: Path, score_path: str | None) -> bool:
    """The run ended with a verdict of its own and, when the lab scores it, the lab's score is written."""
    status = (read_summary(run_dir) or {}).get("status")
    if status in ("ok", "timeout"):
        return score_path is None or Path(score_path).exists()
    return status in FINAL


def _sbatch_error(e) -> str:
    """sbatch's own error line out of submitit's FailedJobError (its stderr)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return next((line for line in lines if "error" in line.lower()), lines[0] if lines else type(e).__name__)[:300]


def _first_line(e) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:300]


__all__ = ["SlurmRunner", "SlurmSettings", "RunAttempt", "load_profile", "settings_from", "sbatch_parameters", "time_minutes"]
