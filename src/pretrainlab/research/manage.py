"""Campaign operations behind `pretrainlab research ...` (api.py re-exports them).

start / resume run the loop in the foreground; status, log, stop, suggest, approve and
reject only touch the ledger, so they work from another terminal while a campaign runs.
"""

from __future__ import annotations

import os
import statistics
from dataclasses import asdict

from ..workspace import workspace
from ..errors import UserError
from ..ledger.store import Phase, Role
from ..runners import LocalRunner
from .campaign import Campaign, CampaignConfig, slots_text
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


def start(cfg: CampaignConfig, name: str | None = None, db: str | None = None, echo: bool = True) -> str:
    from ..ledger import Ledger

    base = cfg.base_recipe()  # bad recipe / overrides / budget -> UserError now
    ledger = Ledger(db)
    strategy = make_strategy(cfg, ledger, None, echo)
    campaign_id = ledger.create_campaign(name or f"{base.name} {cfg.strategy}", goal=f"lowest {cfg.goal} per run budget {cfg.run_budget}",
                                         config={"campaign": asdict(cfg), "base_recipe": base.to_dict()})
    _run(ledger, campaign_id, cfg, strategy, echo)
    return campaign_id


def resume(campaign_id: str, db: str | None = None, echo: bool = True, author: str = "person", **changes) -> str:
    """Continue a campaign. `changes` extend or reshape it (budget_runs, budget_hours,
    parallel, gpus, spend_cap_usd, spend_cap_tokens; None keeps a value): recorded in its
    config and as a note by `author`. A screen that was promising but left inconclusive for
    lack of runs is replicated once the budget has room."""
    from ..ledger import Ledger

    ledger = Ledger(db)
    row = find_campaign(ledger, campaign_id)
    refuse_ladder(row)
    changes = {k: v for k, v in changes.items() if v is not None}
    if row["config"].get("kind") == "mixture":  # its plan is fixed: only the slots can change
        from . import mixture_campaign

        ignored = sorted(set(changes) - {"parallel", "gpus"})
        if ignored:
            raise UserError(f"campaign {row['id']} is a mixture campaign: {', '.join('--' + k.replace('_', '-') for k in ignored)} "
                            "does not apply to it (its runs are planned); resume it with --parallel / --gpus only")
        return mixture_campaign.resume(ledger, row, echo=echo, author=author, **changes)
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
    runner = LocalRunner(cfg.parallel, gpus=cfg.gpus, log_dir=workdir / "logs")
    if not runner.sandbox.active:  # said loudly on stderr by Sandbox.detect; kept on the record too
        ledger.add_note(f"experiment processes of this loop are NOT sandboxed: {runner.sandbox.reason}; they run with a scrubbed "
                        "environment, and the lab still scores every run itself", author="campaign", campaign_id=campaign_id)
    campaign = Campaign(ledger, campaign_id, strategy, runner, workdir, echo=echo)
    try:
        campaign.run()
    except BaseException:
        runner.shutdown()  # never leave orphaned training processes
        raise


def stop(campaign_id: str, db: str | None = None) -> None:
    from ..ledger import Ledger

    ledger = Ledger(db)
    ledger.set_campaign_status(find_campaign(ledger, campaign_id)["id"], "stopping")


