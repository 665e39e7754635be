"""Robust statistics for the detectors: trailing-window medians and MAD noise scales,
spike scanning, the chi-square tail, episodes of consecutive steps, and sparklines.

numpy only. Every trailing statistic at step t uses steps strictly before t, so a spike
never raises its own baseline; masked (NaN) entries are skipped, which is how flagged
spikes are kept out of later windows ("one spike does not mask the next").
"""

from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

MAD_TO_SIGMA = 1.4826  # MAD x 1.4826 estimates sigma for Gaussian noise
_CHUNK = 8192  # rows of sliding windows materialised at once (memory bound for long runs)


def trailing(x: np.ndarray, window: int, fn, min_count: int = 1, dense_fn=None) -> np.ndarray:
    """fn (a nan-aware reducer over axis 1) of x[t-window : t] for every t, ignoring NaN;
    NaN where fewer than min_count values are present. dense_fn: the same reducer for windows
    without a NaN (np.median for np.nanmedian: numpy's nan-aware median sorts masked arrays, ten
    times slower), used for the windows that are full, which on a long run is nearly all."""
    n = len(x)
    out = np.full(n, np.nan)
    if n == 0:
        return out
    padded = np.concatenate([np.full(window, np.nan), x.astype(np.float64)])
    views = sliding_window_view(padded, window)  # views[t] = x[t-window : t]
    for lo in range(0, n, _CHUNK):
        w = views[lo : min(n, lo + _CHUNK)]
        counts = np.sum(~np.isnan(w), axis=1)
        ok = counts >= max(1, min_count)
        if dense_fn is not None:
            full = counts == window
            if full.any():
                out[lo : lo + len(w)][full] = dense_fn(w[full], axis=1)
            ok &= ~full
        if ok.any():
            out[lo : lo + len(w)][ok] = fn(w[ok], axis=1)
    return out


def trailing_median(x: np.ndarray, window: int, min_count: int = 1) -> np.ndarray:
    return trailing(x, window, np.nanmedian, min_count, dense_fn=np.median)


def trailing_mad_sigma(diffs: np.ndarray, window: int, min_count: int) -> np.ndarray:
    """Robust noise scale of a series from its first differences: sigma = 1.4826 x
    MAD(diff) / sqrt(2). Differencing removes the slow trend of a falling loss curve,
    and the MAD ignores the occasional outlier."""

    def mad(w, axis, median=np.nanmedian):
        med = median(w, axis=axis, keepdims=True)
        return median(np.abs(w - med), axis=axis)

    dense = lambda w, axis: mad(w, axis, np.median)  # noqa: E731 (windows without NaN)
    return MAD_TO_SIGMA * trailing(diffs, window, mad, min_count, dense_fn=dense) / math.sqrt(2)


def scan_spikes(x: np.ndarray, *, level_window: int, sigma_window: int, min_sigma_points: int, z_threshold: float,
                ratio_threshold: float, z_min_ratio: float, z_from: int, min_prior: int, log_space: bool = False,
                max_passes: int = 4) -> dict[str, np.ndarray]:
    """Flag upward outliers of x (a loss, or log of a grad norm when log_space).

    A step t is a spike when either
      ratio_t = x_t / level_t >= ratio_threshold   (level = median of the previous
                                                     level_window clean steps), or
      z_t = (x_t - level_t) / sigma_t >= z_threshold and ratio_t >= z_min_ratio, for t >= z_from
                                                    (sigma from the previous sigma_window clean
                                                     steps, at least min_sigma_points of them).
    In log space the ratio is exp(x_t - level_t). Flagged steps are masked and the scan
    repeats until the set is stable. Returns arrays: spike (bool), z, ratio, level.
    """
    n = len(x)
    finite = np.isfinite(x)
    spike = np.zeros(n, dtype=bool)
    z = ratio = level = np.full(n, np.nan)
    idx = np.arange(n)
    for _ in range(max_passes):
        clean = np.where(finite & ~spike, x, np.nan)
        level = trailing_median(clean, level_window, min_count=min_prior)
        diffs = np.concatenate([[np.nan], np.diff(clean)])
        sigma = trailing_mad_sigma(diffs, sigma_window, min_sigma_points)
        excess = x - level
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.exp(excess) if log_space else x / level
            z = np.where(sigma > 0, excess / sigma, np.nan)
        new = finite & (np.nan_to_num(ratio) >= ratio_threshold)
        new |= finite & (idx >= z_from) & (np.nan_to_num(z) >= z_threshold) & (np.nan_to_num(ratio) >= z_min_ratio)
        if np.array_equal(new, spike):
            break
        spike = new
    return {"spike": spike, "z": z, "ratio": ratio, "level": level}


