"""The lab's source tree as git sees it: the commit and the uncommitted diff a run's provenance records.

    code_state()               # {"git_commit", "git_dirty", "git_diff"} of the installed pretrainlab tree (None where it is
                               # not a git checkout, or git is missing)

Light to import (no torch): the trainer records it in provenance.json, and a campaign's job process records it for runs
whose trainer cannot see the checkout (the sandbox shows it no .git).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

SOURCE = Path(__file__).resolve().parent  # the pretrainlab package


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


def code_state(src: Path = SOURCE) -> dict:
    """Commit and uncommitted diff of the pretrainlab source tree at `src`, when it is a git checkout."""
    commit = _git(["rev-parse", "HEAD"], src)
    if commit is None:
        return {"git_commit": None, "git_dirty": None, "git_diff": None}
    diff = _git(["diff", "HEAD", "--", "."], src) or ""
    return {"git_commit": commit.strip(), "git_dirty": bool(diff), "git_diff": diff}
