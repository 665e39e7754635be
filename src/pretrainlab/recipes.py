"""Named recipes: plain Python functions returning a `Recipe`.

A variant calls its base and changes fields. Add a recipe by writing a function and
registering it in RECIPES. `pretrainlab recipes` lists them with their sizes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .config import BudgetConfig, DataConfig, EvalConfig, ModelConfig, OptimConfig, Recipe, TrainConfig, apply_overrides
from .errors import UserError


def tiny_cpu() -> Recipe:
    """~0.9M params, byte-level; a clearly learned model in 60 s on 2 CPU cores."""
    return Recipe(
        name="tiny-cpu",
        # short context and a small batch: on 2 cores, more optimizer steps beat longer rows
        model=ModelConfig(seq_len=128, n_layer=4, n_embd=128, n_head=4),
        optim=OptimConfig(name="muon", lr=0.015, muon_lr=0.035, warmup_frac=0.02, warmdown_frac=0.4),
        data=DataConfig(corpus="builtin", tokenizer="byte"),
        train=TrainConfig(batch_tokens=2048, micro_batch_rows=16, eval_every=0, ckpt_every=0, log_every=1),
        budget=BudgetConfig(seconds=60.0),
        eval=EvalConfig(tokens_per_domain=32768, batch_rows=64),
    )


def small() -> Recipe:
    """~20M params, byte-level, 512 context: a desktop-CPU or any-GPU working size."""
    r = tiny_cpu()
    r.name = "small"
    r.model = ModelConfig(seq_len=512, n_layer=8, n_embd=448, n_head=7)
    r.optim.lr, r.optim.muon_lr = 6e-3, 0.02
    r.train = TrainConfig(batch_tokens=32768, micro_batch_rows=16, log_every=1, eval_every=250)
    r.budget = BudgetConfig(seconds=300.0)
    r.eval = EvalConfig(tokens_per_domain=65536, batch_rows=16)
    return r


def gpt2_124m() -> Recipe:
    """The GPT-2 small shape (12 x 768, 12 heads, 1024 context, ~50k BPE vocab)."""
    return Recipe(
        name="gpt2-124m",
        model=ModelConfig(seq_len=1024, n_layer=12, n_embd=768, n_head=12),
        optim=OptimConfig(name="muon", lr=3e-3, muon_lr=0.02, warmup_frac=0.01, warmdown_frac=0.4),
        data=DataConfig(corpus="builtin", tokenizer="bpe:50257"),
        train=TrainConfig(batch_tokens=524288, micro_batch_rows=32, log_every=10, eval_every=250, ckpt_every=1000),
        budget=BudgetConfig(seconds=600.0),
        eval=EvalConfig(tokens_per_domain=262144, batch_rows=32),
    )


def autoresearch_50m() -> Recipe:
    """~50M params for a 5-minute H100 budget: the karpathy/autoresearch reference shape
    (8 layers, 512 wide, 128-dim heads, value embeddings, 8192 BPE, 2048 context, 2^19 batch), with
    the residual stream in bf16 under autocast (faster per step at an equal val_bpb per second:
    docs/benchmarks.md)."""
    return Recipe(
        name="autoresearch-50m",
        model=ModelConfig(seq_len=2048, n_layer=8, n_embd=512, n_head=4, value_embeds=True, residual_dtype="bfloat16"),
        optim=OptimConfig(name="muon", lr=4e-3, muon_lr=0.04, warmup_frac=0.0, warmdown_frac=0.5),
        data=DataConfig(corpus="builtin", tokenizer="bpe:8192"),
        train=TrainConfig(batch_tokens=524288, micro_batch_rows=64, log_every=10, eval_every=0, compile="on"),
        budget=BudgetConfig(seconds=300.0),
        eval=EvalConfig(tokens_per_domain=262144, batch_rows=32),
    )


RECIPES = {
    "tiny-cpu": tiny_cpu,
    "small": small,
    "gpt2-124m": gpt2_124m,
    "autoresearch-50m": autoresearch_50m,
}


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}: choose one of {', '.join(RECIPES)} (see `pretrainlab recipes`)")
    return RECIPES[name]()


def estimate_params(recipe: Recipe) -> int:
    """Parameter count without building the model (vocab from the tokenizer spec)."""
    m = recipe.model
    padded = _padded_vocab(recipe)
    hidden = int(m.mlp_ratio * m.n_embd)
    per_layer = m.n_embd * m.n_embd * 2 + 2 * m.n_embd * _kv_dim(recipe) + 2 * m.n_embd * hidden
    num_ve = _num_value_embeds(m)
    return m.n_layer * per_layer + padded * m.n_embd + embedding_params(recipe) + 2 * num_ve  # 2: each value embedding's gates


def estimate_flops_per_token(recipe: Recipe) -> int:
    """Training FLOPs per token without building the model: GPT.flops_per_token's formula (6 x the non-embedding
    parameters + 12 x n_layer x n_embd x seq_len for attention), from estimate_params."""
    m = recipe.model
    return 6 * (estimate_params(recipe) - embedding_params(recipe)) + 12 * m.n_layer * m.n_embd * m.seq_len


def budget_tokens(recipe: Recipe) -> float:
    """The tokens a run of `recipe` trains under its token or FLOP budget (the tighter), 0 under a time budget alone."""
    b = recipe.budget
    limits = [b.tokens] if b.tokens else []
    if b.flops:
        limits.append(b.flops / estimate_flops_per_token(recipe))
    return min(limits) if limits else 0


def embedding_params(recipe: Recipe) -> int:
    """The lookup tables among the parameters (GPT.num_embedding_params): the token embedding
    and the value embeddings. Not the untied lm_head, a matmul that counts in the FLOPs:
    total - this = the non-embedding count behind model.flops_per_token."""
    m = recipe.model
    padded = _padded_vocab(recipe)
    num_ve = _num_value_embeds(m)
    return padded * m.n_embd + num_ve * padded * _kv_dim(recipe)


def _num_value_embeds(m) -> int:
    """Layers with a value embedding (model/gpt.py: has_value_embed, every other layer ending with the last), counted
    without a loop over the layers (a typo of model.n_layer=1e9 took 90 s to be refused)."""
    return (m.n_layer + 1) // 2 if m.value_embeds else 0


def _padded_vocab(recipe: Recipe) -> int:
    vocab = recipe.model.vocab_size or (256 if recipe.data.tokenizer == "byte" else int(recipe.data.tokenizer.split(":")[1]))
    return -(-vocab // 64) * 64


def _kv_dim(recipe: Recipe) -> int:
    m = recipe.model
    return (m.n_kv_head or m.n_head) * (m.n_embd // m.n_head)


def resolve_recipe(name: str, overrides: list[str] | None = None) -> Recipe:
    """A named recipe, or a recipe JSON file (e.g. another run's recipe.json), with
    `key=value` overrides applied; bad input -> UserError."""
    try:
        if name.endswith(".json"):
            try:
                base = Recipe.from_dict(json.loads(Path(name).read_text()))
            except (OSError, json.JSONDecodeError) as e:
                raise UserError(f"--recipe {name}: cannot read it as a recipe JSON ({e}); pass a recipe name or a recipe.json") from None
        else:
            base = get_recipe(name)
        return apply_overrides(base, overrides or [])
    except ValueError as e:
        raise UserError(f"{name}: {e}" if name.endswith(".json") else str(e)) from None


def check_fits(recipe: Recipe) -> None:
    """UserError for a model whose fp32 weights alone exceed this machine's memory, before anything is allocated
    (model.n_layer=1e12 hung with no output, or crashed every run of a campaign): a typo, not a run. FSDP shards the
    weights across processes and machines, so it is not checked."""
    if recipe.train.parallel == "fsdp":
        return
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not a POSIX system that says
        return
    params = estimate_params(recipe)
    if params * 4 > memory:
        raise UserError(f"the model has {params:.3g} parameters ({params * 4 / 2**30:,.0f} GiB of fp32 weights), more than this "
                        f"machine's {memory / 2**30:,.0f} GiB of memory: check model.n_layer, model.n_embd and model.mlp_ratio")
