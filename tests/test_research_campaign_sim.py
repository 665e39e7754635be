"""Campaign bookkeeping through the research commands (manage.start / suggest / resume /
status), on the simulated runner (research/simulate.py) instead of training processes:
scheduling, decisions, transfer checks, early stops, re-tests, resumes with a larger budget
and idle-time accounting, each in well under a second. test_research_campaign.py keeps the
campaigns on real runs."""

import os
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest

from pretrainlab.errors import UserError
from pretrainlab.ledger import Ledger
from pretrainlab.ledger.store import Phase, Role
from pretrainlab.rundir import read_summary
from pretrainlab.research import manage
from pretrainlab.research.campaign import Campaign, CampaignConfig
from pretrainlab.research.simulate import Landscape, SimulatedRunner
from pretrainlab.runners.base import OVERHEAD

SLOW_LR = ["optim.lr=0.0001", "optim.muon_lr=0.0005"]  # a starting recipe with far too low LRs
SANE_LR = ["optim.lr=0.01", "optim.muon_lr=0.03"]


class Clock:
    """One virtual timeline for every loop's runner; the campaign reads its clock through its
    runner (its elapsed time, which --budget-hours caps, and the closing slot-time)."""

    now: float = 0.0

    def time(self) -> float:
        return self.now


class Runner(SimulatedRunner):
    """The simulated runner as `research start/resume` get it: on the shared clock, with idle
    slot-time kept by the reason the campaign gives (LocalRunner's accounting, tested in
    test_runners_local.py); a run takes `run_s` virtual seconds times `pace(job key)`."""

    sandbox = SimpleNamespace(active=True, reason="in process")  # nothing to sandbox: no experiment process runs

    def __init__(self, clock: Clock, landscape: Landscape, num_slots: int, pace=lambda key: 1.0):
        start, self.clock = clock.now, clock
        super().__init__(landscape, num_slots)
        self.now = self.created = self.last_submit = start
        self.pace, self.reason = pace, OVERHEAD

    @property
    def now(self) -> float:
        return self.clock.now

    @now.setter
    def now(self, t: float) -> None:
        self.clock.now = t

    def submit(self, job) -> None:
        super().submit(job)
        run = self._running[job.key]
        run.ends_at = run.started_at + self.pace(job.key) * self.run_s
        self.reason = OVERHEAD  # until the campaign says why any remaining slot stays free

    def poll(self):
        done = super().poll()
        if done:
            self.reason = OVERHEAD  # a freed slot waits on the campaign's bookkeeping
        return done

    def idle_because(self, reason: str) -> None:
        self.reason = reason

    def sleep(self, seconds: float) -> None:
        before = self.idle.get(OVERHEAD, 0.0)
        super().sleep(seconds)  # counts the free slots' time as OVERHEAD
        added = self.idle.get(OVERHEAD, 0.0) - before
        if added and self.reason != OVERHEAD:
            self.idle[OVERHEAD] = before
            self.idle[self.reason] = self.idle.get(self.reason, 0.0) + added


@pytest.fixture
def sim(monkeypatch):
    """`research start/resume` on the simulated runner: returns the settings a test may
    change (the landscape, the pace of runs) and the runners each loop used."""
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    clock = Clock()
    state = SimpleNamespace(landscape=Landscape(seed=0), pace=lambda key: 1.0, runners=[])

    def make_runner(cfg, workdir):
        runner = Runner(clock, state.landscape, cfg.parallel, state.pace)
        state.runners.append(runner)
        return runner

    monkeypatch.setattr(manage, "make_runner", make_runner)
    monkeypatch.setattr(Campaign, "record_hidden_test", lambda self: None)  # simulated runs have no weights to score
    return state


def config(**kw):
    base = dict(recipe="tiny-cpu", run_budget="8192tok", budget_runs=8, parallel=2, seeds=2, strategy="optuna")
    base.update(kw)
    return CampaignConfig(**base)


