"""The doctor's cluster findings: compute a campaign wastes between and across its runs, not
inside one run's curves.

    report = diagnose_campaign("3f2a...", runs)     # runs: [CampaignRun], api.diagnose_campaign builds them from the ledger
    report.to_dict(); render_campaign_text(report)

Evidence, and where it comes from:
- each run's attempts (the ledger's run_attempts, written by the campaign loop from what its
  runner reports): seconds queued with every slot taken (`queue_s`), seconds between the
  runner taking the run and a node starting it (`place_s`: a Ray actor waiting for resources),
  seconds run, the node, and for an attempt lost with its node, why;
- each run's directory (runfiles.py): per-rank step times and GPU utilisation in
  metrics.jsonl, resumes in provenance.json, the steps a resume recomputed in
  metrics.superseded.jsonl.

Findings: queue_wait, idle_accelerator, straggler, restarts (docs/doctor.md). Per-run
detectors (detectors.py) judge each run's telemetry; this module adds what needs the whole
campaign: waits against run times, and nodes on which runs keep getting lost.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from .detectors import Signals, Skip, detect_idle_accelerator, detect_straggler
from .report import SCHEMA_VERSION, SEVERITIES, Check, Finding, _clean
from .runfiles import load_run

# --- queue wait -------------------------------------------------------------------------------
QUEUE_MIN_S = 30.0  # a run waited at least 30 s before running (shorter is the loop's own tick)...
QUEUE_RATIO = 0.5  # ...and at least half as long as it then ran
PLACE_MIN_S = 10.0  # Ray took 10 s or more to place a run the runner had given a slot: the slot was held, empty
# --- restarts ---------------------------------------------------------------------------------
RESTART_LOST_SHARE = 0.05  # compute lost to restarts above 5% of the campaign's training time: a warning
NODE_REPEAT = 2  # runs lost on one node before the doctor names it (one loss can be the cluster's, two are the node's)


@dataclass
class Attempt:
    """One attempt of a campaign run, as the ledger's run_attempts holds it."""

    number: int
    node: str | None
    queue_s: float  # queued with every slot taken (first attempt only)
    place_s: float  # given to the runner, not yet started on a node
    run_s: float
    outcome: str  # the run's status for its last attempt; 'lost' for one lost with its node
    reason: str | None = None  # why it was lost


@dataclass
class CampaignRun:
    key: str  # the campaign's name for the run (its directory's name)
    run_dir: Path | None
    attempts: list[Attempt] = field(default_factory=list)


@dataclass
class CampaignReport:
    campaign_id: str
    facts: dict
    findings: list[Finding] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    generated_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    @property
    def verdict(self) -> str:
        for sev in SEVERITIES:
            if any(f.severity == sev for f in self.findings):
                return sev
        return "healthy" if self.facts.get("runs") else "no_data"

    def ids(self) -> set[str]:
        return {f.id for f in self.findings}

    def to_dict(self) -> dict:
        return {"schema_version": SCHEMA_VERSION, "kind": "pretrainlab.doctor.campaign_report", "generated_at": self.generated_at,
                "campaign": self.campaign_id, "verdict": self.verdict, "facts": _clean(self.facts),
                "findings": [f.to_dict() for f in self.findings], "checks": [c.to_dict() for c in self.checks]}


def _short(node: str | None) -> str:
    return (node or "?")[:12]


def diagnose_campaign(campaign_id: str, runs: list[CampaignRun]) -> CampaignReport:
    """The cluster findings over a campaign's runs (their attempts and run directories)."""
    signals: dict[str, Signals] = {}
    for r in runs:
        if r.run_dir is not None and Path(r.run_dir).is_dir():
            with np.errstate(all="ignore"):
                signals[r.key] = Signals(load_run(r.run_dir))
    findings: list[Finding] = []
    checks: list[Check] = []
    for name, fn in (("queue_wait", _queue_wait), ("idle_accelerator", _per_run(detect_idle_accelerator)),
                     ("straggler", _per_run(detect_straggler)), ("restarts", _restarts)):
        try:
            with np.errstate(all="ignore"):
                found = fn(runs, signals)
        except Skip as e:
            checks.append(Check(name, False, str(e)))
            continue
        checks.append(Check(name, True))
        findings += found
    findings.sort(key=lambda f: SEVERITIES.index(f.severity))
    attempts = [a for r in runs for a in r.attempts]
    nodes = Counter(a.node for a in attempts if a.node)
    facts = {"runs": len(runs), "attempts": len(attempts), "runs_with_files": len(signals),
             "run_seconds": sum(a.run_s for a in attempts), "queue_seconds": sum(a.queue_s for a in attempts),
             "place_seconds": sum(a.place_s for a in attempts), "nodes": {_short(n): k for n, k in nodes.most_common()}}
    return CampaignReport(campaign_id, facts, findings, checks)


