"""Read a run directory into arrays, tolerating everything a real run leaves behind.

    run = load_run(Path("runs/tiny-cpu-20261121-1903-ab12"))
    run.train["loss"]          # float64 [num_train_rows], NaN where a row lacks the field
    run.domain_rows            # int64 [num_train_rows, num_domains] (run.domains names them)
    run.notes                  # what was wrong with the files, as sentences

The doctor reads files, never live objects, so it works on a run that is still being
written (metrics.jsonl growing, its last line cut mid-write, no summary.json yet), on a run
killed by SIGKILL, and on a directory that holds only part of a run. Nothing here raises
on bad content: every problem becomes a note and the analysis goes on with what is left.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import rundir
from ..errors import UserError

# Numeric per-step fields written by the trainer (train/trainer.py, step 6d).
TRAIN_FIELDS = ("tokens", "loss", "lr", "grad_norm", "max_layer_grad_norm", "tokens_per_s", "mfu", "step_s",
                "data_wait_frac", "peak_mem_mb", "train_seconds", "cpu_s", "gpu_util")
LIVE_WINDOW_S = 300  # metrics.jsonl written this recently and no summary.json: call the run live


MAX_DOMAINS = 256  # data domains the doctor reads from a run's files (a mixture has a few dozen; rows x domains x 8 bytes)
MAX_WORLD = 4096  # ranks of a per-rank field the doctor reads

@dataclass
class RunData:
    path: Path
    recipe: dict | None = None
    summary: dict | None = None
    provenance: dict | None = None
    steps: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # int64 [n], sorted, unique
    train: dict[str, np.ndarray] = field(default_factory=dict)  # float64 [n] per TRAIN_FIELDS name
    present: dict[str, np.ndarray] = field(default_factory=dict)  # bool [n]: the row has the field as a number (NaN too)
    max_grad_layer: list[str | None] = field(default_factory=list)
    batch_hash: list[str | None] = field(default_factory=list)
    compiled_rows: int = 0  # train rows that ran through torch.compile (the trainer's "compiled" field)
    domains: list[str] = field(default_factory=list)
    domain_rows: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.int64))  # [n, K]
    domain_loss: np.ndarray | None = None  # float64 [n, K]: mean train loss of each domain's rows (NaN: none that step)
    rank_step_s: np.ndarray | None = None  # float64 [n, world] on DDP runs (NaN where a row lacks it)
    rank_presync_s: np.ndarray | None = None  # each rank's own work before it first waits on another rank
    rank_data_s: np.ndarray | None = None  # each rank's time to build its batch
    rank_gpu_util: np.ndarray | None = None  # each rank's GPU utilisation (%), on multi-process GPU runs
    evals: list[dict] = field(default_factory=list)  # eval rows, sorted by step
    notes: list[str] = field(default_factory=list)  # data-quality notes, one sentence each
    superseded: list[dict] = field(default_factory=list)  # train rows a resume recomputed (metrics.superseded.jsonl)
    metrics_age_s: float | None = None  # seconds since metrics.jsonl was last written

    @property
    def n(self) -> int:
        return len(self.steps)

    @property
    def status(self) -> str:
        """summary.json's status, or 'running' / 'incomplete' when there is none."""
        if self.summary and self.summary.get("status"):
            last = self.summary.get("steps")
            if self.summary["status"] == "preempted" and self.n and isinstance(last, int) and self.steps[-1] > last:
                return "running" if self.live else "incomplete"  # resumed after the preemption
            return str(self.summary["status"])
        return "running" if self.live else "incomplete"

    @property
    def live(self) -> bool:
        return self.metrics_age_s is not None and self.metrics_age_s < LIVE_WINDOW_S

    def get(self, section: str, key: str, default=None):
        """A resolved recipe field, e.g. run.get("optim", "lr")."""
        return ((self.recipe or {}).get(section) or {}).get(key, default)

    @property
    def compiled(self) -> bool:
        """Whether the model ran compiled: from the train rows (train.compile=auto decides at
        run time), else from a recipe of before auto (compile true/false)."""
        return self.compiled_rows > 0 or self.get("train", "compile") in (True, "on")

    def timed(self) -> np.ndarray:
        """Mask of the steps whose timing is representative: not the first step of the run
        (allocator warm-up; 3 with torch.compile) nor the first step after each resume."""
        mask = np.ones(self.n, dtype=bool)
        if not self.n:
            return mask
        untimed = 3 if self.compiled else 1
        mask &= self.steps > untimed
        for r in (self.provenance or {}).get("resumes") or []:
            if isinstance(r, dict) and isinstance(r.get("step"), int):
                mask &= self.steps != r["step"] + 1
        return mask


