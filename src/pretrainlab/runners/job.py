"""One run of a campaign, end to end: train in the sandbox, then score it from the lab's side.

    python -m pretrainlab.runners.job SPEC.json        # started by LocalRunner.submit, one per run
    python -m pretrainlab.runners.job SPEC.json --stop-with-parent PID   # by RayRunner's actor (runners/ray.py)

This process is the lab's: it imports only the lab's own package, never the experiment's
code (that runs in the sandboxed training process and in the scoring worker).
  1. resolve the recipe and the corpus from the spec (written by the campaign, outside any run)
  2. train: `pretrainlab train` with the experiment's code on PYTHONPATH, in the sandbox,
     seeing only the corpus's train and monitor shards
  3. score: scoring.score_run on the decision (val) and monitor splits, with the probes
     (the hidden test split is scored only when the campaign closes, for its report), of the
     corpus the spec's `score_data` names: a campaign's base corpus, so a run trained on a
     derived corpus (a data experiment) is scored on the same windows as the baseline
  4. check what the run says about itself against the lab's measurement:
     - its reported final val_bpb against the lab's score on the same split;
     - per domain, the monitor slice against the decision split (a model that learned
       the monitor slice by heart scores far better there than on unseen documents)
  5. write the lab's verdict to the spec's score_path (outside the run directory) and into
     summary.json (`val_bpb` becomes the lab's; the run's own figure is kept beside it)
SIGTERM (early stop, preemption, shutdown) reaches the trainer through the process group;
this process then skips scoring and exits with the trainer's code. With --stop-with-parent
(Linux) this process, the leader of its own process group, gets SIGTERM when the process
that started it dies (a Ray worker lost with its node's raylet) and passes every SIGTERM
on to its group, so a run whose runner is gone checkpoints and stops instead of training on.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import math
import os
import resource
import select
import signal
import stat
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from .. import rundir
from ..config import Recipe
from ..scoring_worker import TRAINED
from . import warm
from .sandbox import Sandbox, ignore_sigterm, scrubbed_env

EXIT_REJECTED = 4
EXIT_NOT_SCORED = 5  # the lab could not score the run (its scoring worker killed from outside): no verdict
EXIT_OUT_OF_MEMORY = 6  # the trainer or a scoring worker was killed at the run's memory cap (runners/limits.py)
EXIT_OUT_OF_DISK = 7  # the trainer was killed for writing past the run's disk cap
# The run's reported final val_bpb may differ from the lab's measurement on the same split by
# float rounding and autocast (bf16 on GPU: ~1e-3); more is a run reporting what it did not score.
REPORT_ABS_TOL = 0.02
REPORT_REL_TOL = 0.005
# Held-out documents of one domain score within a few percent of each other for an honest model;
# a model that is this much better on the monitor slice than on the decision split has learned it.
MEMORISED_RATIO = 0.5


def reported_mismatch(summary: dict, lab: dict) -> str | None:
    """Why the run's own final figure disagrees with the lab's, or None when it agrees."""
    split = summary.get("eval_split") or "monitor"
    reported, measured = summary.get("val_bpb"), (lab.get(split) or lab["monitor"])["val_bpb"]
    if not isinstance(reported, (int, float)) or not math.isfinite(reported):
        return f"the run reported val_bpb {reported!r}, not a number"
    if abs(reported - measured) > REPORT_ABS_TOL + REPORT_REL_TOL * measured:
        return (f"the run reported val_bpb {reported:.4f} on its {split} split, but the lab measured {measured:.4f} on the same "
                "split with the same weights: the run's own evaluation was altered")
    return None


def memorised(lab: dict) -> str | None:
    for domain, val in lab["val"]["domains"].items():
        monitor = lab["monitor"]["domains"].get(domain)
        if monitor is not None and math.isfinite(val) and monitor < MEMORISED_RATIO * val:
            return (f"{domain}: {monitor:.4f} bpb on the monitor slice but {val:.4f} on the decision split: the model has "
                    "learned the monitor slice by heart")
    return None


def run_caps(spec: dict, run_dir: Path) -> tuple[int | None, int | None, int | None]:
    """(memory cap in bytes, disk cap in bytes, task cap), each None for none, for this run from the spec's `limits`
    ({"memory": the campaign's --run-memory, "disk": its --run-disk, "share": this run's share of the machine, "tasks"});
    a spec without them (written before caps existed) gets none."""
    from .limits import run_disk, run_memory

    limits = spec.get("limits")
    if not isinstance(limits, dict):
        return None, None, None
    share = limits.get("share")
    if not isinstance(share, (int, float)):  # a cluster's node: this run's share of its CPUs, or of its GPUs
        share = int(spec["env"].get("OMP_NUM_THREADS", "1")) / (os.cpu_count() or 1)
        if spec["env"].get("CUDA_VISIBLE_DEVICES"):
            try:
                share = max(share, 1 / max(1, len(os.listdir("/proc/driver/nvidia/gpus"))))
            except OSError:
                share = max(share, 1.0)  # no way to count the node's GPUs: the run's cap is its node's
    return (run_memory(limits.get("memory", "auto"), share), run_disk(limits.get("disk", "auto"), share, run_dir),
            limits.get("tasks"))


def crashed_over_cap(run_dir: Path, error: str, peak: int | None = None, keep_error: bool = False) -> None:
    """Record a run killed at one of its caps: crashed, with the reason in its summary and on stderr (what the campaign's
    failure note shows), first above the trainer's own error with `keep_error`. Not resumed: it would run past the cap
    again."""
    summary = dict(rundir.read_summary(run_dir) or {})
    print(f"[pretrainlab] {error}", file=sys.stderr, flush=True)
    if keep_error and isinstance(summary.get("error"), str):
        error = f"{error}\n{summary['error']}"
    summary.update(status="crashed", error=error, val_bpb=None, val_bpb_domains=None,
                   peak_mem_mb=round(peak / (1 << 20), 1) if peak else summary.get("peak_mem_mb"))
    rundir.write_summary(run_dir, summary)


def out_of_memory(run_dir: Path, cap, part: str) -> int:
    """A run whose `part` (training, scoring) the kernel killed at its memory cap."""
    peak = cap.peak()
    crashed_over_cap(run_dir, f"out of memory: the {part} was killed at the run's memory cap of {cap.memory / (1 << 30):.2f} "
                     f"GiB (peak {(peak or 0) / (1 << 30):.2f} GiB); give runs more with --run-memory, or make the model or "
                     "batch smaller", peak)
    return EXIT_OUT_OF_MEMORY


class TrainerLink:
    """Two pipes between this process and the trainer of a run of the lab's own code, which scores the run itself once it
    has trained (scoring_worker.after_training): it says TRAINED and its exit code, then serves the scoring protocol."""

    def __init__(self):
        self.to_trainer, self.trainer_in = os.pipe()[::-1]  # (write end, read end): this process writes, the trainer reads
        self.trainer_out, self.from_trainer = os.pipe()[::-1]
        self.code: int | None = None  # the training's exit code, once the trainer has said it

    def child_fds(self) -> tuple[int, int]:
        return self.trainer_in, self.trainer_out

    def arg(self) -> list[str]:
        return ["--score-fds", f"{self.trainer_in},{self.trainer_out}"]

    def started(self) -> None:
        """The trainer has its ends: close ours of them (an exited trainer is then an end of file here)."""
        for fd in self.child_fds():
            os.close(fd)

    def wait(self, timeout: float | None) -> bool:
        """Whether the trainer has said it trained (`code` set) or closed its end (it exited) within `timeout` seconds."""
        if not select.select([self.from_trainer], [], [], timeout)[0]:
            return False
        message = os.read(self.from_trainer, 8)  # one write of 8 bytes to a pipe: read whole
        if len(message) == 8 and message[:4] == TRAINED:
            self.code = int.from_bytes(message[4:], "little", signed=True)
        return True

    def worker(self, proc: subprocess.Popen, cap):
        """The live trainer as the run's scoring worker; the pipes are its to close from here on."""
        from .scoring import trainer_worker

        fds, self.to_trainer, self.from_trainer = (self.to_trainer, self.from_trainer), -1, -1
        return trainer_worker(proc, *fds, cap)

    def close(self) -> None:
        for fd in (self.to_trainer, self.from_trainer):
            if fd >= 0:
                os.close(fd)
        self.to_trainer = self.from_trainer = -1


