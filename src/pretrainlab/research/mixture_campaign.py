"""A mixture campaign: small proxy runs on sampled domain mixtures, a regression from the
weights to the target metric, the mixture it predicts best, and that recommendation
confirmed against the natural and the uniform mixtures on fresh seeds (and, optionally, at
a larger rung). The math is research/mixture.py; this module runs it.

    pretrainlab research mixture --recipe tiny-cpu --proxies 24 --run-budget 4e4tok --confirm-seeds 3 \\
        [--target code,docs] [--transfer model.n_layer=6 ...] [--parallel 2]
    pretrainlab research resume CAMPAIGN       # after a crash or `research stop`: finished runs kept, none repeated
    pretrainlab report CAMPAIGN -o mixture.html

`MixtureCampaign.run()` reads top to bottom:
  1. plan (once): the proxies' mixtures (the natural and the uniform one, then Dirichlet
     draws), each an experiment run once on seed 0 (the same seed for all: common random
     numbers, so seed noise shifts every proxy alike); the natural and uniform references
     on the confirmation seeds 1..N, and at the transfer rung when one is given
  2. the loop: every slot busy, proxies first, then the references (they need no fit, so
     they fill the slots the last proxies leave free). Once every proxy is in: fit,
     choose the model by leave-one-out error, search, bootstrap -> the recommended
     mixture, run on the confirmation seeds (and at the transfer rung)
  3. claims: the recommendation against each reference, by the pooled paired t-test over
     the confirmation seeds (research/stats.py), on the target and on each domain
  4. close
Who proposed what: the proxies and the recommendation are proposed by "mixture design"
(this module, a strategy, with the fit as its rationale and in the experiment's change);
the references by the campaign; the claims are decided by the lab's statistics. Every
run is trained in the sandbox and scored by the lab (runners/job.py), like any campaign's.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..config import Recipe, apply_overrides
from ..errors import UserError
from ..ledger.rundir import derived_run_id, read_run_dir
from ..ledger.store import Phase, Role
from ..recipes import estimate_params
from ..runners import Job, JobResult, Runner, make_runner
from ..rundir import read_json, read_summary
from ..train.rundir_lock import lock_holder
from . import mixture
from .campaign import DECIDER
from .config import SLURM_FIELDS, MixtureConfig  # noqa: F401 (MixtureConfig: imported from here too)
from .stats import IMPROVEMENT, REGRESSION, pooled_paired

LEDGER_ROLES = {"proxy": Role.PROXY, "natural": Role.REFERENCE, "uniform": Role.REFERENCE, "recommended": Role.RECOMMENDED}  # arm -> ledger role

PROPOSER = "mixture design"  # proxies and the recommendation are attributed to it (a strategy)
KIND = "mixture"  # campaigns.config["kind"]: how `research status / resume` and `report` tell this campaign apart
RESUMABLE = ("parallel", "gpus", "runner", "ray_address", *SLURM_FIELDS, "run_memory", "run_disk")  # what `research resume` may change: its plan is fixed, its slots are not
PROXY_SEED = 0  # every proxy runs on this seed index; the confirmation uses 1..confirm_seeds
ROLES = ("natural", "uniform", "recommended")  # the confirmation's arms, at each scale


def corpus_domains(recipe: Recipe) -> dict[str, int]:
    """{domain: train tokens} of the recipe's corpus (the builtin one is prepared if missing)."""
    from ..data import Corpus
    from ..runners.job import corpus_path

    return Corpus.open(corpus_path(recipe), verify=False).domain_token_counts("train")


