"""The campaign's decision and scheduling rules (research/decide.py, research/schedule.py) on
states built by hand: no ledger, no runner, no training. Each case is a few experiments,
decisions and runs, the way CampaignState.load would return them."""

import itertools

import pytest

from pretrainlab.ledger.store import Phase, Role
from pretrainlab.research import decide, schedule
from pretrainlab.research.config import CampaignConfig
from pretrainlab.research.state import CampaignState

_clock = itertools.count()


class World:
    """A campaign's state, written the way the loop writes the ledger."""

    def __init__(self, **cfg):
        self.cfg = CampaignConfig(recipe="tiny-cpu", **{"budget_runs": 40, **cfg})
        self.base = self.cfg.base_recipe()
        self.experiments, self.decisions, self.runs = [], [], {}
        self.running, self.failed = set(), set()

    def exp(self, name, values=None, *, role=Role.PROPOSAL, status=Phase.RUNNING, planned=1, parent=None, seeds=None, **change):
        recipe = self.base if values is None else self.base.__class__.from_dict(self.recipe(values))
        e = {"id": name, "hypothesis": name, "kind": "config", "role": role, "status": status,
             "planned_seeds": planned if status == Phase.RUNNING else None,
             "parent_recipe": self.base.to_dict(),
             "change": {"values": values or {}, "recipe": recipe.to_dict(), "parent": parent, **({"seeds": seeds} if seeds else {}), **change}}
        self.experiments.append(e)
        return e

    def recipe(self, values):
        from pretrainlab.config import apply_overrides

        return apply_overrides(self.base, [f"{k}={v}" for k, v in values.items()]).to_dict()

    def run(self, exp_id, seed, value, status="ok"):
        self.runs.setdefault(exp_id, {})[seed] = {"run_id": f"{exp_id}-r{seed}", "seed": self.base.seed + seed, "status": status,
                                                  "val_bpb": value, "run_dir": f"/nowhere/{exp_id}-s{seed}", "seconds": 10.0}

    def decision(self, exp_id, verdict, **evidence):
        self.decisions.append({"experiment_id": exp_id, "verdict": verdict, "evidence": evidence, "created_at": f"{next(_clock):08d}"})
        for e in self.experiments:
            if e["id"] == exp_id:
                e["status"], e["planned_seeds"] = Phase.DECIDED, None

    def state(self, used=None):
        costs = [1.0] * (sum(len(r) for r in self.runs.values()) if used is None else used)
        return CampaignState(self.cfg, self.base, self.experiments, self.decisions, self.runs, costs, set(self.running), set(self.failed))


def with_baseline(**cfg):
    w = World(**cfg)
    w.exp("base", role=Role.BASELINE, planned=w.cfg.seeds)
    for s, v in enumerate([3.70, 3.72, 3.68][: w.cfg.seeds]):
        w.run("base", s, v)
    w.decision("base", "keep")
    return w


def only(actions, kind):
    found = [a for a in actions if isinstance(a, kind)]
    assert len(found) == 1, actions
    return found[0]


# ---- decisions ---------------------------------------------------------------------------------------------


def test_the_baseline_is_kept_with_its_noise_floor():
    w = World()
    w.exp("base", role=Role.BASELINE, planned=3)
    for s, v in enumerate([3.70, 3.72, 3.68]):
        w.run("base", s, v)
    d = only(decide.decide(w.state(), "base"), decide.Decide)
    assert d.verdict == "keep" and d.evidence["noise_floor"]["n"] == 3 and abs(d.evidence["noise_floor"]["mean"] - 3.70) < 1e-9
    assert d.by == "" and not d.observe  # the bare stats decider; no strategy proposed it


def test_nothing_is_decided_while_a_planned_run_is_out():
    w = World()
    w.exp("base", role=Role.BASELINE, planned=3)
    w.run("base", 0, 3.70)
    assert decide.decide(w.state(), "base") == []
    w.failed |= {"base-s1", "base-s2"}  # runs that ended without a result count as in
    assert only(decide.decide(w.state(), "base"), decide.Decide).verdict == "keep"


