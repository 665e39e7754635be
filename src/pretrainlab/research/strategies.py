"""Strategies propose experiments; the campaign runs them and tells them the results.

One small interface (`Strategy.propose` / `Strategy.observe`) and a registry. Offline
strategies live here: `random` and `optuna` (TPE over the declared search space) search
config changes; `manual` serves experiments a person queued. LLM strategies (Claude, any
OpenAI-compatible model) implement the same interface in their own modules.
"""

from __future__ import annotations

import math
import random as pyrandom
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from ..config import Recipe
from .space import Param, apply


@dataclass
class Proposal:
    """One experiment: a change to the incumbent recipe, with who proposed it and why."""

    kind: str  # "config" | "code" | "data"
    hypothesis: str
    rationale: str
    proposer: str  # strategy name, or a person's name for manual experiments
    model_id: str | None = None  # the LLM behind the proposal, if any
    values: dict[str, Any] = field(default_factory=dict)  # config: dotted key -> value
    patch: str | None = None  # code: a unified diff against the harness source
    weights: dict[str, float] | None = None  # data: domain mixture
    # data: the data recipe's full ordered steps, built into a derived corpus of the base corpus's sources
    # (research/data_experiments.py); None: the corpus stays
    data_steps: list[dict] | None = None
    handle: Any = None  # the strategy's own bookkeeping (e.g. an optuna trial)


@dataclass
class CampaignView:
    """What a strategy may see of the campaign when proposing."""

    base: Recipe
    incumbent: Recipe
    space: list[Param]
    incumbent_value: float | None  # mean val_bpb of the incumbent's replicates
    history: list[dict]  # past experiments: proposal fields + full recipe + value + verdict
    seed: int = 0
    max_changes: int = 2  # search strategies change at most this many keys of the incumbent (0: all)


def current_values(recipe: Recipe | dict, space: list[Param]) -> dict[str, Any]:
    """The recipe's value of every key in the space."""
    d = recipe.to_dict() if isinstance(recipe, Recipe) else recipe
    out = {}
    for p in space:
        node = d
        for part in p.key.split("."):
            node = node[part]
        out[p.key] = node
    return out


def same_value(p: Param, a: Any, b: Any, tol: float = 0.05) -> bool:
    """Equal, or for floats within `tol` of the param's (log-)range: not worth a run."""
    if p.kind != "float" or not isinstance(a, (int, float)) or not isinstance(b, (int, float)):
        return a == b
    if p.log:
        if min(a, b, p.low) <= 0:
            return a == b
        a, b, lo, hi = math.log(a), math.log(b), math.log(p.low), math.log(p.high)
    else:
        lo, hi = p.low, p.high
    return abs(a - b) <= tol * (hi - lo)


def pick_keys(rng: pyrandom.Random, space: list[Param], max_changes: int) -> list[Param]:
    """Which parameters one proposal changes: 1..max_changes of them (all when 0). Small
    changes make each experiment an ablation whose effect is attributable."""
    if max_changes <= 0 or max_changes >= len(space):
        return list(space)
    return rng.sample(space, rng.randint(1, max_changes))


class Strategy(ABC):
    name: str = "?"
    model_id: str | None = None

    @abstractmethod
    def propose(self, view: CampaignView, n: int) -> list[Proposal]:
        """Up to n new experiments (fewer, or none, is fine)."""

    def observe(self, proposal: Proposal, value: float | None) -> None:
        """The experiment's mean val_bpb (None: it failed)."""


class RandomStrategy(Strategy):
    """Uniform (log-uniform where declared) samples of a few keys of the search space at a
    time, the rest kept at the incumbent's values."""

    name = "random"

    def __init__(self, seed: int = 0):
        self.rng = pyrandom.Random(seed)

    def propose(self, view: CampaignView, n: int) -> list[Proposal]:
        out = []
        now = current_values(view.incumbent, view.space)
        for _ in range(n):
            values = {p.key: self._sample(p, now[p.key]) for p in pick_keys(self.rng, view.space, view.max_changes)}
            out.append(Proposal("config", f"random change of {', '.join(values)}", "random search baseline", self.name, values=values))
        return out

    def _sample(self, p: Param, current: Any):
        if p.kind == "categorical":
            return self.rng.choice([c for c in p.choices if c != current] or list(p.choices))
        if p.kind == "int":
            return self.rng.choice([v for v in range(int(p.low), int(p.high) + 1) if v != current] or [current])
        if p.log:
            return math.exp(self.rng.uniform(math.log(p.low), math.log(p.high)))
        return self.rng.uniform(p.low, p.high)


