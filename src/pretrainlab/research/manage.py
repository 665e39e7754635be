"""Campaign operations behind `pretrainlab research ...` (api.py re-exports them).

start / resume run the loop in the foreground; launch starts it in a background process of
its own and returns its id at once (the MCP server's research_start); status, log, stop,
suggest, approve and reject only touch the ledger, so they work from another terminal while
a campaign runs.
"""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path

from ..workspace import workspace
from ..errors import UserError
from ..ledger.store import Phase, Role
from ..runners import make_runner
from ..recipes import check_fits
from .campaign import Campaign, CampaignConfig, check_growth, slots_text
from .config import SLURM_FIELDS
from .strategies import STRATEGIES, Strategy


def make_strategy(cfg: CampaignConfig, ledger, campaign_id: str | None, echo: bool = True) -> Strategy:
    """The campaign's strategy; every configuration error surfaces here, before anything runs."""
    name = cfg.strategy
    if name == "auto":
        name = "claude" if os.environ.get("ANTHROPIC_API_KEY") else "optuna"
        if echo:
            reason = "ANTHROPIC_API_KEY is set" if name == "claude" else "no ANTHROPIC_API_KEY: the offline TPE optimizer"
            print(f"[pretrainlab] strategy auto -> {name} ({reason})", flush=True)
    if name in ("claude", "openai"):
        from .llm import ClaudeStrategy, OpenAIStrategy
        from .tools import lab_tools

        context = {"campaign_id": campaign_id}
        tools = lab_tools(ledger, context, cfg.base_recipe())
        if name == "claude":
            strategy = ClaudeStrategy(tools, model=cfg.llm_model or "claude-opus-5", base_url=cfg.llm_base_url,
                                      spend_cap_usd=cfg.spend_cap_usd, spend_cap_tokens=cfg.spend_cap_tokens, seed=cfg.strategy_seed)
        else:
            if not cfg.llm_model:
                raise UserError("--strategy openai needs --llm-model NAME (the model your endpoint serves)")
            strategy = OpenAIStrategy(tools, model=cfg.llm_model, base_url=cfg.llm_base_url, spend_cap_tokens=cfg.spend_cap_tokens,
                                      seed=cfg.strategy_seed)
            check_endpoint(strategy)
        saved = (ledger.get_campaign(campaign_id)["config"] or {}).get("llm_spend") if campaign_id else None
        if saved:  # a resumed campaign: the caps count what earlier loops spent
            from .llm import Spend

            strategy.spend = Spend(**{k: saved[k] for k in ("input_tokens", "output_tokens", "cache_write_tokens", "cache_read_tokens", "calls")})
        strategy.context = context  # the campaign id arrives once the campaign exists
        return strategy
    if name not in STRATEGIES:
        raise UserError(f"--strategy {name!r}: choose auto, claude, openai, {', '.join(STRATEGIES)}")
    return STRATEGIES[name](seed=cfg.strategy_seed)


def check_endpoint(strategy) -> None:
    """An OpenAI-compatible endpoint that is down is a start-up error, not a campaign failure."""
    try:
        strategy.client.with_options(max_retries=0, timeout=5.0).models.list()
    except strategy.openai.APIConnectionError:
        raise UserError(f"the LLM endpoint {strategy.client.base_url} does not answer: start it or fix --llm-base-url") from None
    except strategy.openai.APIStatusError:
        pass  # it answers (some servers do not implement /models)


def start(cfg: CampaignConfig, name: str | None = None, db: str | None = None, echo: bool = True, author: str | None = None) -> str:
    ledger, campaign_id, strategy = _create(cfg, name, db, echo, author)
    _run(ledger, campaign_id, cfg, strategy, echo)
    return campaign_id


