"""A run of the lab's own code is scored by its trainer once it has trained (scoring_worker.after_training): the
protocol on the job's two pipes, what the trainer does when the job will not score it, and the real runner's path."""

import json
import os
import signal
import struct
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import ROOT, tiny_overrides

from pretrainlab.scoring_worker import START, TRAINED


def start_trainer(tmp_path, corpus_dir, **extra):
    """`pretrainlab train ... --score-fds R,W` with two pipes; returns (process, write end, read end)."""
    trainer_in, to_trainer = os.pipe()
    from_trainer, trainer_out = os.pipe()
    sets = {"budget.seconds": 0, "budget.tokens": 4096, **extra}
    cmd = [sys.executable, "-m", "pretrainlab", "train", "--recipe", "tiny-cpu", "--out", str(tmp_path / "run"), "--no-ledger",
           "--score-fds", f"{trainer_in},{trainer_out}"]
    for o in tiny_overrides(corpus_dir, **sets):
        cmd += ["--set", o]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, pass_fds=(trainer_in, trainer_out),
                            env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    os.close(trainer_in)
    os.close(trainer_out)
    return proc, to_trainer, from_trainer


def read_exact(fd: int, n: int, timeout: float = 120) -> bytes:
    import select

    buf = b""
    deadline = time.time() + timeout
    while len(buf) < n:
        assert select.select([fd], [], [], max(0.0, deadline - time.time()))[0], f"no answer after {len(buf)} of {n} bytes"
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            break
        buf += chunk
    return buf


def test_the_trainer_says_it_trained_then_serves_the_saved_weights_logits(tmp_path, corpus_dir):
    proc, to_trainer, from_trainer = start_trainer(tmp_path, corpus_dir)
    message = read_exact(from_trainer, 8)
    assert message[:4] == TRAINED and struct.unpack("<i", message[4:])[0] == 0, proc.stderr.read()[-2000:] if proc.poll() else message
    os.write(to_trainer, START)
    x = np.random.default_rng(0).integers(0, 256, size=(3, 64)).astype("<i4")
    os.write(to_trainer, np.array([3, 64], dtype="<i4").tobytes() + x.tobytes())
    rows, seq_len, vocab = np.frombuffer(read_exact(from_trainer, 12), dtype="<i4")
    assert (rows, seq_len) == (3, 64) and vocab >= 256
    got = np.frombuffer(read_exact(from_trainer, 4 * 3 * 64 * int(vocab)), dtype="<f4").reshape(3, 64, int(vocab))
    # the logits of the weights the run saved, computed here with the lab's own model
    from pretrainlab import rundir
    from pretrainlab.config import Recipe
    from pretrainlab.model import GPT

    run = tmp_path / "run"
    model = GPT(Recipe.from_dict(rundir.load_json(run / rundir.RECIPE)).model)
    model.load_state_dict(torch.load(run / "model.pt", weights_only=True))
    with torch.no_grad():
        want = model.eval()(torch.from_numpy(x.astype(np.int64))).float().numpy()
    np.testing.assert_allclose(got, want, atol=1e-4)
    os.write(to_trainer, np.zeros(2, dtype="<i4").tobytes())  # rows = 0: done
    assert proc.wait(timeout=60) == 0
    assert read_exact(from_trainer, 1, timeout=5) == b""  # nothing more on the stream


def test_a_trainer_the_job_will_not_score_exits_with_the_trainings_code(tmp_path, corpus_dir):
    proc, to_trainer, from_trainer = start_trainer(tmp_path, corpus_dir)
    assert read_exact(from_trainer, 8)[:4] == TRAINED
    os.close(to_trainer)  # the job decided not to score (a stop, a status it does not score)
    assert proc.wait(timeout=60) == 0
    # a stop while it waits or scores ends it at once: there is nothing left to checkpoint
    proc, to_trainer, from_trainer = start_trainer(tmp_path / "again", corpus_dir)
    assert read_exact(from_trainer, 8)[:4] == TRAINED
    os.write(to_trainer, START)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == -signal.SIGTERM
    os.close(to_trainer)


def test_a_run_that_did_not_train_to_the_end_says_its_code_and_exits(tmp_path, corpus_dir):
    proc, to_trainer, from_trainer = start_trainer(tmp_path, corpus_dir, **{
        "budget.tokens": 1024 * 400, "optim.name": "adamw", "optim.lr": 5.0, "optim.grad_clip": 0, "optim.warmup_frac": 0,
        "model.logit_softcap": 0})
    message = read_exact(from_trainer, 8)
    assert message[:4] == TRAINED and struct.unpack("<i", message[4:])[0] == 3  # diverged
    assert proc.wait(timeout=60) == 3  # without waiting for the job's word: there is nothing to score
    os.close(to_trainer)


def test_a_bad_score_fds_is_one_line(tmp_path, corpus_dir):
    for bad in ("5", "x,y", "900,901", "0,1"):  # (the standard streams: a person's terminal, never the job's pipes)
        res = subprocess.run([sys.executable, "-m", "pretrainlab", "train", "--recipe", "tiny-cpu", "--out", str(tmp_path / "r"),
                              "--score-fds", bad], capture_output=True, text=True, timeout=60)
        assert res.returncode == 2 and res.stderr.count("\n") == 1 and "--score-fds" in res.stderr, res.stderr
        assert not (tmp_path / "r").exists()


DISK_AT_END = """
import json, sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from conftest import tiny_overrides
from pretrainlab.runners import job, limits
from pretrainlab.runners.base import Job
from pretrainlab.runners.local import LocalRunner

root = Path({root!r})
runner = LocalRunner(num_slots=1, log_dir=root / "logs")
spec = runner._spec(Job("plain", "tiny-cpu", root / "runs" / "plain", tiny_overrides(Path({corpus!r}), **{{"budget.seconds": 0,
                    "budget.tokens": 4096}}), score_path=root / "scores" / "plain.json"), 1, False, {{}})
(root / "spec.json").write_text(json.dumps(spec))
real = limits.disk_use


def disk_use(path, *args, **kwargs):  # as if the trainer wrote past its cap in its last second: seen only at the end
    use = real(path, *args, **kwargs)
    if not kwargs.get("holders") and (Path(path) / "summary.json").exists():
        use.bytes += 10 << 30
    return use


limits.disk_use = disk_use
job.run_caps = lambda spec, run_dir: (None, 1 << 30, None)
sys.exit(job.main(str(root / "spec.json")))
"""


def test_a_trainer_found_over_its_disk_cap_after_training_is_not_waited_for_forever(tmp_path, corpus_dir):
    """The trainer has said it trained and waits for the job's word; the job's last look finds the run over its disk cap:
    the run crashes out of disk at once (the job once waited for the trainer's exit while the trainer waited for it)."""
    code = DISK_AT_END.format(tests=str(ROOT / "tests"), root=str(tmp_path), corpus=str(corpus_dir))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert res.returncode == 7, res.stderr[-2000:]  # EXIT_OUT_OF_DISK
    summary = json.loads((tmp_path / "runs" / "plain" / "summary.json").read_text())
    assert summary["status"] == "crashed" and "out of disk" in summary["error"] and not (tmp_path / "scores" / "plain.json").exists()
