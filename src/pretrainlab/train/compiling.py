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
"""

from __future__ import annotations

import time
from collections.abc import Callable

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


def expected_warmup_s(n_layer: int) -> float:
    return CPU_WARMUP_S_FIXED + CPU_WARMUP_S_PER_LAYER * n_layer


def compile_pays(remaining_s: float, n_layer: int) -> bool:
    """Whether compiling now saves more time over the rest of the run than its warm-up costs."""
    return remaining_s * CPU_STEP_SAVING > expected_warmup_s(n_layer)


def uncompile_optimizers(optimizers: list[torch.optim.Optimizer]) -> None:
    """Muon back on the eager Newton-Schulz (after a failed or interrupted compile)."""
    for opt in optimizers:
        if isinstance(opt, Muon):
            opt.orthogonalize = zeropower_via_newtonschulz5


def compile_model(model: nn.Module, optimizers: list[torch.optim.Optimizer],
                  warm_up: Callable[[nn.Module], None]) -> tuple[nn.Module, bool, str]:
    """(torch.compile(model), True, note), with Muon's Newton-Schulz compiled too and both
    warmed up (`warm_up(compiled)` runs one forward/backward on the training shapes); when
    the compiler fails, (model, False, a one-line warning): eager, as before."""
    t0 = time.perf_counter()
    try:
        compiled = torch.compile(model)
        warm_up(compiled)
        for opt in optimizers:
            if isinstance(opt, Muon):
                opt.compile_newton_schulz()
    except Exception as e:  # any compiler failure: the eager model computes the same function
        uncompile_optimizers(optimizers)
        reason = next((line for line in str(e).splitlines() if line.strip()), "")
        return model, False, f"warning: torch.compile failed, training eagerly ({type(e).__name__}: {reason[:200]})"
    return compiled, True, f"torch.compile: model and optimizer compiled and warmed up in {time.perf_counter() - t0:.1f}s"
