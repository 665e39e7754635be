"""How the model is spread over processes (`train.parallel`).

- 'ddp': every process holds the whole model and its optimizer state;
  DistributedDataParallel all-reduces the gradients (the trainer wraps it).
- 'fsdp': FSDP2 (`fully_shard`). Each transformer block, then the rest of the model
  (embeddings, head), is a unit whose parameters, gradients and optimizer state are split by
  rows across the processes (DTensors placed Shard(0)): a unit's parameters are all-gathered
  for its forward and again for its backward and freed after each, and its gradients are
  reduce-scattered. For models whose parameters, gradients and optimizer state do not fit
  one device. On CUDA with bf16 the gathered parameters are bf16 and gradients are reduced in
  fp32 (MixedPrecisionPolicy); elsewhere parameters stay fp32.

The helpers below reduce a DTensor to this process's shard, so the trainer computes grad
norms, clips and checks finiteness with one code path for both modes.
"""

from __future__ import annotations

import sys
from contextlib import nullcontext

import torch
import torch.distributed as dist
from torch import nn



def is_dtensor(t) -> bool:
    """Whether `t` is a DTensor (an FSDP-sharded parameter or its gradient). Without importing
    torch.distributed.tensor (0.6 s at start-up): no DTensor exists before something imported it."""
    mod = sys.modules.get("torch.distributed.tensor")
    return mod is not None and isinstance(t, mod.DTensor)

def shard_model(model: nn.Module, device: torch.device, bf16: bool) -> None:
    """Apply FSDP2 in place: each block is its own unit, then the root takes what is left
    (embeddings, value embeddings, head). Parameter names do not change, so checkpoints and
    the final model.pt use the plain model's keys."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else MixedPrecisionPolicy()
    for block in model.blocks:
        fully_shard(block, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)  # the root's unit stays gathered from forward to backward (FSDP2's default)


def is_sharded(model: nn.Module) -> bool:
    """Without importing torch.distributed.fsdp (1.1 s at start-up, with sympy): no module is
    sharded before shard_model imported it."""
    mod = sys.modules.get("torch.distributed.fsdp")
    return mod is not None and isinstance(model, mod.FSDPModule)


def gradient_sync(model: nn.Module, sync: bool):
    """Skip the gradient reduction on all but the last micro-batch of a step: DDP's
    no_sync(), FSDP2's set_requires_gradient_sync (which keeps the micro-batches' unsharded
    gradients until the last one, then reduce-scatters their sum)."""
    if isinstance(model, nn.parallel.DistributedDataParallel):
        return nullcontext() if sync else model.no_sync()
    if is_sharded(model):
        model.set_requires_gradient_sync(sync)
    return nullcontext()


def local(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each tensor's part held by this process: the local shard of a DTensor (sharing its
    storage, so in-place ops change the DTensor), a plain tensor as it is."""
    return [t.to_local() if is_dtensor(t) else t for t in tensors]


def all_finite(params: list[torch.Tensor]) -> bool:
    """True when every parameter is finite on every process (sharded parameters are checked
    shard by shard, and the processes agree, so all of them take the same branch)."""
    shards = local(params)
    ok = torch.tensor([all(bool(torch.isfinite(t).all()) for t in shards)], dtype=torch.int32, device=shards[0].device)  # NCCL: on the GPU
    if any(is_dtensor(p) for p in params) and dist.get_world_size() > 1:
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    return bool(ok.item())


def full_state_dict(model: nn.Module) -> dict:
    """The whole model's state dict on CPU with plain tensors, as a single process would
    save it. Sharded: gathered from every process (all must call), returned on rank 0 only."""
    if not is_sharded(model):
        return model.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
