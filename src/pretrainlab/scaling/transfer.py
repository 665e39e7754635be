"""Will a small-scale win hold at a larger rung? A prediction from a fitted scaling law.

A change that lowers val_bpb by `effect` at the campaign's rung (N params, D tokens) is read
as a compute multiplier k: the same recipe without the change would need k times the
compute (N and D both scaled by sqrt(k)) to reach that loss along the law L(N, D) = E +
A/N^alpha + B/D^beta. If the multiplier holds, the change's gain at a larger rung
(N', D') is L(sqrt(k) N', sqrt(k) D') - L(N', D'): smaller than at the small rung, since the
reducible loss shrinks with scale. The incumbent's value at the larger rung is its measured
small-rung mean moved by the law's L(N', D') - L(N, D).

The interval is a prediction interval for the gain as it will be measured at the larger
rung. Every bootstrap refit of the law gives one prediction, from its own draw of the
small-rung effect (a normal whose central 95% is the small-rung comparison's interval);
their percentiles cover the law and the small-rung measurement. The larger-rung
measurement's noise is added to each side in quadrature: the small rung's until the larger
rung is measured (same seeds, same test), then its own (prediction_interval).

    predict_transfer(thetas, small=(N, D), large=(N2, D2), incumbent_small=3.52, effect=-0.03, effect_ci=(-0.05, -0.01))
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np

from .law import percentile_interval

MAX_LOG_SCALE = 40.0  # sqrt(k) up to e^40: a gain beyond what any compute buys is reported as such
Z95 = NormalDist().inv_cdf(0.975)  # a comparison's 95% interval is effect +- Z95 standard deviations of this normal


def _law(theta: np.ndarray, n: float, d: float) -> float:
    """L(N, D); inf where a refit's parameters overflow."""
    a, b, e, alpha, beta = (float(v) for v in theta)
    try:
        return math.exp(e) + math.exp(a - alpha * math.log(n)) + math.exp(b - beta * math.log(d))
    except OverflowError:
        return math.inf


def _usable(theta: np.ndarray, *rungs: tuple[float, float]) -> bool:
    """A law that falls with N and D and is finite at the rungs (a bootstrap refit on a few
    points may be neither)."""
    return bool(theta[3] > 0 and theta[4] > 0 and all(math.isfinite(_law(theta, *r)) for r in rungs))


def compute_multiplier(theta: np.ndarray, n: float, d: float, effect: float) -> float | None:
    """k such that L(sqrt(k) n, sqrt(k) d) = L(n, d) + effect (effect < 0: a gain, k > 1; a
    loss, k < 1); None when no compute reaches that loss (it is below the law's irreducible E)
    or the law does not fall."""
    a, b, e, alpha, beta = (float(v) for v in theta)
    if alpha <= 0 or beta <= 0:
        return None
    if effect == 0:
        return 1.0
    target = _law(theta, n, d) + effect
    if target <= math.exp(e):
        return None
    lo, hi = -MAX_LOG_SCALE, MAX_LOG_SCALE  # log s, L falls as s grows
    if _law(theta, n * math.exp(hi), d * math.exp(hi)) > target or _law(theta, n * math.exp(lo), d * math.exp(lo)) < target:
        return None
    while hi - lo > 1e-12:
        mid = (lo + hi) / 2
        if _law(theta, n * math.exp(mid), d * math.exp(mid)) > target:
            lo = mid
        else:
            hi = mid
    return math.exp(2 * hi)


def _one(theta: np.ndarray, small: tuple[float, float], large: tuple[float, float], incumbent_small: float, effect: float):
    if not _usable(theta, small, large):
        return None, None, None
    shift = _law(theta, *large) - _law(theta, *small)
    incumbent = incumbent_small + shift
    k = compute_multiplier(theta, *small, effect)
    if k is None:
        return incumbent, None, None
    s = math.sqrt(k)
    gain = _law(theta, large[0] * s, large[1] * s) - _law(theta, *large)
    return incumbent, gain, k


