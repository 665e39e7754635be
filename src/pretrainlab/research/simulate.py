"""An in-process stand-in for training: a runner whose runs finish instantly on a virtual
clock, with val_bpb drawn from a known landscape, so campaign logic (decisions, scheduling,
budgets, the confirmation phase) is tested and tuned in milliseconds instead of by
training real models in subprocesses.

    from pretrainlab.research.simulate import Landscape, simulate
    result = simulate(CampaignConfig(recipe="tiny-cpu", budget_runs=40, strategy="optuna"), Landscape(seed=0), tmp_dir)
    result["final_true"]      # the final recipe's noise-free val_bpb under the landscape

The noise has the structure measured on real tiny-cpu runs (docs/benchmarks.md, "Research
loop"): a run's val_bpb is

    landscape(recipe) + seed_offset(seed) + run_noise(recipe, seed)

where `seed_offset` (std `seed_std`, 0.026 bpb at 80k tokens) is shared by every recipe run
on that seed (same batches, same initialisation draws) and `run_noise` (std `run_std`) is
specific to the recipe and seed. The same recipe on the same seed gives the same number, as
deterministic CPU runs do. The half-budget rung sees a scaled, noisier version of the same
landscape. `Landscape(flat=True)` gives every recipe the same true value: an A/A world
where every recorded claim of an improvement is false.

`MixtureLandscape` and `simulate_mixture` do the same for mixture campaigns
(research/mixture_campaign.py): per-domain values as a function of the domain weights.
"""

from __future__ import annotations

import hashlib
import json
import math
import random as pyrandom
from dataclasses import dataclass, field
from pathlib import Path

from .. import rundir
from ..config import Recipe, apply_overrides
from ..recipes import budget_tokens, estimate_flops_per_token
from ..runners.base import OVERHEAD, Attempt, Job, JobResult, RunnerEvent, Slots
from ..runners.sandbox import Sandbox


def _unit(key: str) -> float:
    """A deterministic draw in [0, 1) from a string."""
    return int(hashlib.sha256(key.encode()).hexdigest()[:12], 16) / 16**12


def _normal(key: str) -> float:
    """A deterministic standard normal draw from a string (Box-Muller)."""
    u1, u2 = max(_unit(key + "/a"), 1e-12), _unit(key + "/b")
    return math.sqrt(-2 * math.log(u1)) * math.cos(2 * math.pi * u2)


