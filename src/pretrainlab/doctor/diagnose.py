"""diagnose(): run every detector over a run directory (and compare it with a baseline).

    report = diagnose("runs/tiny-cpu-...")                            # -> Report
    report = diagnose("runs/new", baseline_dir="runs/old", noise_bpb=0.004)
    print(render_text(report)); json.dumps(report.to_dict())
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .detectors import DETECTORS, LN2, Signals, Skip, _bytes_per_token
from .report import SEVERITIES, Check, Finding, Report, Series
from .runfiles import as_float, load_run

# Regression vs a baseline. With a caller-supplied noise floor (noise_bpb, e.g. 2x the seed
# std the research loop measured) a val_bpb or train-curve difference beyond it counts.
# Without one the margin is max(0.01 bpb, 2% of the baseline's val_bpb) and, because one
# seed against one seed is weak evidence (tiny CPU runs vary ~1% between seeds), the
# val_bpb and the train curve must agree in direction unless val_bpb is worse by 2 margins.
DEFAULT_MARGIN_ABS, DEFAULT_MARGIN_REL = 0.01, 0.02
CURVE_POINTS = 20  # compare the train curves at 20 token counts over the second half of the shared range
CURVE_WORSE_SHARE = 0.8  # worse by more than the margin at >= 80% of them


def diagnose(run_dir: str | Path, baseline_dir: str | Path | None = None, *, noise_bpb: float | None = None) -> Report:
    """Diagnose a run directory from its files. A path that does not exist raises UserError;
    anything else (partial, live, damaged runs) gives a report with data-quality notes.
    noise_bpb: the val_bpb noise floor (e.g. 2 x the seed std the research loop measured)
    used as the regression margin against baseline_dir."""
    run = load_run(run_dir)
    base = load_run(baseline_dir) if baseline_dir is not None else None
    sig = Signals(run)
    findings: list[Finding] = []
    checks: list[Check] = []
    for name, fn in DETECTORS:
        if not run.n and name != "run_status":
            checks.append(Check(name, False, "no training steps logged"))
            continue
        try:
            with np.errstate(all="ignore"):  # NaN/Inf and overflow in damaged values are handled as data
                found = fn(sig)
        except Skip as e:
            checks.append(Check(name, False, str(e)))
            continue
        except Exception as e:  # noqa: BLE001 - one broken detector must not cost the research loop the others
            checks.append(Check(name, False, f"detector error ({type(e).__name__}: {e}); please report it"))
            continue
        checks.append(Check(name, True))
        findings += found
    baseline = None
    if base is not None:
        with np.errstate(all="ignore"):
            baseline, found = compare_with_baseline(sig, Signals(base), noise_bpb)
        checks.append(Check("regression_vs_baseline", baseline.get("compared", False), "; ".join(baseline.get("notes", []))))
        findings += found
    findings.sort(key=lambda f: (SEVERITIES.index(f.severity), f.steps[0] if f.steps else -1))
    with np.errstate(all="ignore"):
        facts = run_facts(sig)
    return Report(run_dir=str(run.path), facts=facts, findings=findings, data_quality=list(run.notes),
                  checks=checks, baseline=baseline)


def run_facts(sig: Signals) -> dict:
    """What the run is, in a few numbers (all from its files; a field of the wrong type is None)."""
    run = sig.run
    s, p, r = run.summary or {}, run.provenance or {}, run.recipe or {}
    tail = max(1, min(20, sig.n // 10))
    finite = sig.loss[np.isfinite(sig.loss)]
    timed = sig.timed() & np.isfinite(run.train["tokens_per_s"]) if sig.n else np.zeros(0, dtype=bool)
    val, val_domains = _final_val(sig)
    return {
        "run_id": _typed(p.get("run_id"), str),
        "recipe": _typed(r.get("name"), str),
        "status": run.status,
        "live": run.status == "running",
        "seed": _typed(r.get("seed", p.get("seed")), int),
        "device": _typed(p.get("device"), str),
        "device_type": _typed(p.get("device_type"), str),
        "world_size": _typed(s.get("world_size", p.get("world_size")), int),
        "params": _typed(s.get("params"), int),
        "steps_logged": sig.n,
        "last_step": int(sig.steps[-1]) if sig.n else None,
        "tokens": _last_finite(run.train["tokens"]) if sig.n else None,
        "train_seconds": _last_finite(run.train["train_seconds"]) if sig.n else None,
        "first_loss": float(finite[0]) if len(finite) else None,
        "last_loss": float(np.median(finite[-tail:])) if len(finite) else None,
        "val_bpb": val,
        "val_bpb_domains": val_domains or None,
        "num_evals": len(run.evals),
        "peak_lr": sig.peak_lr if math.isfinite(sig.peak_lr) else None,
        "warmup_steps": int(sig.warmup_end) if sig.n else None,
        "median_tokens_per_s": float(np.median(run.train["tokens_per_s"][timed])) if timed.any() else None,
        "mfu": _typed(s.get("mfu"), float),
        "resumes": [x.get("step") for x in p.get("resumes") or [] if isinstance(x, dict) and _typed(x.get("step"), int) is not None],
    }


def _typed(v, t):
    return v if isinstance(v, t) and not isinstance(v, bool) else None


def _last_finite(a: np.ndarray):
    ok = a[np.isfinite(a)]
    return float(ok[-1]) if len(ok) else None


def _final_val(sig: Signals) -> tuple[float | None, dict]:
    s = sig.run.summary or {}
    if math.isfinite(as_float(s.get("val_bpb"))):
        domains = s.get("val_bpb_domains") or {}
    else:
        s = sig.last_eval or {}
        domains = s.get("val_bpb_domains") or {}
    val = as_float(s.get("val_bpb"))
    clean = {str(d): as_float(v) for d, v in domains.items() if math.isfinite(as_float(v))}
    return (val if math.isfinite(val) else None), clean


def _train_bpb_curve(sig: Signals) -> tuple[np.ndarray, np.ndarray] | None:
    """(tokens, train loss in bits/byte) over the finite steps; None without tokens."""
    tokens = sig.run.train.get("tokens")
    if tokens is None or sig.n < 10:
        return None
    bpt = _bytes_per_token(sig)
    shares = sig.realised_shares
    bytes_per_token = float(np.sum(shares * bpt)) if bpt is not None and shares is not None else 1.0  # else bits/token
    ok = np.isfinite(tokens) & np.isfinite(sig.loss)
    return tokens[ok], sig.loss[ok] / LN2 / bytes_per_token


def compare_with_baseline(sig: Signals, base: Signals, noise_bpb: float | None) -> tuple[dict, list[Finding]]:
    """val_bpb (overall and per domain) and the train curve at equal tokens vs a baseline run."""
    notes = []
    rp, bp = sig.run.provenance or {}, base.run.provenance or {}
    for key, what in (("data_manifest_sha256", "corpus"), ("eval_module_sha256", "evaluation code")):
        if rp.get(key) and bp.get(key) and rp[key] != bp[key]:
            notes.append(f"different {what} ({key} differs): the comparison is indicative only")
    if _bytes_per_token(sig) is None or _bytes_per_token(base) is None:
        notes.append("no train_bytes_per_token: train curves compared in nats/token")
    run_v, run_d = _final_val(sig)
    base_v, base_d = _final_val(base)
    out: dict = {"run_dir": str(base.run.path), "run_id": bp.get("run_id"), "notes": notes, "compared": False}
    if base_v is not None:
        margin = noise_bpb if noise_bpb is not None else max(DEFAULT_MARGIN_ABS, DEFAULT_MARGIN_REL * base_v)
    else:
        margin = noise_bpb if noise_bpb is not None else DEFAULT_MARGIN_ABS
    out["margin_bpb"] = margin
    out["margin_source"] = "noise_bpb" if noise_bpb is not None else f"default max({DEFAULT_MARGIN_ABS}, {DEFAULT_MARGIN_REL:.0%} of baseline)"
    val_worse = False
    if run_v is not None and base_v is not None:
        out.update(compared=True, val_bpb=run_v, baseline_val_bpb=base_v, delta_val_bpb=run_v - base_v)
        out["delta_val_bpb_domains"] = {d: run_d[d] - base_d[d] for d in run_d
                                        if d in base_d}
        val_worse = run_v - base_v > margin
    else:
        notes.append("val_bpb missing in " + ("this run" if run_v is None else "the baseline") + ": compared train curves only")
    curve_worse = False
    a, b = _train_bpb_curve(sig), _train_bpb_curve(base)
    if a is not None and b is not None:
        hi = min(a[0].max(), b[0].max())
        if hi > 0:
            grid = np.linspace(hi / 2, hi, CURVE_POINTS)
            half = hi / (2 * CURVE_POINTS)

            def smooth(curve):
                t, v = curve
                return np.array([np.median(v[(t >= g - half) & (t <= g + half)]) if ((t >= g - half) & (t <= g + half)).any()
                                 else np.nan for g in grid])

            diff = smooth(a) - smooth(b)
            ok = np.isfinite(diff)
            if ok.sum() >= CURVE_POINTS // 2:
                worse_share = float(np.mean(diff[ok] > margin))
                out.update(compared=True, curve={"tokens": grid[ok].tolist(), "delta_bpb": diff[ok].tolist(),
                                                 "median_delta_bpb": float(np.median(diff[ok])), "worse_share": worse_share})
                curve_worse = worse_share >= CURVE_WORSE_SHARE and float(np.median(diff[ok])) > margin
    if not out["compared"]:
        notes.append("nothing to compare: no val_bpb and no overlapping train curve")
        return out, []
    delta = out.get("delta_val_bpb")
    if noise_bpb is None:  # single seeds: both signals must point the same way
        curve_delta = out["curve"]["median_delta_bpb"] if "curve" in out else None
        strong = delta is not None and delta > 2 * margin
        val_worse = val_worse and (strong or curve_delta is None or curve_delta > 0)
        curve_worse = curve_worse and (delta is None or delta > 0)
    worse = val_worse or curve_worse
    out["verdict"] = "worse" if worse else ("better" if delta is not None and delta < -margin else "same")
    if not worse:
        return out, []
    parts = []
    if val_worse:
        parts.append(f"val_bpb {run_v:.4f} vs baseline {base_v:.4f} (+{delta:.4f}, margin {margin:.4f})")
    if curve_worse:
        parts.append(f"train loss {out['curve']['median_delta_bpb']:+.3f} bits/byte at equal tokens on "
                     f"{out['curve']['worse_share']:.0%} of the second half")
    worst_dom = max(out.get("delta_val_bpb_domains", {}).items(), key=lambda kv: kv[1], default=None)
    curve = out.get("curve")
    finding = Finding(
        id="regression_vs_baseline", severity="warning", title="Worse than the baseline",
        summary="; ".join(parts) + (f"; worst domain {worst_dom[0]} ({worst_dom[1]:+.4f})" if worst_dom else ""),
        steps=None,
        evidence={k: out.get(k) for k in ("val_bpb", "baseline_val_bpb", "delta_val_bpb", "delta_val_bpb_domains", "margin_bpb",
                                           "margin_source", "curve")} | {"baseline": str(base.run.path)},
        cause="the change under test hurts (check the recipe diff against the baseline), or the two runs differ in budget, "
              "data or seed more than the change itself",
        fix="do not keep the change; if it should help, rerun both over 3+ seeds and compare means against the seed noise",
        series=Series("train bits/byte minus baseline, by tokens", [int(t) for t in curve["tokens"]], curve["delta_bpb"]) if curve else None,
    )
    return out, [finding]

