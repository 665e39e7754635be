"""A scaling ladder: model sizes x token budgets (a grid, for the parametric fit) or model
sizes x compute budgets (iso-FLOP, for the IsoFLOP minima too), trained as real runs in
parallel through the local runner, registered in the ledger under one campaign of kind
"scaling-ladder", then fitted.

A ladder trains the lab's own code (no experiment patch, nothing proposed), so its runs go
as `pretrainlab train` runs do: outside the sandbox, their val_bpb the trainer's final
evaluation on the decision split (`val`, eval.py, the same function the lab's scorer calls).
That saves each run the separate scoring process a campaign's untrusted runs need, about
half of a tiny run's wall time. A run whose final evaluation was not on `val` is left out.

    pretrainlab scaling ladder --recipe tiny-cpu --sizes model.n_embd=64,96,128 --tokens 25k,100k,400k
    pretrainlab scaling ladder --resume LADDER          # after a crash or Ctrl-C: finished runs kept
    pretrainlab scaling fit --ladder LADDER --plot fit.html

`run` reads top to bottom:
  1. plan the cells: every recipe resolved, a bad size or budget fails before anything is
     recorded
  2. record the ladder: a campaign whose config holds the settings and the cells
  3. train: every slot busy, smallest compute first; each finished run registered with the
     lab's score, one progress line per run
  4. fit (scaling.analyse) and record the fit in the campaign's config and a note; close
"""

from __future__ import annotations

import math
import re
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..config import ModelConfig, Recipe
from ..errors import UserError
from ..ledger.rundir import derived_run_id, read_run_dir
from ..recipes import embedding_params, estimate_params, resolve_recipe
from ..runners import Job, JobResult, LocalRunner
from ..scaling import analyse, parse_flops, points_from_runs
from ..train.rundir_lock import lock_holder
from .config import LadderConfig

KIND = "scaling-ladder"  # campaigns.config["kind"] of a ladder in the ledger
AUTHOR = "scaling ladder"  # who writes the ladder's notes
SI = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "b": 10**9, "t": 10**12}
ISO_FLOP_TOLERANCE = 0.25  # an iso-FLOP run's 6ND may miss its budget by this share (whole batches), no more


# ---- 1. the plan -------------------------------------------------------------------------------------
# A size is a set of recipe overrides; `sizes` lists KEY=V1,V2,... specs whose values are zipped
# (every spec needs the same number of values); a key without a section is a model field
# (n_embd -> model.n_embd). Each run's budget is budget.tokens, so the learning-rate schedule
# decays over the run's own token count, as Hoffmann et al. match the cosine cycle to each
# run's length (a run cut from a longer schedule understates what its tokens can do).
# Iso-FLOP ladders (--flops) train each size to D = C / (6N), in whole batches.


@dataclass
class Cell:
    """One run of the ladder (one seed of one size at one budget)."""
    key: str  # unique within the ladder; also the run directory's name
    size: str  # the size's overrides, as a label: "model.n_embd=96"
    overrides: list[str]  # base overrides + the size's + budget + seed
    params: int  # estimated N (the ladder's count: total or non-embedding)
    tokens: int  # budget.tokens
    seed: int
    flops_budget: float | None = None  # the iso-FLOP design's C for this cell


def parse_count(text: str, what: str = "--tokens") -> int:
    """50k, 1.5M, 2e5, 100000, 4e4tok -> an integer count."""
    m = re.fullmatch(r"\s*([0-9.]+(?:e[+-]?\d+)?)\s*([kmgbt]?)\s*(?:tok(?:ens)?)?\s*", str(text), re.IGNORECASE)
    if not m:
        raise UserError(f"{what} {text!r}: give a count such as 50k, 1.5M or 2e5")
    value = float(m.group(1)) * SI[m.group(2).lower()]
    if not math.isfinite(value):
        raise UserError(f"{what} {text!r}: too large for a count; give one such as 50k, 1.5M or 2e5")
    if value < 1:
        raise UserError(f"{what} {text!r}: must be at least 1")
    return int(round(value))


