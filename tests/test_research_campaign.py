"""Campaigns end to end on tiny CPU budgets: baseline, proposals, decisions, attribution."""

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


def test_auto_without_a_key_says_optuna(corpus_dir, workspace, capsys):
    cid = manage.start(config(corpus_dir, strategy="auto", budget_runs=3, decision="paired"), echo=True)
    assert "strategy auto -> optuna" in capsys.readouterr().out
    assert manage.status(cid)["runs"] == 3


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


def test_transfer_check_and_a_persons_suggestion(corpus_dir, workspace):
    """A person's clearly better change wins at small scale, then must win again at a larger rung."""
    slow = tiny_overrides(corpus_dir) + ["optim.lr=0.0001", "optim.muon_lr=0.0005"]  # a starting recipe with far too low LRs
    cfg = config(corpus_dir, overrides=slow, strategy="manual", budget_runs=10, transfer=["model.n_layer=3"], early_stop=False,
                 decision="paired")
    cid = manage.start(cfg, echo=False)
    assert manage.status(cid)["runs"] == 2  # manual: only the baseline until someone suggests
    exp = manage.suggest(cid, "sane learning rates", ["optim.lr=0.01", "optim.muon_lr=0.03"], "alice")
    manage.resume(cid, echo=False)
    ledger = Ledger()
    (decision,) = [d for d in ledger.list_decisions(experiment_id=exp)]
    assert decision["verdict"] == "keep" and "the gain holds" in decision["rationale"], decision["rationale"]
    assert decision["evidence"]["transfer_rung"] == ["model.n_layer=3"]
    sides = [e for e in ledger.list_experiments(cid) if (e["change"] or {}).get("transfer_of") == exp]
    assert sorted(e["change"]["role"] for e in sides) == ["candidate", "incumbent"]
    assert all(e["change"]["recipe"]["model"]["n_layer"] == 3 for e in sides)
    st = manage.status(cid)
    assert st["incumbent"]["experiment"] == exp and st["incumbent"]["proposer"] == "alice"
    assert st["runs"] == 2 + 2 + 4


def test_clear_losers_are_stopped_early(corpus_dir, workspace):
    """A suggestion that cannot learn (LR ~ 0) is stopped at the half-budget rung: against
    its parent's run on the same seed (the default loop)."""
    cfg = config(corpus_dir, strategy="manual", budget_runs=6, run_budget=f"{1024 * 150}tok", parallel=1)
    cid = manage.start(cfg, echo=False)
    exp = manage.suggest(cid, "no learning at all", ["optim.lr=1e-7", "optim.muon_lr=1e-7"], "carol")
    manage.resume(cid, echo=False)  # 4 runs left: one screen, but not its confirmation (2 groups: 7 runs)
    assert not Ledger().list_decisions(experiment_id=exp)
    assert any("no room to screen it" in n["text"] for n in Ledger().list_notes(experiment_id=exp))
    manage.resume(cid, echo=False, budget_runs=10)
    (decision,) = Ledger().list_decisions(experiment_id=exp)
    assert decision["verdict"] == "discard" and "stopped at the first rung" in decision["rationale"]
    assert decision["evidence"]["rung"]["diff"] > cfg.rung_stop
    (run,) = Ledger().list_runs(experiment=exp, columns=("run_id", "tokens", "status"))
    assert run["tokens"] < 1024 * 150  # it did not burn its whole budget


def test_a_paired_re_test_runs_the_incumbent_on_the_extra_seeds_too(corpus_dir, workspace):
    """A promising "no effect" gets more seeds; under the paired rule the incumbent runs on
    them as well, so the re-test compares seed-matched pairs (a tiny alpha forces the re-test)."""
    slow = tiny_overrides(corpus_dir) + ["optim.lr=0.0001", "optim.muon_lr=0.0005"]
    cfg = config(corpus_dir, overrides=slow, strategy="manual", budget_runs=8, alpha=1e-6, early_stop=False, decision="paired")
    cid = manage.start(cfg, echo=False)
    exp = manage.suggest(cid, "sane learning rates", ["optim.lr=0.01", "optim.muon_lr=0.03"], "alice")
    manage.resume(cid, echo=False)
    ledger = Ledger()
    baseline = manage.status(cid)["experiments"][0]["experiment"]
    seeds = lambda e: sorted(r["seed"] for r in ledger.list_runs(experiment=e, columns=("run_id", "seed")))
    assert seeds(baseline) == seeds(exp) == [0, 1, 2, 3]
    (decision,) = ledger.list_decisions(experiment_id=exp)
    cmp = decision["evidence"]["comparison"]
    assert cmp["paired"] and cmp["n_candidate"] == cmp["n_incumbent"] == 4 and cmp["effect"] < -1
    assert "4 seed-matched pairs" in decision["rationale"]


