"""Transfer checks predicted by a scaling ladder (`research start --transfer ... --transfer-ladder LADDER`).

When a candidate wins at the campaign's rung, the campaign measures it and the incumbent at
the larger rung (`--transfer`). With a ladder, it first predicts that measurement: the
ladder's runs are fitted (scaling/law.py, with bootstrap refits) and the small-rung gain is
carried to the larger rung as a constant compute multiplier (scaling/transfer.py). The
prediction is kept with the transfer experiments, and the decision and the report show it
beside what was measured.
"""

from __future__ import annotations

import numpy as np

from ..config import Recipe
from ..errors import UserError
from ..recipes import budget_tokens
from ..scaling import law
from ..scaling.transfer import predict_transfer
from .ladder import count_params, find_ladder, ladder_points

BOOTSTRAP = 200  # refits of the ladder's law behind each prediction's interval
MIN_POINTS = 6  # a five-parameter law needs more runs than parameters


def check_ladder(ledger, ref: str, base: Recipe) -> dict:
    """The ladder a campaign's transfer checks will be predicted from, or a UserError now."""
    row = find_ladder(ledger, ref)
    points = ladder_points(ledger, row)
    if len(points) < MIN_POINTS:
        raise UserError(f"ladder {row['id']} has {len(points)} finished runs; predicting transfer needs at least {MIN_POINTS} "
                        f"(`pretrainlab scaling ladder --resume {row['id']}` to finish it)")
    if not budget_tokens(base):
        raise UserError("--transfer-ladder predicts from tokens trained: give the campaign a token budget, e.g. --run-budget 80ktok")
    return row


class TransferPredictor:
    """Fits the ladder once per campaign loop; predicts each transfer check from it."""

    def __init__(self, ledger, ref: str):
        self.row = find_ladder(ledger, ref)
        points = ladder_points(ledger, self.row)
        self.kind = self.row["config"]["ladder"]["params"]
        fit = law.fit_law(points.n, points.d, points.loss)
        boot = law.bootstrap_law(points.n, points.d, points.loss, fit, BOOTSTRAP, np.random.default_rng(0))
        self.thetas = np.vstack([fit.theta[None, :], boot]) if len(boot) else fit.theta[None, :]

    def predict(self, incumbent: Recipe, large: Recipe, incumbent_mean: float, effect: float,
                effect_ci: tuple[float, float] | None = None) -> dict:
        """The check of a gain measured on `incumbent`'s rung, at `large` (the incumbent at the larger rung)."""
        small_d, large_d = budget_tokens(incumbent), budget_tokens(large)
        if not small_d or not large_d:
            return {"effect": None, "note": "no token or FLOP budget: the ladder's law is in tokens", "ladder": self.row["id"]}
        small_nd = (count_params(incumbent, self.kind), small_d)
        large_nd = (count_params(large, self.kind), large_d)
        return {**predict_transfer(self.thetas, small_nd, large_nd, incumbent_mean, effect, effect_ci=effect_ci), "ladder": self.row["id"],
                "params": self.kind}