def _create(cfg: CampaignConfig, name: str | None, db: str | None, echo: bool, author: str | None):
    """Check the settings (recipe, overrides, budget, strategy and its LLM endpoint) and record
    the campaign; `author`, who started it, goes into its config as started_by."""
    from ..ledger import Ledger

    base = cfg.base_recipe()  # bad recipe / overrides / budget -> UserError now
    if cfg.runner == "local":  # (a cluster's nodes may have more memory than this machine)
        check_fits(base)
    if base.budget.seconds and echo:
        print(f"note: --run-budget {cfg.run_budget} is wall-clock: on a machine whose load varies (other runs, other work), "
              "seed-matched runs train different token counts and the pairing no longer cancels seed noise; decisions say "
              "when a pair's tokens differ by over 5%. A token budget (e.g. 8e4tok) keeps comparisons fair", file=sys.stderr)
    if base.data.corpus != "builtin":  # a missing or damaged corpus is an error now, not a campaign of crashed runs
        from ..data import Corpus

        Corpus.open(Path(base.data.corpus).expanduser(), verify=False)
    ledger = Ledger(db)
    if cfg.transfer_ladder:
        from .transfer import check_ladder

        check_ladder(ledger, cfg.transfer_ladder, base)
    strategy = make_strategy(cfg, ledger, None, echo)
    config = {"campaign": asdict(cfg), "base_recipe": base.to_dict(), **({"started_by": author} if author else {})}
    campaign_id = ledger.create_campaign(name or f"{base.name} {cfg.strategy}", goal=f"lowest {cfg.goal} per run budget {cfg.run_budget}"
                                         + (" (at equal FLOPs)" if cfg.equal_flops() else ""),
                                         config=config)
    return ledger, campaign_id, strategy


LAUNCH_WAIT_S = 60.0  # launch returns when the loop has recorded its baseline, or after this long with the loop still starting


