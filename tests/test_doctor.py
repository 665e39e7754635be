"""The run doctor on synthetic run directories: each detector on the pattern it exists for,
silence on a healthy run, the statistics it rests on, the JSON schema, the text view, and
every kind of bad input. (Real runs with injected faults: test_doctor_faults.py.)"""

import json
import math
import os
import shutil

import numpy as np
import pytest

from pretrainlab.doctor import SCHEMA_VERSION, diagnose, render_text
from pretrainlab.doctor.stats import chi2_sf, chi_square_gof, scan_spikes, sparkline
from pretrainlab.errors import UserError

DOMAINS = ["code", "docs", "literature"]
WEIGHTS = [0.4, 0.5, 0.1]


def make_rows(n=300, seed=0, noise=0.08, weights=WEIGHTS, warmup=5, tokens_per_s=30000):
    """A healthy-looking run: loss 5.5 -> ~2.1 with per-step noise, WSD LR, steady systems."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(1, n + 1):
        mult = min(1.0, i / warmup) if i <= warmup else (1.0 if i <= 0.6 * n else (n - i + 1) / (0.4 * n))
        tps = tokens_per_s * (1 + 0.02 * rng.standard_normal())
        counts = rng.multinomial(16, weights)
        rows.append({
            "type": "train", "step": i, "tokens": i * 1024, "loss": 2.0 + 3.5 * math.exp(-i / 25) + noise * rng.standard_normal(),
            "lr": 0.015 * mult, "grad_norm": 0.5 * math.exp(0.15 * rng.standard_normal()), "max_layer_grad_norm": 0.3,
            "max_grad_layer": "head", "tokens_per_s": tps, "mfu": None, "step_s": 1024 / tps,
            "data_wait_frac": 0.013 + 0.002 * rng.random(), "peak_mem_mb": 350.0, "train_seconds": i * 1024 / tps,
            "domain_rows": dict(zip(DOMAINS, counts.tolist())), "batch_hash": f"{rng.integers(2**47):012x}",
        })
    return rows


def write_run(path, rows, evals=None, recipe=None, provenance=None, summary=None, weights=WEIGHTS):
    """A run directory as the trainer writes it; pass summary=False for none (a live run)."""
    path.mkdir(parents=True, exist_ok=True)
    n = max((r["step"] for r in rows), default=0)
    last = [r["loss"] for r in rows[-20:] if type(r.get("loss")) is float and math.isfinite(r["loss"])]
    bpb = float(np.median(last)) / math.log(2) * 1.1 if last else 3.0
    if evals is None:
        evals = [{"type": "eval", "step": n, "tokens": n * 1024, "val_bpb": bpb,
                  "val_bpb_domains": {d: bpb for d in DOMAINS}, "eval_tokens": 6144, "eval_s": 0.05}]
    rec = {"name": "synthetic", "seed": 0,
           "model": {"seq_len": 64, "n_layer": 2, "n_embd": 64, "n_head": 2, "vocab_size": 256, "qk_norm": True},
           "optim": {"name": "muon", "lr": 0.015, "muon_lr": 0.035, "grad_clip": 1.0, "warmup_frac": 0.02, "schedule": "wsd"},
           "data": {"corpus": "x", "tokenizer": "byte", "weights": None},
           "train": {"compile": False, "micro_batch_rows": 16, "diverge_ratio": 2.5, "diverge_patience": 10},
           "budget": {"tokens": n * 1024}, "faults": {"data_sleep_s": 0.0, "nan_at_step": 0, "replay_on_resume": False, "mixture_bias": ""}}
    for section, values in (recipe or {}).items():
        rec[section] = {**rec.get(section, {}), **values} if isinstance(values, dict) else values
    prov = {"run_id": "abc123def456", "device": "test cpu", "device_type": "cpu", "memory_total_mb": 24000.0, "world_size": 1,
            "data_weights": dict(zip(DOMAINS, weights)), "train_bytes_per_token": {d: 1.0 for d in DOMAINS}, "seed": 0,
            "data_manifest_sha256": "m", "eval_module_sha256": "e", **(provenance or {})}
    (path / "recipe.json").write_text(json.dumps(rec))
    (path / "provenance.json").write_text(json.dumps(prov))
    all_rows = sorted(rows + evals, key=lambda r: (r["step"], r["type"] == "eval"))
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in all_rows))
    if summary is not False:
        s = {"status": "ok", "val_bpb": evals[-1]["val_bpb"] if evals else None,
             "val_bpb_domains": evals[-1]["val_bpb_domains"] if evals else None, "params": 50000, "tokens": n * 1024,
             "steps": n, "seconds": 10.0, "tokens_per_s": 30000.0, "mfu": None, "peak_mem_mb": 350.0, "world_size": 1, "error": None}
        (path / "summary.json").write_text(json.dumps({**s, **(summary or {})}))
    return path


def alarms(report):
    return report.ids("warning")


def assert_no_detector_errors(report):
    broken = [c for c in report.checks if "detector error" in c.note]
    assert not broken, broken


# --- healthy --------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_a_healthy_run_gets_no_findings(tmp_path, seed):
    report = diagnose(write_run(tmp_path / "run", make_rows(seed=seed)))
    assert report.findings == [], [f.summary for f in report.findings]
    assert report.verdict == "healthy"
    assert_no_detector_errors(report)
    assert "no findings" in render_text(report, color=False)


# --- optimisation -----------------------------------------------------------------------------


def test_loss_spike_is_found_with_its_step_size_and_recovery(tmp_path):
    rows = make_rows()
    rows[199]["loss"] *= 1.8  # step 200
    report = diagnose(write_run(tmp_path / "run", rows))
    (f,) = [f for f in report.findings if f.id == "loss_spike"]
    assert f.severity == "warning" and f.steps == (200, 200)
    spike = f.evidence["spikes"][0]
    assert spike["peak_step"] == 200 and spike["ratio"] == pytest.approx(1.8, rel=0.1)
    assert spike["recovered_at"] == 201
    assert f.series is not None and 200 in f.series.steps
    assert alarms(report) == {"loss_spike"}


def test_one_spike_does_not_mask_the_next(tmp_path):
    rows = make_rows()
    for step, factor in ((150, 1.7), (153, 1.6), (240, 1.5)):  # two close together, one later
        rows[step - 1]["loss"] *= factor
    f = next(f for f in diagnose(write_run(tmp_path / "run", rows)).findings if f.id == "loss_spike")
    assert [s["peak_step"] for s in f.evidence["spikes"]] == [150, 153, 240]


def test_six_sigma_spike_smaller_than_the_jump_rule_is_found_by_z_score(tmp_path):
    rows = make_rows(noise=0.01)  # a low-noise (large-batch) run: 6 sigma is ~3%
    rows[249]["loss"] += 0.25  # ~12% above the level, far beyond 6 sigma
    f = next(f for f in diagnose(write_run(tmp_path / "run", rows)).findings if f.id == "loss_spike")
    assert f.evidence["spikes"][0]["rule"] == "z" and f.evidence["spikes"][0]["z"] > 6


def test_noise_during_warmup_is_not_a_spike(tmp_path):
    rows = make_rows(noise=0.08)
    rows[15]["loss"] = rows[14]["loss"] * 1.25  # early, a noisy but ordinary bump while the loss falls fast
    assert "loss_spike" not in alarms(diagnose(write_run(tmp_path / "run", rows)))


def test_a_loss_back_above_its_starting_value_is_a_spike(tmp_path):
    rows = make_rows()
    rows[3]["loss"] = rows[0]["loss"] * 1.2  # step 4: worse than the untrained model
    f = next(f for f in diagnose(write_run(tmp_path / "run", rows)).findings if f.id == "loss_spike")
    assert f.evidence["spikes"][0]["rule"] == "above_start" and f.evidence["num_early"] == 1


def test_an_unrecovered_spike_is_an_error(tmp_path):
    rows = make_rows()
    for r in rows[260:]:
        r["loss"] *= 1.6
    f = next(f for f in diagnose(write_run(tmp_path / "run", rows)).findings if f.id == "loss_spike")
    assert f.severity == "error" and f.evidence["num_unrecovered"] == 1


def test_grad_norm_spike_leading_a_loss_spike_reports_the_lead(tmp_path):
    rows = make_rows()
    rows[196]["grad_norm"] *= 8  # step 197
    rows[196]["max_grad_layer"] = "block1"
    rows[199]["loss"] *= 1.8  # step 200: 3 steps later
    report = diagnose(write_run(tmp_path / "run", rows))
    g = next(f for f in report.findings if f.id == "grad_norm_spike")
    assert g.evidence["lead_steps"] == [3] and g.severity == "info" and "block1" in g.evidence["layers"]
    spike = next(f for f in report.findings if f.id == "loss_spike").evidence["spikes"][0]
    assert spike["grad_norm_lead_steps"] == 3


def test_a_grad_norm_spike_the_loss_never_showed_is_a_warning(tmp_path):
    rows = make_rows()
    rows[180]["grad_norm"] *= 10
    g = next(f for f in diagnose(write_run(tmp_path / "run", rows)).findings if f.id == "grad_norm_spike")
    assert g.severity == "warning" and g.evidence["num_hidden"] == 1


def test_nan_loss_is_an_error_at_its_step(tmp_path):
    rows = make_rows(n=80)
    rows[-1].update(loss=float("nan"), grad_norm=float("nan"))
    report = diagnose(write_run(tmp_path / "run", rows, evals=[], summary={"status": "diverged", "val_bpb": None}))
    f = report.findings[0]
    assert f.id == "nan_loss" and f.severity == "error" and f.steps == (80, 80)
    assert "divergence" not in report.ids()  # one finding for one event
    json.dumps(report.to_dict(), allow_nan=False)  # NaN evidence is JSON-safe (null)


def test_sustained_divergence_is_an_error(tmp_path):
    rows = make_rows(n=200)
    for i, r in enumerate(rows[150:]):
        r["loss"] = 2.3 + 0.12 * i  # climbs steadily without a single jump
    report = diagnose(write_run(tmp_path / "run", rows, summary={"status": "diverged"}))
    f = next(f for f in report.findings if f.id == "divergence")
    assert f.severity == "error" and f.evidence["status"] == "diverged"


def test_dead_training_with_a_far_too_low_lr(tmp_path):
    rows = make_rows(n=100)
    rng = np.random.default_rng(1)
    for r in rows:
        r["loss"] = 5.545 + 0.003 * rng.standard_normal()
        r["lr"] = r["lr"] / 0.015 * 1e-6
    report = diagnose(write_run(tmp_path / "run", rows, recipe={"optim": {"lr": 1e-6, "muon_lr": 1e-6}}))
    f = next(f for f in report.findings if f.id == "dead_training")
    assert f.severity == "error" and "too low" in f.cause and f.evidence["uniform_loss"] == pytest.approx(math.log(256))
    assert "plateau" not in report.ids()


def test_dead_training_is_not_judged_during_warmup(tmp_path):
    rows = make_rows(n=30, warmup=1000)  # a live run still warming up: the loss has barely moved
    for r in rows:
        r["loss"] = 5.5
    report = diagnose(write_run(tmp_path / "run", rows, summary=False))
    assert "dead_training" not in report.ids()
    assert any(c.detector == "dead_training" and "warming up" in c.note for c in report.checks)


def test_plateau_while_the_lr_is_high(tmp_path):
    rows = make_rows(n=400)
    rng = np.random.default_rng(3)
    for r in rows[60:]:
        r["loss"] = 3.0 + 0.08 * rng.standard_normal()
    f = next(f for f in diagnose(write_run(tmp_path / "run", rows)).findings if f.id == "plateau")
    assert f.severity == "warning"


def test_lr_stuck_at_zero(tmp_path):
    rows = make_rows(n=100)
    for r in rows[30:]:
        r["lr"] = 0.0
    f = next(f for f in diagnose(write_run(tmp_path / "run", rows)).findings if f.id == "lr_zero")
    assert f.evidence["first_zero_step"] == 31


def test_no_warmup_needs_an_unstable_start(tmp_path):
    stable = make_rows(warmup=1)
    assert "no_warmup" not in diagnose(write_run(tmp_path / "stable", stable)).ids()
    unstable = make_rows(warmup=1)
    unstable[1]["grad_norm"] = unstable[0]["grad_norm"] * 7
    f = next(f for f in diagnose(write_run(tmp_path / "unstable", unstable, recipe={"optim": {"warmup_frac": 0.0}})).findings
             if f.id == "no_warmup")
    assert f.evidence["first_grad_jump"] == pytest.approx(7) and "warmup_frac=0" in f.cause


# --- systems ----------------------------------------------------------------------------------


def test_data_stall_share_of_step_time(tmp_path):
    rows = make_rows(n=60)
    for r in rows:
        r["data_wait_frac"] = 0.45
    f = next(f for f in diagnose(write_run(tmp_path / "run", rows)).findings if f.id == "data_stall")
    assert f.severity == "error" and f.evidence["wait_share"] == pytest.approx(0.45, rel=0.01)
    assert "num_workers" in f.fix


def test_mfu_is_skipped_on_cpu_and_judged_on_gpu(tmp_path):
    report = diagnose(write_run(tmp_path / "cpu", make_rows(n=60)))
    assert any(c.detector == "low_mfu" and not c.ran and "null" in c.note for c in report.checks)
    gpu = {"device": "NVIDIA H100 80GB HBM3", "device_type": "cuda", "memory_total_mb": 81559.0}
    wide = {"model": {"n_embd": 768}, "train": {"compile": True}}
    low = make_rows(n=60)
    for r in low:
        r["mfu"] = 0.06
    f = next(f for f in diagnose(write_run(tmp_path / "low", low, recipe=wide, provenance=gpu)).findings if f.id == "low_mfu")
    assert f.evidence["expected_floor"] == pytest.approx(0.20)
    good = make_rows(n=60)
    for r in good:
        r["mfu"] = 0.42
    assert "low_mfu" not in diagnose(write_run(tmp_path / "good", good, recipe=wide, provenance=gpu)).ids()


def test_throughput_drop_and_its_cause(tmp_path):
    rows = make_rows(n=300, tokens_per_s=3000)  # ~0.34 s a step
    for r in rows[200:260]:
        r["tokens_per_s"] /= 3
        r["step_s"] *= 3
        r["data_wait_frac"] = 0.6
    f = next(f for f in diagnose(write_run(tmp_path / "run", rows)).findings if f.id == "throughput_drop")
    assert 195 <= f.steps[0] <= 215 and 250 <= f.steps[1] <= 265
    assert "data pipeline" in f.cause and f.evidence["slow_seconds"] > 30


def test_a_throughput_drop_with_idle_cpu_is_called_waiting(tmp_path):
    """On CPU, cpu_s (process CPU seconds of the step) tells waiting from slower code."""
    rows = make_rows(n=300, tokens_per_s=3000)
    for r in rows:
        r["cpu_s"] = 2 * r["step_s"]  # two busy threads
    for r in rows[200:260]:
        r["tokens_per_s"] /= 3
        r["step_s"] *= 3  # same CPU work, three times the wall time: the cores were taken
    f = next(f for f in diagnose(write_run(tmp_path / "run", rows)).findings if f.id == "throughput_drop")
    assert "waiting, not computing" in f.cause and f.evidence["cpu_per_wall_in_drop"] == pytest.approx(2 / 3, rel=0.01)
    for r in rows[200:260]:
        r["cpu_s"] *= 3  # the CPU was busy the whole time: the code itself got slower
    f = next(f for f in diagnose(write_run(tmp_path / "slow", rows)).findings if f.id == "throughput_drop")
    assert "waiting" not in f.cause


def test_a_few_slow_seconds_are_not_a_throughput_drop(tmp_path):
    rows = make_rows(n=300)  # ~34 ms a step: 60 steps at a third of the speed last ~6 s
    for r in rows[200:260]:
        r["tokens_per_s"] /= 3
        r["step_s"] *= 3
    assert "throughput_drop" not in diagnose(write_run(tmp_path / "run", rows)).ids()


def test_straggler_rank(tmp_path):
    rows = make_rows(n=100)
    rng = np.random.default_rng(0)
    for r in rows:
        r["rank_step_s"] = (0.1 * (1 + 0.03 * rng.standard_normal(4)) * np.array([1, 1, 1.3, 1])).tolist()
    f = next(f for f in diagnose(write_run(tmp_path / "run", rows, provenance={"world_size": 4})).findings if f.id == "straggler")
    assert f.evidence["rank"] == 2 and f.evidence["ratio"] == pytest.approx(1.3, rel=0.05)
    even = make_rows(n=100)
    for r in even:
        r["rank_step_s"] = (0.1 * (1 + 0.03 * rng.standard_normal(4))).tolist()
    assert "straggler" not in diagnose(write_run(tmp_path / "even", even)).ids()


@pytest.mark.parametrize("peak, severity", [(0.5, None), (0.93, "warning"), (0.985, "error")])
def test_memory_pressure(tmp_path, peak, severity):
    rows = make_rows(n=50)
    for r in rows:
        r["peak_mem_mb"] = peak * 80000
    found = [f for f in diagnose(write_run(tmp_path / "run", rows, provenance={"memory_total_mb": 80000.0})).findings
             if f.id == "memory_pressure"]
    assert [f.severity for f in found] == ([severity] if severity else [])


# --- data ---------------------------------------------------------------------------------------


def test_train_far_below_val_is_repeated_data(tmp_path):
    rows = make_rows()
    bpb = 5.0  # val far above the train loss (~2.1 nats = 3.0 bits/byte)
    ev = [{"type": "eval", "step": 300, "tokens": 300 * 1024, "val_bpb": bpb, "val_bpb_domains": {d: bpb for d in DOMAINS}}]
    f = next(f for f in diagnose(write_run(tmp_path / "run", rows, evals=ev)).findings if f.id == "train_val_gap")
    train_bpb = np.mean([r["loss"] for r in rows[-30:]]) / math.log(2)  # the last 10% of steps before the eval
    assert f.evidence["train_bpb"] == pytest.approx(train_bpb) and f.evidence["gap"] == pytest.approx(1 - train_bpb / 5.0)


def test_val_far_below_train_is_a_leak(tmp_path):
    ev = [{"type": "eval", "step": 300, "tokens": 300 * 1024, "val_bpb": 1.5, "val_bpb_domains": {d: 1.5 for d in DOMAINS}}]
    assert "val_below_train" in diagnose(write_run(tmp_path / "run", make_rows(), evals=ev)).ids()


@pytest.mark.parametrize("seed", range(5))
def test_sampling_noise_never_reads_as_mixture_drift(tmp_path, seed):
    rows = make_rows(n=400, seed=100 + seed, weights=[0.90, 0.09, 0.01])
    report = diagnose(write_run(tmp_path / "run", rows, weights=[0.90, 0.09, 0.01]))
    assert "mixture_drift" not in report.ids()


def test_mixture_drift_is_found_by_chi_square(tmp_path):
    rows = make_rows(n=200, weights=[0.4, 0.4, 0.2])  # the loader drew 40/40/20...
    f = next(f for f in diagnose(write_run(tmp_path / "run", rows, weights=WEIGHTS)).findings if f.id == "mixture_drift")
    assert f.evidence["p_value"] < 1e-6 and f.evidence["tv_distance"] == pytest.approx(0.1, abs=0.03)  # ...not 40/50/10
    assert f.evidence["domains"]["literature"]["realised"] == pytest.approx(0.2, abs=0.02)


def test_drift_in_part_of_the_run_is_found_by_windows(tmp_path):
    rows = make_rows(n=400)
    rng = np.random.default_rng(5)
    for r in rows[300:350]:
        r["domain_rows"] = dict(zip(DOMAINS, rng.multinomial(16, [0.1, 0.2, 0.7]).tolist()))
    f = next(f for f in diagnose(write_run(tmp_path / "run", rows)).findings if f.id == "mixture_drift")
    assert any(w["drifted"] for w in f.evidence["windows"])


def test_starved_domain_that_lags_is_a_mixture_imbalance(tmp_path):
    weights = [0.69, 0.3, 0.01]
    ev = [{"type": "eval", "step": 300, "tokens": 300 * 1024, "val_bpb": 3.2,
           "val_bpb_domains": {"code": 3.0, "docs": 3.1, "literature": 4.2}}]
    recipe = {"data": {"weights": {"code": 1.0, "docs": 0.43, "literature": 0.0145}}}
    run = write_run(tmp_path / "run", make_rows(weights=weights), evals=ev, recipe=recipe, weights=weights)
    f = next(f for f in diagnose(run).findings if f.id == "mixture_imbalance")
    assert f.evidence["starved"] == ["literature"]
    by_size = write_run(tmp_path / "by-size", make_rows(weights=weights), evals=ev, weights=weights)  # data.weights unset
    assert "mixture_imbalance" not in diagnose(by_size).ids()


def test_replayed_batches_after_a_resume(tmp_path):
    rows = make_rows(n=120)
    for i in range(40, 120):
        rows[i]["batch_hash"] = rows[i - 40]["batch_hash"]
    run = write_run(tmp_path / "run", rows, provenance={"resumes": [{"step": 40, "time": "t"}]})
    f = next(f for f in diagnose(run).findings if f.id == "data_replay")
    assert f.severity == "error" and f.evidence["num_repeated_steps"] == 80 and f.evidence["after_resume"] == [40]
    assert f.evidence["pairs"][0] == [41, 1] or tuple(f.evidence["pairs"][0]) == (41, 1)


def test_one_identical_batch_without_a_resume_is_not_a_replay(tmp_path):
    rows = make_rows(n=120)
    rows[90]["batch_hash"] = rows[10]["batch_hash"]
    assert "data_replay" not in diagnose(write_run(tmp_path / "run", rows)).ids()


def test_loss_jump_after_resume(tmp_path):
    rows = make_rows(n=200)
    for r in rows[100:103]:
        r["loss"] = 4.0
    run = write_run(tmp_path / "run", rows, provenance={"resumes": [{"step": 100, "time": "t"}]})
    assert "resume_loss_jump" in diagnose(run).ids()


# --- baseline ----------------------------------------------------------------------------------------


def test_regression_vs_baseline(tmp_path):
    base = write_run(tmp_path / "base", make_rows(seed=1))
    same = write_run(tmp_path / "same", make_rows(seed=2))
    report = diagnose(same, baseline_dir=base)
    assert "regression_vs_baseline" not in report.ids() and report.baseline["verdict"] in ("same", "better")
    worse_rows = make_rows(seed=3)
    for r in worse_rows:
        r["loss"] += 0.3
    worse = write_run(tmp_path / "worse", worse_rows)
    f = next(f for f in diagnose(worse, baseline_dir=base).findings if f.id == "regression_vs_baseline")
    assert f.evidence["delta_val_bpb"] > f.evidence["margin_bpb"] and f.evidence["curve"]["worse_share"] >= 0.8
    # a caller-supplied noise floor larger than the gap silences the val comparison
    quiet = diagnose(worse, baseline_dir=base, noise_bpb=5.0)
    assert "regression_vs_baseline" not in quiet.ids() and quiet.baseline["margin_source"] == "noise_bpb"


def test_a_missing_baseline_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        diagnose(write_run(tmp_path / "run", make_rows(n=20)), baseline_dir=tmp_path / "nope")


# --- statistics ----------------------------------------------------------------------------------


def test_chi2_sf_matches_tables():
    assert chi2_sf(3.841459, 1) == pytest.approx(0.05, rel=1e-4)
    assert chi2_sf(5.991465, 2) == pytest.approx(0.05, rel=1e-4)
    assert chi2_sf(18.307038, 10) == pytest.approx(0.05, rel=1e-4)
    assert chi2_sf(0.5, 3) == pytest.approx(0.918891, rel=1e-4)
    assert chi2_sf(1e5, 2) == 0.0 and chi2_sf(0.0, 2) == 1.0


def test_chi_square_p_values_are_uniform_under_the_null():
    rng = np.random.default_rng(0)
    p = np.array([chi_square_gof(rng.multinomial(5000, WEIGHTS), np.array(WEIGHTS))[2] for _ in range(400)])
    assert 0.02 < np.mean(p < 0.05) < 0.09
    assert np.min(p) > 1e-4  # nothing close to the 1e-6 alarm level in 400 honest draws


def test_scan_spikes_on_a_flat_noisy_series():
    rng = np.random.default_rng(0)
    x = 3 + 0.05 * rng.standard_normal(1000)
    x[500] += 0.5  # 10 sigma
    s = scan_spikes(x, level_window=8, sigma_window=128, min_sigma_points=64, z_threshold=6, ratio_threshold=1.4,
                    z_min_ratio=1.05, z_from=0, min_prior=3)
    assert np.nonzero(s["spike"])[0].tolist() == [500]
    assert s["z"][500] == pytest.approx(10, rel=0.25)


def test_sparkline():
    assert sparkline([0, 1, 2, 3, 4, 5, 6, 7]) == "▁▂▃▄▅▆▇█"
    assert sparkline([1, float("nan"), 1]) == "▁×▁"
    assert len(sparkline(list(range(1000)), width=40)) == 40


# --- report, schema and text -----------------------------------------------------------------------


def test_json_schema_and_text_view(tmp_path):
    rows = make_rows()
    rows[199]["loss"] *= 1.8
    report = diagnose(write_run(tmp_path / "run", rows))
    d = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert d["schema_version"] == SCHEMA_VERSION == 1 and d["kind"] == "pretrainlab.doctor.report"
    assert set(d) == {"schema_version", "kind", "generated_at", "run_dir", "verdict", "facts", "findings", "data_quality",
                      "checks", "baseline"}
    f = d["findings"][0]
    assert set(f) == {"id", "severity", "title", "summary", "steps", "evidence", "cause", "fix", "series"}
    assert f["id"] == "loss_spike" and f["steps"] == [200, 200] and set(f["series"]) == {"label", "steps", "values"}
    assert d["facts"]["run_id"] == "abc123def456" and d["facts"]["steps_logged"] == 300 and d["verdict"] == "warning"
    assert all(set(c) == {"detector", "ran", "note"} for c in d["checks"])
    plain = render_text(report, color=False)
    assert "loss_spike" in plain and "\033[" not in plain and any(ch in plain for ch in "▁▂▃▄▅▆▇█")
    assert "cause" in plain and "fix" in plain
    colored = render_text(report, color=True)
    assert "\033[1;33m" in colored  # warning in yellow


# --- bad input ---------------------------------------------------------------------------------------


def test_a_path_that_does_not_exist_is_a_one_line_user_error(tmp_path):
    with pytest.raises(UserError) as e:
        diagnose(tmp_path / "missing-run")
    assert "\n" not in str(e.value) and "pretrainlab train" in str(e.value)


def test_live_run_with_a_half_written_last_line_and_no_summary(tmp_path):
    rows = make_rows(n=150)
    run = write_run(tmp_path / "run", rows, evals=[], summary=False)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"type": "train", "step": 151, "loss": 2.')  # the writer is mid-line
    report = diagnose(run)
    assert report.facts["status"] == "running" and report.facts["live"] is True
    assert report.facts["last_step"] == 150 and report.findings == []
    assert any("cut short" in n for n in report.data_quality) and any("in progress" in n for n in report.data_quality)


def test_a_killed_run_without_summary_is_incomplete(tmp_path):
    run = write_run(tmp_path / "run", make_rows(n=50), evals=[], summary=False)
    old = os.path.getmtime(run / "metrics.jsonl") - 3600
    os.utime(run / "metrics.jsonl", (old, old))
    report = diagnose(run)
    assert report.facts["status"] == "incomplete" and "run_incomplete" in report.ids()


def test_garbage_lines_are_skipped_and_counted(tmp_path):
    run = write_run(tmp_path / "run", make_rows(n=100))
    lines = (run / "metrics.jsonl").read_text().splitlines()
    lines[10:10] = ["not json at all", "[1, 2, 3]", '{"type": "train"}', '{"type": "train", "step": "x"}', "\x00\xff garbage"]
    lines.insert(50, '{"type": "train", "step": 49, "loss": "high", "grad_norm": null}')  # wrong types, a duplicate step
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    report = diagnose(run)
    assert any("5 unreadable line(s)" in n for n in report.data_quality)
    assert any("more than once" in n for n in report.data_quality)
    assert report.facts["steps_logged"] == 100
    assert_no_detector_errors(report)


def test_binary_garbage_metrics(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_bytes(bytes(range(256)) * 20)
    report = diagnose(run)
    assert report.verdict == "no_data" and any("unreadable" in n for n in report.data_quality)
    render_text(report)


def test_empty_run_directory(tmp_path):
    (tmp_path / "run").mkdir()
    report = diagnose(tmp_path / "run")
    assert report.verdict == "no_data" and report.findings == []
    assert any("empty" in n for n in report.data_quality)
    assert "nothing to diagnose" in render_text(report, color=False)


def test_a_run_dir_with_only_recipe_json(tmp_path):
    run = write_run(tmp_path / "run", make_rows(n=5))
    for name in ("metrics.jsonl", "summary.json", "provenance.json"):
        (run / name).unlink()
    report = diagnose(run)
    assert report.verdict == "no_data" and report.facts["recipe"] == "synthetic"
    assert any("no metrics.jsonl" in n for n in report.data_quality)
    assert any("no provenance.json" in n for n in report.data_quality)


def test_metrics_without_recipe_or_provenance_are_still_analysed(tmp_path):
    rows = make_rows()
    rows[199]["loss"] *= 1.8
    run = write_run(tmp_path / "run", rows)
    for name in ("recipe.json", "provenance.json", "summary.json"):
        (run / name).unlink()
    report = diagnose(run)
    assert "loss_spike" in report.ids()
    assert_no_detector_errors(report)


def test_damaged_json_files_are_notes(tmp_path):
    run = write_run(tmp_path / "run", make_rows(n=60))
    (run / "summary.json").write_text('{"status": "ok", ')
    (run / "provenance.json").write_text("[1, 2]")
    report = diagnose(run)
    assert any("summary.json is unreadable" in n for n in report.data_quality)
    assert any("provenance.json holds a list" in n for n in report.data_quality)
    assert_no_detector_errors(report)


def test_a_file_instead_of_a_directory(tmp_path):
    run = write_run(tmp_path / "run", make_rows(n=60))
    report = diagnose(run / "metrics.jsonl")  # the metrics file itself: analysed
    assert report.facts["steps_logged"] == 60 and any("is a file" in n for n in report.data_quality)
    other = tmp_path / "notes.txt"
    other.write_text("hello")
    report = diagnose(other)
    assert report.verdict == "no_data" and any("not a directory" in n for n in report.data_quality)
    assert "not a directory" in " ".join(render_text(report, color=False).split())  # (a long path may wrap it)


def test_a_crashed_run(tmp_path):
    run = write_run(tmp_path / "run", make_rows(n=60), summary={"status": "crashed", "error": "Traceback ...\nRuntimeError: boom"})
    f = diagnose(run).findings[0]
    assert f.id == "run_crashed" and f.severity == "error" and "RuntimeError: boom" in f.summary


def test_a_run_its_campaign_stopped_is_no_preemption_to_resume(tmp_path):
    """A screen the campaign stopped at a rung was reported as "a scheduler or user sent SIGTERM: continue it"."""
    run = write_run(tmp_path / "run", make_rows(n=60), summary={"status": "preempted", "stopped_by": "early stopping: its "
                                                                 "campaign stopped it, the experiment having fallen behind"})
    f = diagnose(run).findings[0]
    assert f.id == "run_stopped" and f.severity == "info" and "early stopping" in f.summary and "--resume" not in f.fix
    run = write_run(tmp_path / "late", make_rows(n=60), summary={"status": "preempted",
                                                                  "stopped_by": "its campaign's time limit per run (60 s)"})
    f = diagnose(run).findings[0]
    assert f.id == "run_stopped" and f.severity == "warning" and "--run-budget" in f.fix
    run = write_run(tmp_path / "term", make_rows(n=60), summary={"status": "preempted"})
    assert diagnose(run).findings[0].id == "run_preempted"


def test_a_copied_run_dir_is_diagnosed_the_same(tmp_path):
    run = write_run(tmp_path / "run", make_rows())
    shutil.copytree(run, tmp_path / "copy")
    a, b = diagnose(run).to_dict(), diagnose(tmp_path / "copy").to_dict()
    assert a["findings"] == b["findings"] and a["facts"] == b["facts"]


JUNK = [None, "text", True, -1, 10**400, float("nan"), [], {}, [1, "x"], {"a": "b"}, 1e308]


@pytest.mark.parametrize("seed", range(8))
def test_fuzzed_fields_never_crash_a_detector(tmp_path, seed):
    """Every field of the run files replaced, at random, by a value of the wrong type."""
    rng = np.random.default_rng(seed)
    rows = make_rows(n=150, seed=seed)
    for r in rows:
        for key in list(r):
            if key not in ("type", "step") and rng.random() < 0.05:
                r[key] = JUNK[rng.integers(len(JUNK))]
    for i in rng.integers(0, len(rows), 5):  # and a few whole rows of junk
        rows[i] = {"type": "train", "step": rows[i]["step"], **{k: JUNK[rng.integers(len(JUNK))] for k in rows[0]
                                                               if k not in ("type", "step")}}
    run = write_run(tmp_path / "run", rows)
    for name in ("provenance.json", "summary.json", "recipe.json"):
        obj = json.loads((run / name).read_text())
        for key in list(obj):
            if rng.random() < 0.3:
                obj[key] = JUNK[rng.integers(len(JUNK))]
        (run / name).write_text(json.dumps(obj))
    report = diagnose(run)
    assert_no_detector_errors(report)
    json.dumps(report.to_dict(), allow_nan=False)
    render_text(report)


def test_a_failed_attempt_before_a_resume_is_explained(tmp_path):
    """Rows the resume recomputed (metrics.superseded.jsonl) show the first attempt went NaN."""
    rows = make_rows(n=200)
    path = write_run(tmp_path / "run", rows, provenance={"resumes": [{"step": 100, "time": "t"}]})
    first = [{**r, "superseded_by_resume_at": 100} for r in make_rows(n=200)[100:140]]
    first[-5]["loss"] = float("nan")
    (path / "metrics.superseded.jsonl").write_text("".join(json.dumps(r) + "\n" for r in first))
    f = next(f for f in diagnose(path).findings if f.id == "replaced_attempt")
    assert f.severity == "warning" and f.evidence["failed_step"] == 136 and f.evidence["resumed_run_passed"]
    assert "NaN" in f.summary and "got past" in f.summary