def test_the_default_loop_with_optuna_screens_then_confirms(sim):
    """The default loop (--decision screen, --strategy optuna): the baseline on 3 seeds, screens on
    seed 0 with early stops at the rung, then the confirmation of what was adopted on seeds 1 and 2."""
    cid = manage.start(config(seeds=3, budget_runs=12), echo=False)
    st = manage.status(cid)
    assert st["status"] == "done"
    ledger = Ledger()
    runs = ledger.list_runs(campaign=cid, columns=("run_id", "experiment_id", "seed", "status", "tokens"))
    keys = [(r["experiment_id"], r["seed"]) for r in runs]
    assert len(keys) == len(set(keys))  # nothing repeated
    used = sum(1 if r["status"] == "ok" else r["tokens"] / 8192 for r in runs)  # an early-stopped run counts what it trained
    # the budget, never more; left over at most what one more screen and the ablations of its 2 keys would need
    assert 12 - 2 * (1 + 2) <= used <= 12
    assert st["compute_used"] == pytest.approx(used, abs=0.01)  # what `research status` shows against the budget
    baseline = st["experiments"][0]
    assert baseline["proposer"] == "campaign" and baseline["verdict"] == "keep"
    assert sorted(r["seed"] for r in runs if r["experiment_id"] == baseline["experiment"]) == [0, 1, 2]
    proposed = [e for e in ledger.list_experiments(cid) if e["proposer"] in ("sweep", "optuna")]  # the sweep first, then TPE
    assert proposed and all(r["seed"] == 0 for r in runs if r["experiment_id"] in {e["id"] for e in proposed})  # screens: seed 0
    decisions = ledger.list_decisions(campaign_id=cid)
    assert all(d["decided_by"].startswith("pretrainlab stats") and d["rationale"] for d in decisions)
    adopted = [d for d in decisions if d["verdict"] == "keep" and d["evidence"].get("stage") == "screen"]
    claims = [d for d in decisions if d["evidence"].get("stage") == "claim"]
    assert adopted and len(claims) == 1  # what was adopted is confirmed on the fresh seeds 1 and 2
    assert any(r["status"] == "preempted" and r["tokens"] < 8192 for r in runs)  # a clear loser stopped at its rung
    stopped = [ledger.get_run(r["run_id"])["run_dir"] for r in runs if r["status"] == "preempted"]
    assert all((read_summary(d) or {}).get("stopped_by", "").startswith("early stopping") for d in stopped)  # for the doctor
    confirm = {e["id"] for e in ledger.list_experiments(cid) if (e["change"] or {}).get("confirm")}
    assert all(r["seed"] in (1, 2) for r in runs if r["experiment_id"] in confirm)
    # the closing note, from the runner's slot accounting
    (note,) = [n["text"] for n in ledger.list_notes(campaign_id=cid) if n["text"].startswith("closed")]
    assert "while work was queued" in note and "idle slot-time:" in note and st["slots"] == note.split(": ", 1)[1]


def test_auto_without_a_key_says_optuna(sim, capsys):
    cid = manage.start(config(strategy="auto", budget_runs=3, decision="paired"), echo=True)
    assert "strategy auto -> optuna" in capsys.readouterr().out
    assert manage.status(cid)["runs"] == 3
    proposed = manage.status(cid)["experiments"][1:]
    assert proposed and {e["proposer"] for e in proposed} == {"optuna"}  # and optuna proposed what ran after the baseline


def test_transfer_check_and_a_persons_suggestion(sim):
    """A person's clearly better change wins at small scale, then must win again at a larger rung."""
    cfg = config(overrides=SLOW_LR, strategy="manual", budget_runs=10, transfer=["model.n_layer=3"], early_stop=False, decision="paired")
    cid = manage.start(cfg, echo=False)
    assert manage.status(cid)["runs"] == 2  # manual: only the baseline until someone suggests
    exp = manage.suggest(cid, "sane learning rates", SANE_LR, "alice")
    manage.resume(cid, echo=False)
    ledger = Ledger()
    (decision,) = [d for d in ledger.list_decisions(experiment_id=exp)]
    assert decision["verdict"] == "keep" and "the gain holds" in decision["rationale"], decision["rationale"]
    assert decision["evidence"]["transfer_rung"] == ["model.n_layer=3"]
    sides = [e for e in ledger.list_experiments(cid) if (e["change"] or {}).get("transfer_of") == exp]
    assert sorted(e["change"]["role"] for e in sides) == ["candidate", "incumbent"]
    assert all(e["change"]["recipe"]["model"]["n_layer"] == 3 for e in sides)
    assert all(len(ledger.list_runs(experiment=e["id"], columns=("run_id",))) == 2 for e in sides)  # both sides ran, 2 seeds each
    st = manage.status(cid)
    assert st["incumbent"]["experiment"] == exp and st["incumbent"]["proposer"] == "alice"
    assert st["runs"] == 2 + 1 + 3 + 4  # the baseline (and its third seed), the screen and 2 fresh seeds, the transfer rung


