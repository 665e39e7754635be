"""The campaign's decision rules as pure functions of its state (research/state.py).

`decide(state, exp_id)` says what the campaign does about an experiment once its runs are in:
a list of actions (record a verdict, plan more seeds, check transfer, queue a merge, ...),
which the campaign (research/campaign.py) applies to the ledger. Nothing here reads the
ledger, the runner or the clock, so every rule is tested in microseconds on a state built
by hand (tests/test_research_decide.py).

The rules, by `--decision`:
- screen (research/policy.py): a finished screen is compared with its parent's run on the
  same seed; it becomes the incumbent when the posterior probability that it improves
  reaches `adopt_p`. A winner over a parent the incumbent has since moved on from is merged
  with the incumbent, and the merge is screened next.
- paired / welch: a screen no worse than the incumbent (+ `screen_margin` seed std) earns
  `seeds` replicates; replicates are compared by the paired t-test (Welch) and a promising
  "no effect" gets one more round of seeds, tested at alpha / looks.
- greedy: one seed, keep if lower.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from ..errors import UserError
from ..ledger.store import Phase, Role
from . import policy
from ..scaling.transfer import verdict as transfer_verdict
from .space import recipe_diff
from .state import CampaignState, planned_seeds
from .stats import (IMPROVEMENT, REGRESSION, Comparison, compare, describe_noise_floor, gatekept, noise_floor, paired_noise,
                    pooled_paired)
from .strategies import CampaignView, Proposal, validate

MERGED = "\0merged"  # in a rationale: replaced by what became of the merge queued just before


@dataclass
class Decide:
    """Record a verdict on the experiment and mark it decided. `told` is what its strategy
    learns (None: that it failed); `by` overrides the campaign's rule as the decider."""

    verdict: str
    rationale: str
    evidence: dict
    told: float | None = None
    cmp: Comparison | None = None
    effect: float | None = None
    by: str | None = None
    observe: bool = True
    log: str = ""  # what the campaign's log says (default: the verdict and its rationale)


@dataclass
class SetPhase:
    """Move the experiment to `phase` (more seeds: RUNNING with `planned_seeds`)."""

    phase: Phase
    planned_seeds: int | None = None
    log: str = ""


@dataclass
class StartTransfer:
    """The comparison says it improves: measure both sides at the transfer rung first."""

    cmp: Comparison


@dataclass
class FinishTransfer:
    candidate_id: str


@dataclass
class EndCampaign:
    """Nothing more can be learned (the baseline has no result): the loop stops, saying why."""

    reason: str


@dataclass
class RecordClaims:
    """A confirmation run set is measured: record the claims if the whole phase is."""


@dataclass
class Combine:
    """Queue the merge of two winners over the same parent (see `combination`)."""

    adopted: dict
    other: dict
    parent: dict
    log: bool = False  # say so in the campaign's log (when no decision mentions it)


Action = Decide | SetPhase | StartTransfer | FinishTransfer | RecordClaims | Combine


def compare_runs(state: CampaignState, incumbent_id: str, candidate_id: str, looks: int = 1, skip: tuple[int, ...] = ()) -> Comparison:
    """The campaign's test on two experiments' runs: the paired t-test over the seeds both
    ran (Welch when fewer than two are shared, or with --decision welch). `skip`: the candidate's
    seeds left out (its screen's, which earned it the replicates: a selected run biases the test)."""
    cfg = state.cfg
    inc, cand = state.values_by_seed(incumbent_id), state.values_by_seed(candidate_id)
    cand = {s: v for s, v in cand.items() if s not in skip}
    common = sorted(set(inc) & set(cand))
    if cfg.decision == "paired" and len(common) >= 2:
        return compare([inc[s] for s in common], [cand[s] for s in common], alpha=cfg.alpha, looks=looks, paired=True)
    return compare(list(inc.values()), list(cand.values()), alpha=cfg.alpha, looks=looks)