def test_a_screen_that_beats_its_parent_on_the_same_seed_is_adopted_not_claimed():
    w = with_baseline(screen_noise=0.013, adopt_p=0.5)
    w.exp("lr", {"optim.lr": 0.01}, parent="base", screen_seed=0, seeds=[0])
    w.run("lr", 0, 3.65)
    d = only(decide.decide(w.state(), "lr"), decide.Decide)
    assert d.verdict == "keep" and d.effect == pytest.approx(-0.05) and d.evidence["stage"] == "screen"
    assert d.evidence["p_improvement"] > 0.99 and "Not a claim" in d.rationale
    assert d.told == pytest.approx(3.65)  # told on the baseline's seed-0 scale


def test_a_screen_worse_than_its_parent_is_discarded_and_one_equal_to_it_is_a_no_op():
    w = with_baseline()
    w.exp("worse", {"optim.lr": 0.01}, parent="base", screen_seed=0, seeds=[0])
    w.exp("same", {"optim.lr": 0.02}, parent="base", screen_seed=0, seeds=[0])
    w.run("worse", 0, 3.75)
    w.run("same", 0, 3.70)
    worse = only(decide.decide(w.state(), "worse"), decide.Decide)
    assert worse.verdict == "discard" and worse.effect == pytest.approx(0.05)
    same = only(decide.decide(w.state(), "same"), decide.Decide)
    assert same.verdict == "discard" and "does not alter training" in same.rationale


def test_a_screen_waits_for_its_parents_reference_run_and_is_discarded_if_it_failed():
    w = with_baseline()
    w.exp("child", {"optim.lr": 0.01}, parent="base", screen_seed=5, seeds=[5])
    w.run("child", 5, 3.60)
    assert decide.decide(w.state(), "child") == []  # base-s5 still running
    w.failed.add("base-s5")
    assert "no seed-5 result" in only(decide.decide(w.state(), "child"), decide.Decide).rationale


def test_two_winners_over_one_parent_are_merged_and_the_better_one_leads():
    w = with_baseline()
    w.exp("a", {"optim.lr": 0.01}, parent="base", screen_seed=0, seeds=[0])
    w.run("a", 0, 3.60)
    w.decision("a", "keep", stage="screen", diff=-0.1, told=3.60, reference_seed=0)  # the incumbent moved on to a
    w.exp("b", {"optim.weight_decay": 0.05}, parent="base", screen_seed=0, seeds=[0])
    w.run("b", 0, 3.65)  # beats base, but not a
    actions = decide.decide(w.state(), "b")
    combine, d = only(actions, decide.Combine), only(actions, decide.Decide)
    assert actions.index(combine) < actions.index(d)  # the merge is queued before the verdict that names it
    assert (combine.adopted["id"], combine.other["id"]) == ("a", "b") and d.verdict == "inconclusive" and decide.MERGED in d.rationale
    spec = decide.combination(w.state(), combine.adopted, combine.other, combine.parent)
    assert spec["role"] == Role.COMBINATION and spec["change"]["values"] == {"optim.weight_decay": 0.05}
    assert spec["change"]["recipe"]["optim"]["lr"] == 0.01  # a's recipe plus b's change

    w.runs["b"][0]["val_bpb"] = 3.50  # b beats a on the same seed too: b leads, a is merged into it
    actions = decide.decide(w.state(), "b")
    assert only(actions, decide.Decide).verdict == "keep" and only(actions, decide.Combine).adopted["id"] == "b"


def test_a_screen_stopped_at_its_first_rung_tells_the_strategy_how_bad_it_looked():
    w = with_baseline()
    w.exp("bad", {"optim.lr": 0.5}, parent="base", screen_seed=0, seeds=[0])
    w.run("bad", 0, None, status="preempted")
    rung = {"value": 4.1, "parent_value": 3.9, "diff": 0.2, "rung": 0.5, "seed": 0, "told": 3.9}
    d = only(decide.decide(w.state(), "bad", stopped_early=True, rung=rung), decide.Decide)
    assert d.verdict == "discard" and "first rung" in d.rationale and d.told == 3.9 and d.evidence["rung"] == rung


def test_greedy_keeps_whatever_scored_lower_once():
    w = with_baseline(decision="greedy")
    w.exp("x", {"optim.lr": 0.01})
    w.run("x", 0, 3.679)
    assert only(decide.decide(w.state(), "x"), decide.Decide).verdict == "keep"
    w.runs["x"][0]["val_bpb"] = 3.681
    assert only(decide.decide(w.state(), "x"), decide.Decide).verdict == "discard"


