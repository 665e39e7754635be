"""Muon's batched Newton-Schulz against one matrix at a time."""

import torch

from pretrainlab.config import ModelConfig
from pretrainlab.model import GPT
from pretrainlab.train.optim import Muon, zeropower_via_newtonschulz5


def reference_muon_step(params, states, lr=0.035, momentum=0.95):
    """Muon as the lab ran it before the batching: each matrix orthogonalised alone."""
    with torch.no_grad():
        for p in params:
            buf = states.setdefault(p, torch.zeros_like(p))
            buf.lerp_(p.grad, 1 - momentum)
            update = zeropower_via_newtonschulz5(p.grad.lerp(buf, momentum))
            p.add_(update, alpha=-lr * max(1.0, p.size(-2) / p.size(-1)) ** 0.5)


def test_batched_newton_schulz_leaves_bit_identical_parameters():
    """Square, wide and tall matrices (attention, MLP out, MLP in), after 3 steps."""
    cfg = ModelConfig(vocab_size=64, seq_len=16, n_layer=2, n_embd=32, n_head=2)
    models = []
    for _ in range(2):
        torch.manual_seed(0)
        models.append(GPT(cfg))
    hidden = [[p for n, p in m.named_parameters() if n.startswith("blocks.") and p.ndim == 2] for m in models]
    assert len({tuple(p.shape) for p in hidden[0]}) == 3
    muon, states = Muon(hidden[0], lr=0.035, momentum=0.95), {}
    x = torch.randint(0, 64, (4, 17))
    for _ in range(3):
        for m in models:
            m.zero_grad()
            m(x[:, :-1], x[:, 1:]).backward()
        muon.step()
        reference_muon_step(hidden[1], states)
    for a, b in zip(*hidden):
        assert torch.equal(a, b)
