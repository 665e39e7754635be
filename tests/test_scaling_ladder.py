"""One tiny scaling ladder, end to end: real training runs through the local runner (sandboxed,
scored by the lab), registered in the ledger under the ladder, fitted, and read back by
`scaling fit --ladder` and the LLM tool. The ladder's plan and its bad input need no training."""

import json

import pytest
from conftest import tiny_overrides

from pretrainlab import api
from pretrainlab.cli import main
from pretrainlab.errors import UserError
from pretrainlab.research.config import LadderConfig
from pretrainlab.research.ladder import parse_count, plan


def test_the_plan_is_a_grid_or_an_iso_flop_design():
    grid = plan(LadderConfig(sizes=["n_layer=2,3,4"], tokens=["20k,40k", "80k"], seeds=2))
    assert len(grid) == 3 * 3 * 2 and len({c.key for c in grid}) == len(grid)
    assert {c.tokens for c in grid} == {20_000, 40_000, 80_000}
    assert all("model.n_layer=" in c.size and "budget.tokens=" + str(c.tokens) in c.overrides for c in grid)
    assert [c.params * c.tokens for c in grid] == sorted(c.params * c.tokens for c in grid)  # smallest compute first
    iso = plan(LadderConfig(sizes=["n_embd=64,96,128", "n_layer=2,3,4"], flops=["1e11", "4e11"]))
    for c in iso:
        assert c.flops_budget in (1e11, 4e11) and abs(6 * c.params * c.tokens / c.flops_budget - 1) < 0.2  # whole batches of 2,048
    assert {c.size for c in iso} == {"model.n_embd=64, model.n_layer=2", "model.n_embd=96, model.n_layer=3",
                                     "model.n_embd=128, model.n_layer=4"}
    assert parse_count("1.5M") == 1_500_000 and parse_count("4e4tok") == 40_000


@pytest.mark.parametrize("kwargs, fragment", [
    ({"sizes": ["n_layer=2,3"]}, "2 model size(s) (model.n_layer=2; model.n_layer=3): the law needs at least 3"),
    ({"sizes": ["n_head=2,4,8"]}, "have the same parameter count"),
    ({"sizes": ["n_layer=2,3,4", "n_embd=64,96"]}, "zipped specs need the same number each"),
    ({"sizes": ["model.n_layers=2,3,4"]}, "did you mean 'model.n_layer'"),
    ({"tokens": ["20k", "20k", "40k"]}, "2 distinct budget(s)"),
    ({"tokens": ["lots"]}, "--tokens 'lots': give a count"),
    ({"tokens": ["20k"], "flops": ["1e12"]}, "not both"),
    ({"flops": ["1e12", "1e12"]}, "an iso-FLOP ladder needs at least 2"),
    ({"flops": ["2e9", "4e9"]}, "in whole batches of 2,048"),
])
def test_bad_ladders_fail_before_anything_runs(kwargs, fragment):
    with pytest.raises(UserError) as e:
        plan(LadderConfig(**kwargs))
    assert fragment in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("argv", [
    ["scaling", "ladder", "--sizes", "n_layer=2,3"],
    ["scaling", "ladder", "--tokens", "10k,20k", "--flops", "1e12"],
    ["scaling", "fit", "no-such-points.csv"],
    ["scaling", "ladder", "--resume", "abc", "--seeds", "2"],
])
def test_bad_scaling_input_is_reported_before_torch_is_imported(argv, tmp_path):
    import os
    import subprocess
    import sys

    probe = "import sys; from pretrainlab.cli import main; rc = main(sys.argv[1:]); print(rc, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True, cwd=tmp_path,
                         env={**os.environ, "PRETRAINLAB_WORKSPACE": str(tmp_path)})
    assert out.stdout.split() == ["2", "False"], (out.stdout, out.stderr[-1500:])
    assert out.stderr.startswith("error: ") and out.stderr.count("\n") == 1