def wait_within_disk(proc: subprocess.Popen, run_dir: Path, disk: int | None, cap=None, link: TrainerLink | None = None) -> str | None:
    """Wait for the trainer (to exit, or with `link` to say it has trained), measuring its run directory every DISK_POLL_S
    and once more at the end (with the files its cap's processes hold open after unlinking them); kill it (SIGKILL: bwrap
    takes the sandbox with it) once that holds more than `disk` bytes or MAX_RUN_ENTRIES entries, or a folder the lab
    cannot list. Returns why it was killed or is over, or None."""
    from .limits import DISK_POLL_S, MAX_RUN_ENTRIES, disk_use

    def over(use) -> str | None:
        gib = 1 << 30
        try:  # the trainer's stderr is this process's log, outside the run directory: it counts too
            st = os.fstat(sys.stderr.fileno())
            use.bytes += st.st_blocks * 512 if stat.S_ISREG(st.st_mode) else 0
        except (OSError, ValueError):
            pass
        if use.unreadable:
            return f"the training made a folder in its run directory that the lab cannot list ({use.unreadable})"
        if use.entries > MAX_RUN_ENTRIES:
            return f"the training made more than {MAX_RUN_ENTRIES:,} files and folders in its run directory"
        if use.largest >= disk:  # a write past RLIMIT_FSIZE fails (EFBIG), and leaves a file at the cap
            return f"the training wrote a file past the run's disk cap of {disk / gib:.2f} GiB"
        if use.bytes > disk:
            return f"the training wrote {use.bytes / gib:.2f} GiB to its run directory, past the run's disk cap of {disk / gib:.2f} GiB"
        return None

    while True:
        timeout = DISK_POLL_S if disk is not None else None
        try:
            if link is None:
                proc.wait(timeout=timeout)
            elif not link.wait(timeout):
                raise subprocess.TimeoutExpired(proc.args, timeout)
        except subprocess.TimeoutExpired:
            why = over(disk_use(run_dir, holders=cap.pids() if cap is not None else ()))
            if why is None:
                continue
            proc.kill()
            proc.wait()
            return f"{why} (killed)"
        # what it wrote after the last look: over the cap is over, however it ended
        why = over(disk_use(run_dir)) if disk is not None else None
        return why and f"{why} (found when it ended)"


