"""Checkpoints and exact resume: SIGKILL then --resume reproduces the uninterrupted run;
SIGTERM checkpoints and exits as preempted."""

import json
import signal
import time

import forked
from conftest import cli, set_args, tiny_overrides

from pretrainlab import api
from pretrainlab.train import EXIT_PREEMPTED


def rows(run_dir, kind="train"):
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["type"] == kind]


def start(args):
    return forked.Forked(args)  # its own process, forked after torch's import (tests/forked.py)


def wait_for(predicate, proc, timeout=120):
    deadline = time.time() + timeout
    while not predicate():
        assert proc.poll() is None, f"run ended early: {proc.communicate()[1][-2000:]}"
        assert time.time() < deadline, "timed out waiting"
        time.sleep(0.02)


def test_sigkill_then_resume_reproduces_the_loss_sequence_exactly(corpus_dir, tmp_path):
    overrides = tiny_overrides(corpus_dir, **{"budget.tokens": 1024 * 60, "train.ckpt_every": 10, "train.eval_every": 25,
                                              "data.weights": "code:2,docs:1"})
    ref = tmp_path / "reference"
    assert cli("train", "--recipe", "tiny-cpu", *set_args(overrides), "--out", str(ref)).returncode == 0

    run = tmp_path / "killed"
    proc = start(["train", "--recipe", "tiny-cpu", *set_args(overrides), "--out", str(run)])
    wait_for(lambda: (run / "ckpt" / "step_00000030.pt").exists(), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "summary.json").exists()

    res = cli("train", "--resume", str(run))
    assert res.returncode == 0, res.stderr
    assert "resumed" in res.stderr
    got, want = rows(run), rows(ref)
    assert [r["step"] for r in got] == list(range(1, 61))
    assert [r["loss"] for r in got] == [r["loss"] for r in want]  # bit-exact
    assert [r["grad_norm"] for r in got] == [r["grad_norm"] for r in want]
    assert [r["domain_rows"] for r in got] == [r["domain_rows"] for r in want]  # same data order
    assert [e["val_bpb"] for e in rows(run, "eval")] == [e["val_bpb"] for e in rows(ref, "eval")]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "ok"
    assert summary["val_bpb"] == json.loads((ref / "summary.json").read_text())["val_bpb"]
    prov = json.loads((run / "provenance.json").read_text())
    assert prov["resumes"][0]["step"] >= 30
    superseded = run / "metrics.superseded.jsonl"  # rows logged between the checkpoint and the kill, if any
    if superseded.exists():
        assert all(r["step"] > prov["resumes"][0]["step"] for r in map(json.loads, superseded.read_text().splitlines()))


def test_rows_a_resume_recomputes_are_kept_aside(corpus_dir, tmp_path):
    """Resuming from an older checkpoint recomputes later steps; the first attempt's rows
    move to metrics.superseded.jsonl (tagged with the resume step) instead of vanishing."""
    run = tmp_path / "run"
    overrides = tiny_overrides(corpus_dir, **{"budget.tokens": 1024 * 30, "train.ckpt_every": 10, "train.ckpt_keep": 3})
    assert cli("train", "--recipe", "tiny-cpu", *set_args(overrides), "--out", str(run)).returncode == 0
    first = {r["step"]: r["loss"] for r in rows(run)}
    (run / "ckpt" / "step_00000030.pt").unlink()  # the newest checkpoint is lost: resume from step 20
    assert cli("train", "--resume", str(run)).returncode == 0
    moved = [json.loads(line) for line in (run / "metrics.superseded.jsonl").read_text().splitlines()]
    assert [r["step"] for r in moved if r["type"] == "train"] == list(range(21, 31))
    assert {r["superseded_by_resume_at"] for r in moved} == {20}
    assert [r["loss"] for r in moved if r["type"] == "train"] == [first[s] for s in range(21, 31)]
    assert [r["step"] for r in rows(run)] == list(range(1, 31))
    f = next(f for f in api.diagnose_run(str(run)).findings if f.id == "replaced_attempt")
    assert f.severity == "info" and f.steps == (21, 30) and f.evidence["resume_step"] == 20


