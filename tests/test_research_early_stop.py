"""Successive-halving rungs: evaluation at budget shares; only clear losers are stopped."""

from conftest import tiny_overrides

from pretrainlab import api
from pretrainlab.research.early_stop import eval_curve, rung_reference, should_stop


def test_runs_evaluate_at_budget_shares(corpus_dir, tmp_path):
    run, summary = api.train_run("tiny-cpu", tiny_overrides(corpus_dir, **{"budget.tokens": 1024 * 40, "train.eval_every_frac": 0.25}),
                                 tmp_path / "r", echo=False)
    curve = eval_curve(run, 0.25)
    assert sorted(curve) == [1, 2, 3, 4]  # 25%, 50%, 75% and the final evaluation
    assert curve[4] == summary["val_bpb"]
    assert curve[1] > curve[4]


def test_only_clear_losers_are_stopped():
    ref = rung_reference([{1: 3.00, 2: 2.80}, {1: 3.02, 2: 2.82}, {1: 2.98, 2: 2.78}])
    assert ref[1][0 ] == 3.00 and round(ref[1][1], 3) == 0.02
    assert should_stop({1: 3.05}, ref) == (False, "")  # within noise: keep going
    stop, why = should_stop({1: 3.01, 2: 3.20}, ref)
    assert stop and "rung 2" in why
    assert should_stop({}, ref) == (False, "")
