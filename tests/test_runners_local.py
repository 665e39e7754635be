"""The local runner: parallel slots, crashes and timeouts come back as results."""

import json
import time
from pathlib import Path

from conftest import tiny_overrides

from pretrainlab.runners import Job, LocalRunner


def test_parallel_jobs_finish_and_keep_slots_busy(corpus_dir, tmp_path):
    runner = LocalRunner(num_slots=2, threads_per_slot=2)
    # a run asks for 1 thread (train.num_threads=1: kept), for torch's default (0: the slot's), or for more than its slot has
    threads = {0: 1, 1: 0, 2: 4, 3: 1}
    queue = [Job(f"j{i}", "tiny-cpu", tmp_path / f"j{i}", tiny_overrides(corpus_dir, **{"budget.tokens": 4096, "seed": i,
                                                                                       "train.num_threads": threads[i]}))
             for i in range(4)]
    results = []
    while queue or runner.busy():
        while queue and runner.free_slots():
            runner.submit(queue.pop(0))
        results += runner.wait()
    assert sorted(r.job.key for r in results) == ["j0", "j1", "j2", "j3"]
    assert all(r.status == "ok" and r.summary["val_bpb"] > 0 for r in results)
    assert {r.slot for r in results} == {0, 1}
    assert runner.utilisation() > 0.6  # the gaps are only process start-up and polling
    ran = {i: json.loads((tmp_path / f"j{i}" / "recipe.json").read_text())["train"]["num_threads"] for i in range(3)}
    assert ran == {0: 1, 1: 2, 2: 2}  # never more than the slot's threads; fewer when the recipe asks


def test_a_crash_is_a_result_with_its_stderr(tmp_path):
    runner = LocalRunner(num_slots=1)
    runner.submit(Job("bad", "tiny-cpu", tmp_path / "bad", ["model.n_head=5"]))
    (result,) = runner.wait()
    assert result.status == "crashed" and result.returncode == 2
    assert "model.n_head=5" in result.stderr_tail


def test_timeout_stops_the_run_with_a_checkpoint(corpus_dir, tmp_path):
    runner = LocalRunner(num_slots=1)
    job = Job("slow", "tiny-cpu", tmp_path / "slow", tiny_overrides(corpus_dir, **{"budget.tokens": 10**9}))
    runner.submit(job)
    while not (tmp_path / "slow" / "metrics.jsonl").exists():  # training (start-up time varies with machine load)
        time.sleep(0.05)
    job.timeout_s = time.time() - runner._running["slow"].started_at + 1.0  # time out one second from now
    t0 = time.time()
    (result,) = runner.wait()
    assert result.status == "timeout" and result.summary["status"] == "preempted"
    assert time.time() - t0 < 30
    assert list((tmp_path / "slow" / "ckpt").glob("step_*.pt"))


def test_stop_is_early_stopping(corpus_dir, tmp_path):
    runner = LocalRunner(num_slots=1)
    runner.submit(Job("s", "tiny-cpu", tmp_path / "s", tiny_overrides(corpus_dir, **{"budget.tokens": 10**9})))
    while not (tmp_path / "s" / "metrics.jsonl").exists():
        time.sleep(0.05)
    assert not runner.stopping("s")
    runner.stop("s")
    assert runner.stopping("s")  # the campaign's early stopping skips it from here: one signal, one log line
    (result,) = runner.wait()
    assert result.status == "stopped"


def test_sleep_wakes_when_a_run_exits_and_idle_time_is_accounted_by_reason(tmp_path):
    runner = LocalRunner(num_slots=2)
    runner.submit(Job("bad", "tiny-cpu", tmp_path / "bad", ["model.n_head=5"]))  # exits within seconds
    runner.idle_because("nothing to run")
    started = time.time()
    while runner.busy() and time.time() - started < 120:
        runner.sleep(120)  # event-driven: returns on the exit, not after 120 s
        runner.poll()
    assert not runner.busy() and time.time() - started < 100
    idle = runner.idle_breakdown()
    assert idle["nothing to run"] > 0  # the second slot, empty all along
    assert set(idle) <= {"nothing to run", "overhead"}


def test_the_lab_scores_at_close_on_the_runs_gpu_or_on_every_slots_threads():
    # the hidden test split is scored after the last run: on a GPU campaign the scoring worker must get
    # the GPU (device nodes in the sandbox, CUDA_VISIBLE_DEVICES), not fall back to one CPU thread
    gpu = LocalRunner(num_slots=2, gpus=[3, 5]).scoring_resources()
    assert gpu["gpus"] is True and gpu["env"] == {"CUDA_VISIBLE_DEVICES": "3"}
    cpu_runner = LocalRunner(num_slots=2, threads_per_slot=1)
    assert cpu_runner.scoring_resources() == {"threads": 2, "gpus": False, "env": {}}


def test_a_recipe_json_and_run_dir_given_relative_to_the_workspace_run(corpus_dir, tmp_path, monkeypatch):
    # the default workspace is the current directory, so a campaign's recipe.json paths are relative; the
    # sandboxed trainer starts elsewhere (its own /tmp) and must still find them
    from pretrainlab import api

    monkeypatch.chdir(tmp_path)
    recipe = api.resolve_recipe("tiny-cpu", tiny_overrides(corpus_dir, **{"budget.tokens": 2048}))
    Path("recipes").mkdir()
    Path("recipes/r.json").write_text(json.dumps(recipe.to_dict()))
    runner = LocalRunner(num_slots=1)
    runner.submit(Job("rel", "recipes/r.json", Path("runs/rel"), score_path=Path("scores/rel.json")))
    (result,) = runner.wait()
    assert result.status == "ok", result.stderr_tail
    assert json.loads((tmp_path / "scores" / "rel.json").read_text())["status"] == "ok"