@dataclass
class Landscape:
    """val_bpb as a function of (recipe, seed) around the tiny-cpu recipe. Each key of the
    default search space adds a bowl in a normalised coordinate (log2(value / base) / 2
    for learning rates, the shift in units of the range otherwise) with its optimum drawn
    per landscape seed; a few keys interact."""

    seed: int = 0
    base_value: float = 3.745  # tiny-cpu at 80k tokens, fresh-seed mean
    seed_std: float = 0.026  # shared by all recipes on a seed
    run_std: float = 0.009  # recipe x seed, independent: a paired difference has std 0.013, as measured
    rung_seed_std: float = 0.045  # at the half-budget rung
    rung_run_std: float = 0.02
    gain_scale: float = 1.0  # multiplies every effect (0: flat)
    flat: bool = False
    optimum: dict = field(default_factory=dict)
    curvature: dict = field(default_factory=dict)
    rung_factor: dict = field(default_factory=dict)

    def __post_init__(self):
        rng = pyrandom.Random(self.seed)
        # (key, curvature range): the loss added at distance 1 from the optimum, in bpb
        # magnitudes as measured on tiny-cpu at 80k tokens: 2x batch +0.15, half the Muon LR +0.07, width 192 -0.04,
        # 2x Muon LR -0.01, 2x AdamW LR +0.02, warmdown 0.7 +0.02 (seed-matched differences over 2-3 seeds)
        spec = {"optim.lr": (0.04, 0.12), "optim.muon_lr": (0.08, 0.2), "optim.warmdown_frac": (0.03, 0.1),
                "optim.warmup_frac": (0.005, 0.02), "optim.weight_decay": (0.005, 0.02), "model.n_layer": (0.03, 0.1),
                "model.n_embd": (0.03, 0.08), "train.batch_tokens": (0.06, 0.15)}
        for k, (lo, hi) in spec.items():
            self.curvature.setdefault(k, rng.uniform(lo, hi))
            self.optimum.setdefault(k, rng.uniform(-0.2, 0.8) * rng.choice((-1, 1)))
            # how the key's effect looks at the half-budget rung: schedule changes can even look better there
            # (a longer warmdown has started decaying the LR at the rung) while ending worse
            self.rung_factor.setdefault(k, rng.uniform(-1.0, 0.5) if k == "optim.warmdown_frac" else rng.uniform(0.3, 1.8))

    def coords(self, recipe: Recipe) -> dict[str, float]:
        o, m, t = recipe.optim, recipe.model, recipe.train
        return {"optim.lr": math.log2(o.lr / 0.015) / 2, "optim.muon_lr": math.log2(o.muon_lr / 0.035) / 2,
                "optim.warmdown_frac": (o.warmdown_frac - 0.4) / 0.7, "optim.warmup_frac": (o.warmup_frac - 0.02) / 0.1,
                "optim.weight_decay": (o.weight_decay - recipe.optim.__class__().weight_decay) / 0.1,
                "model.n_layer": (m.n_layer - 4) / 4, "model.n_embd": (m.n_embd - 128) / 64,
                "train.batch_tokens": math.log2(t.batch_tokens / 2048)}

    def effects(self, recipe: Recipe) -> dict[str, float]:
        """Each key's contribution to val_bpb relative to the base recipe (noise-free)."""
        if self.flat:
            return {}
        x = self.coords(recipe)
        out = {k: self.gain_scale * self.curvature[k] * ((x[k] - self.optimum[k]) ** 2 - self.optimum[k] ** 2) for k in x}
        # interactions: a deeper or wider model wants a lower learning rate
        size = x["model.n_layer"] + x["model.n_embd"]
        out["size x lr"] = self.gain_scale * 0.02 * size * (x["optim.lr"] + x["optim.muon_lr"])
        return out

    def true_value(self, recipe: Recipe) -> float:
        return self.base_value + sum(self.effects(recipe).values())

    def value(self, recipe: Recipe, seed: int, rung: bool = False) -> float:
        """One run's val_bpb (final, or at the half-budget rung)."""
        d = {k: v for k, v in recipe.to_dict().items() if k not in ("name", "seed", "budget", "train")}
        # precision, and the vocabulary (the corpus's, pinned in a base recipe by research.config.with_corpus_vocab): not a
        # recipe the landscape knows
        d["model"] = {k: v for k, v in d["model"].items() if k != "residual_dtype"} | {"vocab_size": None}
        key = json.dumps(d, sort_keys=True) + str(recipe.train.batch_tokens)
        tag = f"{self.seed}/{seed}/{'rung' if rung else 'final'}"
        offset = _normal(f"offset/{tag}") * (self.rung_seed_std if rung else self.seed_std)
        noise = _normal(f"run/{tag}/{key}") * (self.rung_run_std if rung else self.run_std)
        if not rung:
            return self.true_value(recipe) + offset + noise
        effects = self.effects(recipe)
        return self.base_value + 0.17 + sum(v * self.rung_factor.get(k, 1.0) for k, v in effects.items()) + offset + noise


@dataclass
class MixtureLandscape:
    """Per-domain val_bpb as a function of the domain weights (data.weights; none = the
    natural mixture), for mixture campaigns (research/mixture_campaign.py): a domain's bpb
    falls with the log of the share of the batch that teaches it, its own share plus a part
    of related domains' (`transfer`), so the overall value has an interior optimum. Seed
    offsets are shared by every mixture on a seed, as in `Landscape`; run noise is per
    mixture, seed and domain. Overall val_bpb is the mean over domains (equal evaluation
    tokens per domain at one byte per token)."""

    natural: dict = field(default_factory=lambda: {"code": 0.48, "docs": 0.063, "literature": 0.457})
    base: dict = field(default_factory=lambda: {"code": 2.6, "docs": 3.1, "literature": 3.3})
    gain: dict = field(default_factory=lambda: {"code": 0.12, "docs": 0.2, "literature": 0.1})  # bpb per unit of log share
    transfer: dict = field(default_factory=lambda: {("docs", "code"): 0.3, ("code", "docs"): 0.1})  # (to, from): share that teaches `to`
    seed: int = 0
    seed_std: float = 0.02
    run_std: float = 0.006
    floor: float = 0.02  # a domain's bpb with none of its data: what the others teach it, at least this share

    def weights(self, recipe: Recipe) -> dict[str, float]:
        w = recipe.data.weights or self.natural
        total = sum(w.get(d, 0.0) for d in self.natural)
        return {d: w.get(d, 0.0) / total for d in self.natural}

    def true_domains(self, weights: dict[str, float]) -> dict[str, float]:
        out = {}
        for d in self.natural:
            taught = weights[d] + sum(t * weights[src] for (to, src), t in self.transfer.items() if to == d)
            out[d] = self.base[d] - self.gain[d] * math.log(taught + self.floor)
        return out

    def true_value(self, recipe: Recipe, domains: list[str] | None = None) -> float:
        per = self.true_domains(self.weights(recipe))
        return sum(per[d] for d in domains or per) / len(domains or per)

    def domain_values(self, recipe: Recipe, seed: int) -> dict[str, float]:
        w = self.weights(recipe)
        key = json.dumps({d: round(v, 6) for d, v in w.items()}, sort_keys=True) + f"/{recipe.model.n_layer}"
        offset = {d: _normal(f"mix-offset/{self.seed}/{seed}/{d}") * self.seed_std for d in w}  # shared by every mixture on the seed
        return {d: v + offset[d] + _normal(f"mix-run/{self.seed}/{seed}/{d}/{key}") * self.run_std for d, v in self.true_domains(w).items()}

    def value(self, recipe: Recipe, seed: int, rung: bool = False) -> float:
        per = self.domain_values(recipe, seed)
        return sum(per.values()) / len(per)