def split_list(values: list[str]) -> list[str]:
    """["50k,100k", "200k"] -> ["50k", "100k", "200k"] (flags may repeat or hold commas)."""
    return [v.strip() for item in values for v in str(item).split(",") if v.strip()]


def parse_sizes(specs: list[str]) -> list[list[str]]:
    """["model.n_layer=2,3,4", "n_embd=64,96,128"] -> [["model.n_layer=2", "model.n_embd=64"], ...]."""
    columns = []
    model_fields = set(ModelConfig.__dataclass_fields__)
    for spec in specs:
        key, eq, values = spec.partition("=")
        key = key.strip()
        if not eq or not key or not values.strip():
            raise UserError(f"--sizes {spec!r}: expected KEY=V1,V2,..., e.g. --sizes model.n_layer=2,3,4")
        if "." not in key and key in model_fields:
            key = f"model.{key}"
        columns.append([f"{key}={v.strip()}" for v in values.split(",") if v.strip()])
    if not columns:
        raise UserError("--sizes: give at least one KEY=V1,V2,... spec, e.g. model.n_embd=64,96,128")
    lengths = {len(c) for c in columns}
    if len(lengths) > 1:
        raise UserError(f"--sizes: the specs have {', '.join(str(len(c)) for c in columns)} values; zipped specs need the same number each")
    return [list(row) for row in zip(*columns)]


def count_params(recipe: Recipe, kind: str) -> int:
    total = estimate_params(recipe)
    return total if kind == "total" else total - embedding_params(recipe)


def plan(cfg: LadderConfig) -> list[Cell]:
    """The cells in run order (smallest compute first, so the first results arrive soon).
    Every recipe is resolved here: a bad key or value fails before anything runs."""
    sizes = parse_sizes(cfg.sizes)
    if len(sizes) < 3:
        raise UserError(f"--sizes gives {len(sizes)} model size(s) ({'; '.join(', '.join(s) for s in sizes)}): the law needs at "
                        "least 3 (e.g. model.n_embd=64,96,128)")
    base = resolve_recipe(cfg.recipe, cfg.overrides)
    resolved = []
    for size in sizes:
        recipe = resolve_recipe(cfg.recipe, [*cfg.overrides, *size])
        resolved.append((size, recipe, count_params(recipe, cfg.params)))
    seen: dict[int, str] = {}
    for size, _, n in resolved:
        if n in seen:
            raise UserError(f"--sizes: {', '.join(size)} and {seen[n]} have the same parameter count ({n:,}): vary n_layer or n_embd")
        seen[n] = ", ".join(size)
    if cfg.tokens:
        budgets = [(parse_count(t), None) for t in split_list(cfg.tokens)]
        if len({t for t, _ in budgets}) < 3:
            raise UserError(f"--tokens gives {len({t for t, _ in budgets})} distinct budget(s): the law needs at least 3 (e.g. 50k,100k,200k)")
    else:
        budgets = [(None, parse_flops(c)) for c in split_list(cfg.flops)]
        if len({c for _, c in budgets}) < 2:
            raise UserError(f"--flops gives {len({c for _, c in budgets})} distinct budget(s): an iso-FLOP ladder needs at least 2 "
                            "(e.g. 1e12,3e12), for 6 runs or more and the IsoFLOP exponent")
    cells = []
    for size, recipe, n in resolved:
        for tokens, c in budgets:
            if c is not None:  # iso-FLOP: D = C / (6N), whole batches, at least one
                batch = recipe.train.batch_tokens
                tokens = max(batch, int(round(c / (6 * n) / batch)) * batch)
                if abs(6 * n * tokens / c - 1) > ISO_FLOP_TOLERANCE:
                    raise UserError(f"--flops {c:g}: {', '.join(size)} would train {c / (6 * n):,.0f} tokens, {tokens:,} in whole "
                                    f"batches of {batch:,}, {6 * n * tokens / c:.0%} of the budget: raise the budget or lower "
                                    "train.batch_tokens (--set)")
            for seed in range(cfg.seeds):
                label = "-".join(o.split("=", 1)[0].rsplit(".", 1)[-1] + o.split("=", 1)[1] for o in size)
                key = f"{label}-{'C' + format(c, '.4g').replace('+', '') if c else 'T' + str(tokens)}-s{seed}"
                overrides = [*cfg.overrides, *size, f"budget.tokens={tokens}", "budget.seconds=0", "budget.flops=0",
                             f"seed={base.seed + seed}"]
                resolve_recipe(cfg.recipe, overrides)  # the budget and seed check too
                cells.append(Cell(key, ", ".join(size), overrides, n, tokens, seed, c))
    cells.sort(key=lambda cell: (cell.params * cell.tokens, cell.key))
    return cells


