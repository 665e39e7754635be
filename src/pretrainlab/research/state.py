"""A campaign's state, loaded once: what every decision and scheduling rule reads.

`CampaignState.load(ledger, ...)` reads the campaign's experiments, decisions and runs in
three queries (and the few run summaries that price an early-stopped run); everything else
here is a pure function of that snapshot plus what the loop knows and the ledger does not
(the jobs in flight, the jobs that ended without a result, the elapsed time). The campaign
(research/campaign.py) keeps one snapshot until it writes to the ledger, and reloads it at
every turn of its loop so a person's approve, reject or suggestion is seen within one poll.

Tests build a state by hand (`CampaignState(cfg, base, experiments, decisions, runs)`) and
check the rules in microseconds, without a ledger or a runner.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from ..config import Recipe
from ..recipes import estimate_flops_per_token
from ..ledger.store import Phase, Role
from ..rundir import read_summary
from . import policy
from .config import CampaignConfig

RUN_COLUMNS = ("run_id", "seed", "status", "val_bpb", "run_dir", "seconds", "tokens", "experiment_id")


def planned_seeds(exp: dict) -> int:
    """Seeds a running experiment plans (1 = a screen); 0 when it is not running."""
    return (exp.get("planned_seeds") or 0) if exp["status"] == Phase.RUNNING else 0


def is_claim(decision: dict) -> bool:
    return (decision.get("evidence") or {}).get("stage") == "claim"


def incumbent_id(decisions: list[dict]) -> str | None:
    """The experiment a campaign's decisions (in order) make the incumbent: the last one kept.
    A person's later reject revokes a keep; a claim of the confirmation phase is a record,
    not a recipe to build on."""
    latest: dict[str, dict] = {}
    for d in decisions:
        latest[d["experiment_id"]] = d
    kept = sorted((d for d in latest.values() if d["verdict"] == "keep" and not is_claim(d)), key=lambda d: d["created_at"])
    return kept[-1]["experiment_id"] if kept else None


def recipe_of(exp: dict, base: Recipe) -> Recipe:
    """The recipe an experiment's runs train: its change's, else the base."""
    change = exp["change"] or {}
    return Recipe.from_dict(change["recipe"]) if "recipe" in change else base


def run_cost(row: dict, base: Recipe, early_stop: bool, flops_per_token: float | None = None) -> float:
    """A registered run's share of the budget: 1 for a run that used its budget, the share of
    its token (or seconds, or FLOP) budget for one that ended early (stopped at a rung). Reads the
    run's summary, which experiment code wrote: a floor at the first rung keeps it honest. Under a
    FLOP budget its tokens count at `flops_per_token`, the lab's count for the run's recipe (the
    base's when not given), never the summary's."""
    if row["status"] == "ok" or not row.get("run_dir"):
        return 1.0
    summary = read_summary(Path(row["run_dir"])) or {}
    floor = base.train.eval_every_frac if early_stop and base.train.eval_every_frac else 1.0
    budget, share = base.budget, 1.0
    if budget.tokens and isinstance(summary.get("tokens"), (int, float)):
        share = summary["tokens"] / budget.tokens
    elif budget.flops and isinstance(summary.get("tokens"), (int, float)):
        share = summary["tokens"] * (flops_per_token or estimate_flops_per_token(base)) / budget.flops
    elif budget.seconds and isinstance(summary.get("seconds"), (int, float)):
        share = summary["seconds"] / budget.seconds
    # the earliest the lab stops a run is its first rung: a run that claims to have used less counts that much
    return min(1.0, max(floor, share)) if math.isfinite(share) else 1.0


@dataclass
class CampaignState:
    """One campaign as the ledger holds it, plus the loop's runtime facts.

    experiments and decisions are in ledger order (creation); runs maps an experiment id to
    {seed index: run row}; costs are the registered runs' shares of the budget."""

    cfg: CampaignConfig
    base: Recipe
    experiments: list[dict]
    decisions: list[dict]
    runs: dict[str, dict[int, dict]] = field(default_factory=dict)
    costs: list[float] = field(default_factory=list)
    running: set[str] = field(default_factory=set)  # job keys in flight
    failed: set[str] = field(default_factory=set)  # job keys that ended without a result
    elapsed: float = 0.0  # seconds of all the campaign's loops so far
    # what is derived from rows that never change (a run's cost, an experiment's change groups), carried from load to load
    memo: dict = field(default_factory=dict)

    @classmethod
    def load(cls, ledger, campaign_id: str, cfg: CampaignConfig, base: Recipe, previous: "CampaignState | None" = None) -> "CampaignState":
        """`previous`: the state this one replaces; its experiments' and decisions' parsed JSON
        is reused (they never change once recorded), so a reload costs queries, not parsing."""
        experiments = ledger.list_experiments(campaign_id, reuse=previous.by_id if previous else None)
        decisions = ledger.list_decisions(campaign_id=campaign_id, reuse={d["id"]: d for d in previous.decisions} if previous else None)
        rows = ledger.list_runs(campaign=campaign_id, limit=0, columns=RUN_COLUMNS)  # newest first
        runs: dict[str, dict[int, dict]] = {}
        for r in rows:
            if r["experiment_id"]:
                runs.setdefault(r["experiment_id"], {})[r["seed"] - base.seed] = r  # (a re-registered seed: the oldest row)
        memo = previous.memo if previous is not None else {}
        by_id = {e["id"]: e for e in experiments}
        costs = []
        for r in rows:  # a run's cost reads its summary unless it ended ok; the same row costs what it cost before
            key = ("cost", r["run_id"], r["status"], r["run_dir"], r["seconds"], r["val_bpb"])  # a re-registered run reads anew
            if key not in memo:
                exp = by_id.get(r["experiment_id"])
                fpt = estimate_flops_per_token(recipe_of(exp, base)) if exp is not None and base.budget.flops else None
                memo[key] = run_cost(r, base, cfg.early_stop, fpt)
            costs.append(memo[key])
        return cls(cfg, base, experiments, decisions, runs, costs, memo=memo)

    # ---- lookups ----------------------------------------------------------------------------------------

    @cached_property
    def by_id(self) -> dict[str, dict]:
        return {e["id"]: e for e in self.experiments}

    def experiment(self, exp_id: str) -> dict:
        return self.by_id[exp_id]

    def results(self, exp_id: str) -> dict[int, dict]:
        """{seed index: run row} of the experiment's registered runs."""
        return self.runs.get(exp_id, {})

    def values_by_seed(self, exp_id: str) -> dict[int, float]:
        """{seed index: val_bpb} of the experiment's finished runs."""
        return {s: r["val_bpb"] for s, r in sorted(self.results(exp_id).items()) if r["status"] == "ok" and r["val_bpb"] is not None}

    def decisions_of(self, exp_id: str) -> list[dict]:
        return [d for d in self.decisions if d["experiment_id"] == exp_id]

    def recipe_of(self, exp: dict) -> Recipe:
        return recipe_of(exp, self.base)

    def change_groups_of(self, exp: dict) -> frozenset[str]:
        """The groups of keys the experiment's recipe changes from the base (policy.change_groups)."""
        key = ("groups", exp["id"])
        if key not in self.memo:
            self.memo[key] = frozenset(policy.change_groups(self.base, self.recipe_of(exp)))
        return self.memo[key]

    def seeds_of(self, exp: dict) -> list[int]:
        """The seed indices an experiment runs on: 0..N-1 for N planned seeds, or the list a
        confirmation experiment carries (the baseline's seeds no screen used)."""
        n = planned_seeds(exp)
        listed = (exp["change"] or {}).get("seeds")
        return list(listed) if listed and n else list(range(n))

    def with_role(self, *roles: Role) -> list[dict]:
        return [e for e in self.experiments if e["role"] in roles]

    def screening(self) -> int:
        """Experiments running on one seed: screens in flight."""
        return sum(planned_seeds(e) == 1 for e in self.experiments)

    # ---- the incumbent -------------------------------------------------------------------------------------

    @cached_property
    def baseline(self) -> dict | None:
        return next((e for e in self.experiments if e["role"] == Role.BASELINE), None)

    @cached_property
    def incumbent(self) -> dict | None:
        """The experiment whose recipe is the incumbent (None before the baseline is decided)."""
        exp_id = incumbent_id(self.decisions)
        return self.by_id.get(exp_id) if exp_id else None

    def incumbent_values(self) -> list[float]:
        return list(self.values_by_seed(self.incumbent["id"]).values()) if self.incumbent else []

    def final_recipe(self) -> Recipe:
        """What the campaign hands back: the incumbent's recipe."""
        return self.recipe_of(self.incumbent or self.baseline)

    def claims(self) -> list[dict]:
        """The confirmation phase's recorded claims (decisions with stage 'claim')."""
        return [d for d in self.decisions if is_claim(d)]

    # ---- budget --------------------------------------------------------------------------------------------

    def compute_used(self) -> float:
        """Runs that count against the budget, in full-run equivalents: registered ones by
        their share (early-stopped runs count what they used), in-flight and failed ones whole."""
        return sum(self.costs) + len(self.running) + len(self.failed)

    def budget_spent(self, extra: float = 0) -> bool:
        """True when one more run plus `extra` would not fit in the run budget (or time is up)."""
        over_time = self.cfg.budget_hours and self.elapsed > self.cfg.budget_hours * 3600
        return self.compute_used() + extra + 1 > self.cfg.budget_runs + 1e-9 or bool(over_time)

    def incumbent_seeds_needed(self) -> int:
        """Paired re-tests: the incumbent must have run on every seed a candidate runs on."""
        if self.cfg.decision != "paired":
            return 0
        return max((planned_seeds(e) for e in self.experiments if e["role"] != Role.TRANSFER), default=0)

    def missing_incumbent_seeds(self, n: int) -> int:
        """Runs the incumbent still needs so that a candidate on seeds 0..n-1 has all its pairs."""
        if self.cfg.decision != "paired" or self.incumbent is None:
            return 0
        return sum(s not in self.results(self.incumbent["id"]) for s in range(n))

    def pending(self, exp_id: str, seed: int) -> bool:
        """A run the experiment still needs: not registered, not in flight, not failed."""
        key = f"{exp_id}-s{seed}"
        return seed not in self.results(exp_id) and key not in self.running and key not in self.failed

    # ---- the screen policy's lineage -----------------------------------------------------------------------

    def parent_of(self, exp: dict) -> dict:
        """The experiment whose recipe a proposal changed (its seed-0 run is the screen's
        reference): recorded at proposal time, else found by recipe, else the baseline."""
        parent_id = (exp["change"] or {}).get("parent")
        if parent_id:
            return self.by_id[parent_id]
        for e in self.experiments:
            if e["id"] != exp["id"] and "recipe" in (e["change"] or {}) and e["change"]["recipe"] == exp["parent_recipe"] \
                    and e["role"] not in (Role.CONFIRMATION, Role.ABLATION):
                return e
        return self.baseline

    def screen_seed(self, exp: dict) -> int:
        """The seed a screen runs on: its parent's reference seed when it was proposed."""
        return (exp["change"] or {}).get("screen_seed", policy.SCREEN_SEED)

    def screen_decision(self, exp: dict) -> dict | None:
        """The latest screen-stage decision on an experiment (its adoption, if adopted)."""
        ds = [d for d in self.decisions_of(exp["id"]) if (d.get("evidence") or {}).get("stage") == "screen"]
        return ds[-1] if ds else None

    def reference_seed(self, exp: dict) -> int:
        """The seed `exp`'s children are screened on: 0 for the baseline, else the seed given
        to it when it was adopted (fresh_reference), else the seed it was screened on."""
        d = self.screen_decision(exp) if exp["role"] != Role.BASELINE else None
        return (d["evidence"].get("reference_seed", self.screen_seed(exp)) if d else self.screen_seed(exp))

    def told_value(self, exp: dict) -> float | None:
        """An experiment's screened val_bpb on one common scale (the baseline's seed-0 run plus
        the seed-matched differences along its line of adoptions), so values screened on
        different seeds stay comparable for the strategy."""
        d = self.screen_decision(exp)
        if d is not None and d["evidence"].get("told") is not None:
            return d["evidence"]["told"]
        return self.values_by_seed(exp["id"]).get(policy.SCREEN_SEED)

    def next_reference_seed(self) -> int:
        used = set(range(self.cfg.seeds))
        for d in self.decisions:
            used.add((d.get("evidence") or {}).get("reference_seed", 0))
        return max(used) + 1

    # ---- the confirmation phase ----------------------------------------------------------------------------

    def confirmation_seeds(self) -> list[int]:
        """The baseline's seeds that no screen ran on: the confirmation's fresh seeds (at least
        two, so a claim can be tested: with --seeds 2 the baseline runs seed 2 in the phase)."""
        return [s for s in range(max(3, self.cfg.seeds)) if s != policy.SCREEN_SEED]

    def missing_baseline_seeds(self) -> list[int]:
        base = self.baseline
        return [s for s in self.confirmation_seeds() if base is not None and s not in self.results(base["id"])]

    def confirmation(self) -> list[dict]:
        """The confirmation experiments of the current incumbent (a campaign resumed with more
        budget that moves on confirms its new final recipe again)."""
        inc = self.incumbent
        if inc is None:
            return []
        of = {inc["id"], (inc["change"] or {}).get("parent") if (inc["change"] or {}).get("pruned") else None}  # a pruned hand-back: its round
        return [e for e in self.with_role(Role.CONFIRMATION, Role.ABLATION) if e["change"].get("of") in of]

    def confirmation_cost(self, also: dict | None = None) -> int:
        """Runs the confirmation phase needs for the recipe the campaign would hand back now,
        plus those it would need if every screen in flight (and `also`, about to start) were
        adopted: their new key groups. So a late adoption never leaves a change unablated."""
        final = set(policy.change_groups(self.base, self.final_recipe()))
        added = set()
        for e in self.experiments:
            if (planned_seeds(e) == 1 and e["role"] not in (Role.CONFIRMATION, Role.ABLATION)) or (also and e["id"] == also["id"]):
                added |= self.change_groups_of(e) - final
        groups = len(final | added)
        return policy.confirmation_runs(groups, len(self.confirmation_seeds())) + (len(self.missing_baseline_seeds()) if groups else 0)
