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
How the budget is spent depends on `--decision`:
- screen (the default; research/policy.py): each proposal runs once, on seed 0, and is
  stopped at its half-budget rung if it trails its parent's seed-0 run there by more than
  `rung_stop`; a finished screen moves the incumbent when the posterior probability that it
  beats its parent (seed-matched difference, paired noise `screen_noise`) reaches
  `adopt_p`. A screen that beat its parent after the incumbent moved on is combined with
  the new incumbent and screened again. When the rest of the budget is what the
  confirmation phase needs, the final recipe and a leave-one-out ablation of each changed
  key group run on the baseline's other seeds (never used by a screen); the claims
  (final vs baseline, what each group carries) are paired t-tests with variance pooled
  over those pairs. Runs count against the budget by the share of it they used.
- paired / welch: a screen no worse than the incumbent's run on the same seed (+
  `screen_margin` seed std) earns `seeds` replicates, compared by the paired t-test over
  seed-matched runs (research/stats.py; Welch with --decision welch); a promising "no
  effect" gets one more round of replicates where the incumbent has those seeds (tested
  again at alpha / looks).
- greedy: one seed, keep if lower (the autoresearch rule, for comparison).
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
from dataclasses import asdict
from pathlib import Path

from ..config import Recipe, apply_overrides
from ..errors import UserError
from ..ledger.rundir import METRIC_COLUMNS, derived_run_id, read_run_dir
from ..ledger.store import Phase, Role
from ..train.rundir_lock import lock_holder
from ..recipes import estimate_params
from ..runners import Job, JobResult, Runner
from ..rundir import read_json, read_summary
from ..runners.base import OVERHEAD
from . import early_stop, policy
from .config import CampaignConfig  # noqa: F401 (the settings, imported from here too)
from .data_experiments import apply_data_change, check_fixed_data
from .patches import apply_patch
from .space import default_space, recipe_diff
from .stats import IMPROVEMENT, REGRESSION, compare, noise_floor, pooled_paired
from .strategies import CampaignView, Proposal, Strategy, current_values, same_value, validate

DECIDER = "pretrainlab stats"  # decisions by the loop's statistics rule are attributed to it


# ---- experiment state: its Phase (experiments.status) and its Role (experiments.role), ledger/store.py ----


def planned_seeds(exp: dict) -> int:
    """Seeds a running experiment plans (1 = a screen); 0 when it is not running."""
    return (exp.get("planned_seeds") or 0) if exp["status"] == Phase.RUNNING else 0


def incumbent_id(decisions: list[dict]) -> str | None:
    """The experiment a campaign's decisions (in order) make the incumbent: the last one kept.
    A person's later reject revokes a keep; a claim of the confirmation phase is a record,
    not a recipe to build on."""
    latest: dict[str, dict] = {}
    for d in decisions:
        latest[d["experiment_id"]] = d
    kept = sorted((d for d in latest.values() if d["verdict"] == "keep" and (d.get("evidence") or {}).get("stage") != "claim"),
                  key=lambda d: d["created_at"])
    return kept[-1]["experiment_id"] if kept else None


def handed_back(ledger, campaign_id: str) -> Recipe:
    """The recipe a campaign hands back: its incumbent's (the starting recipe if none)."""
    exp_id = incumbent_id(ledger.list_decisions(campaign_id=campaign_id))
    if exp_id is None:
        return Recipe.from_dict(ledger.get_campaign(campaign_id)["config"]["base_recipe"])
    change = ledger.get_experiment(exp_id)["change"] or {}
    return Recipe.from_dict(change["recipe"]) if "recipe" in change else Recipe.from_dict(ledger.get_campaign(campaign_id)["config"]["base_recipe"])