def load_run(path: str | Path) -> RunData:
    """Load whatever a run directory holds. A path that does not exist is a UserError; any
    other problem (a file instead of a directory, missing or damaged files) is a note."""
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(f"run {path} does not exist: pass a run directory written by `pretrainlab train` (e.g. runs/NAME-...)")
    run = RunData(path=path)
    metrics_file = path / rundir.METRICS
    if not path.is_dir():
        if path.name == rundir.METRICS or path.suffix == ".jsonl":
            run.notes.append(f"{path} is a file, not a run directory: diagnosed it as a metrics.jsonl on its own")
            metrics_file = path
            if rundir.is_run_dir(path.parent):
                run.path = path.parent
        elif path.name in (rundir.RECIPE, rundir.SUMMARY, rundir.PROVENANCE, "log.txt") and (path.parent / rundir.RECIPE).exists():
            run.notes.append(f"{path} is a file: diagnosed its run directory {path.parent}")
            run.path = path = path.parent
            metrics_file = path / rundir.METRICS
        else:
            run.notes.append(f"{path} is not a directory: pass the run directory that `pretrainlab train` wrote "
                             "(it holds recipe.json, metrics.jsonl, summary.json)")
            return run
    run.recipe = _read_json(run.path / rundir.RECIPE, run.notes, required=True)
    run.summary = _read_json(run.path / rundir.SUMMARY, run.notes, required=False)
    run.provenance = _read_json(run.path / rundir.PROVENANCE, run.notes, required=True)
    _sanitize(run)
    if metrics_file.is_symlink() or (metrics_file.exists() and not metrics_file.is_file()):
        kind = "a symbolic link" if metrics_file.is_symlink() else "not a regular file"
        run.notes.append(f"{metrics_file.name} is {kind}: not read (a run writes a plain file; something else put this "
                         "there)")
    elif metrics_file.is_file():
        run.metrics_age_s = max(0.0, time.time() - metrics_file.stat().st_mtime)
        _read_metrics(metrics_file, run)
        run.superseded = _read_superseded(run.path / rundir.SUPERSEDED)
    elif run.path.is_dir():
        run.notes.append("no metrics.jsonl: the run logged no step yet (still starting, or it failed before its first step)")
    if run.path.is_dir() and not any(run.path.iterdir()):
        run.notes.insert(0, f"{run.path} is empty: nothing to diagnose yet")
    if run.summary is None and run.n:
        age = run.metrics_age_s or 0.0
        run.notes.append(
            f"no summary.json: the run is in progress (metrics.jsonl written {age:.0f}s ago)" if run.live else
            f"no summary.json and metrics.jsonl untouched for {age / 60:.0f} min: the run was killed (SIGKILL, OOM, "
            "node loss) before it could finish; `pretrainlab train --resume` continues it from its last checkpoint, or "
            "restarts it from step 0 if it has none")
    return run


