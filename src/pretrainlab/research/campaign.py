"""A research campaign: the loop that proposes, runs, decides and records.

    pretrainlab research start --recipe tiny-cpu --budget-runs 40 --run-budget 8e4tok --strategy auto --parallel 2
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
import re
import shutil
import statistics
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

from ..config import Recipe
from ..errors import UserError
from ..ledger.rundir import derived_run_id, read_run_dir
from ..ledger.store import Phase, Role
from ..train.rundir_lock import lock_holder
from ..recipes import budget_tokens, estimate_flops_per_token, estimate_params
from ..runners import Job, JobResult, Runner
from ..rundir import read_json, read_summary, write_json_atomic
from ..runners.base import OVERHEAD
from . import decide, early_stop, policy, schedule
from .config import CampaignConfig, at_rung  # noqa: F401 (the settings, imported from here too)
from .data_experiments import apply_data_change, check_fixed_data, check_scored_tokens
from .patches import apply_patch
from .space import default_space, recipe_diff
from .state import CampaignState, incumbent_id, planned_seeds
from .stats import describe_paired_noise
from .strategies import CampaignView, Proposal, Strategy, current_values, same_value, validate

DECIDER = "pretrainlab stats"  # decisions by the loop's statistics rule are attributed to it
MAX_FAILURE_NOTES = 10  # a strategy's failed tool calls noted one by one per round; the rest are counted in one more note
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # terminal control characters (the CLI's _printable)


# ---- experiment state: its Phase (experiments.status) and its Role (experiments.role), ledger/store.py ----


def handed_back(ledger, campaign_id: str) -> Recipe:
    """The recipe a campaign hands back: its incumbent's (the starting recipe if none)."""
    exp_id = incumbent_id(ledger.list_decisions(campaign_id=campaign_id))
    if exp_id is None:
        return Recipe.from_dict(ledger.get_campaign(campaign_id)["config"]["base_recipe"])
    change = ledger.get_experiment(exp_id)["change"] or {}
    return Recipe.from_dict(change["recipe"]) if "recipe" in change else Recipe.from_dict(ledger.get_campaign(campaign_id)["config"]["base_recipe"])


class _Tracked:
    """The ledger, calling `on_write` after every write that changes what a CampaignState holds."""

    WRITES = frozenset({"add_experiment", "record_decision", "set_experiment_status", "upsert_run", "link_run"})

    def __init__(self, ledger, on_write):
        self._ledger, self._on_write = ledger, on_write

    def __getattr__(self, name: str):
        attr = getattr(self._ledger, name)
        if name not in self.WRITES:
            return attr

        def write(*args, **kwargs):
            try:
                return attr(*args, **kwargs)
            finally:
                self._on_write()
        return write


MAX_MODEL_GROWTH = 16  # an experiment's model at most this many times the base's parameters


def check_growth(recipe: Recipe, base: Recipe) -> None:
    """UserError for an experiment's model more than MAX_MODEL_GROWTH times the base's: its runs would not end within any
    budget the campaign planned for."""
    growth = estimate_params(recipe) / max(1, estimate_params(base))
    if growth > MAX_MODEL_GROWTH:
        raise UserError(f"the change makes the model {growth:.3g}x the base's parameters: a campaign's experiments "
                        f"stay within {MAX_MODEL_GROWTH}x (start a campaign on a larger recipe to go further)")