def decide(state: CampaignState, exp_id: str, stopped_early: bool = False, rung: dict | None = None) -> list[Action]:
    """What to do about `exp_id` now: nothing while a planned run is still out, else its
    verdict or its next step. `rung` is the comparison that stopped it at its first rung."""
    cfg = state.cfg
    exp = state.experiment(exp_id)
    n = planned_seeds(exp)
    if n == 0:
        return []
    results = state.results(exp_id)
    planned = state.seeds_of(exp)
    done = {s for s in planned if s in results or f"{exp_id}-s{s}" in state.failed}
    if len(done) < len(planned) and not stopped_early:
        return []
    values = [r["val_bpb"] for r in results.values() if r["status"] == "ok" and r["val_bpb"] is not None]
    evidence = {"runs": {s: r["run_id"] for s, r in results.items()}, "values": values}
    if exp["role"] == Role.TRANSFER:  # one side of a transfer check
        return [SetPhase(Phase.DECIDED), FinishTransfer(exp["change"]["transfer_of"])]
    if exp["role"] in (Role.CONFIRMATION, Role.ABLATION):  # one run set of the confirmation phase
        return [SetPhase(Phase.MEASURED), RecordClaims()]
    inc = state.incumbent
    if state.baseline is not None and exp_id == state.baseline["id"] and inc is None:  # the baseline
        if not values:  # nothing to compare any experiment with: every screen would run against nothing
            ended = ", ".join(f"seed {s} {r['status']}" for s, r in sorted(results.items())) or "no run registered"
            why = (f"baseline: no run of the starting recipe finished ({ended}): the campaign has nothing to compare with and "
                   "stops; see its notes for each run's error, fix the starting recipe and start a new campaign")
            return [Decide("inconclusive", why, evidence, by="", observe=False, log=why), EndCampaign(why)]
        nf = noise_floor(values)
        return [Decide("keep", f"baseline: mean {nf['mean']:.4f}, seed std {nf.get('std') or 0:.4f} over {nf['n']} seeds",
                       {**evidence, "noise_floor": nf}, by="", observe=False, log=f"baseline {exp_id}: {describe_noise_floor(nf)}")]
    if not values or stopped_early:
        why = "stopped early: clearly worse than the incumbent at an intermediate evaluation" if stopped_early else \
            f"no usable result ({', '.join(r['status'] for r in results.values()) or 'crashed'})"
        told = None
        if stopped_early and rung is not None:  # screen policy: stopped at its first rung
            why = (f"stopped at the first rung: {rung['value']:.4f} vs its parent's {rung['parent_value']:.4f} on seed {rung['seed']} "
                   f"({rung['diff']:+.4f} > {cfg.rung_stop:g})")
            evidence.update(stage="screen", rung=rung)
            told = rung["told"]  # the strategy learns how bad it looked, not just that it failed
        return [Decide("discard", why, evidence, told)]
    if inc is None:  # screened while the baseline runs: decided once the baseline is
        return []
    if cfg.decision == "screen":
        return decide_screen(state, exp, values[0], evidence)
    inc_values = state.incumbent_values()
    if cfg.decision == "greedy":  # the single-seed rule: keep whatever scored lower once
        verdict = "keep" if values[0] < min(inc_values) else "discard"
        return [Decide(verdict, f"single seed: {values[0]:.4f} vs incumbent {min(inc_values):.4f}", evidence, values[0])]
    if n == 1:
        return _screen_for_replicates(state, exp, values[0], evidence)
    if cfg.decision == "paired":  # a re-test pairs with the incumbent's extra seeds: wait for them
        inc_results = state.results(inc["id"])
        if any(s not in inc_results and f"{inc['id']}-s{s}" not in state.failed for s in range(n)):
            return []
    looks = max(1, (n - 1) // cfg.seeds)
    cmp = compare_runs(state, inc["id"], exp_id, looks=looks, skip=(0,))  # tested on fresh seeds: 1.. (0 screened it)
    evidence["comparison"] = cmp.to_dict()
    if cmp.verdict == IMPROVEMENT and cfg.transfer:
        return [StartTransfer(cmp)]
    if cmp.verdict == IMPROVEMENT:
        return [Decide("keep", cmp.summary(), evidence, cmp.mean_candidate, cmp)]
    if (cmp.p_improvement < 0.2 and looks < cfg.max_looks
            and not state.budget_spent(extra=cfg.seeds + state.missing_incumbent_seeds(n + cfg.seeds) - 1)):
        extra = state.missing_incumbent_seeds(n + cfg.seeds)
        return [SetPhase(Phase.RUNNING, n + cfg.seeds, f"promising ({cmp.summary()}); {cfg.seeds} more seeds"
                         + (f", and {extra} for the incumbent" if extra else ""))]
    return [Decide("discard", cmp.summary(), evidence, cmp.mean_candidate, cmp)]


def _screen_for_replicates(state: CampaignState, exp: dict, value: float, evidence: dict) -> list[Action]:
    """paired / welch: a screen not worse than the incumbent (within the margin) is replicated."""
    cfg = state.cfg
    inc_values = state.incumbent_values()
    mean = statistics.fmean(inc_values)
    std = statistics.stdev(inc_values) if len(inc_values) >= 2 else 0.0  # one usable seed (the others lost): no margin
    ref, what, told = mean, "the incumbent's mean", value
    inc_by_seed = state.values_by_seed(state.incumbent["id"])
    if cfg.decision == "paired" and 0 in inc_by_seed:  # against the incumbent's run on the same seed
        ref, what = inc_by_seed[0], "the incumbent's seed-0 run"
        told = mean + value - ref  # on the scale of a mean over the incumbent's seeds, as replicated results are
        evidence["value_on_incumbent_scale"] = told
    bar = ref + cfg.screen_margin * std
    # replicated on `seeds` fresh seeds (1..seeds), and tested on those only: the screen's run, which earned the
    # replicates, is a selected one (tested with it, a change with no effect was kept 6.3% of the time, not 3.2%)
    extra = state.missing_incumbent_seeds(cfg.seeds + 1)
    if value <= bar and state.budget_spent(extra=cfg.seeds + extra - 1):
        evidence["awaiting_budget"] = True  # `research resume --budget-runs` with room replicates it
        return [Decide("inconclusive", f"screen {value:.4f} was promising ({what} {ref:.4f}, seed std {std:.4f}) but "
                       f"the run budget has no room for {cfg.seeds} replicates on fresh seeds", evidence, told)]
    if value <= bar:
        return [SetPhase(Phase.RUNNING, cfg.seeds + 1, f"screen {value:.4f} vs {what} {ref:.4f} (seed std {std:.4f}): replicating "
                         f"on {cfg.seeds} fresh seeds")]
    margin = f" + {cfg.screen_margin:g} seed std ({std:.4f})" if cfg.screen_margin else ""
    return [Decide("discard", f"screen: {value:.4f} is worse than {what} {ref:.4f}{margin}", evidence, told)]


UNEQUAL_WORK = 0.05  # seed-matched runs whose token counts differ by more than this share are said to


def unequal_work(state: CampaignState, ref_id: str, exp_id: str, seed: int, evidence: dict) -> str:
    """Under a wall-clock run budget: the tokens a seed-matched pair trained, and a clause when they differ by more than
    UNEQUAL_WORK (the machine's load, not the change, then explains part of the difference); "" otherwise."""
    if not state.base.budget.seconds:
        return ""
    a, b = ((state.results(i).get(seed) or {}).get("tokens") for i in (ref_id, exp_id))
    if not a or not b:
        return ""
    evidence["pair_tokens"] = [a, b]
    if abs(b / a - 1) <= UNEQUAL_WORK:
        return ""
    return (f"; the pair trained {a:,} vs {b:,} tokens ({b / a - 1:+.0%}) in the same wall-clock budget: the machine's load, not "
            "only the change, moved this difference (a token --run-budget keeps pairs comparable)")


def decide_screen(state: CampaignState, exp: dict, value: float, evidence: dict) -> list[Action]:
    """A finished screen: adopt it (the incumbent moves), combine it with an incumbent that
    moved on since it was proposed, or discard it. None of these is a claim."""
    cfg = state.cfg
    parent = state.parent_of(exp)
    seed = state.screen_seed(exp)
    ref = state.values_by_seed(parent["id"]).get(seed)
    if ref is None:
        if f"{parent['id']}-s{seed}" in state.failed or parent["status"] in (Phase.REJECTED, Phase.FAILED):
            return [Decide("discard", f"its parent {parent['id']} has no seed-{seed} result to compare with", evidence)]
        return []  # the parent's reference run is still going: decided when it is in
    diff = value - ref
    p = policy.p_improvement(diff, cfg.screen_noise)
    parent_told = state.told_value(parent)
    told = parent_told + diff if parent_told is not None else value
    evidence.update(stage="screen", parent=parent["id"], seed=seed, parent_value=ref, diff=diff, p_improvement=p,
                    screen_noise=cfg.screen_noise, told=told)
    vs = f"{value:.4f} vs its parent's {ref:.4f} on seed {seed} ({diff:+.4f}, {policy.describe_p(p)} at paired noise {cfg.screen_noise:g})"
    vs += unequal_work(state, parent["id"], exp["id"], seed, evidence)
    if diff == 0:
        return [Decide("discard", f"screen: {value:.4f}, exactly its parent's on seed {seed}: the change does not alter training "
                       "(e.g. a fraction that rounds to the same steps)", evidence, told, effect=diff)]
    if not policy.adopt(diff, cfg.screen_noise, cfg.adopt_p):
        return [Decide("discard", f"screen: {vs}; adopt at P >= {cfg.adopt_p:g}", evidence, told, effect=diff)]
    inc = state.incumbent
    evidence["reference_seed"] = state.next_reference_seed() if cfg.fresh_reference else seed
    fresh = f"; its children are screened on seed {evidence['reference_seed']}" if cfg.fresh_reference else ""
    if parent["id"] == inc["id"]:
        return [Decide("keep", f"adopted as the incumbent on screened evidence: {vs}{fresh}. Not a claim: the confirmation phase "
                       "tests it", evidence, told, effect=diff)]
    # it beat its parent, but the incumbent moved on meanwhile (parallel screens of one parent): both are
    # winners over the same parent; the better one on the same seed becomes the incumbent, and their merge is
    # screened next, first in line
    inc_value = state.values_by_seed(inc["id"]).get(seed)
    if inc_value is not None and policy.adopt(value - inc_value, cfg.screen_noise, cfg.adopt_p):
        evidence.update(incumbent=inc["id"], incumbent_value=inc_value)
        return [Decide("keep", f"adopted as the incumbent on screened evidence: {vs}, and {value:.4f} vs the incumbent {inc['id']}'s "
                       f"{inc_value:.4f} on the same seed{fresh}. Not a claim: the confirmation phase tests it", evidence, told,
                       effect=diff),
                Combine(exp, inc, parent, log=True)]
    evidence.pop("reference_seed")
    return [Combine(inc, exp, parent),
            Decide("inconclusive", f"screen: {vs}, but the incumbent {inc['id']} moved on meanwhile and is better on the same "
                   f"seed{MERGED}", evidence, told, effect=diff)]


def combination(state: CampaignState, adopted: dict, other: dict, parent: dict) -> dict | None:
    """The experiment that merges two winners over the same parent: `adopted`'s recipe plus
    `other`'s config changes relative to the parent (on keys `adopted` did not change), as
    the ledger's add_experiment arguments. None when there is nothing to merge (a code or
    data change, no new key, an invalid recipe)."""
    if any((e["change"] or {}).get("patch") for e in (adopted, other)):
        return None
    start = state.recipe_of(parent)
    mine = recipe_diff(start, state.recipe_of(adopted))
    values = {k: b for k, (_, b) in recipe_diff(start, state.recipe_of(other)).items() if k not in mine}
    values = {k: v for k, v in values.items() if not k.startswith(("data.", "budget.")) and k not in ("seed", "name")}
    if not values:
        return None
    incumbent = state.recipe_of(adopted)
    try:
        recipe = validate(CampaignView(state.base, incumbent, [], None, []), Proposal("config", "", "", "", values=values))
    except (ValueError, UserError):
        return None
    diff = recipe_diff(incumbent, recipe)
    if not diff:
        return None
    seed = state.reference_seed(adopted)
    return dict(hypothesis=f"combine {adopted['id']} and {other['id']}: two winners over {parent['id']}", kind="config",
                proposer="campaign", proposer_type="strategy",
                rationale=f"both beat {parent['id']} on the screen; {adopted['id']} plus the change of {other['id']}",
                parent_recipe=incumbent.to_dict(),
                change={"values": values, "recipe": recipe.to_dict(), "diff": {k: list(v) for k, v in diff.items()}, "parent": adopted["id"],
                        "combines": [adopted["id"], other["id"]], "screen_seed": seed, "seeds": [seed]},
                status=Phase.QUEUED, role=Role.COMBINATION)


def finish_transfer(state: CampaignState, candidate_id: str) -> list[Action]:
    """Both sides of a transfer check measured: keep the candidate if its gain holds at the
    larger rung."""
    sides = {e["change"]["role"]: e for e in state.with_role(Role.TRANSFER) if e["change"]["transfer_of"] == candidate_id}
    if len(sides) < 2 or any(e["status"] != Phase.DECIDED for e in sides.values()):
        return []
    small = sides["candidate"]["change"]["small_scale"]
    cmp = compare_runs(state, sides["incumbent"]["id"], sides["candidate"]["id"])
    holds = cmp.verdict == IMPROVEMENT
    evidence = {"small_scale": small, "transfer": cmp.to_dict(), "transfer_rung": state.cfg.transfer,
                "transfer_experiments": {role: e["id"] for role, e in sides.items()}}
    prediction = sides["candidate"]["change"].get("prediction")
    predicted = ""
    if prediction:
        evidence["prediction"] = prediction
        predicted = f"; the ladder's law {transfer_verdict(prediction, cmp.effect, (cmp.ci_low, cmp.ci_high))}"
    why = (f"small scale: effect {small['effect']:+.4f}; at the larger rung: {cmp.summary()} — "
           + ("the gain holds" if holds else "the gain does not hold at scale") + predicted)
    return [Decide("keep" if holds else "discard", why, evidence, small["mean_candidate"], cmp)]


@dataclass
class Claims:
    """The confirmation phase's claims: one decision per confirmation experiment, and the
    key groups to drop from the recipe handed back (their ablation scored better)."""

    decisions: list[tuple[dict, Decide]] = field(default_factory=list)
    drop: dict[str, dict] = field(default_factory=dict)  # group -> the values it reverts
    effects: dict[str, float] = field(default_factory=dict)  # group -> its effect in the final recipe
    final: dict | None = None  # the confirmation experiment of the final recipe


def claims(state: CampaignState) -> Claims | None:
    """Once every confirmation experiment is measured: the claims, by paired t-tests on the
    confirmation seeds with one noise estimate pooled over all of their runs, and the groups
    whose ablation scored better (dropped from the recipe handed back). None until then."""
    cfg = state.cfg
    confirm = state.confirmation()
    if not confirm or any(e["status"] != Phase.MEASURED for e in confirm):
        return None
    baseline = state.baseline["id"]
    if any(f"{baseline}-s{s}" not in state.failed for s in state.missing_baseline_seeds()):
        return None  # the baseline's own confirmation seed (--seeds 2) has not finished yet
    final_exp = next(e for e in confirm if e["change"]["confirm"] == "final")
    seeds = state.confirmation_seeds()
    runs = {e["id"]: {s: v for s, v in state.values_by_seed(e["id"]).items() if s in seeds} for e in [state.baseline, *confirm]}
    # (reference, candidate): the final recipe vs the baseline; the final recipe vs itself without the group
    comparisons = {e["id"]: (baseline if e is final_exp else e["id"], final_exp["id"]) for e in confirm}
    # one family: the final recipe's claim first, what each group carries only if it holds (Holm over those)
    results = gatekept(pooled_paired(runs, comparisons, alpha=cfg.alpha), final_exp["id"])
    # the noise the claims were tested with, against the prior the screens adopted changes with
    noise = paired_noise(runs, list(runs), assumed=cfg.screen_noise if cfg.decision == "screen" else None)
    groups = final_exp["change"].get("groups") or {}
    out = Claims(final=final_exp)
    carried: dict[str, float] = {}  # group -> its effect in the final recipe (negative: it helps)
    for e in confirm:
        cmp = results.get(e["id"])
        group = e["change"].get("group") or (next(iter(groups)) if e is final_exp and len(groups) == 1 else None)
        what = "the final recipe improves on the baseline" if e is final_exp else f"the change of {group} improves the final recipe"
        if e is final_exp and group:
            what += f" (its only change, {group})"
        if cmp is None:
            verdict, why = "inconclusive", f"claim not testable: too few runs on the confirmation seeds ({what})"
        else:
            verdict = {IMPROVEMENT: "keep", REGRESSION: "discard"}.get(cmp.verdict, "inconclusive")
            why = f"claim: {what} — {cmp.summary()}, noise pooled over the confirmation phase's runs"
            if group:
                carried[group] = cmp.effect
        out.decisions.append((e, Decide(verdict, why, {"stage": "claim", "claim": "final" if e is final_exp else "ablation",
                                                       "comparison": cmp.to_dict() if cmp else None, "group": group,
                                                       "seeds": e["change"]["seeds"], "screen_noise_assumed": cfg.screen_noise,
                                                       "paired_noise": noise},
                                        cmp=cmp, by=f"pooled paired t-test, alpha={cfg.alpha} for the campaign's claims together",
                                        observe=False)))
    adoptions = [(list((state.experiment(d["experiment_id"])["change"] or {}).get("diff") or {}), d["evidence"]["diff"])
                 for d in state.decisions
                 if d["verdict"] == "keep" and (d.get("evidence") or {}).get("stage") == "screen" and d["evidence"].get("diff") is not None]
    for g in policy.to_drop(carried, policy.screened_by_group(adoptions), pairs=len(seeds)):
        out.drop[g], out.effects[g] = groups[g], carried[g]
    return out
