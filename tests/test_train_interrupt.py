"""Ctrl-C during `pretrainlab train`: the first SIGINT checkpoints and exits as preempted (as
SIGTERM does) and says how to continue; `train --resume` then goes on from that checkpoint."""

import json
import signal

import forked
from conftest import cli, set_args, tiny_overrides
from test_resume import rows, start, wait_for

from pretrainlab.train import EXIT_PREEMPTED


def test_ctrl_c_checkpoints_exits_preempted_and_resumes_from_there(corpus_dir, tmp_path):
    run = tmp_path / "run"
    # 30 ms a step at least (the loader's fault-injection sleep, no CPU): on a fast machine the 55 steps
    # after the fifth took ~1 s and once ended before the signal reached the trainer
    overrides = set_args(tiny_overrides(corpus_dir, **{"budget.tokens": 1024 * 60, "faults.data_sleep_s": 0.03}))
    proc = start(["train", "--recipe", "tiny-cpu", *overrides, "--out", str(run)])
    wait_for(lambda: (run / "metrics.jsonl").exists() and len((run / "metrics.jsonl").read_text().splitlines()) >= 5, proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_PREEMPTED, err
    assert "KeyboardInterrupt" not in err and "Traceback" not in err
    said = [line for line in err.splitlines() if "SIGINT" in line]
    assert len(said) == 1 and "exiting as preempted" in said[0] and f"pretrainlab train --resume {run}" in said[0]
    assert "preempted" in out  # the end-of-run table, as for SIGTERM
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "preempted" and summary["error"] is None
    step = summary["steps"]
    assert 0 < step < 60 and (run / "ckpt" / f"step_{step:08d}.pt").exists()

    res = cli("train", "--resume", str(run))
    assert res.returncode == 0, res.stderr
    assert f"resumed {run} at step {step}" in res.stderr and "no intact checkpoint" not in res.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["steps"] == 60
    assert [r["step"] for r in rows(run)] == list(range(1, 61))


def test_an_ignored_sigint_stays_ignored(corpus_dir, tmp_path):
    """A trainer started with SIGINT ignored (a script's background job, nohup) leaves it so: a Ctrl-C meant for the
    terminal's foreground job does not stop it."""
    run = tmp_path / "run"
    overrides = set_args(tiny_overrides(corpus_dir, **{"budget.tokens": 1024 * 40, "faults.data_sleep_s": 0.03}))
    proc = forked.Forked(["train", "--recipe", "tiny-cpu", *overrides, "--out", str(run)], sigint_ignored=True)
    wait_for(lambda: (run / "metrics.jsonl").exists() and len((run / "metrics.jsonl").read_text().splitlines()) >= 5, proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "SIGINT" not in err
    assert json.loads((run / "summary.json").read_text())["status"] == "ok" and len(rows(run)) == 40
