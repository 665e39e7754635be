"""Multi-process DDP through torchrun (gloo on CPU): same global batch, same training."""

import json
import os
import subprocess
import sys

import pytest

from conftest import set_args, tiny_overrides
from pretrainlab import api


def rows(run_dir):
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["type"] == "train"]


@pytest.mark.slow
def test_two_processes_match_one_process_with_accumulation(corpus_dir, tmp_path):
    overrides = tiny_overrides(corpus_dir, **{"budget.tokens": 1024 * 12, "train.micro_batch_rows": 8, "train.eval_every": 6})
    _, single = api.train_run("tiny-cpu", overrides, tmp_path / "single", echo=False)  # 2 micro-steps of 8 rows

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "pretrainlab", "train", "--recipe", "tiny-cpu", *set_args(overrides), "--out", str(tmp_path / "ddp")]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["world_size"] == 2 and summary["tokens"] == single["tokens"]
    for a, b in zip(rows(tmp_path / "single"), rows(tmp_path / "ddp")):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
        assert a["domain_rows"] == b["domain_rows"]
    assert summary["val_bpb"] == pytest.approx(single["val_bpb"], rel=1e-4)
