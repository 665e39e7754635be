"""Model shapes, switches, initialisation and optimizers."""

import math

import pytest
import torch

from pretrainlab.config import ModelConfig, OptimConfig
from pretrainlab.model import GPT
from pretrainlab.recipes import RECIPES, estimate_params
from pretrainlab.train.optim import build_optimizers, lr_multiplier, zeropower_via_newtonschulz5


def small_cfg(**kw):
    base = dict(vocab_size=256, seq_len=32, n_layer=2, n_embd=64, n_head=4)
    base.update(kw)
    return ModelConfig(**base)


@pytest.mark.parametrize("kw", [{}, {"n_kv_head": 2}, {"n_kv_head": 1}, {"value_embeds": True}, {"qk_norm": False, "logit_softcap": 0.0}])
def test_shapes_and_initial_loss(kw):
    torch.manual_seed(0)
    model = GPT(small_cfg(**kw))
    x = torch.randint(0, 256, (3, 32))
    logits = model(x)
    assert logits.shape == (3, 32, 256) and logits.dtype == torch.float32
    # zero-init output projections and a tiny head: the model starts near uniform
    assert model(x, x).item() == pytest.approx(math.log(256), abs=0.05)


def test_softcap_bounds_logits():
    model = GPT(small_cfg(logit_softcap=5.0))
    with torch.no_grad():
        model.lm_head.weight.mul_(1e4)
    assert model(torch.randint(0, 256, (1, 8))).abs().max() <= 5.0


def test_padded_vocab_is_sliced():
    model = GPT(small_cfg(vocab_size=300))
    assert model.padded_vocab == 320 and model.wte.weight.shape[0] == 320
    assert model(torch.randint(0, 300, (1, 8))).shape[-1] == 300


def test_causality():
    torch.manual_seed(0)
    model = GPT(small_cfg())
    for p in model.parameters():  # leave zero-init: perturb so every layer matters
        torch.nn.init.normal_(p, std=0.1)
    x = torch.randint(0, 256, (1, 16))
    y = x.clone()
    y[0, 10] = (y[0, 10] + 1) % 256
    a, b = model(x), model(y)
    assert torch.allclose(a[0, :10], b[0, :10])
    assert not torch.allclose(a[0, 10:], b[0, 10:])


def test_gqa_has_fewer_kv_params():
    assert GPT(small_cfg(n_kv_head=1)).num_params() < GPT(small_cfg()).num_params()


@pytest.mark.parametrize("name", list(RECIPES))
def test_every_recipe_builds(name):
    recipe = RECIPES[name]()
    cfg = recipe.model
    vocab = 256 if recipe.data.tokenizer == "byte" else int(recipe.data.tokenizer.split(":")[1])
    cfg.vocab_size = vocab
    with torch.device("meta"):  # no memory for the big ones
        model = GPT(cfg)
    assert model.num_params() == estimate_params(recipe)


def test_recipe_sizes_match_their_names():
    sizes = {n: estimate_params(fn()) for n, fn in RECIPES.items()}
    assert 0.7e6 < sizes["tiny-cpu"] < 1.3e6
    assert 15e6 < sizes["small"] < 25e6
    assert 45e6 < sizes["autoresearch-50m"] < 55e6
    # GPT-2 small shape: 12 x 768, 12 heads, 1024 context (untied head adds 38.6M to its 124M)
    r = RECIPES["gpt2-124m"]()
    assert (r.model.n_layer, r.model.n_embd, r.model.n_head, r.model.seq_len) == (12, 768, 12, 1024)


def test_muon_and_adamw_param_groups_cover_every_param():
    model = GPT(small_cfg(value_embeds=True))
    for name in ("muon", "adamw"):
        opts = build_optimizers(model, OptimConfig(name=name))
        seen = [id(p) for o in opts for g in o.param_groups for p in g["params"]]
        assert sorted(seen) == sorted(id(p) for p in model.parameters())
        assert len(seen) == len(set(seen))
    muon = build_optimizers(model, OptimConfig(name="muon"))[1]
    assert all(p.ndim == 2 for g in muon.param_groups for p in g["params"])


def test_newton_schulz_orthogonalises():
    torch.manual_seed(0)
    g = torch.randn(64, 32)
    s = torch.linalg.svdvals(zeropower_via_newtonschulz5(g))
    assert s.min() > 0.5 and s.max() < 1.3  # singular values pushed towards 1