class Transfers(Landscape):
    """Learning rates matter only at the tiny-cpu depth; at 3 layers the slow ones are better."""

    def value(self, recipe, seed, rung=False):
        v = super().value(recipe, seed, rung)
        return v if recipe.model.n_layer != 3 else 2 * self.base_value - v


def test_a_gain_that_does_not_hold_at_the_larger_rung_is_discarded(sim):
    """The same campaign in a landscape where the learning rates that help the small model
    hurt the transfer rung's deeper one: the small-scale win is not kept."""
    sim.landscape = Transfers(seed=0)
    cfg = config(overrides=SLOW_LR, strategy="manual", budget_runs=10, transfer=["model.n_layer=3"], early_stop=False, decision="paired")
    cid = manage.start(cfg, echo=False)
    exp = manage.suggest(cid, "sane learning rates", SANE_LR, "alice")
    manage.resume(cid, echo=False)
    (decision,) = Ledger().list_decisions(experiment_id=exp)
    assert decision["verdict"] == "discard" and "the gain does not hold at scale" in decision["rationale"], decision["rationale"]
    assert decision["evidence"]["small_scale"]["effect"] < 0  # it did win at small scale
    assert manage.status(cid)["incumbent"]["proposer"] == "campaign"  # the baseline stays the incumbent


def test_clear_losers_are_stopped_early(sim):
    """A suggestion that cannot learn (LR ~ 0) is stopped at the half-budget rung: against
    its parent's run on the same seed (the default loop)."""
    cfg = config(strategy="manual", budget_runs=6, run_budget=f"{1024 * 150}tok", parallel=1)
    cid = manage.start(cfg, echo=False)
    exp = manage.suggest(cid, "no learning at all", ["optim.lr=1e-7", "optim.muon_lr=1e-7"], "carol")
    manage.resume(cid, echo=False)  # 4 runs left: one screen, but not its confirmation (2 groups: 7 runs)
    assert not Ledger().list_decisions(experiment_id=exp)
    assert any("no room to screen it" in n["text"] for n in Ledger().list_notes(experiment_id=exp))
    assert manage.status(cid)["runs"] == 2
    manage.resume(cid, echo=False, budget_runs=10)
    (decision,) = Ledger().list_decisions(experiment_id=exp)
    assert decision["verdict"] == "discard" and "stopped at the first rung" in decision["rationale"]
    assert decision["evidence"]["rung"]["diff"] > cfg.rung_stop
    (run,) = Ledger().list_runs(experiment=exp, columns=("run_id", "tokens", "status"))
    assert run["tokens"] < 1024 * 150  # it did not burn its whole budget


def test_a_paired_re_test_runs_the_incumbent_on_the_extra_seeds_too(sim):
    """A promising "no effect" gets more seeds; under the paired rule the incumbent runs on
    them as well, so the re-test compares seed-matched pairs (a tiny alpha forces the re-test)."""
    cfg = config(overrides=SLOW_LR, strategy="manual", budget_runs=10, alpha=1e-6, early_stop=False, decision="paired")
    cid = manage.start(cfg, echo=False)
    exp = manage.suggest(cid, "sane learning rates", SANE_LR, "alice")
    manage.resume(cid, echo=False)
    ledger = Ledger()
    baseline = manage.status(cid)["experiments"][0]["experiment"]
    seeds = lambda e: sorted(r["seed"] for r in ledger.list_runs(experiment=e, columns=("run_id", "seed")))
    assert seeds(baseline) == seeds(exp) == [0, 1, 2, 3, 4]  # the screen on 0, then 1-2 and 3-4: tested on 1-4
    (decision,) = ledger.list_decisions(experiment_id=exp)
    cmp = decision["evidence"]["comparison"]
    assert cmp["paired"] and cmp["n_candidate"] == cmp["n_incumbent"] == 4 and cmp["effect"] < -1
    assert "4 seed-matched pairs" in decision["rationale"]


