"""Honest intervals from the scaling law: a fit on a degenerate ridge is called not determined
(one line where A overflows, a wide bootstrap interval where it does not), bootstrap refits
leave the full fit's basin, and a transfer prediction's interval covers the measured
larger-rung gain about as often as it says. No training; a few seconds."""

import math

import numpy as np
import pytest

from pretrainlab.cli import main
from pretrainlab.errors import UserError
from pretrainlab.research.stats import paired_t
from pretrainlab.scaling import law as L
from pretrainlab.scaling import transfer as T

# 9 points of E=1.30, A=7.2e3, alpha=0.82, B=114, beta=0.35 (the lab's held-out ladder fit) on a 3 x 3 grid, 1% noise:
# the lowest objective lies on a ridge where alpha grows without bound (the size term fits the smallest size alone)
RIDGE = np.array([
    (229000, 26600, 4.8823191317349419), (229000, 100000, 3.5981766718384467), (229000, 401000, 2.7889783801277823),
    (492000, 26600, 4.6867427233106262), (492000, 100000, 3.5068246628309447), (492000, 401000, 2.6291241415150468),
    (852000, 26600, 4.6276355341395901), (852000, 100000, 3.5009101134246992), (852000, 401000, 2.6673339220695333)]).T
LAB = np.array([math.log(7.2e3), math.log(114.0), math.log(1.30), 0.82, 0.35])  # (a, b, e, alpha, beta)


def test_a_fit_whose_coefficient_overflows_is_one_line_not_a_traceback():
    beyond = [math.log(1e300) * 10, 4.2914, 0.0019663, 556.3, 0.29319]  # on the ridge, A = e^6908: no descent comes back
    with pytest.raises(UserError, match="not determined by these points") as e:
        L.fit_law(*RIDGE, starts=[beyond])
    assert "\n" not in str(e.value) and "beyond float range" in str(e.value)


def test_on_a_flat_ridge_a_representable_end_is_kept_whatever_the_rounding_favoured(tmp_path, capsys):
    """The ridge's descents end anywhere along it with objectives equal to 1e-15: which one rounding favours varies
    with numpy and scipy, and one of them is beyond float range. The fit keeps a tie whose coefficients are
    representable and flags alpha, so `scaling fit` shows the terms the points do determine (B, beta)."""
    for starts in (64, 128, None):
        fit = L.fit_law(*RIDGE, num_starts=starts)
        assert fit.alpha > L.MAX_EXPONENT and max(fit.theta[:3]) <= L.MAX_LOG
        assert 0.25 < fit.beta < 0.35 and "alpha" in fit.to_dict()["not_determined"][0]
    path = tmp_path / "points.csv"
    path.write_text("N,D,loss\n" + "".join(f"{n:.0f},{d:.0f},{float(y)!r}\n" for n, d, y in RIDGE.T))
    assert main(["scaling", "fit", str(path), "--starts", "64", "--bootstrap", "50"]) == 0
    out = capsys.readouterr().out
    assert "alpha is not determined by these points" in out


def test_a_degenerate_fit_is_flagged_and_its_bootstrap_leaves_the_ridge():
    fit = L.fit_law(*RIDGE)
    assert fit.alpha > L.MAX_EXPONENT and "alpha" in fit.to_dict()["not_determined"][0]
    thetas = L.bootstrap_law(*RIDGE, fit, 100, np.random.default_rng(0))
    lo, hi = L.percentile_interval(thetas[:, 3], 0.95)
    assert lo < 0.82 < 10 < hi  # refits from the full fit's theta alone gave [39.38, 39.46] around alpha = 39.44
    flags = L.undetermined_exponents(L.LawFit.from_theta(LAB, objective=0, num_points=9, num_starts=0), {"alpha": (lo, hi)})
    assert len(flags) == 1 and "spans more than 10x" in flags[0]


def test_resamples_with_fewer_than_three_sizes_or_budgets_are_dropped():
    fit = L.LawFit.from_theta(LAB, objective=0, num_points=9, num_starts=0)
    thetas = L.bootstrap_law(*RIDGE, fit, 60, np.random.default_rng(1), num_starts=0)
    rng = np.random.default_rng(1)  # the same draws: how many resamples keep all 3 sizes and all 3 budgets
    draws = [rng.integers(0, 9, 9) for _ in range(60)]
    kept = sum(len(set(RIDGE[0][i])) == 3 and len(set(RIDGE[1][i])) == 3 for i in draws)
    assert 40 < len(thetas) == kept < 60


def test_the_transfer_interval_covers_the_measured_larger_rung_gain():
    """The law exactly true (its refits barely move), each rung measured on 3 seed-matched pairs at
    the lab's paired noise: the prediction interval holds the measured gain about 95% of the time;
    the law's interval alone, which took the small-rung effect as exact, almost never."""
    small, large, k = (229e3, 502e3), (852e3, 1.25e6), 1.1
    true = [T._law(LAB, n * k**0.5, d * k**0.5) - T._law(LAB, n, d) for n, d in (small, large)]
    rng = np.random.default_rng(0)
    thetas = np.vstack([LAB, LAB + rng.normal(0, [0.01, 0.01, 0.001, 0.001, 0.001], size=(40, 5))])
    draws, inside, law_only = 200, 0, 0
    for _ in range(draws):
        measured_small, lo, hi, _, _ = paired_t([0.0] * 3, list(true[0] + rng.normal(0, 0.013, 3)))
        measured, mlo, mhi, _, _ = paired_t([0.0] * 3, list(true[1] + rng.normal(0, 0.013, 3)))
        p = T.predict_transfer(thetas, small, large, 3.0, measured_small, effect_ci=(lo, hi))
        ci = T.prediction_interval(p, (mlo, mhi))
        inside += ci[0] <= measured <= ci[1]
        old = T.predict_transfer(thetas, small, large, 3.0, measured_small)["effect_ci"]
        law_only += old[0] <= measured <= old[1]
    assert 0.91 <= inside / draws <= 0.99, inside
    assert law_only / draws < 0.3, law_only
    assert "inside the interval" in T.verdict(p, p["effect"], (mlo, mhi)) and "the small-rung effect" in p["includes"]
