"""When the trainer runs the model through torch.compile, and how it falls back to eager.

    pretrainlab train --recipe tiny-cpu --set train.compile=auto   # the default
    pretrainlab train --recipe tiny-cpu --set train.compile=on     # or off

Compiling fuses the block's elementwise ops (RMSNorm, RoPE, QK-norm, ReLU², soft-cap) and
Muon's batched Newton-Schulz chain, for a faster step; it costs a one-time warm-up
(tracing, code generation, a C++ compiler on CPU) of tens of seconds on a small CPU, so a
short run must not pay it. `train.compile=auto` decides:

- CUDA: compile (the warm-up is repaid within a minute at GPU batch sizes).
- CPU, one process: the first step runs eagerly (it is untimed in any case); from its
  duration the trainer projects the training time the budget has left (`remaining_s`,
  the tightest of the token, FLOP, time and wall-clock budgets) and compiles when the
  time compile saves on it repays the expected warm-up: `compile_pays`.
- CPU, several processes or FSDP: eager (compile under gloo DDP has not been measured).

The rule's constants are measured (docs/benchmarks.md, "torch.compile on CPU"). The first
step includes one-time allocator warm-up, so it overstates the step time and the rule errs
toward compiling a run that is only just long enough.

A compiler failure (no C++ compiler, an unwritable cache directory, an op the compiler
rejects) surfaces in `compile_model`'s warm-up forward/backward, before any training step
runs through the compiled model: the trainer logs one warning line and trains eagerly.

The compiler keeps what it generated in its cache directory (TORCHINDUCTOR_CACHE_DIR; a
campaign keeps one across the runs of the lab's own code: runners/job.py), and a
warm cache cuts the warm-up several times over (tiny-cpu: 104 s cold, 13 s warm, measured
under load). Each successful compile records its warm-up there under the run's shape
(`shape_key`), and `expected_warmup_s` uses the last one recorded for the shape (with a
margin) instead of the cold estimate, so `auto` compiles shorter runs once the cache is warm.
"""

from __future__ import annotations

import getpass
import json
import math
import os
import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from .optim import Muon, zeropower_via_newtonschulz5

# The rule's constants, from bench/speedrun.py on a 2-core Xeon under heavy background load,
# one thread (docs/benchmarks.md, "Speed on one CPU"). Compile saved 32-46% of the lab's
# step time at tiny-cpu's shape (4x128) but only 10-14% at small's (8x448, whose matmuls
# dominate); the rule assumes the smallest figure, so it does not overpromise.
CPU_STEP_SAVING = 0.10
# Warm-up with an empty compiler cache: 67-139 s measured (tiny and small shapes, under load);
# an idle machine is faster, which only makes the rule conservative. The graph is unrolled
# per block, hence a part per layer.
CPU_WARMUP_S_FIXED = 60.0
CPU_WARMUP_S_PER_LAYER = 5.0


def plan(setting: str, device_type: str, world_size: int, parallel: str) -> str:
    """'on', 'off', or 'measure' (train.compile=auto on one CPU process: decided by
    `compile_pays` after the first step)."""
    if setting != "auto":
        return setting
    if device_type == "cuda":
        return "on"
    return "measure" if world_size == 1 and parallel == "ddp" else "off"


WARMUPS_FILE = "pretrainlab-warmups.json"  # in the compiler's cache directory: {shape_key: seconds of the last warm-up}
WARM_MARGIN = 1.5  # a recorded warm-up is expected to take up to this much longer next time (load, a partial cache hit)
MAX_WARMUP_KEYS = 256


def shape_key(recipe, device_type: str) -> str:
    """What a compiled graph depends on, as far as its warm-up goes: the model's and the batch's shapes, the optimizer."""
    m = recipe.model
    return (f"{device_type}:{m.n_layer}x{m.n_embd}h{m.n_head}:T{m.seq_len}:V{m.vocab_size}:rows{recipe.train.micro_batch_rows}:"
            f"{recipe.optim.name}:torch{torch.__version__}" + (f":{recipe.train.compile_mode}" if recipe.train.compile_mode != "default" else ""))


