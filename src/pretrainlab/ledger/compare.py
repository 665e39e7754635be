"""Compare runs: the recipe keys that differ, and metric deltas against the first run.

Works on the dicts `Ledger.get_run` returns, so it needs no run directory: a team ledger can
compare runs made on other machines.
"""

from __future__ import annotations

import math
from typing import Any

# (summary key, label, better): deltas are reported for every numeric metric
METRICS = [
    ("val_bpb", "val_bpb", "lower"),
    ("tokens_per_s", "tokens/s", "higher"),
    ("mfu", "MFU", "higher"),
    ("steps", "steps", None),
    ("tokens", "tokens", None),
    ("params", "params", None),
    ("seconds", "training seconds", None),
    ("peak_mem_mb", "peak memory (MiB)", "lower"),
]


def flatten_recipe(recipe: dict, prefix: str = "", depth: int = 2) -> dict[str, Any]:
    """{"model.n_layer": 4, "data.weights": {...}, ...}: sections are flattened, field values
    (including dicts such as data.weights) are kept whole, as `--set` writes them."""
    flat: dict[str, Any] = {}
    for key, value in recipe.items():
        if isinstance(value, dict) and depth > 1:
            flat.update(flatten_recipe(value, f"{prefix}{key}.", depth - 1))
        else:
            flat[prefix + key] = value
    return flat


def recipe_diff(recipes: list[dict]) -> dict[str, list]:
    """Keys whose values are not all equal (absent keys read as None), in recipe order."""
    flats = [flatten_recipe(r or {}) for r in recipes]
    keys: dict[str, None] = {}
    for f in flats:
        keys.update(dict.fromkeys(f))
    diff = {}
    for key in keys:
        values = [f.get(key) for f in flats]
        if any(not _same(values[0], v) for v in values[1:]):
            diff[key] = values
    return diff


def metric_rows(runs: list[dict]) -> list[dict]:
    """One row per metric: values per run, and delta (and %) of each run against the first."""
    domains: dict[str, None] = {}
    for run in runs:
        domains.update(dict.fromkeys((run.get("summary") or {}).get("val_bpb_domains") or {}))
    rows = []
    for key, label, better in METRICS:
        rows.append(_row(label, key, better, [run.get(key) for run in runs]))
        if key == "val_bpb":
            for dom in domains:
                values = [((run.get("summary") or {}).get("val_bpb_domains") or {}).get(dom) for run in runs]
                rows.append(_row(f"val_bpb {dom}", f"val_bpb.{dom}", "lower", values))
    return rows


def compare(runs: list[dict]) -> dict:
    """{"runs": [...], "recipe_diff": {key: [values]}, "metrics": [rows]}; deltas vs runs[0]."""
    return {
        "runs": [{k: run.get(k) for k in ("run_id", "recipe_name", "status", "run_dir", "created_at", "device", "git_commit")}
                 for run in runs],
        "recipe_diff": recipe_diff([run.get("recipe") for run in runs]),
        "metrics": metric_rows(runs),
    }


def _row(label: str, key: str, better: str | None, values: list) -> dict:
    base = values[0]
    deltas, pcts = [None], [None]
    for v in values[1:]:
        ok = _number(base) and _number(v)
        deltas.append(v - base if ok else None)
        pcts.append(100.0 * (v - base) / abs(base) if ok and base else None)
    return {"metric": label, "key": key, "better": better, "values": values, "deltas": deltas, "delta_pcts": pcts}


def _number(v: Any) -> bool:
    """A finite number a float can hold (a JSON integer beyond 1e308 is compared as it is)."""
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:
        return False


def _same(a: Any, b: Any) -> bool:
    if _number(a) and _number(b):
        return float(a) == float(b)
    return a == b
