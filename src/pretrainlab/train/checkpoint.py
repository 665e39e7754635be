"""Atomic checkpoints: everything needed to continue a run bit-for-bit.

Two formats, one per `train.parallel`, both in RUN_DIR/ckpt/:

- 'ddp' (and single-process) runs: RUN_DIR/ckpt/step_00000123.pt, one file holding the
  model and optimizer states, the trainer's counters (step, tokens, training seconds,
  best-loss EMA), the data loader's state and every RNG state (python, numpy, torch CPU and
  CUDA). Rank 0 writes it to a temporary file in the same directory, fsyncs it and renames
  it into place, so a kill at any moment leaves either the previous checkpoint or the new
  one, never a torn file.
- 'fsdp' runs: RUN_DIR/ckpt/step_00000123/, a torch.distributed.checkpoint (DCP) directory:
  every process writes its own shards of the model and optimizer states (`.distcp` files,
  `.metadata` from rank 0) and rank 0 adds trainer.pt (counters, loader, RNG, as above; one
  RNG state serves every process: they start from the same seed and draw no random numbers
  after initialisation, and the loader draws the global batch identically on each).
  It is written as ckpt/.step_00000123.tmp/ and renamed into place by rank 0 once every
  process has finished (a barrier), so a kill leaves at most a temporary directory, which
  the next resume ignores and the next save removes. DCP stores each tensor's global shape
  and where each shard sits in it, so a checkpoint saved by N processes loads into any
  number of processes (1 included). Every process must be able to read and write the run
  directory (a shared file system across nodes).
"""

from __future__ import annotations

import os
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

CKPT_RE = re.compile(r"^step_(\d{8})\.pt$")
SHARDED_RE = re.compile(r"^step_(\d{8})$")  # a directory; the temporary one is .step_XXXXXXXX.tmp
SHARDED_TRAINER_FILE = "trainer.pt"  # in a sharded checkpoint: everything that is not model or optimizer
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
    def load(path: Path) -> dict:
        # weights_only=False: the file holds RNG tuples and numpy state written by this code.
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        missing = sorted(STATE_KEYS - set(ckpt)) if isinstance(ckpt, dict) else ["everything (not a dict)"]
        if missing:
            raise ValueError(f"no {', '.join(missing)} in it")
        return ckpt

    return newest_loadable(list_checkpoints(ckpt_dir), load, warn)


def newest_loadable(ckpts: list[Path], load: Callable[[Path], dict], warn: Callable[[str], None] | None) -> dict | None:
    """`load` of the newest of `ckpts` (oldest first) that loads; each newer one that raises is
    skipped with a one-line `warn` naming why and what is tried next. None if none loads."""
    for i in reversed(range(len(ckpts))):
        try:
            return load(ckpts[i])
        except Exception as e:  # noqa: BLE001 - any way a checkpoint fails to load makes it unusable, not the run
            if warn is not None:
                reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
                then = f"trying {ckpts[i - 1].name}" if i else "no earlier checkpoint"
                warn(f"warning: checkpoint {ckpts[i]} is unreadable ({reason}); {then}")
    return None


# --- sharded checkpoints (train.parallel=fsdp) -----------------------------------------------


def save_sharded(ckpt_dir: Path, step: int, model: torch.nn.Module, optimizers: list[torch.optim.Optimizer],
                 state: dict, keep: int) -> Path:
    """Write ckpt/step_XXXXXXXX/ from every process (all must call): model and optimizer
    shards through DCP, `state` (loader, trainer counters, recipe) and the RNG to trainer.pt."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    main = dist.get_rank() == 0
    path = ckpt_dir / f"step_{step:08d}"
    tmp = ckpt_dir / f".{path.name}.tmp"
    if main:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        for stale in ckpt_dir.glob(".step_*.tmp"):  # left by a kill mid-save
            shutil.rmtree(stale)
    dist.barrier()  # nobody writes into a directory rank 0 is still clearing
    model_state, optim_state = get_state_dict(model, optimizers)
    dcp.save({"model": model_state, "optimizers": optim_state}, checkpoint_id=tmp)  # fsyncs each file
    if main:
        with open(tmp / SHARDED_TRAINER_FILE, "wb") as f:
            torch.save({**state, "rng": rng_state()}, f)
            f.flush()
            os.fsync(f.fileno())
    dist.barrier()  # every process's shards are on disk
    if main:
        if path.exists():  # this step again, after a resume from an earlier checkpoint: swap, never delete first
            old = ckpt_dir / f".{path.name}.old.tmp"
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
        _fsync_dir(ckpt_dir)
        for stale in list_sharded(ckpt_dir)[:-keep]:
            shutil.rmtree(stale)
    dist.barrier()  # the checkpoint is in place before any process goes on (or exits on SIGTERM)
    return path


def list_sharded(ckpt_dir: Path) -> list[Path]:
    if not ckpt_dir.is_dir():
        return []
    return sorted(p for p in ckpt_dir.iterdir() if SHARDED_RE.match(p.name) and p.is_dir())


def load_latest_sharded(ckpt_dir: Path, model: torch.nn.Module, optimizers: list[torch.optim.Optimizer],
                        warn: Callable[[str], None] | None = None) -> dict | None:
    """Load the newest sharded checkpoint that loads into `model` and `optimizers` (every
    process calls this; DCP reshards to this run's number of processes) and return its
    trainer.pt state, or None if none loads. Temporary directories are never candidates; an
    incomplete or unreadable checkpoint is skipped with a one-line `warn`, as load_latest does."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    def load(path: Path) -> dict:
        missing = [name for name in (".metadata", SHARDED_TRAINER_FILE) if not (path / name).is_file()]
        if missing:
            raise ValueError(f"incomplete: no {' or '.join(missing)}")
        # weights_only=False: the file holds RNG tuples and numpy state written by this code.
        state = torch.load(path / SHARDED_TRAINER_FILE, map_location="cpu", weights_only=False)
        missing = sorted(STATE_KEYS - {"model", "optimizers"} - set(state)) if isinstance(state, dict) else ["everything"]
        if missing:
            raise ValueError(f"no {', '.join(missing)} in {SHARDED_TRAINER_FILE}")
        model_state, optim_state = get_state_dict(model, optimizers)
        shards = {"model": model_state, "optimizers": optim_state}
        dcp.load(shards, checkpoint_id=path)  # into this process's shards, in place
        set_state_dict(model, optimizers, model_state_dict=shards["model"], optim_state_dict=shards["optimizers"])
        return state

    return newest_loadable(list_sharded(ckpt_dir), load, warn)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