def test_screens_start_while_the_baseline_runs_and_idle_slot_time_is_explained(sim, capsys, tmp_path):
    """3 baseline seeds on 2 slots: the free slot screens a proposal instead of idling, the
    screen is decided only once the baseline is (here the screen is the faster run and ends
    first), and the closing note accounts idle time."""
    first = []  # the experiment of the first run: the baseline

    def pace(key):  # the baseline's runs are the slower ones: seed s takes 1.5 + 0.1 s times a screen's time
        exp_id, seed = key.rsplit("-s", 1)
        first[:] = first or [exp_id]
        return 1.5 + 0.1 * int(seed) if exp_id == first[0] else 1.0

    sim.pace = pace
    cid = manage.start(config(seeds=3, budget_runs=6, early_stop=False, decision="paired"), echo=True)
    ledger = Ledger()
    exps = ledger.list_experiments(cid)
    baseline, proposed = exps[0], exps[1:]
    assert first == [baseline["id"]]
    log = capsys.readouterr().err
    screen_started = log.index(f"{proposed[0]['id']}-s0: started")
    assert screen_started < log.index(f"{baseline['id']}-s2: ok")  # beside the baseline's third seed
    assert screen_started < log.index(f"baseline {baseline['id']}:")  # before the baseline was measured
    assert log.index(f"{proposed[0]['id']}-s0: ok") < log.index(f"{baseline['id']}-s2: ok")  # and it finished first
    decisions = ledger.list_decisions(campaign_id=cid)
    assert decisions[0]["experiment_id"] == baseline["id"]  # the baseline is decided first, the screen after it
    screen = next(d for d in decisions if d["experiment_id"] == proposed[0]["id"])
    assert screen["rationale"] and "incumbent" in screen["rationale"]
    (note,) = [n["text"] for n in ledger.list_notes(campaign_id=cid) if n["text"].startswith("closed")]
    assert "while work was queued" in note and "idle slot-time:" in note and "run budget spent" in note
    assert manage.status(cid)["slots"] == note.split(": ", 1)[1]  # research status shows it, as does the report
    closing = manage.status(cid)["closing"]  # and as data: no prose parsed back into numbers
    assert closing["status"] == "done" and closing["slots"] == 2 and 0 < closing["utilisation"] <= 1 and "run budget spent" in closing["idle_s"]
    from pretrainlab.research.report import write_report

    assert "Slots: slot utilisation" in write_report(ledger, cid, tmp_path / "r.html", with_findings=False).read_text()

    # token budgets get a timeout too: 5x the slowest baseline run, scaled by tokens x params, + 120 s
    from pretrainlab.config import apply_overrides
    from pretrainlab.research.strategies import RandomStrategy

    camp = Campaign(ledger, cid, RandomStrategy(), SimulatedRunner(sim.landscape), tmp_path / "w", echo=False)
    from pretrainlab.recipes import budget_tokens, estimate_flops_per_token

    # --run-budget is the only budget: 8192 tokens of the base recipe's FLOPs (equal compute for every run)
    assert camp.base.budget.seconds == 0 and camp.base.budget.tokens == 0 and budget_tokens(camp.base) == 8192
    assert camp.base.budget.flops == 8192 * estimate_flops_per_token(camp.base)
    slowest = max(r["seconds"] for r in camp.results(baseline["id"]).values())
    assert slowest == pytest.approx(1.7 * sim.runners[0].run_s)  # seed 2's
    assert camp.run_timeout(camp.base) == pytest.approx(5 * slowest + 120)
    assert camp.run_timeout(apply_overrides(camp.base, [f"budget.flops={2 * camp.base.budget.flops}"])) == pytest.approx(10 * slowest + 120)
    assert camp.run_timeout(apply_overrides(camp.base, ["budget.tokens=4096"])) == pytest.approx(5 * slowest + 120)  # (at least 5x)
    assert camp.run_timeout(apply_overrides(camp.base, ["budget.seconds=30"])) == 210