def record_lab_code(run_dir: Path, code_src: Path) -> None:
    """The lab's commit and uncommitted diff in the run's provenance.json: the sandboxed trainer sees no .git, so it records
    none. A code experiment's tree is the lab's with its patch (kept with the experiment in the ledger): `code_patched`."""
    from ..code_state import code_state

    provenance = rundir.read_provenance(run_dir)
    if not isinstance(provenance, dict):
        return
    provenance.update(code_state(), code_patched=code_src != LAB_SRC)
    rundir.write_json_atomic(run_dir / rundir.PROVENANCE, provenance)


def job_lock_dir(spec_path: str | Path) -> Path:
    """The folder whose lock a job process holds while it runs (beside its spec)."""
    return Path(spec_path).with_suffix(".job")


def corpus_path(recipe: Recipe) -> Path:
    if recipe.data.corpus != "builtin":
        return Path(recipe.data.corpus).expanduser().resolve()
    from ..data import builtin_corpus_dir, prepare_builtin

    path = builtin_corpus_dir(recipe.data.tokenizer.replace(":", ""))
    if not (path / "manifest.json").exists():  # the sandboxed trainer cannot write it: prepare it here
        prepare_builtin(tokenizer=recipe.data.tokenizer, out_dir=path, progress=False)
    return path


def scoring_corpus(recipe: Recipe, score_data: dict | None) -> Path:
    """The corpus the lab scores a run on: `score_data` ({"corpus", "tokenizer"}, a campaign's
    base data) when given, else the run's own corpus."""
    if not score_data:
        return corpus_path(recipe)
    return corpus_path(replace(recipe, data=replace(recipe.data, corpus=score_data["corpus"], tokenizer=score_data["tokenizer"])))


