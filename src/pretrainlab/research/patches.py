"""Code experiments: a unified diff applied to an isolated copy of the harness.

    tree = apply_patch(patch_text, workdir)        # -> PatchedTree(pythonpath=..., files=[...])
    runner.submit(Job(..., pythonpath=tree.pythonpath))

Only the model, optimizer and trainer sources may change (src/pretrainlab/model/,
src/pretrainlab/train/). What a patch changed is checked on the result, not on the diff
text: after `git apply`, the copy is compared file by file with the lab's package, and
the patch is rejected if anything outside those directories differs in content, mode or
kind (whatever the hunk format: binary, rename, mode change), or if the copy holds a
symbolic link or anything but plain files. The trainer may change, so a run's own
metric is never trusted: the lab scores every run itself (runners/scoring.py).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pretrainlab

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
    cmd = ["git", "apply", strip, *prefix, "--whitespace=nowarn", "-"]  # no --unsafe-paths: nothing lands outside workdir
    out = subprocess.run(cmd, input=patch, text=True, capture_output=True, cwd=workdir)
    if out.returncode != 0:
        raise PatchRejected(f"patch does not apply: {out.stderr.strip().splitlines()[0] if out.stderr.strip() else 'git apply failed'}")
    # the whole tree, not only the package: a hunk without ---/+++ headers (a binary one) names its file only in its
    # `diff --git` line, so a patch could add src/sitecustomize.py, which every Python started on this tree runs first
    strays = sorted(p.relative_to(workdir).as_posix() for p in workdir.rglob("*")
                    if not p.is_dir() and not p.is_relative_to(dest))
    if strays:
        raise PatchRejected(f"the patch adds {strays[0]}: only {' and '.join(EDITABLE)} may change")
    check_copy(dest)
    return PatchedTree(workdir, files)


def _tree(root: Path) -> dict[str, Path]:
    return {p.relative_to(root).as_posix(): p for p in root.rglob("*") if "__pycache__" not in p.relative_to(root).parts}


def check_copy(dest: Path, reference: Path = PACKAGE_DIR) -> None:
    """Reject the patched copy unless it differs from the lab's package only in plain files
    under model/ and train/."""
    editable = tuple(e.removeprefix("src/pretrainlab/") for e in EDITABLE)
    ours, theirs = _tree(reference), _tree(dest)
    for rel in sorted(set(ours) | set(theirs)):
        path = theirs.get(rel)
        if path is not None and (path.is_symlink() or not (path.is_file() or path.is_dir())):
            raise PatchRejected(f"the patched copy holds {rel}, which is a symbolic link or a special file: only plain files may change")
        if rel.startswith(editable) or any(e.rstrip("/") == rel for e in editable):
            continue
        if path is None:
            raise PatchRejected(f"the patch deletes {rel}: only {' and '.join(EDITABLE)} may change")
        ref = ours.get(rel)
        if ref is None:
            raise PatchRejected(f"the patch adds {rel}: only {' and '.join(EDITABLE)} may change")
        if ref.is_dir() != path.is_dir() or (path.is_file() and (
                path.read_bytes() != ref.read_bytes() or (path.stat().st_mode & 0o111) != (ref.stat().st_mode & 0o111))):
            raise PatchRejected(f"the patch changes {rel} (content, mode or kind): only {' and '.join(EDITABLE)} may change; "
                                "the evaluation module, data layer and metric are read-only")
