"""SIGKILL a running campaign at an arbitrary moment; `resume` loses no finished run and
repeats none."""

import json
import os
import signal
import subprocess
import sys
import time

from conftest import tiny_overrides

from pretrainlab.ledger import Ledger
from pretrainlab.research import manage


def test_sigkill_then_resume(corpus_dir, tmp_path, monkeypatch):
    env = {**os.environ, "PRETRAINLAB_WORKSPACE": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    env.pop("PRETRAINLAB_DB", None)
    env.pop("ANTHROPIC_API_KEY", None)
    cfg = dict(recipe="tiny-cpu", overrides=tiny_overrides(corpus_dir), run_budget="16384tok", budget_runs=6, parallel=2, seeds=2,
               strategy="random", decision="paired")
    code = ("import json, sys; from pretrainlab.research import manage; from pretrainlab.research.campaign import CampaignConfig; "
            "manage.start(CampaignConfig(**json.loads(sys.argv[1])))")
    proc = subprocess.Popen([sys.executable, "-c", code, json.dumps(cfg)], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    campaigns = tmp_path / "runs" / "campaigns"
    deadline = time.time() + 120
    while time.time() < deadline:  # kill once some runs finished and others are in flight
        done = list(campaigns.glob("*/*/summary.json")) if campaigns.exists() else []
        if len(done) >= 3:
            break
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the loop and its training processes, mid-flight
    proc.wait()
    # runs that had finished (a run the loop stopped early at its rung has a summary too, status "preempted": with
    # the loop killed before it recorded that stop, resume continues it from its checkpoint, which is no repeat)
    finished_before = {p.parent.name: s for p in campaigns.glob("*/*/summary.json")
                       if (s := json.loads(p.read_text())).get("status") in ("ok", "timeout")}

    monkeypatch.setenv("PRETRAINLAB_WORKSPACE", str(tmp_path))
    monkeypatch.delenv("PRETRAINLAB_DB", raising=False)
    (campaign_id,) = [c["id"] for c in Ledger().list_campaigns()]
    manage.resume(campaign_id, echo=False)
    runs = Ledger().list_runs(campaign=campaign_id, columns=("run_id", "run_dir", "experiment_id", "seed", "status"))
    keys = [(r["experiment_id"], r["seed"]) for r in runs]
    stopped_early = sum(r["status"] != "ok" for r in runs)  # a run stopped at a rung counts only its share of the budget
    assert len(keys) == len(set(keys)) and 6 <= len(keys) <= 6 + stopped_early  # the whole budget, each (experiment, seed) once
    for name, summary in finished_before.items():  # finished runs kept as they were, not re-run
        run_dir = campaigns / campaign_id / name
        assert json.loads((run_dir / "summary.json").read_text())["finished_at"] == summary["finished_at"]
    assert manage.status(campaign_id)["status"] == "done"


def test_stop_then_resume(corpus_dir, tmp_path, monkeypatch):
    """`research stop` from another process: in-flight runs checkpoint and are continued by
    `resume`, not judged as failures."""
    monkeypatch.setenv("PRETRAINLAB_WORKSPACE", str(tmp_path))
    monkeypatch.delenv("PRETRAINLAB_DB", raising=False)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("ANTHROPIC_API_KEY", None)
    cfg = dict(recipe="tiny-cpu", overrides=tiny_overrides(corpus_dir, **{"train.ckpt_every": 10}), run_budget="81920tok",
               budget_runs=3, parallel=2, seeds=2, strategy="random", early_stop=False, decision="paired")
    code = ("import json, sys; from pretrainlab.research import manage; from pretrainlab.research.campaign import CampaignConfig; "
            "manage.start(CampaignConfig(**json.loads(sys.argv[1])), echo=False)")
    proc = subprocess.Popen([sys.executable, "-c", code, json.dumps(cfg)], env=env, stderr=subprocess.PIPE, text=True)
    campaigns = tmp_path / "runs" / "campaigns"
    deadline = time.time() + 120
    while not list(campaigns.glob("*/*/ckpt/step_*.pt")):  # runs in flight, with a checkpoint
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read() if proc.poll() is not None else "timeout"
        time.sleep(0.05)
    (campaign_id,) = [c["id"] for c in Ledger().list_campaigns()]
    manage.stop(campaign_id)
    assert proc.wait(timeout=120) == 0
    assert manage.status(campaign_id)["status"] == "stopped"
    assert not Ledger().list_decisions(campaign_id=campaign_id)  # interrupted runs are not verdicts
    manage.resume(campaign_id, echo=False)
    st = manage.status(campaign_id)
    assert st["status"] == "done" and st["runs"] == 3
    resumed = [json.loads(p.read_text()) for p in campaigns.glob("*/*/provenance.json")]
    assert any(p.get("resumes") for p in resumed)  # runs in flight at the stop continued from their checkpoints