def plan(cfg: MixtureConfig, counts: dict[str, int]) -> dict:
    """What the campaign records before anything runs: domains, the natural mixture and the
    number of runs; a target or a proxy count that cannot work is a UserError here."""
    domains = list(counts)
    unknown = [d for d in cfg.target if d not in domains]
    if unknown:
        raise UserError(f"--target {','.join(cfg.target)}: {', '.join(unknown)} is not a domain of this corpus; "
                        f"its domains are {', '.join(domains)}")
    if len(domains) < 2:
        raise UserError(f"the corpus has one domain ({domains[0]}): a mixture needs at least two")
    if any(counts[d] <= 0 for d in domains):
        raise UserError(f"domain(s) {', '.join(d for d in domains if counts[d] <= 0)} have no train tokens: "
                        "prepare a corpus where every domain has data")
    need = len(domains) + 3
    if cfg.proxies < need:
        raise UserError(f"--proxies {cfg.proxies} is too few to fit {len(domains)} domains and judge the fit on held-out proxies: "
                        f"give at least {need}")
    natural = mixture.round_mixture(np.array([counts[d] for d in domains], float))
    planned = cfg.proxies + len(ROLES) * cfg.confirm_seeds * (2 if cfg.transfer else 1)
    return {"domains": domains, "natural": dict(zip(domains, natural.tolist())), "planned_runs": planned}


def start(cfg: MixtureConfig, name: str | None = None, db: str | None = None, echo: bool = True) -> str:
    from ..ledger import Ledger

    base = cfg.base_recipe()  # bad recipe / overrides / budget -> UserError now, before anything is recorded
    info = plan(cfg, corpus_domains(base))
    ledger = Ledger(db)
    goal = f"the mixture of {', '.join(info['domains'])} with the lowest {cfg.target_label()} per run budget {cfg.run_budget}"
    cid = ledger.create_campaign(name or f"{base.name} mixture", goal=goal,
                                 config={"kind": KIND, "mixture": asdict(cfg), "base_recipe": base.to_dict(), **info})
    _run(ledger, cid, cfg, echo)
    return cid


def resume(ledger, row: dict, echo: bool = True, author: str = "person", **changes) -> str:
    """Continue a mixture campaign (manage.resume hands it here) with changes to its slots
    (RESUMABLE): finished runs are kept, unfinished ones resumed from their checkpoints,
    nothing decided twice."""
    old = row["config"]["mixture"]
    cfg = MixtureConfig(**{**old, **changes})
    changed = {k: (old.get(k), v) for k, v in changes.items() if old.get(k) != v}
    if changed:
        ledger.set_campaign_config(row["id"], {**row["config"], "mixture": asdict(cfg)})
        ledger.add_note("resumed with " + ", ".join(f"{k} {a} -> {b}" for k, (a, b) in changed.items()), author=author, campaign_id=row["id"])
    ledger.set_campaign_status(row["id"], "running")
    _run(ledger, row["id"], cfg, echo)
    return row["id"]


def _run(ledger, campaign_id: str, cfg: MixtureConfig, echo: bool) -> None:
    from ..workspace import workspace

    workdir = workspace() / "runs" / "campaigns" / campaign_id
    workdir.mkdir(parents=True, exist_ok=True)
    runner = make_runner(cfg, workdir)
    if not runner.sandbox.active:
        ledger.add_note(f"experiment processes of this loop are NOT sandboxed: {runner.sandbox.reason}; they run with a scrubbed "
                        "environment, and the lab still scores every run itself", author="campaign", campaign_id=campaign_id)
    try:
        MixtureCampaign(ledger, campaign_id, runner, workdir, echo=echo).run()
    except BaseException:
        runner.shutdown()  # never leave orphaned training processes
        raise


