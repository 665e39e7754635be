"""Read a run directory (recipe.json, summary.json, provenance.json, metrics.jsonl) into the
ledger's row for it, through pretrainlab.rundir. The ledger reads files, never live trainer
objects.

The per-step rows stay in RUN_DIR/metrics.jsonl at full resolution; the ledger copies only
the eval rows (a few per run) and indexes the file: rows, first/last step, size, sha256.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

from .. import rundir
from ..config import recipe_hash, resolved_recipe
from ..errors import UserError
from ..rundir import is_run_dir
from .db import to_utc

# Summary fields the ledger keeps as columns (the whole summary is kept as JSON too).
METRIC_COLUMNS = ("val_bpb", "params", "tokens", "steps", "seconds", "tokens_per_s", "mfu", "peak_mem_mb")
INT_COLUMNS = {"params", "tokens", "steps"}  # BIGINT; the others are floats
UNFINISHED = "unknown"  # no summary.json: still running, or killed before it could write one
# the trainer's five; the lab's own two for a campaign's runs ("rejected": refused by its scoring probes, "unscored":
# ended without the lab's score); and unknown (no summary.json, or a status no version of the lab writes)
RUN_STATUSES = ("ok", "diverged", "crashed", "timeout", "preempted", "rejected", "unscored", UNFINISHED)


def derived_run_id(run_dir: Path) -> str:
    """A stable id for a run directory without provenance.json's run_id: its absolute path's hash."""
    return hashlib.sha256(str(run_dir.absolute()).encode()).hexdigest()[:12]


def run_id_of(run_dir: Path) -> str:
    prov = _load(run_dir / rundir.PROVENANCE, required=False) or {}
    return _run_id(prov.get("run_id")) or derived_run_id(run_dir)


def read_run_dir(run_dir: Path) -> dict[str, Any]:
    """{"run": row for `runs`, "evals": [rows for `evals`], "series": row for `run_series`}."""
    run_dir = Path(run_dir).absolute()
    if not run_dir.is_dir():
        raise UserError(f"run directory {run_dir} does not exist")
    if not is_run_dir(run_dir):
        raise UserError(f"{run_dir} is not a run directory (no recipe.json); pass a directory written by `pretrainlab train`")
    try:
        return _read(run_dir)
    except OSError as e:
        raise UserError(f"cannot read {e.filename or run_dir}: {e.strerror or e}; check the run directory's permissions") from None


def _read(run_dir: Path) -> dict[str, Any]:
    recipe = _load(run_dir / rundir.RECIPE, required=True)
    summary = _load(run_dir / rundir.SUMMARY, required=False)
    prov = _load(run_dir / rundir.PROVENANCE, required=False) or {}
    # Every column is typed here: the files come from the trainer, which may be experiment code, so a value of the
    # wrong type (a dict for a device, 10**400 for a token count, NaN for a status) is left out, never written.
    # When the run started: provenance's timestamp if the trainer wrote one, else recipe.json's mtime (written once,
    # at the start; a resume never rewrites it).
    created_at = _timestamp(prov.get("started_at")) or _timestamp(prov.get("created_at")) or to_utc((run_dir / rundir.RECIPE).stat().st_mtime)
    status = (summary or {}).get("status")
    run = {
        "run_id": _run_id(prov.get("run_id")) or derived_run_id(run_dir),
        "run_dir": str(run_dir),
        "recipe_name": _text(recipe.get("name")),
        # from the recipe as this version reads it, not provenance's: runs of one recipe written by
        # versions before and after a field was added get one hash
        "recipe_hash": recipe_hash(recipe) or _text(prov.get("recipe_hash")) or _recipe_hash(recipe),
        "recipe": resolved_recipe(recipe),
        "seed": rundir.int64(recipe.get("seed", prov.get("seed"))),
        "git_commit": _text(prov.get("git_commit")),
        "git_diff": _text(prov.get("git_diff")),
        "provenance": prov,
        "device": _text(prov.get("device")),
        "world_size": rundir.int64(prov.get("world_size")),
        "status": status if status in RUN_STATUSES else UNFINISHED,
        **{k: (rundir.int64 if k in INT_COLUMNS else rundir.finite_float)((summary or {}).get(k)) for k in METRIC_COLUMNS},
        "summary": summary,
        "created_at": created_at,
        "finished_at": _timestamp((summary or {}).get("finished_at")),
    }
    evals, series = scan_metrics(run_dir / rundir.METRICS)
    return {"run": run, "evals": evals, "series": series}


def _text(v: Any) -> str | None:
    return v if isinstance(v, str) else None


RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")  # the trainer writes 12 hex digits; an id is never a path, a URL's escape or markup


def _run_id(v: Any) -> str | None:
    """provenance.json's run id, when it is one (RUN_ID); the faces put ids in paths, URLs and commands."""
    return v if isinstance(v, str) and RUN_ID.fullmatch(v) else None


def _timestamp(v: Any) -> str | None:
    """to_utc of a value from a run's files, None where it is not a time (text that is not ISO, 1e300, NaN, a list)."""
    try:
        return to_utc(v) if isinstance(v, str) or rundir.finite_float(v) is not None else None
    except (ValueError, TypeError, OverflowError, OSError):
        return None


def scan_metrics(path: Path) -> tuple[list[dict], dict | None]:
    """Eval rows and the index of metrics.jsonl (rows, first/last step, size, sha256), streaming
    (no per-step row kept). Rows are the lines rundir.iter_metrics reads: a line torn by a kill
    or a line of garbage is not a row."""
    if not path.is_file() or path.is_symlink():  # planted by experiment code: not the run's log (rundir.open_regular)
        return [], None
    num_rows = 0
    first_step = last_step = None
    evals: dict[int, dict] = {}
    for row in rundir.iter_metrics(path):
        num_rows += 1
        step = _step(row)
        if num_rows == 1:
            first_step = step
        last_step = step
        if row.get("type") == "eval" and step is not None:
            domains = row.get("val_bpb_domains")
            evals[step] = {"step": step, "tokens": rundir.int64(row.get("tokens")), "val_bpb": rundir.finite_float(row.get("val_bpb")),
                           "domains": {str(k): rundir.finite_float(v) for k, v in domains.items()} if isinstance(domains, dict) else None}
    series = {"metrics_path": str(path.absolute()), "num_rows": num_rows, "num_evals": len(evals), "first_step": first_step,
              "last_step": last_step, "file_size": os.path.getsize(path), "sha256": file_sha256(path)}
    return sorted(evals.values(), key=lambda r: r["step"]), series


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with rundir.open_regular(path) as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _step(row: dict) -> int | None:
    return rundir.int64(row.get("step"))


def _load(path: Path, required: bool) -> dict | None:
    if not path.is_file():
        if required:
            raise UserError(f"{path} is missing; pass a directory written by `pretrainlab train`")
        return None
    try:
        return rundir.load_json(path)
    except rundir.NotARegularFile:
        raise UserError(f"{path} is a symbolic link or a special file, not the run's file: the lab never reads through one "
                        "(experiment code may have planted it); remove it, then register the run again") from None
    except rundir.NotAnObject:
        raise UserError(f"{path} should hold a JSON object; repair or remove the file, then register the run again") from None
    except ValueError as e:
        raise UserError(f"{path} is not valid JSON ({e}); repair or remove the file, then register the run again") from None


def _recipe_hash(recipe: dict) -> str:
    """A hash of a recipe.json this version cannot read (name excluded)."""
    d = {k: v for k, v in recipe.items() if k != "name"}
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]