def episodes(indices, max_gap: int = 2) -> list[tuple[int, int]]:
    """Group sorted indices into (first, last) runs whose members are <= max_gap apart."""
    out: list[tuple[int, int]] = []
    for i in indices:
        i = int(i)
        if out and i - out[-1][1] <= max_gap:
            out[-1] = (out[-1][0], i)
        else:
            out.append((i, i))
    return out


def chi2_sf(stat: float, dof: int) -> float:
    """P(X >= stat) for X ~ chi-square(dof): the regularized upper incomplete gamma
    Q(dof/2, stat/2), by series or continued fraction (Numerical Recipes 6.2)."""
    if stat <= 0:
        return 1.0
    if not math.isfinite(stat):
        return 0.0
    a, x = dof / 2.0, stat / 2.0
    log_prefix = -x + a * math.log(x) - math.lgamma(a)
    if x < a + 1:  # series for P, then Q = 1 - P
        term = total = 1.0 / a
        ap = a
        for _ in range(10_000):
            ap += 1
            term *= x / ap
            total += term
            if abs(term) < abs(total) * 1e-15:
                break
        return max(0.0, 1.0 - total * math.exp(log_prefix))
    b = x + 1 - a  # Lentz's continued fraction for Q
    c, d = 1.0 / 1e-300, 1.0 / b
    h = d
    for i in range(1, 10_000):
        an = -i * (i - a)
        b += 2
        d = an * d + b
        d = 1e-300 if abs(d) < 1e-300 else d
        c = b + an / c
        c = 1e-300 if abs(c) < 1e-300 else c
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1) < 1e-15:
            break
    return min(1.0, math.exp(log_prefix) * h)


def chi_square_gof(counts: np.ndarray, probs: np.ndarray) -> tuple[float, int, float]:
    """Pearson's goodness-of-fit of category counts to expected shares: (stat, dof, p).
    A category with zero expected share but a positive count makes the stat infinite."""
    counts = np.asarray(counts, dtype=np.float64)
    probs = np.asarray(probs, dtype=np.float64)
    total = counts.sum()
    if total <= 0:
        return 0.0, 0, 1.0
    expected = total * probs
    if np.any((expected <= 0) & (counts > 0)):
        return math.inf, max(1, int(np.sum(probs > 0)) - 1), 0.0
    keep = expected > 0
    stat = float(np.sum((counts[keep] - expected[keep]) ** 2 / expected[keep]))
    dof = int(keep.sum()) - 1
    return stat, dof, (chi2_sf(stat, dof) if dof > 0 else 1.0)


SPARK = "▁▂▃▄▅▆▇█"


def downsample(steps, values, max_points: int = 120, how: str = "max") -> tuple[list[int], list[float]]:
    """At most max_points (step, value) pairs: each bin keeps its max (spikes stay visible),
    min or mean; a bin holding a non-finite value keeps it (NaN must stay visible)."""
    steps = np.asarray(steps)
    values = np.asarray(values, dtype=np.float64)
    n = len(values)
    if n <= max_points:
        return [int(s) for s in steps], [float(v) for v in values]
    edges = np.linspace(0, n, max_points + 1).astype(int)
    out_s, out_v = [], []
    for lo, hi in zip(edges[:-1], edges[1:]):
        if hi <= lo:
            continue
        seg = values[lo:hi]
        bad = ~np.isfinite(seg)
        if bad.any():
            k = int(np.argmax(bad))
        elif how == "mean":
            k = -1
        else:
            k = int(np.argmax(seg) if how == "max" else np.argmin(seg))
        out_s.append(int(steps[lo + (k if k >= 0 else (hi - lo) // 2)]))
        out_v.append(float(seg[k]) if k >= 0 else float(seg.mean()))
    return out_s, out_v


def sparkline(values, width: int = 48, how: str = "max") -> str:
    """Unicode sparkline of values, at most `width` characters; NaN/Inf print as '×'."""
    _, v = downsample(np.arange(len(values)), values, width, how)
    arr = np.asarray(v, dtype=np.float64)
    ok = np.isfinite(arr)
    if not ok.any():
        return "×" * len(arr)
    lo, hi = float(arr[ok].min()), float(arr[ok].max())
    span = hi - lo
    chars = []
    for val, good in zip(arr, ok):
        if not good:
            chars.append("×")
        elif span <= 0:
            chars.append(SPARK[0])
        else:
            chars.append(SPARK[min(len(SPARK) - 1, int((val - lo) / span * (len(SPARK) - 1) + 0.5))])
    return "".join(chars)