def test_screens_start_while_the_baseline_runs_and_idle_slot_time_is_explained(corpus_dir, workspace, capsys):
    """3 baseline seeds on 2 slots: the free slot screens a proposal instead of idling, the
    screen is decided only once the baseline is, and the closing note accounts idle time."""
    cid = manage.start(config(corpus_dir, seeds=3, budget_runs=6, early_stop=False, decision="paired"), echo=True)
    ledger = Ledger()
    exps = ledger.list_experiments(cid)
    baseline, proposed = exps[0], exps[1:]
    log = capsys.readouterr().err
    screen_started = log.index(f"{proposed[0]['id']}-s0: started")
    assert screen_started < log.index(f"{baseline['id']}-s2: ok")  # beside the baseline's third seed
    assert screen_started < log.index(f"baseline {baseline['id']}:")  # before the baseline was measured
    decisions = ledger.list_decisions(campaign_id=cid)
    assert decisions[0]["experiment_id"] == baseline["id"]  # the baseline is decided first, the screen after it
    screen = next(d for d in decisions if d["experiment_id"] == proposed[0]["id"])
    assert screen["rationale"] and "incumbent" in screen["rationale"]
    (note,) = [n["text"] for n in ledger.list_notes(campaign_id=cid) if n["text"].startswith("closed")]
    assert "while work was queued" in note and "idle slot-time:" in note and "run budget spent" in note
    assert manage.status(cid)["slots"] == note.split(": ", 1)[1]  # research status shows it, as does the report
    from pretrainlab.research.report import write_report

    assert "Slots: slot utilisation" in write_report(ledger, cid, workspace / "r.html", with_findings=False).read_text()

    # token budgets get a timeout too: 5x the slowest baseline run, scaled by tokens x params, + 120 s
    from pretrainlab.config import apply_overrides
    from pretrainlab.research.campaign import Campaign
    from pretrainlab.research.strategies import RandomStrategy
    from pretrainlab.runners import LocalRunner

    camp = Campaign(ledger, cid, RandomStrategy(), LocalRunner(1), workspace / "w", echo=False)
    assert camp.base.budget.tokens == 8192 and camp.base.budget.seconds == 0  # --run-budget is the only budget
    slowest = max(r["seconds"] for r in camp.results(baseline["id"]).values())
    assert camp.run_timeout(camp.base) == pytest.approx(5 * slowest + 120)
    assert camp.run_timeout(apply_overrides(camp.base, ["budget.tokens=16384"])) == pytest.approx(10 * slowest + 120)
    assert camp.run_timeout(apply_overrides(camp.base, ["budget.seconds=30"])) == 210


def test_resume_with_a_larger_budget_replicates_a_lead_left_inconclusive(corpus_dir, workspace):
    slow = tiny_overrides(corpus_dir) + ["optim.lr=0.0001", "optim.muon_lr=0.0005"]
    cid = manage.start(config(corpus_dir, overrides=slow, strategy="manual", budget_runs=3, early_stop=False, decision="paired"), echo=False)
    exp = manage.suggest(cid, "sane learning rates", ["optim.lr=0.01", "optim.muon_lr=0.03"], "alice")
    manage.resume(cid, echo=False)  # the screen takes the last run: promising, no room to replicate
    ledger = Ledger()
    (first,) = ledger.list_decisions(experiment_id=exp)
    assert first["verdict"] == "inconclusive" and "no room" in first["rationale"] and first["evidence"]["awaiting_budget"]
    with pytest.raises(UserError, match="--parallel"):
        manage.resume(cid, echo=False, parallel=0)  # bad input changes nothing
    assert ledger.get_campaign(cid)["config"]["campaign"]["budget_runs"] == 3
    manage.resume(cid, echo=False, author="bob", budget_runs=4)
    assert ledger.get_campaign(cid)["config"]["campaign"]["budget_runs"] == 4
    assert any(n["author"] == "bob" and "budget_runs 3 -> 4" in n["text"] for n in ledger.list_notes(campaign_id=cid))
    assert any("re-opened" in n["text"] for n in ledger.list_notes(experiment_id=exp))
    runs = ledger.list_runs(experiment=exp)
    assert sorted(r["seed"] for r in runs) == [0, 1]  # the screen's seed kept, one replicate added: nothing repeated
    latest = ledger.list_decisions(experiment_id=exp)[-1]
    assert latest["evidence"]["comparison"]["paired"] and latest["effect"] < 0  # decided by the paired test this time
    st = manage.status(cid)
    assert st["runs"] == 4 and next(e for e in st["experiments"] if e["experiment"] == exp)["verdict"] == latest["verdict"]
    assert st["elapsed_s"] > 0  # the time budget covers every loop of the campaign
    manage.resume(cid, echo=False, budget_runs=20, budget_hours=st["elapsed_s"] / 2 / 3600)
    assert manage.status(cid)["runs"] == 4  # earlier loops already used more than that: nothing starts
