"""`research start --runner ray` on a real two-node Ray cluster on this machine (`ray start`
twice: a head and a second node, one CPU each, so two runs in flight are on different nodes):
a tiny campaign end to end, then the same with the second node killed while a run with a
checkpoint is in flight on it. The runner's node bookkeeping is tested in process.

This file runs before test_data_build_ray.py (pytest takes files in name order): a process that
has started and stopped a local Ray instance (`data build --executor ray`) keeps state in the
ray module that makes a later driver's actors on another cluster die at start. The CLI runs
each command in its own process, so only a test session sees both in one process."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import tiny_overrides

from pretrainlab import api, rundir
from pretrainlab.errors import UserError
from pretrainlab.ledger import Ledger
from pretrainlab.research import manage
from pretrainlab.research.campaign import Campaign, CampaignConfig
from pretrainlab.runners import ray as ray_runner
from pretrainlab.runners.ray import RayRunner

# token auth off (hermetic: no ~/.ray/auth_token), and a dead node noticed within ~2 s instead of ~30 s
RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "RAY_health_check_period_ms": "500",
           "RAY_health_check_timeout_ms": "500", "RAY_health_check_failure_threshold": "3"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def wait_for(what: str, check, timeout_s: float, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        value = check()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.2)
    tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
    pytest.skip(f"ray cannot start here: {what} not ready after {timeout_s:.0f} s\n{tail}")


@pytest.fixture(scope="module")
def cluster():
    """A head node and a second node (custom resource `node2`), each `ray start --block` in its
    own process group; torn down by killing those groups and the workers Ray started for them."""
    ray = pytest.importorskip("ray", reason="--runner ray needs ray: pip install 'pretrainlab[ray]' (make setup installs it)")
    ray_bin = shutil.which("ray", path=str(Path(sys.executable).parent)) or shutil.which("ray")
    if ray_bin is None:
        pytest.skip("the `ray` command is not installed beside this Python")
    temp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # short: Ray's socket paths must fit in 107 characters
    env = {**os.environ, **RAY_ENV}
    ip = ray.util.get_node_ip_address()
    port = free_port()
    common = ["--block", "--num-cpus=1", f"--temp-dir={temp}", "--object-store-memory=100000000", "--disable-usage-stats",
              f"--dashboard-agent-listen-port={free_port()}"]
    procs = []

    def start(name: str, args: list[str]) -> subprocess.Popen:
        with open(temp / f"{name}.log", "w") as log:
            procs.append(subprocess.Popen([ray_bin, "start", *args, *common], env=env, stdout=log, stderr=subprocess.STDOUT,
                                          start_new_session=True))
        return procs[-1]

    def listening() -> bool:
        with socket.socket() as s:
            return s.connect_ex((ip, port)) == 0

    try:
        head = start("head", ["--head", f"--port={port}", "--include-dashboard=false", f"--ray-client-server-port={free_port()}",
                              f"--dashboard-port={free_port()}"])
        wait_for("the head node", listening, 90, head, temp / "head.log")
        second = start("node2", [f"--address={ip}:{port}", '--resources={"node2": 1}'])
        with pytest.MonkeyPatch.context() as mp:
            for k, v in RAY_ENV.items():
                mp.setenv(k, v)
            try:
                ray.init(address=f"{ip}:{port}", log_to_driver=False)
            except (ConnectionError, RuntimeError) as e:
                pytest.skip(f"ray cannot start here: cannot connect to the test cluster: {e}")
            nodes = wait_for("the second node", lambda: two_alive(ray), 90, second, temp / "node2.log")
            ray.shutdown()  # each test's runner connects by itself, as `research start --ray-address` does
        node2 = next(n["NodeID"] for n in nodes if "node2" in n["Resources"])
        head_id = next(n["NodeID"] for n in nodes if n["NodeID"] != node2)
        yield SimpleNamespace(address=f"{ip}:{port}", head=head_id, node2=node2, node2_proc=second, temp=temp, env=RAY_ENV)
    finally:
        if ray.is_initialized():
            ray.shutdown()
        for proc in procs:
            stop_group(proc)
        for pid in pids_mentioning(f"{temp}/"):  # the workers Ray started (each in a process group of its own)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(temp, ignore_errors=True)


def two_alive(ray) -> list[dict] | None:
    alive = [n for n in ray.nodes() if n["Alive"]]
    return alive if len(alive) == 2 else None


def stop_group(proc: subprocess.Popen) -> None:
    """A test cluster needs no graceful stop: SIGKILL to `ray start` and the daemons in its group."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


