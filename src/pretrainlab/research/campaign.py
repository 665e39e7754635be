"""A research campaign: the loop that proposes, runs, decides and records.

    pretrainlab research start --recipe tiny-cpu --budget-runs 40 --run-budget 60s --strategy auto --parallel 2
    pretrainlab research resume CAMPAIGN        # after a crash or SIGKILL: no finished run lost, none repeated

`Campaign.run()` reads top to bottom:
  1. baseline: the starting recipe on `seeds` seeds -> the incumbent and its noise floor
     (screens of the first proposals start as soon as a slot is free; they are decided
     once the baseline is)
  2. the loop, until the run budget or the time budget is spent (or `research stop`):
     a. collect finished runs: register them, decide every experiment whose runs are all in
     b. early-stop runs clearly worse than the incumbent at a rung (successive halving)
     c. fill every free slot: pending replicates first, then queued experiments (people's
        suggestions), then new proposals from the strategy
  3. close: stop what still runs, mark the campaign, write the research log
Each experiment is screened on one seed; a screen no worse than the incumbent's run on the
same seed (+ `screen_margin` seed std) earns `seeds` replicates on the incumbent's seeds,
compared by the paired t-test over seed-matched runs (research/stats.py; Welch with
--decision welch); a promising "no effect" gets one more round of replicates where the
incumbent has those seeds (tested again at alpha / looks).
Everything lives in the ledger: experiments (with their phase and planned seeds in
`status`), runs (linked to their experiment), decisions with effect and CI, notes. Run
directories are named by experiment and seed, so `resume` finds finished runs on disk
even if the loop died before registering them.
"""

from __future__ import annotations

import json
import math
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..config import Recipe, apply_overrides
from ..errors import UserError
from ..recipes import estimate_params
from ..runners import Job, JobResult, LocalRunner
from ..runners.local import OVERHEAD
from . import early_stop
from .patches import apply_patch
from .space import default_space, recipe_diff
from .stats import IMPROVEMENT, compare, noise_floor
from .strategies import CampaignView, Proposal, Strategy, validate

DECIDER = "pretrainlab stats"  # decisions by the loop's statistics rule are attributed to it


@dataclass
class CampaignConfig:
    recipe: str = "tiny-cpu"  # a recipe name or a recipe.json path
    overrides: list[str] = field(default_factory=list)  # applied to the starting recipe
    goal: str = "val_bpb"
    budget_runs: int = 40  # training runs in total, baseline replicates included
    budget_hours: float = 0.0  # wall-clock cap for the campaign; 0 = none
    run_budget: str = "60s"  # per run: seconds ('60s', '5m') or tokens ('2e6tok')
    strategy: str = "auto"
    parallel: int = 2
    gpus: list[int] | None = None  # one GPU index per slot; None = CPU processes with the cores split fairly
    seeds: int = 3  # replicates for the baseline and for each confirmation round
    alpha: float = 0.05
    max_looks: int = 2  # confirmation rounds per experiment
    # a 1-seed screen earns replicates only if it is <= the incumbent's value (its seed-0 run when paired, else its
    # mean) + this many seed std. At 0 a no-effect change passes half the time (vs 98% at 2), while a change big
    # enough for the replicated test to confirm still passes almost always: the budget goes to likely winners.
    screen_margin: float = 0.0
    # "paired": seed-matched runs (common random numbers), paired t-test; "welch": unpaired replicates, Welch's
    # t-test; "greedy": one seed, keep if lower (the autoresearch rule, for comparison)
    decision: str = "paired"
    transfer: list[str] = field(default_factory=list)  # overrides of a larger rung; a winner must win there too before it is kept
    early_stop: bool = True
    approve_code: bool = False  # code patches wait for `research approve`
    strategy_seed: int = 0
    max_changes: int = 2  # keys an optuna/random proposal changes at once (0: the whole space)
    llm_model: str | None = None
    llm_base_url: str | None = None
    spend_cap_usd: float = 25.0  # for the whole campaign, across resumes (the spend is kept in the ledger)
    spend_cap_tokens: int = 5_000_000

    def __post_init__(self):
        if self.goal != "val_bpb":
            raise UserError(f"--goal {self.goal!r}: the lab optimises val_bpb (lower is better); use --goal val_bpb")
        if self.budget_runs < self.seeds + 1:
            raise UserError(f"--budget-runs {self.budget_runs} leaves nothing after the {self.seeds}-seed baseline: "
                            f"give at least {self.seeds + 2}")
        if self.budget_hours < 0:
            raise UserError(f"--budget-hours must be >= 0, got {self.budget_hours}")
        if self.spend_cap_usd < 0 or self.spend_cap_tokens < 0:
            raise UserError("--spend-cap-usd and --spend-cap-tokens must be >= 0")
        if self.decision not in ("paired", "welch", "greedy"):
            raise UserError(f"--decision {self.decision!r}: use paired (seed-matched t-test, the default), welch (unpaired), "
                            "or greedy (single seed, for comparison)")
        if self.gpus is not None and len(self.gpus) < self.parallel:
            raise UserError(f"--parallel {self.parallel} needs {self.parallel} GPUs, --gpus lists {len(self.gpus)}: lower --parallel or list more")
        if self.parallel < 1 or (self.seeds < 2 and self.decision != "greedy"):
            raise UserError("--parallel must be >= 1 and --seeds >= 2 (a t-test needs two replicates)")
        if self.screen_margin < 0:
            raise UserError(f"--screen-margin must be >= 0 (in seed standard deviations), got {self.screen_margin}")
        if self.max_changes < 0:
            raise UserError(f"--max-changes must be >= 0 (0 changes the whole search space), got {self.max_changes}")
        if not 0 < self.alpha < 0.5:
            raise UserError(f"--alpha must be in (0, 0.5), got {self.alpha}")
        run_budget_overrides(self.run_budget)  # validates
        if self.transfer:
            try:
                apply_overrides(Recipe(), self.transfer)
            except ValueError as e:
                raise UserError(f"--transfer: {e}") from None

    def base_recipe(self) -> Recipe:
        """The starting recipe; with early stopping on, runs also evaluate at half of
        their budget (the rung) unless the recipe already sets train.eval_every_frac."""
        from ..api import resolve_recipe

        recipe = resolve_recipe(self.recipe, [*self.overrides, *run_budget_overrides(self.run_budget)])
        if self.early_stop and not recipe.train.eval_every_frac:
            recipe.train.eval_every_frac = 0.5
        return recipe


