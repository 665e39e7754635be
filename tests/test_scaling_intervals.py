"""Honest intervals from the scaling law: a fit on a degenerate ridge is called not determined
(one line where A overflows, a wide bootstrap interval where it does not), bootstrap refits
leave the full fit's basin, and a transfer prediction's interval covers the measured
larger-rung gain about as often as it says. No training; a few seconds."""

import json
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


def test_the_fit_does_not_depend_on_the_losss_unit():
    """A 4 x 4 ladder in its own unit and times 1e5 (its log-loss shifted by 11.5): the same exponents and allocation,
    E scaled by 1e5. The grid of starts is in units of the median loss; before, the scaled copy ended at alpha 0.26
    and an N_opt 16x off, with warnings that blamed the points."""
    n, d = (a.ravel() for a in np.meshgrid([1e6, 3e6, 1e7, 3e7], [2e7, 6e7, 2e8, 6e8]))
    loss = (1.3 + 400 * n ** -0.58 + 300 * d ** -0.35) * np.exp(0.005 * np.random.default_rng(4).standard_normal(16))
    plain, scaled = L.fit_law(n, d, loss), L.fit_law(n, d, loss * 1e5)
    assert scaled.alpha == pytest.approx(plain.alpha, rel=1e-6) and scaled.beta == pytest.approx(plain.beta, rel=1e-6)
    assert scaled.E == pytest.approx(plain.E * 1e5, rel=1e-6) and scaled.objective == pytest.approx(plain.objective, rel=1e-6)
    assert L.optimal_allocation(scaled.theta[None, :], np.array([1e18]))[0] == pytest.approx(
        L.optimal_allocation(plain.theta[None, :], np.array([1e18]))[0], rel=1e-5)
    for fit, factor in ((plain, 1.0), (scaled, 1e5)):  # the bootstrap refits too
        thetas = L.bootstrap_law(n, d, loss * factor, fit, 20, np.random.default_rng(0))
        assert len(thetas) == 20 and np.median(thetas[:, 3]) == pytest.approx(fit.alpha, rel=0.2)


def test_bootstrap_in_chunks_gives_the_same_refits(monkeypatch):
    fit = L.LawFit.from_theta(LAB, objective=0, num_points=9, num_starts=0)
    whole = L.bootstrap_law(*RIDGE, fit, 30, np.random.default_rng(2), num_starts=0)
    monkeypatch.setattr(L, "BOOTSTRAP_CHUNK", 9 * 3)  # 3 resamples a batch
    assert np.array_equal(L.bootstrap_law(*RIDGE, fit, 30, np.random.default_rng(2), num_starts=0), whole)


def test_json_is_strict_and_an_overflowing_coefficient_leaves_its_interval_unbounded(tmp_path, capsys):
    """`scaling fit --json` holds no NaN or Infinity token; A's bootstrap interval, whose refits overflow a float in its
    upper tail, is taken on log A (its upper bound unbounded: null) instead of from the refits that did not overflow."""
    path = tmp_path / "ridge.csv"
    path.write_text("N,D,loss\n" + "".join(f"{n:.0f},{d:.0f},{float(y)!r}\n" for n, d, y in RIDGE.T))
    assert main(["scaling", "fit", str(path), "--bootstrap", "200", "--flops", "1e300", "--json"]) == 0
    out = json.loads(capsys.readouterr().out, parse_constant=lambda c: pytest.fail(f"{c} in the JSON"))
    lo, hi = out["intervals"]["A"]
    assert lo > 0 and hi is None
    thetas = L.bootstrap_law(*RIDGE, L.fit_law(*RIDGE), 200, np.random.default_rng(0))
    assert (thetas[:, 0] > L.MAX_LOG).mean() > 0.025  # more than the interval's upper tail: the refits that used to be dropped


def test_iso_flop_minima_that_disagree_give_no_allocation():
    """Two budgets 1.2x apart whose minima put N_opt at 1e8 and 1e5: an exponent of -38, once reported (and a k_N
    that overflowed into a traceback). No allocation follows, with the reason."""
    from pretrainlab.scaling.isoflop import fit_isoflop

    n = np.array([1e7, 1e8, 1e9, 1e4, 1e5, 1e6])
    d = np.concatenate([1e19 / (6 * n[:3]), 1.2e19 / (6 * n[3:])])
    loss = np.array([2.1, 2.0, 2.1, 2.1, 2.0, 2.1])
    iso = fit_isoflop(n, d, loss, None, 10, np.random.default_rng(0))
    assert iso.a is None and "minima disagree" in iso.reason and iso.to_dict()["k_N"] is None
