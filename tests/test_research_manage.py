"""The campaign's management commands on a ledger (no training): stop, review, suggest and start refuse what cannot
work, on one line, before anything runs."""

import os
import subprocess
import sys

import pytest

from pretrainlab.errors import UserError
from pretrainlab.ledger import Ledger
from pretrainlab.ledger.store import Role
from pretrainlab.research import manage
from pretrainlab.research.campaign import CampaignConfig
from pretrainlab.research.simulate import Landscape, simulate


@pytest.fixture
def done(tmp_path, monkeypatch):
    """A finished (simulated) campaign in the workspace's ledger: (ledger path, campaign id)."""
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    cfg = CampaignConfig(recipe="tiny-cpu", run_budget="8192tok", budget_runs=8, parallel=2, seeds=2, strategy="random")
    out = simulate(cfg, Landscape(seed=0), tmp_path)
    out["ledger"].set_campaign_status(out["campaign_id"], "done")
    return str(tmp_path / "ledger.db"), out["campaign_id"]


def test_stopping_an_ended_campaign_changes_nothing_and_a_lost_loop_is_stopped(done):
    """A stop of a done or stopped campaign put it back to "stopping" for good (no loop was left to finish it)."""
    db, cid = done
    ledger = Ledger(db)
    assert manage.stop(cid, db=db, author="ada") == "done" and ledger.get_campaign(cid)["status"] == "done"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for pid, after in ((dead.pid, "stopped"), (os.getpid(), "stopping")):  # its loop gone (killed), or alive
        row = ledger.get_campaign(cid)
        ledger.set_campaign_config(cid, {**row["config"], "loop": {"pid": pid, "host": os.uname().nodename}})
        ledger.set_campaign_status(cid, "running")
        assert manage.stop(cid, db=db, author="ada") == after and ledger.get_campaign(cid)["status"] == after
    assert manage.stop(cid, db=db) == "stopping"  # asked again while its loop finishes: still stopping


def test_the_baseline_cannot_be_rejected(done):
    """Rejecting the baseline left the campaign with nothing to compare with: every resume ended at once, silently."""
    db, cid = done
    (baseline,) = [e for e in Ledger(db).list_experiments(cid) if e["role"] == Role.BASELINE]
    with pytest.raises(UserError, match="is its campaign's baseline.*cannot be rejected.*research stop"):
        manage.review(baseline["id"], approve=False, author="ada", reason="looks wrong", db=db)
    assert Ledger(db).list_decisions(experiment_id=baseline["id"])[-1]["verdict"] == "keep"


def test_impossible_models_are_refused_before_anything_runs(done, tmp_path):
    """model.n_layer=1e12 was accepted by `research start` and `research suggest`; every run then crashed."""
    db, cid = done
    before = len(Ledger(db).list_experiments(cid))
    with pytest.raises(UserError, match="the change makes the model .*x the base's parameters"):
        manage.suggest(cid, "deeper", ["model.n_layer=1000000"], "ada", db=db)
    assert len(Ledger(db).list_experiments(cid)) == before
    cfg = CampaignConfig(recipe="tiny-cpu", overrides=["model.n_layer=1e12"], run_budget="8192tok", budget_runs=8)
    with pytest.raises(UserError, match="the model has .* parameters .* more than this machine's .* memory"):
        manage._create(cfg, None, str(tmp_path / "other.db"), echo=False, author="ada")
    assert not Ledger(str(tmp_path / "other.db")).list_campaigns()


@pytest.mark.parametrize("budget", ["1e30tok", "1e9h"])
def test_a_run_budget_no_run_could_end_is_refused(budget):
    """--run-budget 1e30tok was accepted: its baseline runs had no time limit and trained forever."""
    from pretrainlab.research.config import run_budget_overrides

    with pytest.raises(UserError, match=f"--run-budget '{budget}' is longer than any run can be.*check its unit"):
        CampaignConfig(recipe="tiny-cpu", run_budget=budget).base_recipe()
    assert run_budget_overrides("100btok")[0] == "budget.tokens=100000000000"  # a large real budget still passes


def test_a_wall_clock_pair_that_trained_unequal_tokens_is_said_to():
    """Under --run-budget 60s a loaded machine trained one seed of the baseline 14% more tokens than the other: the
    difference the screen judged was the machine's. The default budget is tokens; a time budget's decisions say so."""
    from types import SimpleNamespace

    from pretrainlab.recipes import resolve_recipe
    from pretrainlab.research.decide import unequal_work

    runs = {"base": {0: {"tokens": 100_352}}, "cand": {0: {"tokens": 114_688}}, "same": {0: {"tokens": 102_400}}}
    timed = SimpleNamespace(base=resolve_recipe("tiny-cpu", ["budget.seconds=60"]), results=lambda i: runs[i])
    evidence = {}
    said = unequal_work(timed, "base", "cand", 0, evidence)
    assert "100,352 vs 114,688 tokens (+14%)" in said and "token --run-budget" in said and evidence["pair_tokens"] == [100_352, 114_688]
    assert unequal_work(timed, "base", "same", 0, {}) == ""  # within 5%
    tokens = SimpleNamespace(base=resolve_recipe("tiny-cpu", ["budget.seconds=0", "budget.tokens=80000"]), results=lambda i: runs[i])
    assert unequal_work(tokens, "base", "cand", 0, {}) == ""  # a token budget: equal by construction
    assert CampaignConfig().run_budget.endswith("tok")  # the default compares like with like


def test_the_report_says_its_claims_are_about_the_recipe_before_pruning():
    """Leave-one-out pruning handed back the baseline itself while the report's claim (+0.056) and hidden-test figures were
    the confirmed final recipe's, unsaid."""
    from pretrainlab.research.report import confirmation_section

    claim = {"verdict": "inconclusive", "effect": 0.056, "ci_low": -0.1, "ci_high": 0.2, "decider_type": "strategy",
             "evidence": {"stage": "claim", "group": None}}
    final = {"id": "f1", "change": {"confirm": "final", "seeds": [1, 2], "groups": {"optim.lr": {}, "optim.warmdown_frac": {}}},
             "decision": claim}
    pruned = {"id": "p1", "change": {"pruned": ["optim.lr", "optim.warmdown_frac"]}, "decision": None}
    page = "\n".join(confirmation_section({"experiments": [final, pruned]}))
    assert "claims are about the confirmed final recipe (f1)" in page and "drops optim.lr, optim.warmdown_frac" in page
    assert "no claim is its own" in page
    assert "claims are about" not in "\n".join(confirmation_section({"experiments": [final]}))  # nothing pruned: nothing to say
