"""train.compile=auto|on|off: the policy, and the eager fallback when the compiler fails."""

import json

import pytest
import torch
from conftest import tiny_overrides

from pretrainlab import api
from pretrainlab.config import Recipe, TrainConfig
from pretrainlab.train import compiling


def test_auto_compiles_on_cuda_measures_on_one_cpu_process_and_is_eager_on_several():
    assert compiling.plan("auto", "cuda", 1, "ddp") == "on"
    assert compiling.plan("auto", "cpu", 1, "ddp") == "measure"
    assert compiling.plan("auto", "cpu", 2, "ddp") == "off"
    assert compiling.plan("auto", "cpu", 1, "fsdp") == "off"
    assert compiling.plan("on", "cpu", 2, "ddp") == "on" and compiling.plan("off", "cuda", 1, "ddp") == "off"


def test_compile_pays_only_when_the_run_left_repays_the_warmup():
    warmup = compiling.expected_warmup_s(n_layer=4)
    assert not compiling.compile_pays(remaining_s=10.0, n_layer=4)  # a test run
    assert not compiling.compile_pays(remaining_s=0.9 * warmup / compiling.CPU_STEP_SAVING, n_layer=4)
    assert compiling.compile_pays(remaining_s=1.1 * warmup / compiling.CPU_STEP_SAVING, n_layer=4)
    assert compiling.compile_pays(remaining_s=3600.0, n_layer=8)


