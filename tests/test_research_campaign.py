"""What a campaign refuses before anything starts. The campaign's loop on real training processes
is tested end to end through the CLI (test_research_cli.py), killed and resumed
(test_research_resume.py, test_campaign_orphans.py) and with hostile patches (test_trust.py); its
bookkeeping (the default screen-and-confirm loop, scheduling, transfer checks, early stops,
re-tests, resumes, idle-time accounting) through the same commands on the simulated runner, in
test_research_campaign_sim.py."""

import pytest
from conftest import tiny_overrides

from pretrainlab.errors import UserError
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