@dataclass
class _SimRun:
    job: Job
    recipe: Recipe
    seed: int
    slot: int
    started_at: float
    ends_at: float
    rung_at: float | None
    reason: str | None = None
    rung_written: bool = False


class SimulatedRunner(Slots):
    """The Runner interface (runners/base.py) on a virtual clock: a full run takes `run_s` virtual
    seconds; a run evaluates at its rungs (train.eval_every_frac) and when it ends; stop()
    ends it at once, with the tokens it had trained, as the real trainer does."""

    sandbox = Sandbox(None, "simulated: no experiment process runs")

    def __init__(self, landscape: Landscape, num_slots: int = 2, run_s: float = 20.0):
        self.landscape = landscape
        self.num_slots = num_slots
        self.run_s = run_s
        self.now = 0.0
        self.created = 0.0
        self.last_submit = 0.0
        self._running: dict[str, _SimRun] = {}
        self._busy_s = 0.0
        self.idle: dict[str, float] = {}
        self.submitted: list[str] = []  # job keys in start order

    def time(self) -> float:
        """The virtual clock (LocalRunner.time's counterpart)."""
        return self.now

    def submit(self, job: Job) -> None:
        assert self.free_slots() > 0 and job.key not in self._running
        if job.resume:
            recipe = Recipe.from_dict(rundir.load_json(job.out_dir / rundir.RECIPE))
        else:
            recipe = apply_overrides(Recipe.from_dict(json.loads(Path(job.recipe).read_text())), job.overrides)
        job.out_dir.mkdir(parents=True, exist_ok=True)
        rundir.write_json_atomic(job.out_dir / rundir.RECIPE, recipe.to_dict())
        rundir.write_rows(job.out_dir, [])
        slot = self._free_slot()
        frac = recipe.train.eval_every_frac
        self._running[job.key] = _SimRun(job, recipe, recipe.seed, slot, self.now, self.now + self.run_s,
                                         self.now + frac * self.run_s if frac else None)
        self.last_submit = self.now
        self.submitted.append(job.key)

    def release_orphan(self, key: str) -> bool:
        """Nothing outlives an in-process campaign: there are never orphans to stop."""
        return False

    def adopt(self, key: str) -> bool:
        """Nor any job to adopt."""
        return False

    def scoring_resources(self) -> dict:
        """Simulated runs have no weights: the lab's scoring never runs here."""
        return {"threads": 1, "gpus": False, "env": {}}

    def take_events(self) -> list[RunnerEvent]:
        """No node is ever lost on the virtual clock."""
        return []

    def stop(self, key: str, reason: str = "stopped") -> None:
        r = self._running[key]
        if r.reason is None:
            r.reason = reason
            r.ends_at = min(r.ends_at, self.now)

    def stopping(self, key: str) -> bool:
        return self._running[key].reason is not None

    def _write_rungs(self) -> None:
        for r in self._running.values():
            if r.rung_at is not None and not r.rung_written and self.now >= r.rung_at and r.reason is None:
                r.rung_written = True
                frac = r.recipe.train.eval_every_frac
                row = {"type": "eval", "step": 1, "tokens": int(frac * budget_tokens(r.recipe)), "progress": frac,
                       "val_bpb": self.landscape.value(r.recipe, r.seed, rung=True)}
                rundir.append_rows(r.job.out_dir, [row])

    def poll(self) -> list[JobResult]:
        self._write_rungs()
        done = []
        for key, r in sorted(self._running.items(), key=lambda kv: kv[1].ends_at):
            if r.ends_at > self.now:
                continue
            del self._running[key]
            self._busy_s += r.ends_at - r.started_at
            progress = (r.ends_at - r.started_at) / self.run_s
            finished = r.reason is None
            value = self.landscape.value(r.recipe, r.seed) if finished else None
            summary = {"status": "ok" if finished else "preempted", "val_bpb": value, "tokens": int(progress * budget_tokens(r.recipe)),
                       "seconds": r.ends_at - r.started_at, "steps": 1, "flops_per_token": estimate_flops_per_token(r.recipe)}
            if finished:
                final_row = {"type": "eval", "step": 2, "tokens": int(budget_tokens(r.recipe)), "progress": 1.0, "val_bpb": value}
                rundir.append_rows(r.job.out_dir, [final_row])
            rundir.write_summary(r.job.out_dir, summary)
            score_path = getattr(r.job, "score_path", None)
            if score_path is not None and finished:  # the lab's own score of the run (runners/scoring.py's verdict format)
                val = {"val_bpb": value}
                if hasattr(self.landscape, "domain_values"):  # per domain, as the lab scores them
                    val["domains"] = self.landscape.domain_values(r.recipe, r.seed)
                Path(score_path).parent.mkdir(parents=True, exist_ok=True)
                Path(score_path).write_text(json.dumps({"status": "ok", "splits": {"val": val}}))
            done.append(JobResult(r.job, summary["status"] if finished else r.reason, 0, summary, "", r.slot, r.started_at, r.ends_at,
                                  [Attempt(1, "simulated", r.started_at, r.started_at, r.ends_at)]))
        return done

    def sleep(self, seconds: float) -> None:
        """Advance the virtual clock to the next event (a rung or a run's end)."""
        events = [r.ends_at for r in self._running.values()]
        events += [r.rung_at for r in self._running.values() if r.rung_at is not None and not r.rung_written and r.reason is None]
        future = [t for t in events if t > self.now]
        target = min(future) if future else self.now + seconds
        idle = self.free_slots() * (target - self.now)
        if idle:
            self.idle[OVERHEAD] = self.idle.get(OVERHEAD, 0.0) + idle
        self.now = target

    def idle_because(self, reason: str) -> None:
        pass

    def idle_breakdown(self) -> dict[str, float]:
        return dict(self.idle)

    def utilisation(self, until: float | None = None) -> float:
        end = self.now if until is None else until
        busy = self._busy_s + sum(min(end, self.now) - r.started_at for r in self._running.values())
        return busy / max(1e-9, self.num_slots * (end - self.created))

    def shutdown(self) -> None:
        self._running.clear()