def test_a_warm_cache_shortens_the_expected_warmup_and_a_bad_record_is_ignored(tmp_path, monkeypatch):
    """Each compile records its warm-up in the compiler's cache directory under the run's shape; the next run of that
    shape expects the recorded time (with a margin) instead of the cold estimate, so auto compiles shorter runs."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    assert compiling.cache_dir() == tmp_path
    key = compiling.shape_key(Recipe(), "cpu")
    cold = compiling.expected_warmup_s(4, key)
    assert cold == compiling.expected_warmup_s(4) and compiling.recorded_warmup_s(key) is None
    compiling.record_warmup(key, 8.0)
    compiling.record_warmup("another shape", 30.0)
    assert compiling.recorded_warmup_s(key) == 8.0 and compiling.expected_warmup_s(4, key) == 8.0 * compiling.WARM_MARGIN
    remaining = 1.2 * 8.0 * compiling.WARM_MARGIN / compiling.CPU_STEP_SAVING  # repays a warm compile, not a cold one
    assert compiling.compile_pays(remaining, 4, key) and not compiling.compile_pays(remaining, 4)
    compiling.record_warmup(key, 1e9)  # a record worse than the cold estimate never raises it
    assert compiling.expected_warmup_s(4, key) == cold
    for junk in ("{", "[1, 2]", '{"%s": "fast"}' % key, '{"%s": NaN}' % key, '{"%s": true}' % key, "[" * 100_000):
        (tmp_path / compiling.WARMUPS_FILE).write_text(junk)  # a run of the same tree wrote it: it decides nothing
        assert compiling.recorded_warmup_s(key) is None and compiling.expected_warmup_s(4, key) == cold
    for i in range(compiling.MAX_WARMUP_KEYS + 10):
        compiling.record_warmup(f"shape {i}", 1.0)
    assert len(json.loads((tmp_path / compiling.WARMUPS_FILE).read_text())) == compiling.MAX_WARMUP_KEYS
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "missing" / "dir"))
    compiling.record_warmup(key, 2.0)  # best effort: no cache directory, no record, no error


def test_old_boolean_settings_still_read():
    assert TrainConfig(compile="true").compile == "on" and TrainConfig(compile="False").compile == "off"
    old = Recipe().to_dict()
    old["train"]["compile"] = True  # a recipe.json written when the field was a bool
    assert Recipe.from_dict(old).train.compile == "on"
    with pytest.raises(ValueError, match="train.compile"):
        TrainConfig(compile="sometimes")


def test_compile_mode_is_checked_keys_the_warm_up_record_and_reaches_torch_compile(monkeypatch):
    with pytest.raises(ValueError, match="train.compile_mode must be default or max-autotune"):
        TrainConfig(compile_mode="fast")
    tuned = Recipe.from_dict({**Recipe().to_dict(), "train": {**Recipe().to_dict()["train"], "compile_mode": "max-autotune"}})
    assert Recipe().hash() == Recipe.from_dict(Recipe().to_dict()).hash() and tuned.hash() != Recipe().hash()
    assert compiling.shape_key(tuned, "cuda") != compiling.shape_key(Recipe(), "cuda")  # its warm-up is minutes, not seconds
    modes = []
    monkeypatch.setattr(torch, "compile", lambda model, mode=None: modes.append(mode) or model)
    for setting in ("default", "max-autotune"):
        _, compiled, _ = compiling.compile_model(torch.nn.Linear(2, 2), [], lambda m: None, mode=setting)
        assert compiled
    assert modes == [None, "max-autotune-no-cudagraphs"]  # never CUDA graphs: the trainer's step is not capturable


def test_a_short_cpu_run_stays_eager_under_auto(corpus_dir, tmp_path):
    run_dir, s = api.train_run("tiny-cpu", tiny_overrides(corpus_dir, **{"budget.tokens": 4096, "train.compile": "auto"}), tmp_path / "r", echo=False)
    assert s["status"] == "ok" and s["compiled"] is False
    assert "train.compile=auto: eager" in (run_dir / "log.txt").read_text()
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all(r["compiled"] is False for r in rows if r["type"] == "train")


def test_a_compiler_failure_trains_eagerly_with_one_warning(corpus_dir, tmp_path, monkeypatch):
    """A C++ compiler that does not exist (as on a machine without gcc): inductor fails in the
    warm-up, before any training step; the run trains eagerly and says so once."""
    monkeypatch.setattr(torch._inductor.config.cpp, "cxx", (None, str(tmp_path / "no-such-g++")))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))  # no cached kernels to fall back on
    torch._dynamo.reset()
    overrides = tiny_overrides(corpus_dir, **{"budget.tokens": 4096, "train.compile": "on", "model.n_layer": 1})
    run_dir, s = api.train_run("tiny-cpu", overrides, tmp_path / "r", echo=False)
    assert s["status"] == "ok" and s["compiled"] is False and s["steps"] == 4
    warnings = [line for line in (run_dir / "log.txt").read_text().splitlines() if "torch.compile failed" in line]
    assert len(warnings) == 1 and "training eagerly" in warnings[0]


def test_a_sigterm_during_the_compile_warm_up_checkpoints_and_exits_preempted(corpus_dir, tmp_path):
    """A long run under train.compile=auto compiles after its first step; a preemption that
    lands in the minutes-long warm-up still checkpoints and exits as preempted, promptly."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    args = [sys.executable, "-m", "pretrainlab", "train", "--recipe", "tiny-cpu", "--out", str(out), "--no-ledger",
            *[a for o in tiny_overrides(corpus_dir, **{"budget.tokens": 10**9, "train.compile": "auto"}) for a in ("--set", o)]]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = []
    for line in proc.stdout:  # wait for the auto decision's warm-up to begin (it logs once it is done)
        log.append(line)
        if "step 1 |" in line:
            break
    time.sleep(2.0)  # inside the warm-up now: compiling takes tens of seconds on CPU
    t0 = time.time()
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=120)
    took = time.time() - t0
    summary = json.loads((out / "summary.json").read_text())
    assert proc.returncode != 0 and summary["status"] == "preempted", "".join(log) + rest
    assert "SIGTERM during the compile warm-up: eager" in rest and summary["compiled"] is False, rest
    assert list((out / "ckpt").glob("step_*")), "no checkpoint"
    assert took < 60, f"{took:.0f}s to stop"  # not the minutes a warm-up takes
