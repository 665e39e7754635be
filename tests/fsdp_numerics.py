"""Run under torchrun (2 processes, gloo) by tests/test_fsdp.py: the trainer's arithmetic on
FSDP2-sharded parameters against the same arithmetic on a whole, unsharded copy.

    torchrun --standalone --nproc_per_node 2 tests/fsdp_numerics.py

- grad norm: each process's local-shard norms, squared and all-reduced (trainer step 6c),
  equal the unsharded gradients' norm and torch.nn.utils.clip_grad_norm_'s on the DTensors;
  clipping the local shards equals clip_grad_norm_'s clipping;
- Muon: one step on sharded parameters (whole-matrix Newton-Schulz, then the local rows)
  equals one step on the unsharded copy;
- matrices whose rows do not split evenly (5 rows over 2 processes) included.
Prints "ok" on rank 0 when every check passes.
"""

import copy
import os
import sys

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor

from pretrainlab.train import parallel
from pretrainlab.train.optim import Muon


def full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if isinstance(t, DTensor) else t


def main():
    dist.init_process_group("gloo")
    torch.manual_seed(0)
    whole = nn.Sequential(nn.Linear(8, 6, bias=False), nn.ReLU(), nn.Linear(6, 5, bias=False), nn.ReLU(), nn.Linear(5, 3, bias=False))
    sharded = copy.deepcopy(whole)
    sharded.blocks = [sharded[0], sharded[2]]  # shard_model's units: "blocks", then the root
    parallel.shard_model(sharded, torch.device("cpu"), bf16=False)
    assert all(isinstance(p, DTensor) for p in sharded.parameters())
    assert sharded[2].weight.to_local().shape[0] == (3, 2)[dist.get_rank()]  # 5 rows: uneven shards
    x = torch.randn(16, 8)  # the same batch on both processes: the averaged gradient is the whole batch's
    for model in (whole, sharded):
        model(x).square().sum().backward()

    # grad norm the trainer's way (local shards, squared norms all-reduced) and clip_grad_norm_'s way
    local = parallel.local([p.grad for p in sharded.parameters()])
    sq = torch.stack(torch._foreach_norm(local)) ** 2
    dist.all_reduce(sq)
    want = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in whole.parameters()]))
    clip_to = float(want) / 3  # so clipping bites
    unclipped = [t.clone() for t in local]
    torch_norm = torch.nn.utils.clip_grad_norm_(sharded.parameters(), clip_to)
    torch_clipped = [full(p.grad) for p in sharded.parameters()]
    torch._foreach_copy_(local, unclipped)
    assert torch.allclose(sq.sum().sqrt(), want, rtol=1e-5), (sq.sum().sqrt(), want)
    assert torch.allclose(full(torch_norm), want, rtol=1e-5), (torch_norm, want)
    torch._foreach_mul_(local, (clip_to / (sq.sum().sqrt() + 1e-6)).clamp(max=1.0))
    for p, theirs in zip(sharded.parameters(), torch_clipped):
        assert torch.allclose(full(p.grad), theirs, rtol=1e-5, atol=1e-7)
    for p in whole.parameters():
        p.grad.mul_(clip_to / (float(want) + 1e-6))

    # one Muon step (Nesterov momentum, Newton-Schulz) each way
    for model in (whole, sharded):
        Muon(list(model.parameters()), lr=0.05, weight_decay=0.1).step()
    for a, b in zip(whole.parameters(), sharded.parameters()):
        assert torch.allclose(a, full(b), rtol=1e-5, atol=1e-6), (a, full(b))
    assert parallel.all_finite(list(sharded.parameters()))
    if dist.get_rank() == 0:
        print("ok")
    dist.barrier()  # neither rank tears its connections down while the other is still in the last collective
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
    # out without the interpreter's teardown, as the lab's trainers leave: gloo's threads met in static destructors once
    # aborted a rank that had passed every check ("terminate called without an active exception", SIGABRT)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