def test_resume_with_a_larger_budget_replicates_a_lead_left_inconclusive(sim):
    cid = manage.start(config(overrides=SLOW_LR, strategy="manual", budget_runs=3, early_stop=False, decision="paired"), echo=False)
    exp = manage.suggest(cid, "sane learning rates", SANE_LR, "alice")
    manage.resume(cid, echo=False)  # the screen takes the last run: promising, no room to replicate
    ledger = Ledger()
    (first,) = ledger.list_decisions(experiment_id=exp)
    assert first["verdict"] == "inconclusive" and "no room" in first["rationale"] and first["evidence"]["awaiting_budget"]
    with pytest.raises(UserError, match="--parallel"):
        manage.resume(cid, echo=False, parallel=0)  # bad input changes nothing
    assert ledger.get_campaign(cid)["config"]["campaign"]["budget_runs"] == 3
    manage.resume(cid, echo=False, author="bob", budget_runs=6)
    assert ledger.get_campaign(cid)["config"]["campaign"]["budget_runs"] == 6
    assert any(n["author"] == "bob" and "budget_runs 3 -> 6" in n["text"] for n in ledger.list_notes(campaign_id=cid))
    assert any("re-opened" in n["text"] for n in ledger.list_notes(experiment_id=exp))
    runs = ledger.list_runs(experiment=exp)
    assert sorted(r["seed"] for r in runs) == [0, 1, 2]  # the screen's seed kept, 2 fresh replicates added: nothing repeated
    latest = ledger.list_decisions(experiment_id=exp)[-1]
    assert latest["evidence"]["comparison"]["paired"] and latest["effect"] < 0  # decided by the paired test this time
    st = manage.status(cid)
    assert st["runs"] == 6 and next(e for e in st["experiments"] if e["experiment"] == exp)["verdict"] == latest["verdict"]
    assert st["elapsed_s"] > 0  # the time budget covers every loop of the campaign
    manage.suggest(cid, "a bit more Muon LR", ["optim.muon_lr=0.04"], "bob")  # work that would start if time allowed
    manage.resume(cid, echo=False, budget_runs=20, budget_hours=st["elapsed_s"] / 2 / 3600)
    assert manage.status(cid)["runs"] == 6  # earlier loops already used more than that: nothing starts


class SlowScoring(SimulatedRunner):
    """The first `times` finishes of run `key` come back as a timeout after training ended:
    the trainer's summary says ok and its model is saved, but the lab has no score yet (a
    scorer that ran past the run's time limit on a loaded machine)."""

    def __init__(self, landscape, num_slots, key_of, times, status="timeout"):
        super().__init__(landscape, num_slots)
        self.key_of, self.times, self.timed_out, self.status = key_of, times, [], status

    def poll(self):
        done = super().poll()
        for i, r in enumerate(done):
            if r.status == "ok" and self.key_of(r.job.key) and self.timed_out.count(r.job.key) < self.times:
                self.timed_out.append(r.job.key)
                Path(r.job.score_path).unlink()  # the lab never finished scoring it
                (r.job.out_dir / "model.pt").write_bytes(b"weights")
                done[i] = replace(r, status=self.status)
        return done


class KilledRun(SimulatedRunner):
    """The first `times` finishes of run `key` come back killed by SIGKILL before the trainer wrote its summary (the
    OOM killer, or a person), as a real job reports it."""

    def __init__(self, landscape, num_slots, key_of, times):
        super().__init__(landscape, num_slots)
        self.key_of, self.times, self.killed = key_of, times, []

    def poll(self):
        done = super().poll()
        for i, r in enumerate(done):
            if self.key_of(r.job.key) and self.killed.count(r.job.key) < self.times:
                self.killed.append(r.job.key)
                done[i] = replace(r, status="crashed", summary=None, returncode=-9)
        return done


@pytest.mark.parametrize("times", [1, 2])
def test_a_run_killed_from_outside_is_resumed_once(tmp_path, times):
    """A killed baseline seed 0 was never run again: every screen against it was discarded for want of a reference."""
    from pretrainlab.research.simulate import simulate

    cfg = config(decision="paired", budget_runs=6, early_stop=False)
    runner = KilledRun(Landscape(seed=0), cfg.parallel, lambda key: key == runner.submitted[0], times)
    out = simulate(cfg, Landscape(seed=0), tmp_path, runner=runner)
    ledger, cid = out["ledger"], out["campaign_id"]
    key = runner.killed[0]
    assert runner.submitted.count(key) == 2  # killed, then resumed once, never a third time
    notes = [n["text"] for n in ledger.list_notes(experiment_id=key.split("-s")[0])]
    assert any("was killed (exit -9) before it finished: resuming it" in n for n in notes)
    rows = [r for r in ledger.list_runs(campaign=cid, limit=0, columns=("run_id", "run_dir", "status")) if r["run_dir"].endswith(key)]
    if times == 1:
        assert [r["status"] for r in rows] == ["ok"]  # the second try finished: the baseline has its seed 0
    else:
        assert rows == [] and any("ended crashed" in n for n in notes)  # said why, and not retried forever
    # a loop started again (research resume) knows the run had its second try: no third one
    again = Campaign(ledger, cid, out["campaign"].strategy, runner, tmp_path / "again", echo=False)
    killed = SimpleNamespace(job=SimpleNamespace(key=key), status="crashed", summary=None, returncode=-9)
    assert key in again.retried and not again.killed_once(killed)


