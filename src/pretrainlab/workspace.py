"""The workspace: where runs/ and the default ledger live."""

from __future__ import annotations

import os
import secrets
from datetime import datetime
from pathlib import Path

from .config import Recipe


def workspace() -> Path:
    """Where runs/ and the default ledger live: env PRETRAINLAB_WORKSPACE, else the current directory."""
    return Path(os.environ.get("PRETRAINLAB_WORKSPACE") or ".")


def default_run_dir(recipe: Recipe) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return workspace() / "runs" / f"{recipe.name}-{stamp}-{secrets.token_hex(2)}"