def cache_dir() -> Path:
    """The compiler's cache directory, resolved as torch resolves it (torch/_inductor/runtime/cache_dir_utils.py, which
    cannot be imported here: it brings in torch._dynamo, seconds of start-up that an eager run must not pay)."""
    if os.environ.get("TORCHINDUCTOR_CACHE_DIR"):
        return Path(os.path.abspath(os.environ["TORCHINDUCTOR_CACHE_DIR"]))
    try:
        user = getpass.getuser()
    except (KeyError, ModuleNotFoundError, OSError):
        user = f"uid_{os.getuid()}"
    return Path(tempfile.gettempdir()) / ("torchinductor_" + re.sub(r'[\\/:*?"<>|]', "_", user))


def _warmups() -> dict:
    try:
        path = cache_dir() / WARMUPS_FILE
        if path.stat().st_size > 1 << 20:
            return {}
        data = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


def recorded_warmup_s(key: str | None) -> float | None:
    """The last warm-up recorded for this shape in the cache directory (None: none, or unreadable)."""
    v = _warmups().get(key) if key else None
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and 0 < v < 1e5 else None


def record_warmup(key: str, seconds: float) -> None:
    """Remember this shape's warm-up next to what the compiler cached (best effort: a read-only cache is fine)."""
    data = {k: v for k, v in _warmups().items() if k != key}
    data = dict(list(data.items())[-(MAX_WARMUP_KEYS - 1) :]) | {key: round(seconds, 2)}
    try:
        path = cache_dir() / WARMUPS_FILE
        tmp = path.with_name(f"{WARMUPS_FILE}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)
    except OSError:
        pass


def expected_warmup_s(n_layer: int, key: str | None = None) -> float:
    """The warm-up to expect: the last one recorded for this shape with a margin, else the cold-cache estimate."""
    recorded = recorded_warmup_s(key)
    cold = CPU_WARMUP_S_FIXED + CPU_WARMUP_S_PER_LAYER * n_layer
    return min(cold, WARM_MARGIN * recorded) if recorded is not None else cold


def compile_pays(remaining_s: float, n_layer: int, key: str | None = None) -> bool:
    """Whether compiling now saves more time over the rest of the run than its warm-up costs."""
    return remaining_s * CPU_STEP_SAVING > expected_warmup_s(n_layer, key)


def uncompile_optimizers(optimizers: list[torch.optim.Optimizer]) -> None:
    """Muon back on the eager Newton-Schulz (after a failed or interrupted compile)."""
    for opt in optimizers:
        if isinstance(opt, Muon):
            opt.orthogonalize = zeropower_via_newtonschulz5


MODES = {"default": None, "max-autotune": "max-autotune-no-cudagraphs"}  # train.compile_mode -> torch.compile's mode


def compile_model(model: nn.Module, optimizers: list[torch.optim.Optimizer],
                  warm_up: Callable[[nn.Module], None], key: str | None = None,
                  mode: str = "default") -> tuple[nn.Module, bool, str]:
    """(torch.compile(model), True, note), with Muon's Newton-Schulz compiled too and both
    warmed up (`warm_up(compiled)` runs one forward/backward on the training shapes); when
    the compiler fails, (model, False, a one-line warning): eager, as before. `mode` is
    train.compile_mode (`MODES`); the optimizer's Newton-Schulz keeps the default. With a `key`
    (`shape_key`), the warm-up's duration is recorded for the next run of the shape."""
    t0 = time.perf_counter()
    try:
        compiled = torch.compile(model, mode=MODES[mode])
        warm_up(compiled)
        for opt in optimizers:
            if isinstance(opt, Muon):
                opt.compile_newton_schulz()
    except Exception as e:  # any compiler failure: the eager model computes the same function
        uncompile_optimizers(optimizers)
        reason = next((line for line in str(e).splitlines() if line.strip()), "")
        return model, False, f"warning: torch.compile failed, training eagerly ({type(e).__name__}: {reason[:200]})"
    took = time.perf_counter() - t0
    if key:
        record_warmup(key, took)
    return compiled, True, f"torch.compile: model and optimizer compiled and warmed up in {took:.1f}s"
