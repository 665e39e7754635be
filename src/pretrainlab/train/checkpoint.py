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
from pathlib import Path

import numpy as np
import torch

CKPT_RE = re.compile(r"^step_(\d{8})\.pt$")


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


def load_latest(ckpt_dir: Path) -> dict | None:
    ckpts = list_checkpoints(ckpt_dir)
    if not ckpts:
        return None
    # weights_only=False: the file holds RNG tuples and numpy state written by this code.
    return torch.load(ckpts[-1], map_location="cpu", weights_only=False)