def _queue_wait(runs: list[CampaignRun], signals: dict) -> list[Finding]:
    """Runs that waited long to start, against how long they then ran: queued behind full slots
    (the campaign had more work than slots), or held in a slot Ray could not place."""
    timed = [r for r in runs if r.attempts]
    if not timed:
        raise Skip("no attempts recorded for this campaign's runs (a campaign run before the ledger kept them)")
    rows = []
    for r in timed:
        queue = sum(a.queue_s for a in r.attempts)
        place = sum(a.place_s for a in r.attempts)
        ran = sum(a.run_s for a in r.attempts)
        rows.append({"run": r.key, "queue_s": queue, "place_s": place, "run_s": ran, "ratio": (queue + place) / ran if ran > 0 else None})
    waited = [x for x in rows if x["queue_s"] + x["place_s"] >= QUEUE_MIN_S and (x["ratio"] is None or x["ratio"] >= QUEUE_RATIO)]
    placed = [x for x in rows if x["place_s"] >= PLACE_MIN_S]
    if not waited and not placed:
        return []
    queue_total, place_total = sum(x["queue_s"] for x in rows), sum(x["place_s"] for x in rows)
    run_total = sum(x["run_s"] for x in rows)
    worst = max(waited or placed, key=lambda x: x["queue_s"] + x["place_s"])
    cluster = place_total >= queue_total  # the wait was for a node, not for a slot
    evidence = {"num_runs": len(rows), "num_waited": len(waited), "num_slow_placement": len(placed), "queue_seconds": queue_total,
                "place_seconds": place_total, "run_seconds": run_total, "median_queue_s": float(np.median([x["queue_s"] for x in rows])),
                "median_place_s": float(np.median([x["place_s"] for x in rows])), "worst": worst,
                "runs": sorted(waited + [x for x in placed if x not in waited], key=lambda x: -(x["queue_s"] + x["place_s"]))[:20],
                "thresholds": {"min_s": QUEUE_MIN_S, "ratio": QUEUE_RATIO, "place_min_s": PLACE_MIN_S}}
    summary = (f"{len(waited)} of {len(rows)} runs waited at least {QUEUE_RATIO:.0%} of their run time before starting "
               f"({queue_total:.0f}s queued for a slot, {place_total:.0f}s waiting for a node, against {run_total:.0f}s run); "
               f"longest: {worst['run']}, {worst['queue_s'] + worst['place_s']:.0f}s before a {worst['run_s']:.0f}s run")
    if placed:
        summary += f"; {len(placed)} run(s) held a slot for {PLACE_MIN_S:.0f}s or more before Ray placed them"
    return [Finding(
        id="queue_wait", severity="warning" if cluster and placed else "info", title="Runs waited to start",
        summary=summary, steps=None, evidence=evidence,
        cause=("slots waited for the cluster: Ray had no node with the CPUs/GPUs a slot asks for free (other jobs on the "
               "cluster, nodes still starting, or more slots than the cluster holds), so each held slot stood empty" if cluster else
               "the campaign had more runs ready than slots (replicate seeds and queued proposals behind full slots): decisions "
               "wait on the queue, not on compute"),
        fix=("match --parallel to what the cluster can run at once (`ray status`: free CPUs/GPUs per node) or add nodes; "
             "a slot Ray cannot place holds nothing but the campaign's time" if cluster else
             "raise --parallel (more GPUs or nodes) if the campaign should finish sooner, or plan fewer replicate seeds per screen "
             "(--decision screen, --seeds 2); queueing itself wastes no compute"),
    )]


def _per_run(detector):
    """A per-run detector over every run of the campaign: one campaign finding listing the runs it fired on."""

    def campaign(runs: list[CampaignRun], signals: dict) -> list[Finding]:
        hits, skipped = [], []
        nodes = {r.key: r.attempts[-1].node if r.attempts else None for r in runs}
        for key, sig in signals.items():
            try:
                if not sig.n:
                    raise Skip("no training steps logged")
                found = detector(sig)
            except Skip as e:
                skipped.append(str(e))
                continue
            hits += [(key, f) for f in found]
        if not signals:
            raise Skip("no run directory to read")
        if len(skipped) == len(signals):
            raise Skip(f"no run could be judged: {skipped[0]}")
        if not hits:
            return []
        key, first = hits[0]
        severity = min((f.severity for _, f in hits), key=SEVERITIES.index)
        more = f" (and {len(hits) - 1} more run(s))" if len(hits) > 1 else ""
        return [Finding(
            id=first.id, severity=severity, title=first.title, summary=f"run {key}: {first.summary}{more}", steps=None,
            evidence={"num_runs": len(hits), "runs": [{"run": k, "node": _short(nodes.get(k)) if nodes.get(k) else None,
                                                       "summary": f.summary, "evidence": f.evidence} for k, f in hits[:20]]},
            cause=first.cause, fix=first.fix, series=first.series)]

    return campaign


