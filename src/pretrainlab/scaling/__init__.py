"""Scaling laws: fit L(N, D) = E + A/N^alpha + B/D^beta to (parameters, tokens, loss) points
as Hoffmann et al. (2022) do (Approach 3, with bootstrap intervals; Approach 2's IsoFLOP
minima beside it), and the compute-optimal N and D it implies for a budget.

    pretrainlab scaling fit points.csv --flops 1e21              # a file of (N, D, loss) points
    pretrainlab scaling fit --ladder LADDER --plot fit.html      # the lab's own runs, from the ledger
    pretrainlab scaling ladder --recipe tiny-cpu --sizes model.n_embd=64,96,128 --tokens 25k,100k,400k

law.py fits, isoflop.py finds the IsoFLOP minima, points.py reads and checks the points,
analysis.py puts them together (and writes the text), ladder.py plans a ladder of runs
(research/ladder.py runs it), plot.py draws the fit. The method and its validation on
Besiroglu et al.'s (2024) Chinchilla data: docs/scaling.md.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .analysis import analyse, parse_flops, render_text
from .law import LawFit, bootstrap_law, fit_law
from .points import Points, check_points, load_points, points_from_runs

DATA_DIR = Path(__file__).resolve().parent / "data"
CHINCHILLA_CSV = DATA_DIR / "chinchilla_besiroglu2024.csv"  # Besiroglu et al. (2024)'s points from Hoffmann et al.'s Figure 4

__all__ = ["CHINCHILLA_CSV", "LawFit", "Points", "analyse", "bootstrap_law", "check_points", "fit_law", "fit_power_law", "load_points",
           "parse_flops", "points_from_runs", "predict", "render_text"]


def fit_power_law(x: list[float], y: list[float]) -> dict:
    """One axis at a time: least-squares fit of y = a * x^-b + c (Kaplan et al. 2020's form,
    for loss against parameters, tokens or FLOPs alone); returns a, b, c and the residual RMS.
    Needs at least 3 points with distinct positive x."""
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
