"""Strategies propose experiments; the campaign runs them and tells them the results.

One small interface (`Strategy.propose` / `Strategy.observe`) and a registry. Offline
strategies live here: `random` and `optuna` (TPE over the declared search space) search
config changes; `manual` serves experiments a person queued. LLM strategies (Claude, any
OpenAI-compatible model) implement the same interface in their own modules.
"""

from __future__ import annotations

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
    handle: Any = None  # the strategy's own bookkeeping (e.g. an optuna trial)


@dataclass
class CampaignView:
    """What a strategy may see of the campaign when proposing."""

    base: Recipe
    incumbent: Recipe
    space: list[Param]
    incumbent_value: float | None  # mean val_bpb of the incumbent's replicates
    history: list[dict]  # past experiments: proposal fields + value + verdict
    seed: int = 0


class Strategy(ABC):
    name: str = "?"
    model_id: str | None = None

    @abstractmethod
    def propose(self, view: CampaignView, n: int) -> list[Proposal]:
        """Up to n new experiments (fewer, or none, is fine)."""

    def observe(self, proposal: Proposal, value: float | None) -> None:
        """The experiment's mean val_bpb (None: it failed)."""


class RandomStrategy(Strategy):
    """Uniform (log-uniform where declared) samples of the search space."""

    name = "random"

    def __init__(self, seed: int = 0):
        self.rng = pyrandom.Random(seed)

    def propose(self, view: CampaignView, n: int) -> list[Proposal]:
        out = []
        for _ in range(n):
            values = {p.key: self._sample(p) for p in view.space}
            out.append(Proposal("config", "random point of the search space", "random search baseline", self.name, values=values))
        return out

    def _sample(self, p: Param):
        if p.kind == "categorical":
            return self.rng.choice(p.choices)
        if p.kind == "int":
            return self.rng.randint(int(p.low), int(p.high))
        if p.log:
            import math

            return math.exp(self.rng.uniform(math.log(p.low), math.log(p.high)))
        return self.rng.uniform(p.low, p.high)


class OptunaStrategy(Strategy):
    """Optuna's TPE sampler over the search space, driven with ask/tell so experiments
    can run in parallel and finish in any order."""

    name = "optuna"

    def __init__(self, seed: int = 0):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.optuna = optuna
        self.study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=5))
        self._seen: set[int] = set()

    def propose(self, view: CampaignView, n: int) -> list[Proposal]:
        if not self._seen:  # warm start: TPE learns from what the campaign already measured
            self._enqueue_history(view)
        d = self.optuna.distributions
        dists = {}
        for p in view.space:
            if p.kind == "categorical":
                dists[p.key] = d.CategoricalDistribution(list(p.choices))
            elif p.kind == "int":
                dists[p.key] = d.IntDistribution(int(p.low), int(p.high))
            else:
                dists[p.key] = d.FloatDistribution(p.low, p.high, log=p.log)
        out = []
        for _ in range(n):
            trial = self.study.ask(dists)
            self._seen.add(trial.number)
            out.append(Proposal("config", "TPE suggestion", f"TPE (optuna) trial {trial.number}, {len(self.study.trials)} trials so far",
                                self.name, values=dict(trial.params), handle=trial.number))
        return out

    def observe(self, proposal: Proposal, value: float | None) -> None:
        if proposal.handle is None:
            return
        state = self.optuna.trial.TrialState
        if value is None:
            self.study.tell(proposal.handle, state=state.FAIL)
        else:
            self.study.tell(proposal.handle, value)

    def _enqueue_history(self, view: CampaignView) -> None:
        self._seen.add(-1)
        keys = {p.key for p in view.space}
        for past in view.history:
            if past.get("value") is not None and past.get("kind") == "config" and set(past.get("values", {})) == keys:
                dists = {}
                for p in view.space:
                    d = self.optuna.distributions
                    dists[p.key] = (d.CategoricalDistribution(list(p.choices)) if p.kind == "categorical" else
                                    d.IntDistribution(int(p.low), int(p.high)) if p.kind == "int" else
                                    d.FloatDistribution(p.low, p.high, log=p.log))
                try:
                    self.study.add_trial(self.optuna.trial.create_trial(params=past["values"], distributions=dists, value=past["value"]))
                except ValueError:
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
