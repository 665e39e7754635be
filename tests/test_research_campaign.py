"""Campaigns end to end on real runs with tiny CPU budgets: baseline, proposals, decisions,
attribution, with LocalRunner's training processes. The campaign's bookkeeping (scheduling,
transfer checks, early stops, re-tests, resumes, idle-time accounting) is tested through the
same commands on the simulated runner, in test_research_campaign_sim.py."""

import pytest
from conftest import tiny_overrides

from pretrainlab.errors import UserError
from pretrainlab.ledger import Ledger
from pretrainlab.research import manage
from pretrainlab.research.campaign import CampaignConfig


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    monkeypatch.setenv("PRETRAINLAB_WORKSPACE", str(tmp_path))
    monkeypatch.delenv("PRETRAINLAB_DB", raising=False)
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    return tmp_path


def config(corpus_dir, **kw):
    base = dict(recipe="tiny-cpu", overrides=tiny_overrides(corpus_dir), run_budget="8192tok", budget_runs=8, parallel=2, seeds=2,
                strategy="optuna")
    base.update(kw)
    return CampaignConfig(**base)


def test_optuna_campaign_end_to_end(corpus_dir, workspace):
    """The default loop (--decision screen) on real runs: screens, then the confirmation."""
    cid = manage.start(config(corpus_dir, seeds=3, budget_runs=12), echo=False)
    st = manage.status(cid)
    assert st["status"] == "done"
    ledger = Ledger()
    runs = ledger.list_runs(campaign=cid, columns=("run_id", "experiment_id", "seed", "status", "tokens"))
    keys = [(r["experiment_id"], r["seed"]) for r in runs]
    assert len(keys) == len(set(keys))  # nothing repeated
    used = sum(1 if r["status"] == "ok" else r["tokens"] / 8192 for r in runs)  # an early-stopped run counts what it trained
    # the budget, never more; left over at most what one more screen and the ablations of its 2 keys would need
    assert 12 - 2 * (1 + 2) <= used <= 12
    baseline = st["experiments"][0]
    assert baseline["proposer"] == "campaign" and baseline["verdict"] == "keep"
    assert sorted(r["seed"] for r in runs if r["experiment_id"] == baseline["experiment"]) == [0, 1, 2]
    proposed = [e for e in ledger.list_experiments(cid) if e["proposer"] in ("sweep", "optuna")]  # the sweep first, then TPE
    assert proposed and all(r["seed"] == 0 for r in runs if r["experiment_id"] in {e["id"] for e in proposed})  # screens: seed 0
    decisions = ledger.list_decisions(campaign_id=cid)
    assert all(d["decided_by"].startswith("pretrainlab stats") and d["rationale"] for d in decisions)
    adopted = [d for d in decisions if d["verdict"] == "keep" and d["evidence"].get("stage") == "screen"]
    claims = [d for d in decisions if d["evidence"].get("stage") == "claim"]
    assert bool(adopted) == bool(claims)  # whatever was adopted is confirmed on the fresh seeds 1 and 2
    confirm = {e["id"] for e in ledger.list_experiments(cid) if (e["change"] or {}).get("confirm")}
    assert all(r["seed"] in (1, 2) for r in runs if r["experiment_id"] in confirm)
    # the closing note, from LocalRunner's wall-clock slot accounting
    (note,) = [n["text"] for n in ledger.list_notes(campaign_id=cid) if n["text"].startswith("closed")]
    assert "while work was queued" in note and "idle slot-time:" in note and st["slots"] == note.split(": ", 1)[1]


def test_bad_input_fails_before_anything_starts(corpus_dir, workspace):
    with pytest.raises(UserError, match="--goal"):
        config(corpus_dir, goal="accuracy")
    with pytest.raises(UserError, match="--budget-runs"):
        config(corpus_dir, budget_runs=1)
    with pytest.raises(UserError, match="--run-budget"):
        config(corpus_dir, run_budget="soon")
    with pytest.raises(UserError, match="ANTHROPIC_API_KEY"):
        manage.start(config(corpus_dir, strategy="claude"), echo=False)
    with pytest.raises(UserError, match="does not answer"):
        manage.start(config(corpus_dir, strategy="openai", llm_model="m", llm_base_url="http://127.0.0.1:9/v1"), echo=False)
    assert not (workspace / "runs").exists()