def launch(cfg: CampaignConfig, author: str, name: str | None = None, db: str | None = None, wait_s: float = LAUNCH_WAIT_S) -> dict:
    """Start a campaign whose loop runs in a background process of its own and return at once.

    The settings are checked here, so a bad recipe or flag is an error now, not a dead
    process later. The loop is `pretrainlab research resume ID`, detached (its own session,
    no stdin, output to runs/campaigns/ID/loop.log): it outlives the caller, it has the
    environment the caller has, as a `research start` typed in the caller's shell would, and
    `research status` / `stop` / `resume` handle it like any other campaign. Returns when the
    loop has recorded its baseline experiment (or `wait_s` passed with the loop still alive):
    {campaign, name, status, started_by, pid, log}. A loop that dies at start is an error
    with its last line, and the campaign is left `stopped` for `research resume`."""
    ledger, campaign_id, _ = _create(cfg, name, db, False, author)
    root = workspace().absolute()
    log = root / "runs" / "campaigns" / campaign_id / "loop.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PRETRAINLAB_WORKSPACE": str(root), "PYTHONUNBUFFERED": "1", **({"PRETRAINLAB_DB": db} if db else {})}
    with open(log, "ab") as out:  # the ledger URL travels in the environment, not on a command line others can read
        proc = subprocess.Popen([sys.executable, "-m", "pretrainlab", "research", "resume", campaign_id], stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    ledger.add_note(f"started by {author}: its loop runs in a background process (pid {proc.pid}), log {log}", author=author,
                    campaign_id=campaign_id)
    deadline = time.monotonic() + wait_s
    while not ledger.list_experiments(campaign_id) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    if proc.poll() not in (None, 0):
        last = next((line for line in reversed(log.read_text(errors="replace").splitlines()) if line.strip()), "no output")
        ledger.set_campaign_status(campaign_id, "stopped")
        ledger.add_note(f"its loop exited at start: {last}", author="campaign", campaign_id=campaign_id)
        raise UserError(f"campaign {campaign_id}: its loop exited at start: {last} (log {log}); "
                        f"`pretrainlab research resume {campaign_id}` retries")
    threading.Thread(target=proc.wait, daemon=True).start()  # reap it when it ends, so no zombie stays behind
    row = ledger.get_campaign(campaign_id)
    return {"campaign": campaign_id, "name": row["name"], "status": row["status"], "started_by": author, "pid": proc.pid, "log": str(log)}


def resume(campaign_id: str, db: str | None = None, echo: bool = True, author: str = "person", **changes) -> str:
    """Continue a campaign. `changes` extend or reshape it (budget_runs, budget_hours,
    parallel, gpus, runner, ray_address, slurm_*, spend_cap_usd, spend_cap_tokens; None keeps a value): recorded in its
    config and as a note by `author`. A screen that was promising but left inconclusive for
    lack of runs is replicated once the budget has room."""
    from ..ledger import Ledger

    ledger = Ledger(db)
    row = find_campaign(ledger, campaign_id)
    refuse_ladder(row)
    changes = {k: v for k, v in changes.items() if v is not None}
    if changes.get("runner", "ray") != "ray" and "ray_address" not in changes:
        changes["ray_address"] = None  # back on this machine: the cluster's address goes with the runner
    if changes.get("runner", "slurm") != "slurm":  # off SLURM: its settings go with the runner
        changes.update({k: None for k in SLURM_FIELDS if k not in changes})
    if row["config"].get("kind") == "mixture":  # its plan is fixed: only the slots can change
        from . import mixture_campaign

        ignored = sorted(set(changes) - set(mixture_campaign.RESUMABLE))
        if ignored:
            raise UserError(f"campaign {row['id']} is a mixture campaign: {', '.join('--' + k.replace('_', '-') for k in ignored)} "
                            "does not apply to it (its runs are planned); resume it with "
                            f"{' / '.join('--' + k.replace('_', '-') for k in mixture_campaign.RESUMABLE)} only")
        return mixture_campaign.resume(ledger, row, echo=echo, author=author, **changes)
    baseline = next((e for e in ledger.list_experiments(row["id"]) if e["role"] == Role.BASELINE), None)
    said = ledger.list_decisions(experiment_id=baseline["id"]) if baseline else []
    if said and said[-1]["verdict"] != "keep":  # nothing to compare with: a resumed loop would screen against nothing
        raise UserError(f"campaign {row['id']}'s baseline {baseline['id']} has no result to compare experiments with "
                        f"({said[-1]['rationale'] or said[-1]['verdict']}); start a new campaign")
    old = row["config"]["campaign"]
    cfg = CampaignConfig(**{**old, **changes})  # validates
    changed = {k: (old.get(k), v) for k, v in changes.items() if old.get(k) != v}
    if changed:
        ledger.set_campaign_config(row["id"], {**row["config"], "campaign": asdict(cfg)})
        ledger.add_note("resumed with " + ", ".join(f"{k} {a} -> {b}" for k, (a, b) in changed.items()), author=author, campaign_id=row["id"])
    ledger.set_campaign_status(row["id"], "running")
    _run(ledger, row["id"], cfg, make_strategy(cfg, ledger, row["id"], echo), echo)
    return row["id"]


def _run(ledger, campaign_id: str, cfg: CampaignConfig, strategy: Strategy, echo: bool) -> None:
    if hasattr(strategy, "context"):
        strategy.context["campaign_id"] = campaign_id
    workdir = workspace() / "runs" / "campaigns" / campaign_id
    workdir.mkdir(parents=True, exist_ok=True)
    lock = _hold_loop_lock(workdir, ledger, campaign_id)  # one loop per campaign: two would stop each other's runs
    try:
        _run_locked(ledger, campaign_id, cfg, strategy, echo, workdir)
    finally:
        os.close(lock)


def _run_locked(ledger, campaign_id: str, cfg: CampaignConfig, strategy: Strategy, echo: bool, workdir: Path) -> None:
    row = ledger.get_campaign(campaign_id)  # which process runs the loop: `research status` tells a live loop from a dead one
    ledger.set_campaign_config(campaign_id, {**row["config"], "loop": {"pid": os.getpid(), "host": socket.gethostname()}})
    try:
        runner = make_runner(cfg, workdir)  # cfg.runner: local processes or a Ray cluster
    except UserError as e:  # e.g. a Ray cluster that does not answer: nothing started, the campaign waits for a resume
        ledger.set_campaign_status(campaign_id, "stopped")
        ledger.add_note(f"its loop could not start: {e}", author="campaign", campaign_id=campaign_id)
        raise
    if not runner.sandbox.active:  # said loudly on stderr by Sandbox.detect; kept on the record too
        ledger.add_note(f"experiment processes of this loop are NOT sandboxed: {runner.sandbox.reason}; they run with a scrubbed "
                        "environment, and the lab still scores every run itself", author="campaign", campaign_id=campaign_id)
    campaign = Campaign(ledger, campaign_id, strategy, runner, workdir, echo=echo)
    previous = None
    if threading.current_thread() is threading.main_thread():  # SIGTERM (a `kill`, a shutdown) ends the loop as Ctrl-C does
        previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        campaign.run()
    except BaseException:
        runner.shutdown()  # never leave orphaned training processes
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _hold_loop_lock(workdir: Path, ledger, campaign_id: str) -> int:
    """An exclusive lock on the campaign's loop.lock for as long as this loop runs (released when its process ends, however
    it ends). A second `research resume` of a campaign whose loop is alive is refused: two loops each took the other's
    runs for orphans and stopped them, and both decided and closed the campaign."""
    fd = os.open(workdir / "loop.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        loop = (ledger.get_campaign(campaign_id)["config"] or {}).get("loop") or {}
        raise UserError(f"campaign {campaign_id} is already running (its loop is process {loop.get('pid', '?')} on "
                        f"{loop.get('host', '?')}): wait for it, or `pretrainlab research stop {campaign_id}` first") from None
    return fd


def _terminated(signum, frame) -> None:
    raise SystemExit(128 + signum)  # unwinds the loop: its runs are stopped with a checkpoint, and `research resume` continues


def stop(campaign_id: str, db: str | None = None, author: str | None = None) -> str:
    """Ask the campaign's loop to finish; with `author`, who asked goes on its record as a note. Returns the campaign's
    status after: "stopping" while its loop finishes its runs; "stopped" for a campaign whose loop is gone (a crash, a
    kill: nothing runs to stop; `research resume` continues it); an ended campaign's status ("done", "stopped") unchanged."""
    from ..ledger import Ledger

    ledger = Ledger(db)
    row = find_campaign(ledger, campaign_id)
    if row["status"] not in ("running", "stopping"):
        return row["status"]  # ended: a stop would leave it "stopping" for good, with no loop to finish it
    loop = loop_state((row["config"] or {}).get("loop"))
    status = "stopped" if loop is not None and loop["alive"] is False else "stopping"
    ledger.set_campaign_status(row["id"], status)
    if author:
        ledger.add_note("stop requested", author=author, campaign_id=row["id"])
    return status


def status(campaign_id: str, db: str | None = None, record: dict | None = None) -> dict:
    """The campaign's leaderboard and state. `record`: the campaign's report.campaign_record,
    when the caller already read it (the dashboard's campaign page): nothing is read twice."""
    from ..ledger import Ledger

    with Ledger(db) as ledger:
        return _status(ledger, campaign_id, record)


def _status(ledger, campaign_id: str, record: dict | None) -> dict:
    from .report import campaign_record

    row = find_campaign(ledger, campaign_id)
    refuse_ladder(row)
    record = record if record is not None and record["campaign"]["id"] == row["id"] else campaign_record(ledger, row["id"])
    board = []
    for e in record["experiments"]:
        values, d = e["values"], e["decision"]
        board.append({"experiment": e["id"], "hypothesis": e["hypothesis"], "kind": e["kind"], "proposer": e["proposer"],
                      "model_id": e["model_id"], "role": e["role"], "status": e["status"], "planned_seeds": e["planned_seeds"],
                      "runs": len(values),
                      "mean_val_bpb": statistics.fmean(values) if values else None, "verdict": d["verdict"] if d else None,
                      "effect": d["effect"] if d else None, "ci": [d["ci_low"], d["ci_high"]] if d else None,
                      # a screen stopped at its first rung: how far it trailed its parent there (its effect is not measured)
                      "rung_effect": ((d.get("evidence") or {}).get("rung") or {}).get("diff") if d else None,
                      "change": (e["change"] or {}).get("diff"), "data_steps": data_steps_text((e["change"] or {}).get("data_recipe"))})
    decided_at = {e["id"]: e["decision"]["created_at"] for e in record["experiments"] if e["decision"]}
    # the incumbent: the newest keep, in decision order (a person's keep of an older experiment is the newest)
    kept = sorted((b for b in board if b["verdict"] == "keep"), key=lambda b: decided_at[b["experiment"]])
    closing = (row["config"].get("closing") or [None])[-1]  # as data: Campaign.closing_stats
    mixture = row["config"].get("kind") == "mixture"  # research/mixture_campaign.py: its plan, fit and claims under "mixture"
    out = {"campaign": row["id"], "name": row["name"], "status": row["status"], "goal": row["goal"],
           "runs": record["num_runs"], "budget_runs": row["config"]["planned_runs"] if mixture else row["config"]["campaign"]["budget_runs"],
           "experiments": board, "incumbent": kept[-1] if kept else None, "baseline": None if mixture else board[0] if board else None,
           "closing": closing, "slots": slots_text(closing) if closing else None,  # the last loop's utilisation and idle time
           "llm_spend": row["config"].get("llm_spend"), "elapsed_s": row["config"].get("elapsed_s"),
           "loop": loop_state(row["config"].get("loop"))}
    if mixture:
        from .mixture_campaign import summary

        out["mixture"] = summary(ledger, row["id"])
    elif row["config"].get("base_recipe"):  # what the budget counts: full-run equivalents (a run stopped early, what it used)
        from ..config import Recipe
        from .state import run_cost

        base, early_stop = Recipe.from_dict(row["config"]["base_recipe"]), row["config"]["campaign"].get("early_stop", True)
        out["compute_used"] = round(sum(run_cost(r, base, early_stop) for e in record["experiments"] for r in e["runs"]), 2)
    return out


def data_steps_text(built: dict | None) -> str | None:
    """A data experiment's steps in one line, with what they removed: `gopher_quality(domains=docs, min_words=100);
    near_dedup(threshold=0.7): 50 documents removed` (its change's diff shows only a corpus path)."""
    if not isinstance(built, dict) or not isinstance(built.get("steps"), list):
        return None
    parts = []
    for step in built["steps"]:
        if isinstance(step, dict):
            args = ", ".join(f"{k}={','.join(map(str, v)) if isinstance(v, list) else v}" for k, v in step.items() if k != "step")
            parts.append(f"{step.get('step')}({args})")
    removed = built.get("removed_docs")
    total = sum(v for v in removed.values() if isinstance(v, int)) if isinstance(removed, dict) else None
    return "; ".join(parts) + (f": {total:,} documents removed" if total is not None else "")


def loop_state(loop: dict | None) -> dict | None:
    """The process that last ran the campaign's loop, with alive: whether it still runs (None
    when it ran on another host). A campaign `running` whose loop is not alive has lost it
    (a crash, a kill, a reboot): `research resume` continues it."""
    if not loop:
        return None
    if loop["host"] != socket.gethostname():
        return {**loop, "alive": None}
    try:
        os.kill(loop["pid"], 0)
    except ProcessLookupError:
        return {**loop, "alive": False}
    except PermissionError:
        pass  # another user's process: it exists
    try:  # Linux: an exited process that nobody has reaped yet (a zombie) still answers kill(pid, 0)
        zombie = Path(f"/proc/{loop['pid']}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
    except (OSError, IndexError):
        zombie = False
    return {**loop, "alive": not zombie}


def suggest(campaign_id: str, hypothesis: str, overrides: list[str], author: str, db: str | None = None,
            data_recipe: str | None = None) -> str:
    """A person's experiment, queued for the next free slot: config overrides, and/or a data
    recipe's [[steps]] (a TOML file), built now into a derived corpus of the campaign's base
    sources whose held-out data is checked to be the base's (research/data_experiments.py)."""
    from ..ledger import Ledger
    from .data_experiments import apply_data_change, check_fixed_data, load_steps
    from .space import recipe_diff

    if not overrides and not data_recipe:
        raise UserError("research suggest needs the change to try: add --set key=value (e.g. --set model.n_layer=6) or "
                        "--data-recipe STEPS.toml")
    ledger = Ledger(db)
    row = find_campaign(ledger, campaign_id)
    from ..config import Recipe, apply_overrides

    base = Recipe.from_dict(row["config"]["base_recipe"])
    change: dict = {"values": dict(o.split("=", 1) for o in overrides if "=" in o)}
    try:
        check_fixed_data(change["values"])
        recipe = base
        if data_recipe:
            recipe, change["data_recipe"] = apply_data_change(base, base, load_steps(data_recipe), None, progress=True)
        recipe = apply_overrides(recipe, overrides)
    except ValueError as e:
        raise UserError(str(e)) from None
    check_growth(recipe, base)
    if (row["config"].get("campaign") or {}).get("runner", "local") == "local":
        check_fits(recipe)
    change.update(recipe=recipe.to_dict(), diff={k: list(v) for k, v in recipe_diff(base, recipe).items()})
    return ledger.add_experiment(hypothesis, kind="data" if data_recipe else "config", proposer=author, proposer_type="person",
                                 rationale=hypothesis, campaign_id=row["id"], parent_recipe=base.to_dict(), change=change,
                                 status=Phase.QUEUED, role=Role.SUGGESTION)


def review(experiment_id: str, approve: bool, author: str, reason: str | None = None, db: str | None = None) -> dict:
    """A person's approve/reject, always recorded as the person's decision: releases (or
    cancels) an experiment waiting for approval, withdraws a queued one (reject: the loop
    starts queued experiments only, so it never runs), or overrides the loop's verdict on a
    decided one. Overturning the statistics (approve of a discard, reject of a keep) needs a
    reason, and what it adopts comes back as a warning. Returns what was done: {experiment,
    action, status, decision, author, reason}, plus warning for an override."""
    from ..ledger import Ledger
    from .report import carries, measured, overturns
    from .state import incumbent_id

    ledger = Ledger(db)
    exp = ledger.get_experiment(experiment_id)
    if exp is None:
        raise UserError(f"no experiment {experiment_id!r}: see `pretrainlab research status CAMPAIGN` for ids")
    reason = (reason or "").strip() or None
    if exp["role"] == Role.BASELINE and not approve:
        raise UserError(f"experiment {experiment_id} is its campaign's baseline, the reference every experiment is compared with: "
                        "it cannot be rejected. Stop the campaign (`pretrainlab research stop`), or start one from another recipe")
    verdict = "keep" if approve else "discard"
    done = {"experiment": experiment_id, "action": "approve" if approve else "reject", "author": author, "reason": reason}
    if exp["status"] == Phase.AWAITING_APPROVAL:
        ledger.set_experiment_status(experiment_id, Phase.QUEUED if approve else Phase.REJECTED)
        if not approve:
            ledger.record_decision("discard", decided_by=author, experiment_id=experiment_id, rationale=reason or "rejected by a person")
        return {**done, "status": (Phase.QUEUED if approve else Phase.REJECTED).value, "decision": None if approve else "discard"}
    if exp["status"] == Phase.QUEUED and not approve:
        ledger.set_experiment_status(experiment_id, Phase.REJECTED)
        ledger.record_decision("discard", decided_by=author, experiment_id=experiment_id,
                               rationale=reason or "withdrawn by a person before it ran")
        return {**done, "status": Phase.REJECTED.value, "decision": "discard"}
    if exp["status"] != Phase.DECIDED:
        queued = "; it runs when a slot is free (reject withdraws it)" if exp["status"] == Phase.QUEUED else ""
        raise UserError(f"experiment {experiment_id} is {exp['status']}{queued}: approve applies to experiments awaiting approval "
                        "or decided, reject also to queued ones")
    stats = overturns(exp, ledger.list_decisions(experiment_id=experiment_id), verdict)
    if stats is not None:
        what = _overturned(stats, approve)
        if reason is None:
            raise UserError(f"experiment {experiment_id} was {'kept' if stats['verdict'] == 'keep' else 'discarded'} by the statistics "
                            f"({measured(stats)}): {'approving' if approve else 'rejecting'} it {what}; say why with --reason")
    campaign_id = exp["campaign_id"]
    before = incumbent_id(ledger.list_decisions(campaign_id=campaign_id)) if campaign_id else None
    evidence = {"overrides": {"decision": stats["id"], "verdict": stats["verdict"], "decided_by": stats["decided_by"],
                              "measured": measured(stats)}} if stats else None
    ledger.record_decision(verdict, decided_by=author, experiment_id=experiment_id, rationale=reason or f"{verdict} by a person",
                           evidence=evidence)
    if stats is None:
        return {**done, "status": Phase.DECIDED.value, "decision": verdict}
    warning = (f"experiment {experiment_id} is {'kept' if approve else 'discarded'} by {author} over the statistics' {stats['verdict']} "
               f"({measured(stats)}): this {what}")
    if campaign_id:
        after = incumbent_id(ledger.list_decisions(campaign_id=campaign_id))
        if after == before:
            warning += f"; the campaign's incumbent stays {after}"
        elif after:
            now = ledger.get_experiment(after)
            still = ", which still has this change" if not approve and carries((now["change"] or {}).get("recipe") or {}, exp) else ""
            which = "the baseline's, its starting recipe" if now["role"] == Role.BASELINE else f"{after}'s"
            warning += f"; the recipe the campaign hands back is now {which}{still} (was {before}'s)"
        else:
            warning += "; nothing is kept now: the campaign hands back its starting recipe"
        warning += "; the campaign's report says so"
    return {**done, "status": Phase.DECIDED.value, "decision": verdict, "warning": warning}


def _overturned(stats: dict, approve: bool) -> str:
    """What overturning the statistics' decision does, in words: 'adopts a change measured worse'."""
    effect = stats["effect"] if stats.get("effect") is not None else ((stats.get("evidence") or {}).get("rung") or {}).get("diff")
    if approve:
        return "adopts a change measured worse" if effect is not None and effect > 0 else "adopts a change not found better"
    return "drops a change measured better" if effect is not None and effect < 0 else "drops a change the statistics kept"


def refuse_ladder(row: dict) -> None:
    """A scaling ladder is recorded as a campaign but has no experiments to rank or resume here."""
    from .ladder import KIND

    if (row["config"] or {}).get("kind") == KIND:
        raise UserError(f"{row['id']} is a scaling ladder, not a research campaign: `pretrainlab scaling fit --ladder {row['id']}` "
                        f"fits its runs, `pretrainlab scaling ladder --resume {row['id']}` continues it")


def find_campaign(ledger, ref: str) -> dict:
    """A campaign by its id, a unique prefix of it, or its name (as `runs list --campaign` takes it)."""
    row = ledger.get_campaign(ref)
    if row is None:
        campaigns = ledger.list_campaigns() if ref else []
        matches = [c for c in campaigns if c["id"].startswith(ref)] or [c for c in campaigns if c.get("name") == ref]
        if len(matches) > 1:
            raise UserError(f"campaign {ref!r} is ambiguous: it names {len(matches)} campaigns "
                            f"({', '.join(c['id'] for c in matches[:5])}); give more of the id")
        if not matches:
            raise UserError(f"no campaign {ref!r} in the ledger: see `pretrainlab research status` for ids")
        row = matches[0]
    return row
