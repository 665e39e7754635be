"""Replay a run into an experiment tracker the user already has: TensorBoard, MLflow or
Weights & Biases. Optional (extras `tensorboard`, `mlflow`, `wandb`); never required.

Every row of metrics.jsonl goes in at its own step (no down-sampling): train rows as
train/<field>, eval rows as eval/val_bpb and eval/val_bpb.<domain>. The resolved recipe goes
in as params/config, summary.json as final metrics, and the ledger's run id as the name.

    pretrainlab runs push RUN --to tensorboard [--dest DIR]     # default RUN_DIR/tensorboard
    pretrainlab runs push RUN --to mlflow [--dest TRACKING_URI] # default: MLFLOW_TRACKING_URI, else MLflow's
    pretrainlab runs push RUN --to wandb [--dest DIR]           # project: WANDB_PROJECT or "pretrainlab";
                                                                # WANDB_MODE=offline writes locally
"""

from __future__ import annotations

import importlib.util
import json
import math
import time
from pathlib import Path

from .. import rundir
from ..errors import UserError
from .compare import flatten_recipe
from .rundir import run_id_of

TRACKERS = {
    "tensorboard": ("tensorboard", "pip install 'pretrainlab[tensorboard]'"),
    "mlflow": ("mlflow", "pip install 'pretrainlab[mlflow]'"),
    "wandb": ("wandb", "pip install 'pretrainlab[wandb]'"),
}


def require(to: str) -> None:
    """Fail before anything runs when the tracker is unknown or not installed."""
    if to not in TRACKERS:
        raise UserError(f"--to/--log-to {to!r}: use one of {', '.join(TRACKERS)}")
    module, install = TRACKERS[to]
    if importlib.util.find_spec(module) is None:
        raise UserError(f"logging to {to} needs the {module} package: {install}")


def scalars(rows: list[dict]) -> list[tuple[int, dict[str, float]]]:
    """(step, {tag: value}) for every metrics row, numeric fields only."""
    out = []
    for row in rows:
        kind = row.get("type", "other")
        tags: dict[str, float] = {}
        for key, value in row.items():
            if key in ("type", "step"):
                continue
            name = "val_bpb" if key == "val_bpb_domains" else key
            if _number(value):
                tags[f"{kind}/{name}"] = float(value)
            elif isinstance(value, dict):
                # name.key, not name/key: MLflow's file store cannot hold both eval/val_bpb and eval/val_bpb/code
                tags.update({f"{kind}/{name}.{k}": float(v) for k, v in value.items() if _number(v)})
        if "step" in row and tags:
            out.append((int(row["step"]), tags))
    return out


def push(run_dir: Path, to: str, dest: str | None = None) -> dict:
    """Replay RUN_DIR into the tracker; returns where it went and how many rows."""
    require(to)
    run_dir = Path(run_dir)
    metrics_path = run_dir / rundir.METRICS
    if not metrics_path.is_file():
        raise UserError(f"{metrics_path} not found: push needs the run directory on this machine")
    recipe = rundir.load_json(run_dir / rundir.RECIPE)
    summary = rundir.read_summary(run_dir) or {}
    run_id = run_id_of(run_dir)
    rows = scalars(list(rundir.iter_metrics(metrics_path)))
    params = {k: (v if isinstance(v, (int, float, str, bool)) else json.dumps(v)) for k, v in flatten_recipe(recipe).items()}
    final = {f"summary/{k}": float(v) for k, v in summary.items() if _number(v)}
    final.update({f"summary/val_bpb.{k}": float(v) for k, v in (summary.get("val_bpb_domains") or {}).items() if _number(v)})
    where = {"tensorboard": _tensorboard, "mlflow": _mlflow, "wandb": _wandb}[to](run_dir, run_id, rows, params, final, summary, dest)
    return {"run_id": run_id, "to": to, "dest": where, "num_rows": len(rows),
            "num_values": sum(len(t) for _, t in rows), "num_params": len(params)}


def _tensorboard(run_dir, run_id, rows, params, final, summary, dest) -> str:
    from torch.utils.tensorboard import SummaryWriter

    log_dir = Path(dest) if dest else run_dir / "tensorboard"
    writer = SummaryWriter(log_dir=str(log_dir))
    for step, tags in rows:
        for tag, value in tags.items():
            writer.add_scalar(tag, value, global_step=step)
    writer.add_text("recipe", "```\n" + json.dumps(params, indent=1) + "\n```")
    hparams = {k: ("None" if v is None else v) for k, v in params.items()}
    writer.add_hparams(hparams, final or {"summary/status_ok": float(summary.get("status") == "ok")}, run_name=".")
    writer.close()
    return str(log_dir)


def _mlflow(run_dir, run_id, rows, params, final, summary, dest) -> str:
    import os

    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=dest) if dest else MlflowClient()
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "pretrainlab")
    experiment = client.get_experiment_by_name(name)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(name)
    run = client.create_run(experiment_id, run_name=run_id, tags={"pretrainlab.run_id": run_id, "pretrainlab.run_dir": str(run_dir),
                                                                   "pretrainlab.status": str(summary.get("status"))})
    rid = run.info.run_id
    now_ms = int(time.time() * 1000)
    param_list = [Param(k, str(v)[:500]) for k, v in params.items()]
    for i in range(0, len(param_list), 100):  # MLflow: at most 100 params per batch
        client.log_batch(rid, params=param_list[i:i + 100])
    metrics = [Metric(tag, value, now_ms, step) for step, tags in rows for tag, value in tags.items()]
    last_step = max((s for s, _ in rows), default=0)
    metrics += [Metric(tag, value, now_ms, last_step) for tag, value in final.items()]
    for i in range(0, len(metrics), 1000):  # MLflow: at most 1000 metrics per batch
        client.log_batch(rid, metrics=metrics[i:i + 1000], tags=[RunTag("pretrainlab.recipe", params.get("name", ""))] if i == 0 else [])
    client.set_terminated(rid, status="FINISHED" if summary.get("status") in ("ok", "timeout") else "FAILED")
    return client.tracking_uri if hasattr(client, "tracking_uri") else str(dest)


def _wandb(run_dir, run_id, rows, params, final, summary, dest) -> str:
    import os

    import wandb

    run = wandb.init(project=os.environ.get("WANDB_PROJECT", "pretrainlab"), name=run_id, config=params, dir=str(dest) if dest else None,
                     tags=["pretrainlab"], notes=str(run_dir), reinit=True)
    merged: dict[int, dict] = {}
    for step, tags in rows:  # W&B needs one log call per step, steps increasing
        merged.setdefault(step, {}).update(tags)
    for step in sorted(merged):
        run.log(merged[step], step=step)
    run.summary.update(final)
    where = run.dir
    run.finish(exit_code=0 if summary.get("status") in ("ok", "timeout") else 1)
    return where


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and (not isinstance(v, float) or not math.isinf(v))