def predict_transfer(thetas: np.ndarray, small: tuple[float, float], large: tuple[float, float], incumbent_small: float, effect: float,
                     level: float = 0.95, effect_ci: tuple[float, float] | None = None) -> dict:
    """The predicted incumbent and candidate val_bpb at the larger rung and the gain there.
    thetas: the point fit's (a, b, e, alpha, beta) first, then the bootstrap refits.
    effect_ci: the small-rung comparison's 95% interval for `effect`; without it the effect
    is taken as exact and the interval covers the law's refits alone (its `includes` says so)."""
    thetas = np.atleast_2d(np.asarray(thetas, float))
    point = _one(thetas[0], small, large, incumbent_small, effect)
    sd = (effect_ci[1] - effect_ci[0]) / (2 * Z95) if effect_ci is not None else 0.0
    draws = effect + sd * np.random.default_rng(0).standard_normal(len(thetas) - 1)  # seeded: the same prediction every time
    boot = [_one(t, small, large, incumbent_small, float(x)) for t, x in zip(thetas[1:], draws)]
    gains = np.array([g for _, g, _ in boot if g is not None])
    incs = np.array([i for i, _, _ in boot if i is not None])
    ks = np.array([k for _, _, k in boot if k is not None])
    interval = lambda arr: list(percentile_interval(arr, level)) if len(arr) >= 10 else None  # noqa: E731
    inc, gain, k = point
    out = {
        "method": "constant compute multiplier along L(N, D), anchored at the incumbent's small-rung mean",
        "small": {"N": small[0], "D": small[1]}, "large": {"N": large[0], "D": large[1]},
        "effect_small": effect, "effect_small_ci": [float(v) for v in effect_ci] if effect_ci is not None else None,
        "incumbent": inc, "incumbent_ci": interval(incs),
        "candidate": inc + gain if gain is not None else None,
        "effect": gain, "effect_law_ci": interval(gains),
        "multiplier": k, "multiplier_ci": interval(ks),
        "resamples": len(boot), "degenerate": int(len(boot) - len(incs)), "unreachable": int(len(incs) - len(gains)), "level": level,
        "note": None if gain is not None else
        ("the ladder's fitted law does not fall with size and data: no prediction" if inc is None else
         "the small-rung gain is more than the law says any compute can buy: no prediction"),
    }
    out["effect_ci"] = prediction_interval(out)
    out["includes"] = ("the law's bootstrap refits, the small-rung effect's sampling noise, and the larger-rung measurement's "
                       "noise taken as the small rung's" if effect_ci is not None else
                       "the law's bootstrap refits only: the small-rung effect taken as exact, the larger-rung measurement's noise "
                       "left out")
    return out


def prediction_interval(prediction: dict, measured_ci: tuple[float, float] | None = None) -> list[float] | None:
    """The interval the measured larger-rung gain should fall in: the law's interval
    (`effect_law_ci`, with the small-rung effect's noise) widened on each side, in quadrature,
    by the larger-rung measurement's half-width: from its 95% interval `measured_ci` once
    measured, else the small rung's."""
    law_ci, centre = prediction.get("effect_law_ci"), prediction.get("effect")
    if law_ci is None or centre is None:
        return None
    ci = measured_ci if measured_ci is not None and all(map(math.isfinite, measured_ci)) else prediction.get("effect_small_ci")
    if ci is None:
        return list(law_ci)
    half = (ci[1] - ci[0]) / 2 * NormalDist().inv_cdf(0.5 + prediction["level"] / 2) / Z95
    return [centre - math.hypot(centre - law_ci[0], half), centre + math.hypot(law_ci[1] - centre, half)]


def verdict(prediction: dict, measured_effect: float, measured_ci: tuple[float, float] | None = None) -> str:
    """Where the measured gain at the larger rung fell against the prediction, in words;
    `measured_ci`: the larger-rung comparison's 95% interval (its noise, in the interval)."""
    if prediction.get("effect") is None:
        return "no prediction"
    ci = prediction_interval(prediction, measured_ci) if "effect_law_ci" in prediction else prediction.get("effect_ci")
    if ci is None:
        return f"predicted {prediction['effect']:+.4f} (no interval), measured {measured_effect:+.4f}"
    inside = ci[0] <= measured_effect <= ci[1]
    return (f"predicted {prediction['effect']:+.4f} [{ci[0]:+.4f}, {ci[1]:+.4f}], measured {measured_effect:+.4f}: "
            + ("inside the interval" if inside else "outside the interval"))