@pytest.mark.parametrize("times", [1, 2])
@pytest.mark.parametrize("status", ["timeout", "crashed"])  # crashed: its job, or its scoring worker, killed from outside
def test_a_run_whose_scoring_timed_out_is_scored_again_once(tmp_path, times, status):
    from pretrainlab.research.simulate import simulate

    cfg = config(decision="paired", budget_runs=6, early_stop=False)
    # the baseline's second seed (the baseline is the first experiment submitted)
    runner = SlowScoring(Landscape(seed=0), cfg.parallel, lambda key: key == runner.submitted[0].rsplit("-s", 1)[0] + "-s1", times,
                         status)
    out = simulate(cfg, Landscape(seed=0), tmp_path, runner=runner)
    ledger, cid = out["ledger"], out["campaign_id"]
    key = runner.timed_out[0]
    assert runner.submitted.count(key) == 2  # trained once, then one scoring-only job (resume), never a third
    notes = [n["text"] for n in ledger.list_notes(experiment_id=key.split("-s")[0])]
    assert any("scoring it again from its saved model" in n for n in notes)
    (row,) = [r for r in ledger.list_runs(campaign=cid, limit=0, columns=("run_id", "run_dir", "status")) if r["run_dir"].endswith(key)]
    assert key in Campaign(ledger, cid, out["campaign"].strategy, runner, tmp_path / "again", echo=False).rescored  # kept
    if times == 1:
        assert row["status"] == "ok"  # scored the second time: nothing lost
    else:
        assert row["status"] == "unscored" and any(f"ended {status}" in n for n in notes)  # said why, and not retried forever
        assert ledger.get_campaign(cid)["status"] == "done"  # a baseline left with one usable seed does not stop the loop


def test_a_second_loop_of_a_live_campaign_is_refused(tmp_path):
    """Two `research resume` of one campaign at once each took the other's runs for orphans and stopped them, and both
    decided and closed it. The loop holds a lock for its life: a second is refused on one line; after it, one may start."""
    from pretrainlab.research.manage import _hold_loop_lock

    ledger = Ledger(str(tmp_path / "ledger.db"))
    cid = ledger.create_campaign("c", goal="lowest val_bpb", config={"campaign": {}, "loop": {"pid": 4242, "host": "box"}})
    first = _hold_loop_lock(tmp_path, ledger, cid)
    with pytest.raises(UserError, match=f"campaign {cid} is already running \\(its loop is process 4242 on box\\).*research stop"):
        _hold_loop_lock(tmp_path, ledger, cid)
    os.close(first)
    os.close(_hold_loop_lock(tmp_path, ledger, cid))