def test_schedules():
    wsd = OptimConfig(schedule="wsd", warmup_frac=0.1, warmdown_frac=0.5, final_lr_frac=0.0)
    assert lr_multiplier(0.05, wsd) == pytest.approx(0.5)
    assert lr_multiplier(0.3, wsd) == 1.0
    assert lr_multiplier(0.75, wsd) == pytest.approx(0.5)
    assert lr_multiplier(1.0, wsd) == pytest.approx(0.0)
    cos = OptimConfig(schedule="cosine", warmup_frac=0.0, final_lr_frac=0.1)
    assert lr_multiplier(0.0, cos) == pytest.approx(1.0)
    assert lr_multiplier(0.5, cos) == pytest.approx(0.55)
    assert lr_multiplier(1.0, cos) == pytest.approx(0.1)


def test_a_few_steps_learn():
    torch.manual_seed(0)
    model = GPT(small_cfg())
    opts = build_optimizers(model, OptimConfig(lr=1e-2, muon_lr=0.05))
    x = torch.randint(0, 16, (8, 33))  # a 16-symbol alphabet: learnable within a few steps
    first = None
    for _ in range(20):
        loss = model(x[:, :-1], x[:, 1:])
        loss.backward()
        for o in opts:
            o.step()
            o.zero_grad()
        first = first or loss.item()
    assert loss.item() < first - 1.0


def test_attention_kernel_choice_keys_the_compile_caches():
    """train.attention: the kernel is fixed when torch.compile traces the model, and its on-disk
    caches do not key on it. Inside the context the cache key carries the kernel, so a model
    compiled earlier with another kernel is not handed back; outside, everything is as before."""
    from torch.nn.attention import SDPBackend

    from pretrainlab.config import TrainConfig
    from pretrainlab.model.gpt import attention_kernel_used, attention_kernels, auto_attention_kernel

    before = torch.compiler.config.cache_key_tag
    order_before = torch._C._get_sdp_priority_order()
    with attention_kernels("math"):
        assert torch.compiler.config.cache_key_tag.endswith("sdpa=math")
        assert torch._C._get_sdp_priority_order()[0] == int(SDPBackend.MATH)
        q = k = v = torch.randn(1, 2, 8, 4)
        assert torch.allclose(torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True),
                              torch.softmax((q @ k.mT / 2).masked_fill(torch.ones(8, 8).triu(1).bool(), float("-inf")), -1) @ v, atol=1e-6)
    with attention_kernels("cudnn"):
        assert torch.compiler.config.cache_key_tag.endswith("sdpa=cudnn")
    assert torch.compiler.config.cache_key_tag == before and torch._C._get_sdp_priority_order() == order_before
    if not torch.cuda.is_available():  # auto: torch's own order off a Hopper GPU
        assert auto_attention_kernel() is None
        with attention_kernels("auto"):
            assert torch.compiler.config.cache_key_tag == before
    # what the run's provenance records
    assert attention_kernel_used("auto", "cpu") == "cpu" and attention_kernel_used("flash", "cuda") == "flash"
    assert attention_kernel_used("auto", "cuda") == (auto_attention_kernel() or "torch's order")
    with pytest.raises(ValueError, match="train.attention must be auto, flash, cudnn, efficient or math, got 'fa3'"):
        TrainConfig(attention="fa3")


