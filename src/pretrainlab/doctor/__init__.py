"""The run doctor: diagnoses a run from its files (recipe.json, metrics.jsonl, summary.json,
provenance.json) with detectors over the full-resolution telemetry.

    from pretrainlab.doctor import diagnose, render_text
    report = diagnose("runs/tiny-cpu-...", baseline_dir=None)   # works on live and partial runs too
    print(render_text(report))                                  # colours, sparklines
    report.to_dict()                                            # JSON, schema in docs/doctor.md

    runfiles.py   tolerant reader of a run directory (live, truncated, damaged)
    stats.py      robust trailing statistics, spike scan, chi-square, sparklines
    detectors.py  one function per failure mode, thresholds as constants
    diagnose.py   diagnose(): all detectors + the baseline comparison -> Report
    report.py     Report / Finding and the versioned JSON schema
    render.py     render_text()
"""

from .detectors import DETECTORS
from .diagnose import diagnose
from .render import render_text
from .report import SCHEMA_VERSION, Check, Finding, Report, Series

__all__ = ["DETECTORS", "SCHEMA_VERSION", "Check", "Finding", "Report", "Series", "diagnose", "render_text"]
