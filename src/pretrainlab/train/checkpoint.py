"""Atomic checkpoints: everything needed to continue a run bit-for-bit.

A checkpoint is RUN_DIR/ckpt/step_00000123.pt holding the model and optimizer states,
the trainer's counters (step, tokens, training seconds, best-loss EMA), the data loader's
state and every RNG state (python, numpy, torch CPU and CUDA). It is written to a
temporary file in the same directory, fsynced and renamed into place, so a kill at any
moment leaves either the previous checkpoint or the new one, never a torn file.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

CKPT_RE = re.compile(r"^step_(\d{8})\.pt$")
STATE_KEYS = {"model", "optimizers", "loader", "trainer", "rng"}  # what a resume reads (trainer.py, step 5)


def rng_state() -> dict:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(ckpt_dir: Path, step: int, state: dict, keep: int) -> Path:
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    path = ckpt_dir / f"step_{step:08d}.pt"
    tmp = ckpt_dir / f".{path.name}.tmp"
    with open(tmp, "wb") as f:
        torch.save({**state, "rng": rng_state()}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    for old in list_checkpoints(ckpt_dir)[:-keep]:
        old.unlink()
    return path


def list_checkpoints(ckpt_dir: Path) -> list[Path]:
    if not ckpt_dir.is_dir():
        return []
    return sorted(p for p in ckpt_dir.iterdir() if CKPT_RE.match(p.name))


def load_latest(ckpt_dir: Path, warn: Callable[[str], None] | None = None) -> dict | None:
    """The newest checkpoint that loads, or None if none does. A newer one that does not
    (truncated by a full disk, damaged in a copy: the atomic rename guards only against
    kills) is skipped with a one-line `warn`, and the resume continues from the one before."""
    ckpts = list_checkpoints(ckpt_dir)
    for i in reversed(range(len(ckpts))):
        path = ckpts[i]
        try:
            # weights_only=False: the file holds RNG tuples and numpy state written by this code.
            ckpt = torch.load(path, map_location="cpu", weights_only=False)
            missing = sorted(STATE_KEYS - set(ckpt)) if isinstance(ckpt, dict) else ["everything (not a dict)"]
            if missing:
                raise ValueError(f"no {', '.join(missing)} in it")
            return ckpt
        except Exception as e:  # noqa: BLE001 - any way a file fails to load makes it unusable, not the run
            if warn is not None:
                reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
                then = f"trying {ckpts[i - 1].name}" if i else "no earlier checkpoint"
                warn(f"warning: checkpoint {path} is unreadable ({reason}); {then}")
    return None