def status(campaign_id: str, db: str | None = None) -> dict:
    from ..ledger import Ledger

    ledger = Ledger(db)
    row = find_campaign(ledger, campaign_id)
    refuse_ladder(row)
    experiments = ledger.list_experiments(row["id"])
    decisions = {d["experiment_id"]: d for d in ledger.list_decisions(campaign_id=row["id"])}
    runs = ledger.list_runs(campaign=row["id"], columns=("run_id", "experiment_id", "seed", "status", "val_bpb"))
    board = []
    for e in experiments:
        values = [r["val_bpb"] for r in runs if r["experiment_id"] == e["id"] and r["status"] == "ok" and r["val_bpb"] is not None]
        d = decisions.get(e["id"])
        board.append({"experiment": e["id"], "hypothesis": e["hypothesis"], "kind": e["kind"], "proposer": e["proposer"],
                      "model_id": e["model_id"], "role": e["role"], "status": e["status"], "planned_seeds": e["planned_seeds"],
                      "runs": len(values),
                      "mean_val_bpb": statistics.fmean(values) if values else None, "verdict": d["verdict"] if d else None,
                      "effect": d["effect"] if d else None, "ci": [d["ci_low"], d["ci_high"]] if d else None,
                      "change": (e["change"] or {}).get("diff")})
    kept = [b for b in board if b["verdict"] == "keep"]
    closing = (row["config"].get("closing") or [None])[-1]  # as data: Campaign.closing_stats
    mixture = row["config"].get("kind") == "mixture"  # research/mixture_campaign.py: its plan, fit and claims under "mixture"
    out = {"campaign": row["id"], "name": row["name"], "status": row["status"], "goal": row["goal"],
           "runs": len(runs), "budget_runs": row["config"]["planned_runs"] if mixture else row["config"]["campaign"]["budget_runs"],
           "experiments": board, "incumbent": kept[-1] if kept else None, "baseline": None if mixture else board[0] if board else None,
           "closing": closing, "slots": slots_text(closing) if closing else None,  # the last loop's utilisation and idle time
           "llm_spend": row["config"].get("llm_spend"), "elapsed_s": row["config"].get("elapsed_s")}
    if mixture:
        from .mixture_campaign import summary

        out["mixture"] = summary(ledger, row["id"])
    return out


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
    change.update(recipe=recipe.to_dict(), diff={k: list(v) for k, v in recipe_diff(base, recipe).items()})
    return ledger.add_experiment(hypothesis, kind="data" if data_recipe else "config", proposer=author, proposer_type="person",
                                 rationale=hypothesis, campaign_id=row["id"], parent_recipe=base.to_dict(), change=change,
                                 status=Phase.QUEUED, role=Role.SUGGESTION)


def review(experiment_id: str, approve: bool, author: str, reason: str | None = None, db: str | None = None) -> dict:
    """A person's approve/reject: releases (or cancels) an experiment waiting for approval, or
    overrides the loop's verdict on a decided one, always recorded as the person's decision.
    Returns what was done: {experiment, action, status, decision, author, reason}."""
    from ..ledger import Ledger

    ledger = Ledger(db)
    exp = ledger.get_experiment(experiment_id)
    if exp is None:
        raise UserError(f"no experiment {experiment_id!r}: see `pretrainlab research status CAMPAIGN` for ids")
    verdict = "keep" if approve else "discard"
    done = {"experiment": experiment_id, "action": "approve" if approve else "reject", "author": author, "reason": reason}
    if exp["status"] == Phase.AWAITING_APPROVAL:
        ledger.set_experiment_status(experiment_id, Phase.QUEUED if approve else Phase.REJECTED)
        if not approve:
            ledger.record_decision("discard", decided_by=author, experiment_id=experiment_id, rationale=reason or "rejected by a person")
        return {**done, "status": (Phase.QUEUED if approve else Phase.REJECTED).value, "decision": None if approve else "discard"}
    if exp["status"] != Phase.DECIDED:
        raise UserError(f"experiment {experiment_id} is {exp['status']}: approve/reject apply to experiments awaiting approval or decided")
    ledger.record_decision(verdict, decided_by=author, experiment_id=experiment_id, rationale=reason or f"{verdict} by a person")
    return {**done, "status": Phase.DECIDED.value, "decision": verdict}


def refuse_ladder(row: dict) -> None:
    """A scaling ladder is recorded as a campaign but has no experiments to rank or resume here."""
    from .ladder import KIND

    if (row["config"] or {}).get("kind") == KIND:
        raise UserError(f"{row['id']} is a scaling ladder, not a research campaign: `pretrainlab scaling fit --ladder {row['id']}` "
                        f"fits its runs, `pretrainlab scaling ladder --resume {row['id']}` continues it")


def find_campaign(ledger, ref: str) -> dict:
    row = ledger.get_campaign(ref)
    if row is None:
        matches = [c for c in ledger.list_campaigns() if c["id"].startswith(ref)]
        if len(matches) != 1:
            raise UserError(f"no campaign {ref!r} in the ledger: see `pretrainlab research status` for ids")
        row = matches[0]
    return row
