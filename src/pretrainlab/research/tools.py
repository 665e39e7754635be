"""The lab's operations as tools for LLM strategies (research/llm.py).

Read tools look at the campaign's runs, a run's doctor findings and curve, and the harness
source; propose tools validate a change and return a Proposal (invalid input raises
ValueError, which the agent loop hands back to the model as a tool error). `context` holds
the campaign id once the campaign exists.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..config import Recipe, apply_overrides
from .llm import Tool
from .patches import PACKAGE_DIR, check_allowed
from .strategies import Proposal

READABLE = ("model/", "train/", "eval.py", "config.py", "recipes.py", "data/loader.py")
OBJ = "object"


def _schema(properties: dict, required: list[str]) -> dict:
    return {"type": OBJ, "properties": properties, "required": required}


def lab_tools(ledger, context: dict, base: Recipe) -> list[Tool]:
    def campaign_runs(args):
        rows = ledger.list_runs(campaign=context.get("campaign_id"), status=[args["status"]] if args.get("status") else None,
                                sort="val_bpb", limit=int(args.get("limit", 20)),
                                columns=("run_id", "experiment_id", "seed", "status", "val_bpb", "tokens", "tokens_per_s"))
        return rows

    def compare_runs(args):
        from ..ledger.compare import compare

        ids = args["run_ids"]
        if not isinstance(ids, list) or not 2 <= len(ids) <= 6:
            raise ValueError("run_ids must be a list of 2 to 6 run ids")
        return compare([_run(i) for i in ids])

    def run_findings(args):
        from ..doctor import diagnose

        return diagnose(Path(_run(args["run_id"])["run_dir"])).to_dict()

    def curve_summary(args):
        rows = [json.loads(line) for line in (Path(_run(args["run_id"])["run_dir"]) / "metrics.jsonl").read_text().splitlines() if line.strip()]
        train = [r for r in rows if r.get("type") == "train"]
        picks = [train[int(i * (len(train) - 1) / 9)] for i in range(10)] if len(train) >= 10 else train
        return {"train": [{k: r.get(k) for k in ("step", "tokens", "loss", "lr", "grad_norm", "tokens_per_s")} for r in picks],
                "eval": [{k: r.get(k) for k in ("step", "progress", "val_bpb", "val_bpb_domains")} for r in rows if r.get("type") == "eval"]}

    def read_code(args):
        rel = str(args["path"]).removeprefix("src/pretrainlab/")
        path = (PACKAGE_DIR / rel).resolve()
        if not rel.startswith(READABLE) or PACKAGE_DIR not in path.parents or not path.is_file():
            raise ValueError(f"cannot read {args['path']!r}: readable files are under {', '.join(READABLE)}")
        return path.read_text()[:40_000]

    def propose_config(args):
        changes = args["changes"]
        if not isinstance(changes, dict) or not changes:
            raise ValueError("changes must be a non-empty object of dotted recipe keys, e.g. {\"optim.lr\": 0.02}")
        apply_overrides(base, [f"{k}={v}" for k, v in changes.items()])  # ValueError names the field
        return Proposal("config", args["hypothesis"], args["rationale"], "llm", values=changes)

    def propose_code_patch(args):
        check_allowed(args["patch"])
        return Proposal("code", args["hypothesis"], args["rationale"], "llm", patch=args["patch"])

    def propose_data_mixture(args):
        weights = args["weights"]
        apply_overrides(base, [f"data.weights={json.dumps(weights)}"])
        return Proposal("data", args["hypothesis"], args["rationale"], "llm", weights={k: float(v) for k, v in weights.items()})

    def write_note(args):
        return {"note": ledger.add_note(args["text"], author=context.get("author", "llm"), campaign_id=context.get("campaign_id"))}

    def fit_scaling_law(args):
        from ..scaling import fit_power_law

        return fit_power_law([p["x"] for p in args["points"]], [p["y"] for p in args["points"]])

    def _run(run_id):
        row = ledger.get_run(ledger.resolve_run(str(run_id)))
        if row is None:
            raise ValueError(f"no run {run_id!r}")
        return row

    why = {"hypothesis": {"type": "string"}, "rationale": {"type": "string"}}
    return [
        Tool("list_runs", "This campaign's runs, best val_bpb first.", _schema({"status": {"type": "string"}, "limit": {"type": "integer"}}, []), campaign_runs),
        Tool("compare_runs", "Recipe diff and metric deltas of 2-6 runs.", _schema({"run_ids": {"type": "array", "items": {"type": "string"}}}, ["run_ids"]), compare_runs),
        Tool("run_findings", "The run doctor's diagnosis of a run (loss spikes, stalls, divergence, ...).", _schema({"run_id": {"type": "string"}}, ["run_id"]), run_findings),
        Tool("curve_summary", "A run's loss curve at 10 points and its evaluations.", _schema({"run_id": {"type": "string"}}, ["run_id"]), curve_summary),
        Tool("read_code", "Read a harness source file, e.g. model/gpt.py or train/optim.py.", _schema({"path": {"type": "string"}}, ["path"]), read_code),
        Tool("propose_config", "Propose recipe field changes (dotted keys -> values) to test against the incumbent.",
             _schema({**why, "changes": {"type": "object"}}, ["hypothesis", "rationale", "changes"]), propose_config),
        Tool("propose_code_patch", "Propose a unified diff against src/pretrainlab/model/ or src/pretrainlab/train/.",
             _schema({**why, "patch": {"type": "string"}}, ["hypothesis", "rationale", "patch"]), propose_code_patch),
        Tool("propose_data_mixture", "Propose domain sampling weights, e.g. {\"code\": 1, \"docs\": 2}.",
             _schema({**why, "weights": {"type": "object"}}, ["hypothesis", "rationale", "weights"]), propose_data_mixture),
        Tool("write_note", "Write a note into the campaign's research log.", _schema({"text": {"type": "string"}}, ["text"]), write_note),
        Tool("fit_scaling_law", "Fit y = a * x^-b + c to points [{x, y}] (x: params, tokens or FLOPs; y: val_bpb).",
             _schema({"points": {"type": "array", "items": {"type": "object"}}}, ["points"]), fit_scaling_law),
    ]
