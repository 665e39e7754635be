"""The default budget policy (`--decision screen`): explore cheaply, move the incumbent on
screened evidence, and record as claims only what a confirmation on fresh seeds supports.

The loop does two different things, and this policy prices them differently:

- **Moving the incumbent** is exploitation. A candidate runs once, on the screening seed
  (seed 0), and is compared with the recipe it was proposed against on the same seed, so the
  seed's shared noise cancels and what is left is the paired-difference noise
  (`screen_noise`, measured on real runs). The candidate is adopted when the posterior
  probability that it is better, given that difference, reaches `adopt_p`. Nothing is
  claimed by an adoption.
- **Exploring** is multi-fidelity: every screen evaluates at half its budget (the first
  rung) and is stopped there when it trails its parent's seed-0 run at the same rung by more
  than `rung_stop` (a loser pays half a run; its half-run counts half against the budget). A
  screen that beats its parent after the incumbent moved on is *combined*: its change is
  applied to the new incumbent and screened again, first in the queue.
- **Sweeping first**: with a search strategy (optuna, random), the first screens are a
  designed one-key sweep (`sweep_points`): every key of the search space moved once each
  way by a quarter of its range (every other choice of a categorical), each against the
  incumbent of the moment. A random or TPE start samples a few keys at random and can miss
  a key that matters for the whole campaign (a width, a learning rate); the sweep spends
  about a run per key, half of it on losers stopped at the rung, and its winners are
  adopted one after the other, which combines them. The strategy then searches from there,
  warm-started with everything the sweep measured.
- **Recording a claim** happens once, in a confirmation phase kept inside the run budget:
  the final recipe and one leave-one-out ablation per changed key group run on the
  baseline's other seeds, which no screening decision ever looked at. The claims are
  "the final recipe improves on the baseline by e ± ci" and "group g carries e ± ci of
  it", each by a paired t-test whose variance is pooled over the confirmation's pairs
  (stats.pooled_paired): calibrated on A/A (tests/test_research_policy.py).

Everything here is a pure function of numbers and recipes; campaign.py calls it.
"""

from __future__ import annotations

import math
from typing import Any


from ..config import Recipe
from .space import Param, apply, recipe_diff


def _ndtr(x: float) -> float:
    """The standard normal CDF (scipy.special, imported on first use: a bad flag is reported before)."""
    from scipy import special

    return float(special.ndtr(x))


SCREEN_SEED = 0  # the seed index every screen runs on (its parent has a run there)

# keys that move together: reverting one of them alone would not give a valid recipe
_COUPLED = {"model.n_head": "model.n_embd", "train.micro_batch_rows": "train.batch_tokens"}


def p_improvement(diff: float, noise_std: float) -> float:
    """P(the candidate is truly better | an observed seed-matched difference `diff`,
    candidate - parent), with a flat prior on the effect and Gaussian paired noise."""
    if noise_std <= 0:
        return 1.0 if diff < 0 else 0.0
    return _ndtr(-diff / noise_std)


def adopt(diff: float, noise_std: float, adopt_p: float) -> bool:
    """Move the incumbent to the candidate? Only on a measured gain: a difference of exactly
    zero on the same seed means the change did not alter training at all (a warmup fraction
    that rounds to the same steps), and carrying it would cost the confirmation an ablation."""
    return diff < 0 and p_improvement(diff, noise_std) >= adopt_p


def stop_at_rung(rung_diff: float, rung_stop: float) -> bool:
    """Stop a screen at its first rung: it trails its parent there by more than `rung_stop`."""
    return rung_diff > rung_stop


def sweep_points(space: list[Param], base: Recipe) -> list[tuple[str, Any]]:
    """The one-key sweep: (key, value) pairs, each key of `space` moved from the base
    recipe's value by a quarter of its (log) range each way (clipped to the range; an int
    rounded; an end already at its bound skipped), or to each other choice of a categorical.
    Ordered so that the two directions of a key are screened side by side."""
    from .strategies import current_values, same_value

    now = current_values(base, space)
    out: list[tuple[str, Any]] = []
    for p in space:
        cur = now[p.key]
        if p.kind == "categorical":
            values = [c for c in p.choices if c != cur]
        else:
            lo, hi = (math.log(p.low), math.log(p.high)) if p.log else (float(p.low), float(p.high))
            x = math.log(cur) if p.log and cur > 0 else float(cur)
            values = []
            for step in (-(hi - lo) / 4, (hi - lo) / 4):
                v = min(hi, max(lo, x + step))
                v = math.exp(v) if p.log else v
                v = int(round(v)) if p.kind == "int" else float(f"{v:.4g}")
                if not same_value(p, v, cur) and v not in values:
                    values.append(v)
        out += [(p.key, v) for v in values]
    return out


def change_groups(base: Recipe, final: Recipe) -> dict[str, dict[str, Any]]:
    """{group name: the base's values of the group's keys}: each key where the final recipe
    differs from the base, with coupled keys (a width and its head count) in one group.
    Reverting a group in the final recipe gives its leave-one-out ablation."""
    groups: dict[str, dict[str, Any]] = {}
    for key, (base_value, _) in recipe_diff(base, final).items():
        if key == "seed" or key.startswith("budget.") or key == "train.eval_every_frac":
            continue
        groups.setdefault(_COUPLED.get(key, key), {})[key] = base_value
    return groups


def without(final: Recipe, group_values: dict[str, Any]) -> Recipe:
    """The final recipe with one group reverted to the base's values."""
    return apply(final, group_values)


def confirmation_runs(num_groups: int, num_seeds: int) -> int:
    """Runs the confirmation phase takes: the final recipe and each ablation on every
    confirmation seed (the baseline already ran there). With a single changed group its
    ablation is the baseline itself. Nothing to confirm: 0."""
    return 0 if num_groups == 0 else num_seeds * (1 + (num_groups if num_groups > 1 else 0))


def to_drop(carried: dict[str, float], screened: dict[str, float] | None = None, pairs: int = 2) -> list[str]:
    """Groups to revert in the recipe handed back. `carried`: {group: effect of keeping it in
    the final recipe on the confirmation seeds (final - final without it, a mean over `pairs`
    seed-matched pairs; negative = it helps)}; `screened`: {group: the seed-0 differences of
    the screens that adopted it}. Both measure the same change with the same paired noise, so
    they are pooled, weighted by pairs (the screen is one): a group whose pooled effect is
    positive is more likely to hurt than to help (flat prior) and is dropped, as the adoption
    rule would have, had it seen all these runs. Without the screens' evidence the two
    confirmation pairs alone would decide, and a real gain of one noise unit is dropped one
    time in four."""
    screened = screened or {}
    return [g for g, effect in carried.items() if (screened.get(g, 0.0) + pairs * effect) / ((g in screened) + pairs) > 0]


def screened_by_group(adoptions: list[tuple[list[str], float]]) -> dict[str, float]:
    """{group: summed seed-0 difference of the adoptions that changed it}: `adoptions` lists
    (keys an adopted screen changed relative to its parent, its difference to the parent).
    An adoption that changed several groups (a merge) credits each with an equal share."""
    out: dict[str, float] = {}
    for keys, diff in adoptions:
        groups = {_COUPLED.get(k, k) for k in keys if k != "seed" and not k.startswith("budget.") and k != "train.eval_every_frac"}
        for g in groups:
            out[g] = out.get(g, 0.0) + diff / len(groups)
    return out


def describe_p(p: float) -> str:
    return f"P(better) = {p:.2f}" if 0.005 < p < 0.995 else ("P(better) > 0.99" if p >= 0.995 else "P(better) < 0.01")
