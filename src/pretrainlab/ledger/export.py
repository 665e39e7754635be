"""`runs export`: runs as JSON (nested: recipe and summary as objects) or as one flat table
(CSV, Parquet) with a column per recipe key (`recipe.model.n_layer`) and per-domain val_bpb
(`val_bpb.code`), ready for pandas / DuckDB / a spreadsheet.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from ..errors import UserError
from .compare import flatten_recipe

FORMATS = ("json", "csv", "parquet")
PARQUET_INSTALL = "pip install 'pretrainlab[data]'  (pyarrow)"


def flat_row(run: dict) -> dict:
    """One run as a flat record: ledger columns, val_bpb per domain, then recipe keys."""
    row = {k: v for k, v in run.items() if k not in ("recipe", "summary", "provenance", "git_diff")}
    for dom, v in ((run.get("summary") or {}).get("val_bpb_domains") or {}).items():
        row[f"val_bpb.{dom}"] = v
    for key, v in flatten_recipe(run.get("recipe") or {}).items():
        row[f"recipe.{key}"] = json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v
    return row


def strict_json(obj):
    """obj with every NaN or infinite float as None, for JSON that any parser reads (no NaN or Infinity token)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    return obj


def write_export(runs: list[dict], fmt: str, path: Path) -> dict:
    path = Path(path)
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r}: use one of {', '.join(FORMATS)}")
    if not path.parent.exists():
        raise UserError(f"-o {path}: directory {path.parent} does not exist; create it or choose another path")
    if fmt == "json":
        keep = [{k: v for k, v in run.items() if k not in ("provenance", "git_diff")} for run in runs]
        path.write_text(json.dumps(strict_json(keep), indent=2, default=str, allow_nan=False) + "\n")
        return {"path": str(path), "format": fmt, "num_runs": len(runs)}
    rows = [flat_row(run) for run in runs]
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    if fmt == "csv":
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(columns), restval="")
            writer.writeheader()
            writer.writerows(rows)
    else:
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise UserError(f"--format parquet needs pyarrow: {PARQUET_INSTALL}; or export csv/json") from None
        data = {c: _column([row.get(c) for row in rows]) for c in columns}
        pq.write_table(pa.table(data), path)
    return {"path": str(path), "format": fmt, "num_runs": len(runs), "columns": list(columns)}


def _column(values: list) -> list:
    """One type per Parquet column: ints widen to float next to floats; mixed kinds become text."""
    kinds = {type(v) for v in values if v is not None}
    if kinds <= {int, float} and float in kinds:
        return [None if v is None else float(v) for v in values]
    if len(kinds) > 1:
        return [None if v is None else (v if isinstance(v, str) else json.dumps(v)) for v in values]
    return values