def pids_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and entry.name != str(os.getpid()):
            try:
                if text in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


@pytest.fixture
def workspace(tmp_path, monkeypatch, cluster):
    monkeypatch.setenv("PRETRAINLAB_WORKSPACE", str(tmp_path))
    monkeypatch.delenv("PRETRAINLAB_DB", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    for k, v in cluster.env.items():
        monkeypatch.setenv(k, v)
    return tmp_path


def config(corpus_dir, cluster, tokens: int, sets: dict | None = None, **kw) -> CampaignConfig:
    # two runs, started together (the baseline and the first screen): one on each node. No early stopping: a tiny run's
    # rung is its end, and a screen stopped there would end unscored
    base = dict(recipe="tiny-cpu", overrides=tiny_overrides(corpus_dir, **{"train.ckpt_every": 4, **(sets or {})}), run_budget=f"{tokens}tok",
                budget_runs=2, parallel=2, seeds=1, decision="greedy", strategy="random", early_stop=False, runner="ray",
                ray_address=cluster.address)
    base.update(kw)
    return CampaignConfig(**base)


def attempts(workspace: Path, cid: str) -> dict[str, str]:
    """{job key: the Ray node its last attempt ran on}, from the specs the actors wrote."""
    logs = workspace / "runs" / "campaigns" / cid / "logs"
    return {p.name.removesuffix(".spec.json"): rundir.load_json(p)["ray_node"] for p in logs.glob("*.spec.json")}


def test_a_campaign_on_a_two_node_ray_cluster(corpus_dir, workspace, cluster):
    import ray

    cid = manage.start(config(corpus_dir, cluster, 4096), echo=False)
    assert manage.status(cid)["status"] == "done"
    assert not ray.is_initialized()  # the runner connected, so it disconnected
    runs = Ledger().list_runs(campaign=cid, columns=("run_id", "experiment_id", "seed", "status", "val_bpb"))
    keys = [(r["experiment_id"], r["seed"]) for r in runs]
    assert len(runs) == 2 and len(set(keys)) == 2  # every run of the budget, each once
    assert all(r["status"] == "ok" and r["val_bpb"] > 0 for r in runs)
    where = attempts(workspace, cid)
    assert set(where.values()) == {cluster.head, cluster.node2}  # the two slots were on the two nodes
    notes = [n["text"] for n in Ledger().list_notes(campaign_id=cid)]
    assert any(n.startswith("closed done: slot utilisation") for n in notes)
    assert not any("requeued" in n or "excluded" in n for n in notes)
    tries = Ledger().list_attempts(cid)  # one attempt per run, on the node its spec names, placed and run
    assert sorted(a["node"] for a in tries) == sorted(where.values()) and all(a["outcome"] == "ok" and a["run_s"] > 0 for a in tries)
    report = api.diagnose_campaign(cid)
    assert not report.ids() & {"restarts", "straggler", "idle_accelerator"}, report.to_dict()["findings"]


def test_a_run_lost_with_its_node_resumes_on_another(corpus_dir, workspace, cluster, monkeypatch):
    monkeypatch.setattr(ray_runner, "EXCLUDE_AFTER", 1)  # one loss excludes the node (two by default)
    monkeypatch.setattr(Campaign, "record_hidden_test", lambda self: None)  # the close's scoring is the first test's
    killed = {}

    def kill_node2_once_a_run_there_has_a_checkpoint():
        deadline = time.time() + 240
        while time.time() < deadline and not killed:
            for spec_path in (workspace / "runs" / "campaigns").glob("*/logs/*.spec.json"):
                spec = rundir.load_json(spec_path)
                steps = list((Path(spec["run_dir"]) / "ckpt").glob("step_*.pt"))
                if spec.get("ray_node") == cluster.node2 and steps and not rundir.read_summary(Path(spec["run_dir"])):
                    os.killpg(cluster.node2_proc.pid, signal.SIGKILL)  # the node's raylet and agents; its workers follow
                    killed.update(key=spec["key"], run_dir=Path(spec["run_dir"]), steps=len(steps))
                    return
            time.sleep(0.1)

    watcher = threading.Thread(target=kill_node2_once_a_run_there_has_a_checkpoint, daemon=True)
    watcher.start()
    # 128 steps of at least 30 ms each (the loader waits, no CPU): a run must not finish before its node's death reaches
    # it (Ray's workers notice their raylet is gone within a second or two); on a fast idle machine 128 tiny steps took
    # 2 s and the run sometimes finished on the killed node; under load the watcher may first see a late checkpoint
    cid = manage.start(config(corpus_dir, cluster, 131072, {"faults.data_sleep_s": 0.03}), echo=False)
    watcher.join(timeout=1)
    assert killed, "no run reached a checkpoint on the second node"
    ledger = Ledger()
    assert ledger.get_campaign(cid)["status"] == "done"
    runs = ledger.list_runs(campaign=cid, columns=("run_id", "experiment_id", "seed", "status", "run_dir"))
    keys = [(r["experiment_id"], r["seed"]) for r in runs]
    assert len(runs) == 2 and len(set(keys)) == 2 and all(r["status"] == "ok" for r in runs)  # nothing lost, nothing repeated
    (lost,) = [r for r in runs if Path(r["run_dir"]).name == killed["key"]]
    assert attempts(workspace, cid)[killed["key"]] == cluster.head  # it finished on the node that was left
    resumes = rundir.load_json(killed["run_dir"] / rundir.PROVENANCE)["resumes"]
    assert len(resumes) == 1 and resumes[0]["step"] > 0  # from its checkpoint, not from step 0
    exp_notes = [n["text"] for n in ledger.list_notes(experiment_id=lost["experiment_id"])]
    assert any(n.startswith(f"run {killed['key']}: lost on node {cluster.node2[:12]}") and "requeued" in n for n in exp_notes), exp_notes
    campaign_notes = [n["text"] for n in ledger.list_notes(campaign_id=cid)]
    assert any(n.startswith(f"Ray node {cluster.node2[:12]} excluded") for n in campaign_notes), campaign_notes
    # the doctor's view: the lost attempt, its node and why, then the resumed one on the head
    lost_try, final_try = [a for a in ledger.list_attempts(cid) if a["run_key"] == killed["key"]]
    assert (lost_try["node"], lost_try["outcome"], final_try["node"], final_try["outcome"]) == (cluster.node2, "lost", cluster.head, "ok")
    assert lost_try["reason"]
    (f,) = [f for f in api.diagnose_campaign(cid).findings if f.id == "restarts"]
    (row,) = f.evidence["runs"]
    assert row["run"] == killed["key"] and row["lost"][0]["node"] == cluster.node2[:12] and row["resumes"] == [resumes[0]["step"]]
    assert f.evidence["lost_by_node"] == {cluster.node2[:12]: 1} and f.evidence["recurring_nodes"] == []  # once: the cluster's


def test_a_node_is_excluded_after_repeated_losses_unless_it_is_the_last(monkeypatch):
    runner = object.__new__(RayRunner)  # the bookkeeping alone: no cluster
    runner.losses, runner.excluded, runner.events, runner.exclude_after = {}, set(), [], 2
    alive = [{"NodeID": "a" * 40}, {"NodeID": "b" * 40}]
    monkeypatch.setattr(runner, "_nodes", lambda: alive)
    runner._node_lost("a" * 40, "e1-s0")
    assert not runner.excluded and not runner.events  # once may be the cluster's doing
    runner._node_lost("a" * 40, "e2-s0")
    assert runner.excluded == {"a" * 40}
    (event,) = runner.take_events()
    assert event.kind == "excluded" and "e1-s0, e2-s0" in event.text
    runner._node_lost("b" * 40, "e3-s0")
    runner._node_lost("b" * 40, "e4-s0")
    assert runner.excluded == {"a" * 40} and not runner.events  # the last node that can run a slot stays


def test_an_unreachable_cluster_is_an_error_at_once_and_the_campaign_waits_for_a_resume(monkeypatch):
    pytest.importorskip("ray", reason="--runner ray needs ray: pip install 'pretrainlab[ray]'")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    cfg = CampaignConfig(recipe="tiny-cpu", budget_runs=3, seeds=2, strategy="random", runner="ray", ray_address=address)
    with pytest.raises(UserError, match=f"cannot reach the Ray cluster at {address}: no answer"):
        manage.start(cfg, echo=False)  # not Ray's minutes of retries
    (row,) = Ledger().list_campaigns()
    assert row["status"] == "stopped"
    assert any(n["text"].startswith("its loop could not start: cannot reach") for n in Ledger().list_notes(campaign_id=row["id"]))