class Campaign:
    def __init__(self, ledger, campaign_id: str, strategy: Strategy, runner: Runner, workdir: Path, echo: bool = True):
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
        self.rung_stops: dict[str, dict] = {}  # screen policy: experiment id -> the rung comparison that stopped it
        self.unaffordable: set[str] = set()  # screen policy: queued experiments noted as not fitting the budget
        self.started = runner.time()  # the runner's clock: wall time, or the simulator's virtual time
        self.ready_since: dict[str, float] = {}  # job key -> when (runner clock) it could have started but no slot was free
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
        return self.elapsed_before + self.runner.time() - self.started

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
        return next((e for e in self.experiments() if e["role"] == Role.BASELINE), None)

    def incumbent(self) -> tuple[dict | None, list[float]]:
        """(the experiment whose recipe is the incumbent, its replicate values)."""
        exp_id = incumbent_id(self.ledger.list_decisions(campaign_id=self.id))
        if exp_id is None:
            return None, []
        exp = self.ledger.get_experiment(exp_id)
        return exp, list(self.values_by_seed(exp["id"]).values())

    def recipe_of(self, exp: dict) -> Recipe:
        change = exp["change"] or {}
        return Recipe.from_dict(change["recipe"]) if "recipe" in change else self.base

    def seeds_of(self, exp: dict) -> list[int]:
        """The seed indices an experiment runs on: 0..N-1 for N planned seeds, or the list a
        confirmation experiment carries (the baseline's seeds no screen used)."""
        n = planned_seeds(exp)
        listed = (exp["change"] or {}).get("seeds")
        return list(listed) if listed and n else list(range(n))

    def final_recipe(self) -> Recipe:
        """What the campaign hands back: the incumbent's recipe."""
        inc, _ = self.incumbent()
        return self.recipe_of(inc or self.baseline())

    def run_cost(self, row: dict) -> float:
        """A registered run's share of the budget: 1 for a run that used its budget, the
        share of its token (or seconds) budget for one that ended early (stopped at a rung)."""
        if row["status"] == "ok" or not row.get("run_dir"):
            return 1.0
        summary = read_summary(Path(row["run_dir"])) or {}  # written by experiment code: a floor keeps it honest
        floor = self.base.train.eval_every_frac if self.cfg.early_stop and self.base.train.eval_every_frac else 1.0
        budget, share = self.base.budget, 1.0
        if budget.tokens and isinstance(summary.get("tokens"), (int, float)):
            share = summary["tokens"] / budget.tokens
        elif budget.seconds and isinstance(summary.get("seconds"), (int, float)):
            share = summary["seconds"] / budget.seconds
        # the earliest the lab stops a run is its first rung: a run that claims to have used less counts that much
        return min(1.0, max(floor, share)) if math.isfinite(share) else 1.0

    def compute_used(self) -> float:
        """Runs that count against the budget, in full-run equivalents: registered ones by
        their share (early-stopped runs count what they used), in-flight and failed ones whole."""
        rows = self.ledger.list_runs(campaign=self.id, limit=0, columns=("run_id", "status", "run_dir"))
        return sum(self.run_cost(r) for r in rows) + len(self.runner.running()) + len(self.failed_jobs)

    def claims(self) -> list[dict]:
        """The confirmation phase's recorded claims (decisions with stage 'claim')."""
        return [d for d in self.ledger.list_decisions(campaign_id=self.id) if (d.get("evidence") or {}).get("stage") == "claim"]

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
                                       status=Phase.RUNNING, planned_seeds=1 if self.cfg.decision == "greedy" else self.cfg.seeds,
                                       role=Role.BASELINE)
        self.collect_finished_on_disk()  # resume: runs that finished while no loop was watching
        self.reopen_leads()  # resume with a larger budget: promising screens left for lack of runs
        # 2. the loop
        while True:
            if self.ledger.get_campaign(self.id)["status"] == "stopping":
                self.log("stop requested")
                break
            finished = self.runner.poll()
            for result in finished:  # a. finished runs
                self.on_finished(result)
            self.note_runner_events()
            if self.cfg.early_stop:  # b. clear losers
                self.early_stop_losers()
            started = False
            while self.runner.free_slots():  # c. keep every slot busy
                job = self.next_job()
                if job is None:
                    self.runner.idle_because(self.idle_reason)
                    break
                job.queued_at = self.ready_since.pop(job.key, None)
                self.runner.submit(job)
                started = True
                self.log(f"{job.key}: started" + (" (resuming)" if job.resume else ""))
            if (finished or started) and not self.runner.free_slots():
                self.note_queued()  # what is left waits for a slot from now
            if not self.runner.busy():  # nothing running and nothing could start: done
                break
            self.runner.sleep(poll_s)  # returns as soon as a run exits
        # 3. close
        self.runner.shutdown()
        for result in self.runner.poll():
            self.on_finished(result)
        self.note_runner_events()
        if self.cfg.decision == "screen":  # the last run in was the baseline's own confirmation seed (--seeds 2)
            self.maybe_record_claims()
        status = "stopped" if self.ledger.get_campaign(self.id)["status"] == "stopping" else "done"
        self.ledger.set_campaign_status(self.id, status)
        self.save_state()
        closing = self.closing_stats(status)
        row = self.ledger.get_campaign(self.id)
        self.ledger.set_campaign_config(self.id, {**row["config"], "closing": [*row["config"].get("closing", []), closing]})
        note = closing_note(closing)
        self.ledger.add_note(note, author="campaign", campaign_id=self.id)
        self.log(note.split(";")[0])
        if status == "done":
            self.record_hidden_test()

    def split_means(self, exp: dict) -> dict[str, float] | None:
        """Mean lab score on the decision and the hidden test split over an experiment's scored
        runs. The test split is scored here, once, when the campaign closes: a sandboxed worker
        runs the model, this process computes the score (runners/scoring.py)."""
        from ..data import Corpus
        from ..runners.job import corpus_path
        from ..runners.base import PACKAGE_SRC
        from ..runners.scoring import ScoreRejected, score_run

        recipe = self.recipe_of(exp)
        code_src = self.workdir / "trees" / exp["id"] / "src" if (exp["change"] or {}).get("patch") else PACKAGE_SRC
        corpus = Corpus.open(corpus_path(self.base), verify=False)  # the base's held-out data, as every run was scored
        val, test = [], []
        for row in self.results(exp["id"]).values():
            verdict = read_json(self.score_path(Path(row["run_dir"]).name)) or {}
            if verdict.get("status") != "ok" or not (Path(row["run_dir"]) / "model.pt").is_file():
                continue
            try:
                scored = score_run(Path(row["run_dir"]), code_src, corpus, seq_len=recipe.model.seq_len, splits=("test",),
                                   tokens_per_domain=recipe.eval.tokens_per_domain, batch_rows=recipe.eval.batch_rows,
                                   sandbox=self.runner.sandbox, **self.runner.scoring_resources())
            except ScoreRejected:
                continue
            val.append(verdict["splits"]["val"]["val_bpb"])
            test.append(scored["splits"]["test"]["val_bpb"])
        return {"val": statistics.fmean(val), "test": statistics.fmean(test), "runs": len(val)} if val else None

    def record_hidden_test(self) -> None:
        """The final recipe vs the baseline on the hidden test split, for the report only: how much
        of the gain measured on the decision split holds on documents no decision ever saw (the
        validation-overfitting gap of the campaign). Kept in the campaign's ledger row and a note;
        never in anything a strategy reads."""
        inc, base = self.incumbent()[0], self.baseline()
        confirmed = next((e for e in self.confirmation() if e["change"]["confirm"] == "final"), None)
        inc = confirmed or inc  # screen: the final recipe's runs on the confirmation seeds (a screen ran once, on seed 0)
        if inc is None or base is None:
            return
        final, start = self.split_means(inc), self.split_means(base)
        if not final or not start:
            return
        gain_val, gain_test = start["val"] - final["val"], start["test"] - final["test"]
        result = {"final_experiment": inc["id"], "baseline_experiment": base["id"], "val": {"final": final["val"], "baseline": start["val"]},
                  "test": {"final": final["test"], "baseline": start["test"]}, "runs": {"final": final["runs"], "baseline": start["runs"]},
                  "gain_val": gain_val, "gain_test": gain_test, "overfitting_gap": gain_val - gain_test}
        row = self.ledger.get_campaign(self.id)
        self.ledger.set_campaign_config(self.id, {**row["config"], "hidden_test": result})
        self.ledger.add_note(f"hidden test split: final recipe {final['test']:.4f} vs baseline {start['test']:.4f} (gain {gain_test:+.4f}); "
                             f"on the decision split the gain was {gain_val:+.4f}: validation-overfitting gap {gain_val - gain_test:+.4f} bpb",
                             author="campaign", campaign_id=self.id)

    def closing_stats(self, status: str) -> dict:
        """This loop's slot utilisation and where idle slot-time went, as data (kept per loop in
        the campaign's ledger row under "closing"). "While work was queued" counts as idle only
        the loop's own overhead: a slot is empty although a run could start."""
        r = self.runner
        busy = r.utilisation() * r.num_slots * (r.time() - r.created)
        idle = r.idle_breakdown()
        window = r.last_submit - r.created  # under a second: every run started at once, nothing to measure
        return {"status": status, "slots": r.num_slots, "utilisation_queued": busy / max(1e-9, busy + idle.get(OVERHEAD, 0.0)),
                "utilisation_until_last_start": r.utilisation(until=r.last_submit) if window >= 1 else None,
                "utilisation": r.utilisation(), "idle_s": {k: round(v, 1) for k, v in idle.items()}, "busy_s": round(busy, 1),
                "seconds": round(r.time() - self.started, 1)}

    # ---- a. results and decisions ----------------------------------------------------------------------

    def incumbent_seeds_needed(self) -> int:
        """Paired re-tests: the incumbent must have run on every seed a candidate runs on."""
        if self.cfg.decision != "paired":
            return 0
        return max((planned_seeds(e) for e in self.experiments() if e["role"] != Role.TRANSFER), default=0)

    def collect_finished_on_disk(self) -> None:
        inc, _ = self.incumbent()
        for exp in self.experiments():
            seeds = self.seeds_of(exp)
            if inc is not None and exp["id"] == inc["id"]:
                seeds = sorted(set(seeds) | set(range(self.incumbent_seeds_needed())))
                if self.cfg.decision == "screen":
                    seeds = sorted(set(seeds) | {self.reference_seed(inc)})
            if self.cfg.decision == "screen" and exp is not None and self.baseline() and exp["id"] == self.baseline()["id"] and self.confirmation():
                seeds = sorted(set(seeds) | set(self.confirmation_seeds()))
            for seed in seeds:
                run_dir = self.run_dir(exp["id"], seed)
                summary = read_summary(run_dir)
                unscored = summary and summary["status"] in ("ok", "timeout") and not self.score_path(run_dir.name).exists()
                if summary and summary["status"] != "preempted" and seed not in self.results(exp["id"]) and not unscored:
                    self.register(exp["id"], run_dir)  # (a finished run the lab has not scored yet goes back to the runner)
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
            self.ledger.set_experiment_status(exp["id"], Phase.RUNNING, planned_seeds=self.cfg.seeds)
            self.ledger.add_note("re-opened: the run budget now has room for its replicates", author="campaign", experiment_id=exp["id"])
            self.log(f"{exp['id']}: promising screen re-opened, replicating on {self.cfg.seeds} seeds")

    def on_finished(self, result: JobResult) -> None:
        exp_id = result.job.key.rsplit("-s", 1)[0]
        self.ledger.record_attempts(self.id, result.job.key, result.job.out_dir, result.status,
                                    [a.to_row(result.job.queued_at) for a in result.attempts])
        if result.status == "shutdown":  # the campaign is stopping: the run resumes from its checkpoint next time
            self.log(f"{result.job.key}: interrupted by the stop; `research resume` continues it")
            return
        if result.summary is not None:
            self.register(exp_id, result.job.out_dir)
        if result.status == "rejected":
            self.on_rejected(exp_id, result)
            self.save_state()
            return
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
                if e["id"] != exp_id and planned_seeds(e):
                    self.maybe_decide(e["id"])

    def note_queued(self) -> None:
        """Stamp the runs that could start but find every slot taken: a queued experiment's first
        seed and the planned seeds of running ones (their queue wait counts from here)."""
        now, running = self.runner.time(), {j.key for j in self.runner.running()}
        for exp in self.experiments():
            seeds = [0] if exp["status"] == Phase.QUEUED else self.seeds_of(exp) if exp["status"] == Phase.RUNNING else []
            done = self.results(exp["id"]) if seeds else {}
            for seed in seeds:
                key = f"{exp['id']}-s{seed}"
                if key not in running and seed not in done and key not in self.failed_jobs:
                    self.ready_since.setdefault(key, now)

    def note_runner_events(self) -> None:
        """What the runner did on its own, on the record: a run requeued after its node was lost
        (a note on its experiment), a node excluded (a note on the campaign)."""
        for event in self.runner.take_events():
            exp_id = event.key.rsplit("-s", 1)[0] if event.key else None
            self.ledger.add_note(event.text, author="runner", experiment_id=exp_id, campaign_id=None if exp_id else self.id)
            self.log(event.text)

    def register(self, exp_id: str, run_dir: Path) -> None:
        """Record a run with the lab's own score of it (runners/job.py), never the figures the run
        wrote about itself: its summary.json, recipe.json and provenance.json come from experiment
        code. They are kept on record, but status, val_bpb, seed and run id come from the lab."""
        try:
            record = read_run_dir(run_dir)
            run = record["run"]
            run["recipe_name"] = run["recipe_name"] if isinstance(run.get("recipe_name"), str) else None
            for k in METRIC_COLUMNS:  # numbers the run reported about itself: kept only if they are numbers
                v = run.get(k)
                run[k] = v if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None
        except (UserError, ValueError, TypeError, AttributeError) as e:  # files the run wrote that do not parse as a run's
            self.ledger.add_note(f"run {run_dir.name}: its run directory could not be read ({e}); not registered",
                                 author="campaign", experiment_id=exp_id)
            self.failed_jobs.add(run_dir.name)
            return
        verdict = read_json(self.score_path(run_dir.name))
        run["seed"] = self.base.seed + int(run_dir.name.rsplit("-s", 1)[1])
        clash = self.ledger.get_run(run["run_id"]) if run["run_id"] else None
        if clash is not None and Path(clash["run_dir"]).resolve() != Path(run["run_dir"]).resolve():
            run["run_id"] = derived_run_id(Path(run["run_dir"]))  # a run may not claim another run's id
        if verdict is None:  # never scored by the lab (killed, crashed, or it did not finish)
            run["val_bpb"] = None
            if run["status"] in ("ok", "timeout"):
                run["status"] = "unscored"
        else:
            run["status"] = "rejected" if verdict["status"] == "rejected" else (run["status"] if run["status"] in ("ok", "timeout") else "ok")
            run["val_bpb"] = ((verdict.get("splits") or {}).get("val") or {}).get("val_bpb") if verdict["status"] == "ok" else None
        row = self.ledger.upsert_run(record, campaign_id=self.id, experiment_id=exp_id)
        self.ledger.link_run(row["run_id"], campaign_id=self.id, experiment_id=exp_id)

    def score_path(self, key: str) -> Path:
        """Where the lab writes its score of run `key`: in the campaign's directory, which no
        experiment process can see."""
        return self.workdir / "scores" / f"{key}.json"

    def on_rejected(self, exp_id: str, result: JobResult) -> None:
        """The lab refused the run's result (a failed probe, a false report): the experiment is
        rejected with the reason, its other runs stopped."""
        verdict = read_json(self.score_path(result.job.key)) or {}
        reason = verdict.get("reason") or (result.summary or {}).get("rejected_reason") or "rejected by the lab"
        exp = self.ledger.get_experiment(exp_id)
        for job in self.runner.running():
            if job.key.rsplit("-s", 1)[0] == exp_id:
                self.runner.stop(job.key)
        if exp["status"] in (Phase.DECIDED, Phase.REJECTED):
            return
        self.ledger.record_decision("discard", decided_by=f"{DECIDER} (integrity check)", decider_type="strategy", experiment_id=exp_id,
                                    rationale=f"rejected by the lab: {reason}", evidence={"rejected": reason, "run": result.job.key,
                                                                                          "lab_score": verdict})
        self.ledger.set_experiment_status(exp_id, Phase.REJECTED)
        self.log(f"{exp_id}: REJECTED — {reason}")
        if self.proposals.get(exp_id) is not None:
            self.strategy.observe(self.proposals[exp_id], None)

    def note_failure(self, exp_id: str, result: JobResult) -> None:
        tail = result.stderr_tail.strip().splitlines()[-12:]
        self.ledger.add_note(f"run {result.job.key} ended {result.status} (exit {result.returncode}):\n" + "\n".join(tail),
                             author="campaign", experiment_id=exp_id)
        if result.summary is None:
            self.failed_jobs.add(result.job.key)

    def maybe_decide(self, exp_id: str, stopped_early: bool = False) -> None:
        exp = self.ledger.get_experiment(exp_id)
        n = planned_seeds(exp)
        if n == 0:
            return
        results = self.results(exp_id)
        planned = self.seeds_of(exp)
        done = {s for s in planned if s in results or f"{exp_id}-s{s}" in self.failed_jobs}
        if len(done) < len(planned) and not stopped_early:
            return
        values = [r["val_bpb"] for r in results.values() if r["status"] == "ok" and r["val_bpb"] is not None]
        evidence = {"runs": {s: r["run_id"] for s, r in results.items()}, "values": values}
        proposal = self.proposals.get(exp_id)
        if exp["role"] == Role.TRANSFER:  # one side of a transfer check
            self.ledger.set_experiment_status(exp_id, Phase.DECIDED)
            self.maybe_finish_transfer(exp["change"]["transfer_of"])
            return
        if exp["role"] in (Role.CONFIRMATION, Role.ABLATION):  # one run set of the confirmation phase
            self.ledger.set_experiment_status(exp_id, Phase.MEASURED)
            self.maybe_record_claims()
            return
        base = self.baseline()
        if base is not None and exp_id == base["id"] and not self.incumbent()[0]:  # the baseline
            nf = noise_floor(values)
            self.ledger.record_decision("keep", decided_by=DECIDER, decider_type="strategy", experiment_id=exp_id,
                                        rationale=f"baseline: mean {nf.get('mean', float('nan')):.4f}, seed std {nf['std'] or 0:.4f} over {nf['n']} seeds",
                                        evidence={**evidence, "noise_floor": nf})
            self.ledger.set_experiment_status(exp_id, Phase.DECIDED)
            self.log(f"baseline {exp_id}: {nf}")
            return
        _, inc_values = self.incumbent()
        if not values or stopped_early:
            why = "stopped early: clearly worse than the incumbent at an intermediate evaluation" if stopped_early else \
                f"no usable result ({', '.join(r['status'] for r in results.values()) or 'crashed'})"
            told = None
            if stopped_early and exp_id in self.rung_stops:  # screen policy: stopped at its first rung
                rung = self.rung_stops[exp_id]
                why = (f"stopped at the first rung: {rung['value']:.4f} vs its parent's {rung['parent_value']:.4f} on seed {rung['seed']} "
                       f"({rung['diff']:+.4f} > {self.cfg.rung_stop:g})")
                evidence.update(stage="screen", rung=rung)
                told = rung["told"]  # the strategy learns how bad it looked, not just that it failed
            self.decide(exp, "discard", why, evidence, proposal, told)
            return
        if self.incumbent()[0] is None:  # screened while the baseline runs: decided once the baseline is
            return
        if self.cfg.decision == "screen":
            self.decide_screen(exp, values[0], evidence, proposal)
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
                self.ledger.set_experiment_status(exp_id, Phase.RUNNING, planned_seeds=self.cfg.seeds)
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
            self.ledger.set_experiment_status(exp_id, Phase.RUNNING, planned_seeds=n + self.cfg.seeds)
            extra = self.missing_incumbent_seeds(n + self.cfg.seeds)
            self.log(f"{exp_id}: promising ({cmp.summary()}); {self.cfg.seeds} more seeds" + (f", and {extra} for the incumbent" if extra else ""))
        else:
            self.decide(exp, "discard", cmp.summary(), evidence, proposal, cmp.mean_candidate, cmp)


    # ---- the screen policy: adopt on screened evidence, combine, confirm (research/policy.py) ------------

    def parent_of(self, exp: dict) -> dict:
        """The experiment whose recipe a proposal changed (its seed-0 run is the screen's
        reference): recorded at proposal time, else found by recipe, else the baseline."""
        parent_id = (exp["change"] or {}).get("parent")
        if parent_id:
            return self.ledger.get_experiment(parent_id)
        for e in self.experiments():
            if e["id"] != exp["id"] and "recipe" in (e["change"] or {}) and e["change"]["recipe"] == exp["parent_recipe"] \
                    and e["role"] not in (Role.CONFIRMATION, Role.ABLATION):
                return e
        return self.baseline()

    def screen_seed(self, exp: dict) -> int:
        """The seed a screen runs on: its parent's reference seed when it was proposed."""
        return (exp["change"] or {}).get("screen_seed", policy.SCREEN_SEED)

    def screen_decision(self, exp: dict) -> dict | None:
        """The latest screen-stage decision on an experiment (its adoption, if adopted)."""
        ds = [d for d in self.ledger.list_decisions(experiment_id=exp["id"]) if (d.get("evidence") or {}).get("stage") == "screen"]
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
        for d in self.ledger.list_decisions(campaign_id=self.id):
            used.add((d.get("evidence") or {}).get("reference_seed", 0))
        return max(used) + 1

    def decide_screen(self, exp: dict, value: float, evidence: dict, proposal) -> None:
        """A finished screen: adopt it (the incumbent moves), combine it with an incumbent that
        moved on since it was proposed, or discard it. None of these is a claim."""
        parent = self.parent_of(exp)
        seed = self.screen_seed(exp)
        ref = self.values_by_seed(parent["id"]).get(seed)
        if ref is None:
            if f"{parent['id']}-s{seed}" in self.failed_jobs or parent["status"] in (Phase.REJECTED, Phase.FAILED):
                self.decide(exp, "discard", f"its parent {parent['id']} has no seed-{seed} result to compare with", evidence, proposal, None)
            return  # else the parent's reference run is still going: decided when it is in
        diff = value - ref
        p = policy.p_improvement(diff, self.cfg.screen_noise)
        parent_told = self.told_value(parent)
        told = parent_told + diff if parent_told is not None else value
        evidence.update(stage="screen", parent=parent["id"], seed=seed, parent_value=ref, diff=diff, p_improvement=p,
                        screen_noise=self.cfg.screen_noise, told=told)
        vs = f"{value:.4f} vs its parent's {ref:.4f} on seed {seed} ({diff:+.4f}, {policy.describe_p(p)} at paired noise {self.cfg.screen_noise:g})"
        if diff == 0:
            self.decide(exp, "discard", f"screen: {value:.4f}, exactly its parent's on seed {seed}: the change does not alter training "
                        "(e.g. a fraction that rounds to the same steps)", evidence, proposal, told, effect=diff)
            return
        if not policy.adopt(diff, self.cfg.screen_noise, self.cfg.adopt_p):
            self.decide(exp, "discard", f"screen: {vs}; adopt at P >= {self.cfg.adopt_p:g}", evidence, proposal, told, effect=diff)
            return
        inc, _ = self.incumbent()
        evidence["reference_seed"] = self.next_reference_seed() if self.cfg.fresh_reference else seed
        fresh = f"; its children are screened on seed {evidence['reference_seed']}" if self.cfg.fresh_reference else ""
        if parent["id"] == inc["id"]:
            self.decide(exp, "keep", f"adopted as the incumbent on screened evidence: {vs}{fresh}. Not a claim: the confirmation phase "
                        "tests it", evidence, proposal, told, effect=diff)
            return
        # it beat its parent, but the incumbent moved on meanwhile (parallel screens of one parent): both are
        # winners over the same parent; the better one on the same seed becomes the incumbent, and their merge is
        # screened next, first in line
        inc_value = self.values_by_seed(inc["id"]).get(seed)
        direct = inc_value is not None and policy.adopt(value - inc_value, self.cfg.screen_noise, self.cfg.adopt_p)
        adopted, other = (exp, inc) if direct else (inc, exp)
        if direct:
            evidence.update(incumbent=inc["id"], incumbent_value=inc_value)
            self.decide(exp, "keep", f"adopted as the incumbent on screened evidence: {vs}, and {value:.4f} vs the incumbent {inc['id']}'s "
                        f"{inc_value:.4f} on the same seed{fresh}. Not a claim: the confirmation phase tests it", evidence, proposal, told,
                        effect=diff)
        else:
            evidence.pop("reference_seed")
        combo = self.queue_combination(adopted, other, parent)
        merged = f"; their merge is queued as {combo}" if combo else ""
        if not direct:
            self.decide(exp, "inconclusive", f"screen: {vs}, but the incumbent {inc['id']} moved on meanwhile and is better on the same "
                        f"seed{merged}", evidence, proposal, told, effect=diff)
        elif combo:
            self.log(f"{exp['id']} and {inc['id']}: merge queued as {combo}")

    def queue_combination(self, adopted: dict, other: dict, parent: dict) -> str | None:
        """Queue the merge of two winners over the same parent: `adopted`'s recipe plus
        `other`'s config changes relative to the parent (on keys `adopted` did not change).
        None when there is nothing to merge (a code or data change, no new key, an invalid recipe)."""
        if any((e["change"] or {}).get("patch") for e in (adopted, other)):
            return None
        start = self.recipe_of(parent)
        mine = recipe_diff(start, self.recipe_of(adopted))
        values = {k: b for k, (_, b) in recipe_diff(start, self.recipe_of(other)).items() if k not in mine}
        values = {k: v for k, v in values.items() if not k.startswith(("data.", "budget.")) and k not in ("seed", "name")}
        if not values:
            return None
        incumbent = self.recipe_of(adopted)
        try:
            recipe = validate(CampaignView(self.base, incumbent, [], None, []), Proposal("config", "", "", "", values=values))
        except (ValueError, UserError):
            return None
        diff = recipe_diff(incumbent, recipe)
        if not diff:
            return None
        return self.ledger.add_experiment(
            f"combine {adopted['id']} and {other['id']}: two winners over {parent['id']}", kind="config", proposer="campaign",
            proposer_type="strategy", rationale=f"both beat {parent['id']} on the screen; {adopted['id']} plus the change of {other['id']}",
            campaign_id=self.id, parent_recipe=incumbent.to_dict(),
            change={"values": values, "recipe": recipe.to_dict(), "diff": {k: list(v) for k, v in diff.items()}, "parent": adopted["id"],
                    "combines": [adopted["id"], other["id"]], "screen_seed": self.reference_seed(adopted),
                    "seeds": [self.reference_seed(adopted)]}, status=Phase.QUEUED, role=Role.COMBINATION)

    def confirmation_seeds(self) -> list[int]:
        """The baseline's seeds that no screen ran on: the confirmation's fresh seeds (at least
        two, so a claim can be tested: with --seeds 2 the baseline runs seed 2 in the phase)."""
        return [s for s in range(max(3, self.cfg.seeds)) if s != policy.SCREEN_SEED]

    def missing_baseline_seeds(self) -> list[int]:
        base = self.baseline()
        return [s for s in self.confirmation_seeds() if base is not None and s not in self.results(base["id"])]

    def confirmation_cost(self, also: dict | None = None) -> int:
        """Runs the confirmation phase needs for the recipe the campaign would hand back now,
        plus those it would need if every screen in flight (and `also`, about to start) were
        adopted: their new key groups. So a late adoption never leaves a change unablated."""
        final = set(policy.change_groups(self.base, self.final_recipe()))
        added = set()
        for e in self.experiments():
            if (planned_seeds(e) == 1 and e["role"] not in (Role.CONFIRMATION, Role.ABLATION)) or (also and e["id"] == also["id"]):
                added |= set(policy.change_groups(self.base, self.recipe_of(e))) - final
        groups = len(final | added)
        return policy.confirmation_runs(groups, len(self.confirmation_seeds())) + (len(self.missing_baseline_seeds()) if groups else 0)

    def confirmation(self) -> list[dict]:
        """The confirmation experiments of the current incumbent (a campaign resumed with more
        budget that moves on confirms its new final recipe again)."""
        inc, _ = self.incumbent()
        if inc is None:
            return []
        of = {inc["id"], (inc["change"] or {}).get("parent") if (inc["change"] or {}).get("pruned") else None}  # a pruned hand-back: its round
        return [e for e in self.experiments() if e["role"] in (Role.CONFIRMATION, Role.ABLATION) and e["change"].get("of") in of]

    def start_confirmation(self) -> None:
        """The final recipe and one leave-one-out ablation per changed key group, on the
        confirmation seeds; as many ablations as the remaining budget holds."""
        inc, _ = self.incumbent()
        final = self.final_recipe()
        groups = policy.change_groups(self.base, final)
        seeds = self.confirmation_seeds()
        if not groups or not seeds or self.confirmation():
            return
        left = self.cfg.budget_runs - self.compute_used() - len(self.missing_baseline_seeds())
        room = int((left + 1e-9) // len(seeds)) - 1  # ablations that fit beside the final recipe
        if room < 0:
            self.ledger.add_note("no run budget left for the confirmation phase: nothing is claimed", author="campaign", campaign_id=self.id)
            return
        if len(groups) == 1:
            room = 0  # the final recipe without its only change is the baseline, which already ran there
        skipped = list(groups)[room:] if len(groups) > 1 else []
        if skipped:
            self.ledger.add_note(f"confirmation: no run budget to ablate {', '.join(skipped)}", author="campaign", campaign_id=self.id)
        diff = {k: list(v) for k, v in recipe_diff(self.base, final).items()}
        self.ledger.add_experiment("confirmation: the final recipe against the baseline on fresh seeds", kind="config", proposer="campaign",
                                   proposer_type="strategy", rationale=f"seeds {seeds} were never used to screen or adopt anything",
                                   campaign_id=self.id, parent_recipe=self.base.to_dict(),
                                   change={"confirm": "final", "of": inc["id"], "recipe": final.to_dict(), "seeds": seeds, "diff": diff,
                                           "groups": groups},
                                   status=Phase.RUNNING, planned_seeds=len(seeds), role=Role.CONFIRMATION)
        for group, reverted in list(groups.items())[:room]:
            recipe = policy.without(final, reverted)
            self.ledger.add_experiment(f"ablation: the final recipe without its change of {group}", kind="config", proposer="campaign",
                                       proposer_type="strategy", rationale="leave-one-out: does this change carry part of the gain?",
                                       campaign_id=self.id, parent_recipe=final.to_dict(),
                                       change={"confirm": "ablation", "of": inc["id"], "group": group, "reverted": reverted, "recipe": recipe.to_dict(),
                                               "seeds": seeds, "diff": {k: list(v) for k, v in recipe_diff(final, recipe).items()}},
                                       status=Phase.RUNNING, planned_seeds=len(seeds), role=Role.ABLATION)
        self.log(f"confirmation phase: the final recipe and {min(len(groups), room)} ablation(s) on seeds {seeds}")

    def maybe_record_claims(self) -> None:
        """Once every confirmation experiment is measured: the claims, by paired t-tests on
        the confirmation seeds with one noise estimate pooled over all of their runs; then
        the groups whose ablation scored better are dropped from the recipe handed back."""
        confirm = self.confirmation()
        if not confirm or any(e["status"] != Phase.MEASURED for e in confirm):
            return
        base_id = self.baseline()["id"]
        if any(f"{base_id}-s{s}" not in self.failed_jobs for s in self.missing_baseline_seeds()):
            return  # the baseline's own confirmation seed (--seeds 2) has not finished yet
        baseline = self.baseline()["id"]
        final_exp = next(e for e in confirm if e["change"]["confirm"] == "final")
        seeds = self.confirmation_seeds()
        runs = {e["id"]: {s: v for s, v in self.values_by_seed(e["id"]).items() if s in seeds} for e in [self.baseline(), *confirm]}
        # (reference, candidate): the final recipe vs the baseline; the final recipe vs itself without the group
        comparisons = {e["id"]: (baseline if e is final_exp else e["id"], final_exp["id"]) for e in confirm}
        results = pooled_paired(runs, comparisons, alpha=self.cfg.alpha)
        groups = final_exp["change"].get("groups") or {}
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
            self.ledger.record_decision(verdict, decided_by=f"{DECIDER} (pooled paired t-test, alpha={self.cfg.alpha})", decider_type="strategy",
                                        experiment_id=e["id"], effect=cmp.effect if cmp else None,
                                        ci_low=cmp.ci_low if cmp and math.isfinite(cmp.ci_low) else None,
                                        ci_high=cmp.ci_high if cmp and math.isfinite(cmp.ci_high) else None, rationale=why,
                                        evidence={"stage": "claim", "claim": "final" if e is final_exp else "ablation",
                                                  "comparison": cmp.to_dict() if cmp else None, "group": group,
                                                  "seeds": e["change"]["seeds"], "screen_noise_assumed": self.cfg.screen_noise})
            self.ledger.set_experiment_status(e["id"], Phase.DECIDED)
            self.log(f"{e['id']}: {verdict} — {why}")
        adoptions = [(list((self.ledger.get_experiment(d["experiment_id"])["change"] or {}).get("diff") or {}), d["evidence"]["diff"])
                     for d in self.ledger.list_decisions(campaign_id=self.id)
                     if d["verdict"] == "keep" and (d.get("evidence") or {}).get("stage") == "screen" and d["evidence"].get("diff") is not None]
        drop = policy.to_drop(carried, policy.screened_by_group(adoptions), pairs=len(seeds))
        if drop:
            self.hand_back_without(final_exp, {g: groups[g] for g in drop}, {g: carried[g] for g in drop})

    def hand_back_without(self, final_exp: dict, reverted: dict[str, dict], effects: dict[str, float]) -> None:
        """Make the final recipe minus the groups that did not help on the confirmation seeds
        the incumbent, so the campaign hands it back. Recorded as an adoption, not a claim."""
        final = Recipe.from_dict(final_exp["change"]["recipe"])
        values = {k: v for group in reverted.values() for k, v in group.items()}
        recipe = policy.without(final, values)
        names = ", ".join(f"{g} ({effects[g]:+.4f})" for g in reverted)
        exp_id = self.ledger.add_experiment(
            f"hand back the final recipe without its change of {', '.join(reverted)}", kind="config", proposer="campaign",
            proposer_type="strategy", rationale="leave-one-out on the confirmation seeds: the recipe scored better without these changes",
            campaign_id=self.id, parent_recipe=final.to_dict(),
            change={"values": values, "recipe": recipe.to_dict(), "parent": final_exp["change"]["of"], "pruned": list(reverted),
                    "diff": {k: list(v) for k, v in recipe_diff(final, recipe).items()}}, status=Phase.DECIDED, role=Role.PRUNED)
        self.ledger.record_decision("keep", decided_by=f"{DECIDER} (leave-one-out pruning)", decider_type="strategy", experiment_id=exp_id,
                                    rationale=f"dropped {names}: each scored better without it on seeds {final_exp['change']['seeds']} "
                                              "(effect = final - final without it). An adoption on the confirmation's evidence, not a claim",
                                    evidence={"stage": "prune", "dropped": effects, "of": final_exp["change"]["of"]})
        self.log(f"handing back the final recipe without {names}")

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
                                       status=Phase.RUNNING, planned_seeds=self.cfg.seeds, role=Role.TRANSFER)
        self.ledger.set_experiment_status(exp["id"], Phase.TRANSFER)
        self.log(f"{exp['id']}: {cmp.summary()} — checking transfer at {', '.join(self.cfg.transfer)}")

    def maybe_finish_transfer(self, candidate_id: str) -> None:
        sides = {e["change"]["role"]: e for e in self.experiments() if e["role"] == Role.TRANSFER and e["change"]["transfer_of"] == candidate_id}
        if len(sides) < 2 or any(e["status"] != Phase.DECIDED for e in sides.values()):
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

    def decide(self, exp, verdict, rationale, evidence, proposal, value, cmp=None, effect=None) -> None:
        rule = {"screen": f"screen, adopt at P >= {self.cfg.adopt_p:g}", "paired": f"paired t-test, alpha={self.cfg.alpha}",
                "welch": f"Welch, alpha={self.cfg.alpha}", "greedy": "single seed"}[self.cfg.decision]
        self.ledger.record_decision(verdict, decided_by=f"{DECIDER} ({rule})", decider_type="strategy",
                                    experiment_id=exp["id"], effect=cmp.effect if cmp else effect,
                                    ci_low=cmp.ci_low if cmp and math.isfinite(cmp.ci_low) else None,
                                    ci_high=cmp.ci_high if cmp and math.isfinite(cmp.ci_high) else None,
                                    rationale=rationale, evidence=evidence)
        self.ledger.set_experiment_status(exp["id"], Phase.DECIDED)
        self.log(f"{exp['id']} ({exp['hypothesis'][:60]}): {verdict} — {rationale}")
        if proposal is not None:
            self.strategy.observe(proposal, value)

    # ---- b. early stopping -----------------------------------------------------------------------------

    def early_stop_losers(self) -> None:
        frac = self.base.train.eval_every_frac
        if frac and self.cfg.decision == "screen":  # against the parent's run, which may be the baseline's still running
            self.stop_screens_at_rung(frac)
            return
        inc, _ = self.incumbent()
        if not frac or inc is None:
            return
        ref = early_stop.rung_reference([early_stop.eval_curve(Path(r["run_dir"]), frac) for r in self.results(inc["id"]).values()])
        exempt = {inc["id"]} | {e["id"] for e in self.experiments() if e["role"] == Role.TRANSFER}  # other scale
        for job in self.runner.running():
            if job.key.rsplit("-s", 1)[0] in exempt or self.runner.stopping(job.key):
                continue
            curve = {rung: v for rung, v in early_stop.eval_curve(job.out_dir, frac).items() if rung < round(1 / frac)}  # not the final eval
            stop, why = early_stop.should_stop(curve, ref)
            if stop:
                self.log(f"{job.key}: early stop — {why}")
                self.runner.stop(job.key)

    def stop_screens_at_rung(self, frac: float) -> None:
        """Screen policy: a screen trailing its parent's run on the same seed at the first rung
        by more than `rung_stop` is stopped there (successive halving against the parent)."""
        for job in self.runner.running():
            exp_id, seed = job.key.rsplit("-s", 1)
            if self.runner.stopping(job.key) or exp_id in self.rung_stops:
                continue
            exp = self.ledger.get_experiment(exp_id)
            if planned_seeds(exp) != 1 or exp["role"] in (Role.CONFIRMATION, Role.ABLATION, Role.TRANSFER) \
                    or int(seed) != self.screen_seed(exp):
                continue
            value = early_stop.eval_curve(job.out_dir, frac).get(1)
            parent = self.parent_of(exp)
            if value is None or parent is None or parent["id"] == exp_id or 1 >= round(1 / frac):
                continue
            parent_value = early_stop.eval_curve(self.run_dir(parent["id"], int(seed)), frac).get(1)
            if parent_value is None or not policy.stop_at_rung(value - parent_value, self.cfg.rung_stop):
                continue
            parent_told = self.told_value(parent)
            self.rung_stops[exp_id] = {"value": value, "parent_value": parent_value, "diff": value - parent_value, "rung": frac,
                                       "seed": int(seed), "told": parent_told + value - parent_value if parent_told is not None else None}
            self.log(f"{job.key}: stopped at the first rung ({value:.4f} vs its parent's {parent_value:.4f})")
            self.runner.stop(job.key)

    # ---- c. scheduling -----------------------------------------------------------------------------------

    def budget_spent(self, extra: float = 0) -> bool:
        """True when one more run plus `extra` would not fit in the run budget (or time is up)."""
        over_time = self.cfg.budget_hours and self.elapsed() > self.cfg.budget_hours * 3600
        return self.compute_used() + extra + 1 > self.cfg.budget_runs + 1e-9 or bool(over_time)

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
            for seed in self.seeds_of(exp):
                key = f"{exp['id']}-s{seed}"
                if key in running or seed in self.results(exp["id"]) or key in self.failed_jobs:
                    continue
                return self.job(exp, seed)
        if self.baseline() is None or (inc is None and self.baseline()["status"] == Phase.DECIDED):
            self.idle_reason = "no baseline"  # a baseline that produced nothing: the campaign cannot compare
            return None
        screening = sum(planned_seeds(e) == 1 for e in self.experiments())
        if self.cfg.decision == "screen":  # the end of the budget belongs to the confirmation phase
            if any(e["status"] != Phase.DECIDED for e in self.confirmation()):
                base = self.baseline()
                for seed in self.missing_baseline_seeds():  # --seeds 2: the baseline's second confirmation seed
                    key = f"{base['id']}-s{seed}"
                    if key not in running and key not in self.failed_jobs:
                        return self.job(base, seed)
                self.maybe_record_claims()
                self.idle_reason = "confirmation phase"
                return None
            if inc is not None and not self.confirmation() and self.budget_spent(extra=self.confirmation_cost()):
                if screening:  # a screen in flight may still move the incumbent: confirm what it hands back
                    self.idle_reason = "reserved for the confirmation phase"
                    return None
                self.start_confirmation()
                if not self.confirmation():
                    self.idle_reason = "nothing to confirm"
                    return None
                return self.next_job()
        elif self.cfg.decision != "greedy" and self.budget_spent(extra=screening * (self.cfg.seeds - 1)):
            self.idle_reason = "reserved for replicates of screens in flight"
            return None  # keep room to replicate the screens in flight rather than start new ones
        queued = sorted((e for e in self.experiments() if e["status"] == Phase.QUEUED), key=lambda e: e["role"] != Role.COMBINATION)  # combinations first
        for _ in range(3):  # a round whose proposals were all rejected: ask again, a bounded number of times
            if queued or self.strategy_disabled or self.quiet_at == self.num_decisions():
                break
            asked = self.ask_strategy()
            queued = [e for e in asked if e["status"] == Phase.QUEUED]
            if not asked:
                break
        if not queued and self.cfg.decision == "screen" and inc is not None and not screening and not self.confirmation():
            self.start_confirmation()  # nothing more to screen: confirm what the campaign hands back
            if self.confirmation():
                return self.next_job()
        if not queued:
            waiting = any(e["status"] == Phase.AWAITING_APPROVAL for e in self.experiments())
            self.idle_reason = "proposals awaiting approval" if waiting else f"strategy {self.strategy.name} proposed nothing new"
            return None
        exp = queued[0]
        missing_reference = 0
        if self.cfg.decision == "screen" and inc is not None:
            ref_key = f"{inc['id']}-s{self.reference_seed(inc)}"
            missing_reference = int(self.reference_seed(inc) not in self.results(inc["id"]) and ref_key not in running
                                    and ref_key not in self.failed_jobs)
        if self.cfg.decision == "screen" and inc is not None and self.budget_spent(extra=self.confirmation_cost(also=exp) + missing_reference):
            if screening:  # its ablation would not fit if it were adopted: wait for the screens in flight
                self.idle_reason = "reserved for the confirmation phase"
                return None
            if self.confirmation():
                self.idle_reason = "run budget spent: the final recipe is confirmed"
                return None
            self.start_confirmation()  # it stays queued, never run
            if not self.confirmation():
                self.idle_reason = "run budget spent: no room to screen a proposal and confirm it"
                if exp["id"] not in self.unaffordable:
                    self.unaffordable.add(exp["id"])
                    self.ledger.add_note(f"not run: the run budget has no room to screen it and, if adopted, confirm it "
                                         f"({self.confirmation_cost(also=exp)} runs); `research resume --budget-runs` to run it",
                                         author="campaign", experiment_id=exp["id"])
                return None
            return self.next_job()
        if self.cfg.decision == "screen" and inc is not None:  # the incumbent's fresh reference run, before its first child
            seed = self.reference_seed(inc)
            key = f"{inc['id']}-s{seed}"
            if seed not in self.results(inc["id"]) and key not in running and key not in self.failed_jobs:
                return self.job(inc, seed)
        self.ledger.set_experiment_status(exp["id"], Phase.RUNNING, planned_seeds=1)
        exp = self.ledger.get_experiment(exp["id"])
        return self.job(exp, self.seeds_of(exp)[0])

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
        if self.runner.release_orphan(f"{exp['id']}-s{seed}"):  # still running from a loop that was killed: stopped cleanly
            self.log(f"{exp['id']}-s{seed}: stopped the run a previous loop left running; resuming it from its checkpoint")
        if run_dir.exists():  # interrupted by a previous loop's death: continue it, or start over
            summary = read_summary(run_dir) or {}
            if list((run_dir / "ckpt").glob("step_*")) or (summary.get("status") in ("ok", "timeout") and (run_dir / "model.pt").exists()):
                # (a run that finished but was never scored: the job process scores it without training again)
                return Job(f"{exp['id']}-s{seed}", str(recipe_path), run_dir, [f"seed={self.base.seed + seed}"], timeout_s=timeout,
                           pythonpath=pythonpath, env={"PRETRAINLAB_NO_LEDGER": "1"}, resume=True,
                           score_path=self.score_path(f"{exp['id']}-s{seed}"), score_data=self.score_data())
            holder = lock_holder(run_dir)
            if holder is not None:  # something this campaign does not own still writes it: never delete it
                raise UserError(f"run directory {run_dir} is in use by process {holder.pid} (group {holder.pgid}): stop it, "
                                f"then `pretrainlab research resume {self.id}`")
            shutil.rmtree(run_dir)  # killed before its first checkpoint, nothing writes it: start it over
        return Job(f"{exp['id']}-s{seed}", str(recipe_path), run_dir, [f"seed={self.base.seed + seed}"],
                   timeout_s=timeout, pythonpath=pythonpath, env={"PRETRAINLAB_NO_LEDGER": "1"},
                   score_path=self.score_path(f"{exp['id']}-s{seed}"), score_data=self.score_data())

    def score_data(self) -> dict:
        """The data every run of the campaign is scored on: its base corpus's, whatever corpus a
        run trains on (a data experiment's derived corpus has the same held-out documents, and
        the lab scores them from the base's own shards)."""
        return {"corpus": self.base.data.corpus, "tokenizer": self.base.data.tokenizer}

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
        sweep = self.sweep_proposals(incumbent, self.runner.free_slots())
        if sweep:
            return [self.ledger.get_experiment(self.add_proposal(p, incumbent, extra={"sweep": point})) for p, point in sweep]
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

    def sweep_proposals(self, incumbent: Recipe, n: int) -> list[tuple[Proposal, list]]:
        """The screen policy's one-key sweep (policy.sweep_points), before a search strategy's
        own proposals: the next n points not yet screened, each applied to the incumbent."""
        if not (self.cfg.sweep and self.cfg.decision == "screen" and self.strategy.name in ("optuna", "random")) or n <= 0:
            return []
        space = default_space(self.base)
        done = {tuple(e["change"]["sweep"]) for e in self.experiments() if (e["change"] or {}).get("sweep")}
        now, params = current_values(incumbent, space), {p.key: p for p in space}
        out = []
        for key, value in policy.sweep_points(space, self.base):
            if (key, value) in done or same_value(params[key], value, now[key]):
                continue
            out.append((Proposal("config", f"sweep: {key} {now[key]} -> {value}",
                                 "one-key sweep before the search: every key of the search space moved once each way, screened "
                                 "against the incumbent; winners are adopted one after the other, which combines them",
                                 "sweep", values={key: value}), [key, value]))
            if len(out) == n:
                break
        return out

    def add_proposal(self, p: Proposal, incumbent: Recipe, extra: dict | None = None) -> str:
        """Validate and record a proposal; an invalid one is recorded as rejected, never run."""
        parent = self.incumbent()[0] or self.baseline()  # the experiment whose recipe `incumbent` is
        change: dict = {"values": p.values, "weights": p.weights, "patch": p.patch, "parent": parent["id"] if parent else None,
                        **(extra or {})}
        if self.cfg.decision == "screen":
            change["screen_seed"] = self.reference_seed(parent) if parent else policy.SCREEN_SEED
            change["seeds"] = [change["screen_seed"]]
        status, error = Phase.QUEUED, None
        scratch = Path(tempfile.mkdtemp(prefix="patch-", dir=self.workdir)) if p.kind == "code" else None
        try:
            if p.kind == "data":  # a mixture and/or steps built into a derived corpus with the base's held-out data
                recipe, built = apply_data_change(incumbent, self.base, p.data_steps, p.weights)
                if built:
                    change["data_recipe"] = built
            else:
                check_fixed_data(p.values)
                recipe = validate(CampaignView(self.base, incumbent, [], None, []), p)
            if p.kind == "code":  # apply it now: a patch that does not apply is rejected before it is queued
                apply_patch(p.patch or "", scratch)
                status = Phase.AWAITING_APPROVAL if self.cfg.approve_code else status
            change["recipe"] = recipe.to_dict()
            change["diff"] = {k: list(v) for k, v in recipe_diff(incumbent, recipe).items()}
        except (ValueError, UserError) as e:  # PatchRejected is a ValueError
            status, error = Phase.REJECTED, str(e)
        proposer_type = "strategy" if p.proposer in (self.strategy.name, "sweep") else "person"
        exp_id = self.ledger.add_experiment(p.hypothesis, kind=p.kind, proposer=p.proposer, proposer_type=proposer_type,
                                            model_id=p.model_id if proposer_type == "strategy" else None, rationale=p.rationale,
                                            campaign_id=self.id, parent_recipe=incumbent.to_dict(), change=change, status=status,
                                            role=Role.SWEEP if p.proposer == "sweep" else Role.PROPOSAL if proposer_type == "strategy" else Role.SUGGESTION)
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
            if d is None or e["role"] in (Role.CONFIRMATION, Role.ABLATION):  # confirmation runs are on other seeds than screens
                continue
            ev = d.get("evidence") or {}
            values = [ev["value_on_incumbent_scale"]] if ev.get("value_on_incumbent_scale") is not None else ev.get("values") or []
            out.append({"id": e["id"], "kind": e["kind"], "values": (e["change"] or {}).get("values"), "weights": (e["change"] or {}).get("weights"),
                        "data_steps": ((e["change"] or {}).get("data_recipe") or {}).get("steps"),
                        "recipe": (e["change"] or {}).get("recipe"),
                        "patch": bool((e["change"] or {}).get("patch")), "value": statistics.fmean(values) if values else None,
                        "verdict": d["verdict"], "noise_floor": ((d.get("evidence") or {}).get("noise_floor") or {}).get("std"),
                        "effect": d.get("effect"), "ci_low": d.get("ci_low"), "ci_high": d.get("ci_high"),
                        "rejected": (d.get("evidence") or {}).get("rejected")})
        return out


def slots_text(c: dict) -> str:
    """A loop's closing statistics (Campaign.closing_stats) in words: what `research status` shows."""
    parts = ", ".join(f"{v:.0f} s {k}" for k, v in sorted(c["idle_s"].items(), key=lambda kv: -kv[1]) if v >= 0.5) or "none"
    until_last = "n/a" if c["utilisation_until_last_start"] is None else f"{c['utilisation_until_last_start']:.1%}"
    return (f"slot utilisation {c['utilisation_queued']:.1%} of {c['slots']} slot(s) while work was queued; "
            f"{until_last} until the last run started, {c['utilisation']:.1%} including the final drain; "
            f"idle slot-time: {parts}; {c['seconds']:.0f} s")


def closing_note(c: dict) -> str:
    """The note a loop leaves when it closes (the research log shows it)."""
    return f"closed {c['status']}: {slots_text(c)}"


def new_workdir(root: Path, campaign_id: str) -> Path:
    path = root / "campaigns" / campaign_id
    path.mkdir(parents=True, exist_ok=True)
    return path