def test_paired_screens_earn_replicates_unless_the_budget_has_no_room():
    w = with_baseline(decision="paired")
    w.exp("x", {"optim.lr": 0.01})
    w.run("x", 0, 3.69)
    step = only(decide.decide(w.state(), "x"), decide.SetPhase)
    assert step.phase == Phase.RUNNING and step.planned_seeds == 4 and "on 3 fresh seeds" in step.log  # seeds 1-3; 0 screened it
    d = only(decide.decide(w.state(used=37), "x"), decide.Decide)  # 37 of 40 runs used: no room for 3 more and the incumbent's 4th
    assert d.verdict == "inconclusive" and d.evidence["awaiting_budget"]
    w.runs["x"][0]["val_bpb"] = 3.80
    assert only(decide.decide(w.state(), "x"), decide.Decide).verdict == "discard"


def test_paired_replicates_are_tested_and_a_winner_checks_transfer_first():
    """Replicates are tested on their fresh seeds only: the screen's seed-0 run earned them by scoring well, and a test
    that kept it would keep changes with no effect about twice as often as its level says."""
    w = with_baseline(decision="paired")
    w.run("base", 3, 3.71)  # the incumbent on the candidate's last fresh seed
    w.exp("x", {"optim.lr": 0.01}, planned=4)
    for s, v in enumerate([3.50, 3.62, 3.58, 3.61]):  # seed 0, the screen, lucky: left out
        w.run("x", s, v)
    d = only(decide.decide(w.state(), "x"), decide.Decide)
    assert d.verdict == "keep" and d.cmp.paired and d.cmp.n_candidate == 3 and d.cmp.effect == pytest.approx(-0.1)
    w.cfg.transfer = ["model.n_layer=6"]
    assert only(decide.decide(w.state(), "x"), decide.StartTransfer).cmp.effect == pytest.approx(-0.1)


def test_a_transfer_check_keeps_only_a_gain_that_holds_at_the_larger_rung():
    w = with_baseline(decision="paired")
    small = {"effect": -0.1, "mean_candidate": 3.6}
    for side in ("incumbent", "candidate"):
        w.exp(f"t-{side}", role=Role.TRANSFER, status=Phase.DECIDED, transfer_of="x", small_scale=small)["change"]["role"] = side
    for s in range(3):
        w.run("t-incumbent", s, 3.40 + 0.01 * s)
        w.run("t-candidate", s, 3.41 + 0.01 * s + 0.002 * (s % 2))  # worse at scale
    w.exp("x", {"optim.lr": 0.01}, status=Phase.TRANSFER)
    d = only(decide.finish_transfer(w.state(), "x"), decide.Decide)
    assert d.verdict == "discard" and "does not hold" in d.rationale and d.told == 3.6
    for s in range(3):
        w.run("t-candidate", s, 3.30 + 0.01 * s + 0.002 * (s % 2))
    assert only(decide.finish_transfer(w.state(), "x"), decide.Decide).verdict == "keep"
    w.experiments[0 + 1]["status"] = Phase.RUNNING  # one side still running: nothing yet
    assert decide.finish_transfer(w.state(), "x") == []


def test_claims_test_the_final_recipe_and_drop_a_change_whose_ablation_scored_better():
    w = with_baseline()
    w.exp("a", {"optim.lr": 0.01}, parent="base", screen_seed=0, seeds=[0], diff={"optim.lr": [0.02, 0.01]})
    w.decision("a", "keep", stage="screen", diff=-0.05, told=3.65)
    groups = {"optim.lr": {"optim.lr": 0.01}, "optim.weight_decay": {"optim.weight_decay": 0.05}}
    w.exp("final", {"optim.lr": 0.01}, role=Role.CONFIRMATION, status=Phase.MEASURED, seeds=[1, 2], confirm="final", of="a", groups=groups)
    w.exp("abl-lr", role=Role.ABLATION, status=Phase.MEASURED, seeds=[1, 2], confirm="ablation", of="a", group="optim.lr")
    w.exp("abl-wd", role=Role.ABLATION, status=Phase.MEASURED, seeds=[1, 2], confirm="ablation", of="a", group="optim.weight_decay")
    for s, (f, lr, wd) in {1: (3.60, 3.70, 3.58), 2: (3.62, 3.73, 3.59)}.items():
        w.run("final", s, f)
        w.run("abl-lr", s, lr)
        w.run("abl-wd", s, wd)
    out = decide.claims(w.state())
    verdicts = {e["id"]: d.verdict for e, d in out.decisions}
    assert verdicts["final"] == "keep" and verdicts["abl-lr"] == "keep"  # the final recipe and its LR change carry the gain
    assert all(d.evidence["stage"] == "claim" and d.by.startswith("pooled paired") for _, d in out.decisions)
    assert list(out.drop) == ["optim.weight_decay"] and out.effects["optim.weight_decay"] > 0
    w.experiments[-1]["status"] = Phase.RUNNING  # an ablation still running: no claim yet
    assert decide.claims(w.state()) is None


