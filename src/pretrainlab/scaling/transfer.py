"""Will a small-scale win hold at a larger rung? A prediction from a fitted scaling law.

A change that lowers val_bpb by `effect` at the campaign's rung (N params, D tokens) is read
as a compute multiplier k: the same recipe without the change would need k times the
compute (N and D both scaled by sqrt(k)) to reach that loss along the law L(N, D) = E +
A/N^alpha + B/D^beta. If the multiplier holds, the change's gain at a larger rung
(N', D') is L(sqrt(k) N', sqrt(k) D') - L(N', D'): smaller than at the small rung, since the
reducible loss shrinks with scale. The incumbent's value at the larger rung is its measured
small-rung mean moved by the law's L(N', D') - L(N, D). Every bootstrap refit of the law
gives one prediction; their percentiles are the interval.

    predict_transfer(thetas, small=(N, D), large=(N2, D2), incumbent_small=3.52, effect=-0.03)
"""

from __future__ import annotations

import math

import numpy as np

from .law import percentile_interval

MAX_LOG_SCALE = 40.0  # sqrt(k) up to e^40: a gain beyond what any compute buys is reported as such


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
    """k such that L(sqrt(k) n, sqrt(k) d) = L(n, d) + effect (effect < 0: a gain); None when
    no compute reaches that loss (it is below the law's irreducible E) or the law does not fall."""
    a, b, e, alpha, beta = (float(v) for v in theta)
    if alpha <= 0 or beta <= 0:
        return None
    target = _law(theta, n, d) + effect
    if effect >= 0:
        return 1.0 if effect == 0 else None
    if target <= math.exp(e):
        return None
    lo, hi = 0.0, MAX_LOG_SCALE  # log s, L falls as s grows
    if _law(theta, n * math.exp(hi), d * math.exp(hi)) > target:
        return None
    for _ in range(200):
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
                     level: float = 0.95) -> dict:
    """The predicted incumbent and candidate val_bpb at the larger rung and the gain there.
    thetas: the point fit's (a, b, e, alpha, beta) first, then the bootstrap refits."""
    thetas = np.atleast_2d(np.asarray(thetas, float))
    point = _one(thetas[0], small, large, incumbent_small, effect)
    boot = [_one(t, small, large, incumbent_small, effect) for t in thetas[1:]]
    gains = np.array([g for _, g, _ in boot if g is not None])
    incs = np.array([i for i, _, _ in boot if i is not None])
    ks = np.array([k for _, _, k in boot if k is not None])
    interval = lambda arr: list(percentile_interval(arr, level)) if len(arr) >= 10 else None  # noqa: E731
    inc, gain, k = point
    return {
        "method": "constant compute multiplier along L(N, D), anchored at the incumbent's small-rung mean",
        "small": {"N": small[0], "D": small[1]}, "large": {"N": large[0], "D": large[1]},
        "effect_small": effect,
        "incumbent": inc, "incumbent_ci": interval(incs),
        "candidate": inc + gain if gain is not None else None,
        "effect": gain, "effect_ci": interval(gains),
        "multiplier": k, "multiplier_ci": interval(ks),
        "resamples": len(boot), "degenerate": int(len(boot) - len(incs)), "unreachable": int(len(incs) - len(gains)), "level": level,
        "note": None if gain is not None else
        ("the ladder's fitted law does not fall with size and data: no prediction" if inc is None else
         "the small-rung gain is more than the law says any compute can buy: no prediction"),
    }


def verdict(prediction: dict, measured_effect: float) -> str:
    """Where the measured gain at the larger rung fell against the prediction, in words."""
    ci = prediction.get("effect_ci")
    if prediction.get("effect") is None:
        return "no prediction"
    if ci is None:
        return f"predicted {prediction['effect']:+.4f} (no interval), measured {measured_effect:+.4f}"
    inside = ci[0] <= measured_effect <= ci[1]
    return (f"predicted {prediction['effect']:+.4f} [{ci[0]:+.4f}, {ci[1]:+.4f}], measured {measured_effect:+.4f}: "
            + ("inside the interval" if inside else "outside the interval"))
