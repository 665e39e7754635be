"""The metric: validation bits-per-byte, overall and per domain.

    val_bpb = (sum over predicted target tokens of -ln p(target)) / ln 2 / (UTF-8 bytes of those targets)

It is tokenizer-independent (a byte model and a BPE model are compared on the bytes they
predict), computed on a fixed held-out split and on exactly the same tokens every time:
the first `tokens_per_domain` tokens of each domain's validation shard, cut into
contiguous windows (data.loader.iter_eval_windows). Targets that decode to zero bytes
(document separators, special tokens) are excluded from both sums. The overall figure
pools nats and bytes over all domains (a byte-weighted average, not a mean of domains).

`evaluate_bpb` runs in the training process: it gives the in-run curves (on the monitor
split) and a plain `pretrainlab train` its final figure. In a campaign that process runs
experiment code, which can change anything in it, so decisions never use these numbers:
the lab scores each run itself from the model's logits (runners/scoring.py) with data.windows.nll_sums,
the same sums in numpy.
"""

from __future__ import annotations

import hashlib
import math
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F

from .data import iter_eval_windows
from .data.windows import bits_per_byte


def module_sha256() -> str:
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()


@torch.no_grad()
def evaluate_bpb(model, corpus, seq_len: int, tokens_per_domain: int, batch_rows: int, device,
                 autocast=None, rank: int = 0, world_size: int = 1, split: str = "val", lockstep: bool = False) -> dict:
    """Return {"val_bpb": float, "domains": {name: bpb}, "tokens": int, "bytes": int}.

    Windows are dealt round-robin across ranks and the sums all-reduced, so N processes
    score the same tokens as one. `lockstep`: every rank makes as many forward passes as the
    rank with the most windows (an FSDP model gathers its parameters inside forward, with
    every rank); a rank out of windows runs one more and counts nothing from it.
    """
    was_training = model.training
    model.eval()
    token_bytes = torch.as_tensor(corpus.token_bytes(), dtype=torch.float64, device=device)
    domains = corpus.domains
    # sums[d] = (nats, bytes, tokens) in float64 so the totals are exact to ~1e-12
    sums = torch.zeros(len(domains), 3, dtype=torch.float64, device=device)
    for d, domain in enumerate(domains):
        every = list(iter_eval_windows(corpus, domain, seq_len, tokens_per_domain, split))
        windows = every[rank::world_size]
        num_batches = math.ceil(len(every[0::world_size] if lockstep else windows) / batch_rows)  # rank 0 has the most
        for i in range(0, num_batches * batch_rows, batch_rows):
            chunk = windows[i : i + batch_rows]
            if not chunk:  # lockstep: this rank is out of windows; a forward pass for the others' sake
                with autocast or nullcontext():
                    model(torch.as_tensor(every[0][0], dtype=torch.long)[None].to(device))
                continue
            x = torch.stack([torch.as_tensor(w[0], dtype=torch.long) for w in chunk]).to(device)
            y = torch.stack([torch.as_tensor(w[1], dtype=torch.long) for w in chunk]).to(device)
            with autocast or nullcontext():
                logits = model(x)
            assert logits.shape == (*y.shape, logits.size(-1)), f"model returned logits of shape {tuple(logits.shape)}"
            nats = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1), reduction="none").double()
            nbytes = token_bytes[y.reshape(-1)]
            counted = nbytes > 0
            sums[d, 0] += nats[counted].sum()
            sums[d, 1] += nbytes.sum()
            sums[d, 2] += counted.sum()
    if world_size > 1:
        torch.distributed.all_reduce(sums)
    model.train(was_training)
    sums = sums.cpu().tolist()
    total_nats = sum(s[0] for s in sums)
    total_bytes = int(sum(s[1] for s in sums))
    return {
        "val_bpb": bits_per_byte(total_nats, total_bytes),
        "domains": {dom: bits_per_byte(s[0], int(s[1])) for dom, s in zip(domains, sums)},
        "tokens": int(sum(s[2] for s in sums)),
        "bytes": total_bytes,
    }
