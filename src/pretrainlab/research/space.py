"""Search spaces: which recipe fields a strategy may change, and over what range.

A space is a list of `Param`s over dotted recipe keys. The default space is relative to
the base recipe (learning rates x1/4..x4 on a log scale, shape and schedule around their
values), so it fits any recipe. A proposal from any strategy — optuna, random, an LLM —
is validated against the recipe's own config checks before it is run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ..config import Recipe, apply_overrides


@dataclass(frozen=True)
class Param:
    key: str  # dotted recipe key, e.g. "optim.lr"
    kind: str  # "float" | "int" | "categorical"
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple = field(default=())

    def __post_init__(self):
        assert self.kind in ("float", "int", "categorical"), self.kind
        if self.kind == "categorical":
            assert self.choices, f"{self.key}: categorical needs choices"
        else:
            assert self.low is not None and self.high is not None and self.low <= self.high, f"{self.key}: bad range"


def default_space(base: Recipe) -> list[Param]:
    """Around the base recipe: LRs, schedule, depth/width at fixed head size, batch size."""
    m, o, t = base.model, base.optim, base.train
    head_dim = m.n_embd // m.n_head
    widths = tuple(sorted({max(head_dim, m.n_embd // 2 // head_dim * head_dim), m.n_embd, m.n_embd * 3 // 2 // head_dim * head_dim}))
    batch_choices = tuple(sorted({max(m.seq_len * t.micro_batch_rows, t.batch_tokens // 2), t.batch_tokens, t.batch_tokens * 2}))
    return [
        Param("optim.lr", "float", o.lr / 4, o.lr * 4, log=True),
        Param("optim.muon_lr", "float", o.muon_lr / 4, o.muon_lr * 4, log=True),
        Param("optim.warmdown_frac", "float", 0.1, 0.8),
        Param("optim.warmup_frac", "float", 0.0, 0.1),
        Param("optim.weight_decay", "float", 0.0, 0.1),
        Param("model.n_layer", "int", max(1, m.n_layer // 2), m.n_layer * 2),
        Param("model.n_embd", "categorical", choices=widths),
        Param("train.batch_tokens", "categorical", choices=batch_choices),
    ]


def to_overrides(values: dict[str, Any]) -> list[str]:
    return [f"{k}={v}" for k, v in values.items()]


def apply(base: Recipe, values: dict[str, Any]) -> Recipe:
    """The base recipe with `values` set; keeps n_head consistent when width changes.
    Raises ValueError (from the config checks) for an impossible combination."""
    values = dict(values)
    if "model.n_embd" in values and "model.n_head" not in values:
        head_dim = base.model.n_embd // base.model.n_head
        values["model.n_head"] = max(1, int(values["model.n_embd"]) // head_dim)
    rows_per_micro = base.train.micro_batch_rows * base.model.seq_len
    if "train.batch_tokens" in values and int(values["train.batch_tokens"]) % rows_per_micro:
        values["train.micro_batch_rows"] = math.gcd(int(values["train.batch_tokens"]) // base.model.seq_len, base.train.micro_batch_rows)
    return apply_overrides(base, to_overrides(values))


def recipe_diff(base: Recipe, other: Recipe) -> dict[str, tuple[Any, Any]]:
    """{dotted key: (base value, other value)} for every field that differs (name excluded)."""
    from ..ledger.compare import recipe_diff as diff_many

    return {k: tuple(v) for k, v in diff_many([base.to_dict(), other.to_dict()]).items() if k != "name"}
