"""Multi-process DDP through torchrun (gloo on CPU): same global batch, same training."""

import json
import os
import statistics
import subprocess
import sys

import pytest
from conftest import set_args, tiny_overrides

from pretrainlab import api
from pretrainlab.doctor.cluster import Attempt, CampaignRun, diagnose_campaign


def rows(run_dir):
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["type"] == "train"]


@pytest.mark.slow
def torchrun(overrides, out, nproc=2):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           "-m", "pretrainlab", "train", "--recipe", "tiny-cpu", *set_args(overrides), "--out", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads((out / "summary.json").read_text())


def test_two_processes_match_one_process_with_accumulation(corpus_dir, tmp_path):
    overrides = tiny_overrides(corpus_dir, **{"budget.tokens": 1024 * 12, "train.micro_batch_rows": 8, "train.eval_every": 6})
    _, single = api.train_run("tiny-cpu", overrides, tmp_path / "single", echo=False)  # 2 micro-steps of 8 rows
    summary = torchrun(overrides, tmp_path / "ddp")
    assert summary["status"] == "ok" and summary["world_size"] == 2 and summary["tokens"] == single["tokens"]
    for a, b in zip(rows(tmp_path / "single"), rows(tmp_path / "ddp")):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
        assert a["domain_rows"] == b["domain_rows"]
    assert summary["val_bpb"] == pytest.approx(single["val_bpb"], rel=1e-4)


@pytest.mark.slow
def test_doctor_names_a_straggling_rank_from_times_taken_before_the_sync(corpus_dir, tmp_path):
    """After the gradient all-reduce every rank has waited for the slowest, so step times
    look even; each rank's own time before the first sync shows the straggler."""
    overrides = tiny_overrides(corpus_dir, **{"budget.tokens": 1024 * 40, "train.micro_batch_rows": 8, "faults.slow_rank": 1, "faults.slow_rank_s": 0.03})
    torchrun(overrides, tmp_path / "ddp")
    train = rows(tmp_path / "ddp")
    assert all(len(r["rank_presync_s"]) == 2 and len(r["rank_data_s"]) == 2 for r in train)
    step = [r["rank_step_s"] for r in train[5:]]
    # the sync hides it here: unsynchronised, rank 1 would take 0.03 s longer on every step (the median, since one step
    # of a loaded machine's scheduling can differ by as much)
    assert statistics.median(abs(a - b) for a, b in step) < 0.015
    report = api.diagnose_run(str(tmp_path / "ddp"))
    f = next(f for f in report.findings if f.id == "straggler")
    assert f.evidence["rank"] == 1 and f.evidence["basis"] == "time before the first sync" and f.evidence["ratio"] > 1.15
    assert "data loading is slower" not in f.cause
    # the campaign view names the run (and its node) with the straggling rank
    run = CampaignRun("ddp-s0", tmp_path / "ddp", [Attempt(1, "node-a", 0.0, 0.0, 60.0, "ok")])
    (c,) = [c for c in diagnose_campaign("c", [run]).findings if c.id == "straggler"]
    assert c.evidence["runs"][0]["run"] == "ddp-s0" and c.evidence["runs"][0]["node"] == "node-a"
    assert c.evidence["runs"][0]["evidence"]["rank"] == 1 and c.summary.startswith("run ddp-s0: rank 1")
