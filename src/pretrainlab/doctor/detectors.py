"""The detectors: one function per failure mode, each reading a `Signals` (the run's
telemetry plus derived series) and returning findings, or raising `Skip` with the reason
it cannot judge this run (e.g. MFU on a CPU). docs/doctor.md documents every threshold.

Thresholds are module constants, set so that healthy runs stay silent (a false alarm is a
bug) and chosen from practice where practice has a number (OLMo-core's 6-sigma spikes).
Detection reads only telemetry; the recipe is used to explain a cause, never to decide.
"""

from __future__ import annotations

import math
from functools import cached_property
from pathlib import Path

import numpy as np

from .. import rundir
from . import stats
from .report import Finding, Series
from .runfiles import RunData, as_float

LN2 = math.log(2)

# --- loss and grad-norm spikes -----------------------------------------------------------
SPIKE_LEVEL_WINDOW = 8  # the level a step is compared with: median of the previous 8 clean steps
SPIKE_SIGMA_WINDOW = 128  # noise scale from the previous 128 clean steps (OLMo-core's window)...
SPIKE_MIN_SIGMA_POINTS = 64  # ...once at least 64 are there
SPIKE_Z = 6.0  # robust z-score that makes a spike (OLMo-core: 6 sigma)
SPIKE_Z_MIN_RATIO = 1.05  # ...and at least 5% above the level (a 6-sigma blip of 0.5% is noise)
SPIKE_RATIO = 1.4  # or a multiplicative jump: 1.4x the level, at any time after 3 steps
SPIKE_ABOVE_START = 1.1  # or the loss goes 10% above the first step's (a worse-than-init model)...
SPIKE_BACK_TO_START = 0.85  # ...or back to it after having fallen below 85% of it
SPIKE_RECOVERED = 1.05  # recovered = back within 5% of the pre-spike level
SPIKE_UNRECOVERED_STEPS = 20  # not recovered for 20 steps (and till the end): an error
GRAD_RATIO = 4.0  # grad-norm spike: 4x the median of the previous 8 steps...
GRAD_Z_MIN_RATIO = 3.0  # ...or 6 sigma in log space and at least 3x (healthy runs reach ~2x)
GRAD_LEAD_WINDOW = 25  # a grad-norm spike "leads" a loss spike starting up to 25 steps later
# --- dead training, plateau, divergence, schedule ------------------------------------------
DEAD_MIN_STEPS = 20
DEAD_DROP = 0.05  # the loss fell less than 5% from its first steps
PLATEAU_MIN_STEPS = 100
PLATEAU_GAIN = 0.01  # less than 1% better from the second quarter to the last
DIVERGE_RATIO = 1.3  # the recent loss is 1.3x the best smoothed loss of the run
LR_ZERO_SHARE = 0.05  # LR exactly zero on more than 5% of the steps (the last 2% excluded)
NO_WARMUP_MULT = 0.5  # the first step ran at >= 50% of the peak LR...
NO_WARMUP_GRAD_JUMP = 4.0  # ...and the first update multiplied the grad norm by >= 4
# --- systems ---------------------------------------------------------------------------------
STALL_WARN, STALL_ERROR = 0.10, 0.40  # share of step time spent waiting for data
MEMORY_WARN, MEMORY_ERROR = 0.90, 0.97  # peak memory / device memory
THROUGHPUT_DROP = 0.5  # a block of steps below half the run's median tokens/s...
THROUGHPUT_MIN_BLOCKS = 2  # ...for at least 2 blocks of max(10, n/20) steps
THROUGHPUT_DECLINE = 0.5  # or the last quarter below half the first...
THROUGHPUT_MIN_SECONDS = 30.0  # ...lasting at least 30 s: shorter blips are noise of a shared machine
STRAGGLER_RATIO = 1.15  # one rank's median step time 15% above the ranks' median...
STRAGGLER_SHARE = 0.5  # ...and slowest on at least half of the steps
IDLE_UTIL = 30.0  # GPU utilisation (NVML, % of time a kernel ran) below 30%: the accelerator mostly waits...
IDLE_MIN_S = 60.0  # ...for at least 60 s of training in all...
IDLE_SHARE = 0.25  # ...and a quarter of the run's timed training time (a few slow steps are not a held GPU)
# Lower bounds of MFU for a sane setup, by model width (the GEMM size that fills tensor
# cores): about half of what well-tuned runs reach (nanoGPT 124M ~40-50% on A100,
# karpathy/autoresearch 50M 39.8% on H100). Without torch.compile expect ~0.6x.
MFU_FLOOR_BY_WIDTH = ((1024, 0.25), (768, 0.20), (512, 0.15), (256, 0.05))
MFU_EAGER_FACTOR = 0.6
# --- data ------------------------------------------------------------------------------------
GAP_TRAIN_BELOW_VAL = 0.25  # train bits/byte 25% below val: memorised (repeated) data
GAP_VAL_BELOW_TRAIN = 0.20  # val 20% below train: val text leaked into train, or a far easier val
DRIFT_P = 1e-6  # chi-square p-value for a drifted mixture (sampling noise is p ~ U(0, 1))...
DRIFT_TV = 0.02  # ...and a total-variation distance of at least 2 points of share
DRIFT_TV_ERROR = 0.10
DRIFT_WINDOWS, DRIFT_WINDOW_TV = 8, 0.05
STARVED_SHARE = 0.25  # a domain drawn at < 1/(4K) of rows when data.weights is set...
LAG_FRAC = 0.05  # ...whose val bpb is >= 5% above the other domains' median
RESUME_JUMP = 1.25  # loss right after a resume 1.25x the level before it


class Skip(Exception):
    """This detector cannot judge this run; the message says why."""


class Signals:
    """The run's telemetry plus the derived series several detectors share."""

    def __init__(self, run: RunData):
        self.run = run
        self.steps = run.steps
        self.n = run.n
        t = run.train
        nan = np.full(self.n, np.nan)
        self.loss = t.get("loss", nan)
        self.lr = t.get("lr", nan)
        self.grad = t.get("grad_norm", nan)
        no = np.zeros(self.n, dtype=bool)
        # logged as NaN/Inf (a missing field is not a NaN)
        self.nonfinite = ((run.present.get("loss", no) & ~np.isfinite(self.loss))
                          | (run.present.get("grad_norm", no) & ~np.isfinite(self.grad)))

    def require_steps(self, k: int, what: str = "this check") -> None:
        if int(np.isfinite(self.loss).sum()) < k:
            raise Skip(f"{what} needs at least {k} logged training steps ({self.n} so far)")

    @cached_property
    def peak_lr(self) -> float:
        """The recipe's peak LR (the logged LR is its group's: AdamW's) or the largest logged."""
        lr = as_float(self.run.get("optim", "lr"))
        if math.isfinite(lr) and lr > 0:
            return lr
        finite = self.lr[np.isfinite(self.lr)]
        return float(finite.max()) if len(finite) else math.nan

    @cached_property
    def lr_mult(self) -> np.ndarray:
        return self.lr / self.peak_lr if self.peak_lr > 0 else np.full(self.n, np.nan)

    @cached_property
    def warmup_end(self) -> int:
        """Index of the first step at (nearly) full LR: where warm-up ended."""
        hit = np.nonzero(np.nan_to_num(self.lr_mult) >= 0.99)[0]
        return int(hit[0]) if len(hit) else self.n

    @cached_property
    def first_loss(self) -> float:
        return float(self.loss[0]) if self.n and self.steps[0] == 1 and np.isfinite(self.loss[0]) else math.nan

    @cached_property
    def loss_scan(self) -> dict[str, np.ndarray]:
        """Loss spikes: robust z-score and multiplicative jumps (stats.scan_spikes), plus any
        step 10% above the first step's loss, or back at it after the loss had fallen below
        85% of it: a model as bad as at initialisation, which learning never produces."""
        scan = stats.scan_spikes(
            self.loss, level_window=SPIKE_LEVEL_WINDOW, sigma_window=SPIKE_SIGMA_WINDOW,
            min_sigma_points=SPIKE_MIN_SIGMA_POINTS, z_threshold=SPIKE_Z, ratio_threshold=SPIKE_RATIO,
            z_min_ratio=SPIKE_Z_MIN_RATIO, z_from=self.warmup_end, min_prior=3)
        above = np.zeros(self.n, dtype=bool)
        if math.isfinite(self.first_loss):
            f0 = self.first_loss
            low_so_far = np.fmin.accumulate(np.where(np.isfinite(self.loss), self.loss, np.inf))
            fell = np.concatenate([[False], low_so_far[:-1] <= SPIKE_BACK_TO_START * f0])
            above = np.isfinite(self.loss) & ((self.loss > SPIKE_ABOVE_START * f0) | (fell & (self.loss >= f0)))
            above[0] = False
        scan["above_start"] = above
        scan["spike"] = scan["spike"] | above
        return scan

    @cached_property
    def grad_scan(self) -> dict[str, np.ndarray]:
        with np.errstate(divide="ignore", invalid="ignore"):
            log_g = np.log(np.where(self.grad > 0, self.grad, np.nan))
        return stats.scan_spikes(
            log_g, level_window=SPIKE_LEVEL_WINDOW, sigma_window=SPIKE_SIGMA_WINDOW,
            min_sigma_points=SPIKE_MIN_SIGMA_POINTS, z_threshold=SPIKE_Z, ratio_threshold=GRAD_RATIO,
            z_min_ratio=GRAD_Z_MIN_RATIO, z_from=self.warmup_end, min_prior=3, log_space=True)

    @cached_property
    def loss_episodes(self) -> list[dict]:
        return [self._episode(a, b) for a, b in stats.episodes(np.nonzero(self.loss_scan["spike"])[0])]

    @cached_property
    def grad_episodes(self) -> list[dict]:
        out = []
        for a, b in stats.episodes(np.nonzero(self.grad_scan["spike"])[0]):
            peak = a + int(np.nanargmax(self.grad[a : b + 1]))
            out.append({"start": int(self.steps[a]), "end": int(self.steps[b]), "peak_step": int(self.steps[peak]),
                        "grad_norm": float(self.grad[peak]), "ratio": float(self.grad_scan["ratio"][peak]),
                        "layer": self.run.max_grad_layer[peak] if peak < len(self.run.max_grad_layer) else None,
                        "index": a})
        return out

    def _episode(self, a: int, b: int) -> dict:
        scan = self.loss_scan
        seg = self.loss[a : b + 1]
        peak = a + int(np.nanargmax(seg))
        level = scan["level"][a]
        if not np.isfinite(level):  # the first steps: no level yet, compare with the start
            level = self.first_loss
        recovered_at = None
        if np.isfinite(level):
            after = np.nonzero(self.loss[b + 1 :] <= level * SPIKE_RECOVERED)[0]
            recovered_at = int(self.steps[b + 1 + after[0]]) if len(after) else None
        rule = "above_start" if scan["above_start"][a : b + 1].any() else (
            "z" if np.nan_to_num(scan["z"][peak]) >= SPIKE_Z and np.nan_to_num(scan["ratio"][peak]) < SPIKE_RATIO else "ratio")
        return {"start": int(self.steps[a]), "end": int(self.steps[b]), "peak_step": int(self.steps[peak]),
                "peak_loss": float(self.loss[peak]), "level": float(level), "ratio": float(self.loss[peak] / level),
                "z": float(scan["z"][peak]), "rule": rule, "recovered_at": recovered_at,
                "unrecovered_steps": int(self.steps[-1] - self.steps[b]) if recovered_at is None else 0, "index": a}

    @cached_property
    def realised_shares(self) -> np.ndarray | None:
        rows = self.run.domain_rows
        total = rows.sum()
        return rows.sum(axis=0) / total if total > 0 else None

    @cached_property
    def weights(self) -> np.ndarray | None:
        w = (self.run.provenance or {}).get("data_weights")
        if not isinstance(w, dict) or not w:
            return None
        arr = np.nan_to_num(np.array([as_float(w.get(d, 0.0)) for d in self.run.domains]), nan=0.0, posinf=0.0)
        return arr / arr.sum() if arr.sum() > 0 else None

    @cached_property
    def last_eval(self) -> dict | None:
        """The latest eval row, or summary.json's final numbers when metrics lack it."""
        if self.run.evals:
            return self.run.evals[-1]
        s = self.run.summary or {}
        if math.isfinite(as_float(s.get("val_bpb"))) and self.n:
            return {"step": int(self.steps[-1]), "val_bpb": as_float(s["val_bpb"]), "val_bpb_domains": s.get("val_bpb_domains") or {}}
        return None

    def timed(self) -> np.ndarray:
        return self.run.timed()

    def series(self, label: str, values: np.ndarray, lo: int = 0, hi: int | None = None, how: str = "max",
               mask: np.ndarray | None = None) -> Series:
        """An evidence series over steps [lo, hi) (indices), only where mask, <= 120 points."""
        hi = self.n if hi is None else hi
        keep = np.zeros(self.n, dtype=bool)
        keep[lo:hi] = True
        if mask is not None:
            keep &= mask
        s, v = stats.downsample(self.steps[keep], values[keep], 120, how)
        return Series(label, s, v)