# ---- 2.-4. recording, training, fitting ----------------------------------------------------------------


def start(cfg: LadderConfig, name: str | None = None, db: str | None = None, echo: bool = True,
          fit_options: dict | None = None) -> tuple[str, dict | None]:
    """Plan, record and run a ladder; returns its id (the campaign's) and the fit (None when
    too few runs were scored for one)."""
    from ..ledger import Ledger

    cells = plan(cfg)  # 1. bad input -> UserError, nothing recorded
    with Ledger(db) as ledger:
        design = f"{len({c.size for c in cells})} sizes x " + (f"{len(cfg.tokens)} token budgets" if cfg.tokens else
                                                             f"{len(cfg.flops)} compute budgets (iso-FLOP)")
        lid = ledger.create_campaign(name or f"{cfg.recipe} scaling ladder", goal=f"scaling law of {cfg.recipe}: {design}, "
                                     f"{cfg.seeds} seed(s) per cell", config={"kind": KIND, "ladder": asdict(cfg),
                                                                             "cells": [asdict(c) for c in cells]})
        return lid, Ladder(ledger, lid, echo).run(fit_options or {})


def resume(ladder_id: str, db: str | None = None, echo: bool = True, parallel: int | None = None, gpus: list[int] | None = None,
           fit_options: dict | None = None) -> tuple[str, dict | None]:
    """Continue a ladder: runs already registered are kept, the others trained (again), on
    `parallel` slots and `gpus` when given (recorded in its config), else as before."""
    from ..ledger import Ledger

    with Ledger(db, create=False) as ledger:
        row = find_ladder(ledger, ladder_id)
        changes = {k: v for k, v in (("parallel", parallel), ("gpus", gpus)) if v is not None}
        if changes:
            settings = {**row["config"]["ladder"], **changes}
            LadderConfig(**settings)  # validates (e.g. --parallel against --gpus)
            ledger.set_campaign_config(row["id"], {**row["config"], "ladder": settings})
        ledger.set_campaign_status(row["id"], "running")
        return row["id"], Ladder(ledger, row["id"], echo).run(fit_options or {})


def find_ladder(ledger, ref: str) -> dict:
    """A ladder by id or name; anything else is a UserError listing the ladders there are."""
    campaigns = ledger.list_campaigns()
    rows = [c for c in campaigns if ref in (c["id"], c["name"])] or [c for c in campaigns if c["id"].startswith(ref)]
    ladders = [c for c in campaigns if (c["config"] or {}).get("kind") == KIND]
    if len(rows) > 1:
        raise UserError(f"{ref!r} names {len(rows)} campaigns ({', '.join(c['id'] for c in rows[:5])}): pass the ladder's id")
    if not rows:
        known = ", ".join(f"{c['id']} ({c['name']})" for c in ladders[:5]) or "none yet: `pretrainlab scaling ladder` trains one"
        raise UserError(f"no ladder {ref!r} in the ledger {ledger.target}; ladders: {known}")
    if (rows[0]["config"] or {}).get("kind") != KIND:
        raise UserError(f"{ref!r} is a research campaign, not a scaling ladder: fit its runs with `pretrainlab scaling fit --campaign {ref}`")
    return rows[0]