def simulate(cfg, landscape: Landscape, workdir: Path, strategy=None, runner: SimulatedRunner | None = None, ledger=None) -> dict:
    """Run one whole campaign against the landscape, in process; returns what a benchmark
    needs: the final recipe's true value, runs used, the decisions and the claims. The
    campaign goes into `ledger` if given (e.g. one that holds a transfer ladder), else into
    a new one in `workdir`."""
    from ..ledger import Ledger
    from .campaign import Campaign
    from .manage import make_strategy

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    ledger = ledger or Ledger(str(workdir / "ledger.db"))
    base = cfg.base_recipe()
    from dataclasses import asdict

    cid = ledger.create_campaign("simulated", goal="lowest val_bpb", config={"campaign": asdict(cfg), "base_recipe": base.to_dict()})
    runner = runner or SimulatedRunner(landscape, cfg.parallel)
    campaign = Campaign(ledger, cid, strategy or make_strategy(cfg, ledger, cid, echo=False), runner, workdir / "runs", echo=False)
    campaign.record_hidden_test = lambda: None  # simulated runs have no weights to score on the hidden split
    campaign.run(poll_s=1.0)
    final = campaign.final_recipe()
    return {"campaign": campaign, "ledger": ledger, "campaign_id": cid, "runner": runner,
            "final_true": landscape.true_value(final), "base_true": landscape.true_value(base), "final": final,
            "compute_used": campaign.compute_used(), "claims": campaign.claims()}


def simulate_mixture(cfg, landscape: MixtureLandscape, workdir: Path, runner: SimulatedRunner | None = None) -> dict:
    """Run one whole mixture campaign (research/mixture_campaign.py) against a
    MixtureLandscape, in process; returns the campaign's summary and the true values of the
    recommended, natural and uniform mixtures under the landscape."""
    from dataclasses import asdict

    from ..ledger import Ledger
    from .mixture_campaign import KIND, MixtureCampaign, plan, summary

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    ledger = Ledger(str(workdir / "ledger.db"))
    base = cfg.base_recipe()
    info = plan(cfg, {d: max(1, round(w * 1e6)) for d, w in landscape.natural.items()})
    cid = ledger.create_campaign("simulated mixture", config={"kind": KIND, "mixture": asdict(cfg), "base_recipe": base.to_dict(), **info})
    runner = runner or SimulatedRunner(landscape, cfg.parallel)
    MixtureCampaign(ledger, cid, runner, workdir / "runs", echo=False).run(poll_s=1.0)
    result = summary(ledger, cid)
    true = {}
    for role in ("natural", "uniform", "recommended"):
        arm = (result["arms"].get("campaign") or {}).get(role)
        if arm is not None:
            true[role] = landscape.true_value(apply_overrides(base, [f"data.weights={json.dumps(arm['weights'])}"]), cfg.target or None)
    return {"ledger": ledger, "campaign_id": cid, "runner": runner, "summary": result, "true": true}