def _nonfinite_name(v: float) -> str:
    return "NaN" if math.isnan(v) else ("+Inf" if v > 0 else "-Inf")


def _fmt_steps(a: int, b: int) -> str:
    return f"step {a}" if a == b else f"steps {a}-{b}"


def _recipe_notes(sig: Signals, keys: list[tuple[str, str]]) -> str:
    """', with optim.grad_clip=0 ...' for recipe fields worth naming in a cause."""
    parts = [f"{sec}.{k}={sig.run.get(sec, k)}" for sec, k in keys if sig.run.get(sec, k) not in (None, "", False)]
    return f" (recipe: {', '.join(parts)})" if parts else ""


# =============================================================================================
# Optimisation health
# =============================================================================================


def detect_nan(sig: Signals) -> list[Finding]:
    """NaN/Inf in the loss or the grad norm: the run is broken from that step on."""
    sig.require_steps(1)
    bad = sig.nonfinite
    idx = np.nonzero(bad)[0]
    if not len(idx):
        return []
    i = int(idx[0])
    step = int(sig.steps[i])
    prev = sig.loss[max(0, i - 8) : i]
    prev_g = sig.grad[max(0, i - 8) : i]
    grew = len(prev_g) >= 3 and np.isfinite(prev_g).all() and prev_g[-1] > 3 * np.median(prev_g)
    injected = sig.run.get("faults", "nan_at_step")
    cause = ("gradients were already blowing up before it (grad norm "
             f"{prev_g[-1]:.3g} vs {np.median(prev_g):.3g}): an instability that ended in overflow, usually LR too high"
             if grew else "a sudden overflow at one step with calm gradients before it: an fp16/bf16 range overflow "
             "in attention or the output logits, a corrupt batch, or a numerical bug (log/div of zero)")
    if injected == step:
        cause = f"injected on purpose: recipe.json sets faults.nan_at_step={injected}"
    return [Finding(
        id="nan_loss", severity="error", title="Loss became NaN/Inf",
        summary=f"the loss is {_nonfinite_name(sig.loss[i]) if not np.isfinite(sig.loss[i]) else 'finite'} at step {step}"
        + ("" if not np.isfinite(sig.loss[i]) else f" but the grad norm is {_nonfinite_name(sig.grad[i])}") + (f" (last finite loss {prev[-1]:.4g})" if len(prev) and np.isfinite(prev[-1]) else "")
        + f"; {int(bad.sum())} non-finite step(s) logged",
        steps=(step, int(sig.steps[idx[-1]])),
        evidence={"first_bad_step": step, "loss": float(sig.loss[i]), "grad_norm": float(sig.grad[i]),
                  "lr": float(sig.lr[i]), "num_bad_steps": int(bad.sum()), "previous_losses": prev.tolist(),
                  "previous_grad_norms": prev_g.tolist(), "injected": injected == step},
        cause=cause,
        fix=f"restart from the last checkpoint before step {step} and skip the offending batch; if it recurs, lower the LR, "
            "keep grad clipping on (optim.grad_clip=1.0), QK-norm and the logit soft-cap (or add z-loss, PaLM), "
            "and check the batch for corrupt tokens",
        series=sig.series("loss (nats/token)", np.where(np.isfinite(sig.loss), sig.loss, np.nan), max(0, i - 48), i + 1),
    )]


