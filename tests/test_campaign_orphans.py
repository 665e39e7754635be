"""A campaign loop SIGKILLed while its runs train leaves them running as orphans: `resume`
stops them cleanly, continues each from its checkpoint, and never lets two processes write
one run directory."""

import json
import os
import subprocess
import sys
import time

from conftest import tiny_overrides

from pretrainlab.ledger import Ledger
from pretrainlab.research import manage
from pretrainlab.train.rundir_lock import lock_holder


def held_job_locks(workdir):
    return [p for p in (workdir / "logs").glob("*.job") if lock_holder(p) is not None]


def test_resume_stops_orphans_of_a_killed_loop_and_loses_nothing(corpus_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("PRETRAINLAB_WORKSPACE", str(tmp_path))
    monkeypatch.delenv("PRETRAINLAB_DB", raising=False)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("ANTHROPIC_API_KEY", None)
    cfg = dict(recipe="tiny-cpu", overrides=tiny_overrides(corpus_dir, **{"train.ckpt_every": 20}), run_budget="122880tok",
               budget_runs=4, parallel=2, seeds=2, strategy="random", early_stop=False)
    code = ("import json, sys; from pretrainlab.research import manage; from pretrainlab.research.campaign import CampaignConfig; "
            "manage.start(CampaignConfig(**json.loads(sys.argv[1])), echo=False)")
    proc = subprocess.Popen([sys.executable, "-c", code, json.dumps(cfg)], env=env, stderr=subprocess.PIPE, text=True)
    campaigns = tmp_path / "runs" / "campaigns"
    deadline = time.time() + 180
    while len(list(campaigns.glob("*/*/ckpt/step_*.pt"))) < 2:  # both slots training, with a checkpoint each
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read() if proc.poll() is not None else "timeout"
        time.sleep(0.05)
    proc.kill()  # only the loop: its runs are in sessions of their own and keep training
    proc.wait()
    (campaign_id,) = [c["id"] for c in Ledger().list_campaigns()]
    workdir = campaigns / campaign_id
    orphans = held_job_locks(workdir)
    assert orphans, "the killed loop's runs should still be running"

    manage.resume(campaign_id, echo=False)

    assert not held_job_locks(workdir)  # nothing left running
    st = manage.status(campaign_id)
    runs = Ledger().list_runs(campaign=campaign_id, columns=("run_dir", "experiment_id", "seed", "status"))
    assert st["status"] == "done" and 3 <= len(runs) <= 4  # the budget, less what the policy could not fit
    assert len({(r["experiment_id"], r["seed"]) for r in runs}) == len(runs)  # none run twice
    status_of = {r["run_dir"]: r["status"] for r in runs}
    for orphan in orphans:  # each orphan was stopped (checkpointed), then continued, not started over, and counted
        run_dir = workdir / orphan.name.removesuffix(".spec.job")
        prov = json.loads((run_dir / "provenance.json").read_text())
        assert prov.get("resumes") and status_of[str(run_dir)] == "ok", run_dir
    hidden = Ledger().get_campaign(campaign_id)["config"]["hidden_test"]  # scored once, at the close, for the report
    assert 1.0 < hidden["test"]["baseline"] < 8.0 and hidden["runs"]["baseline"] == 2
    assert hidden["overfitting_gap"] == hidden["gain_val"] - hidden["gain_test"]
    from pretrainlab.research.report import write_report

    page = write_report(Ledger(), campaign_id, tmp_path / "report.html", with_findings=False).read_text()
    assert "Hidden test split" in page and f"{hidden['overfitting_gap']:+.4f}" in page
    for metrics in workdir.glob("*/metrics.jsonl"):  # one writer per run dir: every step logged once, in order
        steps = [r["step"] for r in map(json.loads, metrics.read_text().splitlines()) if r.get("type") == "train"]
        assert steps == list(range(1, len(steps) + 1)), metrics

    # a later close (a resume with nothing left to run) reuses each run's kept test score; weights that changed are scored again
    from pretrainlab.runners import scoring

    scored = []

    def fake_score(run_dir, *args, **kwargs):
        scored.append(run_dir.name)
        return {"splits": {"test": {"val_bpb": 5.0}}}

    monkeypatch.setattr(scoring, "score_run", fake_score)
    manage.resume(campaign_id, echo=False)
    assert scored == [] and Ledger().get_campaign(campaign_id)["config"]["hidden_test"] == hidden
    changed = workdir / f"{hidden['baseline_experiment']}-s0" / "model.pt"
    os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 10**9))
    manage.resume(campaign_id, echo=False)
    assert scored == [changed.parent.name]


def test_a_loop_sent_sigterm_stops_its_runs_as_ctrl_c_does(corpus_dir, tmp_path, monkeypatch):
    """SIGTERM (a `kill`, `timeout`, a shutdown) killed the loop at once and left its runs training, in sessions of their
    own, with no one to stop them; now it unwinds the loop as Ctrl-C does: the runs are stopped, and resume continues."""
    monkeypatch.setenv("PRETRAINLAB_WORKSPACE", str(tmp_path))
    monkeypatch.delenv("PRETRAINLAB_DB", raising=False)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("ANTHROPIC_API_KEY", None)
    cfg = dict(recipe="tiny-cpu", overrides=tiny_overrides(corpus_dir), run_budget="2e6tok", budget_runs=4, parallel=2, seeds=2,
               strategy="random", early_stop=False)
    code = ("import json, sys; from pretrainlab.research import manage; from pretrainlab.research.campaign import CampaignConfig; "
            "manage.start(CampaignConfig(**json.loads(sys.argv[1])), echo=False)")
    proc = subprocess.Popen([sys.executable, "-c", code, json.dumps(cfg)], env=env, stderr=subprocess.PIPE, text=True)
    campaigns = tmp_path / "runs" / "campaigns"
    deadline = time.time() + 180
    while len(list(campaigns.glob("*/*/metrics.jsonl"))) < 2:  # both slots training
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read() if proc.poll() is not None else "timeout"
        time.sleep(0.05)
    proc.terminate()
    assert proc.wait(120) == 143, proc.stderr.read()
    (campaign_id,) = [c["id"] for c in Ledger().list_campaigns()]
    assert not held_job_locks(campaigns / campaign_id)  # no run left training
