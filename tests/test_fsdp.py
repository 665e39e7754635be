"""Multi-node torchrun and FSDP2 with real processes (gloo on CPU): the same global batch
gives the same training on 1 process, on 2 "nodes" and sharded over 2 processes; sharded
checkpoints resume on another number of processes."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import cli, set_args, tiny_overrides

from pretrainlab import api
from pretrainlab.config import Recipe, apply_overrides

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]


def rows(run_dir, kind="train"):
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["type"] == kind]


def summary(run_dir):
    return json.loads((run_dir / "summary.json").read_text())


def train_args(overrides, out):
    return ["-m", "pretrainlab", "train", "--recipe", "tiny-cpu", *set_args(overrides), "--out", str(out)]


def torchrun(args, nproc=2):
    res = subprocess.run([*TORCHRUN, "--standalone", "--nproc_per_node", str(nproc), *args], capture_output=True, text=True,
                         env=ENV, timeout=300)
    # the first failing rank's traceback comes before torchrun's own summary
    assert res.returncode == 0, res.stderr[:2500] + "\n...\n" + res.stderr[-1500:]
    return res


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_same_training(got, want, rel):
    a, b = rows(got), rows(want)
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for x, y in zip(a, b):
        assert x["loss"] == pytest.approx(y["loss"], rel=rel), x["step"]
        assert x["grad_norm"] == pytest.approx(y["grad_norm"], rel=rel * 10), x["step"]  # a sum of squares: more rounding
        assert x["domain_rows"] == y["domain_rows"]
    assert summary(got)["tokens"] == summary(want)["tokens"]
    assert summary(got)["val_bpb"] == pytest.approx(summary(want)["val_bpb"], rel=rel)


@pytest.mark.slow
def test_two_nodes_with_c10d_rendezvous_match_one_process_with_accumulation(corpus_dir, tmp_path):
    """Two torchrun agents, one process each, meet through a c10d rendezvous as two nodes
    would: global ranks pick the batch rows, only global rank 0 writes the run directory."""
    overrides = tiny_overrides(corpus_dir, **{"budget.tokens": 1024 * 12, "train.micro_batch_rows": 8, "train.eval_every": 6})
    api.train_run("tiny-cpu", overrides, tmp_path / "single", echo=False)  # 2 micro-steps of 8 rows
    out = tmp_path / "two-nodes"
    node = [*TORCHRUN, "--nnodes", "2", "--nproc_per_node", "1", "--rdzv_backend", "c10d",
            "--rdzv_endpoint", f"127.0.0.1:{free_port()}", "--rdzv_id", "test-two-nodes", *train_args(overrides, out)]
    nodes = [subprocess.Popen(node, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV) for _ in range(2)]
    for proc in nodes:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
    assert summary(out)["status"] == "ok" and summary(out)["world_size"] == 2
    assert_same_training(out, tmp_path / "single", rel=1e-5)
    assert all(len(r["rank_step_s"]) == 2 for r in rows(out))
    assert (out / "log.txt").read_text().count("| ddp | grad_accum 1") == 1  # one writer: global rank 0


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_fsdp_on_two_processes_matches_one_process(corpus_dir, tmp_path, optimizer):
    """Sharded parameters, gradients and optimizer state (Muon through whole-matrix
    Newton-Schulz) train as the unsharded single process with accumulation does, up to
    float reduction order; grad clipping is active (grad norms exceed optim.grad_clip=1).
    33 evaluation windows per domain: rank 0 scores 17 in 2 forward passes, rank 1 16 in 1 and
    a filler pass (FSDP gathers parameters inside forward, so both must make as many)."""
    overrides = tiny_overrides(corpus_dir, **{"budget.tokens": 1024 * 12, "train.micro_batch_rows": 4, "train.eval_every": 6,
                                              "optim.name": optimizer, "eval.tokens_per_domain": 64 * 33, "eval.batch_rows": 16})
    api.train_run("tiny-cpu", overrides, tmp_path / "single", echo=False)  # 4 micro-steps of 4 rows
    out = tmp_path / "fsdp"
    torchrun(train_args([*overrides, "train.parallel=fsdp"], out))  # 2 micro-steps of 4 rows on each process
    assert summary(out)["status"] == "ok" and summary(out)["world_size"] == 2
    assert_same_training(out, tmp_path / "single", rel=1e-4)
    assert max(r["grad_norm"] for r in rows(out)) > 1.0
    train = rows(out)  # the doctor's per-rank times, as under DDP
    assert all(len(r["rank_step_s"]) == len(r["rank_presync_s"]) == len(r["rank_data_s"]) == 2 for r in train)
    assert "straggler" not in {f.id for f in api.diagnose_run(str(out)).findings}
    # model.pt (what the lab's scorer loads) holds the whole model under the plain keys
    got, want = torch.load(out / "model.pt"), torch.load(tmp_path / "single" / "model.pt")
    assert got.keys() == want.keys()
    assert all(got[k].shape == want[k].shape and torch.allclose(got[k], want[k], rtol=1e-3, atol=1e-5) for k in got)


@pytest.mark.slow
def test_fsdp_numerics_on_sharded_tensors():
    """Grad norm, clipping and Muon on DTensors with uneven shards against the unsharded math."""
    res = torchrun([str(Path(__file__).with_name("fsdp_numerics.py"))])
    assert res.stdout.strip().endswith("ok")


@pytest.mark.slow
def test_fsdp_preempted_on_two_processes_resumes_on_one_then_on_two(corpus_dir, tmp_path):
    """SIGTERM to the torchrun group: every process writes its shards and the run exits as
    preempted. It resumes on 1 process (past a torn temporary checkpoint and a damaged newer
    one), finishes with the uninterrupted run's losses and token count; a checkpoint that 1
    process wrote resumes on 2."""
    overrides = tiny_overrides(corpus_dir, **{"budget.tokens": 1024 * 40, "train.micro_batch_rows": 8, "train.ckpt_every": 5,
                                              "train.parallel": "fsdp"})
    ref = tmp_path / "reference"
    api.train_run("tiny-cpu", overrides, ref, echo=False)  # one process, no torchrun: fsdp over a one-process group
    assert summary(ref)["status"] == "ok" and (ref / "ckpt" / "step_00000040" / ".metadata").is_file()

    run = tmp_path / "run"
    proc = subprocess.Popen([*TORCHRUN, "--standalone", "--nproc_per_node", "2", *train_args(overrides, run)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, start_new_session=True)
    deadline = time.time() + 120
    while not (run / "ckpt" / "step_00000005").exists():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.time() < deadline, "no checkpoint in time"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGTERM)  # the agent and both workers, as a scheduler's preemption does
    proc.communicate(timeout=120)
    stopped = summary(run)
    assert stopped["status"] == "preempted" and stopped["steps"] < 40, stopped
    step = stopped["steps"]
    assert (run / "ckpt" / f"step_{step:08d}" / ".metadata").is_file()
    assert [r["step"] for r in rows(run)] == list(range(1, step + 1))
    # a kill during a save leaves a temporary directory; a copy cut short, a checkpoint without its metadata
    (run / "ckpt" / f".step_{step + 1:08d}.tmp").mkdir()
    (run / "ckpt" / f".step_{step + 1:08d}.tmp" / "__0_0.distcp").write_bytes(b"torn")
    damaged = run / "ckpt" / f"step_{step + 2:08d}"
    shutil.copytree(run / "ckpt" / f"step_{step:08d}", damaged)
    (damaged / ".metadata").unlink()

    res = cli("train", "--resume", str(run), env_extra={"OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    warnings = [line for line in res.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and f"checkpoint {damaged} is unreadable (incomplete: no .metadata)" in warnings[0], warnings
    assert f"resumed {run} at step {step} " in res.stderr and "on 1 process(es), saved by 2" in res.stderr
    assert summary(run)["status"] == "ok" and summary(run)["world_size"] == 1
    assert_same_training(run, ref, rel=1e-4)
    assert not list((run / "ckpt").glob(".step_*"))  # the torn one was cleared by the next save

    # the last checkpoint lost: the one before, written by 1 process, resumes on 2
    again = tmp_path / "again"
    shutil.copytree(run, again)
    shutil.rmtree(again / "ckpt" / "step_00000040")
    res = torchrun(["-m", "pretrainlab", "train", "--resume", str(again)])
    assert "resumed" in res.stderr and "at step 35 (35,840 tokens) on 2 process(es), saved by 1" in res.stderr
    assert summary(again)["status"] == "ok" and summary(again)["world_size"] == 2
    assert_same_training(again, ref, rel=1e-4)


def test_unknown_parallel_mode_is_a_one_line_error(tmp_path):
    with pytest.raises(ValueError, match="train.parallel must be 'ddp' or 'fsdp', got 'zero3'"):
        apply_overrides(Recipe(), ["train.parallel=zero3"])
    res = cli("train", "--recipe", "tiny-cpu", "--set", "train.parallel=zero3", "--out", str(tmp_path / "run"))
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1 and "train.parallel" in res.stderr
    assert not (tmp_path / "run").exists()