def test_the_eager_cpu_backwards_match_autograds_own(monkeypatch):
    """Eager fp32 training on CPU runs RMSNorm and ReLU^2 with hand-written backwards
    (model/gpt.py): the same loss and gradients as autograd's backward of the plain ops."""
    from pretrainlab.model import gpt

    cfg = ModelConfig(n_layer=2, n_head=2, n_embd=64, seq_len=32, vocab_size=96, value_embeds=True)
    torch.manual_seed(0)
    model = GPT(cfg)
    for p in model.parameters():  # the zero-initialised output projections would leave most gradients zero
        torch.nn.init.normal_(p, std=0.05)
    x, y = torch.randint(0, 96, (4, 32)), torch.randint(0, 96, (4, 32))

    def loss_and_grads():
        model.zero_grad(set_to_none=True)
        loss = model(x, y)
        loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}

    calls = []
    real = gpt._eager_cpu_training
    monkeypatch.setattr(gpt, "_eager_cpu_training", lambda t: calls.append(real(t)) or real(t))
    loss, grads = loss_and_grads()
    assert calls and all(calls)  # the hand-written path ran
    monkeypatch.setattr(gpt, "_eager_cpu_training", lambda t: False)
    plain_loss, plain_grads = loss_and_grads()
    assert loss == pytest.approx(plain_loss, rel=1e-6)
    for name, g in grads.items():
        torch.testing.assert_close(g, plain_grads[name], rtol=1e-4, atol=1e-6, msg=name)
    with torch.no_grad():  # without grad (evaluation, the lab's scoring) the plain forward runs
        calls.clear()
        monkeypatch.setattr(gpt, "_eager_cpu_training", lambda t: calls.append(real(t)) or real(t))
        model(x)
        assert calls and not any(calls)


def test_residual_dtype_under_autocast():
    """model.residual_dtype=bfloat16 keeps each block's output (the residual stream) in bf16
    under bf16 autocast; float32 leaves autocast's own fp32 residual; in fp32 training it does
    nothing; the loss and the parameters' gradients stay fp32 and finite."""
    idx = torch.randint(0, 256, (2, 32))
    seen = {}
    for residual in ("float32", "bfloat16"):
        torch.manual_seed(0)
        model = GPT(ModelConfig(vocab_size=256, seq_len=32, n_layer=2, n_embd=64, n_head=2, residual_dtype=residual))
        dtypes = []
        model.blocks[-1].register_forward_hook(lambda mod, inp, out: dtypes.append(out.dtype))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(idx, idx)
        loss.backward()
        model(idx, idx)  # no autocast
        seen[residual] = dtypes
        assert torch.isfinite(loss) and loss.dtype == torch.float32
        assert all(p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        assert model.wte.weight.grad.dtype == torch.float32 and torch.isfinite(model.wte.weight.grad).all()
    assert seen == {"float32": [torch.float32, torch.float32], "bfloat16": [torch.bfloat16, torch.float32]}
    with pytest.raises(ValueError, match="residual_dtype must be float32 or bfloat16"):
        ModelConfig(residual_dtype="fp16")


def test_the_fused_rope_and_qk_norm_backward_is_the_exact_gradient():
    """_RopeNorm (eager CPU training's RMSNorm(RoPE(x)) for queries and keys) against finite
    differences in float64, and its forward against the plain ops."""
    from pretrainlab.model.gpt import _RopeNorm, apply_rope

    torch.manual_seed(0)
    x = torch.randn(2, 5, 3, 8, dtype=torch.float64, requires_grad=True)
    angles = torch.rand(1, 5, 1, 4, dtype=torch.float64) * 6
    cos, sin = angles.cos(), angles.sin()
    assert torch.autograd.gradcheck(lambda t: _RopeNorm.apply(t, cos, sin), (x,))
    plain = torch.nn.functional.rms_norm(apply_rope(x, cos, sin), (8,), eps=torch.finfo(torch.float64).eps)
    torch.testing.assert_close(_RopeNorm.apply(x, cos, sin), plain)


def test_trainable_rope_tables_get_their_gradient_in_eager_cpu_training():
    """A model change that makes the RoPE angles trainable must train them on CPU too: the fused
    Function (which returns no gradient for the tables) is not used then."""
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=64, seq_len=16, n_layer=1, n_embd=32, n_head=2))
    model.cos.requires_grad_(True)
    model.sin.requires_grad_(True)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.1)
    idx = torch.randint(0, 64, (2, 16))
    model(idx, idx).backward()
    assert model.cos.grad is not None and model.cos.grad.abs().sum() > 0 and model.sin.grad.abs().sum() > 0


def test_residual_dtype_bfloat16_leaves_fp16_autocast_alone():
    model = GPT(ModelConfig(vocab_size=64, seq_len=16, n_layer=1, n_embd=32, n_head=2, residual_dtype="bfloat16"))
    seen = []
    model.blocks[0].register_forward_hook(lambda mod, inp, out: seen.append(out.dtype))
    with torch.autocast("cpu", dtype=torch.float16):
        model(torch.randint(0, 64, (2, 16)))
    assert seen == [torch.float32]
