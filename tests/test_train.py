"""The trainer end to end: run directory contents, budgets, accumulation, divergence."""

import json
import math

import pytest
from conftest import cli, set_args, tiny_overrides

from pretrainlab import api
from pretrainlab import eval as evaluation


def read_rows(run_dir, kind="train"):
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["type"] == kind]


def test_end_to_end_cli_run(corpus_dir, tmp_path):
    out = tmp_path / "run"
    res = cli("train", "--recipe", "tiny-cpu", *set_args(tiny_overrides(corpus_dir, **{"budget.tokens": 40960, "train.eval_every": 20})),
              "--out", str(out), "--json")
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["status"] == "ok" and summary["steps"] == 40 and summary["tokens"] == 40960
    assert 0 < summary["val_bpb"] < 6.0  # learned: a uniform byte model scores 8.0
    assert set(summary["val_bpb_domains"]) >= {"code", "docs"}
    for key in ("params", "seconds", "tokens_per_s", "mfu", "peak_mem_mb"):
        assert key in summary
    assert {p.name for p in out.iterdir()} >= {"recipe.json", "metrics.jsonl", "summary.json", "provenance.json", "log.txt"}
    rows = read_rows(out)
    assert [r["step"] for r in rows] == list(range(1, 41))
    assert rows[-1]["loss"] < rows[0]["loss"] - 1.0
    for key in ("loss", "lr", "grad_norm", "max_layer_grad_norm", "max_grad_layer", "tokens_per_s", "mfu", "data_wait_frac", "peak_mem_mb"):
        assert key in rows[0], key
    assert all(0 <= r["data_wait_frac"] <= 1 for r in rows)
    evals = read_rows(out, "eval")
    assert [e["step"] for e in evals] == [20, 40]  # periodic + final
    assert evals[-1]["val_bpb"] == summary["val_bpb"]
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["eval_module_sha256"] == evaluation.module_sha256()
    assert prov["seed"] == 0 and prov["data_manifest_sha256"] and prov["packages"]["torch"]
    assert prov["device_type"] != "cpu" or prov["attention_kernel"] == "cpu"  # on CUDA: the kernel asked for first
    recipe = json.loads((out / "recipe.json").read_text())
    assert recipe["model"]["vocab_size"] == 256  # resolved from the corpus


def test_time_budget_stops_on_time(corpus_dir, tmp_path):
    run_dir, summary = api.train_run("tiny-cpu", tiny_overrides(corpus_dir, **{"budget.seconds": 1.5}), tmp_path / "r", echo=False)
    assert summary["status"] == "ok"
    assert 1.5 <= summary["seconds"] < 3.0
    rows = read_rows(run_dir)
    assert rows[-1]["train_seconds"] >= 1.5 and rows[-2]["train_seconds"] < 1.5


def test_wall_limit_ends_as_timeout(corpus_dir, tmp_path):
    _, s = api.train_run("tiny-cpu", tiny_overrides(corpus_dir, **{"budget.tokens": 10**9, "budget.wall_limit_s": 2}), tmp_path / "r", echo=False)
    assert s["status"] == "timeout" and s["tokens"] < 10**9
    assert s["val_bpb"] is not None  # the model trained so far is still scored


def test_flops_budget(corpus_dir, tmp_path):
    _, s = api.train_run("tiny-cpu", tiny_overrides(corpus_dir, **{"budget.flops": 1e9}), tmp_path / "r", echo=False)
    assert s["tokens"] * s["flops_per_token"] >= 1e9
    assert (s["tokens"] - 1024) * s["flops_per_token"] < 1e9


def test_gradient_accumulation_matches_one_big_batch(corpus_dir, tmp_path):
    base = tiny_overrides(corpus_dir, **{"budget.tokens": 8192})
    _, big = api.train_run("tiny-cpu", base, tmp_path / "a", echo=False)
    _, acc = api.train_run("tiny-cpu", base + ["train.micro_batch_rows=4"], tmp_path / "b", echo=False)
    a, b = read_rows(tmp_path / "a"), read_rows(tmp_path / "b")
    for ra, rb in zip(a, b):
        assert ra["loss"] == pytest.approx(rb["loss"], rel=1e-4)
    assert big["val_bpb"] == pytest.approx(acc["val_bpb"], rel=1e-4)


def test_lr_far_too_high_fails_fast_as_diverged(corpus_dir, tmp_path):
    res = cli("train", "--recipe", "tiny-cpu", "--out", str(tmp_path / "r"),
              *set_args(tiny_overrides(corpus_dir, **{"budget.tokens": 1024 * 400, "optim.name": "adamw", "optim.lr": 5.0,
                                                      "optim.grad_clip": 0, "optim.warmup_frac": 0, "model.logit_softcap": 0})))
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["status"] == "diverged", res.stderr
    assert res.returncode == 3
    assert summary["steps"] < 100  # stopped early instead of burning 400 steps
    assert "val_bpb" in summary


def test_seed_changes_init_and_data(corpus_dir, tmp_path):
    _, s0 = api.train_run("tiny-cpu", tiny_overrides(corpus_dir, **{"budget.tokens": 4096}), tmp_path / "a", echo=False)
    _, s0b = api.train_run("tiny-cpu", tiny_overrides(corpus_dir, **{"budget.tokens": 4096}), tmp_path / "b", echo=False)
    _, s1 = api.train_run("tiny-cpu", tiny_overrides(corpus_dir, **{"budget.tokens": 4096, "seed": 1}), tmp_path / "c", echo=False)
    assert s0["val_bpb"] == s0b["val_bpb"]  # deterministic on CPU
    assert s0["val_bpb"] != s1["val_bpb"]
    assert math.isfinite(s1["val_bpb"])


def test_a_run_can_be_repeated_from_its_recipe_json(corpus_dir, tmp_path):
    first, s1 = api.train_run("tiny-cpu", tiny_overrides(corpus_dir, **{"budget.tokens": 2048}), tmp_path / "a", echo=False)
    again, s2 = api.train_run(str(first / "recipe.json"), [], tmp_path / "b", echo=False)
    assert s2["val_bpb"] == s1["val_bpb"]
    res = cli("train", "--recipe", str(tmp_path / "nope.json"))
    assert res.returncode == 2 and "nope.json" in res.stderr


def test_bf16_autocast_path_runs_on_cpu(corpus_dir, tmp_path):
    # the GPU default; on CPU it exercises the same autocast code path
    _, s = api.train_run("tiny-cpu", tiny_overrides(corpus_dir, **{"budget.tokens": 4096, "train.dtype": "bfloat16"}), tmp_path / "r", echo=False)
    assert s["status"] == "ok" and math.isfinite(s["val_bpb"]) and s["val_bpb"] < 8


def test_time_budget_warmup_starts_above_zero(corpus_dir, tmp_path):
    run, _ = api.train_run("tiny-cpu", tiny_overrides(corpus_dir, **{"budget.seconds": 1.0, "optim.warmup_frac": 0.1}), tmp_path / "r", echo=False)
    rows = read_rows(run)
    assert all(r["lr"] > 0 for r in rows[:3])  # no step wasted at LR 0, even before a step duration is known
    assert rows[0]["lr"] < rows[len(rows) // 4]["lr"]  # and still warming up