def _restarts(runs: list[CampaignRun], signals: dict) -> list[Finding]:
    """Runs that were started again (lost with their node, or resumed after their loop stopped):
    the steps each resume recomputed (trained before the loss, after the last checkpoint) in
    seconds of training, and the nodes where runs keep getting lost."""
    rows, train_total = [], 0.0
    for r in runs:
        sig = signals.get(r.key)
        lost = [a for a in r.attempts if a.outcome == "lost"]
        resumes = [x.get("step") for x in ((sig.run.provenance or {}).get("resumes") or [] if sig else []) if isinstance(x, dict)]
        step_s = float(np.nanmedian(sig.run.train["step_s"])) if sig is not None and sig.n and np.isfinite(sig.run.train["step_s"]).any() else None
        if sig is not None and sig.n:
            train_total += float(np.nansum(sig.run.train["step_s"]))
        if not lost and not resumes:
            continue
        redone = 0
        for at in {x["superseded_by_resume_at"] for x in sig.run.superseded} if sig else ():
            last = max(x["step"] for x in sig.run.superseded if x["superseded_by_resume_at"] == at)
            redone += last - at
        lost_s = redone * step_s if step_s else None
        rows.append({"run": r.key, "attempts": len(r.attempts) or None, "lost": [{"node": _short(a.node), "reason": a.reason,
                                                                                 "seconds": a.run_s} for a in lost],
                     "resumes": resumes, "steps_redone": redone, "redone_s": lost_s, "lost_attempt_s": sum(a.run_s for a in lost)})
    if not rows:
        if not any(r.attempts for r in runs) and not signals:
            raise Skip("no attempts and no run directories to read")
        return []
    by_node = Counter(a.node for r in runs for a in r.attempts if a.outcome == "lost" and a.node)
    recurring = [(n, k) for n, k in by_node.most_common() if k >= NODE_REPEAT]
    redone_total = sum(x["redone_s"] or 0.0 for x in rows)
    share = redone_total / train_total if train_total > 0 else 0.0
    summary = (f"{len(rows)} run(s) restarted ({sum(len(x['lost']) for x in rows)} attempt(s) lost with their node, "
               f"{sum(len(x['resumes']) for x in rows)} resume(s)); {sum(x['steps_redone'] for x in rows)} steps trained twice, "
               f"{redone_total:.0f}s of training ({share:.1%} of the campaign's)")
    if recurring:
        summary += "; runs keep getting lost on " + ", ".join(f"node {_short(n)} ({k} runs)" for n, k in recurring)
    reasons = Counter(a["reason"] for x in rows for a in x["lost"] if a["reason"])
    return [Finding(
        id="restarts", severity="warning" if recurring or share >= RESTART_LOST_SHARE else "info", title="Runs restarted",
        summary=summary, steps=None,
        evidence={"runs": rows[:20], "num_runs": len(rows), "steps_redone": sum(x["steps_redone"] for x in rows),
                  "redone_seconds": redone_total, "train_seconds": train_total, "lost_share": share,
                  "lost_by_node": {_short(n): k for n, k in by_node.most_common()}, "recurring_nodes": [n for n, _ in recurring],
                  "reasons": dict(reasons), "thresholds": {"lost_share": RESTART_LOST_SHARE, "node_repeat": NODE_REPEAT}},
        cause=(f"node {_short(recurring[0][0])} loses runs again and again (hardware, a flaky network, or preemption there)"
               if recurring else "runs were interrupted (a lost node or worker, preemption, or a stopped campaign loop) and "
               "resumed from their last checkpoint: the steps since it were trained twice"),
        fix=(f"drain node {_short(recurring[0][0])} and check it (dmesg, `ray logs`, nvidia-smi -q for Xid errors); the Ray "
             "and SLURM runners already exclude a node after repeated losses within one loop" if recurring else
             "checkpoint more often (train.ckpt_every) where nodes are preemptible, so a restart redoes fewer steps"),
    )]


def render_campaign_text(report: CampaignReport) -> str:
    """The campaign report as plain text: the facts, then each finding with its numbers, cause and fix."""
    f = report.facts
    out = [f"pretrainlab doctor · campaign {report.campaign_id} · {report.verdict}",
           f"{f['runs']} runs, {f['attempts']} attempts; {f['run_seconds']:.0f}s run, {f['queue_seconds']:.0f}s queued for a slot, "
           f"{f['place_seconds']:.0f}s waiting for a node" + (f"; nodes: {', '.join(f'{n} ({k})' for n, k in f['nodes'].items())}"
                                                              if f["nodes"] else "")]
    for x in report.findings:
        out += ["", f"[{x.severity}] {x.title} ({x.id})", f"  {x.summary}", f"  cause  {x.cause}", f"  fix    {x.fix}"]
    if not report.findings:
        out += ["", "no cluster-level waste found"]
    skipped = [c for c in report.checks if not c.ran]
    if skipped:
        out += ["", "not checked: " + "; ".join(f"{c.detector} ({c.note})" for c in skipped)]
    return "\n".join(out)
