"""What the campaign runs next, as a pure function of its state (research/state.py).

`next_step(state, ...)` answers "a slot is free: what now?" with one step: a run to start,
a phase to open, the strategy to ask, or why the slot stays idle. The campaign carries the
step out and asks again until a run starts or the answer is to wait. In order:

1. the budget: nothing starts once one more run would not fit;
2. runs owed: the incumbent's extra seeds for paired re-tests, then the pending seeds of
   running experiments;
3. the end of the budget belongs to the confirmation phase (screen policy): its runs, and
   the room to confirm every change that a screen in flight could still adopt;
4. queued experiments (merges of winners first, then proposals and people's suggestions),
   else new proposals from the strategy;
5. before the first screen of a new incumbent, its reference run on its reference seed.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..ledger.store import Phase, Role
from .state import CampaignState


@dataclass
class Run:
    """Start the experiment's run on this seed index; `screen`: it starts as a screen
    (queued -> running on one seed)."""

    exp_id: str
    seed: int
    screen: bool = False


@dataclass
class Idle:
    reason: str


@dataclass
class StartConfirmation:
    """Open the confirmation phase, then ask again; `otherwise`: the step to take if there
    was nothing to confirm or no room for it."""

    otherwise: "Step"


@dataclass
class RecordClaims:
    """Every run of the confirmation phase is out or in: record the claims if it is all in."""


@dataclass
class AskStrategy:
    pass


@dataclass
class Unaffordable:
    """The next queued experiment does not fit beside the confirmation it would need."""

    exp_id: str
    cost: int


Step = Run | Idle | StartConfirmation | RecordClaims | AskStrategy | Unaffordable


def queued(state: CampaignState) -> list[dict]:
    """Queued experiments in the order they start: merges of winners first."""
    return sorted((e for e in state.experiments if e["status"] == Phase.QUEUED), key=lambda e: e["role"] != Role.COMBINATION)


def next_step(state: CampaignState, may_ask: bool, strategy: str) -> Step:
    """The next thing to do with a free slot. `may_ask`: the strategy may be asked for
    proposals now (it is not capped, and something was decided since it last had none)."""
    cfg = state.cfg
    if state.budget_spent():
        return Idle("run budget spent")
    inc, base = state.incumbent, state.baseline
    if inc is not None:  # the incumbent's extra seeds for paired re-tests come first: candidates wait on them
        for seed in range(state.incumbent_seeds_needed()):
            if state.pending(inc["id"], seed):
                return Run(inc["id"], seed)
    for exp in state.experiments:  # pending seeds of running experiments
        for seed in state.seeds_of(exp):
            if state.pending(exp["id"], seed):
                return Run(exp["id"], seed)
    if base is None or (inc is None and base["status"] == Phase.DECIDED):
        return Idle("no baseline")  # a baseline that produced nothing: the campaign cannot compare
    screening = state.screening()
    if cfg.decision == "screen":  # the end of the budget belongs to the confirmation phase
        if any(e["status"] != Phase.DECIDED for e in state.confirmation()):
            for seed in state.missing_baseline_seeds():  # --seeds 2: the baseline's second confirmation seed
                key = f"{base['id']}-s{seed}"
                if key not in state.running and key not in state.failed:
                    return Run(base["id"], seed)
            return RecordClaims()
        if inc is not None and not state.confirmation() and state.budget_spent(extra=state.confirmation_cost()):
            if screening:  # a screen in flight may still move the incumbent: confirm what it hands back
                return Idle("reserved for the confirmation phase")
            return StartConfirmation(Idle("nothing to confirm"))
    elif cfg.decision != "greedy" and state.budget_spent(extra=screening * cfg.seeds):
        return Idle("reserved for replicates of screens in flight")  # room to replicate them, on `seeds` fresh seeds each
    waiting = queued(state)
    if not waiting and may_ask:
        return AskStrategy()
    if not waiting:
        idle = Idle("proposals awaiting approval" if any(e["status"] == Phase.AWAITING_APPROVAL for e in state.experiments)
                    else f"strategy {strategy} proposed nothing new")
        if cfg.decision == "screen" and inc is not None and not screening and not state.confirmation():
            return StartConfirmation(idle)  # nothing more to screen: confirm what the campaign hands back
        return idle
    exp = waiting[0]
    if cfg.decision == "screen" and inc is not None:
        ref = state.reference_seed(inc)
        missing_reference = int(state.pending(inc["id"], ref))
        if state.budget_spent(extra=state.confirmation_cost(also=exp) + missing_reference):
            if screening:  # its ablation would not fit if it were adopted: wait for the screens in flight
                return Idle("reserved for the confirmation phase")
            if state.confirmation():
                return Idle("run budget spent: the final recipe is confirmed")
            return StartConfirmation(Unaffordable(exp["id"], state.confirmation_cost(also=exp)))
        if missing_reference:  # the incumbent's fresh reference run, before its first child
            return Run(inc["id"], ref)
    listed = (exp["change"] or {}).get("seeds")
    return Run(exp["id"], listed[0] if listed else 0, screen=True)