def _sanitize(run: RunData) -> None:
    """Drop fields of the wrong type (a hand-edited or damaged file) so the detectors can
    trust the types they read; each drop is a note."""
    expect = [(run.provenance, "provenance.json", {"resumes": list, "data_weights": dict, "train_bytes_per_token": dict,
                                                   "memory_total_mb": (int, float), "run_id": str, "device": str}),
              (run.summary, "summary.json", {"status": str, "val_bpb": (int, float), "val_bpb_domains": dict, "steps": int,
                                             "error": str}),
              (run.recipe, "recipe.json", {s: dict for s in ("model", "optim", "data", "train", "budget", "eval", "faults")})]
    for obj, name, types in expect:
        for key, t in types.items():
            if obj is not None and obj.get(key) is not None and (not isinstance(obj[key], t) or isinstance(obj[key], bool)):
                run.notes.append(f"{name}: {key} is {type(obj[key]).__name__}, not {getattr(t, '__name__', 'a number')}; ignored")
                del obj[key]
    for key in ("data_weights", "train_bytes_per_token"):
        d = (run.provenance or {}).get(key)
        if isinstance(d, dict) and not all(type(v) in (int, float) and math.isfinite(v) and v >= 0 for v in d.values()):
            run.notes.append(f"provenance.json: {key} holds a non-number; ignored")
            del run.provenance[key]


def _read_json(file: Path, notes: list[str], required: bool) -> dict | None:
    if not file.exists():
        if required and file.parent.is_dir() and any(file.parent.iterdir()):
            notes.append(f"no {file.name}: the analyses that need it are skipped")
        return None
    try:
        return rundir.load_json(file)
    except rundir.NotAnObject as e:
        notes.append(f"{file.name} {e}; ignored")
    except (OSError, ValueError) as e:
        notes.append(f"{file.name} is unreadable ({type(e).__name__}: {str(e)[:80]}); ignored")
    return None


def as_float(v) -> float:
    """A JSON number as float (NaN/Infinity kept); anything else (null, bool, text) -> NaN."""
    if type(v) not in (int, float):
        return math.nan
    try:
        return float(v)
    except OverflowError:  # an integer beyond float range in a damaged file
        return math.inf if v > 0 else -math.inf