def test_a_tiny_iso_flop_ladder_trains_registers_and_fits(corpus_dir, tmp_path, capsys):
    # 3 widths x 2 compute budgets = 6 real runs of a few thousand tokens each, 2 at a time
    done = api.scaling_ladder("tiny-cpu", tiny_overrides(corpus_dir), sizes=["n_embd=32,48,64"], flops=["2e9", "4e9"], parallel=2,
                              num_bootstrap=30, budgets=["1e10"], plot=tmp_path / "fit.html", name="tiny ladder", echo=True)
    progress = capsys.readouterr().err
    assert "6/6 model.n_embd=" in progress and "closed done" in progress
    fit = done["fit"]
    assert fit is not None and fit["data"]["num_points"] == 6 and fit["data"]["loss"] == "val_bpb (bits per byte)"
    assert fit["allocation"][0]["C"] == 1e10 and (tmp_path / "fit.html").exists()
    assert [b["C"] for b in fit["isoflop"]["budgets"]] == [2e9, 4e9]  # grouped by the design's budgets

    runs = api.list_runs(campaign=done["ladder"])
    assert len(runs) == 6 and all(r["status"] == "ok" and r["val_bpb"] > 0 for r in runs)
    assert main(["scaling", "fit", "--ladder", "tiny ladder", "--bootstrap", "0", "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["fit"]["objective"] == pytest.approx(fit["fit"]["objective"], rel=1e-6)
    assert main(["research", "status", done["ladder"]]) == 2
    assert "is a scaling ladder" in capsys.readouterr().err
    resumed = api.scaling_ladder(resume=done["ladder"], parallel=1, num_bootstrap=0)  # nothing left to train: the fit again
    assert resumed["ladder"] == done["ladder"] and "6 of 6 runs already registered; 0 to train" in capsys.readouterr().err
    assert resumed["fit"]["fit"]["objective"] == pytest.approx(fit["fit"]["objective"], rel=1e-6)

    from pretrainlab.ledger import Ledger
    from pretrainlab.recipes import get_recipe
    from pretrainlab.research import tool_inputs as inputs
    from pretrainlab.research.tools import lab_tools

    with Ledger() as lg:
        tool = {t.name: t for t in lab_tools(lg, {}, get_recipe("tiny-cpu"))}["fit_scaling_law"]
        out = tool.run(inputs.FitScalingLaw(ladder=done["ladder"], flops=[1e10]))
    assert out["data"]["num_points"] == 6 and out["compute_optimal"][0]["C"] == 1e10

    # the ladder predicts a campaign's transfer check before it is measured (the campaign's runs simulated: the
    # prediction and the report are what is under test here; test_research_campaign_sim covers the check itself)
    from pretrainlab.research.campaign import CampaignConfig
    from pretrainlab.research.report import campaign_record, render_report
    from pretrainlab.research.simulate import Landscape, simulate
    from pretrainlab.research.strategies import ManualStrategy, Proposal

    cfg = CampaignConfig(recipe="tiny-cpu", overrides=tiny_overrides(corpus_dir) + ["optim.lr=0.0001", "optim.muon_lr=0.0005"],
                         run_budget="8192tok", budget_runs=10, parallel=2, seeds=2, strategy="manual", decision="paired",
                         early_stop=False, transfer=["model.n_layer=3"], transfer_ladder="tiny ladder")
    strategy = ManualStrategy()
    strategy.queue = [Proposal("config", "sane learning rates", "", "alice", values={"optim.lr": 0.01, "optim.muon_lr": 0.03})]
    with Ledger() as lg:
        sim = simulate(cfg, Landscape(seed=0), tmp_path / "sim", strategy=strategy, ledger=lg)
        (checked,) = [d for d in lg.list_decisions(campaign_id=sim["campaign_id"]) if (d["evidence"] or {}).get("transfer")]
        record = campaign_record(lg, sim["campaign_id"])
    prediction = checked["evidence"]["prediction"]
    assert prediction["ladder"] == done["ladder"] and prediction["resamples"] > 0
    assert prediction["large"]["N"] > prediction["small"]["N"] and prediction["small"]["D"] == 8192
    assert prediction["effect_small"] == checked["evidence"]["small_scale"]["effect"]
    assert "the ladder's law" in checked["rationale"]
    page = render_report(record)
    assert "<h2>Transfer checks</h2>" in page and "predicted at the larger rung" in page
    if prediction["effect"] is not None:  # the law falls with N and D: a gain carried as a compute multiplier shrinks
        assert abs(prediction["effect"]) <= abs(prediction["effect_small"]) + 1e-12
        from pretrainlab.scaling.transfer import prediction_interval

        t = checked["evidence"]["transfer"]
        lo, hi = prediction_interval(prediction, (t["ci_low"], t["ci_high"]))  # the law's, with both rungs' noise
        assert ("inside the interval" in checked["rationale"]) == (lo <= t["effect"] <= hi)


def test_transfer_ladder_needs_a_transfer_rung_and_an_existing_ladder(tmp_path, monkeypatch):
    from pretrainlab.research import manage
    from pretrainlab.research.campaign import CampaignConfig

    with pytest.raises(UserError, match="add the larger rung with --transfer"):
        CampaignConfig(recipe="tiny-cpu", decision="paired", transfer_ladder="L")
    monkeypatch.setenv("PRETRAINLAB_WORKSPACE", str(tmp_path))
    with pytest.raises(UserError, match="no ladder 'nope'"):
        manage.start(CampaignConfig(recipe="tiny-cpu", decision="paired", transfer=["model.n_layer=6"], transfer_ladder="nope"), echo=False)
