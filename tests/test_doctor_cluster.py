"""The doctor's cluster findings over a campaign (doctor/cluster.py, `pretrainlab doctor
--campaign`): queue wait from the attempts a real campaign loop recorded on the simulated
runner, idle GPUs and restarts from recorded rows, and a healthy campaign with none. The
straggler on a real 2-process run is in test_ddp.py, restarts on a real Ray cluster with a
killed node in test_campaigns_on_ray.py."""

import json
import math

import numpy as np
import pytest
from conftest import cli
from test_doctor import DOMAINS, write_run

from pretrainlab import api
from pretrainlab.doctor import cluster
from pretrainlab.doctor.cluster import Attempt, CampaignRun, diagnose_campaign
from pretrainlab.errors import UserError
from pretrainlab.ledger import Ledger
from pretrainlab.research.campaign import CampaignConfig
from pretrainlab.research.simulate import Landscape, SimulatedRunner, simulate
from pretrainlab.runners.base import Attempt as RunnerAttempt


def rows(n=200, step_s=0.5, **fields):
    """Healthy train rows; each field given is a function of the 0-based step index."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        r = {"type": "train", "step": i + 1, "tokens": (i + 1) * 1024, "loss": 3.0 * math.exp(-i / 150) + 1.0 + 0.01 * rng.standard_normal(),
             "lr": 0.015, "grad_norm": 0.5, "max_layer_grad_norm": 0.3, "max_grad_layer": "block0", "tokens_per_s": 1024 / step_s,
             "mfu": None, "step_s": step_s, "data_wait_frac": 0.01, "peak_mem_mb": 100.0, "train_seconds": (i + 1) * step_s,
             "domain_rows": {d: 4 for d in DOMAINS}, "batch_hash": f"h{i}", "cpu_s": step_s}
        r.update({k: f(i) for k, f in fields.items()})
        out.append(r)
    return out


GPU = {"device": "NVIDIA H100 80GB HBM3", "device_type": "cuda"}


def simulated_campaign(tmp_path, parallel: int, run_s: float = 60.0):
    """A real campaign loop (screen decision, 3 seeds) on the simulated runner: its runs queue
    behind `parallel` slots on the virtual clock, and the loop records every attempt."""
    cfg = CampaignConfig(recipe="tiny-cpu", budget_runs=8, seeds=3, strategy="random", decision="screen", parallel=parallel)
    out = simulate(cfg, Landscape(seed=0), tmp_path, runner=SimulatedRunner(Landscape(seed=0), parallel, run_s=run_s))
    return out["ledger"], out["campaign_id"]


def test_runs_queued_behind_full_slots_are_a_queue_wait_finding(tmp_path):
    ledger, cid = simulated_campaign(tmp_path, parallel=1)
    attempts = ledger.list_attempts(cid)
    assert len({a["run_key"] for a in attempts}) >= 6 and all(a["node"] == "simulated" and a["run_s"] > 0 for a in attempts)
    assert any(a["queue_s"] >= 60 for a in attempts)  # a replicate seed waited at least one run behind the single slot
    report = api.diagnose_campaign(cid, db=str(tmp_path / "ledger.db"))
    (f,) = [f for f in report.findings if f.id == "queue_wait"]
    assert f.severity == "info" and f.evidence["num_waited"] >= 1 and f.evidence["place_seconds"] == 0
    assert f.evidence["queue_seconds"] == pytest.approx(sum(a["queue_s"] for a in attempts))
    assert "more runs ready than slots" in f.cause and "--parallel" in f.fix
    assert "restarts" not in report.ids()


def test_a_campaign_with_a_slot_for_every_run_has_no_cluster_findings(tmp_path):
    ledger, cid = simulated_campaign(tmp_path, parallel=8)
    assert all(a["queue_s"] == 0 and a["place_s"] == 0 for a in ledger.list_attempts(cid))
    report = api.diagnose_campaign(cid, db=str(tmp_path / "ledger.db"))
    assert report.findings == [] and report.verdict == "healthy"
    ran = {c.detector: c.ran for c in report.checks}
    assert ran["queue_wait"] and ran["restarts"] and not ran["idle_accelerator"]  # simulated runs log no GPU utilisation


def test_slots_ray_could_not_place_are_a_warning(tmp_path):
    runs = [CampaignRun(f"e{i}-s0", None, [Attempt(1, "n1", 0.0, 45.0, 60.0, "ok")]) for i in range(3)]
    runs.append(CampaignRun("e3-s0", None, [Attempt(1, "n2", 0.0, 0.5, 60.0, "ok")]))
    (f,) = diagnose_campaign("c", runs).findings
    assert f.id == "queue_wait" and f.severity == "warning" and f.evidence["num_slow_placement"] == 3
    assert "waited for the cluster" in f.cause and "ray status" in f.fix


def test_a_gpu_held_at_low_utilisation_is_idle_and_the_loader_is_named_when_it_stalls(tmp_path):
    idle = write_run(tmp_path / "idle", rows(gpu_util=lambda i: 12.0 if i >= 60 else 95.0), provenance=GPU)
    report = diagnose_campaign("c", [CampaignRun("idle-s0", idle, [Attempt(1, "n1", 0, 0, 100, "ok")])])
    (f,) = report.findings
    assert f.id == "idle_accelerator" and f.evidence["runs"][0]["run"] == "idle-s0" and f.evidence["runs"][0]["node"] == "n1"
    ev = f.evidence["runs"][0]["evidence"]
    assert ev["idle_seconds"] == pytest.approx(140 * 0.5) and ev["median_util_idle"] == 12.0
    assert "host cannot keep the GPU busy" in f.cause
    stalled = write_run(tmp_path / "stalled", rows(gpu_util=lambda i: 10.0, data_wait_frac=lambda i: 0.6), provenance=GPU)
    (g,) = [x for x in api.diagnose_run(str(stalled)).findings if x.id == "idle_accelerator"]
    assert "data loader" in g.cause and g.evidence["median_data_wait_idle"] == pytest.approx(0.6)


def test_busy_gpus_and_short_dips_are_not_idle(tmp_path):
    busy = write_run(tmp_path / "busy", rows(gpu_util=lambda i: 90.0 + (i % 7)), provenance=GPU)
    dip = write_run(tmp_path / "dip", rows(gpu_util=lambda i: 5.0 if 100 <= i < 140 else 92.0), provenance=GPU)  # 20 s of 100
    cpu = write_run(tmp_path / "cpu", rows())
    for run in (busy, dip, cpu):
        assert "idle_accelerator" not in api.diagnose_run(str(run)).ids()
    check = next(c for c in api.diagnose_run(str(cpu)).checks if c.detector == "idle_accelerator")
    assert not check.ran and "no gpu_util" in check.note


def test_restarts_count_the_steps_trained_twice_and_name_a_node_that_keeps_losing_runs(tmp_path):
    runs = []
    for i in range(2):  # each lost on node-bad after step 120, resumed from its checkpoint at step 100 on node-ok
        d = write_run(tmp_path / f"e{i}-s0", rows(), provenance={"resumes": [{"step": 100}]})
        superseded = [{**r, "superseded_by_resume_at": 100} for r in rows(120)[100:]]
        (d / "metrics.superseded.jsonl").write_text("".join(json.dumps(r) + "\n" for r in superseded))
        runs.append(CampaignRun(f"e{i}-s0", d, [Attempt(1, "node-bad" + "0" * 30, 0, 1, 70, "lost", "The actor died: node failed"),
                                                Attempt(2, "node-ok", 0, 1, 60, "ok")]))
    runs.append(CampaignRun("e2-s0", write_run(tmp_path / "e2-s0", rows()), [Attempt(1, "node-ok", 0, 1, 100, "ok")]))
    (f,) = diagnose_campaign("c", runs).findings
    assert f.id == "restarts" and f.severity == "warning" and f.evidence["num_runs"] == 2
    assert f.evidence["steps_redone"] == 40 and f.evidence["redone_seconds"] == pytest.approx(40 * 0.5)
    assert f.evidence["recurring_nodes"] == ["node-bad" + "0" * 30] and "node node-bad0000 (2 runs)" in f.summary
    assert f.evidence["reasons"] == {"The actor died: node failed": 2}
    # one loss is the cluster's: reported, no node named
    (g,) = diagnose_campaign("c", runs[1:]).findings
    assert g.id == "restarts" and g.evidence["recurring_nodes"] == [] and "drain" not in g.fix


def test_the_ledger_keeps_each_attempt_and_the_cli_prints_the_report(tmp_path, monkeypatch):
    db = str(tmp_path / "ledger.db")
    ledger = Ledger(db)
    cid = ledger.create_campaign("c")
    lost = RunnerAttempt(1, "n1", submitted_at=100.0, started_at=130.0, ended_at=150.0, lost="node died")
    again = RunnerAttempt(2, "n2", submitted_at=150.0, started_at=151.0, ended_at=200.0)
    ledger.record_attempts(cid, "e1-s0", tmp_path / "e1-s0", "ok", [lost.to_row(queued_at=40.0), again.to_row(queued_at=40.0)])
    a, b = ledger.list_attempts(cid)
    assert (a["attempt"], a["node"], a["queue_s"], a["place_s"], a["run_s"], a["outcome"], a["reason"]) == (1, "n1", 60.0, 30.0, 20.0, "lost", "node died")
    assert (b["queue_s"], b["place_s"], b["run_s"], b["outcome"], b["reason"]) == (0.0, 1.0, 49.0, "ok", None)
    with pytest.raises(UserError, match="campaign 'nope' is not in the ledger"):
        ledger.record_attempts("nope", "k", tmp_path, "ok", [])
    res = cli("doctor", "--campaign", cid, "--db", db, "--json")
    assert res.returncode == 0, res.stderr
    d = json.loads(res.stdout)
    assert d["kind"] == "pretrainlab.doctor.campaign_report" and d["campaign"] == cid and d["facts"]["attempts"] == 2
    assert [f["id"] for f in d["findings"]] == ["queue_wait", "restarts"]
    text = cli("doctor", "--campaign", cid[:6], "--db", db)
    assert text.returncode == 0 and "Runs restarted (restarts)" in text.stdout and "not checked:" in text.stdout
    for args, message in ((["doctor"], "doctor needs a RUN"), (["doctor", "x", "--campaign", cid], "drop the RUN argument")):
        res = cli(*args, "--db", db)
        assert res.returncode == 2 and message in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr


def test_thresholds_are_documented():
    doc = (cluster.__file__.rsplit("/src/", 1)[0] + "/docs/doctor.md")
    text = open(doc).read()
    for name in ("queue_wait", "idle_accelerator", "restarts", "doctor --campaign"):
        assert name in text, name