def _read_metrics(file: Path, run: RunData) -> None:
    train: dict[int, dict] = {}
    evals: dict[int, dict] = {}
    skipped = rundir.Skipped()
    no_step: list[int] = []  # line numbers of rows without a valid step
    num_dupes = 0
    for i, row in rundir.iter_numbered_metrics(file, skipped):
        step = row.get("step")
        if not isinstance(step, int) or isinstance(step, bool) or not 0 <= step <= rundir.INT64_MAX:
            no_step.append(i)
            continue
        kind = row.get("type", "train")
        table = train if kind == "train" else evals if kind == "eval" else None
        if table is None:
            continue  # a row type from a newer trainer: not ours to judge
        if step in table:
            num_dupes += 1
        if kind == "eval" and not isinstance(row.get("val_bpb_domains"), dict):
            row["val_bpb_domains"] = {}
        table[step] = row  # the last write of a step wins (a resume recomputes truncated steps)
    bad_lines = sorted(skipped.lines + no_step)  # not JSON objects, or no step: unreadable either way
    partial_last = skipped.torn
    if partial_last:
        run.notes.append("the last line of metrics.jsonl is cut short (the run is writing it, or was killed mid-write); ignored")
    if bad_lines:
        shown = ", ".join(map(str, bad_lines[:5])) + (" ..." if len(bad_lines) > 5 else "")
        run.notes.append(f"{len(bad_lines)} unreadable line(s) in metrics.jsonl skipped (line {shown})")
    if num_dupes:
        run.notes.append(f"{num_dupes} step(s) logged more than once in metrics.jsonl; the last row of each was used")
    if not train and not evals and not bad_lines and not partial_last:
        run.notes.append("metrics.jsonl is empty: the run has not logged a step yet")
    rows = [train[s] for s in sorted(train)]
    run.steps = np.array(sorted(train), dtype=np.int64)
    values = {k: [r.get(k) for r in rows] for k in TRAIN_FIELDS}
    run.present = {k: np.array([type(v) in (int, float) for v in vs], dtype=bool) for k, vs in values.items()}
    run.train = {k: np.array([as_float(v) for v in vs], dtype=np.float64) for k, vs in values.items()}
    run.max_grad_layer = [r.get("max_grad_layer") if isinstance(r.get("max_grad_layer"), str) else None for r in rows]
    run.compiled_rows = sum(r.get("compiled") is True for r in rows)
    run.batch_hash = [r.get("batch_hash") if isinstance(r.get("batch_hash"), str) else None for r in rows]
    weights = (run.provenance or {}).get("data_weights")
    index: dict[str, int] = {}  # domain -> column, first seen first
    for name in (weights if isinstance(weights, dict) else {}):
        index.setdefault(name, len(index))
    for r in rows:
        if isinstance(r.get("domain_rows"), dict):
            for name in r["domain_rows"]:
                index.setdefault(name, len(index))
    if len(index) > MAX_DOMAINS:  # (a run's mixture has a few dozen; rows x domains is the arrays' size)
        run.notes.append(f"the run names {len(index):,} data domains, more than the {MAX_DOMAINS:,} the doctor reads: the mixture "
                         f"checks use the first {MAX_DOMAINS:,}")
        index = {name: j for name, j in index.items() if j < MAX_DOMAINS}
    run.domains = list(index)
    run.domain_rows = np.zeros((len(rows), len(index)), dtype=np.int64)
    for i, r in enumerate(rows):
        dr = r.get("domain_rows")
        if isinstance(dr, dict):
            for name, v in dr.items():
                j = index.get(name)
                if j is not None and isinstance(v, int) and 0 <= v <= rundir.INT64_MAX:
                    run.domain_rows[i, j] = v
    if any(isinstance(r.get("domain_loss"), dict) for r in rows):
        run.domain_loss = np.full((len(rows), len(index)), np.nan)
        for i, r in enumerate(rows):
            dl = r.get("domain_loss")
            if isinstance(dl, dict):
                for name, v in dl.items():
                    j = index.get(name)
                    if j is not None:
                        run.domain_loss[i, j] = as_float(v)
    run.rank_step_s, run.rank_presync_s, run.rank_data_s, run.rank_gpu_util = (
        _per_rank(rows, k, run.notes) for k in ("rank_step_s", "rank_presync_s", "rank_data_s", "rank_gpu_util"))
    run.evals = [evals[s] for s in sorted(evals) if math.isfinite(as_float(evals[s].get("val_bpb")))]
    logged = run.steps[run.steps >= 1]  # sorted, each once; counted, not enumerated: a step of 2**62 is one row
    num_missing = int(logged[-1]) - len(logged) if len(logged) else 0
    if num_missing:  # every step gets its own row (train.log_every only batches the writes)
        gaps = np.flatnonzero(logged != np.arange(1, len(logged) + 1))
        first = int(gaps[0]) + 1 if len(gaps) else len(logged) + 1
        run.notes.append(f"{num_missing} step(s) missing from metrics.jsonl (first: {first}); the analysis uses the rows present")


def _per_rank(rows: list[dict], key: str, notes: list[str]) -> np.ndarray | None:
    """[n, world] float64 of a per-rank list field, NaN where a row lacks it; None if no row has it. Lists longer
    than MAX_WORLD are cut there, with a note."""
    lists = [r.get(key) for r in rows]
    if not any(isinstance(x, list) and x for x in lists):
        return None
    world = max(len(x) for x in lists if isinstance(x, list))
    if world > MAX_WORLD:
        notes.append(f"{key} lists {world:,} ranks in a row, more than the {MAX_WORLD:,} the doctor reads: the per-rank "
                     f"checks use the first {MAX_WORLD:,}")
        world = MAX_WORLD
        lists = [x[:MAX_WORLD] if isinstance(x, list) else x for x in lists]
    arr = np.full((len(rows), world), np.nan)
    for i, x in enumerate(lists):
        if isinstance(x, list):
            arr[i, : len(x)] = [as_float(v) for v in x]
    return arr


def _read_superseded(file: Path) -> list[dict]:
    """Train rows of attempts a resume replaced; unreadable lines are skipped."""
    return [row for row in rundir.iter_metrics(file) if row.get("type", "train") == "train" and isinstance(row.get("step"), int)
            and isinstance(row.get("superseded_by_resume_at"), int)]
