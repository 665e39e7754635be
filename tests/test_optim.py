"""Muon's batched Newton-Schulz against one matrix at a time; the lab's AdamW against torch's;
an eager CPU trainer process never imports torch._dynamo."""

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import tiny_overrides

from pretrainlab.config import ModelConfig
from pretrainlab.model import GPT
from pretrainlab.train.optim import AdamW, Muon, zeropower_via_newtonschulz5


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


def _adamw_steps(opt_cls, steps=5, **kw):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=64, seq_len=16, n_layer=2, n_embd=32, n_head=2)
    model = GPT(cfg)
    matrices = [p for p in model.parameters() if p.ndim == 2]
    others = [p for p in model.parameters() if p.ndim != 2]
    opt = opt_cls([dict(params=matrices, weight_decay=0.1), dict(params=others, weight_decay=0.0)], lr=3e-3,
                  betas=(0.8, 0.95), eps=1e-10, fused=False, **kw)
    x = torch.randint(0, 64, (4, 17))
    for step in range(steps):
        for group in opt.param_groups:  # a schedule changes the LR between steps
            group["lr"] = 3e-3 * (1 - step / steps)
        model(x[:, :-1], x[:, 1:]).backward()
        opt.step()
        opt.zero_grad(set_to_none=step % 2 == 0)
    return model, opt


@pytest.mark.parametrize("kw", [{}, {"maximize": True}])
def test_adamw_on_cpu_is_torchs_bit_for_bit_and_shares_its_checkpoints(kw):
    """Weight decay on one group, an LR that changes every step, gradients zeroed both ways;
    maximize goes through torch's own step. Each loads the other's state dict."""
    ours, opt = _adamw_steps(AdamW, **kw)
    theirs, ref = _adamw_steps(torch.optim.AdamW, **kw)
    for a, b in zip(ours.parameters(), theirs.parameters()):
        assert torch.equal(a, b)
    sd, ref_sd = opt.state_dict(), ref.state_dict()
    assert sd["param_groups"] == ref_sd["param_groups"]
    for i, st in ref_sd["state"].items():
        assert st.keys() == sd["state"][i].keys() and all(torch.equal(st[k], sd["state"][i][k]) for k in st)
    ref.load_state_dict(sd)
    opt.load_state_dict(ref_sd)
    assert all(torch.equal(opt.state[p]["exp_avg"], ref.state[q]["exp_avg"]) for p, q in zip(ours.parameters(), theirs.parameters()))


def test_an_eager_cpu_run_never_imports_torch_dynamo(tmp_path, corpus_dir):
    """torch.optim's wrappers import torch._dynamo (about a second of CPU) on first use; the
    lab's optimizers build, step, checkpoint and reload without it. A whole single-process
    training run imports neither dynamo nor torch.distributed.fsdp (another second, with sympy)."""
    code = """
import sys, torch
from pretrainlab.config import ModelConfig, OptimConfig
from pretrainlab.model import GPT
from pretrainlab.train.optim import build_optimizers
torch.manual_seed(0)
model = GPT(ModelConfig(vocab_size=64, seq_len=16, n_layer=2, n_embd=32, n_head=2))
for name in ("adamw", "muon"):
    opts = build_optimizers(model, OptimConfig(name=name))
    x = torch.randint(0, 64, (4, 17))
    model(x[:, :-1], x[:, 1:]).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    for o in opts:
        o.step()
        o.zero_grad(set_to_none=False)
        o.load_state_dict(o.state_dict())
print("torch._dynamo" in sys.modules)
from pretrainlab import api
api.train_run("tiny-cpu", sys.argv[2:], sys.argv[1], echo=False)
print("torch._dynamo" in sys.modules, "torch.distributed.fsdp" in sys.modules)
"""
    sets = tiny_overrides(corpus_dir, **{"budget.tokens": 4096})
    res = subprocess.run([sys.executable, "-c", code, str(tmp_path / "run"), *sets], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PRETRAINLAB_NO_LEDGER": "1"})
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["False", "False", "False"]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "ok"
