"""Optimizers and learning-rate schedules.

- 'adamw': AdamW on everything; weight decay on matrices only.
- 'muon': Muon (Jordan et al. 2024, modded-nanogpt) on the 2-D hidden weight matrices of
  the blocks, AdamW on embeddings, the lm_head and scalars (Muon's orthogonalised update
  is meant for hidden matrices; embeddings and the head are better served by Adam).

Schedules map training progress in [0, 1] (the share of the binding budget used) to a
multiplier of the peak LR, so the same recipe works for token, time and FLOP budgets:
- 'wsd': linear warmup, constant, linear warmdown to final_lr_frac (Hu et al. 2024).
- 'cosine': linear warmup, cosine decay to final_lr_frac.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config import OptimConfig
from .parallel import is_dtensor


def zeropower_via_newtonschulz5(G: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Approximately orthogonalise G (the U V^T of its SVD) with a quintic Newton-Schulz
    iteration; coefficients from modded-nanogpt, tuned to maximise the slope at zero."""
    a, b, c = 3.4445, -4.7750, 2.0315
    X = G.bfloat16() if G.is_cuda else G.float()  # bf16 is stable here and fast on GPU
    transposed = X.size(-2) > X.size(-1)
    if transposed:
        X = X.mT
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    for _ in range(steps):
        A = X @ X.mT
        B = b * A + c * A @ A
        X = a * X + B @ X
    if transposed:
        X = X.mT
    return X.to(G.dtype)


def _undecorated(fn):
    """The function under torch's lazy `_disable_dynamo` decorator (functools.wraps keeps it)."""
    return getattr(fn, "__wrapped__", fn)


class _NoDynamoBookkeeping:
    """torch.optim.Optimizer's bookkeeping (adding groups, zeroing gradients, state dicts) is
    wrapped so that the first call imports torch._dynamo, about a second of CPU at start-up,
    and the trainer's eager runs never need it. These call the same functions unwrapped. They
    never run inside a compiled graph (the trainer compiles the model and Newton-Schulz only),
    where the wrapper's job, keeping dynamo from tracing them, would matter."""

    def add_param_group(self, param_group):
        return _undecorated(torch.optim.Optimizer.add_param_group)(self, param_group)

    def zero_grad(self, set_to_none: bool = True):
        return _undecorated(torch.optim.Optimizer.zero_grad)(self, set_to_none)

    def state_dict(self):
        return _undecorated(torch.optim.Optimizer.state_dict)(self)

    def load_state_dict(self, state_dict):
        return _undecorated(torch.optim.Optimizer.load_state_dict)(self, state_dict)


class AdamW(_NoDynamoBookkeeping, torch.optim.AdamW):
    """torch.optim.AdamW with the same state and checkpoints. On CPU (where torch steps one
    tensor at a time) its step is torch's single-tensor AdamW written out, bit-identical
    (tests/test_optim.py), without the step wrapper that imports torch._dynamo. Anything
    else (CUDA, DTensors, fused or foreach, amsgrad, ...) is torch's own step."""

    def step(self, closure=None):
        if not self._plain_cpu():  # torch's own step, without the hook wrapper it may carry (ours already ran the hooks)
            torch_step = torch.optim.AdamW.step
            return (torch_step.__wrapped__ if getattr(torch_step, "hooked", False) else torch_step)(self, closure)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        with torch.no_grad():
            for group in self.param_groups:
                beta1, beta2 = group["betas"]
                lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
                for p in group["params"]:
                    if p.grad is None:
                        continue
                    grad, state = p.grad, self.state[p]
                    if not state:
                        state["step"] = torch.tensor(0.0, dtype=torch.float64 if torch.get_default_dtype() == torch.float64
                                                     else torch.float32, device="cpu")  # as torch's AdamW makes it
                        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                        state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    exp_avg, exp_avg_sq, step_t = state["exp_avg"], state["exp_avg_sq"], state["step"]
                    step_t += 1
                    if wd != 0:
                        p.mul_(1 - lr * wd)
                    exp_avg.lerp_(grad, 1 - beta1)
                    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                    step = step_t.item()
                    step_size = lr / (1 - beta1**step)
                    denom = (exp_avg_sq.sqrt() / (1 - beta2**step) ** 0.5).add_(eps)
                    p.addcdiv_(exp_avg, denom, value=-step_size)
        return loss

    def _plain_cpu(self) -> bool:
        if getattr(self, "grad_scale", None) is not None or getattr(self, "found_inf", None) is not None:
            return False
        for group in self.param_groups:
            if (group["amsgrad"] or group["maximize"] or group["capturable"] or group["differentiable"] or group["fused"]
                    or group["foreach"] or not group.get("decoupled_weight_decay", True) or torch.is_tensor(group["lr"])):
                return False
            for p in group["params"]:
                if p.device.type != "cpu" or is_dtensor(p) or type(p) is not nn.Parameter or p.is_complex() or (p.grad is not None and p.grad.is_sparse):
                    return False
                if (st := self.state.get(p)) and (st["step"].device.type != "cpu" or not st["step"].is_floating_point()):
                    return False
        return True


