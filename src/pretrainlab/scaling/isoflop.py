"""IsoFLOP minima: Hoffmann et al. (2022), Approach 2.

For each compute budget C (runs of several model sizes, each trained to D = C / (6N)):
fit a parabola to loss against log N, take its minimum as N_opt(C) and D_opt(C) =
C / (6 N_opt); then fit the power laws N_opt = k_N C^a and D_opt = k_D C^b by least
squares in log-log space (a + b = 1 by construction). Intervals come from resampling the
runs within each budget (a parametric-free bootstrap of the whole procedure).

A budget's minimum is used only where the parabola opens upwards and its minimum lies
inside the sizes tried: an extrapolated minimum says the ladder missed the optimum, and
the fix is more sizes on that side, not a number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

MIN_SIZES = 3  # a parabola needs three distinct sizes per budget
GROUP_TOLERANCE = 0.15  # runs whose C = 6ND lie within 15% of a group's smallest C share a budget (no design given)


def group_budgets(flops: np.ndarray, budget: np.ndarray | None = None, rel_tol: float = GROUP_TOLERANCE) -> list[tuple[float, np.ndarray]]:
    """[(C, indices)] per compute budget: the design's budget where the points carry one (an
    iso-FLOP ladder), else clusters of C = 6ND within rel_tol, C their geometric mean."""
    if budget is not None and np.isfinite(budget).all():
        return [(float(c), np.flatnonzero(budget == c)) for c in np.unique(budget)]
    order = np.argsort(flops)
    groups, current = [], [order[0]] if len(order) else []
    for i in order[1:]:
        if flops[i] <= flops[current[0]] * (1 + rel_tol):
            current.append(i)
        else:
            groups.append(current)
            current = [i]
    if current:
        groups.append(current)
    return [(float(np.exp(np.mean(np.log(flops[g])))), np.array(sorted(g))) for g in groups]


def parabola_minimum(log_n: np.ndarray, loss: np.ndarray) -> tuple[float | None, float | None, str | None]:
    """(log N_opt, loss at it, None) of the least-squares parabola in log N, or (None, None, why)."""
    if len(np.unique(log_n)) < MIN_SIZES:
        return None, None, f"{len(np.unique(log_n))} distinct sizes (a parabola needs {MIN_SIZES})"
    c2, c1, c0 = np.polyfit(log_n, loss, 2)
    if c2 <= 0:
        return None, None, "loss does not curve upwards in log N (no minimum inside the sizes tried)"
    x = -c1 / (2 * c2)
    if not (log_n.min() <= x <= log_n.max()):
        side = "smaller" if x < log_n.min() else "larger"
        return None, None, f"the minimum lies outside the sizes tried ({side}): add {side} models at this budget"
    return float(x), float(c0 + c1 * x + c2 * x * x), None


def _power_law(log_c: np.ndarray, log_y: np.ndarray) -> tuple[float, float]:
    """(exponent, log coefficient) of y = k C^e by least squares."""
    e, log_k = np.polyfit(log_c, log_y, 1)
    return float(e), float(log_k)


@dataclass
class IsoFlopFit:
    budgets: list[dict]  # per budget: C, num_runs, members (indices of its points), sizes, N_opt, D_opt, loss_opt, used, why_not
    a: float | None  # N_opt ∝ C^a
    b: float | None  # D_opt ∝ C^b  (= 1 - a)
    log_k_n: float | None
    reason: str | None  # why no exponent (fewer than two usable budgets)
    samples: np.ndarray  # bootstrap (a, log_k_n) rows

    def n_opt(self, flops) -> np.ndarray:
        return np.exp(self.log_k_n + self.a * np.log(np.asarray(flops, float)))

    def to_dict(self) -> dict:
        return {"budgets": self.budgets, "a": self.a, "b": self.b, "reason": self.reason,
                "k_N": math.exp(self.log_k_n) if self.log_k_n is not None and abs(self.log_k_n) < 700 else None,
                "num_bootstrap": len(self.samples)}


def fit_isoflop(n: np.ndarray, d: np.ndarray, loss: np.ndarray, budget: np.ndarray | None, num_bootstrap: int,
                rng: np.random.Generator) -> IsoFlopFit:
    flops = 6.0 * n * d
    groups = group_budgets(flops, budget)
    rows, used = [], []
    for c, idx in groups:
        x, l_opt, why = parabola_minimum(np.log(n[idx]), loss[idx])
        row = {"C": c, "num_runs": len(idx), "members": idx.tolist(), "sizes": sorted({float(v) for v in n[idx]}), "used": why is None,
               "why_not": why,
               "N_opt": math.exp(x) if x is not None else None, "D_opt": c / (6 * math.exp(x)) if x is not None else None,
               "loss_opt": l_opt}
        rows.append(row)
        if why is None:
            used.append((c, idx, x))
    candidates = [g for g in groups if len(np.unique(n[g[1]])) >= MIN_SIZES]
    if len(used) < 2:
        reason = (f"{len(used)} compute budget(s) with a usable minimum (of {len(groups)} budgets, {len(candidates)} with >= {MIN_SIZES} "
                  "sizes): the C-exponent needs at least 2; train an iso-FLOP ladder (`pretrainlab scaling ladder --flops C1,C2,C3`) "
                  "with sizes on both sides of each optimum")
        return IsoFlopFit(rows, None, None, None, reason, np.zeros((0, 2)))
    a, log_k = _power_law(np.log([u[0] for u in used]), np.array([u[2] for u in used]))
    if not (0 < a < 1 and abs(log_k) < 700):  # N_opt ~ C^a with 0 < a < 1, or a bigger budget would want fewer tokens
        reason = (f"the {len(used)} budgets' minima disagree: N_opt grows as C^{a:.3g} between them, outside (0, 1), so no "
                  "allocation follows; train budgets further apart (10x) with sizes on both sides of each optimum")
        return IsoFlopFit(rows, None, None, None, reason, np.zeros((0, 2)))
    samples = []
    for _ in range(num_bootstrap):
        picks = []
        for c, idx, _ in used:
            sample = rng.choice(idx, len(idx), replace=True)
            x, _, why = parabola_minimum(np.log(n[sample]), loss[sample])
            if why is None:
                picks.append((c, x))
        if len(picks) >= 2:
            samples.append(_power_law(np.log([p[0] for p in picks]), np.array([p[1] for p in picks])))
    return IsoFlopFit(rows, a, 1.0 - a, log_k, None, np.array(samples).reshape(-1, 2))