def detect_divergence(sig: Signals) -> list[Finding]:
    """A sustained blow-up: the trainer stopped the run as diverged, or the recent loss sits
    well above the best the run reached (without NaN; NaN is detect_nan's)."""
    sig.require_steps(1)
    if sig.nonfinite.any():
        return []  # NaN/Inf: reported by nan_loss
    finite = sig.loss
    k = 16
    smooth = stats.trailing_median(finite, k, min_count=k)  # median of the previous 16 steps
    status = sig.run.status
    best_i = int(np.nanargmin(smooth)) if np.isfinite(smooth).any() else None
    best = float(smooth[best_i]) if best_i is not None else math.nan
    tail = max(10, sig.n // 20)
    recent = float(np.median(finite[-tail:])) if sig.n >= tail else math.nan
    rising = math.isfinite(best) and math.isfinite(recent) and recent > DIVERGE_RATIO * best and sig.n - best_i > tail
    if status != "diverged" and not rising:
        return []
    patience = sig.run.get("train", "diverge_patience", 10)
    ratio_cfg = sig.run.get("train", "diverge_ratio", 2.5)
    start = int(sig.steps[max(0, sig.n - (patience if status == "diverged" else tail))])
    return [Finding(
        id="divergence", severity="error", title="Training diverged",
        summary=(f"the trainer stopped the run as diverged at step {int(sig.steps[-1])}: " if status == "diverged" else "")
        + f"the loss rose to {recent:.4g} (median of the last {tail} steps), {recent / best:.2f}x the best level {best:.4g} "
          f"reached at step {int(sig.steps[best_i]) if best_i is not None else '?'}",
        steps=(start, int(sig.steps[-1])),
        evidence={"status": status, "recent_loss": recent, "best_smoothed_loss": best,
                  "best_step": int(sig.steps[best_i]) if best_i is not None else None, "ratio": recent / best if best else None,
                  "trainer_rule": {"diverge_ratio": ratio_cfg, "diverge_patience": patience}},
        cause="the updates overshoot: LR too high for this batch size and width, or instability that grew (attention or "
              "output logit growth)" + _recipe_notes(sig, [("optim", "grad_clip"), ("optim", "lr"), ("optim", "muon_lr")]),
        fix="restart from a checkpoint before the rise with a 2-4x lower peak LR (optim.lr / optim.muon_lr), grad clipping "
            "on (optim.grad_clip=1.0), QK-norm and logit soft-cap on (or z-loss), and a warm-up (optim.warmup_frac)",
        series=sig.series("loss (nats/token)", sig.loss),
    )]


def detect_loss_spikes(sig: Signals) -> list[Finding]:
    """Upward loss outliers against the recent level, with their recovery."""
    sig.require_steps(4)
    eps = sig.loss_episodes
    if not eps:
        return []
    worst = max(eps, key=lambda e: e["ratio"])
    unrecovered = [e for e in eps if e["recovered_at"] is None and e["unrecovered_steps"] >= SPIKE_UNRECOVERED_STEPS]
    leads = _grad_leads(sig, eps)
    grad_led = [x for x in leads if x is not None]
    early = [e for e in eps if e["index"] < max(sig.warmup_end, 1) + 10]
    rec = (f"recovered by step {worst['recovered_at']}" if worst["recovered_at"] is not None else
           f"not recovered after {worst['unrecovered_steps']} steps")
    where = f"{len(early)} during or right after warm-up; " if early else ""
    summary = (f"{len(eps)} loss spike(s) ({where}largest at step {worst['peak_step']}: {worst['level']:.3g} -> "
               f"{worst['peak_loss']:.3g} nats, {worst['ratio']:.2f}x the level" +
               (f", z={worst['z']:.1f}" if math.isfinite(worst["z"]) else "") + f"), {rec}" +
               (f"; grad norm spiked {min(grad_led)}-{max(grad_led)} step(s) before {len(grad_led)} of them" if grad_led else ""))
    cause = "LR too high for this model and batch (updates overshoot)"
    if early and len(early) == len(eps):
        cause += ", most visibly while the model is freshly initialised (warm-up too short or absent)"
    cause += "; a single bad batch can also cause an isolated spike" + _recipe_notes(
        sig, [("optim", "lr"), ("optim", "muon_lr"), ("optim", "grad_clip"), ("optim", "warmup_frac")])
    if sig.run.get("model", "qk_norm") is False:
        cause += "; QK-norm is off (attention logit growth is the classic spike source)"
    lo = max(0, worst["index"] - 32)
    hi = min(sig.n, worst["index"] + 48)
    return [Finding(
        id="loss_spike", severity="error" if unrecovered else "warning", title="Loss spikes",
        summary=summary, steps=(eps[0]["start"], eps[-1]["end"]),
        evidence={"num_spikes": len(eps), "num_unrecovered": len(unrecovered), "num_early": len(early),
                  "spikes": [{k: v for k, v in e.items() if k != "index"} | {"grad_norm_lead_steps": lead}
                             for e, lead in list(zip(eps, leads))[:20]],
                  "thresholds": {"z": SPIKE_Z, "window": SPIKE_SIGMA_WINDOW, "ratio": SPIKE_RATIO, "above_start": SPIKE_ABOVE_START}},
        cause=cause,
        fix="lower the peak LR 2-4x (optim.lr, optim.muon_lr) and keep grad clipping on (optim.grad_clip=1.0); keep QK-norm "
            "and the logit soft-cap, or add z-loss (PaLM); lengthen warm-up (optim.warmup_frac) for early spikes; for a spike "
            "that does not recover, restart from the checkpoint before it and skip the batches around it (PaLM, OLMo)",
        series=sig.series("loss (nats/token)", sig.loss, lo, hi),
    )]


def _grad_leads(sig: Signals, loss_eps: list[dict]) -> list[int | None]:
    """For each loss spike: how many steps a grad-norm spike started before it (0 = same
    step), or None when no grad-norm spike preceded it within GRAD_LEAD_WINDOW steps."""
    out = []
    for e in loss_eps:
        cands = [g["start"] for g in sig.grad_episodes if 0 <= e["start"] - g["start"] <= GRAD_LEAD_WINDOW]
        out.append(e["start"] - max(cands) if cands else None)
    return out


def detect_grad_spikes(sig: Signals) -> list[Finding]:
    """Grad-norm blow-ups: those that led a loss spike (and by how much), and those the
    optimizer hid (no loss spike followed: clipping or Adam's normalisation absorbed them).
    A warning when a hidden one reaches GRAD_RATIO (a blow-up the loss curve never showed);
    otherwise info, since the loss-spike finding already carries the alarm."""
    sig.require_steps(4)
    geps = sig.grad_episodes
    if not geps:
        return []
    lead_of = []
    for g in geps:
        nxt = [e["start"] - g["start"] for e in sig.loss_episodes if 0 <= e["start"] - g["start"] <= GRAD_LEAD_WINDOW]
        lead_of.append(min(nxt) if nxt else None)
    hidden = [g for g, lead in zip(geps, lead_of) if lead is None]
    big_hidden = [g for g in hidden if g["ratio"] >= GRAD_RATIO]
    worst = max(geps, key=lambda g: g["ratio"])
    layers = sorted({g["layer"] for g in geps if g["layer"]})
    leads = [x for x in lead_of if x is not None]
    clip = sig.run.get("optim", "grad_clip")
    summary = (f"{len(geps)} grad-norm spike(s), largest {worst['ratio']:.1f}x the recent level at step {worst['peak_step']}"
               + (f" (largest layer: {worst['layer']})" if worst["layer"] else "")
               + (f"; {len(leads)} led a loss spike by {min(leads)}-{max(leads)} step(s)" if leads else "")
               + (f"; {len(hidden)} hidden (no loss spike followed" + (f", clipping at {clip} absorbed it" if clip else "") + ")"
                  if hidden else ""))
    i = worst["index"]
    return [Finding(
        id="grad_norm_spike", severity="warning" if big_hidden else "info", title="Grad-norm spikes",
        summary=summary, steps=(geps[0]["start"], geps[-1]["end"]),
        evidence={"num_spikes": len(geps), "num_hidden": len(hidden), "lead_steps": lead_of, "layers": layers,
                  "spikes": [{k: v for k, v in g.items() if k != "index"} for g in geps[:20]],
                  "thresholds": {"ratio": GRAD_RATIO, "z": SPIKE_Z, "lead_window": GRAD_LEAD_WINDOW}},
        cause="unstable updates: LR too high, or one layer's weights growing (" + (", ".join(layers) or "see max_grad_layer")
              + "); spikes the loss did not show are warnings the optimizer or clipping is masking",
        fix="lower the LR of the offending parameter group (embeddings/head: optim.lr; hidden matrices: optim.muon_lr), keep "
            "grad clipping on, and watch max_grad_layer; if loss spikes follow, restart before them",
        series=sig.series("grad norm", sig.grad, max(0, i - 32), min(sig.n, i + 48)),
    )]


def detect_dead_training(sig: Signals) -> list[Finding]:
    """The loss barely moved although the LR had warmed up: nothing is being learned."""
    sig.require_steps(DEAD_MIN_STEPS)
    if not math.isfinite(sig.first_loss):
        raise Skip("needs the run's first steps (metrics start after step 1)")
    warm = int(np.sum(np.nan_to_num(sig.lr_mult) >= 0.5))
    if warm < 10 and sig.peak_lr > 0 and np.nanmax(sig.lr) > 0:
        raise Skip("still warming up: judged once 10 steps have run at >= half the peak LR")
    tail = max(5, sig.n // 10)
    start = float(np.nanmedian(sig.loss[:3]))
    end = float(np.nanmedian(sig.loss[-tail:]))
    if not (math.isfinite(start) and math.isfinite(end)) or end < (1 - DEAD_DROP) * start:
        return []
    max_lr = float(np.nanmax(sig.lr)) if np.isfinite(sig.lr).any() else math.nan
    med_grad = float(np.nanmedian(sig.grad)) if np.isfinite(sig.grad).any() else math.nan
    vocab = sig.run.get("model", "vocab_size")
    uniform = math.log(vocab) if isinstance(vocab, int) and vocab > 1 else None
    if not max_lr > 0:
        cause = "the learning rate is zero on every step"
    elif med_grad < 1e-8:
        cause = "the gradients are zero: frozen parameters or a detached loss"
    else:
        cause = f"the learning rate is far too low: peak logged LR {max_lr:.3g}" + _recipe_notes(sig, [("optim", "lr"), ("optim", "muon_lr")])
    return [Finding(
        id="dead_training", severity="error", title="Nothing is being learned",
        summary=f"the loss went from {start:.4g} to {end:.4g} nats over {sig.n} steps ({(start - end) / start:.1%} lower)"
                + (f"; a uniform guess scores {uniform:.4g}" if uniform else ""),
        steps=(int(sig.steps[0]), int(sig.steps[-1])),
        evidence={"start_loss": start, "end_loss": end, "drop": (start - end) / start, "max_lr": max_lr,
                  "median_grad_norm": med_grad, "uniform_loss": uniform, "recipe_lr": sig.run.get("optim", "lr"),
                  "recipe_muon_lr": sig.run.get("optim", "muon_lr")},
        cause=cause,
        fix="raise the LR to a working range (AdamW ~1e-3-3e-3, Muon ~0.02 at this scale; a short LR sweep finds it) and "
            "check the schedule: the logged lr column must reach the peak after warm-up",
        series=sig.series("loss (nats/token)", sig.loss, how="mean"),
    )]


def detect_plateau(sig: Signals) -> list[Finding]:
    """After warm-up the loss stopped improving: the second quarter and the last quarter of
    the post-warm-up steps are indistinguishable."""
    post = np.arange(min(sig.warmup_end, sig.n), sig.n)
    if len(post) < PLATEAU_MIN_STEPS:
        raise Skip(f"needs {PLATEAU_MIN_STEPS} steps after warm-up ({len(post)} so far)")
    q = len(post) // 4
    a, b = sig.loss[post[q : 2 * q]], sig.loss[post[3 * q :]]
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if len(a) < 10 or len(b) < 10:
        raise Skip("too few finite losses")
    ma, mb = float(np.median(a)), float(np.median(b))
    start = float(np.nanmedian(sig.loss[:3]))
    if math.isfinite(start) and mb >= (1 - DEAD_DROP) * start:
        return []  # never learned at all: dead_training's
    sigma = stats.MAD_TO_SIGMA * float(np.median(np.abs(np.diff(np.concatenate([a, b]))))) / math.sqrt(2)
    se = 1.2533 * sigma * math.sqrt(1 / len(a) + 1 / len(b))  # standard error of a difference of medians
    gain = (ma - mb) / ma
    if gain >= PLATEAU_GAIN or (ma - mb) > 2 * se:
        return []
    lr_tail = float(np.nanmedian(sig.lr_mult[post[3 * q :]]))
    s2, s4 = int(sig.steps[post[q]]), int(sig.steps[post[3 * q]])
    cause = ("the LR is still high in the last quarter: the loss is bouncing at the noise floor this LR allows, or the "
             "data is exhausted/repeating" if lr_tail >= 0.5 else
             "the LR had already decayed: the schedule cooled down too early, or the model is at its capacity for this data")
    return [Finding(
        id="plateau", severity="warning", title="Loss plateau",
        summary=f"the loss stopped improving: median {ma:.4g} in steps {s2}-{s4 - 1} vs {mb:.4g} in steps {s4}-{int(sig.steps[-1])} "
                f"({gain:+.1%}), within noise",
        steps=(s2, int(sig.steps[-1])),
        evidence={"median_q2": ma, "median_q4": mb, "gain": gain, "noise_se": se, "lr_mult_q4": lr_tail},
        cause=cause,
        fix="lower the peak LR or decay it (a WSD warmdown / cosine tail usually buys the next drop); if the data repeats, "
            "add data; if the model is saturated, scale it up",
        series=sig.series("loss (nats/token)", sig.loss, how="mean"),
    )]


def detect_lr_schedule(sig: Signals) -> list[Finding]:
    """LR stuck at zero, and no warm-up where the first updates visibly destabilised training."""
    sig.require_steps(3)
    if not np.isfinite(sig.lr).any():
        raise Skip("no lr column in metrics.jsonl")
    out = []
    body = sig.lr[: max(1, int(sig.n * 0.98))]
    zero = np.isfinite(body) & (body <= 0)
    if zero.any() and (zero.mean() > LR_ZERO_SHARE or not np.nanmax(sig.lr) > 0):
        idx = np.nonzero(zero)[0]
        out.append(Finding(
            id="lr_zero", severity="error", title="Learning rate stuck at zero",
            summary=f"the LR is 0 on {int(zero.sum())} of {len(body)} steps (first at step {int(sig.steps[idx[0]])})",
            steps=(int(sig.steps[idx[0]]), int(sig.steps[idx[-1]])),
            evidence={"zero_steps": int(zero.sum()), "steps": len(body), "first_zero_step": int(sig.steps[idx[0]]),
                      "max_lr": float(np.nanmax(sig.lr))},
            cause="the schedule multiplier is 0: a warm-up longer than the run, a decay that ended early, or a budget the "
                  "schedule cannot see" + _recipe_notes(sig, [("optim", "schedule"), ("optim", "warmup_frac"), ("optim", "warmdown_frac")]),
            fix="check optim.warmup_frac / optim.warmdown_frac / optim.final_lr_frac against the budget; the lr column should "
                "ramp up, hold, then decay",
            series=sig.series("lr", sig.lr, how="mean"),
        ))
    first_mult = float(sig.lr_mult[0]) if sig.steps[0] == 1 else math.nan
    if not first_mult >= NO_WARMUP_MULT:
        return out
    early = max(10, min(50, sig.n // 50))
    jump = float(sig.grad[1] / sig.grad[0]) if sig.n > 1 and sig.grad[0] > 0 else math.nan
    early_spikes = [e for e in sig.loss_episodes if e["index"] < early]
    if not (jump >= NO_WARMUP_GRAD_JUMP or early_spikes):
        return out
    wf = sig.run.get("optim", "warmup_frac")
    parts = [f"the first step ran at {first_mult:.0%} of the peak LR" + (f" (warm-up {sig.warmup_end + 1} steps)" if sig.warmup_end else "")]
    if jump >= NO_WARMUP_GRAD_JUMP:
        parts.append(f"the first update multiplied the grad norm {jump:.1f}x ({sig.grad[0]:.3g} -> {sig.grad[1]:.3g})")
    if early_spikes:
        parts.append(f"{len(early_spikes)} loss spike(s) in the first {early} steps (up to {max(e['ratio'] for e in early_spikes):.2f}x)")
    out.append(Finding(
        id="no_warmup", severity="warning", title="No warm-up, unstable start",
        summary="; ".join(parts),
        steps=(int(sig.steps[0]), int(sig.steps[min(sig.n, early) - 1])),
        evidence={"first_lr_mult": first_mult, "first_grad_jump": jump, "early_spikes": len(early_spikes),
                  "warmup_frac": wf, "early_window_steps": early},
        cause="full-size updates on a freshly initialised model (Adam's second-moment estimates are still poor, and the "
              "first steps move weights far): " + ("optim.warmup_frac=0" if wf == 0 else
              f"optim.warmup_frac={wf} is only {sig.warmup_end + 1} step(s) of this budget" if wf is not None else
              "no LR ramp in the lr column"),
        fix="warm up linearly over the first 1-5% of the budget (optim.warmup_frac=0.02) or at least ~100-1000 steps on long "
            "runs; if the run must start at full LR (Muon setups do), lower the peak LR",
        series=sig.series("loss (nats/token)", sig.loss, 0, min(sig.n, early * 2)),
    ))
    return out


# =============================================================================================
# Systems: data pipeline, accelerator use, throughput, stragglers, memory
# =============================================================================================


def detect_data_stall(sig: Signals) -> list[Finding]:
    """The accelerator waits for batches: the data-wait share of step time."""
    frac = sig.run.train.get("data_wait_frac")
    step_s = sig.run.train.get("step_s")
    if frac is None or not np.isfinite(frac).any():
        raise Skip("no data_wait_frac in metrics.jsonl")
    m = sig.timed() & np.isfinite(frac) & np.isfinite(step_s)
    if m.sum() < 5:
        raise Skip("needs 5 timed steps")
    wait_s = float(np.sum(frac[m] * step_s[m]))
    total_s = float(np.sum(step_s[m]))
    share = wait_s / total_s if total_s > 0 else 0.0
    if share < STALL_WARN:
        return []
    sleep = sig.run.get("faults", "data_sleep_s")
    cause = ("the input pipeline cannot keep up: batches are built on the training process (decoding, tokenising on the fly, "
             "slow or remote storage, no prefetch)")
    if sleep:
        cause = f"injected on purpose: recipe.json sets faults.data_sleep_s={sleep} (a {sleep * 1e3:.0f} ms sleep per step)"
    return [Finding(
        id="data_stall", severity="error" if share >= STALL_ERROR else "warning", title="Data pipeline stalls",
        summary=f"{share:.0%} of training time was spent waiting for data ({wait_s:.1f}s of {total_s:.1f}s; median "
                f"{np.median(frac[m]):.0%} per step, p90 {np.percentile(frac[m], 90):.0%})",
        steps=(int(sig.steps[m][0]), int(sig.steps[m][-1])),
        evidence={"wait_share": share, "wait_seconds": wait_s, "step_seconds": total_s, "median_frac": float(np.median(frac[m])),
                  "p90_frac": float(np.percentile(frac[m], 90)), "injected_sleep_s": sleep or None,
                  "thresholds": {"warning": STALL_WARN, "error": STALL_ERROR}},
        cause=cause,
        fix="prefetch batches in background workers (DataLoader num_workers + prefetch_factor), read pre-tokenised "
            "memory-mapped shards (`pretrainlab data prepare`), pin host memory and copy with non_blocking=True, keep data "
            "on local fast storage",
        series=sig.series("data-wait share of step time", frac, mask=m),
    )]


def detect_idle_accelerator(sig: Signals) -> list[Finding]:
    """The run holds GPUs that mostly sit idle: NVML utilisation (`gpu_util`, per rank in
    `rank_gpu_util`) low for a long stretch. With a high data-wait share there the loader is
    the cause; otherwise the host (Python overhead, small kernels, syncs) cannot feed it."""
    util = sig.run.train.get("gpu_util")
    if sig.run.rank_gpu_util is not None:
        util = np.nanmean(sig.run.rank_gpu_util, axis=1)  # a run's GPUs together; an idle one among busy ones is a straggler
    if util is None or not np.isfinite(util).any():
        raise Skip("no gpu_util in metrics.jsonl (a CPU run, or NVML unavailable)")
    step_s = sig.run.train.get("step_s")
    m = sig.timed() & np.isfinite(util) & np.isfinite(step_s)
    if m.sum() < 5:
        raise Skip("needs 5 timed steps with gpu_util")
    low = m & (util < IDLE_UTIL)
    idle_s, total_s = float(np.sum(step_s[low])), float(np.sum(step_s[m]))
    if idle_s < IDLE_MIN_S or idle_s < IDLE_SHARE * total_s:
        return []
    # the longest stretch of consecutive low steps, for the summary
    runs = stats.episodes(np.nonzero(low)[0])  # (a busy step or two inside a stretch does not end it)
    a, b = max(runs, key=lambda ab: float(np.sum(step_s[ab[0] : ab[1] + 1])))
    stretch_s = float(np.sum(step_s[a : b + 1]))
    world = int((sig.run.provenance or {}).get("world_size") or 1)
    wait = sig.run.train.get("data_wait_frac")
    wait_low = float(np.nanmedian(wait[low])) if wait is not None and np.isfinite(wait[low]).any() else None
    loader = wait_low is not None and wait_low >= STALL_WARN
    return [Finding(
        id="idle_accelerator", severity="warning", title="Allocated GPUs sit idle",
        summary=f"GPU utilisation below {IDLE_UTIL:.0f}% for {idle_s:.0f}s of {total_s:.0f}s of training ({idle_s / total_s:.0%}; "
                f"median {np.median(util[low]):.0f}% there), the longest stretch {stretch_s:.0f}s at steps {sig.steps[a]}-{sig.steps[b]}"
                + (f"; {world} GPUs held: {idle_s * world / 3600:.2f} GPU-hours" if world > 1 else ""),
        steps=(int(sig.steps[a]), int(sig.steps[b])),
        evidence={"idle_seconds": idle_s, "train_seconds": total_s, "idle_share": idle_s / total_s, "median_util_idle": float(np.median(util[low])),
                  "median_util": float(np.median(util[m])), "longest_stretch_s": stretch_s, "world_size": world,
                  "idle_gpu_seconds": idle_s * world, "median_data_wait_idle": wait_low,
                  "thresholds": {"util": IDLE_UTIL, "min_s": IDLE_MIN_S, "share": IDLE_SHARE}},
        cause=(f"the data loader: {wait_low:.0%} of those steps' time went to waiting for the batch" if loader else
               "the host cannot keep the GPU busy: kernels too small for the device (a small model or micro-batch), Python "
               "overhead between kernels, or a host sync each step (.item(), logging) stalling the queue"),
        fix=("prefetch batches in background workers and read pre-tokenised memory-mapped shards (see data_stall)" if loader else
             "raise train.micro_batch_rows (or the model size) to fill the GPU, turn on train.compile (or CUDA graphs) to cut "
             "launch overhead, or give the run a smaller GPU / share it between runs; the GPU-hours are held either way"),
        series=sig.series("GPU utilisation (%)", util, mask=m, how="mean"),
    )]


def _mfu_floor(sig: Signals) -> float | None:
    width = sig.run.get("model", "n_embd")
    if not isinstance(width, int):
        return None
    for min_width, floor in MFU_FLOOR_BY_WIDTH:
        if width >= min_width:
            return floor * (1.0 if sig.run.compiled else MFU_EAGER_FACTOR)
    return None


def detect_low_mfu(sig: Signals) -> list[Finding]:
    """Model FLOPs utilisation below the band a sane setup reaches for this width."""
    mfu = sig.run.train.get("mfu")
    if mfu is None or not np.isfinite(mfu).any():
        raise Skip("MFU is null (CPU, or a device without a peak FLOP/s figure): nothing to compare")
    floor = _mfu_floor(sig)
    if floor is None:
        raise Skip(f"model.n_embd={sig.run.get('model', 'n_embd')} is too narrow to fill an accelerator; no MFU expectation")
    m = sig.timed() & np.isfinite(mfu)
    if m.sum() < 5:
        raise Skip("needs 5 timed steps with MFU")
    med = float(np.median(mfu[m]))
    if med >= floor:
        return []
    stall = sig.run.train.get("data_wait_frac")
    wait = float(np.nanmedian(stall[m])) if stall is not None and np.isfinite(stall[m]).any() else math.nan
    tips = []
    if not sig.run.compiled:
        tips.append("torch.compile (train.compile=on)")
    if wait >= STALL_WARN:
        tips.append(f"fix the data stalls first ({wait:.0%} of each step waits for data)")
    tips += ["bigger micro-batches (train.micro_batch_rows) if memory allows", "bf16 autocast", "fewer host syncs per step"]
    return [Finding(
        id="low_mfu", severity="warning", title="Low accelerator utilisation",
        summary=f"median MFU {med:.1%} on {(sig.run.provenance or {}).get('device', 'this device')}, below the {floor:.0%} a "
                f"{sig.run.get('model', 'n_embd')}-wide model should reach" + ("" if sig.run.compiled else " without compile"),
        steps=(int(sig.steps[m][0]), int(sig.steps[m][-1])),
        evidence={"median_mfu": med, "expected_floor": floor, "n_embd": sig.run.get("model", "n_embd"),
                  "compile": sig.run.compiled, "median_data_wait": wait,
                  "median_tokens_per_s": float(np.nanmedian(sig.run.train["tokens_per_s"][m]))},
        cause="the accelerator idles between kernels: small GEMMs, Python overhead (no compile), host syncs, or data stalls",
        fix="; ".join(tips),
        series=sig.series("MFU", mfu, how="mean", mask=m),
    )]


def detect_throughput(sig: Signals) -> list[Finding]:
    """Sustained throughput drops (blocks of steps at < half the run's median tokens/s) and
    a steady decline (last quarter < half the first), lasting >= THROUGHPUT_MIN_SECONDS of
    training time: a few slow seconds in a short run are another process's burst, not a
    problem of the run."""
    tps = sig.run.train.get("tokens_per_s")
    if tps is None:
        raise Skip("no tokens_per_s in metrics.jsonl")
    m = sig.timed() & np.isfinite(tps) & (tps > 0)
    idx = np.nonzero(m)[0]
    if len(idx) < 50:
        raise Skip(f"needs 50 timed steps ({len(idx)} so far)")
    ref = float(np.median(tps[idx]))
    block = max(10, len(idx) // 20)
    blocks = [idx[i : i + block] for i in range(0, len(idx) - block + 1, block)]
    meds = np.array([np.median(tps[b]) for b in blocks])
    step_s = sig.run.train.get("step_s", np.full(sig.n, np.nan))
    low = np.nonzero(meds < THROUGHPUT_DROP * ref)[0]
    low_s = float(np.nansum(step_s[np.concatenate([blocks[i] for i in low])])) if len(low) else 0.0
    if low_s < THROUGHPUT_MIN_SECONDS:
        low = low[:0]
    q = len(idx) // 4
    first_q, last_q = float(np.median(tps[idx[:q]])), float(np.median(tps[idx[-q:]]))
    declined = last_q < THROUGHPUT_DECLINE * first_q and float(np.nansum(step_s[idx[-q:]])) >= THROUGHPUT_MIN_SECONDS
    if len(low) < THROUGHPUT_MIN_BLOCKS and not declined:
        return []
    wait = sig.run.train.get("data_wait_frac")
    if len(low) >= THROUGHPUT_MIN_BLOCKS:
        lo_steps = np.concatenate([blocks[i] for i in low])
        drop = float(np.median(tps[lo_steps]))
        a, b = int(sig.steps[blocks[low[0]][0]]), int(sig.steps[blocks[low[-1]][-1]])
        summary = f"throughput fell to {drop:,.0f} tokens/s ({drop / ref:.0%} of the run's median {ref:,.0f}) on {len(lo_steps)} steps in {_fmt_steps(a, b)}"
    else:
        lo_steps = idx[-q:]
        drop = last_q
        a, b = int(sig.steps[idx[-q]]), int(sig.steps[idx[-1]])
        summary = f"throughput declined from {first_q:,.0f} tokens/s (first quarter) to {last_q:,.0f} (last quarter, {last_q / first_q:.0%})"
    normal = np.setdiff1d(idx, lo_steps)
    wait_drop = float(np.nanmedian(wait[lo_steps])) if wait is not None else math.nan
    wait_norm = float(np.nanmedian(wait[normal])) if wait is not None and len(normal) else math.nan
    data_bound = math.isfinite(wait_drop) and wait_drop >= STALL_WARN and wait_drop > 2 * max(wait_norm, 0.01)
    cpu = sig.run.train.get("cpu_s")
    cpu_drop = cpu_norm = math.nan
    if cpu is not None and (sig.run.provenance or {}).get("device_type", "cpu") == "cpu":  # on a GPU the CPU mostly waits anyway
        share = cpu / step_s  # process CPU seconds per wall second: ~ threads when computing, lower when waiting
        cpu_drop, cpu_norm = float(np.nanmedian(share[lo_steps])), float(np.nanmedian(share[normal])) if len(normal) else math.nan
    waiting = math.isfinite(cpu_drop) and math.isfinite(cpu_norm) and cpu_drop < 0.7 * cpu_norm
    cause = ("the data pipeline slowed down in those steps (data-wait share "
             f"{wait_drop:.0%} vs {wait_norm:.0%} elsewhere)" if data_bound else
             f"the process was waiting, not computing (CPU time per wall second {cpu_drop:.2f} vs {cpu_norm:.2f} elsewhere): "
             "other processes on the same cores, throttling, or I/O" if waiting else
             "the device slowed down or was shared: another process on the same accelerator/cores, thermal or power "
             "throttling, memory fragmentation, checkpoint I/O, or a straggling rank")
    return [Finding(
        id="throughput_drop", severity="warning", title="Throughput drop",
        summary=summary, steps=(a, b),
        evidence={"median_tokens_per_s": ref, "drop_tokens_per_s": drop, "num_slow_steps": len(lo_steps),
                  "slow_seconds": float(np.nansum(step_s[lo_steps])),
                  "first_quarter_tokens_per_s": first_q, "last_quarter_tokens_per_s": last_q,
                  "data_wait_in_drop": wait_drop, "data_wait_elsewhere": wait_norm, "block_steps": block,
                  "cpu_per_wall_in_drop": cpu_drop, "cpu_per_wall_elsewhere": cpu_norm},
        cause=cause,
        fix="check what else ran on the machine then (nvidia-smi / top), the data-wait share, and per-rank step times; "
            "pin the job to its devices, move checkpoint writes off the critical path",
        series=sig.series("tokens/s", tps, how="min", mask=m),
    )]


def detect_straggler(sig: Signals) -> list[Finding]:
    """One rank consistently slower than the others. Reads each rank's own work before it
    first waits on another (`rank_presync_s`); older runs only have `rank_step_s`, taken
    after the gradient all-reduce, where a straggler is mostly hidden."""
    run = sig.run
    r, basis = (run.rank_presync_s, "time before the first sync") if run.rank_presync_s is not None else (run.rank_step_s, "step time")
    if r is None or r.shape[1] < 2:
        raise Skip("single process (no per-rank times)")
    m = sig.timed() & np.isfinite(r).all(axis=1)
    if m.sum() < 20:
        raise Skip("needs 20 timed DDP steps")
    rs = r[m]
    meds = np.median(rs, axis=0)
    slow = int(np.argmax(meds))
    ratio = float(meds[slow] / np.median(meds))
    share = float(np.mean(np.argmax(rs, axis=1) == slow))
    if ratio < STRAGGLER_RATIO or share < STRAGGLER_SHARE:
        return []
    evidence = {"rank": slow, "basis": basis, "ratio": ratio, "slowest_share": share, "rank_median_s": meds.tolist()}
    cause = "that rank's device or host is slower: a throttled or shared GPU, a slower node or link"
    fix = f"inspect the node of rank {slow} (nvidia-smi clocks/temperature, other processes, NIC); exclude or replace it"
    if run.rank_data_s is not None and np.isfinite(run.rank_data_s[m]).all():
        data_meds = np.median(run.rank_data_s[m], axis=0)
        excess, data_excess = meds[slow] - np.median(meds), data_meds[slow] - np.median(data_meds)
        evidence["rank_median_data_s"] = data_meds.tolist()
        if excess > 0 and data_excess >= 0.5 * excess:
            cause = f"rank {slow} waits longer for its batch ({data_meds[slow]:.3g}s vs the ranks' median {np.median(data_meds):.3g}s): its data loading is slower"
            fix = f"check rank {slow}'s storage and CPU (page cache, a slower disk or NFS mount, fewer cores); prefetch or balance data loading"
    return [Finding(
        id="straggler", severity="warning", title="Straggling rank",
        summary=f"rank {slow} is the slowest on {share:.0%} of steps; its median {basis} is {meds[slow]:.3g}s, "
                f"{ratio:.2f}x the ranks' median {np.median(meds):.3g}s",
        steps=(int(sig.steps[m][0]), int(sig.steps[m][-1])),
        evidence=evidence, cause=cause, fix=fix,
        series=sig.series(f"rank {slow} {basis} / ranks' median", (r[:, slow] / np.nanmedian(r, axis=1)), how="mean"),
    )]


def detect_memory(sig: Signals) -> list[Finding]:
    """Peak memory close to the device's total: one longer sequence or fragmentation from OOM."""
    peak = sig.run.train.get("peak_mem_mb")
    total = (sig.run.provenance or {}).get("memory_total_mb")
    total = as_float(total)
    if peak is None or not np.isfinite(peak).any() or not math.isfinite(total) or total <= 0:
        raise Skip("needs peak_mem_mb and provenance memory_total_mb")
    i = int(np.nanargmax(peak))
    ratio = float(peak[i] / total)
    if ratio < MEMORY_WARN:
        return []
    gpu = (sig.run.provenance or {}).get("device_type") == "cuda"
    return [Finding(
        id="memory_pressure", severity="error" if ratio >= MEMORY_ERROR else "warning", title="Memory pressure",
        summary=f"peak {'allocated accelerator memory' if gpu else 'process memory (RSS)'} {peak[i]:,.0f} MiB is "
                f"{ratio:.0%} of the {total:,.0f} MiB available",
        steps=(int(sig.steps[i]), int(sig.steps[i])),
        evidence={"peak_mem_mb": float(peak[i]), "memory_total_mb": float(total), "ratio": ratio, "device_type":
                  (sig.run.provenance or {}).get("device_type"), "micro_batch_rows": sig.run.get("train", "micro_batch_rows"),
                  "thresholds": {"warning": MEMORY_WARN, "error": MEMORY_ERROR}},
        cause="activations of a large micro-batch, optimizer states, or fragmentation; the allocator reserves more than it "
              "allocates, so an OOM can come from here",
        fix="lower train.micro_batch_rows (gradient accumulation keeps train.batch_tokens the same), use activation "
            "checkpointing or bf16, set PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True, or shard states (FSDP)",
        series=sig.series("peak memory (MiB)", peak, how="max"),
    )]


# =============================================================================================
# Data: train/val gap, mixture drift and imbalance, replay on resume
# =============================================================================================


def _bytes_per_token(sig: Signals) -> np.ndarray | None:
    bpt = (sig.run.provenance or {}).get("train_bytes_per_token")
    if not isinstance(bpt, dict) or not sig.run.domains:
        return None
    arr = np.array([as_float(bpt.get(d)) for d in sig.run.domains])
    return arr if np.isfinite(arr).all() and (arr > 0).all() else None


def _corpus_train_tokens(sig: Signals) -> dict[str, int] | None:
    """Train tokens per domain of the corpus the run trained on, from its manifest when it is still where provenance
    says (a path the run's files name: read as a run's file is, a regular file of bounded size, and typed)."""
    path = (sig.run.provenance or {}).get("data_path")
    if not isinstance(path, str) or not path:
        return None
    manifest = rundir.read_json(Path(path) / "manifest.json")
    domains = (manifest or {}).get("domains")
    if not isinstance(domains, dict):
        return None
    out = {}
    for name, splits in domains.items():
        n = splits.get("train", {}).get("num_tokens") if isinstance(splits, dict) and isinstance(splits.get("train"), dict) else None
        if isinstance(n, int) and not isinstance(n, bool) and n > 0:
            out[name] = n
    return out


def detect_train_val_gap(sig: Signals) -> list[Finding]:
    """Train loss in bits/byte vs val bpb under the same domain mix. Fresh data gives train
    ~ val (each batch is scored before the model learns from it); repeated or duplicated
    data drives train far below val; val far below train means val leaked into train."""
    ev = sig.last_eval
    if ev is None:
        raise Skip("no evaluation yet (val_bpb)")
    bpt = _bytes_per_token(sig)
    if bpt is None:
        raise Skip("needs provenance train_bytes_per_token and per-step domain_rows")
    upto = np.nonzero(sig.steps <= ev["step"])[0]
    k = int(min(50, max(10, len(upto) // 10)))
    if len(upto) < k:
        raise Skip(f"needs {k} training steps before the eval")
    win = upto[-k:]
    loss = sig.loss[win]
    if not np.isfinite(loss).all():
        raise Skip("non-finite losses before the eval")
    rows = sig.run.domain_rows[win].sum(axis=0)
    shares = rows / rows.sum() if rows.sum() > 0 else sig.weights
    if shares is None:
        raise Skip("no domain shares")
    vd = ev.get("val_bpb_domains") or {}
    val_d = np.array([as_float(vd.get(d)) for d in sig.run.domains])
    use = shares > 0
    if np.isfinite(val_d[use]).all():
        val_mix = float(np.sum(shares[use] * bpt[use] * val_d[use]) / np.sum(shares[use] * bpt[use]))
    else:
        val_mix = float(ev["val_bpb"])
    train_bpb = float(np.mean(loss)) / LN2 / float(np.sum(shares * bpt))
    gap = 1 - train_bpb / val_mix
    epochs = None
    train_tokens = _corpus_train_tokens(sig)
    seq_len = sig.run.get("model", "seq_len")
    if train_tokens and isinstance(seq_len, int):
        counts = sig.run.domain_rows.sum(axis=0) * seq_len
        epochs = {d: float(c / train_tokens[d]) for d, c in zip(sig.run.domains, counts) if d in train_tokens}
    a, b = int(sig.steps[win[0]]), int(sig.steps[win[-1]])
    domain_gaps = _domain_gaps(sig, win, bpt, val_d)
    evidence = {"train_bpb": train_bpb, "val_bpb_same_mix": val_mix, "gap": gap, "eval_step": ev["step"], "train_window": [a, b],
                "domain_shares": dict(zip(sig.run.domains, shares.tolist())), "epochs": epochs, "domain_gaps": domain_gaps,
                "thresholds": {"train_below_val": GAP_TRAIN_BELOW_VAL, "val_below_train": GAP_VAL_BELOW_TRAIN}}
    series = sig.series("train bits/byte", sig.loss / LN2 / float(np.sum(shares * bpt)), how="mean")
    memorised = {d: g for d, g in (domain_gaps or {}).items() if g >= GAP_TRAIN_BELOW_VAL}
    if gap >= GAP_TRAIN_BELOW_VAL or memorised:
        many = {d: e for d, e in (epochs or {}).items() if e >= 2}
        cause = "the model memorises repeated training text: duplicated or near-duplicate documents, or a train split so "
        cause += "small that it is seen many times" + (
            " (" + ", ".join(f"{d}: {e:.1f} epochs" for d, e in many.items()) + ")" if many else "")
        where = (" — by domain: " + ", ".join(f"{d} {g:.0%} below its val" for d, g in sorted(memorised.items(), key=lambda x: -x[1]))
                 if memorised else "")
        return [Finding(
            id="train_val_gap", severity="warning", title="Train loss far below validation",
            summary=f"train loss {train_bpb:.3f} bits/byte (steps {a}-{b}) vs val {val_mix:.3f} on the same domain mix "
                    f"at step {ev['step']}: {gap:.0%} lower{where}",
            steps=(a, int(ev["step"])), evidence=evidence, cause=cause,
            fix="deduplicate the corpus (exact and near-duplicate, e.g. MinHash), add data or lower the budget to fewer "
                "epochs (up to ~4 epochs cost little, Muennighoff et al. 2023), and check val comes from the same "
                "distribution as train",
            series=series)]
    if -gap >= GAP_VAL_BELOW_TRAIN * (1 - gap):  # val at least 20% below train
        return [Finding(
            id="val_below_train", severity="warning", title="Validation far below train",
            summary=f"val {val_mix:.3f} bits/byte at step {ev['step']} vs train {train_bpb:.3f} (steps {a}-{b}): "
                    f"val is {1 - val_mix / train_bpb:.0%} lower",
            steps=(a, int(ev["step"])), evidence=evidence,
            cause="validation text is also in the training data (contamination, near-duplicates across the split), or "
                  "the val split is much easier than train",
            fix="decontaminate: remove val documents (and near-duplicates) from train; split by document source, not by line",
            series=series)]
    return []


def _domain_gaps(sig: Signals, win: np.ndarray, bpt: np.ndarray, val_d: np.ndarray) -> dict[str, float] | None:
    """Per domain: 1 - train bpb / val bpb over the window, from the rows' per-domain train
    loss (trainer `domain_loss`); None on runs without it."""
    dl = sig.run.domain_loss
    if dl is None:
        return None
    out = {}
    for j, d in enumerate(sig.run.domains):
        n = sig.run.domain_rows[win, j].astype(float)
        ok = np.isfinite(dl[win, j]) & (n > 0)
        if n[ok].sum() < 8 or not np.isfinite(val_d[j]) or val_d[j] <= 0:
            continue  # too few rows of this domain in the window to judge
        train_d = float(np.sum(dl[win, j][ok] * n[ok]) / n[ok].sum()) / LN2 / bpt[j]
        out[d] = float(1 - train_d / float(val_d[j]))
    return out


def detect_mixture_drift(sig: Signals) -> list[Finding]:
    """Realised domain shares (domain_rows) vs the configured shares (provenance data_weights),
    by Pearson's chi-square on the row counts: rows are drawn independently, so sampling
    noise gives p ~ U(0, 1) and p < 1e-6 means the loader does not draw what the recipe says."""
    if sig.weights is None or sig.realised_shares is None:
        raise Skip("needs provenance data_weights and per-step domain_rows")
    counts = sig.run.domain_rows.sum(axis=0)
    stat, dof, p = stats.chi_square_gof(counts, sig.weights)
    tv = 0.5 * float(np.abs(sig.realised_shares - sig.weights).sum())
    windows = []
    n = sig.n
    nw = min(DRIFT_WINDOWS, n // 20)
    for w in range(nw):
        lo, hi = w * n // nw, (w + 1) * n // nw
        c = sig.run.domain_rows[lo:hi].sum(axis=0)
        if c.sum() == 0:
            continue
        _, _, p_w = stats.chi_square_gof(c, sig.weights)
        tv_w = 0.5 * float(np.abs(c / c.sum() - sig.weights).sum())
        windows.append({"steps": [int(sig.steps[lo]), int(sig.steps[hi - 1])], "p": p_w, "tv": tv_w,
                        "drifted": p_w < DRIFT_P / nw and tv_w >= DRIFT_WINDOW_TV,
                        "shares": dict(zip(sig.run.domains, (c / c.sum()).tolist()))})
    drifted_windows = [w for w in windows if w["drifted"]]
    overall = p < DRIFT_P and tv >= DRIFT_TV
    if not overall and not drifted_windows:
        return []
    dev = sig.realised_shares - sig.weights
    j = int(np.argmax(np.abs(dev)))
    dom = sig.run.domains[j]
    bias = sig.run.get("faults", "mixture_bias")
    per_domain = {d: {"weight": float(w), "realised": float(s), "rows": int(c)}
                  for d, w, s, c in zip(sig.run.domains, sig.weights, sig.realised_shares, counts)}
    first = drifted_windows[0]["steps"] if drifted_windows else [int(sig.steps[0]), int(sig.steps[-1])]
    summary = (f"domain {dom} is {sig.realised_shares[j]:.1%} of training rows but configured at {sig.weights[j]:.1%} "
               f"(chi-square {stat:.4g} on {dof} dof, p={p:.2g}; total-variation distance {tv:.3f})" if overall else
               f"the mixture drifted in {len(drifted_windows)} of {len(windows)} windows (first: steps {first[0]}-{first[1]}) "
               "though the overall shares match")
    shares_w = np.array([w["shares"][dom] for w in windows]) if windows else np.array([])
    return [Finding(
        id="mixture_drift", severity="error" if tv >= DRIFT_TV_ERROR else "warning", title="Data mixture drift",
        summary=summary, steps=(first[0], int(sig.steps[-1])),
        evidence={"domains": per_domain, "chi2": stat, "dof": dof, "p_value": p, "tv_distance": tv, "windows": windows,
                  "injected_bias": bias or None, "thresholds": {"p": DRIFT_P, "tv": DRIFT_TV}},
        cause=(f"injected on purpose: recipe.json sets faults.mixture_bias={bias!r} (every other row from {bias})" if bias else
               "the loader does not sample what provenance data_weights says: a bias in the sampler, a domain running out "
               "and being skipped, or weights changed mid-run"),
        fix="fix the sampler so realised shares match data.weights (a mixture experiment is only valid for the mixture it "
            "really trained on); rerun the affected mixture experiments",
        series=Series(f"{dom} share per window", [w["steps"][1] for w in windows], shares_w.tolist()) if windows else None,
    )]


def detect_mixture_imbalance(sig: Signals) -> list[Finding]:
    """A domain starved by data.weights whose val bpb lags the other domains."""
    ev = sig.last_eval
    weights_set = sig.run.get("data", "weights")
    if ev is None or sig.realised_shares is None:
        raise Skip("needs an eval with per-domain val bpb and per-step domain_rows")
    if not isinstance(weights_set, dict) or not weights_set:
        raise Skip("data.weights not set: domains are sampled by size")
    vd = ev.get("val_bpb_domains") or {}
    val = {d: as_float(vd.get(d)) for d in sig.run.domains if math.isfinite(as_float(vd.get(d)))}
    k = len(sig.run.domains)
    if len(val) < 2:
        raise Skip("needs val bpb for at least two domains")
    shares = dict(zip(sig.run.domains, sig.realised_shares.tolist()))
    starved = [d for d in val if shares[d] < STARVED_SHARE / k]
    fed = [d for d in val if d not in starved]
    if not starved or not fed:
        return []
    ref = float(np.median([val[d] for d in fed]))
    lagging = [d for d in starved if val[d] >= (1 + LAG_FRAC) * ref]
    if not lagging:
        return []
    worst = max(lagging, key=lambda d: val[d])
    return [Finding(
        id="mixture_imbalance", severity="warning", title="Starved domain lags",
        summary=", ".join(f"{d} gets {shares[d]:.1%} of training rows and scores {val[d]:.3f} bpb" for d in lagging)
                + f", vs {ref:.3f} (median of the well-fed domains {', '.join(fed)})",
        steps=None,
        evidence={"starved": lagging, "shares": shares, "val_bpb_domains": val, "fed_median_bpb": ref,
                  "data_weights": weights_set, "thresholds": {"starved_share": STARVED_SHARE / k, "lag": LAG_FRAC}},
        cause=f"data.weights gives {worst} too little of the budget to learn it (the weights in recipe.json: {weights_set})",
        fix=f"raise {worst}'s weight (e.g. sample by size^0.7 instead of hand weights), or search the mixture "
            "(DoReMi / RegMix-style small-proxy sweeps) if that domain matters",
        series=None,
    )]


def detect_data_replay(sig: Signals) -> list[Finding]:
    """The same global batch seen at two steps (batch_hash): after a resume this means the
    loader restarted instead of continuing."""
    hashes = sig.run.batch_hash
    if not any(hashes):
        raise Skip("no batch_hash in metrics.jsonl")
    first_seen: dict[str, int] = {}
    repeats = []  # (step, earlier step)
    for step, h in zip(sig.steps.tolist(), hashes):
        if h is None:
            continue
        if h in first_seen:
            repeats.append((step, first_seen[h]))
        else:
            first_seen[h] = step
    if not repeats:
        return []
    resumes = [r.get("step") for r in (sig.run.provenance or {}).get("resumes") or [] if isinstance(r, dict)]
    after_resume = [r for r in resumes if isinstance(r, int) and any(r < s <= r + 2 for s, _ in repeats)]
    if not after_resume and len(repeats) < 3:
        return []  # an isolated identical batch: possible with a tiny domain, not a replay
    replay = sig.run.get("faults", "replay_on_resume")
    first = repeats[0]
    mark = np.zeros(sig.n)
    rep_steps = {s for s, _ in repeats}
    mark[[i for i, s in enumerate(sig.steps.tolist()) if s in rep_steps]] = 1
    cause = (f"the data loader restarted from its first batch when the run resumed at step {after_resume[0]} instead of "
             "restoring its position from the checkpoint" if after_resume else
             "identical batches recur: the loader cycles over the same windows (a tiny split or a fixed seed per epoch)")
    if replay:
        cause = "injected on purpose: recipe.json sets faults.replay_on_resume=true; " + cause
    return [Finding(
        id="data_replay", severity="error" if after_resume else "warning", title="Training data replayed",
        summary=f"{len(repeats)} step(s) trained on a batch already seen (first: step {first[0]} repeats step {first[1]})"
                + (f"; the repeats start right after the resume at step {after_resume[0]}" if after_resume else ""),
        steps=(first[0], repeats[-1][0]),
        evidence={"num_repeated_steps": len(repeats), "pairs": repeats[:20], "resumes": resumes, "after_resume": after_resume,
                  "injected": bool(replay)},
        cause=cause,
        fix="restore the loader state (RNG and position) from the checkpoint on resume, as `pretrainlab train --resume` does; "
            "the replayed steps trained on duplicated data, so rerun from the checkpoint before the resume",
        series=Series("batch already seen (1 = yes)", *stats.downsample(sig.steps, mark, 120, "max")),
    )]


def detect_resume_jump(sig: Signals) -> list[Finding]:
    """The loss jumps right after a resume: state (optimizer, schedule, RNG) not restored."""
    resumes = [r.get("step") for r in (sig.run.provenance or {}).get("resumes") or [] if isinstance(r, dict)]
    resumes = [r for r in resumes if isinstance(r, int)]
    if not resumes:
        raise Skip("the run was never resumed")
    out = []
    for r in resumes:
        before = sig.loss[(sig.steps > r - 16) & (sig.steps <= r)]
        after = sig.loss[(sig.steps > r) & (sig.steps <= r + 3)]
        if len(before) < 8 or len(after) < 3:
            continue
        pre, post = float(np.median(before)), float(np.median(after))
        if post > RESUME_JUMP * pre:
            out.append((r, pre, post))
    if not out:
        return []
    r, pre, post = out[0]
    i = int(np.searchsorted(sig.steps, r))
    return [Finding(
        id="resume_loss_jump", severity="warning", title="Loss jump after resume",
        summary=f"after the resume at step {r} the loss jumped from {pre:.4g} to {post:.4g} ({post / pre:.2f}x)",
        steps=(r + 1, r + 3),
        evidence={"resumes": [{"step": a, "before": b, "after": c} for a, b, c in out]},
        cause="the checkpoint did not restore the full training state (optimizer moments, LR schedule position, or model "
              "weights from an older checkpoint)",
        fix="resume from a checkpoint that holds model, optimizer, schedule counters and loader state together "
            "(`pretrainlab train --resume`), and compare the first steps after resume with the uninterrupted run",
        series=sig.series("loss (nats/token)", sig.loss, max(0, i - 32), min(sig.n, i + 32)),
    )]


def detect_replaced_attempt(sig: Signals) -> list[Finding]:
    """What the attempt before a resume did after its last checkpoint (the rows the resume
    recomputed, kept in metrics.superseded.jsonl): a loss that went non-finite or blew up
    there explains why the run was restarted, and says whether the resumed run got past it."""
    rows = sig.run.superseded
    if not rows:
        raise Skip("no superseded rows (the run was never resumed from an older checkpoint)")
    out = []
    for at in sorted({r["superseded_by_resume_at"] for r in rows}):
        attempt = sorted((r for r in rows if r["superseded_by_resume_at"] == at), key=lambda r: r["step"])
        losses = np.array([as_float(r.get("loss")) for r in attempt])
        before = sig.loss[(sig.steps <= at) & (sig.steps > at - 50)]
        ref = float(np.nanmedian(before)) if np.isfinite(before).any() else math.nan
        bad = [i for i, v in enumerate(losses) if not math.isfinite(v) or (math.isfinite(ref) and v > RESUME_JUMP * ref)]
        last = attempt[-1]["step"]
        if not bad:
            out.append(Finding(
                id="replaced_attempt", severity="info", title="Steps recomputed after a resume",
                summary=f"an earlier attempt ran to step {last}; the resume at step {at} recomputed steps {at + 1}-{last}",
                steps=(at + 1, last), evidence={"resume_step": at, "attempt_last_step": last},
                cause="the run was interrupted after its last checkpoint (the steps since were lost with the process)",
                fix="nothing to fix; checkpoint more often (train.ckpt_every) if the lost steps are costly"))
            continue
        k = attempt[bad[0]]["step"]
        what = f"its loss was {_nonfinite_name(losses[bad[0]])}" if not math.isfinite(losses[bad[0]]) else \
            f"its loss rose to {losses[bad[0]]:.4g} ({losses[bad[0]] / ref:.1f}x the median before the checkpoint)"
        passed = bool(len(sig.steps)) and int(sig.steps[-1]) >= k and np.isfinite(sig.loss[sig.steps >= k]).all()
        out.append(Finding(
            id="replaced_attempt", severity="warning", title="The attempt before a resume failed",
            summary=f"the attempt replaced by the resume at step {at} failed at step {k}: {what}; "
                    + ("the resumed run got past that step" if passed else "the resumed run has not got past it"),
            steps=(at + 1, last), evidence={"resume_step": at, "failed_step": k, "attempt_last_step": last, "resumed_run_passed": passed},
            cause="an instability (or a bad batch) after the checkpoint; a resume that replays the same data and state "
                  "tends to meet it again" + ("" if passed else ", and this one has not passed it yet"),
            fix="if it recurs, resume with a lower LR or skip the offending batches, and look at grad norms before the failure",
            series=Series("replaced attempt's loss (nats/token)",
                          *stats.downsample(np.array([r["step"] for r in attempt]), losses, 120, "max"))))
    return out


# what a run's status can be: summary.json's as the trainer and the lab write it, or the reader's own when there is none
KNOWN_STATUSES = frozenset({"ok", "diverged", "crashed", "timeout", "preempted", "rejected", "unscored", "running", "incomplete"})


def detect_run_status(sig: Signals) -> list[Finding]:
    """How the run ended: crashed, rejected by the lab's checks, preempted, timed out, or killed without a summary."""
    status = sig.run.status
    last = int(sig.steps[-1]) if sig.n else 0
    s = sig.run.summary or {}
    if status not in KNOWN_STATUSES:
        return [Finding(
            id="run_status_unknown", severity="warning", title="Unknown run status",
            summary=f"summary.json says the run ended with status {status[:80]!r}, which the trainer never writes: its "
                    "result cannot be trusted as a finished run's", steps=(last, last) if last else None,
            evidence={"status": status[:200], "known": sorted(KNOWN_STATUSES)},
            cause="summary.json was written by something other than `pretrainlab train` (experiment code, a hand edit, "
                  "another tool)",
            fix=f"train it again, or continue it with `pretrainlab train --resume {sig.run.path}` if a checkpoint exists")]
    if status == "crashed":
        err = (s.get("error") if isinstance(s.get("error"), str) else "").strip().splitlines()
        cause, fix = ("an exception in the trainer (the traceback is in summary.json error and log.txt)",
                      "fix the error, then continue with `pretrainlab train --resume RUN_DIR` if a checkpoint exists")
        if err and err[0].startswith("out of memory: "):  # killed at a campaign's per-run cap (runners/limits.py)
            cause, fix = ("the run's processes together used more memory than its campaign allows each run (--run-memory; "
                          "auto: 90% of the machine's RAM split over the runs beside each other)",
                          "give runs more: `pretrainlab research resume ID --run-memory 16G` (or fewer --parallel), or lower "
                          "train.micro_batch_rows or the model's size")
        elif err and err[0].startswith("out of tasks: "):
            cause, fix = ("the run's processes and threads reached its cap (1,024: a sandboxed run's fork or thread "
                          "creation fails past it, so a fork bomb stops there)",
                          "start fewer processes or threads (train.num_threads, data loader workers); the cap is fixed")
        elif err and err[0].startswith("out of disk: "):
            cause, fix = ("the trainer wrote more to its run directory than its campaign allows each run (--run-disk; auto: "
                          "half the disk's free space split over the runs beside each other)",
                          "free disk space or give runs more with `pretrainlab research resume ID --run-disk 100G`; "
                          "checkpoint less often (train.ckpt_every)")
        return [Finding(
            id="run_crashed", severity="error", title="Run crashed",
            summary=f"the run crashed after step {last}: {err[-1] if err else 'no error recorded'}",
            steps=(last, last) if last else None, evidence={"error_tail": "\n".join(err[-6:])}, cause=cause, fix=fix)]
    if status == "rejected":
        lab = s.get("lab_score") if isinstance(s.get("lab_score"), dict) else {}  # what the run's files say: typed here
        splits = lab.get("splits") if isinstance(lab.get("splits"), dict) else {}
        reason = next((r for r in (s.get("rejected_reason"), lab.get("reason")) if isinstance(r, str) and r), "no reason recorded")
        return [Finding(
            id="run_rejected", severity="error", title="Rejected by the lab's checks",
            summary=f"the lab refused this run's result: {reason}",
            steps=(last, last) if last else None,
            evidence={"reason": s.get("rejected_reason"), "reported_val_bpb": s.get("val_bpb_reported"), "probes": lab.get("probes"),
                      "lab_splits": {k: v.get("val_bpb") for k, v in splits.items() if isinstance(v, dict)}},
            cause="the model or trainer failed a probe (looked ahead, depended on other rows or on what it saw) or reported "
                  "a figure the lab could not reproduce from its weights (docs/research.md, the trust boundary)",
            fix="make the model causal and row-independent, and leave the trainer's evaluation alone; the lab scores every run")]
    if status == "preempted" and isinstance(s.get("stopped_by"), str):  # its campaign stopped it (research/campaign.py)
        timed_out = "time limit" in s["stopped_by"]
        return [Finding(
            id="run_stopped", severity="warning" if timed_out else "info", title="Stopped by its campaign",
            summary=f"the run was stopped at step {last} by {s['stopped_by']}", steps=(last, last) if last else None,
            evidence={"stopped_by": s["stopped_by"], "steps": last},
            cause="the campaign's per-run time limit" if timed_out else "the campaign's early stopping: it decided with what it had",
            fix="raise --run-budget's time, or give the run fewer tokens" if timed_out else
                "nothing to do: `pretrainlab research status CAMPAIGN` shows the decision")]
    if status == "preempted":
        return [Finding(
            id="run_preempted", severity="info", title="Run preempted",
            summary=f"the run stopped on SIGTERM at step {last} and wrote a checkpoint", steps=(last, last) if last else None,
            evidence={"steps": last}, cause="a scheduler or user sent SIGTERM",
            fix=f"continue it: pretrainlab train --resume {sig.run.path}")]
    if status == "timeout":
        return [Finding(
            id="run_timeout", severity="info", title="Wall-clock limit reached",
            summary=f"budget.wall_limit_s={sig.run.get('budget', 'wall_limit_s')} ended the run at step {last} before its budget",
            steps=(last, last) if last else None, evidence={"wall_limit_s": sig.run.get("budget", "wall_limit_s")},
            cause="the hard wall-clock cap is shorter than the training budget plus evaluation and checkpoints",
            fix="raise budget.wall_limit_s or lower the training budget")]
    if status == "incomplete" and sig.n:
        return [Finding(
            id="run_incomplete", severity="warning", title="Run ended without a summary",
            summary=f"no summary.json and no write for {(sig.run.metrics_age_s or 0) / 60:.0f} min after step {last}: the "
                    "process was killed", steps=(last, last),
            evidence={"last_step": last, "metrics_age_s": sig.run.metrics_age_s},
            cause="SIGKILL, the OOM killer, or a lost node (a clean stop always writes summary.json)",
            fix=f"check the host's kernel log for OOM kills; continue with `pretrainlab train --resume {sig.run.path}`")]
    return []


# Order matters only for display ties; findings are sorted by severity then step.
DETECTORS = [
    ("run_status", detect_run_status),
    ("nan_loss", detect_nan),
    ("divergence", detect_divergence),
    ("loss_spike", detect_loss_spikes),
    ("grad_norm_spike", detect_grad_spikes),
    ("dead_training", detect_dead_training),
    ("plateau", detect_plateau),
    ("lr_schedule", detect_lr_schedule),
    ("data_stall", detect_data_stall),
    ("low_mfu", detect_low_mfu),
    ("throughput_drop", detect_throughput),
    ("straggler", detect_straggler),
    ("idle_accelerator", detect_idle_accelerator),
    ("replaced_attempt", detect_replaced_attempt),
    ("memory_pressure", detect_memory),
    ("train_val_gap", detect_train_val_gap),
    ("mixture_drift", detect_mixture_drift),
    ("mixture_imbalance", detect_mixture_imbalance),
    ("data_replay", detect_data_replay),
    ("resume_loss_jump", detect_resume_jump),
]
