"""The doctor's terminal view: a header with the run's facts, then each finding with its
severity in colour, one-line summary, a sparkline of its evidence series, cause and fix.

    print(render_text(report))               # ANSI colours
    render_text(report, color=False)         # plain text (logs, files, tests)
"""

from __future__ import annotations

import math
import textwrap

from .report import Finding, Report
from .stats import sparkline

_COLORS = {"error": "1;31", "warning": "1;33", "info": "1;36", "healthy": "1;32", "dim": "2", "bold": "1"}
_MARK = {"error": "✖", "warning": "▲", "info": "●", "healthy": "✔", "no_data": "○"}


def _c(text: str, style: str, color: bool) -> str:
    return f"\033[{_COLORS[style]}m{text}\033[0m" if color else text


def _num(v, fmt: str = ".4g") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return format(v, fmt)


def _wrap(label: str, text: str, width: int, color: bool) -> list[str]:
    lines = textwrap.wrap(text, width=width - 11) or [""]
    return [f"  {_c(label.ljust(7), 'dim', color) if i == 0 else ' ' * 7}  {line}" for i, line in enumerate(lines)]


def _spark(f: Finding, color: bool) -> list[str]:
    s = f.series
    if s is None or not s.values:
        return []
    finite = [v for v in s.values if v is not None and math.isfinite(v)]
    rng = f"{_num(min(finite))} … {_num(max(finite))}" if finite else "no finite values"
    bad = sum(1 for v in s.values if v is None or not math.isfinite(v))
    where = f"steps {s.steps[0]}-{s.steps[-1]}" if "tokens" not in s.label else f"tokens {s.steps[0]:,}-{s.steps[-1]:,}"
    line = f"{sparkline([math.nan if v is None else v for v in s.values], 60)}  {s.label}, {where}, {rng}"
    return [f"  {' ' * 7}  " + _c(line, "bold", color) + (f"  ({bad} non-finite: ×)" if bad else "")]


def render_text(report: Report, color: bool = True, width: int = 100) -> str:
    """The report as text for a terminal (ANSI colours when color) or a log (color=False)."""
    f = report.facts
    out = [_c(f"pretrainlab doctor · {report.run_dir}", "bold", color)]
    head = [f"run {f.get('run_id') or '?'}", f.get("recipe") or "?", f"status {f.get('status')}" + (" (live)" if f.get("live") else "")]
    if f.get("last_step"):
        head.append(f"step {f['last_step']:,}")
    if f.get("tokens"):
        head.append(f"{int(f['tokens']):,} tokens")
    if f.get("val_bpb") is not None:
        head.append(f"val_bpb {f['val_bpb']:.4f}")
    if f.get("device"):
        head.append(f"{f['device']}" + (f" x{f['world_size']}" if (f.get("world_size") or 1) > 1 else ""))
    out += textwrap.wrap(" · ".join(head), width=width)
    if f.get("first_loss") is not None:
        out.append(f"loss {_num(f['first_loss'])} -> {_num(f['last_loss'])} nats/token"
                   + (f" · {_num(f['median_tokens_per_s'], ',.0f')} tokens/s" if f.get("median_tokens_per_s") else "")
                   + (f" · MFU {f['mfu']:.1%}" if isinstance(f.get("mfu"), float) else ""))
    out.append("")
    verdict = report.verdict
    ran = sum(c.ran for c in report.checks)
    if verdict == "healthy":
        out.append(_c(f"{_MARK['healthy']} healthy: no findings", "healthy", color) + f"  ({ran} checks ran)")
    elif verdict == "no_data":
        out.append(_c(f"{_MARK['no_data']} nothing to diagnose: no training step logged", "bold", color))
    else:
        counts = [f"{n} {sev}{'s' if n > 1 else ''}" for sev in ("error", "warning", "info")
                  if (n := sum(x.severity == sev for x in report.findings))]
        out.append(_c(f"{_MARK[verdict]} " + ", ".join(counts), verdict, color) + f"  ({ran} checks ran)")
    for fd in report.findings:
        out.append("")
        steps = "" if fd.steps is None else (f" · step {fd.steps[0]}" if fd.steps[0] == fd.steps[1] else f" · steps {fd.steps[0]}-{fd.steps[1]}")
        out.append(_c(f"{fd.severity.upper():<8}", fd.severity, color) + _c(fd.id, "bold", color) + f" · {fd.title}{steps}")
        out += [f"  {' ' * 7}  {line}" for line in textwrap.wrap(fd.summary, width=width - 11)]
        out += _spark(fd, color)
        out += _wrap("cause", fd.cause, width, color)
        out += _wrap("fix", fd.fix, width, color)
    if report.baseline:
        b = report.baseline
        out.append("")
        line = f"baseline {b.get('run_dir')}: "
        if b.get("delta_val_bpb") is not None:
            line += f"val_bpb {b['val_bpb']:.4f} vs {b['baseline_val_bpb']:.4f} ({b['delta_val_bpb']:+.4f}, margin {b['margin_bpb']:.4f})"
        if b.get("curve"):
            line += f"; train curve {b['curve']['median_delta_bpb']:+.3f} bits/byte at equal tokens"
        line += f" -> {b.get('verdict', 'not compared')}"
        out += textwrap.wrap(line, width=width)
        out += [f"  - {n}" for n in b.get("notes", [])]
    if report.data_quality:
        out.append("")
        out.append(_c("data quality", "bold", color))
        for note in report.data_quality:
            out += textwrap.wrap(note, width=width, initial_indent="  - ", subsequent_indent="    ")
    skipped = [c for c in report.checks if not c.ran]
    if skipped:
        out.append("")
        out += textwrap.wrap("not checked: " + "; ".join(f"{c.detector} ({c.note})" for c in skipped), width=width,
                             subsequent_indent="  ")
    return "\n".join(out) + "\n"
