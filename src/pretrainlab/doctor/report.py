"""What the doctor returns: a `Report` of `Finding`s, JSON-ready through `to_dict()`.

The JSON schema is versioned (`SCHEMA_VERSION`, documented in docs/doctor.md). Additive
changes (a new finding id, a new evidence key, a new fact) keep the version; renaming or
removing a field, or changing a meaning, bumps it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

SCHEMA_VERSION = 1
SEVERITIES = ("error", "warning", "info")  # most severe first


@dataclass
class Series:
    """An evidence series for a sparkline: e.g. the loss around a spike."""

    label: str  # what the values are, with units: "loss (nats/token)"
    steps: list[int]
    values: list[float]

    def to_dict(self) -> dict:
        return {"label": self.label, "steps": [int(s) for s in self.steps], "values": [_clean(v) for v in self.values]}


@dataclass
class Finding:
    id: str  # stable identifier, e.g. "loss_spike" (docs/doctor.md lists them all)
    severity: str  # "error" | "warning" | "info"
    title: str  # a few words: "Loss spikes"
    summary: str  # one sentence with the numbers
    steps: tuple[int, int] | None  # first and last step concerned, inclusive; None = the whole run
    evidence: dict  # the numbers behind the summary
    cause: str  # the likely cause
    fix: str  # what to do about it, grounded in practice
    series: Series | None = None

    def __post_init__(self):
        assert self.severity in SEVERITIES, self.severity

    def to_dict(self) -> dict:
        return {
            "id": self.id, "severity": self.severity, "title": self.title, "summary": self.summary,
            "steps": list(self.steps) if self.steps else None, "evidence": _clean(self.evidence),
            "cause": self.cause, "fix": self.fix, "series": self.series.to_dict() if self.series else None,
        }


@dataclass
class Check:
    """One detector's outcome: it ran, or it was skipped and why."""

    detector: str
    ran: bool
    note: str = ""

    def to_dict(self) -> dict:
        return {"detector": self.detector, "ran": self.ran, "note": self.note}


@dataclass
class Report:
    run_dir: str
    facts: dict  # what the run is: status, steps, tokens, val_bpb, device, ...
    findings: list[Finding] = field(default_factory=list)
    data_quality: list[str] = field(default_factory=list)  # problems with the run files themselves
    checks: list[Check] = field(default_factory=list)
    baseline: dict | None = None  # the comparison with a baseline run, when one was given
    generated_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    @property
    def verdict(self) -> str:
        """'error' | 'warning' | 'info' (the worst finding), 'healthy' (no finding), or
        'no_data' (no training step to judge)."""
        for sev in SEVERITIES:
            if any(f.severity == sev for f in self.findings):
                return sev
        return "healthy" if self.facts.get("steps_logged") else "no_data"

    def ids(self, min_severity: str = "info") -> set[str]:
        """Finding ids at or above a severity."""
        keep = SEVERITIES[: SEVERITIES.index(min_severity) + 1]
        return {f.id for f in self.findings if f.severity in keep}

    def to_dict(self) -> dict:
        return {
            "schema_version": SCHEMA_VERSION,
            "kind": "pretrainlab.doctor.report",
            "generated_at": self.generated_at,
            "run_dir": self.run_dir,
            "verdict": self.verdict,
            "facts": _clean(self.facts),
            "findings": [f.to_dict() for f in self.findings],
            "data_quality": list(self.data_quality),
            "checks": [c.to_dict() for c in self.checks],
            "baseline": _clean(self.baseline) if self.baseline is not None else None,
        }


def _clean(obj):
    """JSON-safe: numpy scalars to Python, NaN/Inf to None (JSON has neither), floats to 6
    significant digits, tuples to lists."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return float(f"{v:.6g}") if math.isfinite(v) else None
    return obj
