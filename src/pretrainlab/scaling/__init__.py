"""Scaling-law fits: y = a * x^(-b) + c (Kaplan et al. 2020; Hoffmann et al. 2022's
per-axis form), for loss or val_bpb against parameters, tokens or FLOPs."""

from __future__ import annotations

import math

import numpy as np


def fit_power_law(x: list[float], y: list[float]) -> dict:
    """Least-squares fit of y = a * x^-b + c; returns a, b, c, the residual RMS and a
    prediction helper's inputs. Needs at least 3 points with distinct positive x."""
    from scipy.optimize import curve_fit

    xs, ys = np.asarray(x, float), np.asarray(y, float)
    if len(xs) < 3 or len(set(xs.tolist())) < 3 or (xs <= 0).any():
        raise ValueError("fit_power_law needs at least 3 points with distinct positive x")
    scale = xs.min()  # fit in units of the smallest x for conditioning

    def f(u, a, b, c):
        return a * np.power(u, -b) + c

    c0 = max(0.0, ys.min() * 0.9)
    try:
        (a, b, c), _ = curve_fit(f, xs / scale, ys, p0=(max(ys.max() - c0, 1e-3), 0.3, c0), bounds=([0, 0, 0], [np.inf, 5, np.inf]),
                                 maxfev=20_000)
    except RuntimeError as e:
        raise ValueError(f"the power law did not converge on these points: {e}") from None
    residual = float(np.sqrt(np.mean((f(xs / scale, a, b, c) - ys) ** 2)))
    return {"a": float(a * scale**b), "b": float(b), "c": float(c), "rms_residual": residual,
            "formula": f"y = {a * scale**b:.4g} * x^-{b:.4f} + {c:.4f}"}


def predict(fit: dict, x: float) -> float:
    return fit["a"] * math.pow(x, -fit["b"]) + fit["c"]