def test_a_report_with_nothing_decided_says_so(tmp_path):
    """A campaign that ran only its baseline said "No change beat the baseline beyond seed noise"."""
    from pretrainlab.research.report import write_report
    from pretrainlab.research.simulate import simulate

    out = simulate(config(decision="paired", budget_runs=5, seeds=3), Landscape(seed=0), tmp_path)
    ledger, done = out["ledger"], out["ledger"].get_campaign(out["campaign_id"])
    # the same campaign stopped after its baseline: the baseline kept, a suggestion still queued
    cid = ledger.create_campaign("stopped early", goal=done["goal"], config=done["config"], status="stopped")
    base = ledger.list_experiments(out["campaign_id"])[0]
    eid = ledger.add_experiment(base["hypothesis"], kind="config", proposer="campaign", proposer_type="strategy", campaign_id=cid,
                                parent_recipe=base["parent_recipe"], change=base["change"], status=Phase.DECIDED, role=Role.BASELINE)
    ledger.record_decision("keep", decided_by="pretrainlab stats", decider_type="strategy", experiment_id=eid)
    ledger.add_experiment("a person's idea", kind="config", proposer="alice", campaign_id=cid, parent_recipe=base["parent_recipe"],
                          change=base["change"], status=Phase.QUEUED, role=Role.SUGGESTION)
    page = write_report(ledger, cid, tmp_path / "r.html", with_findings=False).read_text()
    assert "No change was decided (the campaign is stopped; only the baseline ran)" in page and "beyond seed noise" not in page
    page = write_report(ledger, out["campaign_id"], tmp_path / "done.html", with_findings=False).read_text()
    assert "No change beat the baseline beyond seed noise" in page  # two screens were decided there


@pytest.mark.parametrize("run_std, said", [(0.03, "less evidence than they took it to be"), (0.009, None)])
def test_the_confirmation_says_when_the_screens_assumed_too_little_noise(sim, capsys, run_std, said):
    """The screens judge one-seed differences with a prior paired noise (--screen-noise 0.013); the confirmation measures it.
    Three times noisier runs than the prior: the campaign says so and names the flag; runs as noisy as the prior: nothing."""
    from pretrainlab.api import campaign_record
    from pretrainlab.research.report import noise_summary

    sim.landscape = replace(sim.landscape, run_std=run_std)
    cid = manage.start(config(seeds=4, budget_runs=16), echo=True)
    err = capsys.readouterr().err
    claim = next(d for d in Ledger().list_decisions(campaign_id=cid) if d["evidence"].get("stage") == "claim")
    noise = claim["evidence"]["paired_noise"]
    assert noise["assumed"] == 0.013 and noise["df"] >= 2 and noise["low"] < noise["std"] < noise["high"]
    summary = noise_summary(campaign_record(cid))
    if said:
        assert said in err and f"--screen-noise {noise['std']:.3g}" in err and said in summary
    else:
        assert "--screen-noise" not in err and "consistent with the 0.013 the screens assumed" in summary


class CrashingRecipe(SimulatedRunner):
    """Every run of the listed experiment keys crashes at start, as a recipe the trainer refuses does (exit 2, no summary)."""

    def __init__(self, landscape, num_slots, crashes):
        super().__init__(landscape, num_slots)
        self.crashes = crashes

    def poll(self):
        done = super().poll()
        return [replace(r, status="crashed", summary=None, returncode=2,
                        stderr_tail="Traceback (most recent call last):\nRuntimeError: the recipe cannot train\n")
                if self.crashes(r.job.key) else r for r in done]


def test_a_baseline_without_a_result_stops_the_campaign_and_says_why(tmp_path):
    """Every baseline run crashed: it was recorded *keep* ("mean nan") and the loop went on screening proposals against
    nothing until its budget ran out. Now it is inconclusive, the campaign stops at once with the reason, the error is in
    the notes' first line, and a resume is refused."""
    from pretrainlab.research.simulate import simulate

    cfg = config(budget_runs=12, seeds=2)
    runner = CrashingRecipe(Landscape(seed=0), cfg.parallel, lambda key: key.startswith(runner.submitted[0].rsplit("-s", 1)[0]))
    out = simulate(cfg, Landscape(seed=0), tmp_path, runner=runner)
    ledger, cid = out["ledger"], out["campaign_id"]
    baseline = runner.submitted[0].rsplit("-s", 1)[0]
    (d,) = ledger.list_decisions(experiment_id=baseline)
    assert d["verdict"] == "inconclusive" and "no run of the starting recipe finished" in d["rationale"]
    assert ledger.get_campaign(cid)["status"] == "stopped"
    assert len(runner.submitted) <= cfg.parallel + 1  # the baseline's seeds and at most a screen started beside them
    notes = [n["text"] for n in ledger.list_notes(experiment_id=baseline)]
    assert any(n.splitlines()[0].endswith("(exit 2): RuntimeError: the recipe cannot train") for n in notes)
    with pytest.raises(UserError, match=f"baseline {baseline} has no result to compare experiments with.*start a new campaign"):
        manage.resume(cid, db=str(tmp_path / "ledger.db"), echo=False)