def run_budget_overrides(spec: str) -> list[str]:
    """'60s' / '5m' / '1h' -> budget.seconds; '2e6tok' -> budget.tokens. The run budget is
    the only budget: the recipe's other budget fields are cleared."""
    s = spec.strip().lower()
    try:
        if s.endswith("tok"):
            return [f"budget.tokens={int(float(s[:-3]))}", "budget.seconds=0", "budget.flops=0"]
        unit = {"s": 1, "m": 60, "h": 3600}.get(s[-1])
        value = float(s[:-1]) * unit if unit else float(s)
        if value <= 0:
            raise ValueError
        return [f"budget.seconds={value:g}", "budget.tokens=0", "budget.flops=0"]
    except ValueError:
        raise UserError(f"--run-budget {spec!r}: use seconds like 60s / 5m or tokens like 2e6tok") from None


# ---- experiment phases, kept in the ledger's experiments.status -------------------------------------
# queued            proposed, waiting for a slot        awaiting-approval  a code patch waiting for a person
# running:N         N seeds planned (1 = screening)     decided / failed / rejected   final


def planned_seeds(status: str) -> int:
    return int(status.split(":")[1]) if status.startswith("running:") else 0


class Campaign:
    def __init__(self, ledger, campaign_id: str, strategy: Strategy, runner: LocalRunner, workdir: Path, echo: bool = True):
        self.ledger, self.id, self.strategy, self.runner = ledger, campaign_id, strategy, runner
        row = ledger.get_campaign(campaign_id)
        self.cfg = CampaignConfig(**row["config"]["campaign"])
        self.base = Recipe.from_dict(row["config"]["base_recipe"])
        self.workdir = workdir
        self.echo = echo
        self.proposals: dict[str, Proposal] = {}  # experiment id -> the strategy's proposal (for observe)
        self.failed_jobs: set[str] = set()  # job keys that ended without a result (no summary.json)
        self.recorded_failures = 0  # how many of the strategy's failed proposals are already noted
        self.quiet_at = -1  # decisions count when the strategy last had nothing (or failed): ask again after news
        self.idle_reason = ""  # why next_job() last returned None
        self.strategy_disabled = False  # its spend cap is reached
        self.started = time.time()
        self.elapsed_before = float(row["config"].get("elapsed_s", 0.0))  # earlier loops of this campaign (resumes)

    # ---- 0. bookkeeping derived from the ledger --------------------------------------------------------

    def experiments(self) -> list[dict]:
        return self.ledger.list_experiments(self.id)

    def run_dir(self, experiment_id: str, seed: int) -> Path:
        return self.workdir / f"{experiment_id}-s{seed}"

    def results(self, experiment_id: str) -> dict[int, dict]:
        """{seed: run row} of the experiment's registered runs."""
        rows = self.ledger.list_runs(experiment=experiment_id, columns=("run_id", "seed", "status", "val_bpb", "run_dir", "seconds"))
        return {r["seed"] - self.base.seed: r for r in rows}

    def values_by_seed(self, experiment_id: str) -> dict[int, float]:
        """{seed index: val_bpb} of the experiment's finished runs."""
        return {s: r["val_bpb"] for s, r in sorted(self.results(experiment_id).items()) if r["status"] == "ok" and r["val_bpb"] is not None}

    def compare_runs(self, incumbent_id: str, candidate_id: str, looks: int = 1):
        """The campaign's decision rule on two experiments' runs: the paired t-test over the
        seeds both ran (Welch when fewer than two are shared, or with --decision welch)."""
        inc, cand = self.values_by_seed(incumbent_id), self.values_by_seed(candidate_id)
        common = sorted(set(inc) & set(cand))
        if self.cfg.decision == "paired" and len(common) >= 2:
            return compare([inc[s] for s in common], [cand[s] for s in common], alpha=self.cfg.alpha, looks=looks, paired=True)
        return compare(list(inc.values()), list(cand.values()), alpha=self.cfg.alpha, looks=looks)

    def elapsed(self) -> float:
        """Wall-clock seconds of all this campaign's loops so far (what --budget-hours caps)."""
        return self.elapsed_before + time.time() - self.started

    def save_state(self) -> None:
        """Elapsed time and an LLM strategy's cumulative spend, kept in the campaign's ledger
        row so the time budget and the spend caps hold across resumes; a killed loop's time
        counts up to its last finished run or proposal round."""
        row = self.ledger.get_campaign(self.id)
        state = {"elapsed_s": round(self.elapsed(), 1)}
        spend = getattr(self.strategy, "spend", None)
        if spend is not None:
            model = getattr(self.strategy, "model_id", None)
            state["llm_spend"] = {"model": model, **asdict(spend),
                                  "dollars": round(spend.dollars(model), 4) if self.strategy.name == "claude" else None}
        self.ledger.set_campaign_config(self.id, {**row["config"], **state})

    def baseline(self) -> dict | None:
        return next((e for e in self.experiments() if e["proposer"] == "campaign" and not (e["change"] or {}).get("transfer_of")), None)

    def incumbent(self) -> tuple[dict | None, list[float]]:
        """(the experiment whose recipe is the incumbent, its replicate values)."""
        latest: dict[str, dict] = {}
        for d in self.ledger.list_decisions(campaign_id=self.id):  # a person's later reject revokes a keep
            latest[d["experiment_id"]] = d
        kept = sorted((d for d in latest.values() if d["verdict"] == "keep"), key=lambda d: d["created_at"])
        if not kept:
            return None, []
        exp = self.ledger.get_experiment(kept[-1]["experiment_id"])
        return exp, list(self.values_by_seed(exp["id"]).values())

    def recipe_of(self, exp: dict) -> Recipe:
        change = exp["change"] or {}
        return Recipe.from_dict(change["recipe"]) if "recipe" in change else self.base

    def log(self, msg: str) -> None:
        if self.echo:
            print(f"[campaign {self.id}] {msg}", file=sys.stderr, flush=True)

    # ---- the spine ----------------------------------------------------------------------------------------

    def run(self, poll_s: float = 0.5) -> None:
        # 1. baseline (once): the starting recipe on `seeds` seeds
        if not self.experiments():
            self.ledger.add_experiment("baseline: the starting recipe", kind="config", proposer="campaign", proposer_type="strategy",
                                       rationale="measure the incumbent and the seed noise floor first", campaign_id=self.id,
                                       parent_recipe=self.base.to_dict(), change={"values": {}, "recipe": self.base.to_dict()},
                                       status=f"running:{1 if self.cfg.decision == 'greedy' else self.cfg.seeds}")
        self.collect_finished_on_disk()  # resume: runs that finished while no loop was watching
        self.reopen_leads()  # resume with a larger budget: promising screens left for lack of runs
        # 2. the loop
        while True:
            if self.ledger.get_campaign(self.id)["status"] == "stopping":
                self.log("stop requested")
                break
            for result in self.runner.poll():  # a. finished runs
                self.on_finished(result)
            if self.cfg.early_stop:  # b. clear losers
                self.early_stop_losers()
            while self.runner.free_slots():  # c. keep every slot busy
                job = self.next_job()
                if job is None:
                    self.runner.idle_because(self.idle_reason)
                    break
                self.runner.submit(job)
                self.log(f"{job.key}: started" + (" (resuming)" if job.resume else ""))
            if not self.runner.busy():  # nothing running and nothing could start: done
                break
            self.runner.sleep(poll_s)  # returns as soon as a run exits
        # 3. close
        self.runner.shutdown()
        for result in self.runner.poll():
            self.on_finished(result)
        status = "stopped" if self.ledger.get_campaign(self.id)["status"] == "stopping" else "done"
        self.ledger.set_campaign_status(self.id, status)
        self.save_state()
        note = self.utilisation_note(status)
        self.ledger.add_note(note, author="campaign", campaign_id=self.id)
        self.log(note.split(";")[0])

    def utilisation_note(self, status: str) -> str:
        """Slot utilisation and where idle slot-time went. "While work was queued" counts as
        idle only the loop's own overhead: a slot is empty although a run could start."""
        r = self.runner
        busy = r.utilisation() * r.num_slots * (time.time() - r.created)
        idle = r.idle_breakdown()
        queued = busy / max(1e-9, busy + idle.get(OVERHEAD, 0.0))
        parts = ", ".join(f"{v:.0f} s {k}" for k, v in sorted(idle.items(), key=lambda kv: -kv[1]) if v >= 0.5) or "none"
        window = r.last_submit - r.created  # under a second: every run started at once, nothing to measure
        until_last = f"{r.utilisation(until=r.last_submit):.1%}" if window >= 1 else "n/a"
        return (f"closed {status}: slot utilisation {queued:.1%} of {r.num_slots} slot(s) while work was queued; "
                f"{until_last} until the last run started, {r.utilisation():.1%} including the final drain; "
                f"idle slot-time: {parts}; {time.time() - self.started:.0f} s")

    # ---- a. results and decisions ----------------------------------------------------------------------

    def incumbent_seeds_needed(self) -> int:
        """Paired re-tests: the incumbent must have run on every seed a candidate runs on."""
        if self.cfg.decision != "paired":
            return 0
        return max((planned_seeds(e["status"]) for e in self.experiments() if not (e["change"] or {}).get("transfer_of")), default=0)

    def collect_finished_on_disk(self) -> None:
        inc, _ = self.incumbent()
        for exp in self.experiments():
            seeds = planned_seeds(exp["status"])
            if inc is not None and exp["id"] == inc["id"]:
                seeds = max(seeds, self.incumbent_seeds_needed())
            for seed in range(seeds):
                run_dir = self.run_dir(exp["id"], seed)
                summary = _read_summary(run_dir)
                if summary and summary["status"] != "preempted" and seed not in self.results(exp["id"]):
                    self.register(exp["id"], run_dir)
            self.maybe_decide(exp["id"])

    def reopen_leads(self) -> None:
        """Screens decided 'inconclusive' only because the run budget had no room for their
        replicates are replicated when it has (after `research resume --budget-runs`), while
        their screen still pairs with the current incumbent's seed 0."""
        inc, _ = self.incumbent()
        latest = {d["experiment_id"]: d for d in self.ledger.list_decisions(campaign_id=self.id)}
        reserved = 0  # runs promised to leads re-opened above, not yet started
        for exp in self.experiments():
            d = latest.get(exp["id"])
            if not (d and d["verdict"] == "inconclusive" and (d.get("evidence") or {}).get("awaiting_budget")):
                continue
            if inc is None or exp["parent_recipe"] != self.recipe_of(inc).to_dict():
                continue  # proposed against an earlier incumbent: its screen no longer says anything
            need = self.cfg.seeds - 1 + (self.missing_incumbent_seeds(self.cfg.seeds) if not reserved else 0)
            if self.budget_spent(extra=reserved + need - 1):
                return
            reserved += need
            self.ledger.set_experiment_status(exp["id"], f"running:{self.cfg.seeds}")
            self.ledger.add_note("re-opened: the run budget now has room for its replicates", author="campaign", experiment_id=exp["id"])
            self.log(f"{exp['id']}: promising screen re-opened, replicating on {self.cfg.seeds} seeds")

    def on_finished(self, result: JobResult) -> None:
        exp_id = result.job.key.rsplit("-s", 1)[0]
        if result.status == "shutdown":  # the campaign is stopping: the run resumes from its checkpoint next time
            self.log(f"{result.job.key}: interrupted by the stop; `research resume` continues it")
            return
        if result.summary is not None:
            self.register(exp_id, result.job.out_dir)
        if result.summary is None or result.status in ("crashed", "stopped"):
            self.note_failure(exp_id, result)
        if result.status == "stopped":  # early-stopped: the experiment is discarded, its other runs too
            for job in self.runner.running():
                if job.key.rsplit("-s", 1)[0] == exp_id:
                    self.runner.stop(job.key)
        self.log(f"{result.job.key}: {result.status}" + (f" val_bpb {result.summary['val_bpb']:.4f}" if result.summary and result.summary.get("val_bpb") else ""))
        self.maybe_decide(exp_id, stopped_early=result.status == "stopped")
        self.save_state()
        inc, _ = self.incumbent()
        if inc is not None and exp_id == inc["id"]:  # an extra incumbent seed for a paired re-test: candidates may be waiting on it
            for e in self.experiments():
                if e["id"] != exp_id and planned_seeds(e["status"]):
                    self.maybe_decide(e["id"])

    def register(self, exp_id: str, run_dir: Path) -> None:
        row = self.ledger.register_run(run_dir, campaign_id=self.id, experiment_id=exp_id)
        self.ledger.link_run(row["run_id"], campaign_id=self.id, experiment_id=exp_id)

    def note_failure(self, exp_id: str, result: JobResult) -> None:
        tail = result.stderr_tail.strip().splitlines()[-12:]
        self.ledger.add_note(f"run {result.job.key} ended {result.status} (exit {result.returncode}):\n" + "\n".join(tail),
                             author="campaign", experiment_id=exp_id)
        if result.summary is None:
            self.failed_jobs.add(result.job.key)

    def maybe_decide(self, exp_id: str, stopped_early: bool = False) -> None:
        exp = self.ledger.get_experiment(exp_id)
        n = planned_seeds(exp["status"])
        if n == 0:
            return
        results = self.results(exp_id)
        done = {s for s in range(n) if s in results or f"{exp_id}-s{s}" in self.failed_jobs}
        if len(done) < n and not stopped_early:
            return
        values = [r["val_bpb"] for r in results.values() if r["status"] == "ok" and r["val_bpb"] is not None]
        evidence = {"runs": {s: r["run_id"] for s, r in results.items()}, "values": values}
        proposal = self.proposals.get(exp_id)
        if (exp["change"] or {}).get("transfer_of"):  # one side of a transfer check
            self.ledger.set_experiment_status(exp_id, "decided")
            self.maybe_finish_transfer(exp["change"]["transfer_of"])
            return
        if exp["proposer"] == "campaign" and not self.incumbent()[0]:  # the baseline
            nf = noise_floor(values)
            self.ledger.record_decision("keep", decided_by=DECIDER, decider_type="strategy", experiment_id=exp_id,
                                        rationale=f"baseline: mean {nf.get('mean', float('nan')):.4f}, seed std {nf['std'] or 0:.4f} over {nf['n']} seeds",
                                        evidence={**evidence, "noise_floor": nf})
            self.ledger.set_experiment_status(exp_id, "decided")
            self.log(f"baseline {exp_id}: {nf}")
            return
        _, inc_values = self.incumbent()
        if not values or stopped_early:
            why = "stopped early: clearly worse than the incumbent at an intermediate evaluation" if stopped_early else \
                f"no usable result ({', '.join(r['status'] for r in results.values()) or 'crashed'})"
            self.decide(exp, "discard", why, evidence, proposal, None)
            return
        if self.incumbent()[0] is None:  # screened while the baseline runs: decided once the baseline is
            return
        if self.cfg.decision == "greedy":  # the single-seed rule: keep whatever scored lower once
            verdict = "keep" if values[0] < min(inc_values) else "discard"
            self.decide(exp, verdict, f"single seed: {values[0]:.4f} vs incumbent {min(inc_values):.4f}", evidence, proposal, values[0])
            return
        inc_exp = self.incumbent()[0]
        if n == 1:  # screening: not worse than the incumbent (within the margin) -> replicate
            mean, std = statistics.fmean(inc_values), statistics.stdev(inc_values)
            ref, what, told = mean, "the incumbent's mean", values[0]
            inc_by_seed = self.values_by_seed(inc_exp["id"])
            if self.cfg.decision == "paired" and 0 in inc_by_seed:  # against the incumbent's run on the same seed
                ref, what = inc_by_seed[0], "the incumbent's seed-0 run"
                told = mean + values[0] - ref  # on the scale of a mean over the incumbent's seeds, as replicated results are
                evidence["value_on_incumbent_scale"] = told
            bar = ref + self.cfg.screen_margin * std
            if values[0] <= bar and self.budget_spent(extra=self.cfg.seeds - 2):
                evidence["awaiting_budget"] = True  # `research resume --budget-runs` with room replicates it
                self.decide(exp, "inconclusive", f"screen {values[0]:.4f} was promising ({what} {ref:.4f}, seed std {std:.4f}) but "
                            f"the run budget has no room for {self.cfg.seeds - 1} replicates", evidence, proposal, told)
            elif values[0] <= bar:
                self.ledger.set_experiment_status(exp_id, f"running:{self.cfg.seeds}")
                self.log(f"{exp_id}: screen {values[0]:.4f} vs {what} {ref:.4f} (seed std {std:.4f}): replicating")
            else:
                margin = f" + {self.cfg.screen_margin:g} seed std ({std:.4f})" if self.cfg.screen_margin else ""
                self.decide(exp, "discard", f"screen: {values[0]:.4f} is worse than {what} {ref:.4f}{margin}",
                            evidence, proposal, told)
            return
        if self.cfg.decision == "paired" and not stopped_early:  # a re-test pairs with the incumbent's extra seeds: wait for them
            inc_results = self.results(inc_exp["id"])
            if any(s not in inc_results and f"{inc_exp['id']}-s{s}" not in self.failed_jobs for s in range(n)):
                return
        looks = max(1, n // self.cfg.seeds)
        cmp = self.compare_runs(inc_exp["id"], exp_id, looks=looks)
        evidence["comparison"] = cmp.to_dict()
        if cmp.verdict == IMPROVEMENT and self.cfg.transfer:
            self.start_transfer(exp, cmp)
        elif cmp.verdict == IMPROVEMENT:
            self.decide(exp, "keep", cmp.summary(), evidence, proposal, cmp.mean_candidate, cmp)
        elif (cmp.p_improvement < 0.2 and looks < self.cfg.max_looks
              and not self.budget_spent(extra=self.cfg.seeds + self.missing_incumbent_seeds(n + self.cfg.seeds) - 1)):
            self.ledger.set_experiment_status(exp_id, f"running:{n + self.cfg.seeds}")
            extra = self.missing_incumbent_seeds(n + self.cfg.seeds)
            self.log(f"{exp_id}: promising ({cmp.summary()}); {self.cfg.seeds} more seeds" + (f", and {extra} for the incumbent" if extra else ""))
        else:
            self.decide(exp, "discard", cmp.summary(), evidence, proposal, cmp.mean_candidate, cmp)

    # ---- transfer checks: a winner must also win at the larger rung ------------------------------------

    def start_transfer(self, exp: dict, cmp) -> None:
        """Queue the incumbent and the candidate at the transfer rung, `seeds` seeds each."""
        if self.budget_spent(extra=2 * self.cfg.seeds - 1):
            self.decide(exp, "inconclusive", f"{cmp.summary()}; no run budget left for the transfer check "
                        f"({2 * self.cfg.seeds} runs)", {"comparison": cmp.to_dict()}, self.proposals.get(exp["id"]), cmp.mean_candidate, cmp)
            return
        inc, _ = self.incumbent()
        for role, source in (("incumbent", inc), ("candidate", exp)):
            recipe = apply_overrides(self.recipe_of(source), self.cfg.transfer)
            self.ledger.add_experiment(f"transfer check of {exp['id']}: the {role} at the larger rung", kind=exp["kind"],
                                       proposer="campaign", proposer_type="strategy", campaign_id=self.id,
                                       rationale=f"does the gain ({cmp.effect:+.4f}) hold at {', '.join(self.cfg.transfer)}?",
                                       parent_recipe=self.recipe_of(source).to_dict(),
                                       change={"transfer_of": exp["id"], "role": role, "small_scale": cmp.to_dict(),
                                               "recipe": recipe.to_dict(), "patch": (source["change"] or {}).get("patch")},
                                       status=f"running:{self.cfg.seeds}")
        self.ledger.set_experiment_status(exp["id"], "transfer")
        self.log(f"{exp['id']}: {cmp.summary()} — checking transfer at {', '.join(self.cfg.transfer)}")

    def maybe_finish_transfer(self, candidate_id: str) -> None:
        sides = {e["change"]["role"]: e for e in self.experiments() if (e["change"] or {}).get("transfer_of") == candidate_id}
        if len(sides) < 2 or any(e["status"] != "decided" for e in sides.values()):
            return
        exp = self.ledger.get_experiment(candidate_id)
        small = sides["candidate"]["change"]["small_scale"]
        cmp = self.compare_runs(sides["incumbent"]["id"], sides["candidate"]["id"])
        holds = cmp.verdict == IMPROVEMENT
        evidence = {"small_scale": small, "transfer": cmp.to_dict(), "transfer_rung": self.cfg.transfer,
                    "transfer_experiments": {role: e["id"] for role, e in sides.items()}}
        why = (f"small scale: effect {small['effect']:+.4f}; at the larger rung: {cmp.summary()} — "
               + ("the gain holds" if holds else "the gain does not hold at scale"))
        self.decide(exp, "keep" if holds else "discard", why, evidence, self.proposals.get(candidate_id), small["mean_candidate"], cmp)

    def decide(self, exp, verdict, rationale, evidence, proposal, value, cmp=None) -> None:
        rule = {"paired": "paired t-test", "welch": "Welch", "greedy": "single seed"}[self.cfg.decision]
        self.ledger.record_decision(verdict, decided_by=f"{DECIDER} ({rule}, alpha={self.cfg.alpha})", decider_type="strategy",
                                    experiment_id=exp["id"], effect=cmp.effect if cmp else None,
                                    ci_low=cmp.ci_low if cmp and math.isfinite(cmp.ci_low) else None,
                                    ci_high=cmp.ci_high if cmp and math.isfinite(cmp.ci_high) else None,
                                    rationale=rationale, evidence=evidence)
        self.ledger.set_experiment_status(exp["id"], "decided")
        self.log(f"{exp['id']} ({exp['hypothesis'][:60]}): {verdict} — {rationale}")
        if proposal is not None:
            self.strategy.observe(proposal, value)

    # ---- b. early stopping -----------------------------------------------------------------------------

    def early_stop_losers(self) -> None:
        frac = self.base.train.eval_every_frac
        inc, _ = self.incumbent()
        if not frac or inc is None:
            return
        ref = early_stop.rung_reference([early_stop.eval_curve(Path(r["run_dir"]), frac) for r in self.results(inc["id"]).values()])
        exempt = {inc["id"]} | {e["id"] for e in self.experiments() if (e["change"] or {}).get("transfer_of")}  # other scale
        for job in self.runner.running():
            if job.key.rsplit("-s", 1)[0] in exempt or self.runner.stopping(job.key):
                continue
            curve = {rung: v for rung, v in early_stop.eval_curve(job.out_dir, frac).items() if rung < round(1 / frac)}  # not the final eval
            stop, why = early_stop.should_stop(curve, ref)
            if stop:
                self.log(f"{job.key}: early stop — {why}")
                self.runner.stop(job.key)

    # ---- c. scheduling -----------------------------------------------------------------------------------

    def runs_started(self) -> int:
        """Runs that count against the budget: registered, in flight, or ended without a result."""
        registered = len(self.ledger.list_runs(campaign=self.id, limit=0, columns=("run_id",)))
        return registered + len(self.runner.running()) + len(self.failed_jobs)

    def budget_spent(self, extra: int = 0) -> bool:
        """True when `extra` more runs would not fit in the run budget (or time is up)."""
        over_time = self.cfg.budget_hours and self.elapsed() > self.cfg.budget_hours * 3600
        return self.runs_started() + extra >= self.cfg.budget_runs or bool(over_time)

    def missing_incumbent_seeds(self, n: int) -> int:
        """Runs the incumbent still needs so that a candidate on seeds 0..n-1 has all its pairs."""
        if self.cfg.decision != "paired":
            return 0
        inc, _ = self.incumbent()
        return sum(s not in self.results(inc["id"]) for s in range(n)) if inc is not None else 0

    def next_job(self) -> Job | None:
        """The next run to start, or None with `idle_reason` saying why none can."""
        if self.budget_spent():
            self.idle_reason = "run budget spent"
            return None
        running = {j.key for j in self.runner.running()}
        inc, _ = self.incumbent()
        if inc is not None:  # the incumbent's extra seeds for paired re-tests come first: candidates wait on them
            for seed in range(self.incumbent_seeds_needed()):
                key = f"{inc['id']}-s{seed}"
                if key not in running and seed not in self.results(inc["id"]) and key not in self.failed_jobs:
                    return self.job(inc, seed)
        for exp in self.experiments():  # pending seeds of running experiments
            for seed in range(planned_seeds(exp["status"])):
                key = f"{exp['id']}-s{seed}"
                if key in running or seed in self.results(exp["id"]) or key in self.failed_jobs:
                    continue
                return self.job(exp, seed)
        if self.baseline() is None or (inc is None and self.baseline()["status"] == "decided"):
            self.idle_reason = "no baseline"  # a baseline that produced nothing: the campaign cannot compare
            return None
        screening = sum(e["status"] == "running:1" for e in self.experiments())
        if self.cfg.decision != "greedy" and self.budget_spent(extra=screening * (self.cfg.seeds - 1)):
            self.idle_reason = "reserved for replicates of screens in flight"
            return None  # keep room to replicate the screens in flight rather than start new ones
        queued = [e for e in self.experiments() if e["status"] == "queued"]
        for _ in range(3):  # a round whose proposals were all rejected: ask again, a bounded number of times
            if queued or self.strategy_disabled or self.quiet_at == self.num_decisions():
                break
            asked = self.ask_strategy()
            queued = [e for e in asked if e["status"] == "queued"]
            if not asked:
                break
        if not queued:
            waiting = any(e["status"] == "awaiting-approval" for e in self.experiments())
            self.idle_reason = "proposals awaiting approval" if waiting else f"strategy {self.strategy.name} proposed nothing new"
            return None
        exp = queued[0]
        self.ledger.set_experiment_status(exp["id"], "running:1")
        return self.job(self.ledger.get_experiment(exp["id"]), 0)

    def job(self, exp: dict, seed: int) -> Job:
        recipe = self.recipe_of(exp)
        recipe_path = self.workdir / "recipes" / f"{exp['id']}.json"
        recipe_path.parent.mkdir(parents=True, exist_ok=True)
        recipe_path.write_text(json.dumps(recipe.to_dict()))
        pythonpath = None
        if (exp["change"] or {}).get("patch"):
            tree_dir = self.workdir / "trees" / exp["id"]
            if not tree_dir.exists():  # e.g. a person's patch approved on another machine
                apply_patch(exp["change"]["patch"], tree_dir)
            pythonpath = str(tree_dir / "src")
        timeout = self.run_timeout(recipe)
        run_dir = self.run_dir(exp["id"], seed)
        if run_dir.exists():  # interrupted by a previous loop's death: continue it, or start over
            if list((run_dir / "ckpt").glob("step_*.pt")):
                return Job(f"{exp['id']}-s{seed}", str(recipe_path), run_dir, timeout_s=timeout, pythonpath=pythonpath,
                           env={"PRETRAINLAB_NO_LEDGER": "1"}, resume=True)
            shutil.rmtree(run_dir)
        return Job(f"{exp['id']}-s{seed}", str(recipe_path), run_dir, [f"seed={self.base.seed + seed}"],
                   timeout_s=timeout, pythonpath=pythonpath, env={"PRETRAINLAB_NO_LEDGER": "1"})

    def run_timeout(self, recipe: Recipe) -> float | None:
        """A run's wall-clock limit. Seconds budgets: 3x + 120 s. Token and FLOP budgets:
        5x the slowest baseline run, scaled by the run's work (tokens x params, or FLOPs)
        relative to the baseline's, + 120 s; none until the baseline has finished a run."""
        if recipe.budget.seconds:
            return recipe.budget.seconds * 3 + 120
        base = self.baseline()
        took = [r["seconds"] for r in self.results(base["id"]).values() if r["seconds"]] if base else []
        if not took:
            return None
        work = lambda r: r.budget.flops or r.budget.tokens * estimate_params(r)
        return 5 * max(took) * max(1.0, work(recipe) / work(self.base)) + 120

    def ask_strategy(self) -> list[dict]:
        """New experiments from the strategy (rejected ones included, already recorded).
        While the baseline still runs, proposals are changes to it (value not yet known)."""
        inc, inc_values = self.incumbent()
        incumbent = self.recipe_of(inc or self.baseline())
        view = CampaignView(base=self.base, incumbent=incumbent, space=default_space(self.base),
                            incumbent_value=statistics.fmean(inc_values) if inc_values else None, history=self.history(), seed=self.cfg.strategy_seed,
                            max_changes=self.cfg.max_changes)
        try:
            proposals = self.strategy.propose(view, self.runner.free_slots())
        except Exception as e:  # a strategy failure (API down, spend cap) must not end a campaign that has work in flight
            self.ledger.add_note(f"strategy {self.strategy.name} could not propose: {e}", author="campaign", campaign_id=self.id)
            self.log(f"strategy error: {e}")
            self.strategy_disabled = type(e).__name__ == "SpendCapReached"
            proposals = []
        finally:
            self.save_state()
        if not proposals:  # nothing new to try until another experiment is decided
            self.quiet_at = self.num_decisions()
        for failure in getattr(self.strategy, "failed", [])[self.recorded_failures:]:
            self.recorded_failures += 1
            self.ledger.add_note(f"failed proposal from {self.strategy.name} ({failure.get('model_id')}): tool {failure['tool']}: "
                                 f"{failure['error']}\ninput: {json.dumps(failure['input'], default=str)[:2000]}",
                                 author=self.strategy.name, campaign_id=self.id)
        return [self.ledger.get_experiment(self.add_proposal(p, incumbent)) for p in proposals]

    def add_proposal(self, p: Proposal, incumbent: Recipe) -> str:
        """Validate and record a proposal; an invalid one is recorded as rejected, never run."""
        change: dict = {"values": p.values, "weights": p.weights, "patch": p.patch}
        status, error = "queued", None
        scratch = Path(tempfile.mkdtemp(prefix="patch-", dir=self.workdir)) if p.kind == "code" else None
        try:
            if p.kind == "data":
                recipe = apply_overrides(incumbent, [f"data.weights={json.dumps(p.weights)}"])
            else:
                recipe = validate(CampaignView(self.base, incumbent, [], None, []), p)
            if p.kind == "code":  # apply it now: a patch that does not apply is rejected before it is queued
                apply_patch(p.patch or "", scratch)
                status = "awaiting-approval" if self.cfg.approve_code else status
            change["recipe"] = recipe.to_dict()
            change["diff"] = {k: list(v) for k, v in recipe_diff(incumbent, recipe).items()}
        except (ValueError, UserError) as e:  # PatchRejected is a ValueError
            status, error = "rejected", str(e)
        proposer_type = "strategy" if p.proposer == self.strategy.name else "person"
        exp_id = self.ledger.add_experiment(p.hypothesis, kind=p.kind, proposer=p.proposer, proposer_type=proposer_type,
                                            model_id=p.model_id if proposer_type == "strategy" else None, rationale=p.rationale,
                                            campaign_id=self.id, parent_recipe=incumbent.to_dict(), change=change, status=status)
        if scratch is not None:
            if error:
                shutil.rmtree(scratch)
            else:
                (self.workdir / "trees").mkdir(exist_ok=True)
                scratch.rename(self.workdir / "trees" / exp_id)
        self.proposals[exp_id] = p
        if error:
            self.ledger.record_decision("discard", decided_by=DECIDER, decider_type="strategy", experiment_id=exp_id,
                                        rationale=f"rejected before running: {error}")
            self.strategy.observe(p, None)
            self.log(f"rejected proposal: {error}")
        return exp_id

    def num_decisions(self) -> int:
        return len(self.ledger.list_decisions(campaign_id=self.id))

    def history(self) -> list[dict]:
        decisions = {d["experiment_id"]: d for d in self.ledger.list_decisions(campaign_id=self.id)}
        out = []
        for e in self.experiments():
            d = decisions.get(e["id"])
            if d is None:
                continue
            ev = d.get("evidence") or {}
            values = [ev["value_on_incumbent_scale"]] if ev.get("value_on_incumbent_scale") is not None else ev.get("values") or []
            out.append({"id": e["id"], "kind": e["kind"], "values": (e["change"] or {}).get("values"), "weights": (e["change"] or {}).get("weights"),
                        "recipe": (e["change"] or {}).get("recipe"),
                        "patch": bool((e["change"] or {}).get("patch")), "value": statistics.fmean(values) if values else None,
                        "verdict": d["verdict"], "noise_floor": ((d.get("evidence") or {}).get("noise_floor") or {}).get("std"),
                        "effect": d.get("effect"), "ci_low": d.get("ci_low"), "ci_high": d.get("ci_high")})
        return out


def _read_summary(run_dir: Path) -> dict | None:
    try:
        return json.loads((run_dir / "summary.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None


def new_workdir(root: Path, campaign_id: str) -> Path:
    path = root / "campaigns" / campaign_id
    path.mkdir(parents=True, exist_ok=True)
    return path