def test_sigterm_checkpoints_and_exits_preempted(corpus_dir, tmp_path):
    run = tmp_path / "run"
    proc = start(["train", "--recipe", "tiny-cpu", *set_args(tiny_overrides(corpus_dir, **{"budget.tokens": 1024 * 300})), "--out", str(run)])
    wait_for(lambda: (run / "metrics.jsonl").exists() and len((run / "metrics.jsonl").read_text().splitlines()) >= 5, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_PREEMPTED, err
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "preempted"
    step = summary["steps"]
    assert (run / "ckpt" / f"step_{step:08d}.pt").exists()
    assert rows(run)[-1]["step"] == step
    assert step < 300
    # ... and the preempted run continues where it stopped
    res = cli("train", "--resume", str(run))
    assert res.returncode == 0, res.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["steps"] == 300
    assert [r["step"] for r in rows(run)] == list(range(1, 301))


def test_resume_of_a_finished_run_without_a_checkpoint_points_to_a_new_out(corpus_dir, tmp_path):
    """Not a loop: a finished run with nothing to continue is not trained again in place, and
    the message points to a new --out, never back to --resume."""
    run = tmp_path / "run"
    overrides = set_args(tiny_overrides(corpus_dir, **{"budget.tokens": 2048}))
    assert cli("train", "--recipe", "tiny-cpu", *overrides, "--out", str(run)).returncode == 0
    res = cli("train", "--resume", str(run))
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
    assert "already finished (status ok) and has no checkpoint" in res.stderr and "--out NEW_DIR" in res.stderr
    assert res.stderr.count("--resume") == 1  # only where it names the flag it was given
    assert json.loads((run / "summary.json").read_text())["status"] == "ok"  # untouched


def kill_after(args, predicate):
    proc = start(args)
    wait_for(predicate, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_truncated_newest_checkpoint_falls_back_to_the_previous_one(corpus_dir, tmp_path):
    overrides = tiny_overrides(corpus_dir, **{"budget.tokens": 1024 * 60, "train.ckpt_every": 10, "train.ckpt_keep": 3,
                                              "train.eval_every": 25})
    ref = tmp_path / "reference"
    assert cli("train", "--recipe", "tiny-cpu", *set_args(overrides), "--out", str(ref)).returncode == 0
    run = tmp_path / "run"
    kill_after(["train", "--recipe", "tiny-cpu", *set_args(overrides), "--out", str(run)],
               lambda: (run / "ckpt" / "step_00000030.pt").exists())
    *_, previous, newest = sorted((run / "ckpt").glob("step_*.pt"))
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # a disk that filled up, a copy cut short

    res = cli("train", "--resume", str(run))
    assert res.returncode == 0, res.stderr
    warnings = [line for line in res.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and f"checkpoint {newest} is unreadable" in warnings[0] and previous.name in warnings[0]
    resume_step = int(previous.stem.split("_")[1])
    assert f"resumed {run} at step {resume_step}" in res.stderr
    assert [r["loss"] for r in rows(run)] == [r["loss"] for r in rows(ref)]  # bit-exact, as if never interrupted
    assert [e["val_bpb"] for e in rows(run, "eval")] == [e["val_bpb"] for e in rows(ref, "eval")]
    assert json.loads((run / "summary.json").read_text())["val_bpb"] == json.loads((ref / "summary.json").read_text())["val_bpb"]
    assert json.loads((run / "provenance.json").read_text())["resumes"][-1]["step"] == resume_step


def test_sigkill_before_the_first_checkpoint_then_resume_restarts_it(corpus_dir, tmp_path):
    """The run dir has recipe.json and some rows but no checkpoint: --out refuses (it holds a
    run) and points to --resume, and --resume restarts it from step 0 with the same recipe,
    keeping the killed attempt's rows aside. It then matches an uninterrupted run exactly."""
    # long enough that the kill always lands mid-run, even on a busy machine
    overrides = tiny_overrides(corpus_dir, **{"budget.tokens": 1024 * 200, "train.eval_at_start": "true"})
    ref = tmp_path / "reference"
    assert cli("train", "--recipe", "tiny-cpu", *set_args(overrides), "--out", str(ref)).returncode == 0
    run = tmp_path / "run"
    kill_after(["train", "--recipe", "tiny-cpu", *set_args(overrides), "--out", str(run)],
               lambda: len(rows(run)) >= 5 if (run / "metrics.jsonl").exists() else False)
    assert not (run / "ckpt").exists() and not (run / "summary.json").exists()
    killed_rows = (run / "metrics.jsonl").read_text().splitlines()
    run_id = json.loads((run / "provenance.json").read_text())["run_id"]

    res = cli("train", "--recipe", "tiny-cpu", *set_args(overrides), "--out", str(run))
    assert res.returncode == 2 and f"--resume {run}" in res.stderr  # --out: this dir holds a run, continue it
    res = cli("train", "--resume", str(run))
    assert res.returncode == 0, res.stderr
    warnings = [line for line in res.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "no intact checkpoint" in warnings[0] and "restarting it from step 0" in warnings[0]
    assert [r["loss"] for r in rows(run)] == [r["loss"] for r in rows(ref)]
    assert [(e["step"], e["val_bpb"]) for e in rows(run, "eval")] == [(e["step"], e["val_bpb"]) for e in rows(ref, "eval")]
    assert json.loads((run / "summary.json").read_text())["status"] == "ok"
    moved = [json.loads(line) for line in (run / "metrics.superseded.jsonl").read_text().splitlines()]
    assert len(moved) == len(killed_rows) and {r["superseded_by_resume_at"] for r in moved} == {0}
    assert moved[0]["type"] == "eval" and moved[0]["step"] == 0  # the killed attempt's step-0 eval is kept aside, not doubled
    prov = json.loads((run / "provenance.json").read_text())
    assert prov["run_id"] == run_id and prov["resumes"][-1]["step"] == 0 and prov["resumes"][-1]["restarted"]
    assert {r["run_id"]: r["status"] for r in api.list_runs()}[run_id] == "ok"  # the ledger has it once, finished


def test_every_checkpoint_unreadable_restarts_from_step_0(corpus_dir, tmp_path):
    overrides = tiny_overrides(corpus_dir, **{"budget.tokens": 1024 * 100, "train.ckpt_every": 10})
    ref = tmp_path / "reference"
    assert cli("train", "--recipe", "tiny-cpu", *set_args(overrides), "--out", str(ref)).returncode == 0
    run = tmp_path / "run"
    kill_after(["train", "--recipe", "tiny-cpu", *set_args(overrides), "--out", str(run)],
               lambda: (run / "ckpt" / "step_00000010.pt").exists())
    for ckpt in (run / "ckpt").glob("step_*.pt"):
        ckpt.write_bytes(b"")
    res = cli("train", "--resume", str(run))
    assert res.returncode == 0, res.stderr
    assert "restarting it from step 0" in res.stderr and "Traceback" not in res.stderr
    assert [r["loss"] for r in rows(run)] == [r["loss"] for r in rows(ref)]
