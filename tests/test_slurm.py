"""`--runner slurm` (runners/slurm.py) against a real SLURM cluster: the two-node cluster of
scripts/slurm-local.sh (Debian's slurm-wlm; `.ci/run` starts it, `make slurm` here, then
`eval "$(scripts/slurm-local.sh env)"`). Without a cluster that answers `sinfo`, the cluster
tests are skipped with the reason.

A campaign of two runs goes through `pretrainlab research start --runner slurm`; one of its
jobs is requeued with `scontrol requeue` once it has a checkpoint, then the campaign's loop is
killed with SIGKILL and `research resume` adopts the jobs still in the queue: every run
finishes once, the requeued one from its checkpoint, and nothing is submitted twice. A run
warned of its job's time limit (SIGUSR2) checkpoints and its job is requeued, then resumed. A
node that dies twice under a run is excluded, and the run finishes on the other node.
What a run's job asks SLURM for, and the profile file's validation, need no cluster."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import cli, set_args, tiny_overrides

from pretrainlab import rundir
from pretrainlab.config import Recipe
from pretrainlab.errors import UserError
from pretrainlab.ledger import Ledger
from pretrainlab.recipes import budget_tokens
from pretrainlab.research import manage
from pretrainlab.research.campaign import Campaign, CampaignConfig
from pretrainlab.runners import Job, slurm_settings
from pretrainlab.runners.slurm import SlurmRunner, SlurmSettings, load_profile, sbatch_parameters, settings_from, submissions

START_HINT = 'start one with `make slurm` (scripts/slurm-local.sh, as root), then `eval "$(scripts/slurm-local.sh env)"`'


def no_cluster() -> str | None:
    """Why there is no SLURM cluster to test against, or None."""
    if os.environ.get("PRETRAINLAB_NO_SLURM"):  # .ci/run could not start one
        return os.environ["PRETRAINLAB_NO_SLURM"]
    try:
        proc = subprocess.run(["sinfo", "--noheader", "--format=%P %T"], capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        return f"no SLURM commands (sinfo) here: {START_HINT}"
    if proc.returncode != 0:
        return f"no SLURM cluster answers (sinfo: {'; '.join(proc.stderr.split(chr(10)))[:300]}): {START_HINT}"
    return None


@pytest.fixture(scope="module")
def cluster():
    pytest.importorskip("submitit", reason="--runner slurm needs submitit: pip install 'pretrainlab[slurm]' (make setup installs it)")
    reason = no_cluster()
    if reason:
        pytest.skip(reason)
    rows = subprocess.run(["sinfo", "--noheader", "--format=%P %T"], capture_output=True, text=True, check=True).stdout.split("\n")
    partitions = [r.split()[0] for r in rows if r.strip()]
    default = next((p.rstrip("*") for p in partitions if p.endswith("*")), partitions[0])
    return SimpleNamespace(partition=default)


def squeue(job_ids: list[str]) -> dict[str, str]:
    """{job id: state} for the jobs SLURM still knows (a task of a job array: ARRAY_TASK)."""
    out = subprocess.run(["squeue", "--noheader", "--array", "--states=all", f"--jobs={','.join(job_ids)}", "--format=%i %T"],
                         capture_output=True, text=True).stdout
    return dict(line.split() for line in out.splitlines() if line.strip())


def wait_for(what: str, check, timeout_s: float, loop: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        value = check()
        if value:
            return value
        if loop is not None and loop.poll() is not None:
            break
        time.sleep(0.2)
    tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
    raise AssertionError(f"{what}: not within {timeout_s:.0f} s\n{tail}")


def follow(runner: SlurmRunner, timeout_s: float) -> tuple[list, list]:
    """Poll the runner until its jobs are over (or timeout_s): their results and its events."""
    results, events, deadline = [], [], time.time() + timeout_s
    while runner.busy() and time.time() < deadline:
        results += runner.poll()
        events += runner.take_events()
        runner.sleep(0.5)
    return results, events


def test_a_campaign_on_slurm_survives_a_requeue_and_the_death_of_its_loop(corpus_dir, tmp_path, cluster, monkeypatch):
    overrides = tiny_overrides(corpus_dir, **{"train.ckpt_every": 4})
    # two runs in flight (the baseline and the first screen), each long enough (64 steps) to be requeued and outlive its loop.
    # No early stopping: a tiny run's rung is its end
    args = ["research", "start", "--runner", "slurm", "--slurm-partition", cluster.partition, "--slurm-time", "10", "--recipe",
            "tiny-cpu", *set_args(overrides), "--run-budget", "65536tok", "--budget-runs", "2", "--parallel", "2", "--seeds", "1",
            "--decision", "greedy", "--strategy", "random", "--no-early-stop", "--name", "on slurm"]
    log = tmp_path / "loop.log"
    with open(log, "w") as out:
        loop = subprocess.Popen([sys.executable, "-m", "pretrainlab", *args], stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
    try:
        cid = wait_for("the campaign in the ledger", lambda: [c["id"] for c in Ledger().list_campaigns()], 120, loop, log)[0]
        logs = Path(os.environ["PRETRAINLAB_WORKSPACE"]) / "runs" / "campaigns" / cid / "logs"

        def jobs() -> dict[str, str]:  # {run key: SLURM job id}, as the runner recorded them
            return {p.name.removesuffix(".slurm.json"): str(rundir.load_json(p)["job_id"]) for p in logs.glob("*.slurm.json")}

        def a_run_with_a_checkpoint() -> str | None:
            for key in jobs():
                spec = rundir.load_json(logs / f"{key}.spec.json")
                if list((Path(spec["run_dir"]) / "ckpt").glob("step_*.pt")) and not rundir.read_summary(Path(spec["run_dir"])):
                    return key
            return None

        wait_for("both runs submitted", lambda: len(jobs()) == 2, 120, loop, log)
        key = wait_for("a run with a checkpoint", a_run_with_a_checkpoint, 180, loop, log)
        requeued_job = jobs()[key]
        subprocess.run(["scontrol", "requeue", requeued_job], check=True, capture_output=True)
        exp_id = key.rsplit("-s", 1)[0]
        wait_for("the requeue noted by the loop", lambda: any("requeued" in n["text"] for n in Ledger().list_notes(experiment_id=exp_id)),
                 60, loop, log)
        os.killpg(loop.pid, signal.SIGKILL)  # the loop dies; its jobs are SLURM's and stay in the queue
        loop.wait(timeout=30)
        submitted = jobs()
        live = {k for k, job_id in submitted.items() if squeue([job_id]).get(job_id) not in (None, "COMPLETED", "FAILED", "CANCELLED")}
        assert key in live  # the requeued job is waiting to start again, or running again
    finally:
        if loop.poll() is None:
            os.killpg(loop.pid, signal.SIGKILL)
            loop.wait(timeout=30)

    monkeypatch.setattr(Campaign, "record_hidden_test", lambda self: None)  # the close's scoring is tested elsewhere
    manage.resume(cid, echo=False)
    ledger = Ledger()
    assert ledger.get_campaign(cid)["status"] == "done"
    runs = ledger.list_runs(campaign=cid, columns=("run_id", "experiment_id", "seed", "status", "run_dir"))
    keys = [(r["experiment_id"], r["seed"]) for r in runs]
    assert len(runs) == 2 and len(set(keys)) == 2 and all(r["status"] == "ok" for r in runs)  # nothing lost, nothing repeated
    assert jobs() == submitted and len(list((logs / "slurm").glob("*_submitted.pkl"))) == 2  # no run was submitted again
    notes = [n["text"] for r in runs for n in ledger.list_notes(experiment_id=r["experiment_id"])]
    for k in live:  # every job still in the queue when the loop died was followed by the next loop, not started again
        assert any(n.startswith(f"run {k}: SLURM job {submitted[k]}") and "adopted" in n for n in notes), notes
    for r in runs:
        run_dir = Path(r["run_dir"])
        resumes = rundir.load_json(run_dir / rundir.PROVENANCE).get("resumes", [])
        steps = [row["step"] for row in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if row["type"] == "train"]
        # every step once, none lost to the requeue, none trained twice: 64 for the base's shape, fewer for a screen whose
        # model costs more FLOPs per token (every run gets the base's FLOPs)
        recipe = Recipe.from_dict(rundir.load_json(run_dir / rundir.RECIPE))
        assert steps == list(range(1, math.ceil(budget_tokens(recipe) / recipe.train.batch_tokens) + 1)) and len(steps) <= 64
        if run_dir.name == key:  # the requeued run went on from its checkpoint (SIGTERM: one written as it stopped)
            assert len(resumes) == 1 and resumes[0]["step"] > 0, resumes
        else:
            assert resumes == []  # the other job was never interrupted: adopted as it ran


def test_a_run_warned_of_its_time_limit_checkpoints_and_its_job_is_requeued(corpus_dir, tmp_path, cluster):
    """SIGUSR2 is what SLURM sends a job SIGNAL_DELAY_S before its time limit (submitit's --signal):
    the run checkpoints, submitit requeues the job, and its next start resumes the run."""
    runner = SlurmRunner(1, SlurmSettings(partition=cluster.partition, time="10"), log_dir=tmp_path / "logs")
    run_dir = tmp_path / "warned-s0"
    runner.submit(Job("warned-s0", "tiny-cpu", run_dir, tiny_overrides(corpus_dir, **{"budget.tokens": 65536, "budget.seconds": 0,
                                                                                        "train.ckpt_every": 4}), timeout_s=600))
    runner.flush()
    try:
        job_id = str(rundir.load_json(tmp_path / "logs" / "warned-s0.slurm.json")["job_id"])
        wait_for("a checkpoint", lambda: list((run_dir / "ckpt").glob("step_*.pt")), 180)
        subprocess.run(["scancel", "--signal=USR2", job_id], check=True, capture_output=True)
        results, events = follow(runner, 240)
    finally:
        runner.shutdown()
    (result,) = results
    assert result.status == "ok", result.stderr_tail
    assert [e.kind for e in events] == ["requeued"] and events[0].text.startswith(f"run warned-s0: SLURM job {job_id} requeued")
    resumes = rundir.load_json(run_dir / rundir.PROVENANCE)["resumes"]
    assert len(resumes) == 1 and resumes[0]["step"] > 0, resumes
    steps = [row["step"] for row in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if row["type"] == "train"]
    assert steps == list(range(1, 65))
    assert "SIGTERM: checkpointing" in (run_dir / "log.txt").read_text()  # stopped by the runner's job, not killed
    assert squeue([job_id]) == {job_id: "COMPLETED"}


def test_replicates_started_together_go_in_one_job_array(corpus_dir, tmp_path, cluster):
    """Three seeds of one experiment submitted in one pass are one `sbatch --array` job (one name,
    task ids ARRAY_0..2), and each task is still a run of its own: one is requeued and resumes from
    its checkpoint while its siblings go on, and a next loop of the campaign would adopt a task. A
    seed of another experiment is a plain job, and `arrays = false` submits every run alone."""
    runner = SlurmRunner(4, SlurmSettings(partition=cluster.partition, time="10"), log_dir=tmp_path / "logs")
    overrides = tiny_overrides(corpus_dir, **{"budget.tokens": 1024 * 64, "budget.seconds": 0, "train.ckpt_every": 4})
    keys = ["rep-s0", "rep-s1", "rep-s2", "solo-s0"]
    results, events = [], []
    try:
        for key in keys:
            runner.submit(Job(key, "tiny-cpu", tmp_path / key, overrides, timeout_s=600))
        assert runner.free_slots() == 0 and not list((tmp_path / "logs").glob("*.slurm.json"))  # slots taken, nothing sent yet
        runner.flush()
        ids = {k: str(rundir.load_json(tmp_path / "logs" / f"{k}.slurm.json")["job_id"]) for k in keys}
        array = ids["rep-s0"].split("_")[0]
        assert [ids[k] for k in keys[:3]] == [f"{array}_0", f"{array}_1", f"{array}_2"] and "_" not in ids["solo-s0"], ids
        shown = subprocess.run(["squeue", "--noheader", "--array", f"--jobs={array},{ids['solo-s0']}", "--format=%i|%j"],
                               capture_output=True, text=True, check=True).stdout.split()
        assert sorted(shown) == sorted([f"{array}_{i}|pretrainlab-rep-s0,1,2" for i in range(3)] + [f"{ids['solo-s0']}|pretrainlab-solo-s0"])
        later = SlurmRunner(4, SlurmSettings(partition=cluster.partition, time="10"), log_dir=tmp_path / "logs")  # a next loop
        assert later.adopt("rep-s2") and later.take_events()[0].text.startswith(f"run rep-s2: SLURM job {array}_2 (")
        wait_for("a checkpoint of rep-s1", lambda: list((tmp_path / "rep-s1" / "ckpt").glob("step_*.pt")), 180)
        subprocess.run(["scontrol", "requeue", ids["rep-s1"]], check=True, capture_output=True)  # that task alone
        results, events = follow(runner, 300)
    finally:
        runner.shutdown()
    assert sorted(r.job.key for r in results) == keys and all(r.status == "ok" for r in results), [r.stderr_tail for r in results]
    assert [e.kind for e in events] == ["requeued"] and events[0].text.startswith(f"run rep-s1: SLURM job {array}_1 requeued")
    for r in results:
        resumes = rundir.load_json(r.job.out_dir / rundir.PROVENANCE).get("resumes", [])
        steps = [row["step"] for row in map(json.loads, (r.job.out_dir / "metrics.jsonl").read_text().splitlines()) if row["type"] == "train"]
        assert steps == list(range(1, 65)), r.job.key  # every step once
        assert len(r.attempts) == (2 if r.job.key == "rep-s1" else 1) and len(resumes) == len(r.attempts) - 1, (r.job.key, resumes)
    assert squeue([ids[k] for k in keys]) == {ids[k]: "COMPLETED" for k in keys}

    alone = SlurmRunner(2, SlurmSettings(partition=cluster.partition, time="10", arrays=False), log_dir=tmp_path / "alone")
    try:
        for key in ("each-s0", "each-s1"):
            alone.submit(Job(key, "tiny-cpu", tmp_path / key, overrides, timeout_s=600))
        alone.flush()
        ids = [str(rundir.load_json(tmp_path / "alone" / f"{k}.slurm.json")["job_id"]) for k in ("each-s0", "each-s1")]
        assert len(set(ids)) == 2 and not any("_" in i for i in ids), ids
    finally:
        alone.shutdown()  # cancelled, queued or running


def test_a_loop_that_dies_while_sbatch_runs_leaves_a_job_the_next_loop_finds(corpus_dir, tmp_path, cluster, monkeypatch):
    """Each run's record names its job before sbatch runs. The loop is interrupted after SLURM took
    a job array but before any run's record got its id: the runs stay followed (shutdown cancels
    them), and a next loop finds every task by the array's name and adopts it instead of
    submitting it again."""
    from pretrainlab.runners import slurm

    runner = SlurmRunner(3, SlurmSettings(partition=cluster.partition, time="10"), log_dir=tmp_path / "logs")
    real_write = slurm.rundir.write_json_atomic

    def dies_after_sbatch(path, data):
        if str(path).endswith(".slurm.json") and data.get("job_id") is not None:
            raise KeyboardInterrupt  # Ctrl-C, just after sbatch answered
        real_write(path, data)

    keys = ["cut-s0", "cut-s1", "cut-s2"]
    try:
        for key in keys:
            runner.submit(Job(key, "tiny-cpu", tmp_path / key, tiny_overrides(corpus_dir, **{"budget.tokens": 1024 * 512}), timeout_s=600))
        monkeypatch.setattr(slurm.rundir, "write_json_atomic", dies_after_sbatch)
        with pytest.raises(KeyboardInterrupt):
            runner.flush()
        monkeypatch.setattr(slurm.rundir, "write_json_atomic", real_write)
        ids = {r.job.key: r.job_id for r in runner._running.values()}
        array = ids["cut-s0"].split("_")[0]
        assert ids == {k: f"{array}_{i}" for i, k in enumerate(keys)}  # still followed: SLURM has them
        assert all(rundir.load_json(tmp_path / "logs" / f"{k}.slurm.json")["job_id"] is None for k in keys)
        later = SlurmRunner(3, SlurmSettings(partition=cluster.partition, time="10"), log_dir=tmp_path / "logs")
        assert all(later.adopt(k) for k in keys)
        assert {k: rundir.load_json(tmp_path / "logs" / f"{k}.slurm.json")["job_id"] for k in keys} == ids
        assert [e.text.split(" (")[0] for e in later.take_events()] == [f"run {k}: SLURM job {ids[k]}" for k in keys]
    finally:
        runner.shutdown()  # cancels the array
    assert all(state in ("CANCELLED", None) for state in (squeue(list(ids.values())).get(i) for i in ids.values()))


def test_what_goes_in_one_job_array():
    pytest.importorskip("submitit", reason="--runner slurm needs submitit: pip install 'pretrainlab[slurm]'")
    jobs = [Job(k, "tiny-cpu", Path(k), timeout_s=t) for k, t in
            (("rep", 300), ("rep-s0", 300), ("rep-s1", 300), ("a-s1-s2", 300), ("a-s1-s3", 300), ("b-s0", 300), ("b-s1", 9000),
             ("c-s4", 300))]
    keys = lambda groups: [[j.key for j in g] for g in groups]
    # a key that is no replicate stays alone even beside replicates of an experiment of its name; a different time limit
    # (the run's timeout) is another job
    assert keys(submissions(SlurmSettings(), jobs)) == [["rep"], ["rep-s0", "rep-s1"], ["a-s1-s2", "a-s1-s3"], ["b-s0"], ["b-s1"],
                                                        ["c-s4"]]
    assert keys(submissions(SlurmSettings(arrays=False), jobs)) == [[j.key] for j in jobs]


def flaky_sbatch(tmp_path: Path, monkeypatch, fails: int, error: str) -> Path:
    """An `sbatch` first on PATH that refuses the first `fails` submissions with `error` (as sbatch
    prints it), then hands every call to the cluster's real sbatch; returns its call counter."""
    real = subprocess.run(["which", "sbatch"], capture_output=True, text=True, check=True).stdout.strip()
    bindir, counter = tmp_path / "bin", tmp_path / "sbatch-calls"
    bindir.mkdir()
    (bindir / "sbatch").write_text(f"""#!/bin/bash
case " $* " in *" --test-only "*) exec {real} "$@";; esac
n=$(( $(cat {counter} 2>/dev/null || echo 0) + 1 )); echo $n > {counter}
if [ $n -le {fails} ]; then echo "sbatch: error: Batch job submission failed: {error}" >&2; exit 1; fi
exec {real} "$@"
""")
    (bindir / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    return counter


def test_a_submission_refused_for_a_passing_reason_is_tried_again(corpus_dir, tmp_path, cluster, monkeypatch):
    """A controller that times out is tried again (noted as events) and the run goes on; one that keeps
    failing, or a refusal for the job's own settings, is a one-line error."""
    from pretrainlab.runners import slurm

    monkeypatch.setattr(slurm, "SBATCH_RETRY_S", (0.2, 0.2))
    counter = flaky_sbatch(tmp_path, monkeypatch, 2, "Socket timed out on send/recv operation")
    runner = SlurmRunner(1, SlurmSettings(partition=cluster.partition, time="10"), log_dir=tmp_path / "logs")
    job = Job("flaky-s0", "tiny-cpu", tmp_path / "flaky-s0", tiny_overrides(corpus_dir, **{"budget.tokens": 2048}), timeout_s=300)
    try:
        runner.submit(job)
        runner.flush()
        events = runner.take_events()
        assert [e.kind for e in events] == ["sbatch_retry", "sbatch_retry"] and counter.read_text().strip() == "3"
        assert "Socket timed out" in events[0].text and "attempt 2 of 3" in events[0].text and events[0].key == "flaky-s0"
        results, _ = follow(runner, 180)
    finally:
        runner.shutdown()
    assert [r.status for r in results] == ["ok"], results[0].stderr_tail if results else "no result"

    counter.write_text("0")  # a controller that never comes back: three attempts, then the error, with what to do
    monkeypatch.setattr(slurm, "SBATCH_RETRY_S", (0.1, 0.1))
    flaky = SlurmRunner(1, SlurmSettings(partition=cluster.partition, time="10"), log_dir=tmp_path / "logs2")
    (tmp_path / "bin" / "sbatch").write_text((tmp_path / "bin" / "sbatch").read_text().replace("-le 2 ]", "-le 99 ]"))
    with pytest.raises(UserError, match="sbatch failed 3 times for run again-s0, last: .*Socket timed out.*research resume"):
        flaky.submit(Job("again-s0", "tiny-cpu", tmp_path / "again-s0", tiny_overrides(corpus_dir), timeout_s=300))
        flaky.flush()
    assert counter.read_text().strip() == "3" and not flaky.busy()

    counter.write_text("0")  # refused for its settings: at once, no retry
    (tmp_path / "bin" / "sbatch").write_text((tmp_path / "bin" / "sbatch").read_text().replace("Socket timed out on send/recv operation",
                                                                                               "Invalid account or account/partition combination specified"))
    with pytest.raises(UserError, match="sbatch refused run bad-s0: .*Invalid account.*--slurm-"):
        flaky.submit(Job("bad-s0", "tiny-cpu", tmp_path / "bad-s0", tiny_overrides(corpus_dir), timeout_s=300))
        flaky.flush()
    assert counter.read_text().strip() == "1"


def test_a_cluster_without_job_arrays_gets_a_job_per_run_and_a_lost_answer_is_not_submitted_twice(tmp_path, cluster, monkeypatch):
    """A cluster that refuses job arrays (as `sbatch --test-only` says at start) gets one job per
    run, and a note. An sbatch whose answer was lost after SLURM took the job (it timed out on
    the way back) is not submitted again: the runner finds the job by its name."""
    real = subprocess.run(["which", "sbatch"], capture_output=True, text=True, check=True).stdout.strip()
    bindir, calls = tmp_path / "bin", tmp_path / "sbatch-calls"
    bindir.mkdir()
    (bindir / "sbatch").write_text(f"""#!/bin/bash
script="${{@: -1}}"
if grep -q -- '--array' "$script"; then echo "sbatch: error: Batch job submission failed: Job arrays are disabled" >&2; exit 1; fi
case " $* " in *" --test-only "*) exec {real} "$@";; esac
echo x >> {calls}
if [ "$(wc -l < {calls})" = 1 ]; then {real} "$@" > /dev/null; echo "sbatch: error: Socket timed out on send/recv operation" >&2; exit 1; fi
exec {real} "$@"
""")
    (bindir / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    from pretrainlab.runners import slurm

    monkeypatch.setattr(slurm, "SBATCH_RETRY_S", (0.2, 0.2))
    runner = SlurmRunner(2, SlurmSettings(partition=cluster.partition, time="10"), log_dir=tmp_path / "logs")
    try:
        assert runner.settings.arrays is False
        (note,) = runner.take_events()
        assert note.kind == "arrays_off" and "Job arrays are disabled" in note.text
        for key in ("plain-s0", "plain-s1"):
            runner.submit(Job(key, "tiny-cpu", tmp_path / key, ["budget.tokens=2048"], timeout_s=300))
        runner.flush()
        ids = [r.job_id for r in runner._running.values()]
        assert len(set(ids)) == 2 and not any("_" in i for i in ids)
        assert calls.read_text().count("x") == 2  # the first run's sbatch "failed" but SLURM had it: not sent again
        kinds = [e.kind for e in runner.take_events()]
        assert kinds == ["sbatch_retry", "adopted"], kinds
    finally:
        runner.shutdown()


# ---- no cluster needed ------------------------------------------------------------------------


def sbatch_script(settings: SlurmSettings, job: Job, folder: Path, monkeypatch, exclude=frozenset()) -> list[str]:
    """The batch script submitit's SlurmExecutor writes for `job` with these settings, as the
    runner configures it (what sbatch receives)."""
    import submitit

    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", classmethod(lambda cls: 2))  # no `srun` needed on this machine
    executor = submitit.SlurmExecutor(folder=folder)
    executor.update_parameters(**sbatch_parameters(settings, job, exclude))
    return executor._make_submission_file_text("python -u -m submitit.core._submit FOLDER", "uid").splitlines()


def test_what_a_runs_job_asks_slurm_for(tmp_path, monkeypatch):
    pytest.importorskip("submitit", reason="--runner slurm needs submitit: pip install 'pretrainlab[slurm]'")
    job = Job("e3-s1", "tiny-cpu", tmp_path / "e3-s1", timeout_s=300)
    settings = SlurmSettings(partition="gpu", account="lab", qos="high", time="2:00:00", cpus_per_run=8, gpus_per_run=1, mem_gb=32,
                             constraint="h100", setup=["module load cuda/12.4"], sbatch={"reservation": "pretrain"})
    script = sbatch_script(settings, job, tmp_path, monkeypatch)
    for line in ("#SBATCH --partition=gpu", "#SBATCH --account=lab", "#SBATCH --qos=high", "#SBATCH --time=120",
                 "#SBATCH --cpus-per-task=8", "#SBATCH --gpus-per-node=1", "#SBATCH --mem=32G", "#SBATCH --constraint=h100",
                 "#SBATCH --requeue", "#SBATCH --signal=USR2@90", "#SBATCH --reservation=pretrain", "#SBATCH --job-name=pretrainlab-e3-s1"):
        assert line in script, (line, script)
    assert script.index("module load cuda/12.4") < next(i for i, s in enumerate(script) if s.startswith("srun "))
    # no time limit given: the run's own timeout plus SLURM's warning (300 + 90 + 60 s), else an hour
    assert "#SBATCH --time=8" in sbatch_script(SlurmSettings(), job, tmp_path, monkeypatch)
    plain = sbatch_script(SlurmSettings(), Job("e3-s2", "tiny-cpu", tmp_path / "e3-s2"), tmp_path, monkeypatch)
    assert "#SBATCH --time=60" in plain and "#SBATCH --requeue" in plain and "#SBATCH --cpus-per-task=1" in plain
    assert not any(s.startswith(("#SBATCH --partition", "#SBATCH --account", "#SBATCH --gpus", "#SBATCH --mem")) for s in plain)
    assert "#SBATCH --mem=1536M" in sbatch_script(SlurmSettings(mem_gb=1.5), job, tmp_path, monkeypatch)
    # nodes the runner excluded join those the settings exclude, in one option
    assert not any("--exclude" in s for s in plain)
    excluding = sbatch_script(SlurmSettings(sbatch={"exclude": "n9"}), job, tmp_path, monkeypatch, exclude={"n2", "n1"})
    assert [s for s in excluding if "--exclude" in s] == ["#SBATCH --exclude=n9,n1,n2"]
    assert [s for s in sbatch_script(SlurmSettings(sbatch={"exclude": "n9"}), job, tmp_path, monkeypatch) if "--exclude" in s] == \
        ["#SBATCH --exclude=n9"]


def test_the_flags_and_the_profile_make_the_settings(tmp_path):
    profile = tmp_path / "slurm.toml"
    profile.write_text('partition = "gpu"\naccount = "lab"\ntime = "4:00:00"\ncpus_per_run = 16\ngpus_per_run = 1\n'
                       'setup = ["source /shared/venv/bin/activate"]\n[sbatch]\nreservation = "pretrain"\n')
    cfg = CampaignConfig(runner="slurm", slurm_profile=str(profile), slurm_partition="debug", slurm_time="30")
    s = slurm_settings(cfg)  # the flags over the profile
    assert (s.partition, s.account, s.time, s.cpus_per_run, s.gpus_per_run, s.sbatch) == ("debug", "lab", "30", 16, 1, {"reservation": "pretrain"})
    assert slurm_settings(CampaignConfig(runner="slurm", gpus=[0])).gpus_per_run == 1  # --gpus: one GPU per run, as with Ray
    assert slurm_settings(CampaignConfig(runner="slurm")).gpus_per_run == 0


def one_line_error(fn) -> str:
    with pytest.raises(UserError) as e:
        fn()
    assert "\n" not in str(e.value)
    return str(e.value)


def test_a_bad_profile_or_flag_is_a_one_line_error_naming_it(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('partiton = "gpu"\n')
    msg = one_line_error(lambda: load_profile(bad))
    assert "unknown key 'partiton'" in msg and "did you mean 'partition'" in msg
    assert "the keys are partition, account, qos, time, cpus_per_run, gpus_per_run, mem_gb, constraint, setup, sbatch, arrays" in msg
    bad.write_text("cpus_per_run = \"8\"\n")
    assert "cpus_per_run = '8' is not an integer" in one_line_error(lambda: load_profile(bad))
    bad.write_text("arrays = \"no\"\n")
    assert "arrays = 'no' is not true or false" in one_line_error(lambda: load_profile(bad))
    bad.write_text("arrays = false\n")
    assert settings_from(bad).arrays is False and settings_from().arrays is True
    bad.write_text("partition = \n")
    assert "not valid TOML" in one_line_error(lambda: load_profile(bad))
    assert "no such file" in one_line_error(lambda: load_profile(tmp_path / "missing.toml"))
    assert "slurm time '3 hours': use minutes" in one_line_error(lambda: settings_from(time="3 hours"))
    assert "gpus_per_run must be 0 or 1" in one_line_error(lambda: settings_from(gpus_per_run=2))
    assert "slurm time '4' is too short" in one_line_error(lambda: settings_from(time="4"))
    assert one_line_error(lambda: CampaignConfig(slurm_partition="gpu")) == \
        "--slurm-partition is a SLURM setting: add --runner slurm, or drop it"

    # through the CLI: exit code 2 and one line, and the profile is read before anything heavy is imported
    bad.write_text('partition = "gpu"\nacount = "lab"\n')
    proc = cli("research", "start", "--runner", "slurm", "--slurm-profile", str(bad))
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0
    assert "unknown key 'acount' (did you mean 'account'?)" in proc.stderr
    check = ("import sys\nfrom pretrainlab.cli import main\n"
             f"code = main(['research', 'start', '--runner', 'slurm', '--slurm-profile', {str(bad)!r}])\n"
             "print(code, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["2", "False"], out.stdout + out.stderr


def local_cluster_dir() -> Path | None:
    """The folder of scripts/slurm-local.sh's cluster (its slurmd pid files), if that is the one in use."""
    conf = os.environ.get("SLURM_CONF")
    return Path(conf).parent if conf and list(Path(conf).parent.glob("slurmd-*.pid")) else None


def descendants(pid: int) -> list[int]:
    """Every process below `pid`, from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def test_a_node_that_fails_twice_is_excluded_and_its_run_finishes_elsewhere(corpus_dir, tmp_path, cluster):
    """A requeue while the node is drained for maintenance is no fault of the node. A node that dies (its slurmd and every process of its job killed at once, then marked down, as a
    power loss does) costs its run a requeue and a resume from its checkpoint. The second time the same
    node takes a run down, the runner excludes it: the pending job and every later submission ask SLURM
    for other nodes, the exclusion is an event (a ledger note in a campaign) and is kept for the
    campaign's next loop, and the run finishes on another node with every step trained once."""
    folder = local_cluster_dir()
    if folder is None:
        pytest.skip("needs the local cluster of scripts/slurm-local.sh (its slurmds are killed and restarted here)")
    nodes = subprocess.run(["sinfo", "--noheader", "--Node", f"--partition={cluster.partition}", "--format=%N"],
                           capture_output=True, text=True, check=True).stdout.split()
    if len(nodes) < 2:
        pytest.skip("needs two nodes: scripts/slurm-local.sh start with SLURM_LOCAL_NODES=2 (the default)")
    good, bad = nodes[0], nodes[1]
    conf = os.environ["SLURM_CONF"]
    blocker = subprocess.run(["sbatch", "--parsable", f"--nodelist={good}", "--exclusive", f"--partition={cluster.partition}",
                              "--output=/dev/null", "--wrap", "sleep 600"], capture_output=True, text=True, check=True).stdout.strip()
    wait_for("the other node busy", lambda: squeue([blocker]).get(blocker) == "RUNNING", 60)
    runner = SlurmRunner(1, SlurmSettings(partition=cluster.partition, time="10"), log_dir=tmp_path / "logs")
    run_dir = tmp_path / "lossy-s0"
    events, results = [], []

    def follow(until, what: str, timeout_s: float):
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            results.extend(runner.poll())
            events.extend(runner.take_events())
            if until():
                return
            runner.sleep(0.3)
        raise AssertionError(f"{what}: not within {timeout_s:.0f} s; events: {[e.text for e in events]}")

    def state() -> tuple[str, str]:
        out = subprocess.run(["squeue", "--noheader", "--states=all", f"--jobs={job_id}", "--format=%T|%N"],
                             capture_output=True, text=True).stdout.strip()
        return tuple(out.split("|")) if "|" in out else ("", "")

    def checkpoint() -> int:  # the step of the newest checkpoint, 0 if none
        return max((int(p.stem.split("_")[1]) for p in (run_dir / "ckpt").glob("step_*.pt")), default=0)

    def power_loss() -> None:
        """The bad node dies: its slurmd and its job's processes at once; the controller marks it down."""
        os.kill(int((folder / f"slurmd-{bad}.pid").read_text()), signal.SIGKILL)
        stepds = [int(p.parent.name) for p in Path("/proc").glob("[0-9]*/cmdline")  # the batch step's and srun's (its title may be cut)
                  if p.read_bytes().startswith(f"slurmstepd: [{job_id}.".encode())]
        assert stepds, f"no slurmstepd of job {job_id}"
        for pid in [*stepds, *(d for s in stepds for d in descendants(s))]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        subprocess.run(["scontrol", "update", f"nodename={bad}", "state=down", "reason=power lost"], check=True, capture_output=True)

    try:
        runner.submit(Job("lossy-s0", "tiny-cpu", run_dir, tiny_overrides(corpus_dir, **{"budget.tokens": 1024 * 160, "budget.seconds": 0,
                                                                                           "train.ckpt_every": 8}), timeout_s=600))
        runner.flush()
        job_id = str(rundir.load_json(tmp_path / "logs" / "lossy-s0.slurm.json")["job_id"])
        # first, maintenance: the node is drained and its job requeued by an administrator; no fault of the node
        follow(lambda: state() == ("RUNNING", bad) and checkpoint() > 0, f"the run training on {bad} with a checkpoint", 120)
        subprocess.run(["scontrol", "update", f"nodename={bad}", "state=drain", "reason=maintenance"], check=True, capture_output=True)
        subprocess.run(["scontrol", "requeue", job_id], check=True, capture_output=True)
        follow(lambda: any(e.kind == "requeued" for e in events), "the requeue for maintenance seen", 60)
        subprocess.run(["scontrol", "update", f"nodename={bad}", "state=resume"], check=True, capture_output=True)
        for loss in (1, 2):
            follow(lambda: state() == ("RUNNING", bad) and checkpoint() > 0, f"the run training on {bad} with a checkpoint", 120)
            saved = checkpoint()
            follow(lambda: checkpoint() > saved, "a newer checkpoint", 60)  # it trains on that node, past where it started
            power_loss()
            follow(lambda: sum(e.kind == "requeued" for e in events) == 1 + loss, f"requeue {loss} seen", 60)
            subprocess.run(["slurmd", "-f", conf, "-N", bad], check=True, capture_output=True)  # the node comes back
        assert [e.kind for e in events] == ["requeued", "requeued", "requeued", "excluded"], [e.text for e in events]
        assert "(preempted, requeued by an administrator, or its time limit; restart 1)" in events[0].text
        assert f"its node {bad} failed: down since" in events[1].text and f"its node {bad} failed: down since" in events[2].text
        assert events[3].text.startswith(f"SLURM node {bad} excluded: it failed 2 times under runs of this campaign (down since")
        shown = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True, check=True).stdout
        assert f"ExcNodeList={bad}" in shown  # the pending job will not go back to it
        assert rundir.load_json(tmp_path / "logs" / "slurm.excluded.json") == {"nodes": [bad]}
        time.sleep(2)  # the bad node is back and idle, the good one busy: the job still waits
        assert state()[0] == "PENDING"
        subprocess.run(["scancel", blocker], check=True)
        follow(lambda: bool(results), "the run's end", 240)
    finally:
        subprocess.run(["scancel", blocker], capture_output=True)
        runner.shutdown()
        if not (folder / f"slurmd-{bad}.pid").exists() or subprocess.run(["kill", "-0", (folder / f"slurmd-{bad}.pid").read_text().strip()]).returncode:
            subprocess.run(["slurmd", "-f", conf, "-N", bad], capture_output=True)
    (result,) = results
    assert result.status == "ok", result.stderr_tail
    assert state() == ("COMPLETED", good)
    # its four starts, as the ledger's run_attempts get them (the doctor's cluster findings read them)
    assert [a.node for a in result.attempts] == [bad, bad, bad, good] and [a.number for a in result.attempts] == [1, 2, 3, 4]
    assert result.attempts[0].lost.startswith("requeued by SLURM")
    assert all(a.lost.startswith("its node failed: down since") for a in result.attempts[1:3]) and result.attempts[3].lost is None
    assert all(a.started_at is not None and a.submitted_at <= a.started_at <= a.ended_at for a in result.attempts)
    resumes = rundir.load_json(run_dir / rundir.PROVENANCE)["resumes"]
    assert len(resumes) == 3 and all(r["step"] > 0 for r in resumes), resumes
    steps = [row["step"] for row in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if row["type"] == "train"]
    assert steps == list(range(1, 161))  # every step once: none lost to the node, none trained twice
    # a later loop of the campaign keeps the node out, and so does every job it submits
    again = SlurmRunner(1, SlurmSettings(partition=cluster.partition, time="10"), log_dir=tmp_path / "logs")
    assert again.excluded == {bad}
    assert sbatch_parameters(again.settings, Job("x", "tiny-cpu", tmp_path / "x", []), again.excluded)["exclude"] == bad


def test_one_failure_counts_once_however_many_runs_it_takes_down(tmp_path, cluster):
    """Two runs lost in one failure of a node are one failure; a second failure excludes the node, unless
    no other node could run the jobs (the settings excluding the rest count too)."""
    nodes = subprocess.run(["sinfo", "--noheader", "--Node", f"--partition={cluster.partition}", "--format=%N"],
                           capture_output=True, text=True, check=True).stdout.split()
    if len(nodes) < 2:
        pytest.skip("needs two nodes: scripts/slurm-local.sh start with SLURM_LOCAL_NODES=2 (the default)")
    good, bad = nodes[0], nodes[1]
    runner = SlurmRunner(1, SlurmSettings(partition=cluster.partition, time="10"), log_dir=tmp_path / "logs")
    runner._node_lost(bad, "a-s0", "down since 2026-11-26T10:00:00")
    runner._node_lost(bad, "b-s0", "down since 2026-11-26T10:00:00")
    assert runner.excluded == set() and runner.take_events() == []
    runner._node_lost(bad, "a-s0", "its slurmd started again at 2026-11-26T11:00:00")
    assert runner.excluded == {bad}
    (event,) = runner.take_events()
    assert event.kind == "excluded" and "(down since 2026-11-26T10:00:00: a-s0, b-s0; its slurmd" in event.text

    # the profile already excludes the good node: excluding the bad one too would leave nothing
    keep = SlurmRunner(1, SlurmSettings(partition=cluster.partition, time="10", sbatch={"exclude": good}), log_dir=tmp_path / "k")
    for failure in ("down since 2026-11-26T10:00:00", "down since 2026-11-26T12:00:00"):
        keep._node_lost(bad, "a-s0", failure)
    assert keep.excluded == set()
    (event,) = keep.take_events()
    assert event.kind == "not_excluded" and "no other node could run them" in event.text
    # a later loop drops an excluded node the cluster no longer has
    rundir.write_json_atomic(tmp_path / "logs" / "slurm.excluded.json", {"nodes": [bad, "gone-node"]})
    assert SlurmRunner(1, SlurmSettings(partition=cluster.partition, time="10"), log_dir=tmp_path / "logs").excluded == {bad}
