"""The Ray runner: each run of a campaign is a Ray actor on a node of a cluster, running the same
job process as the local runner (runners/job.py: sandboxed training, then the lab's own score),
so sandboxing, scoring, checkpoints and the run directory are exactly LocalRunner's.

    pretrainlab research start --runner ray --ray-address auto --parallel 8 --gpus 0   # 8 slots, one GPU each
    runner = RayRunner(num_slots=8, address="auto", gpus=True)
    runner.submit(job); runner.poll(); runner.stop(job.key)       # as LocalRunner (runners/base.py: Runner)

Each slot asks Ray for a share of the cluster's CPUs (all of them split across the slots, at
most one node's) and, with --gpus, one GPU: Ray sets CUDA_VISIBLE_DEVICES and the job passes
it to its trainer. Run directories, the campaign's logs and the lab's scores are read and
written at the paths the campaign gives, so on more than one machine the workspace must be on
storage every node mounts at the same path (NFS or similar), and every node needs pretrainlab
(and bubblewrap, for the sandbox) installed as on the driver: docs/scale.md.

Stopping a run (early stop, timeout, shutdown) calls its actor, which sends SIGTERM to the job
process on that node; the job passes it on to its trainer (job.py --stop-with-parent), which
checkpoints and ends 'preempted'. SIGKILL follows after the grace period.

A node or worker that dies mid-run fails its actor. If its machine is still up, Ray kills the
dead worker's child processes; where it does not (a worker killed outright), the job process,
told by the kernel that its parent died, stops its trainer with SIGTERM (a checkpoint). The
runner starts the run again in a new actor, which waits for the old job process and trainer
to let go of the run (their locks: the job's, and the run directory's), then resumes
it from its last checkpoint (the trainer restarts it from step 0 if there is none); at most
MAX_ATTEMPTS attempts per run. A node on which EXCLUDE_AFTER runs were lost gets no more runs
from this runner (a label selector on ray.io/node-id), unless it is the last node that can
take one. Each requeue and exclusion is a RunnerEvent, which the campaign notes in the ledger.
A run that says it finished and whose lab score is written is never run again.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import rundir
from ..data.engine import restore_env
from ..data.sources import require
from ..errors import UserError
from ..rundir import read_summary
from ..train.rundir_lock import lock_holder
from .base import KILL_GRACE_S, PACKAGE_SRC, Attempt, Job, JobResult, RunnerEvent, SlotRunner
from .job import job_lock_dir
from .sandbox import Sandbox

RAY_EXTRA = "pip install 'pretrainlab[ray]'"
MAX_ATTEMPTS = 3  # attempts per run: the first, then up to two restarts after node or worker loss
EXCLUDE_AFTER = 2  # runs lost on one node before it gets no more (one loss can be the cluster's, two are the node's)
# how long a new attempt waits for the previous one's job process to let go of the run: its checkpoint on SIGTERM,
# or an NFS lock lease of a machine that died
LOCK_WAIT_S = KILL_GRACE_S + 60.0
PROBE_S = 5.0  # a cluster address that takes no TCP connection in this long is an error at once
NODE_LABEL = "ray.io/node-id"  # set by Ray on every node (Ray >= 2.49)
FINAL = ("rejected", "diverged")  # ends a run would come to again if run again ('ok' and 'timeout' once the lab scored them)


class JobProcess:
    """One attempt at one run, as a Ray actor (a threaded one: `signal` is served while `run`
    waits): the job process on the node Ray placed the actor on."""

    def __init__(self):
        self._proc: subprocess.Popen | None = None
        self._signal: int | None = None  # a signal that arrived before the process was started
        self._lock = threading.Lock()

    def node_id(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    def run(self, spec: dict, spec_path: str, stderr_path: str, attempt: int) -> dict:
        """Start the job process once the run is free, wait for it; its exit code, or why it did not start."""
        import ray

        node = self.node_id()
        run_dir = Path(spec["run_dir"])
        locks = (job_lock_dir(spec_path), run_dir)  # held by the last attempt's job process and trainer while they stop
        deadline = time.time() + LOCK_WAIT_S
        while any(lock_holder(p) for p in locks) and time.time() < deadline and self._signal is None:
            time.sleep(0.5)
        held = [str(p) for p in locks if lock_holder(p)]
        if held and self._signal is None:  # not this node's fault: another attempt starts, on any node
            return {"node": node, "not_started": f"the previous attempt still held {', '.join(held)} after {LOCK_WAIT_S:.0f} s"}
        box = Sandbox.detect(warn=False)
        if spec["sandbox"] and not box.active:  # the driver promised sandboxed runs
            return {"node": node, "node_problem": f"this node cannot sandbox runs: {box.reason}"}
        if attempt > 1:  # continue what the lost attempt left: from its checkpoint, or from step 0 (the trainer decides)
            spec["resume"] = rundir.is_run_dir(run_dir)
            if not spec["resume"] and run_dir.exists():
                shutil.rmtree(run_dir)  # killed before it wrote its recipe: nothing to keep
        if "CUDA_VISIBLE_DEVICES" in spec["env"]:  # a GPU slot: the GPU Ray gave this actor
            spec["env"]["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in ray.get_gpu_ids())
        spec["code_src"] = spec["code_src"] or str(PACKAGE_SRC)  # an unpatched run trains with this node's lab
        spec["ray_node"] = node  # where this attempt ran, for people reading the logs
        rundir.write_json_atomic(Path(spec_path), spec)
        cmd = [sys.executable, "-m", "pretrainlab.runners.job", spec_path, "--stop-with-parent", str(os.getpid())]
        env = {**os.environ, "PYTHONUNBUFFERED": "1",
               "PYTHONPATH": os.pathsep.join(p for p in (str(PACKAGE_SRC), os.environ.get("PYTHONPATH")) if p)}
        with self._lock:
            if self._signal is not None:
                return {"node": node, "returncode": None}
            with open(stderr_path, "w" if attempt == 1 else "a") as err:
                if attempt > 1:
                    err.write(f"\n[pretrainlab] attempt {attempt} on Ray node {node} ({os.uname().nodename}), "
                              f"{'resuming' if spec['resume'] else 'from the start'}\n")
                    err.flush()
                self._proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env, start_new_session=True)
        return {"node": node, "returncode": self._proc.wait()}

    def signal(self, sig: int) -> None:
        """SIGTERM to the job process (it passes it on to its trainer), SIGKILL to its whole group."""
        with self._lock:
            if self._proc is None:
                self._signal = sig
                return
        try:
            if sig == signal.SIGKILL:
                os.killpg(self._proc.pid, sig)
            else:
                os.kill(self._proc.pid, sig)
        except ProcessLookupError:
            pass


@dataclass
class _RayRun:
    job: Job
    slot: int
    started_at: float  # submitted: the slot is taken from here until the run is over
    spec: dict
    attempt: int = 0
    actor: Any = None
    ref: Any = None  # the actor's run() result
    node_ref: Any = None  # the actor's node id, until it has come back
    node: str | None = None  # where this attempt runs
    attempt_submitted: float = 0.0  # when this attempt's actor was asked for
    attempt_started: float | None = None  # when Ray placed this attempt (its timeout counts from here)
    term_sent_at: float | None = None
    kill_sent: bool = False
    reason: str | None = None  # 'timeout', 'stopped' or 'shutdown' once we signalled it
    lost: list[str] = field(default_factory=list)  # why each earlier attempt was lost
    attempts: list[Attempt] = field(default_factory=list)  # the attempts that are over


class RayRunner(SlotRunner):
    def __init__(self, num_slots: int, address: str | None = None, gpus: bool = False, log_dir: Path | None = None,
                 sandbox: bool = True, max_attempts: int | None = None, exclude_after: int | None = None):
        if num_slots < 1:
            raise UserError(f"--parallel must be >= 1, got {num_slots}")
        self._ray = require("ray", "ray", "--runner ray", install=RAY_EXTRA)
        self.address = address
        self._env = dict(os.environ)  # ray.init changes it: put back when this runner disconnects
        self._connected = _connect(self._ray, address)  # whether this runner connected (and so disconnects)
        super().__init__(num_slots, log_dir, sandbox)
        self.gpus_per_slot = 1 if gpus else 0
        self.cpus_per_slot = self._cpus_per_slot()
        self.max_attempts, self.exclude_after = max_attempts or MAX_ATTEMPTS, exclude_after or EXCLUDE_AFTER
        self.losses: dict[str, list[str]] = {}  # node id -> keys of the runs lost there
        self.excluded: set[str] = set()  # nodes that get no more runs
        self._actor_class = self._ray.remote(JobProcess)

    def _cpus_per_slot(self) -> int:
        """The cluster's CPUs (on nodes with a GPU, for GPU slots) split across the slots, at
        most one node's: a slot runs on one node."""
        nodes = self._nodes()
        if not nodes:
            raise UserError(f"the Ray cluster ({self.address or 'local'}) has no node with a CPU{' and a GPU' if self.gpus_per_slot else ''} "
                            f"to run a slot: add one{', or drop --gpus' if self.gpus_per_slot else ''}")
        cpus = [int(n["Resources"]["CPU"]) for n in nodes]
        return max(1, min(sum(cpus) // self.num_slots, max(cpus)))

    def _nodes(self) -> list[dict]:
        """Alive nodes that can run a slot."""
        return [n for n in self._ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) >= 1
                and n["Resources"].get("GPU", 0) >= self.gpus_per_slot]

    def scoring_resources(self) -> dict:
        """The lab's scoring at close runs in the loop's own process, on this machine's CPU."""
        return {"threads": os.cpu_count() or 1, "gpus": False, "env": {}}

    # ---- scheduling ------------------------------------------------------------------------

    def submit(self, job: Job) -> None:
        assert self.free_slots() > 0, "submit() with no free slot"
        assert job.key not in self._running, f"job {job.key} already running"
        env = {"CUDA_VISIBLE_DEVICES": ""} if self.gpus_per_slot else {}  # filled in by the actor with the GPU Ray gives it
        spec = self._spec(job, self.cpus_per_slot, bool(self.gpus_per_slot), env)
        spec["code_src"] = job.pythonpath  # None: the node's own lab (its path may differ from this machine's)
        run = _RayRun(job, self._free_slot(), time.time(), spec)  # the actor writes the spec, on the node, as it starts
        self._start_attempt(run)
        self._started(job.key, run)

    def _start_attempt(self, run: _RayRun) -> None:
        run.attempt += 1
        options: dict = {"num_cpus": self.cpus_per_slot, "num_gpus": self.gpus_per_slot, "max_concurrency": 2, "max_restarts": 0}
        if self.excluded:
            options["label_selector"] = {NODE_LABEL: f"!in({','.join(sorted(self.excluded))})"}
        run.actor = self._actor_class.options(**options).remote()
        run.node, run.attempt_started, run.kill_sent = None, None, False
        run.attempt_submitted = time.time()
        run.node_ref = run.actor.node_id.remote()
        run.ref = run.actor.run.remote(run.spec, str(self._spec_path(run.job.key)), str(self._stderr_path(run.job.key)), run.attempt)

    def _send(self, r: _RayRun, sig: int) -> None:
        """Through the run's actor, on its node (SIGKILL once: the actor's queue is not to fill up)."""
        if sig == signal.SIGKILL:
            if r.kill_sent:
                return
            r.kill_sent = True
        r.actor.signal.remote(sig)

    def _kill(self, r: _RayRun) -> None:
        try:
            self._ray.get(r.actor.signal.remote(signal.SIGKILL), timeout=10)
        except self._ray.exceptions.RayError:
            pass  # gone with its node
        self._ray.kill(r.actor)

    def poll(self) -> list[JobResult]:
        """Finished runs since the last call; requeues runs lost with their node; enforces
        timeouts and the kill grace period."""
        if not self._running:
            return []
        ray = self._ray
        waiting = {r.node_ref: r for r in self._running.values() if r.node_ref is not None}
        for ref in ray.wait(list(waiting), num_returns=len(waiting), timeout=0)[0] if waiting else []:
            r = waiting[ref]
            r.node_ref, r.attempt_started = None, time.time()
            try:
                r.node = ray.get(ref)
            except ray.exceptions.RayError:
                pass  # the actor is gone: its run() says why
        refs = {r.ref: key for key, r in self._running.items()}
        ready = set(ray.wait(list(refs), num_returns=len(refs), timeout=0)[0])
        done, now = [], time.time()
        for ref, key in refs.items():
            r = self._running[key]
            if ref not in ready:
                self._enforce_deadlines(key, r, now, since=r.attempt_started)  # a timeout counts from Ray placing it
                continue
            out, lost, blame = self._outcome(r, ref)
            ray.kill(r.actor)  # its attempt is over (its node may be gone with it)
            r.attempts.append(Attempt(r.attempt, r.node, r.attempt_submitted, r.attempt_started, time.time(), lost))
            if lost and self._requeue(r, lost, blame):
                continue
            ended = time.time()
            self._ended(key, ended)
            code = out.get("returncode")
            note = f"[pretrainlab] {out['error']}" if out.get("error") else f"[pretrainlab] lost: {lost}" if lost else ""
            done.append(self._result(r, -1 if code is None else code, ended, r.reason, note, attempts=r.attempts))
        return done

    def _outcome(self, r: _RayRun, ref) -> tuple[dict, str | None, bool]:
        """What an attempt came back with; why it counts as lost (None: it does not), and
        whether its node is to blame."""
        x = self._ray.exceptions
        try:
            out = self._ray.get(ref)
        except (x.RayActorError, x.WorkerCrashedError, x.NodeDiedError, x.ObjectLostError, x.LocalRayletDiedError,
                x.OutOfMemoryError, x.RuntimeEnvSetupError) as e:
            return {}, _first_line(e), True
        except x.RayError as e:  # not the node's doing (a request no node can meet, an error in this module): a crash
            return {"error": _first_line(e)}, None, False
        r.node = out.get("node") or r.node
        if out.get("node_problem") or out.get("not_started"):
            return out, out.get("node_problem") or out["not_started"], bool(out.get("node_problem"))
        summary = read_summary(r.job.out_dir) or {}
        if r.reason is None and out.get("returncode") is not None and summary.get("status") == "preempted":
            return out, "its job process was stopped by a signal the runner did not send (the node shutting down?)", True
        return out, None, False

    def _requeue(self, r: _RayRun, why: str, blame_node: bool) -> bool:
        """Start a lost run again on another node; False when it is over instead: it finished
        (its summary and lab score are on disk), we were stopping it, or its attempts are used up."""
        key, node = r.job.key, r.node
        r.lost.append(why)
        if node is not None and blame_node:
            self._node_lost(node, key)
        if _finished_on_disk(r.job) or r.reason is not None:
            return False
        where = f"node {_short(node)}" if node else "a node"
        if r.attempt >= self.max_attempts:
            self.events.append(RunnerEvent("gave_up", f"run {key}: lost on {where} ({why}); {r.attempt} attempts, none left: "
                                                      "not started again", key))
            return False
        steps = sorted(int(p.stem.split("_")[1]) for p in (r.job.out_dir / "ckpt").glob("step_*.pt") if p.stem.split("_")[1].isdigit())
        resume = f"resumes from its last checkpoint (step {steps[-1]} or later)" if steps else \
            "it had no checkpoint yet: it starts again from step 0 unless its interrupted process writes one as it stops"
        self._start_attempt(r)
        self.events.append(RunnerEvent("requeued", f"run {key}: lost on {where} ({why}); requeued on another node "
                                                   f"(attempt {r.attempt} of {self.max_attempts}), {resume}", key))
        return True

    def _node_lost(self, node: str, key: str) -> None:
        """Count a run lost on `node`; exclude the node at EXCLUDE_AFTER, unless no other node could take a slot."""
        self.losses.setdefault(node, []).append(key)
        if node in self.excluded or len(self.losses[node]) < self.exclude_after:
            return
        if not [n for n in self._nodes() if n["NodeID"] != node and n["NodeID"] not in self.excluded]:
            return  # the last node that can run a slot: excluding it would leave every run waiting forever
        self.excluded.add(node)
        self.events.append(RunnerEvent("excluded", f"Ray node {_short(node)} excluded: {len(self.losses[node])} runs lost there "
                                                   f"({', '.join(self.losses[node])}); no more runs of this campaign go to it"))

    def sleep(self, seconds: float) -> None:
        """Sleep up to `seconds`, returning early the moment a run ends (or its node is lost)."""
        if not self._running:
            time.sleep(seconds)
            return
        self._ray.wait([r.ref for r in self._running.values()], num_returns=1, timeout=seconds)

    def shutdown(self) -> None:
        """Stop everything (status 'shutdown': checkpointed, to be resumed, not a verdict), then
        let go of the cluster (a Ray instance this runner started stops)."""
        super().shutdown()
        if self._connected and self._ray.is_initialized():
            self._ray.shutdown()
            restore_env(self._env)
            self._connected = False


def _connect(ray, address: str | None) -> bool:
    """Join the Ray instance this process already has, else the cluster at `address` (default:
    env RAY_ADDRESS, else a new local instance). True if this call connected."""
    if ray.is_initialized():
        return False
    options: dict = {"log_to_driver": False}  # each run's output is in its own log file
    if address is None and not os.environ.get("RAY_ADDRESS"):
        options["include_dashboard"] = False  # only a new local instance takes settings
    where = address or os.environ.get("RAY_ADDRESS")
    unreachable = _unreachable(where) if where else None
    if unreachable:  # ray.init would retry for minutes
        raise UserError(f"cannot reach the Ray cluster at {where}: {unreachable}: check --ray-address (or RAY_ADDRESS) and that it is up")
    main = threading.current_thread() is threading.main_thread()
    # ray.init replaces this process's SIGTERM/SIGINT handlers (SIGTERM exits at once): they are put back
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)} if main else {}
    try:
        ray.init(address=address, **options)
    except ConnectionError as e:
        raise UserError(f"cannot reach the Ray cluster at {where}: {_first_line(e)}: check --ray-address (or RAY_ADDRESS) and that "
                        "it is up") from None
    finally:
        for sig, handler in handlers.items():
            if handler is not None:
                signal.signal(sig, handler)
    return True


def _unreachable(address: str) -> str | None:
    """Why HOST:PORT (a cluster's GCS, or ray://HOST:PORT, its Ray Client server) takes no TCP
    connection within PROBE_S; None when it does, or for an address Ray resolves itself (auto)."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        return None
    try:
        socket.create_connection((host, int(port)), timeout=PROBE_S).close()
    except OSError as e:
        return f"no answer on port {port} ({e.strerror or e})"
    return None


def _finished_on_disk(job: Job) -> bool:
    """The run ended with a verdict of its own and, when the lab scores it, the lab's score is written."""
    status = (read_summary(job.out_dir) or {}).get("status")
    if status in ("ok", "timeout"):
        return job.score_path is None or Path(job.score_path).exists()
    return status in FINAL


def _short(node: str) -> str:
    return node[:12]


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:300]