class Campaign:
    def __init__(self, ledger, campaign_id: str, strategy: Strategy, runner: Runner, workdir: Path, echo: bool = True):
        self.id, self.strategy, self.runner = campaign_id, strategy, runner
        self._ledger, self._state, self._last_state = ledger, None, None
        self._predictor = None  # the transfer ladder's fitted law, once needed
        self.ledger = _Tracked(ledger, self.reload)  # a write drops the loaded state
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
        # second tries, kept in the campaign's row (save_state) so a restarted loop gives none a third: runs whose scoring
        # timed out or was killed and were scored again, and runs killed from outside before they finished and resumed
        tries = row["config"].get("second_tries") or {}
        self.rescored: set[str] = {k for k in tries.get("rescored") or [] if isinstance(k, str)}
        self.retried: set[str] = {k for k in tries.get("retried") or [] if isinstance(k, str)}
        self.started = runner.time()  # the runner's clock: wall time, or the simulator's virtual time
        self.ready_since: dict[str, float] = {}  # job key -> when (runner clock) it could have started but no slot was free
        self.elapsed_before = float(row["config"].get("elapsed_s", 0.0))  # earlier loops of this campaign (resumes)

    # ---- 0. bookkeeping derived from the ledger --------------------------------------------------------

    @property
    def state(self) -> CampaignState:
        """The campaign as the ledger holds it (loaded once, until the loop writes to the
        ledger or starts its next turn), with the loop's runs in flight, failures and clock."""
        if self._state is None:
            self._state = self._last_state = CampaignState.load(self._ledger, self.id, self.cfg, self.base, previous=self._last_state)
        s = self._state
        s.running, s.failed, s.elapsed = {j.key for j in self.runner.running()}, self.failed_jobs, self.elapsed()
        return s

    def reload(self) -> None:
        self._state = None

    def experiments(self) -> list[dict]:
        return self.state.experiments

    def run_dir(self, experiment_id: str, seed: int) -> Path:
        return self.workdir / f"{experiment_id}-s{seed}"

    def results(self, experiment_id: str) -> dict[int, dict]:
        """{seed: run row} of the experiment's registered runs."""
        return self.state.results(experiment_id)

    def values_by_seed(self, experiment_id: str) -> dict[int, float]:
        """{seed index: val_bpb} of the experiment's finished runs."""
        return self.state.values_by_seed(experiment_id)

    def elapsed(self) -> float:
        """Wall-clock seconds of all this campaign's loops so far (what --budget-hours caps)."""
        return self.elapsed_before + self.runner.time() - self.started

    def save_state(self) -> None:
        """Elapsed time, an LLM strategy's cumulative spend and the runs given a second try, kept in the campaign's
        ledger row so the time budget, the spend caps and "once" hold across resumes; a killed loop's time counts up to
        its last finished run or proposal round."""
        row = self.ledger.get_campaign(self.id)
        state = {"elapsed_s": round(self.elapsed(), 1), "second_tries": {"rescored": sorted(self.rescored),
                                                                           "retried": sorted(self.retried)}}
        spend = getattr(self.strategy, "spend", None)
        if spend is not None:
            model = getattr(self.strategy, "model_id", None)
            state["llm_spend"] = {"model": model, **asdict(spend),
                                  "dollars": round(spend.dollars(model), 4) if self.strategy.name == "claude" else None}
        self.ledger.set_campaign_config(self.id, {**row["config"], **state})

    def baseline(self) -> dict | None:
        return self.state.baseline

    def incumbent(self) -> tuple[dict | None, list[float]]:
        """(the experiment whose recipe is the incumbent, its replicate values)."""
        s = self.state
        return s.incumbent, s.incumbent_values()

    def recipe_of(self, exp: dict) -> Recipe:
        return self.state.recipe_of(exp)

    def seeds_of(self, exp: dict) -> list[int]:
        return self.state.seeds_of(exp)

    def final_recipe(self) -> Recipe:
        """What the campaign hands back: the incumbent's recipe."""
        return self.state.final_recipe()

    def compute_used(self) -> float:
        return self.state.compute_used()

    def claims(self) -> list[dict]:
        """The confirmation phase's recorded claims (decisions with stage 'claim')."""
        return self.state.claims()

    def log(self, msg: str) -> None:
        if self.echo:  # hypotheses and reasons come from models: no escape sequence of theirs reaches the terminal
            print(CONTROL.sub("\ufffd", f"[campaign {self.id}] {msg}"), file=sys.stderr, flush=True)

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
            self.reload()  # a person's approve, reject or suggestion, seen within one poll
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
            self.runner.flush()  # what the pass started goes out together (SLURM: replicates in one job array)
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
        if status == "done":  # before 'done' is set: a loop killed while it scores the test split is resumed, not taken for done
            self.record_hidden_test()
        self.ledger.set_campaign_status(self.id, status)
        self.save_state()
        closing = self.closing_stats(status)
        row = self.ledger.get_campaign(self.id)
        self.ledger.set_campaign_config(self.id, {**row["config"], "closing": [*row["config"].get("closing", []), closing]})
        note = closing_note(closing)
        self.ledger.add_note(note, author="campaign", campaign_id=self.id)
        self.log(note.split(";")[0])

    def split_scores(self, exp: dict) -> dict[int, tuple[float, float]]:
        """Mean lab score on the decision and the hidden test split over an experiment's scored
        runs. The test split is scored here, when the campaign closes: a sandboxed worker runs
        the model, this process computes the score (runners/scoring.py). Each run's test score
        is kept beside its score (`scores/KEY.test.json`, for the weights it scored), so a later
        close (a resume) scores only runs it has not seen."""
        from ..data import Corpus
        from ..runners.job import corpus_path
        from ..runners.base import PACKAGE_SRC
        from ..runners.limits import TASKS, run_memory
        from ..runners.scoring import ScoreRejected, ScoringFailed, ScoringOutOfMemory, score_run

        recipe = self.recipe_of(exp)
        # no run in flight beside it: the whole share of the machine a --run-memory auto gives (runners/limits.py)
        caps = {"memory": run_memory(getattr(self.runner, "run_memory", "off"), 1.0), "tasks": TASKS}
        code_src = self.workdir / "trees" / exp["id"] / "src" if (exp["change"] or {}).get("patch") else PACKAGE_SRC
        corpus = Corpus.open(corpus_path(self.base), verify=False)  # the base's held-out data, as every run was scored
        out = {}
        for seed, row in self.results(exp["id"]).items():
            key = Path(row["run_dir"]).name
            verdict = read_json(self.score_path(key)) or {}
            weights = Path(row["run_dir"]) / "model.pt"
            if verdict.get("status") != "ok" or not weights.is_file():
                continue
            seen = {"size": weights.stat().st_size, "mtime_ns": weights.stat().st_mtime_ns, "code": str(code_src)}
            kept_path = self.workdir / "scores" / f"{key}.test.json"
            kept = read_json(kept_path) or {}
            if kept.get("weights") != seen:
                try:
                    scored = score_run(Path(row["run_dir"]), code_src, corpus, seq_len=recipe.model.seq_len, splits=("test",),
                                       tokens_per_domain=recipe.eval.tokens_per_domain, batch_rows=recipe.eval.batch_rows,
                                       sandbox=self.runner.sandbox, **self.runner.scoring_resources(), **caps)
                    kept = {"weights": seen, "val_bpb": scored["splits"]["test"]["val_bpb"]}
                except ScoreRejected as e:
                    kept = {"weights": seen, "rejected": str(e)}
                except ScoringOutOfMemory as e:  # kept: the same weights would run out again at every close
                    self.log(f"{key}: the hidden test split could not be scored ({e}); left out of this comparison")
                    kept = {"weights": seen, "out_of_memory": str(e)}
                except ScoringFailed as e:  # not kept: the next close scores it again
                    self.log(f"{key}: the hidden test split could not be scored ({e}); left out of this comparison")
                    continue
                write_json_atomic(kept_path, kept)
            if "val_bpb" not in kept:
                continue
            out[seed] = (verdict["splits"]["val"]["val_bpb"], kept["val_bpb"])
        return out

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
        # on the seeds both have: the final recipe's runs against the baseline's of the same seeds (a screen's single
        # seed-0 run against the baseline's 3-seed mean once reported a 0.10 bpb "gap" that was seed noise)
        self.log(f"closing: scoring the hidden test split with the final recipe's and the baseline's runs "
                 f"({len(self.results(inc['id'])) + len(self.results(base['id']))} runs, each in a sandboxed process; a code "
                 "patch's in two)")
        final_scores, start_scores = self.split_scores(inc), self.split_scores(base)
        seeds = sorted(set(final_scores) & set(start_scores))
        if not seeds:
            return
        final, start = ({"val": statistics.fmean(scores[s][0] for s in seeds), "test": statistics.fmean(scores[s][1] for s in seeds),
                         "runs": len(seeds)} for scores in (final_scores, start_scores))
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
        return self.state.incumbent_seeds_needed()

    def collect_finished_on_disk(self) -> None:
        inc, _ = self.incumbent()
        for exp in self.experiments():
            seeds = self.seeds_of(exp)
            if inc is not None and exp["id"] == inc["id"]:
                seeds = sorted(set(seeds) | set(range(self.incumbent_seeds_needed())))
                if self.cfg.decision == "screen":
                    seeds = sorted(set(seeds) | {self.state.reference_seed(inc)})
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
        latest = {d["experiment_id"]: d for d in self.state.decisions}
        reserved = 0  # runs promised to leads re-opened above, not yet started
        for exp in self.experiments():
            d = latest.get(exp["id"])
            if not (d and d["verdict"] == "inconclusive" and (d.get("evidence") or {}).get("awaiting_budget")):
                continue
            if inc is None or exp["parent_recipe"] != self.recipe_of(inc).to_dict():
                continue  # proposed against an earlier incumbent: its screen no longer says anything
            # replicated on `seeds` fresh seeds after its screen's (decide._screen_for_replicates)
            need = self.cfg.seeds + (self.missing_incumbent_seeds(self.cfg.seeds + 1) if not reserved else 0)
            if self.budget_spent(extra=reserved + need - 1):
                return
            reserved += need
            self.ledger.set_experiment_status(exp["id"], Phase.RUNNING, planned_seeds=self.cfg.seeds + 1)
            self.ledger.add_note("re-opened: the run budget now has room for its replicates", author="campaign", experiment_id=exp["id"])
            self.log(f"{exp['id']}: promising screen re-opened, replicating on {self.cfg.seeds} fresh seeds")

    def on_finished(self, result: JobResult) -> None:
        exp_id = result.job.key.rsplit("-s", 1)[0]
        self.ledger.record_attempts(self.id, result.job.key, result.job.out_dir, result.status,
                                    [a.to_row(result.job.queued_at) for a in result.attempts])
        if result.status == "shutdown":  # the campaign is stopping: the run resumes from its checkpoint next time
            self.log(f"{result.job.key}: interrupted by the stop; `research resume` continues it")
            return
        if self.scoring_ran_out_of_time(result):  # trained to the end, but the job ended before the lab's verdict
            self.rescored.add(result.job.key)
            why = (f"the lab's scoring of it passed the run's time limit ({result.job.timeout_s or 0:.0f} s, e.g. on a loaded "
                   "machine)" if result.status == "timeout" else f"its job ended (exit {result.returncode}) before the lab's "
                   "verdict: killed from outside, or its scoring worker was")
            self.ledger.add_note(f"run {result.job.key} trained to the end, but {why}: scoring it again from its saved model, once",
                                 author="campaign", experiment_id=exp_id)
            self.log(f"{result.job.key}: not scored ({result.status}); scoring it again")
            self.save_state()
            return  # not registered: the seed is pending again, and job() resumes it as a scoring-only job
        if self.killed_once(result):  # killed from outside before it could finish: resumed from its checkpoint, once
            self.retried.add(result.job.key)
            self.ledger.add_note(f"run {result.job.key} was killed (exit {result.returncode}) before it finished: resuming it from "
                                 "its last checkpoint, once", author="campaign", experiment_id=exp_id)
            self.log(f"{result.job.key}: killed; resuming it")
            self.save_state()
            return  # not registered: the seed is pending again
        if result.summary is not None and result.status in ("stopped", "timeout"):  # the lab stopped it: no preemption
            why = ("early stopping: its campaign stopped it, the experiment having fallen behind" if result.status == "stopped"
                   else f"its campaign's time limit per run ({result.job.timeout_s or 0:.0f} s)")
            write_json_atomic(result.job.out_dir / "summary.json", {**result.summary, "stopped_by": why})
        if result.summary is not None:
            self.register(exp_id, result.job.out_dir)
        if result.status == "rejected":
            self.on_rejected(exp_id, result)
            self.save_state()
            return
        if result.summary is None or result.status in ("crashed", "stopped", "timeout"):
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

    def killed_once(self, result: JobResult) -> bool:
        """A run that ended with no summary, killed by a signal we did not send (the OOM killer, a person, a node going
        down): one more try from its checkpoint. Without it a killed baseline seed 0 was never run again, and every
        screen against it was discarded for want of a reference."""
        code = result.returncode
        return (result.summary is None and result.status == "crashed" and (code < 0 or code > 128)
                and result.job.key not in self.retried)

    def scoring_ran_out_of_time(self, result: JobResult) -> bool:
        """A run whose job ended after its trainer finished (its own summary says ok and its model
        is saved) but before the lab scored it (a timeout, or the job or its scoring worker killed
        from outside): worth one more scoring-only job, never more (a model that kills its own
        worker when it fears a probe gets one more draw of probes, not endless ones)."""
        key = result.job.key
        return (result.status in ("timeout", "crashed") and key not in self.rescored and (result.summary or {}).get("status") == "ok"
                and (result.job.out_dir / "model.pt").is_file() and not self.score_path(key).exists())

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
        # the lab's own reason only: summary.json is the run's to write, and the reason reaches the next prompt
        reason = verdict.get("reason") if isinstance(verdict.get("reason"), str) else (
            "its summary.json says rejected, without a verdict of the lab")
        exp = self.state.experiment(exp_id)
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
        last = tail[-1].strip()[:300] if tail else "it printed nothing"  # the error: the line logs and pages show
        self.ledger.add_note(f"run {result.job.key} ended {result.status} (exit {result.returncode}): {last}\n" + "\n".join(tail),
                             author="campaign", experiment_id=exp_id)
        if result.summary is None:
            self.failed_jobs.add(result.job.key)

    def maybe_decide(self, exp_id: str, stopped_early: bool = False) -> None:
        """Apply what the decision rules (research/decide.py) say about the experiment now."""
        self.apply(exp_id, decide.decide(self.state, exp_id, stopped_early, self.rung_stops.get(exp_id) if stopped_early else None))

    def apply(self, exp_id: str, actions: list) -> None:
        """Carry out the decision rules' actions on the ledger, in order."""
        merged = ""
        for a in actions:
            exp = self.state.experiment(exp_id)
            if isinstance(a, decide.Decide):
                self.record(exp, a.verdict, a.rationale.replace(decide.MERGED, merged), a.evidence, a.told, a.cmp, a.effect, a.by,
                            a.observe, a.log)
            elif isinstance(a, decide.SetPhase):
                self.ledger.set_experiment_status(exp_id, a.phase, planned_seeds=a.planned_seeds)
                if a.log:
                    self.log(f"{exp_id}: {a.log}")
            elif isinstance(a, decide.StartTransfer):
                self.start_transfer(exp, a.cmp)
            elif isinstance(a, decide.FinishTransfer):
                self.apply(a.candidate_id, decide.finish_transfer(self.state, a.candidate_id))
            elif isinstance(a, decide.RecordClaims):
                self.maybe_record_claims()
            elif isinstance(a, decide.EndCampaign):  # the loop sees "stopping" at its next pass and closes as stopped
                self.ledger.add_note(a.reason, author="campaign", campaign_id=self.id)
                self.ledger.set_campaign_status(self.id, "stopping")
            elif isinstance(a, decide.Combine):
                spec = decide.combination(self.state, a.adopted, a.other, a.parent)
                combo = self.ledger.add_experiment(campaign_id=self.id, **spec) if spec else None
                merged = f"; their merge is queued as {combo}" if combo else ""
                if combo and a.log:
                    self.log(f"{a.adopted['id']} and {a.other['id']}: merge queued as {combo}")

    # ---- the screen policy: adopt on screened evidence, combine, confirm (research/policy.py) ------------

    def confirmation_seeds(self) -> list[int]:
        return self.state.confirmation_seeds()

    def missing_baseline_seeds(self) -> list[int]:
        return self.state.missing_baseline_seeds()

    def confirmation_cost(self, also: dict | None = None) -> int:
        return self.state.confirmation_cost(also)

    def confirmation(self) -> list[dict]:
        return self.state.confirmation()

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
        n_abl = min(len(groups), room)
        self.log(f"confirmation phase: the final recipe{f' and {n_abl} ablation(s)' if n_abl else ''} on seeds {', '.join(map(str, seeds))}")

    def maybe_record_claims(self) -> None:
        """Record the confirmation phase's claims once all of it is measured (decide.claims);
        then hand back the final recipe without the groups whose ablation scored better."""
        out = decide.claims(self.state)
        if out is None:
            return
        for e, d in out.decisions:
            self.record(e, d.verdict, d.rationale, d.evidence, None, d.cmp, None, d.by, observe=False)
        noise = next((n for _, d in out.decisions if (n := d.evidence.get("paired_noise"))), None)
        if noise and (said := describe_paired_noise(noise)):
            self.log(said[0].upper() + said[1:])
        if out.drop:
            self.hand_back_without(out.final, out.drop, out.effects)

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
            self.record(exp, "inconclusive", f"{cmp.summary()}; no run budget left for the transfer check "
                        f"({2 * self.cfg.seeds} runs)", {"comparison": cmp.to_dict()}, cmp.mean_candidate, cmp)
            return
        inc, _ = self.incumbent()
        prediction = self.predict_transfer(inc, cmp)
        for role, source in (("incumbent", inc), ("candidate", exp)):
            recipe = self.at_rung(self.recipe_of(source), inc)
            self.ledger.add_experiment(f"transfer check of {exp['id']}: the {role} at the larger rung", kind=exp["kind"],
                                       proposer="campaign", proposer_type="strategy", campaign_id=self.id,
                                       rationale=f"does the gain ({cmp.effect:+.4f}) hold at {', '.join(self.cfg.transfer)}?",
                                       parent_recipe=self.recipe_of(source).to_dict(),
                                       change={"transfer_of": exp["id"], "role": role, "small_scale": cmp.to_dict(),
                                               "recipe": recipe.to_dict(), "patch": (source["change"] or {}).get("patch"),
                                               "prediction": prediction},
                                       status=Phase.RUNNING, planned_seeds=self.cfg.seeds, role=Role.TRANSFER)
        self.ledger.set_experiment_status(exp["id"], Phase.TRANSFER)
        self.log(f"{exp['id']}: {cmp.summary()} — checking transfer at {', '.join(self.cfg.transfer)}")
        if prediction and prediction.get("effect") is not None:
            ci = prediction["effect_ci"]
            self.log(f"{exp['id']}: ladder {prediction['ladder']} predicts {prediction['effect']:+.4f} at the larger rung"
                     + (f" [{ci[0]:+.4f}, {ci[1]:+.4f}]" if ci else ""))

    def at_rung(self, recipe: Recipe, inc: dict) -> Recipe:
        """`recipe` at the transfer rung, budgeted as the campaign's runs are (config.at_rung)."""
        equal = self.cfg.equal_flops() and bool(self.base.budget.flops)  # (a campaign started before: its base has tokens)
        return at_rung(recipe, self.cfg.transfer, self.recipe_of(inc), self.base, equal)

    def predict_transfer(self, inc: dict, cmp) -> dict | None:
        """The ladder's prediction of a transfer check (None without --transfer-ladder); a ladder
        that cannot be fitted is a note, and the check is measured all the same."""
        if not self.cfg.transfer_ladder:
            return None
        from .transfer import TransferPredictor

        try:
            if self._predictor is None:
                self._predictor = TransferPredictor(self._ledger, self.cfg.transfer_ladder)
            return self._predictor.predict(self.recipe_of(inc), self.at_rung(self.recipe_of(inc), inc), cmp.mean_incumbent,
                                           cmp.effect, (cmp.ci_low, cmp.ci_high))
        except (UserError, ValueError, FloatingPointError) as e:
            self.ledger.add_note(f"no transfer prediction from ladder {self.cfg.transfer_ladder}: {e}", author="campaign", campaign_id=self.id)
            return None

    def record(self, exp, verdict, rationale, evidence, told, cmp=None, effect=None, by=None, observe=True, log="") -> None:
        """A verdict on the record, by the campaign's rule (or `by`); the strategy that proposed
        the experiment learns `told` (None: that it failed)."""
        if by is None:
            by = {"screen": f"screen, adopt at P >= {self.cfg.adopt_p:g}", "paired": f"paired t-test, alpha={self.cfg.alpha}",
                  "welch": f"Welch, alpha={self.cfg.alpha}", "greedy": "single seed"}[self.cfg.decision]
        self.ledger.record_decision(verdict, decided_by=f"{DECIDER} ({by})" if by else DECIDER, decider_type="strategy",
                                    experiment_id=exp["id"], effect=cmp.effect if cmp else effect,
                                    ci_low=cmp.ci_low if cmp and math.isfinite(cmp.ci_low) else None,
                                    ci_high=cmp.ci_high if cmp and math.isfinite(cmp.ci_high) else None,
                                    rationale=rationale, evidence=evidence)
        self.ledger.set_experiment_status(exp["id"], Phase.DECIDED)
        hyp = exp["hypothesis"] if len(exp["hypothesis"]) <= 80 else exp["hypothesis"][:79].rstrip() + "…"
        self.log(log or f"{exp['id']} ({hyp}): {verdict} — {rationale}")
        if observe and self.proposals.get(exp["id"]) is not None:
            self.strategy.observe(self.proposals[exp["id"]], told)

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
            exp = self.state.experiment(exp_id)
            if planned_seeds(exp) != 1 or exp["role"] in (Role.CONFIRMATION, Role.ABLATION, Role.TRANSFER) \
                    or int(seed) != self.state.screen_seed(exp):
                continue
            value = early_stop.eval_curve(job.out_dir, frac).get(1)
            parent = self.state.parent_of(exp)
            if value is None or parent is None or parent["id"] == exp_id or 1 >= round(1 / frac):
                continue
            parent_value = early_stop.eval_curve(self.run_dir(parent["id"], int(seed)), frac).get(1)
            if parent_value is None or not policy.stop_at_rung(value - parent_value, self.cfg.rung_stop):
                continue
            parent_told = self.state.told_value(parent)
            self.rung_stops[exp_id] = {"value": value, "parent_value": parent_value, "diff": value - parent_value, "rung": frac,
                                       "seed": int(seed), "told": parent_told + value - parent_value if parent_told is not None else None}
            self.log(f"{job.key}: stopped at the first rung ({value:.4f} vs its parent's {parent_value:.4f})")
            self.runner.stop(job.key)

    # ---- c. scheduling -----------------------------------------------------------------------------------

    def budget_spent(self, extra: float = 0) -> bool:
        return self.state.budget_spent(extra)

    def missing_incumbent_seeds(self, n: int) -> int:
        return self.state.missing_incumbent_seeds(n)

    def next_job(self) -> Job | None:
        """The next run to start (research/schedule.py decides), or None with `idle_reason`
        saying why none can."""
        asked = 0
        while True:
            may_ask = asked < 3 and not self.strategy_disabled and self.quiet_at != self.num_decisions()
            step = schedule.next_step(self.state, may_ask, self.strategy.name)
            if isinstance(step, schedule.StartConfirmation):
                self.start_confirmation()
                if self.confirmation():
                    continue
                step = step.otherwise
            if isinstance(step, schedule.Run):
                exp = self.state.experiment(step.exp_id)
                if step.screen:
                    self.ledger.set_experiment_status(exp["id"], Phase.RUNNING, planned_seeds=1)
                return self.job(exp, step.seed)
            if isinstance(step, schedule.AskStrategy):  # a round whose proposals were all rejected: ask again, 3 rounds at most
                asked += 1
                if not self.ask_strategy():
                    asked = 3
                continue
            if isinstance(step, schedule.RecordClaims):
                self.maybe_record_claims()
                step = schedule.Idle("confirmation phase")
            if isinstance(step, schedule.Unaffordable):
                if step.exp_id not in self.unaffordable:
                    self.unaffordable.add(step.exp_id)
                    self.ledger.add_note(f"not run: the run budget has no room to screen it and, if adopted, confirm it "
                                         f"({step.cost} runs); `research resume --budget-runs` to run it",
                                         author="campaign", experiment_id=step.exp_id)
                step = schedule.Idle("run budget spent: no room to screen a proposal and confirm it")
            self.idle_reason = step.reason
            return None

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
        if self.runner.adopt(f"{exp['id']}-s{seed}"):  # an earlier loop's job, still queued or running (SLURM): followed as it is
            return Job(f"{exp['id']}-s{seed}", str(recipe_path), run_dir, [f"seed={self.base.seed + seed}"], timeout_s=timeout,
                       pythonpath=pythonpath, env={"PRETRAINLAB_NO_LEDGER": "1"}, resume=run_dir.exists(),
                       score_path=self.score_path(f"{exp['id']}-s{seed}"), score_data=self.score_data())
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
        work = lambda r: budget_tokens(r) * estimate_flops_per_token(r)  # the FLOPs it trains (the tighter of its budgets)
        return 5 * max(took) * max(1.0, work(recipe) / work(self.base)) + 120

    def ask_strategy(self) -> list[dict]:
        """New experiments from the strategy (rejected ones included, already recorded).
        While the baseline still runs, proposals are changes to it (value not yet known)."""
        inc, inc_values = self.incumbent()
        incumbent = self.recipe_of(inc or self.baseline())
        sweep = self.sweep_proposals(incumbent, self.runner.free_slots())
        if sweep:
            ids = [self.add_proposal(p, incumbent, extra={"sweep": point}) for p, point in sweep]
            return [self.state.experiment(i) for i in ids]
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
        failures = getattr(self.strategy, "failed", [])[self.recorded_failures:]
        self.recorded_failures += len(failures)
        for failure in failures[:MAX_FAILURE_NOTES]:
            self.ledger.add_note(f"failed proposal from {self.strategy.name} ({failure.get('model_id')}): tool {failure['tool']}: "
                                 f"{failure['error'][:4000]}\ninput: {json.dumps(failure['input'], default=str)[:2000]}",
                                 author=self.strategy.name, campaign_id=self.id)
        if len(failures) > MAX_FAILURE_NOTES:
            self.ledger.add_note(f"{len(failures) - MAX_FAILURE_NOTES:,} more failed tool calls from {self.strategy.name} in this round "
                                 "(not noted one by one)", author=self.strategy.name, campaign_id=self.id)
        ids = [self.add_proposal(p, incumbent) for p in proposals]
        return [self.state.experiment(i) for i in ids]

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
            change["screen_seed"] = self.state.reference_seed(parent) if parent else policy.SCREEN_SEED
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
                check_growth(recipe, self.base)
                check_scored_tokens(recipe, self.base)
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
                                        rationale=f"rejected before running: {error}", evidence={"rejected": error})
            self.strategy.observe(p, None)
            self.log(f"rejected proposal: {error}")
        return exp_id

    def num_decisions(self) -> int:
        return len(self.state.decisions)

    def history(self) -> list[dict]:
        decisions = {d["experiment_id"]: d for d in self.state.decisions}
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
    parts = "; ".join(f"{v:.0f} s {k}" for k, v in sorted(c["idle_s"].items(), key=lambda kv: -kv[1]) if v >= 0.5) or "none"
    until_last = "n/a" if c["utilisation_until_last_start"] is None else f"{c['utilisation_until_last_start']:.1%}"
    return (f"slot utilisation {c['utilisation_queued']:.1%} of {c['slots']} slot(s) while work was queued; "
            f"{until_last} until the last run started, {c['utilisation']:.1%} including the final drain; "
            f"idle slot-time: {parts} (this loop: {c['seconds']:.0f} s)")


def closing_note(c: dict) -> str:
    """The note a loop leaves when it closes (the research log shows it)."""
    return f"closed {c['status']}: {slots_text(c)}"


def new_workdir(root: Path, campaign_id: str) -> Path:
    path = root / "campaigns" / campaign_id
    path.mkdir(parents=True, exist_ok=True)
    return path

