"""Power-law fits recover known exponents."""

import pytest

from pretrainlab.scaling import fit_power_law, predict


def test_recovers_a_known_law():
    xs = [1e5, 3e5, 1e6, 3e6, 1e7, 3e7]
    ys = [2.0 * x ** -0.3 * 40 + 1.1 for x in xs]
    fit = fit_power_law(xs, ys)
    assert fit["b"] == pytest.approx(0.3, rel=0.02) and fit["c"] == pytest.approx(1.1, abs=0.02)
    assert predict(fit, 1e8) == pytest.approx(80 * 1e8 ** -0.3 + 1.1, rel=0.01)


def test_needs_three_points():
    with pytest.raises(ValueError, match="3 points"):
        fit_power_law([1, 2], [3, 2])
