"""The run doctor against the real trainer: every deliberately broken run is caught with the
right finding id, and healthy runs over several seeds stay silent (recall 1, no false alarm).

The suite (bench/faults.py, outside the package) trains tiny models on the session corpus; the
replay case runs the CLI in a subprocess, SIGTERMs it and resumes it. bench/doctor_eval.py
runs the same suite over more seeds and reports the numbers in docs/doctor.md.
"""

import json
import sys
from pathlib import Path

import pytest
from conftest import tiny_overrides

from pretrainlab.doctor import diagnose, render_text

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from faults import Result, fault_cases, run_case, summarize  # noqa: E402 (bench/, not part of the package)

HEALTHY_SEEDS = (0, 1, 2)
HEALTHY_STEPS = 200


@pytest.fixture(scope="module")
def suite(corpus_dir, tmp_path_factory):
    """Run every case once (faults on seed 0, healthy on 3 seeds); returns (cases, results)."""
    work = tmp_path_factory.mktemp("doctor-faults")
    domains = sorted(json.loads((corpus_dir / "manifest.json").read_text())["domains"])
    cases = fault_cases(domains, HEALTHY_STEPS)
    base = dict(o.split("=", 1) for o in tiny_overrides(corpus_dir))
    results: dict[tuple[str, int], Result] = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PRETRAINLAB_WORKSPACE", str(work / "workspace"))  # hermetic: a ledger registers runs here
        for seed in HEALTHY_SEEDS:
            results["healthy", seed] = run_case(cases["healthy"], seed, corpus_dir, work, base)
        for name, case in cases.items():
            if name != "healthy":
                results[name, 0] = run_case(case, 0, corpus_dir, work, base, baseline_dir=results["healthy", 0].run_dir)
    return cases, results


FAULTS = [name for name in fault_cases(["code", "docs", "literature"]) if name != "healthy"]


@pytest.mark.parametrize("name", FAULTS)
def test_each_fault_is_detected_with_the_right_id(suite, name):
    cases, results = suite
    result = results[name, 0]
    report = result.report
    assert cases[name].expect & result.alarms, f"{name}: expected one of {set(cases[name].expect)}, got\n{render_text(report, color=False)}"
    assert not [c for c in report.checks if "detector error" in c.note]
    hit = next(f for f in report.findings if f.id in cases[name].expect)
    assert hit.summary and hit.cause and hit.fix and hit.evidence


@pytest.mark.parametrize("seed", HEALTHY_SEEDS)
def test_healthy_runs_get_no_findings(suite, seed):
    _, results = suite
    report = results["healthy", seed].report
    assert report.findings == [], render_text(report, color=False)
    assert report.facts["status"] == "ok" and report.facts["steps_logged"] == HEALTHY_STEPS


def test_a_healthy_run_is_no_regression_against_another_seed(suite):
    _, results = suite
    report = diagnose(results["healthy", 1].run_dir, baseline_dir=results["healthy", 0].run_dir)
    assert report.findings == [], render_text(report, color=False)
    assert report.baseline["compared"] and report.baseline["verdict"] != "worse"


def test_recall_is_one_and_there_are_no_false_alarms(suite):
    cases, results = suite
    s = summarize(list(results.values()), cases)
    assert s["num_faults"] == len(FAULTS) and s["num_healthy"] == len(HEALTHY_SEEDS)
    assert s["recall"] == 1.0, s["cases"]
    assert s["false_alarm_rate"] == 0.0, s["cases"]


def test_findings_name_the_injected_fault_and_its_steps(suite):
    _, results = suite
    nan = next(f for f in results["nan", 0].report.findings if f.id == "nan_loss")
    assert nan.steps[0] == 25 and nan.evidence["injected"] and "faults.nan_at_step=25" in nan.cause
    replay = next(f for f in results["replay_on_resume", 0].report.findings if f.id == "data_replay")
    resumed_at = results["replay_on_resume", 0].report.facts["resumes"][0]
    assert replay.evidence["after_resume"] == [resumed_at] and replay.steps[0] == resumed_at + 1
    assert replay.evidence["pairs"][0][1] == 1  # the first step after the resume replays step 1's batch
    stall = next(f for f in results["data_stall", 0].report.findings if f.id == "data_stall")
    assert stall.evidence["injected_sleep_s"] == 0.03 and stall.evidence["wait_share"] > 0.1
    drift = next(f for f in results["mixture_bias", 0].report.findings if f.id == "mixture_drift")
    assert drift.evidence["p_value"] < 1e-6


def test_the_doctor_reads_a_live_run(suite, tmp_path):
    """A copy of a real run cut mid-way, as a live run looks: no summary.json, half a line."""
    _, results = suite
    src = results["healthy", 0].run_dir
    live = tmp_path / "live"
    live.mkdir()
    for name in ("recipe.json", "provenance.json"):
        (live / name).write_text((src / name).read_text())
    lines = (src / "metrics.jsonl").read_text().splitlines()[:120]
    (live / "metrics.jsonl").write_text("\n".join(lines) + "\n" + lines[-1][: len(lines[-1]) // 2])
    report = diagnose(live)
    assert report.facts["status"] == "running" and report.facts["last_step"] == 120
    assert report.findings == [], render_text(report, color=False)
    assert any("cut short" in n for n in report.data_quality)


def test_a_single_duplicated_domain_is_named_even_when_the_mix_hides_it(suite):
    """Only one minor domain repeats: the overall train/val gap stays under the threshold,
    the per-domain train loss (trainer domain_loss) names the domain."""
    cases, results = suite
    domain = cases["duplicated_domain"].duplicated_domain
    f = next(f for f in results["duplicated_domain", 0].report.findings if f.id == "train_val_gap")
    assert f.evidence["gap"] < f.evidence["thresholds"]["train_below_val"] <= f.evidence["domain_gaps"][domain]
    assert f"{domain} " in f.summary.split("by domain:")[1]
