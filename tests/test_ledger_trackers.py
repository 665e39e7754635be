"""`runs push` / `train --log-to`: every metrics row arrives in the tracker, read back with the
tracker's own reader. TensorBoard for real (dev extra); MLflow and W&B only when installed."""

import json

import pytest
from conftest import tiny_overrides

from pretrainlab import api


@pytest.fixture(scope="module")
def run_dir(corpus_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("tracked") / "run"
    api.train_run("tiny-cpu", tiny_overrides(corpus_dir, **{"budget.tokens": 1024 * 6, "train.eval_every": 2}), out, echo=False, ledger=False)
    return out


def rows(run_dir, kind):
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["type"] == kind]


def test_tensorboard_gets_every_step(run_dir, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    res = api.push_run(str(run_dir), "tensorboard", dest=str(tmp_path / "tb"))
    train, evals = rows(run_dir, "train"), rows(run_dir, "eval")
    assert res["num_rows"] == len(train) + len(evals) and res["dest"] == str(tmp_path / "tb")
    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0, "tensors": 0})  # 0 = keep everything
    acc.Reload()
    loss = acc.Scalars("train/loss")
    assert [e.step for e in loss] == [r["step"] for r in train] == list(range(1, 7))
    assert [e.value for e in loss] == pytest.approx([r["loss"] for r in train], rel=1e-6)
    assert [e.step for e in acc.Scalars("eval/val_bpb")] == [r["step"] for r in evals] == [2, 4, 6]
    assert [e.value for e in acc.Scalars("eval/val_bpb.code")] == pytest.approx([r["val_bpb_domains"]["code"] for r in evals], rel=1e-6)
    assert [e.step for e in acc.Scalars("train/grad_norm")] == list(range(1, 7))


def test_train_log_to_tensorboard(corpus_dir, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    api.train_run("tiny-cpu", tiny_overrides(corpus_dir, **{"budget.tokens": 1024 * 3}), out, echo=False, log_to="tensorboard")
    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3]
    assert len(api.list_runs()) == 1  # and it was registered as well


def test_mlflow_gets_every_step(run_dir, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # newer MLflow keeps the offline file store behind this switch
    from mlflow.tracking import MlflowClient

    uri = (tmp_path / "mlruns").as_uri()
    res = api.push_run(str(run_dir), "mlflow", dest=uri)
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("pretrainlab")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.data.tags["pretrainlab.run_id"] == res["run_id"] and run.data.params["model.n_layer"] == "2"
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert sorted(m.step for m in history) == [r["step"] for r in rows(run_dir, "train")]
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "eval/val_bpb")) == [2, 4, 6]


def test_wandb_offline_gets_every_step(run_dir, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    res = api.push_run(str(run_dir), "wandb", dest=str(tmp_path))
    assert res["num_rows"] == len(rows(run_dir, "train")) + len(rows(run_dir, "eval"))
    assert list(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))
