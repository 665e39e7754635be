"""Code experiments: a unified diff applied to an isolated copy of the harness.

    tree = apply_patch(patch_text, workdir)        # -> PatchedTree(pythonpath=..., files=[...])
    runner.submit(Job(..., pythonpath=tree.pythonpath))

Only the model, optimizer and trainer sources may change (src/pretrainlab/model/,
src/pretrainlab/train/). The evaluation module, the data layer (validation split, eval
windows, token bytes) and everything else are read-only: a patch touching them is rejected
before anything runs, and the copy's eval.py is hash-checked against the lab's after the
patch is applied. Runs record their eval module hash in provenance.json, which the
campaign checks again before it accepts a result.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pretrainlab

from .. import eval as evaluation

PACKAGE_DIR = Path(pretrainlab.__file__).resolve().parent
EDITABLE = ("src/pretrainlab/model/", "src/pretrainlab/train/")


class PatchRejected(ValueError):
    """The patch may not be run: it touches read-only code or does not apply."""


@dataclass
class PatchedTree:
    root: Path  # workdir/src holds the patched package
    files: list[str]  # repository-relative paths the patch changes

    @property
    def pythonpath(self) -> str:
        return str(self.root / "src")


def touched_files(patch: str) -> list[str]:
    """Repository-relative paths a unified diff changes (from its ---/+++ headers)."""
    files = []
    for line in patch.splitlines():
        m = re.match(r"^(?:\+\+\+|---) (?:[ab]/)?(\S+)", line)
        if m and m.group(1) != "/dev/null" and m.group(1) not in files:
            files.append(m.group(1))
    return files


def check_allowed(patch: str) -> list[str]:
    files = touched_files(patch)
    if not files:
        raise PatchRejected("not a unified diff: no ---/+++ file headers found")
    for f in files:
        path = f if f.startswith("src/") else f"src/pretrainlab/{f}"  # accept package-relative paths too
        if not path.startswith(EDITABLE) or ".." in Path(path).parts:
            raise PatchRejected(f"patch touches {f}: only {' and '.join(EDITABLE)} may change; "
                                "the evaluation module, data layer and metric are read-only")
    return files


def apply_patch(patch: str, workdir: Path) -> PatchedTree:
    """Copy the package to workdir/src/pretrainlab and apply the patch there."""
    files = check_allowed(patch)
    dest = workdir / "src" / "pretrainlab"
    shutil.copytree(PACKAGE_DIR, dest, ignore=shutil.ignore_patterns("__pycache__"))
    strip = "-p1" if any(line.startswith(("--- a/", "+++ b/")) for line in patch.splitlines()) else "-p0"
    prefix = [] if files[0].startswith("src/") else ["--directory=src/pretrainlab"]
    cmd = ["git", "apply", "--unsafe-paths", strip, *prefix, "--whitespace=nowarn", "-"]
    out = subprocess.run(cmd, input=patch, text=True, capture_output=True, cwd=workdir)
    if out.returncode != 0:
        raise PatchRejected(f"patch does not apply: {out.stderr.strip().splitlines()[0] if out.stderr.strip() else 'git apply failed'}")
    copy_hash = hashlib.sha256((dest / "eval.py").read_bytes()).hexdigest()
    if copy_hash != evaluation.module_sha256():
        raise PatchRejected("the evaluation module changed in the patched copy; it is read-only")
    return PatchedTree(workdir, files)