def visible_corpus_files(path: Path) -> list[Path]:
    """What a sandboxed trainer may read: the manifest, the tokenizer, train and monitor shards."""
    from ..data.shards import Corpus

    Corpus.open(path, verify=False)  # its file entries must be plain names in the corpus folder (one could name /etc/...)
    manifest = json.loads((path / "manifest.json").read_text())
    files = [path / "manifest.json"]
    if (manifest.get("tokenizer") or {}).get("file"):
        files.append(path / manifest["tokenizer"]["file"])
    for splits in manifest["domains"].values():
        files += [path / splits[s]["file"] for s in ("train", "monitor")]
    return files


_HELD: list = []  # locks this process holds until it exits
PR_SET_PDEATHSIG = 1  # prctl(2): the signal this process gets when its parent dies


def die_with_parent(sig: int) -> None:
    """Have the kernel send `sig` to this process when its parent dies."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, sig)


def stop_with_parent(parent_pid: int) -> None:
    """SIGTERM this process when `parent_pid`, the process that started it, dies (at once if it
    already has)."""
    die_with_parent(signal.SIGTERM)
    if os.getppid() != parent_pid:  # it died before the prctl: nothing would tell us
        os.kill(os.getpid(), signal.SIGTERM)


LAB_SRC = Path(__file__).resolve().parent.parent.parent  # the lab's own source tree (runners/base.py PACKAGE_SRC)


def compile_cache(run_parent: Path, code_src: Path) -> Path:
    """The compiler's cache for runs of the lab's own code beside each other (RUN_PARENT/.compile-cache/<hash of its
    Python files>): kept across runs, so only the first run of a shape pays the compile warm-up in full
    (train/compiling.py). Only the lab's code gets one: what it writes there is the compiler's output for a recipe,
    never an experiment's choice. A patched tree's runs compile afresh in their private /tmp, as they always did: a
    folder they shared would be a channel between an experiment's replicate runs."""
    digest = hashlib.sha256()
    for path in sorted(code_src.rglob("*.py")):
        if path.is_file() and not path.is_symlink():
            digest.update(str(path.relative_to(code_src)).encode() + b"\0" + path.read_bytes() + b"\0")
    cache = run_parent / ".compile-cache" / digest.hexdigest()[:16]
    cache.mkdir(parents=True, exist_ok=True)
    return cache


def warm_trainer(train_cmd: list[str], env: dict, link: TrainerLink | None, cap, disk: int | None, read_only: list[Path],
                 run_dir: Path, code_digest: str, box: Sandbox, stopping=lambda: False):
    """The run's trainer forked by the warm host for its files (runners/warm.py), in its cgroup and with the limits a
    fresh one gets (preexec in main), or None where there is no host to fork it (said on stderr: a fresh one then)."""
    from .limits import MAX_OPEN_FILES

    rlimits = {**cap.rlimits(), **({"RLIMIT_FSIZE": disk, "RLIMIT_NOFILE": MAX_OPEN_FILES} if disk is not None else {})}
    # the host sees the campaign's folder (writable): a recipe file in it (one per experiment) needs no mount, nor a host
    read_only = [p for p in read_only if not p.is_relative_to(run_dir.parent)]
    devnull = os.open(os.devnull, os.O_RDWR)
    try:  # its stdin and stdout go nowhere, its stderr is this process's log; the scoring pipes at numbers of its own
        proc = warm.start(train_cmd[3:] + (["--score-fds", "{fds}"] if link else []), env,
                          [devnull, devnull, sys.stderr.fileno(), *(link.child_fds() if link else ())], rlimits,
                          code_src=LAB_SRC, code_digest=code_digest, read_only=read_only, writable=[run_dir.parent], box=box)
    except (warm.Unavailable, OSError) as e:
        print(f"[pretrainlab] no warm trainer ({e}): starting a fresh one", file=sys.stderr, flush=True)
        return None
    finally:
        os.close(devnull)
    if stopping():  # stopped while the host started: it never runs (killed before its go byte, as it waits for it)
        proc.kill()
        proc.wait()
        return proc
    try:
        proc.attach(cap)
    except OSError as e:  # its cgroup refused it: no run goes uncapped
        proc.kill()
        proc.wait()
        print(f"[pretrainlab] the forked trainer could not be capped ({e.strerror or e}): starting a fresh one", file=sys.stderr,
              flush=True)
        return None
    print(f"[pretrainlab] trainer forked from the warm host (pid {proc.pid})", file=sys.stderr, flush=True)
    return proc