def ladder_points(ledger, row: dict, params: str | None = None):
    """The ladder's registered runs as fit points (N counted as the ladder was planned, unless
    `params` says otherwise), with each iso-FLOP run's design budget."""
    cfg = row["config"]
    budgets = {c["key"]: c["flops_budget"] for c in cfg["cells"] if c.get("flops_budget")}
    rows = ledger.list_runs(campaign=row["id"], columns=("run_id", "run_dir", "status", "params", "tokens", "val_bpb", "recipe"))
    by_run = {r["run_id"]: budgets.get(Path(r["run_dir"]).name) for r in rows}
    return points_from_runs(rows, f"ladder {row['id']} ({row['name']})", params or cfg["ladder"]["params"],
                            {k: v for k, v in by_run.items() if v})


class Ladder:
    def __init__(self, ledger, ladder_id: str, echo: bool = True):
        from ..workspace import workspace

        self.ledger, self.id, self.echo = ledger, ladder_id, echo
        row = ledger.get_campaign(ladder_id)
        self.cfg = LadderConfig(**row["config"]["ladder"])
        self.cells = [Cell(**c) for c in row["config"]["cells"]]
        self.workdir = workspace() / "runs" / "ladders" / ladder_id
        self.failed: dict[str, str] = {}  # cell key -> why it has no result

    def log(self, msg: str) -> None:
        if self.echo:
            print(f"[ladder {self.id}] {msg}", file=sys.stderr, flush=True)

    def registered(self) -> dict[str, dict]:
        """{cell key: its ledger row}, for the runs this ladder has registered."""
        rows = self.ledger.list_runs(campaign=self.id, columns=("run_id", "run_dir", "status", "val_bpb", "seconds", "params", "tokens"))
        return {Path(r["run_dir"]).name: r for r in rows}

    # ---- the spine ---------------------------------------------------------------------------------

    def run(self, fit_options: dict, poll_s: float = 0.5) -> dict | None:
        # 3. train every cell not yet registered
        done = self.registered()
        todo = [c for c in self.cells if c.key not in done]
        if done:
            self.log(f"{len(done)} of {len(self.cells)} runs already registered; {len(todo)} to train")
        work = sum(c.params * c.tokens for c in todo)
        self.log(f"training {len(todo)} runs ({6 * work:.3g} FLOPs at C = 6ND) on {self.cfg.parallel} slot(s)")
        runner = LocalRunner(self.cfg.parallel, gpus=self.cfg.gpus, log_dir=self.workdir / "logs", sandbox=False)
        runner.run_memory, runner.run_disk = self.cfg.run_memory, self.cfg.run_disk
        t0, finished = time.time(), len(done)
        try:
            while todo or runner.busy():
                while todo and runner.free_slots():
                    runner.submit(self.job(todo.pop(0), runner))
                for result in runner.poll():
                    finished += 1
                    self.on_finished(result, finished, time.time() - t0)
                if runner.busy():
                    runner.sleep(poll_s)
        except BaseException:
            runner.shutdown()  # never leave training processes behind
            self.ledger.set_campaign_status(self.id, "stopped")
            raise
        # 4. fit, record, close
        return self.close(fit_options)

    def job(self, cell: Cell, runner: LocalRunner) -> Job:
        run_dir = self.workdir / cell.key
        if runner.release_orphan(cell.key):
            self.log(f"{cell.key}: stopped the run a previous loop left running; training it again")
        if run_dir.exists():  # a run a killed loop left unfinished: token budgets are short, start it over
            holder = lock_holder(run_dir)
            if holder is not None:
                raise UserError(f"run directory {run_dir} is in use by process {holder.pid}: stop it, then "
                                f"`pretrainlab scaling ladder --resume {self.id}`")
            shutil.rmtree(run_dir)
        return Job(cell.key, self.cfg.recipe, run_dir, cell.overrides, timeout_s=self.run_timeout(cell), env={"PRETRAINLAB_NO_LEDGER": "1"})

    def run_timeout(self, cell: Cell) -> float | None:
        """5x the slowest finished run, scaled by this run's work (N x D) against that run's, + 120 s;
        none before the first run has finished."""
        took = [(r["seconds"], r["params"] * r["tokens"]) for r in self.registered().values()
                if r["seconds"] and r["params"] and r["tokens"]]
        if not took:
            return None
        seconds, work = max(took)
        return 5 * seconds * max(1.0, cell.params * cell.tokens / work) + 120

    def on_finished(self, result: JobResult, finished: int, elapsed: float) -> None:
        key = result.job.key
        value = None
        if result.summary is not None:
            value = self.register(result.job.out_dir)
        if value is None:
            tail = " ".join(result.stderr_tail.strip().splitlines()[-3:])[-300:]
            self.failed[key] = f"{result.status} (exit {result.returncode})"
            self.ledger.add_note(f"run {key} ended {result.status} (exit {result.returncode}) without a score: {tail}", author=AUTHOR,
                                 campaign_id=self.id)
        cell = next(c for c in self.cells if c.key == key)
        what = f"{cell.size}, {cell.tokens:,} tokens, seed {cell.seed}"
        outcome = f"val_bpb {value:.4f}" if value is not None else f"{result.status}, no score (see `pretrainlab research log {self.id}`)"
        self.log(f"{finished}/{len(self.cells)} {what}: {outcome} ({result.seconds:.0f} s; {elapsed:.0f} s elapsed)")

    def register(self, run_dir: Path) -> float | None:
        """Record a run (this ladder's registers it, not the trainer); returns its val_bpb on the
        decision split, or None."""
        try:
            record = read_run_dir(run_dir)
        except (UserError, ValueError, TypeError, AttributeError) as e:
            self.ledger.add_note(f"run {run_dir.name}: its run directory could not be read ({e}); not registered", author=AUTHOR,
                                 campaign_id=self.id)
            return None
        run = record["run"]
        clash = self.ledger.get_run(run["run_id"]) if run["run_id"] else None
        if clash is not None and Path(clash["run_dir"]).resolve() != Path(run["run_dir"]).resolve():
            run["run_id"] = derived_run_id(Path(run["run_dir"]))
        split = (run.get("summary") or {}).get("eval_split")
        if run["val_bpb"] is not None and split != "val":
            self.ledger.add_note(f"run {run_dir.name}: its final evaluation was on the {split!r} split, not the decision split; "
                                 "left out of the fit", author=AUTHOR, campaign_id=self.id)
            run["val_bpb"] = None
        self.ledger.upsert_run(record, campaign_id=self.id)
        return run["val_bpb"]

    def close(self, fit_options: dict) -> dict | None:
        row = self.ledger.get_campaign(self.id)
        points = ladder_points(self.ledger, row)
        status = "done" if len(points) == len(self.cells) else "incomplete"
        result = None
        try:
            result = analyse(points, **fit_options)
        except UserError as e:
            self.ledger.add_note(f"no fit: {e}", author=AUTHOR, campaign_id=self.id)
            self.log(f"no fit: {e}")
        if result is not None:
            keep = {k: result[k] for k in ("fit", "intervals", "allocation", "warnings", "method")}
            self.ledger.set_campaign_config(self.id, {**row["config"], "fit": keep})
            f = result["fit"]
            self.ledger.add_note(f"fit on {len(points)} runs: E {f['E']:.4f}, A {f['A']:.4g}, alpha {f['alpha']:.4f}, B {f['B']:.4g}, "
                                 f"beta {f['beta']:.4f} (val_bpb; N = {points.n_kind} parameters, D = tokens)", author=AUTHOR,
                                 campaign_id=self.id)
        self.ledger.set_campaign_status(self.id, status)
        self.log(f"closed {status}: {len(points)} of {len(self.cells)} runs scored" +
                 (f"; failed: {', '.join(f'{k} ({v})' for k, v in self.failed.items())}" if self.failed else ""))
        return result

