"""Small JSON file helpers shared by the runner and its job process (kept out of job.py, so
`python -m pretrainlab.runners.job` does not find its own module imported already)."""

from __future__ import annotations

import json
import os
from pathlib import Path


def write_json_atomic(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, default=float) + "\n")
    os.replace(tmp, path)


def read_json_object(path: Path) -> dict | None:
    """A JSON object from a file, or None (missing, unreadable, not JSON, or not an object: run
    directories hold what experiment code wrote)."""
    try:
        value = json.loads(path.read_text())
        return value if isinstance(value, dict) else None
    except (OSError, ValueError):
        return None