class MixtureCampaign:
    """The loop (`run`), and the reads `summary` makes of a campaign's record (runner and
    workdir None: nothing is started)."""

    def __init__(self, ledger, campaign_id: str, runner: Runner | None = None, workdir: Path | None = None, echo: bool = True):
        self.ledger, self.id, self.runner, self.echo = ledger, campaign_id, runner, echo
        self.workdir = Path(workdir) if workdir is not None else None
        row = ledger.get_campaign(campaign_id)
        self.cfg = MixtureConfig(**row["config"]["mixture"])
        self.base = Recipe.from_dict(row["config"]["base_recipe"])
        self.domains: list[str] = row["config"]["domains"]
        self.natural = np.array([row["config"]["natural"][d] for d in self.domains])
        self.failed_jobs: set[str] = set()  # job keys that ended without a result
        self.idle_reason = ""
        self.fit_failed = False
        self.transfer = dict(o.split("=", 1) for o in self.cfg.transfer)

    # ---- bookkeeping from the ledger ----------------------------------------------------------------

    def experiments(self, role: str | None = None, scale: str | None = None) -> list[dict]:
        out = [e for e in self.ledger.list_experiments(self.id) if e["change"]]
        return [e for e in out if (role is None or e["change"]["role"] == role) and (scale is None or e["change"]["scale"] == scale)]

    def arm(self, role: str, scale: str = "campaign") -> dict | None:
        return next(iter(self.experiments(role, scale)), None)

    def scales(self) -> list[str]:
        return ["campaign", "transfer"] if self.cfg.transfer else ["campaign"]

    def confirm_seeds(self) -> list[int]:
        return list(range(PROXY_SEED + 1, PROXY_SEED + 1 + self.cfg.confirm_seeds))

    def run_dir(self, exp_id: str, seed: int) -> Path:
        return self.workdir / f"{exp_id}-s{seed}"

    def score_path(self, key: str) -> Path:
        """The lab's score of run `key`, outside anything an experiment process can see."""
        return self.workdir / "scores" / f"{key}.json"

    def registered(self, exp_id: str) -> dict[int, dict]:
        rows = self.ledger.list_runs(experiment=exp_id, columns=("run_id", "seed", "status", "val_bpb", "run_dir", "seconds"))
        return {r["seed"] - self.base.seed: r for r in rows}

    def values(self, exp: dict, domain: str | None = None) -> dict[int, float]:
        """{seed: target value} (or one domain's val_bpb) of an experiment's registered runs,
        from the lab's verdicts (scores/ beside the run directories)."""
        out = {}
        for seed, row in self.registered(exp["id"]).items():
            verdict = read_json(Path(row["run_dir"]).parent / "scores" / f"{exp['id']}-s{seed}.json") or {}
            v = mixture.target_value(verdict, [domain] if domain else self.cfg.target)
            if v is not None:
                out[seed] = v
        return out

    def done(self, exp: dict) -> bool:
        have = self.registered(exp["id"])
        return all(s in have or f"{exp['id']}-s{s}" in self.failed_jobs for s in exp["change"]["seeds"])

    def log(self, msg: str) -> None:
        if self.echo:
            print(f"[mixture {self.id}] {msg}", file=sys.stderr, flush=True)

    # ---- the spine -------------------------------------------------------------------------------------

    def run(self, poll_s: float = 0.5) -> None:
        # 1. plan (once): the proxies, then the references
        if not self.experiments():
            self.plan()
        self.collect_finished_on_disk()  # resume: runs that finished while no loop was watching
        # 2. the loop
        while True:
            if self.ledger.get_campaign(self.id)["status"] == "stopping":
                self.log("stop requested")
                break
            for result in self.runner.poll():
                self.on_finished(result)
            for event in self.runner.take_events():  # a run requeued after its node was lost, a node excluded
                self.ledger.add_note(event.text, author="runner", campaign_id=self.id)
            if self.arm("recommended") is None and not self.fit_failed and all(self.done(e) for e in self.experiments("proxy")):
                self.recommend()
            while self.runner.free_slots():
                job = self.next_job()
                if job is None:
                    self.runner.idle_because(self.idle_reason)
                    break
                self.runner.submit(job)
                self.log(f"{job.key}: started" + (" (resuming)" if job.resume else ""))
            self.runner.flush()  # what the pass started goes out together (SLURM: replicates in one job array)
            if not self.runner.busy():
                break
            self.runner.sleep(poll_s)
        # 3. claims, 4. close
        self.runner.shutdown()
        for result in self.runner.poll():
            self.on_finished(result)
        stopped = self.ledger.get_campaign(self.id)["status"] == "stopping"
        if not stopped:
            for scale in self.scales():
                self.record_claims(scale)
        status = "stopped" if stopped else "failed" if self.arm("recommended") is None else "done"
        self.ledger.set_campaign_status(self.id, status)
        runs = len(self.ledger.list_runs(campaign=self.id, limit=0, columns=("run_id",)))
        self.ledger.add_note(f"closed {status}: slot utilisation {self.runner.utilisation():.1%} of {self.runner.num_slots} slot(s); "
                             f"{runs} runs registered", author="campaign", campaign_id=self.id)
        self.log(f"closed {status}")

    def plan(self) -> None:
        rng = np.random.default_rng(self.cfg.design_seed)
        X = mixture.sample_mixtures(self.natural, self.cfg.proxies, rng, tuple(self.cfg.concentration))
        for i, w in enumerate(X):
            what = "the natural mixture" if i == 0 else "the uniform mixture" if i == 1 else "a sampled mixture"
            self.add_arm("proxy", "campaign", w, [PROXY_SEED], f"proxy {i + 1}/{len(X)}: {self.describe(w)}", PROPOSER,
                         f"{what}, trained once on seed {PROXY_SEED} (as every proxy) to fit the regression from weights to "
                         f"{self.cfg.target_label()}")
        uniform = np.full(len(self.domains), 1.0 / len(self.domains))
        for scale in self.scales():
            for role, w in (("natural", self.natural), ("uniform", mixture.round_mixture(uniform))):
                where = f" at the transfer rung ({', '.join(self.cfg.transfer)})" if scale == "transfer" else ""
                self.add_arm(role, scale, w, self.confirm_seeds(), f"reference: the {role} mixture{where}", "campaign",
                             f"what the recommendation is confirmed against, on seeds {self.confirm_seeds()} (no proxy used them)")
        self.log(f"planned {self.cfg.proxies} proxies and the references on seeds {self.confirm_seeds()}")

    def recipe_for(self, weights: np.ndarray, scale: str) -> Recipe:
        recipe = apply_overrides(self.base, [f"data.weights={json.dumps(self.named(weights))}"])
        return apply_overrides(recipe, self.cfg.transfer) if scale == "transfer" else recipe

    def add_arm(self, role: str, scale: str, weights: np.ndarray, seeds: list[int], hypothesis: str, proposer: str, rationale: str,
                extra: dict | None = None) -> str:
        recipe = self.recipe_for(weights, scale)
        change = {"role": role, "scale": scale, "weights": self.named(weights), "seeds": seeds, "recipe": recipe.to_dict(),
                  "diff": {"data.weights": [None, self.named(weights)],
                           **({k: [None, v] for k, v in self.transfer.items()} if scale == "transfer" else {})}, **(extra or {})}
        return self.ledger.add_experiment(hypothesis, kind="data", proposer=proposer, proposer_type="strategy", rationale=rationale,
                                          campaign_id=self.id, parent_recipe=self.base.to_dict(), change=change, status=Phase.RUNNING,
                                          planned_seeds=len(seeds), role=LEDGER_ROLES[role])

    def named(self, w: np.ndarray) -> dict[str, float]:
        return {d: round(float(v), 4) for d, v in zip(self.domains, w)}

    def describe(self, w) -> str:
        return ", ".join(f"{d} {v:.2f}" for d, v in zip(self.domains, w))

    # ---- 2. the fit ---------------------------------------------------------------------------------

    def recommend(self) -> None:
        """Fit the proxies, choose the model, search, bootstrap; record the recommendation as
        the mixture design's experiment, on the confirmation seeds (and the transfer rung)."""
        rows = [(e, self.values(e).get(PROXY_SEED)) for e in self.experiments("proxy")]
        rows = [(e, v) for e, v in rows if v is not None]
        need = len(self.domains) + 2
        if len(rows) < need:
            self.fit_failed = True
            self.ledger.add_note(f"no recommendation: {len(rows)} of {self.cfg.proxies} proxies have a score, the fit needs {need}; "
                                 "see the proxies' notes for why runs failed", author=PROPOSER, campaign_id=self.id)
            self.log(f"too few proxies scored ({len(rows)} < {need}): no fit")
            return
        X = np.array([[e["change"]["weights"][d] for d in self.domains] for e, _ in rows])
        y = np.array([v for _, v in rows])
        rng = np.random.default_rng([self.cfg.design_seed, 1])  # a stream of its own, apart from the proxies' draws
        t0 = time.time()
        d = mixture.design(X, y, self.natural, rng, concentration=tuple(self.cfg.concentration), pool_size=self.cfg.pool_size,
                           top=self.cfg.top, num_resamples=self.cfg.num_resamples)
        record = {**d.to_dict(self.domains), "proxies": [e["id"] for e, _ in rows], "proxy_values": y.tolist(),
                  "target": self.cfg.target_label(), "seconds": round(time.time() - t0, 2)}
        c = d.chosen
        spread = ", ".join(f"{name} {w:.2f} [{lo:.2f}, {hi:.2f}]"
                           for name, w, lo, hi in zip(self.domains, d.recommended, d.weights_low, d.weights_high))
        rationale = (f"{c.spec.label} chosen by leave-one-out RMSE {c.loo_rmse:.4f} (Spearman {c.loo_spearman:.2f}) among "
                     f"{len(d.candidates)} candidates, fitted on {len(y)} proxies; the mean of the {self.cfg.top} best-predicted of "
                     f"{d.pool_searched} sampled mixtures near the proxies. Predicted {self.cfg.target_label()} "
                     f"{d.predicted['recommended']:.4f} "
                     f"(95% bootstrap {d.predicted_low:.4f} .. {d.predicted_high:.4f}) vs natural {d.predicted['natural']:.4f} and "
                     f"uniform {d.predicted['uniform']:.4f}; shares with 95% bootstrap intervals over {d.num_resamples} resamples of the "
                     f"proxies: {spread}")
        for scale in self.scales():
            where = f" at the transfer rung ({', '.join(self.cfg.transfer)})" if scale == "transfer" else ""
            self.add_arm("recommended", scale, d.recommended, self.confirm_seeds(),
                         f"the recommended mixture{where}: {self.describe(d.recommended)}", PROPOSER, rationale,
                         extra={"design": record} if scale == "campaign" else None)
        self.log(f"recommended {self.describe(d.recommended)} ({c.spec.label}, LOO RMSE {c.loo_rmse:.4f})")

    # ---- 3. claims ----------------------------------------------------------------------------------

    def record_claims(self, scale: str) -> None:
        """The recommendation against each reference at one scale: pooled paired t-tests over
        the confirmation seeds, on the target and (in the evidence) on each domain."""
        arms = {role: self.arm(role, scale) for role in ROLES}
        rec = arms["recommended"]
        if rec is None or rec["status"] == Phase.DECIDED or not all(self.done(e) for e in arms.values()):
            return
        runs = {role: {s: v for s, v in self.values(e).items() if s in self.confirm_seeds()} for role, e in arms.items()}
        pairs = {ref: (ref, "recommended") for ref in ("natural", "uniform")}
        results = pooled_paired(runs, pairs, alpha=self.cfg.alpha)
        per_domain = {dom: pooled_paired({role: {s: v for s, v in self.values(e, dom).items() if s in self.confirm_seeds()}
                                          for role, e in arms.items()}, pairs, alpha=self.cfg.alpha) for dom in self.domains}
        predicted = ((rec["change"].get("design") or {}).get("predicted") or {}) if scale == "campaign" else {}
        where = "at the campaign's scale" if scale == "campaign" else f"at the transfer rung ({', '.join(self.cfg.transfer)})"
        for ref in pairs:
            cmp = results.get(ref)
            what = f"the recommended mixture lowers {self.cfg.target_label()} against the {ref} mixture {where}"
            if cmp is None:
                verdict, why = "inconclusive", f"claim not testable: fewer than two seeds where every arm has a score ({what})"
            else:
                verdict = {IMPROVEMENT: "keep", REGRESSION: "discard"}.get(cmp.verdict, "inconclusive")
                why = f"claim: {what} — {cmp.summary()}, noise pooled over the three arms' runs"
            evidence = {"stage": "claim", "against": ref, "scale": scale, "comparison": cmp.to_dict() if cmp else None,
                        "domains": {dom: r[ref].to_dict() for dom, r in per_domain.items() if ref in r},
                        "runs": {role: {str(s): v for s, v in values.items()} for role, values in runs.items()},
                        "predicted_effect": predicted["recommended"] - predicted[ref] if predicted else None}
            ok = cmp is not None
            self.ledger.record_decision(verdict, decided_by=f"{DECIDER} (pooled paired t-test, alpha={self.cfg.alpha})",
                                        decider_type="strategy", experiment_id=rec["id"], effect=cmp.effect if ok else None,
                                        ci_low=cmp.ci_low if ok and math.isfinite(cmp.ci_low) else None,
                                        ci_high=cmp.ci_high if ok and math.isfinite(cmp.ci_high) else None, rationale=why, evidence=evidence)
            self.log(f"{rec['id']} vs {ref} ({scale}): {verdict} — {why}")
        self.ledger.set_experiment_status(rec["id"], Phase.DECIDED)

    # ---- runs -----------------------------------------------------------------------------------------

    def next_job(self) -> Job | None:
        """The next run to start in plan order (proxies, references, the recommendation), or None."""
        running = {j.key for j in self.runner.running()}
        for exp in self.experiments():
            have = self.registered(exp["id"])
            for seed in exp["change"]["seeds"]:
                key = f"{exp['id']}-s{seed}"
                if key not in running and seed not in have and key not in self.failed_jobs:
                    return self.job(exp, seed)
        self.idle_reason = "waiting for the last proxies before the fit" if self.arm("recommended") is None else "nothing left to run"
        return None

    def job(self, exp: dict, seed: int) -> Job:
        recipe = Recipe.from_dict(exp["change"]["recipe"])
        recipe_path = self.workdir / "recipes" / f"{exp['id']}.json"
        recipe_path.parent.mkdir(parents=True, exist_ok=True)
        recipe_path.write_text(json.dumps(recipe.to_dict()))
        key = f"{exp['id']}-s{seed}"
        run_dir = self.run_dir(exp["id"], seed)
        resume = False
        if self.runner.adopt(key):  # an earlier loop's job, still queued or running (SLURM): followed as it is
            return Job(key, str(recipe_path), run_dir, [f"seed={self.base.seed + seed}"], timeout_s=self.run_timeout(recipe),
                       env={"PRETRAINLAB_NO_LEDGER": "1"}, resume=run_dir.exists(), score_path=self.score_path(key))
        if self.runner.release_orphan(key):
            self.log(f"{key}: stopped the run a previous loop left running; resuming it from its checkpoint")
        if run_dir.exists():  # left by a loop that died: continue it, or start over
            summary = read_summary(run_dir) or {}
            trained = summary.get("status") in ("ok", "timeout") and (run_dir / "model.pt").exists()  # only its scoring is left
            resume = bool(list((run_dir / "ckpt").glob("step_*"))) or trained  # step_N.pt, or step_N/ (sharded)
            holder = None if resume else lock_holder(run_dir)
            if holder is not None:
                raise UserError(f"run directory {run_dir} is in use by process {holder.pid} (group {holder.pgid}): stop it, "
                                f"then `pretrainlab research resume {self.id}`")
            if not resume:
                shutil.rmtree(run_dir)
        return Job(key, str(recipe_path), run_dir, [f"seed={self.base.seed + seed}"], timeout_s=self.run_timeout(recipe),
                   env={"PRETRAINLAB_NO_LEDGER": "1"}, resume=resume, score_path=self.score_path(key))

    def run_timeout(self, recipe: Recipe) -> float | None:
        """Seconds budgets: 3x + 120 s. Token budgets: 5x the slowest finished run, scaled by
        the run's work (tokens x params) relative to that run's, + 120 s; none before any finished."""
        if recipe.budget.seconds:
            return recipe.budget.seconds * 3 + 120
        work = lambda r: r.budget.flops or r.budget.tokens * estimate_params(r)
        slowest = None
        for e in self.experiments():
            for row in self.registered(e["id"]).values():
                if row["seconds"] and (slowest is None or row["seconds"] > slowest[0]):
                    slowest = (row["seconds"], Recipe.from_dict(e["change"]["recipe"]))
        if slowest is None:
            return None
        return 5 * slowest[0] * max(1.0, work(recipe) / work(slowest[1])) + 120

    def on_finished(self, result: JobResult) -> None:
        exp_id = result.job.key.rsplit("-s", 1)[0]
        self.ledger.record_attempts(self.id, result.job.key, result.job.out_dir, result.status,
                                    [a.to_row(result.job.queued_at) for a in result.attempts])
        if result.status == "shutdown":
            self.log(f"{result.job.key}: interrupted by the stop; `research resume` continues it")
            return
        if result.summary is not None:
            self.register(exp_id, result.job.out_dir)
        if result.summary is None or result.status in ("crashed", "rejected", "timeout"):
            tail = "\n".join(result.stderr_tail.strip().splitlines()[-12:])
            self.ledger.add_note(f"run {result.job.key} ended {result.status} (exit {result.returncode}):\n{tail}", author="campaign",
                                 experiment_id=exp_id)
            if result.summary is None:
                self.failed_jobs.add(result.job.key)
        value = mixture.target_value(read_json(self.score_path(result.job.key)) or {}, self.cfg.target)
        self.log(f"{result.job.key}: {result.status}" + (f" {self.cfg.target_label()} {value:.4f}" if value is not None else ""))
        exp = self.ledger.get_experiment(exp_id)
        if exp["status"] == Phase.RUNNING and self.done(exp):
            self.ledger.set_experiment_status(exp_id, Phase.MEASURED)

    def collect_finished_on_disk(self) -> None:
        for exp in self.experiments():
            have = self.registered(exp["id"])
            for seed in exp["change"]["seeds"]:
                run_dir = self.run_dir(exp["id"], seed)
                summary = read_summary(run_dir)
                if not summary or seed in have or summary.get("status") == "preempted":
                    continue
                if summary.get("status") in ("ok", "timeout") and not self.score_path(run_dir.name).exists():
                    continue  # trained but never scored: the runner scores it without training again
                self.register(exp["id"], run_dir)
            if exp["status"] == Phase.RUNNING and self.done(exp):
                self.ledger.set_experiment_status(exp["id"], Phase.MEASURED)

    def register(self, exp_id: str, run_dir: Path) -> None:
        """Record a run with the lab's score of it, never the figures the run wrote about itself."""
        try:
            record = read_run_dir(run_dir)
            run = record["run"]
        except (UserError, ValueError, TypeError, AttributeError) as e:
            self.ledger.add_note(f"run {run_dir.name}: its run directory could not be read ({e}); not registered", author="campaign",
                                 experiment_id=exp_id)
            self.failed_jobs.add(run_dir.name)
            return
        verdict = read_json(self.score_path(run_dir.name))
        run["seed"] = self.base.seed + int(run_dir.name.rsplit("-s", 1)[1])
        clash = self.ledger.get_run(run["run_id"]) if run["run_id"] else None
        if clash is not None and Path(clash["run_dir"]).resolve() != Path(run["run_dir"]).resolve():
            run["run_id"] = derived_run_id(Path(run["run_dir"]))
        if verdict is None:
            run["val_bpb"] = None
            run["status"] = "unscored" if run["status"] in ("ok", "timeout") else run["status"]
        else:
            run["status"] = "rejected" if verdict["status"] == "rejected" else (run["status"] if run["status"] in ("ok", "timeout") else "ok")
            run["val_bpb"] = ((verdict.get("splits") or {}).get("val") or {}).get("val_bpb") if verdict["status"] == "ok" else None
        row = self.ledger.upsert_run(record, campaign_id=self.id, experiment_id=exp_id)
        self.ledger.link_run(row["run_id"], campaign_id=self.id, experiment_id=exp_id)