def main(spec_path: str, parent_pid: int | None = None) -> int:
    spec = json.loads(Path(spec_path).read_text())
    # held until this process exits, so a restarted campaign finds this run still in flight (LocalRunner.release_orphan)
    from ..train.rundir_lock import acquire

    _HELD.append(acquire(job_lock_dir(spec_path), create=True))  # the kernel drops it when this process dies
    stopping = {"flag": False}
    running: dict = {}  # "trainer": a warm host's child, which is in no process group of the job's

    def on_sigterm(*_) -> None:
        if "trainer" in running:  # a SIGTERM to the job's group reaches a fresh trainer by itself, a forked one by its pid
            running["trainer"].send_signal(signal.SIGTERM)
        if parent_pid is not None and not stopping["flag"]:  # only this process got it: the trainer must checkpoint too
            stopping["flag"] = True
            os.killpg(os.getpgrp(), signal.SIGTERM)  # (this process's own copy finds the flag set)
        stopping["flag"] = True
        scoring = sys.modules.get("pretrainlab.runners.scoring")
        if scoring is not None:  # scoring: its workers, in sessions of their own, stop with the job (no score is kept)
            scoring.abort_workers()

    signal.signal(signal.SIGTERM, on_sigterm)
    if parent_pid is not None:
        stop_with_parent(parent_pid)
    # 1. recipe and corpus, resolved by the lab
    from ..recipes import resolve_recipe

    recipe = resolve_recipe(spec["recipe"], spec["overrides"])
    threads = spec.get("threads")  # this slot's CPU threads (a spec written before they were passed: in its overrides)
    if threads:  # a recipe that asks for fewer keeps its number (train.num_threads=1 on a machine shared with others)
        threads = recipe.train.num_threads if 0 < recipe.train.num_threads < threads else threads
        spec["overrides"] = [*spec["overrides"], f"train.num_threads={threads}"]
    omp = {"OMP_NUM_THREADS": str(threads)} if threads else {}
    # a recipe.json by absolute path: the sandboxed trainer starts in its own /tmp, where a path relative to
    # the workspace (the default workspace is the current directory) names nothing
    recipe_arg = str(Path(spec["recipe"]).resolve()) if Path(spec["recipe"]).is_file() else spec["recipe"]
    run_dir = Path(spec["run_dir"]).resolve()
    code_src = Path(spec["code_src"]).resolve()
    corpus_dir = corpus_path(recipe)
    box = Sandbox.detect(warn=False) if spec["sandbox"] else Sandbox(None, "disabled")
    # 2. train in the sandbox
    if spec["resume"]:
        train_cmd = [sys.executable, "-m", "pretrainlab", "train", "--resume", str(run_dir), "--json"]
    else:
        train_cmd = [sys.executable, "-m", "pretrainlab", "train", "--recipe", recipe_arg, "--out", str(run_dir), "--json"]
        for o in spec["overrides"]:
            train_cmd += ["--set", o]
    finished = rundir.read_summary(run_dir) or {}
    if spec["resume"] and finished.get("status") in ("ok", "timeout") and (run_dir / "model.pt").is_file():
        train_cmd = None  # trained to the end before the campaign lost track of it: only the scoring is left
    run_dir.mkdir(parents=True, exist_ok=True)
    read_only = visible_corpus_files(corpus_dir)
    if recipe_arg != spec["recipe"] or Path(recipe_arg).is_file():
        read_only.append(Path(recipe_arg))
    # the compiler's cache, kept across runs for the lab's own code only: a writable folder shared by an experiment's
    # runs would let its code pass anything between its replicate seeds (one seed's weights to the next)
    cache = compile_cache(run_dir.parent, code_src) if code_src == LAB_SRC else None
    env = scrubbed_env({**spec["env"], **omp, "PYTHONPATH": str(code_src), "PRETRAINLAB_NO_LEDGER": "1", "PYTHONUNBUFFERED": "1",
                        "PRETRAINLAB_SANDBOX": "1" if box.active else "0", **({"TORCHINDUCTOR_CACHE_DIR": str(cache)} if cache else {})})
    if recipe.data.corpus == "builtin":
        env["PRETRAINLAB_HOME"] = str(corpus_dir.parent.parent)
    gpus = bool(spec["env"].get("CUDA_VISIBLE_DEVICES"))
    memory, disk, tasks = run_caps(spec, run_dir)
    if memory is not None:  # what the run records as the memory it has (the doctor's memory_pressure measures against it)
        env["PRETRAINLAB_MEMORY_CAP_MB"] = str(memory >> 20)
    code = 0
    # a run of the lab's own code is scored by its trainer once it has trained (scoring_worker.after_training): one torch
    # process for the run, not two. A patched tree's model runs only in workers of its own (runners/scoring.py)
    link = TrainerLink() if train_cmd is not None and code_src == LAB_SRC and spec.get("score_path") else None
    cap = trainer = None
    try:
        if train_cmd is not None and not stopping["flag"]:  # (a SIGTERM before the trainer started has nobody else to stop)
            from .limits import MAX_OPEN_FILES, RunCap

            # the trainer and all it starts, in a cgroup of their own: the memory and task caps (runners/limits.py)
            cap = RunCap.create(f"{run_dir.name}-train", memory, tasks, gpus=gpus)
            print(f"[pretrainlab] caps on the trainer: {cap.how}", file=sys.stderr, flush=True)

            def preexec() -> None:
                cap.enter()
                if disk is not None:  # no one file past the disk cap (the total is measured while it runs)
                    resource.setrlimit(resource.RLIMIT_FSIZE, (disk, disk))
                    resource.setrlimit(resource.RLIMIT_NOFILE, (MAX_OPEN_FILES, MAX_OPEN_FILES))  # what the watcher looks through
                ignore_sigterm()
                if parent_pid is not None:  # the trainer dies with this process, as bwrap's --die-with-parent makes it in the sandbox
                    die_with_parent(signal.SIGKILL)

            # the lab's own code on CPU: forked from the campaign's warm host (runners/warm.py), which has imported torch
            # (a corpus inside the campaign's folder, which the host sees whole, would show it the held-out splits)
            inside = any(c.is_relative_to(run_dir.parent) for c in (corpus_dir, scoring_corpus(recipe, spec.get("score_data"))))
            proc = warm_trainer(train_cmd, env, link, cap, disk, read_only, run_dir, cache.name, box, lambda: stopping["flag"]) if (
                spec.get("warm") and cache is not None and not gpus and parent_pid is None and not inside
                and not warm.machine_has_gpus()) else None
            if proc is not None:
                running["trainer"] = proc
                if stopping["flag"]:  # (a SIGTERM while it was being forked: the handler had no trainer to pass it to)
                    proc.send_signal(signal.SIGTERM)
            else:
                proc = subprocess.Popen(box.wrap(train_cmd + (link.arg() if link else []), code_src=code_src, read_only=read_only,
                                                 writable=[run_dir, *filter(None, [cache])], gpus=gpus),
                                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, env=env, preexec_fn=preexec,
                                        pass_fds=link.child_fds() if link else ())
            if link is not None:
                link.started()
            over_disk = wait_within_disk(proc, run_dir, disk, cap, link)
            if link is not None and link.code is not None and proc.poll() is None and not over_disk:
                code, trainer = link.code, link.worker(proc, cap)  # trained, and waiting to score the run
            else:
                if link is not None:  # (a trainer over its disk cap that has trained waits for a word: the end of its input)
                    link.close()
                code = proc.wait()
            # a process of the tree killed while the trainer went on to finish (a helper it started) is no crash of the run
            failed = code != 0 and not stopping["flag"]
            if failed and cap.out_of_memory():
                return out_of_memory(run_dir, cap, "training")
            if over_disk:
                crashed_over_cap(run_dir, f"out of disk: {over_disk}; give runs more with --run-disk, or checkpoint less often")
                return EXIT_OUT_OF_DISK
            if failed and cap.out_of_tasks():  # its own traceback (a fork or thread that failed) stays below this line
                crashed_over_cap(run_dir, f"out of tasks: the training reached the run's cap of {tasks:,} processes and threads, "
                                 "and a fork or a new thread failed", keep_error=True)
        record_lab_code(run_dir, code_src)
        summary = rundir.read_summary(run_dir)
        if (stopping["flag"] or not spec.get("score_path") or summary is None or summary.get("status") not in ("ok", "timeout")
                or not (run_dir / "model.pt").is_file()):
            return code
        # 3. score from the lab's side, 4. check the run's claims
        from ..data import Corpus
        from .scoring import ScoreRejected, ScoringFailed, ScoringOutOfMemory, score_run

        verdict: dict = {"status": "ok", "reason": None, "reported": {k: summary.get(k) for k in ("val_bpb", "eval_split")}}
        scored_on = Corpus.open(scoring_corpus(recipe, spec.get("score_data")), verify=False)
        try:
            if scored_on.manifest["tokenizer"] != Corpus.open(corpus_dir, verify=False).manifest["tokenizer"]:
                raise ScoreRejected(f"the run trained on {corpus_dir} and is scored on {scored_on.path}, whose tokenizer differs: the "
                                    "lab cannot score it on the campaign's windows; train on a corpus with the campaign's tokenizer")
            score = score_run(run_dir, code_src, scored_on, seq_len=recipe.model.seq_len,
                              tokens_per_domain=recipe.eval.tokens_per_domain, batch_rows=recipe.eval.batch_rows,
                              sandbox=box, threads=threads or int(spec["env"].get("OMP_NUM_THREADS", "1")), gpus=gpus,
                              env={k: v for k, v in spec["env"].items() if k.startswith("CUDA_")},  # this slot's GPU
                              memory=memory, tasks=tasks, trainer=trainer)
            verdict.update(score)
            reason = reported_mismatch(summary, score["splits"]) or memorised(score["splits"])
            if reason:
                verdict.update(status="rejected", reason=reason)
        except ScoreRejected as e:
            verdict.update(status="rejected", reason=str(e))
        except ScoringOutOfMemory as e:
            return code if stopping["flag"] else out_of_memory(run_dir, e.cap, "model process the lab scored it with")
        except ScoringFailed as e:  # no verdict either way: the run stays unscored, and a campaign scores it once more
            print(f"[pretrainlab] the lab could not score the run: {e}", file=sys.stderr, flush=True)
            return EXIT_NOT_SCORED
    finally:
        if trainer is not None:  # (scored, or not to be: closing its pipe ends it with the training's code)
            trainer.close()
        if link is not None:
            link.close()
        if cap is not None:
            cap.remove()
    if stopping["flag"]:
        return code
    # 5. the lab's verdict: outside the run (what the campaign trusts), and in summary.json (what people read)
    rundir.write_json_atomic(Path(spec["score_path"]), verdict)
    lab_val = (verdict.get("splits") or {}).get("val") or {}
    summary.update({"val_bpb_reported": summary.get("val_bpb"), "scored_by": "lab", "lab_score": verdict,
                    "val_bpb": lab_val.get("val_bpb"), "val_bpb_domains": lab_val.get("domains")})
    if verdict["status"] == "rejected":
        summary.update(status="rejected", rejected_reason=verdict["reason"], val_bpb=None, val_bpb_domains=None)
    rundir.write_summary(run_dir, summary)
    if verdict["status"] == "rejected":
        print(f"[pretrainlab] run rejected by the lab: {verdict['reason']}", file=sys.stderr, flush=True)
        return EXIT_REJECTED
    return code


if __name__ == "__main__":
    from ..errors import UserError

    parser = argparse.ArgumentParser(prog="python -m pretrainlab.runners.job")
    parser.add_argument("spec")
    parser.add_argument("--stop-with-parent", type=int, metavar="PID", help="stop (SIGTERM) when process PID, this one's "
                        "parent, dies; pass SIGTERM on to this process group (start this process in a new session)")
    args = parser.parse_args()
    try:
        sys.exit(main(args.spec, args.stop_with_parent))
    except UserError as e:  # a bad recipe or corpus: the same one-line error and exit code as `pretrainlab train`
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