# ---- scheduling --------------------------------------------------------------------------------------------


def step(w, may_ask=True, **kw):
    return schedule.next_step(w.state(**kw), may_ask, "optuna")


def test_nothing_starts_once_the_budget_is_spent():
    w = with_baseline()
    assert step(w, used=40) == schedule.Idle("run budget spent")


def test_pending_seeds_come_before_new_work_and_running_or_failed_ones_are_not_restarted():
    w = World()
    w.exp("base", role=Role.BASELINE, planned=3)
    assert step(w) == schedule.Run("base", 0)
    w.running.add("base-s0")
    w.failed.add("base-s1")
    assert step(w) == schedule.Run("base", 2)


def test_merges_of_winners_start_before_proposals_and_the_strategy_is_asked_only_when_nothing_waits():
    w = with_baseline()
    assert step(w) == schedule.AskStrategy()
    assert step(w, may_ask=False) == schedule.StartConfirmation(schedule.Idle("strategy optuna proposed nothing new"))
    w.exp("p", {"optim.lr": 0.01}, status=Phase.QUEUED, parent="base", seeds=[0])
    w.exp("m", {"optim.weight_decay": 0.05}, status=Phase.QUEUED, role=Role.COMBINATION, parent="base", seeds=[0])
    assert step(w) == schedule.Run("m", 0, screen=True)


def test_a_new_incumbent_runs_its_reference_seed_before_its_first_child():
    w = with_baseline(fresh_reference=True)
    w.exp("a", {"optim.lr": 0.01}, parent="base", screen_seed=0, seeds=[0])
    w.run("a", 0, 3.60)
    w.decision("a", "keep", stage="screen", diff=-0.1, told=3.60, reference_seed=3)
    w.exp("child", {"optim.lr": 0.01, "optim.weight_decay": 0.05}, status=Phase.QUEUED, parent="a", seeds=[3], screen_seed=3)
    assert step(w) == schedule.Run("a", 3)
    w.run("a", 3, 3.61)
    assert step(w) == schedule.Run("child", 3, screen=True)


def test_the_end_of_the_budget_is_reserved_for_the_confirmation_phase():
    w = with_baseline()
    w.exp("a", {"optim.lr": 0.01}, parent="base", screen_seed=0, seeds=[0])
    w.run("a", 0, 3.60)
    w.decision("a", "keep", stage="screen", diff=-0.1, told=3.60)
    w.exp("screening", {"optim.weight_decay": 0.05}, parent="a", seeds=[0])
    w.running.add("screening-s0")
    # 30 runs used + 1 in flight: were the screen adopted, confirming two groups would take 2 seeds x (1 + 2 ablations)
    assert step(w, used=30) == schedule.AskStrategy()
    assert step(w, used=34) == schedule.Idle("reserved for the confirmation phase")
    w.running.clear()
    w.experiments[-1]["status"] = Phase.DECIDED  # discarded: one group to confirm, 2 runs
    assert step(w, used=37) == schedule.AskStrategy()
    assert step(w, used=38) == schedule.StartConfirmation(schedule.Idle("nothing to confirm"))


def test_the_confirmation_phase_runs_the_baselines_missing_seed_then_records_claims():
    w = with_baseline(seeds=2)  # the baseline ran seeds 0 and 1; the confirmation seeds are 1 and 2
    w.exp("a", {"optim.lr": 0.01}, parent="base", screen_seed=0, seeds=[0])
    w.decision("a", "keep", stage="screen", diff=-0.1)
    w.exp("final", {"optim.lr": 0.01}, role=Role.CONFIRMATION, status=Phase.MEASURED, seeds=[1, 2], confirm="final", of="a")
    assert step(w) == schedule.Run("base", 2)
    w.running.add("base-s2")
    assert step(w) == schedule.RecordClaims()


def test_a_campaign_whose_baseline_produced_nothing_stops_asking():
    w = World()
    w.exp("base", role=Role.BASELINE, status=Phase.DECIDED)
    assert step(w) == schedule.Idle("no baseline")