class OptunaStrategy(Strategy):
    """Optuna's TPE sampler over the search space, driven with ask/tell so experiments
    can run in parallel and finish in any order. Each trial fixes all but 1..max_changes
    keys at the incumbent's values (optuna's enqueued fixed params) and lets TPE choose
    the rest, so TPE still models the full recipe while each experiment stays an ablation."""

    name = "optuna"

    def __init__(self, seed: int = 0):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.optuna = optuna
        self.rng = pyrandom.Random(seed)
        self.study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=5))
        self._warm = False

    def _dists(self, space: list[Param]) -> dict:
        d = self.optuna.distributions
        return {p.key: (d.CategoricalDistribution(list(p.choices)) if p.kind == "categorical" else
                        d.IntDistribution(int(p.low), int(p.high)) if p.kind == "int" else
                        d.FloatDistribution(p.low, p.high, log=p.log)) for p in space}

    def propose(self, view: CampaignView, n: int) -> list[Proposal]:
        if not self._warm:  # warm start: TPE learns from what the campaign already measured
            self._warm = True
            self._add_history(view)
        dists = self._dists(view.space)
        now = current_values(view.incumbent, view.space)
        out = []
        for _ in range(n):
            for _attempt in range(20):
                free = {p.key for p in pick_keys(self.rng, view.space, view.max_changes)}
                self.study.enqueue_trial({k: v for k, v in now.items() if k not in free})
                trial = self.study.ask(dists)
                space = {p.key: p for p in view.space}
                values = {k: trial.params[k] for k in free if not same_value(space[k], trial.params[k], now[k])}
                if values:
                    break
                # TPE chose the incumbent itself: tell it the incumbent's measured value and ask again
                self._tell(trial.number, view.incumbent_value)
            else:
                continue
            out.append(Proposal("config", f"TPE change of {', '.join(sorted(values))}",
                                f"TPE (optuna) trial {trial.number}, {len(self.study.get_trials(deepcopy=False))} trials so far; other keys at the incumbent's values",
                                self.name, values=values, handle=trial.number))
        return out

    def observe(self, proposal: Proposal, value: float | None) -> None:
        if proposal.handle is not None:
            self._tell(proposal.handle, value)

    def _tell(self, number: int, value: float | None) -> None:
        if value is None:
            self.study.tell(number, state=self.optuna.trial.TrialState.FAIL)
        else:
            self.study.tell(number, value)

    def _add_history(self, view: CampaignView) -> None:
        dists = self._dists(view.space)
        for past in view.history:
            if past.get("value") is None or past.get("kind") != "config" or not past.get("recipe"):
                continue
            try:
                params = current_values(past["recipe"], view.space)
                self.study.add_trial(self.optuna.trial.create_trial(params=params, distributions=dists, value=past["value"]))
            except (KeyError, ValueError):
                continue  # outside today's space: skip


class ManualStrategy(Strategy):
    """Experiments queued by a person (`pretrainlab research suggest`); proposes nothing else."""

    name = "manual"

    def __init__(self, seed: int = 0):
        self.queue: list[Proposal] = []

    def propose(self, view: CampaignView, n: int) -> list[Proposal]:
        taken, self.queue = self.queue[:n], self.queue[n:]
        return taken


STRATEGIES: dict[str, type[Strategy]] = {"random": RandomStrategy, "optuna": OptunaStrategy, "manual": ManualStrategy}


def validate(view: CampaignView, proposal: Proposal) -> Recipe:
    """The recipe a config proposal would run; ValueError naming the bad field otherwise."""
    return apply(view.incumbent, proposal.values)