class Muon(_NoDynamoBookkeeping, torch.optim.Optimizer):
    """SGD-momentum (Nesterov) whose update is orthogonalised per matrix.

    The update is scaled by sqrt(max(1, rows/cols)) so tall matrices get RMS-comparable
    steps. Matrices of one shape are stacked and orthogonalised together: one chain of
    batched matmuls per shape instead of one chain per matrix (a small model's step on CPU
    is short of large kernels, not of FLOPs). Each matrix's result is bit-identical to
    orthogonalising it alone (tests/test_optim.py). `compile_newton_schulz()` then runs that chain through
    torch.compile (one graph per shape; the trainer does so when it compiles the model).
    Under DDP the gradients are already averaged, so every rank computes the same
    update; no extra communication. Under FSDP (DTensor parameters, each process holding some
    rows) Newton-Schulz needs the whole matrix: each process all-gathers the momentum-mixed
    gradient, orthogonalises all of it and keeps its own rows. Simple and exact, but every
    process repeats every matrix's iteration and holds one full matrix at a time; dealing the
    matrices out across processes would divide that work.
    """

    def __init__(self, params, lr: float = 0.02, momentum: float = 0.95, weight_decay: float = 0.0, ns_steps: int = 5):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, ns_steps=ns_steps))
        self.orthogonalize = zeropower_via_newtonschulz5

    def compile_newton_schulz(self) -> None:
        """Compile the batched Newton-Schulz chain and run it once per stack shape, so its
        compilation happens now (raising here if the compiler cannot run), not in a step."""
        compiled = torch.compile(zeropower_via_newtonschulz5, dynamic=False)
        with torch.no_grad():  # as in step(): grad mode is part of what the compiled graph is specialised on
            for group in self.param_groups:
                for shape, params in _stacks(group["params"]).items():
                    p = params[0]
                    compiled(torch.zeros((len(params), *shape), device=p.device, dtype=p.dtype), group["ns_steps"])
        self.orthogonalize = compiled

    @torch.no_grad()
    def step(self, closure=None):  # closure: never used; torch.distributed.checkpoint's state-dict helpers pass None
        for group in self.param_groups:
            updates = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - group["momentum"])
                g = p.grad.lerp(buf, group["momentum"])  # Nesterov
                if is_dtensor(g):  # FSDP: orthogonalise the whole matrix, keep this process's shard
                    from torch.distributed.tensor import distribute_tensor

                    update = zeropower_via_newtonschulz5(g.full_tensor(), group["ns_steps"])
                    updates[p] = distribute_tensor(update, g.device_mesh, g.placements, src_data_rank=None)  # no communication
                else:
                    updates[p] = g
            for shape, params in _stacks([p for p in updates if not is_dtensor(updates[p])]).items():
                stack = torch.stack([updates[p] for p in params])  # [N, rows, cols]
                updates.update(zip(params, self.orthogonalize(stack, group["ns_steps"]).unbind(0)))
            for p, update in updates.items():
                scale = max(1.0, p.size(-2) / p.size(-1)) ** 0.5
                if group["weight_decay"]:
                    p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(update, alpha=-group["lr"] * scale)


def _stacks(params) -> dict[tuple[int, int], list]:
    """Matrices grouped by their exact shape, in `params` order. (Stacking a tall matrix
    with the transposes of wide ones of the same size would make fewer stacks, but changes
    its memory layout and so the float rounding of its update.)"""
    stacks: dict[tuple[int, int], list] = {}
    for p in params:
        stacks.setdefault(tuple(p.shape), []).append(p)
    return stacks


def build_optimizers(model: nn.Module, cfg: OptimConfig) -> list[torch.optim.Optimizer]:
    """Return the optimizers for `model`; each param group remembers its peak LR."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    hidden = [p for n, p in named if n.startswith("blocks.") and p.ndim == 2]
    hidden_ids = {id(p) for p in hidden}
    embeds = [p for n, p in named if p.ndim == 2 and id(p) not in hidden_ids and "lm_head" not in n]
    head = [p for n, p in named if "lm_head" in n]
    scalars = [p for n, p in named if p.ndim < 2]
    adam_kw = dict(betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, fused=False)
    if cfg.name == "adamw":
        groups = [
            dict(params=hidden + head, weight_decay=cfg.weight_decay),
            dict(params=embeds + scalars, weight_decay=0.0),
        ]
        optimizers = [AdamW([g for g in groups if g["params"]], lr=cfg.lr, **adam_kw)]
    else:
        groups = [
            dict(params=head, weight_decay=cfg.weight_decay),
            dict(params=embeds + scalars, weight_decay=0.0),
        ]
        optimizers = [
            AdamW([g for g in groups if g["params"]], lr=cfg.lr, **adam_kw),
            Muon(hidden, lr=cfg.muon_lr, momentum=cfg.muon_momentum, weight_decay=cfg.weight_decay),
        ]
    for opt in optimizers:
        for group in opt.param_groups:
            group["peak_lr"] = group["lr"]
    return optimizers


def lr_multiplier(progress: float, cfg: OptimConfig) -> float:
    """Peak-LR multiplier at `progress` in [0, 1]."""
    p = min(max(progress, 0.0), 1.0)
    if cfg.warmup_frac and p < cfg.warmup_frac:
        return p / cfg.warmup_frac
    if cfg.schedule == "wsd":
        decay_start = 1.0 - cfg.warmdown_frac
        if p <= decay_start or cfg.warmdown_frac == 0:
            return 1.0
        t = (p - decay_start) / cfg.warmdown_frac
        return 1.0 + t * (cfg.final_lr_frac - 1.0)
    t = (p - cfg.warmup_frac) / max(1e-12, 1.0 - cfg.warmup_frac)
    return cfg.final_lr_frac + (1 - cfg.final_lr_frac) * 0.5 * (1 + math.cos(math.pi * t))


def set_lr(optimizers: list[torch.optim.Optimizer], multiplier: float) -> float:
    """Apply the multiplier to every group; returns the first group's LR for logging."""
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = group["peak_lr"] * multiplier
    return optimizers[0].param_groups[0]["lr"]
