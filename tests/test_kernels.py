"""model/kernels.py: the hand-written Triton kernels of the CUDA step.

Their math runs here on CPU tensors through Triton's interpreter (TRITON_INTERPRET=1), from the
Triton that `make setup` keeps off the venv's path (.venv/triton-interpret), in a subprocess of its
own: against the plain ops, forward and backward, in fp32 and bf16, with SDPA's transposed gradient
layout, padded vocabularies, no cap, targets outside the vocabulary, and the whole model's loss and
every parameter's gradient. Their speed and the compiled path are measured on a GPU
(bench/gpu_probe.py; docs/benchmarks.md, GPU)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from pretrainlab.config import ModelConfig, TrainConfig
from pretrainlab.model import GPT, kernels

TRITON_DIR = Path(os.environ.get("PRETRAINLAB_TRITON_INTERPRET", Path(sys.prefix) / "triton-interpret"))
SRC = Path(__file__).resolve().parents[1] / "src"


def test_cpu_runs_the_plain_ops():
    x = torch.randn(2, 8, 2, 16)
    cos = torch.ones(1, 8, 1, 8)
    assert kernels.triton is None  # a CPU process never imports Triton
    assert not kernels.available(x, cos, cos) and not kernels.ce_available(x.view(-1, 16))
    assert kernels.used("auto", "cpu") == "torch" and kernels.used("torch", "cuda") == "torch"
    m = GPT(ModelConfig(seq_len=8, n_layer=1, n_embd=32, n_head=2, vocab_size=64))
    m.use_kernels("torch")
    assert not m.fused_loss and not m.blocks[0].attn.fused
    m.use_kernels("auto")
    assert m.fused_loss and m.blocks[0].attn.fused


def test_train_kernels_setting_is_checked():
    assert TrainConfig(kernels="torch").kernels == "torch"
    with pytest.raises(ValueError, match="train.kernels must be auto or torch"):
        TrainConfig(kernels="triton")


CHECKS = textwrap.dedent(
    """
    import torch, torch.nn.functional as F
    from pretrainlab.config import ModelConfig
    from pretrainlab.model import GPT, kernels
    from pretrainlab.model.gpt import apply_rope
    assert kernels.triton is not None, "Triton did not import"
    torch.manual_seed(0)

    # QK-norm + RoPE: [B, T, H, D], the gradient in SDPA's [B, H, T, D] layout (a transposed view)
    B, T, H, D = 2, 37, 3, 32  # T * H not a multiple of the rows a program takes
    ang = torch.rand(T, D // 2) * 6
    cos, sin = ang.cos()[None, :, None], ang.sin()[None, :, None]
    layouts = (  # x as the model gives it (fp32 and bf16), a column slice of a wider tensor (a fused qkv), a transposed view
        (torch.float32, 1e-5, (B, T, H, D), lambda t: t), (torch.bfloat16, 0.04, (B, T, H, D), lambda t: t),
        (torch.float32, 1e-5, (B, T, H, 3 * D), lambda t: t[..., D:2 * D]), (torch.float32, 1e-5, (B, H, T, D), lambda t: t.transpose(1, 2)))
    for dt, tol, shape, view in layouts:
        base = (torch.randn(shape) * 3).to(dt).requires_grad_()
        x = view(base)
        g = torch.randn(B, H, T, D).to(dt).transpose(1, 2)
        y = kernels.rope_norm(x, cos, sin)
        y.backward(g)
        xr = x.detach().float().requires_grad_()
        yr = F.rms_norm(apply_rope(xr, cos, sin), (D,), eps=torch.finfo(torch.float32).eps)
        yr.backward(g.float())
        assert y.dtype == dt and y.shape == x.shape
        dx = view(base.grad)
        dy, dg = (y.float() - yr).abs().max().item(), (dx.float() - xr.grad).abs().max().item()
        outside = base.grad.clone()
        view(outside).zero_()
        assert not outside.any(), "a gradient landed outside x"
        assert dy < tol and dg < tol, ("rope_norm", dt, dy, dg)

    # soft-capped cross-entropy: padded vocabularies (one block and several), no cap, bf16 logits
    for dt, tol in ((torch.float32, 1e-4), (torch.bfloat16, 5e-3)):
        for cap, V, Vp in ((15.0, 300, 320), (None, 256, 256), (15.0, 2500, 2560), (30.0, 1024, 1024)):
            z = (torch.randn(7, Vp) * 20).to(dt).requires_grad_()
            y = torch.randint(0, V, (7,))
            dl = torch.rand(7)
            loss = kernels.softcap_cross_entropy(z, y, V, cap)
            loss.backward(dl)
            zr = z.detach().float().requires_grad_()
            lg = zr[:, :V] if not cap else cap * torch.tanh(zr[:, :V] / cap)
            ref = F.cross_entropy(lg, y, reduction="none")
            ref.backward(dl)
            assert loss.dtype == torch.float32 and loss.shape == (7,)
            dlo, dgr = (loss - ref).abs().max().item(), (z.grad.float() - zr.grad).abs().max().item()
            assert dlo < 1e-4 * ref.abs().max().item() and dgr < tol, ("softcap_ce", dt, cap, V, dlo, dgr)
            assert not z.grad[:, V:].any(), "padding columns got a gradient"
    bad = kernels.softcap_cross_entropy(torch.randn(3, 320), torch.tensor([5, 300, -1]), 300, 15.0)
    assert torch.isfinite(bad[0]) and bad[1:].isnan().all(), bad  # outside the vocabulary: NaN, never a stray read

    # the whole model: loss and every gradient, the kernels against the plain ops (on CPU tensors here)
    kernels.available = lambda x, cos, sin: True
    kernels.ce_available = lambda z: True
    for cfg in (ModelConfig(seq_len=32, n_layer=2, n_embd=64, n_head=4, vocab_size=200),
                ModelConfig(seq_len=32, n_layer=2, n_embd=64, n_head=4, n_kv_head=2, vocab_size=256, value_embeds=True)):
        torch.manual_seed(0)
        m = GPT(cfg)
        with torch.no_grad():
            for b in m.blocks:
                b.attn.c_proj.weight.normal_(0, 0.05)
                b.mlp.c_proj.weight.normal_(0, 0.05)
        x, y = torch.randint(0, cfg.vocab_size, (3, 32)), torch.randint(0, cfg.vocab_size, (3, 32))
        out = {}
        for name in ("auto", "torch"):
            m.use_kernels(name)
            m.zero_grad()
            rows = m(x, y, per_row=True)
            rows.mean().backward()
            out[name] = rows.detach(), {n: p.grad.clone() for n, p in m.named_parameters()}
        (ra, ga), (rt, gt) = out["auto"], out["torch"]
        assert (ra - rt).abs().max() < 1e-5, (ra, rt)
        worst = max((ga[n] - gt[n]).abs().max().item() for n in ga)
        assert worst < 1e-5, worst
    print("kernels ok")
    """
)


@pytest.mark.skipif(not (TRITON_DIR / "triton").is_dir(),
                    reason=f"no Triton for its interpreter at {TRITON_DIR} (`make setup` installs it there)")
def test_kernels_match_the_plain_ops_under_the_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": os.pathsep.join([str(TRITON_DIR), str(SRC)])}
    r = subprocess.run([sys.executable, "-c", CHECKS], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "kernels ok" in r.stdout, r.stdout[-3000:] + r.stderr[-6000:]