# ---- reads ---------------------------------------------------------------------------------------------


def summary(ledger, campaign_id: str) -> dict:
    """A mixture campaign as data (`research status --json`, the report): the plan, the
    proxies with their measured and held-out predicted values, the fit, the recommendation
    with its uncertainty, each arm's runs, and the claims."""
    row = ledger.get_campaign(campaign_id)
    cfg = row["config"]
    campaign = MixtureCampaign(ledger, campaign_id)
    mcfg, domains = campaign.cfg, campaign.domains
    rec = campaign.arm("recommended")
    design = (rec["change"].get("design") if rec else None) or {}
    loo = dict(zip(design.get("proxies", []), design.get("loo_predictions", [])))
    proxies = [{"experiment": e["id"], "weights": e["change"]["weights"], "value": campaign.values(e).get(PROXY_SEED),
                "loo_prediction": loo.get(e["id"]), "status": e["status"]} for e in campaign.experiments("proxy")]
    arms = {}
    for scale in campaign.scales():
        for role in ROLES:
            e = campaign.arm(role, scale)
            if e is None:
                continue
            values = campaign.values(e)
            doms = {d: campaign.values(e, d) for d in domains}
            arms.setdefault(scale, {})[role] = {
                "experiment": e["id"], "weights": e["change"]["weights"], "values": {str(s): v for s, v in values.items()},
                "mean": float(np.mean(list(values.values()))) if values else None,
                "domains": {d: float(np.mean(list(v.values()))) if v else None for d, v in doms.items()},
                "predicted": (design.get("predicted") or {}).get(role) if scale == "campaign" else None}
    claims = []
    for d in ledger.list_decisions(campaign_id=campaign_id):
        ev = d.get("evidence") or {}
        if ev.get("stage") == "claim":
            claims.append({"against": ev["against"], "scale": ev["scale"], "verdict": d["verdict"], "effect": d["effect"],
                           "ci": [d["ci_low"], d["ci_high"]], "predicted_effect": ev.get("predicted_effect"), "rationale": d["rationale"],
                           "domains": {dom: {"effect": c["effect"], "ci": [c["ci_low"], c["ci_high"]], "verdict": c["verdict"]}
                                       for dom, c in (ev.get("domains") or {}).items()}})
    runs = ledger.list_runs(campaign=campaign_id, limit=0, columns=("run_id", "status"))
    return {"campaign": campaign_id, "name": row["name"], "status": row["status"], "kind": KIND, "target": mcfg.target_label(),
            "domains": domains, "natural": cfg["natural"], "config": cfg["mixture"], "runs": len(runs), "planned_runs": cfg["planned_runs"],
            "proxies": proxies, "design": {k: v for k, v in design.items() if k not in ("loo_predictions", "proxies", "proxy_values")} or None,
            "recommended": {"experiment": rec["id"], "weights": rec["change"]["weights"], "low": design.get("weights_low"),
                            "high": design.get("weights_high")} if rec else None,
            "arms": arms, "claims": claims,
            "notes": [n["text"] for n in ledger.list_notes(campaign_id=campaign_id)]}
