"""Curve overlays for `runs compare --plot`: training loss vs tokens (every logged step, from
each run's metrics.jsonl) and val_bpb at evals (from the ledger's eval index).

FILE.html is one self-contained page: inline SVG and CSS, no script, nothing fetched, so it
opens offline and can be attached to a report. FILE.png needs matplotlib (extra `plot`).
"""

from __future__ import annotations

import html
import math
from datetime import UTC, datetime
from pathlib import Path

from .. import rundir
from ..errors import UserError

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
PLOT_INSTALL = "pip install 'pretrainlab[plot]'  (matplotlib)"


def run_curves(run: dict) -> dict:
    """{"loss": [(tokens, loss)], "evals": [(tokens, val_bpb)], "missing": why the loss curve is absent}."""
    evals = [(e["tokens"], e["val_bpb"]) for e in run.get("evals") or [] if _finite(e.get("tokens")) and _finite(e.get("val_bpb"))]
    path = Path((run.get("series") or {}).get("metrics_path") or Path(run["run_dir"]) / rundir.METRICS)
    if not path.is_file():
        return {"loss": [], "evals": evals, "missing": f"{path} not found on this machine"}
    loss = [(r["tokens"], r["loss"]) for r in rundir.iter_metrics(path)
            if r.get("type") == "train" and _finite(r.get("tokens")) and _finite(r.get("loss"))]
    return {"loss": loss, "evals": evals, "missing": None}


def write_plot(path: Path, comparison: dict, runs: list[dict]) -> dict:
    """Write FILE.html or FILE.png; returns {"path", "missing": {run_id: reason}}."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".html", ".htm", ".png"):
        raise UserError(f"--plot {path}: the file must end in .html (self-contained SVG) or .png (needs matplotlib)")
    if not path.parent.exists():
        raise UserError(f"--plot {path}: directory {path.parent} does not exist; create it or choose another path")
    curves = [run_curves(run) for run in runs]
    labels = [f"{run['run_id']} {run.get('recipe_name') or ''}".strip() for run in runs]
    if suffix == ".png":
        _write_png(path, labels, curves)
    else:
        path.write_text(render_html(comparison, labels, curves))
    return {"path": str(path), "missing": {run["run_id"]: c["missing"] for run, c in zip(runs, curves) if c["missing"]}}


# ---- HTML + SVG ---------------------------------------------------------------------------------


def render_html(comparison: dict, labels: list[str], curves: list[dict]) -> str:
    colors = [PALETTE[i % len(PALETTE)] for i in range(len(labels))]
    loss = svg_chart("training loss vs tokens", "tokens", "loss (nats/token)",
                     [(lab, col, c["loss"], False) for lab, col, c in zip(labels, colors, curves)])
    evals = svg_chart("val_bpb at evals vs tokens", "tokens", "val_bpb",
                      [(lab, col, c["evals"], True) for lab, col, c in zip(labels, colors, curves)])
    runs = comparison["runs"]
    esc = html.escape
    legend = "".join(
        f"<tr><td><span class='sw' style='background:{col}'></span></td><td>{esc(r['run_id'])}</td>"
        f"<td>{esc(str(r.get('recipe_name')))}</td>"
        f"<td>{esc(str(r.get('status')))}</td><td>{esc(str(r.get('run_dir')))}</td>"
        f"<td>{esc(c['missing'] or '')}</td></tr>" for r, col, c in zip(runs, colors, curves))
    head = "".join(f"<th>{esc(r['run_id'])}</th>" for r in runs)
    metric_rows = "".join(
        f"<tr><td>{esc(m['metric'])}</td>" + "".join(f"<td>{esc(format_cell(m, i))}</td>" for i in range(len(runs))) + "</tr>"
        for m in comparison["metrics"])
    diff_rows = "".join(f"<tr><td>{esc(k)}</td>" + "".join(f"<td>{esc(str(v))}</td>" for v in vals) + "</tr>"
                        for k, vals in comparison["recipe_diff"].items())
    diff_rows = diff_rows or f"<tr><td colspan='{len(runs) + 1}'>identical recipes</td></tr>"
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>pretrainlab runs compare</title>
<style>
body {{ font: 14px system-ui, sans-serif; margin: 24px; color: #222; }}
table {{ border-collapse: collapse; margin: 8px 0 20px; }}
td, th {{ border-bottom: 1px solid #ddd; padding: 3px 10px; text-align: left; font-variant-numeric: tabular-nums; }}
.sw {{ display: inline-block; width: 14px; height: 4px; vertical-align: middle; }}
svg {{ display: block; margin: 8px 0 24px; }}
</style></head><body>
<h1>runs compare</h1>
<p>{len(runs)} runs; deltas are against the first run. Generated {stamp} by pretrainlab.</p>
<table><tr><th></th><th>run</th><th>recipe</th><th>status</th><th>run dir</th><th></th></tr>{legend}</table>
{loss}
{evals}
<h2>metrics</h2>
<table><tr><th>metric</th>{head}</tr>{metric_rows}</table>
<h2>recipe differences</h2>
<table><tr><th>key</th>{head}</tr>{diff_rows}</table>
</body></html>
"""


def format_cell(metric: dict, i: int) -> str:
    """A metric value, with its delta against the first run for the others."""
    v = metric["values"][i]
    text = format_value(metric["key"], v)
    d = metric["deltas"][i]
    if i and d is not None:
        pct = metric["delta_pcts"][i]
        text += f" ({format_value(metric['key'], d, signed=True)}{f', {pct:+.1f}%' if pct is not None else ''})"
    return text


def format_value(key: str, v, signed: bool = False) -> str:
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    sign = "+" if signed else ""
    if key.startswith("val_bpb"):
        return f"{v:{sign}.4f}"
    if key == "mfu":
        return f"{v * 100:{sign}.2f}%" if not signed else f"{v * 100:+.2f}pp"
    if key in ("seconds", "peak_mem_mb"):
        return f"{v:{sign},.1f}"
    return f"{v:{sign},.0f}"


def svg_chart(title: str, xlabel: str, ylabel: str, series: list[tuple[str, str, list, bool]], width: int = 820, height: int = 340) -> str:
    """A line chart as inline SVG. series: (label, color, [(x, y)], markers), markers True
    (line and points), False (line only) or "only" (points only: a scatter). The y axis is
    capped at the highest starting value, so one diverging run does not flatten the rest."""
    esc = html.escape
    # the legend: rows of (swatch, label) under the title, so the SVG also reads on its own
    legend, x, y = [], 70, 36
    for label, color, _, _ in series:
        w = 26 + 6.5 * len(label)
        if x + w > width - 20 and x > 70:
            x, y = 70, y + 16
        legend.append(f'<line x1="{x}" y1="{y - 4}" x2="{x + 18}" y2="{y - 4}" stroke="{color}" stroke-width="2.5"/>'
                      f'<text x="{x + 22}" y="{y}">{esc(label)}</text>')
        x += w + 12
    left, right, top, bottom = 70, 20, y + 12, 46
    height += top - 30
    pw, ph = width - left - right, height - top - bottom
    pts = [p for _, _, s, _ in series for p in s]
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-size="11">',
           f'<text x="{left}" y="18" font-size="13" font-weight="bold">{esc(title)}</text>', *legend]
    if not pts:
        out.append(f'<text x="{left + 10}" y="{top + ph / 2}">no data</text></svg>')
        return "\n".join(out)
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    x0 = min(0, x0)  # tokens: start the axis at zero
    y0 = min(p[1] for p in pts)
    y1 = min(max(p[1] for p in pts), max(s[0][1] for _, _, s, _ in series if s))
    if x1 == x0:
        x1 = x0 + 1
    if y1 <= y0:
        y1 = y0 + 1e-6
    pad = 0.04 * (y1 - y0)
    y0, y1 = y0 - pad, y1 + pad

    def sx(x):
        return left + (x - x0) / (x1 - x0) * pw

    def sy(y):
        return top + ph - (min(y, y1) - y0) / (y1 - y0) * ph

    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>')
    for t in nice_ticks(x0, x1):
        out.append(f'<line x1="{sx(t):.1f}" y1="{top}" x2="{sx(t):.1f}" y2="{top + ph}" stroke="#eee"/>'
                   f'<text x="{sx(t):.1f}" y="{top + ph + 15}" text-anchor="middle">{_si(t)}</text>')
    for t in nice_ticks(y0, y1):
        out.append(f'<line x1="{left}" y1="{sy(t):.1f}" x2="{left + pw}" y2="{sy(t):.1f}" stroke="#eee"/>'
                   f'<text x="{left - 6}" y="{sy(t) + 4:.1f}" text-anchor="end">{t:.4g}</text>')
    out.append(f'<text x="{left + pw / 2}" y="{height - 8}" text-anchor="middle">{esc(xlabel)}</text>')
    out.append(f'<text transform="translate(14 {top + ph / 2}) rotate(-90)" text-anchor="middle">{esc(ylabel)}</text>')
    for label, color, s, markers in series:
        if not s:
            continue
        coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in s)
        if markers != "only":
            out.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.3" points="{coords}"><title>{esc(label)}</title></polyline>')
        if markers:
            out += [f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.5" fill="{color}">'
                    f'<title>{esc(label)}: {y:.4f} at {x:,} tokens</title></circle>' for x, y in s]
    out.append("</svg>")
    return "\n".join(out)


def nice_ticks(lo: float, hi: float, n: int = 6) -> list[float]:
    """About n round tick values covering [lo, hi]."""
    step = 10 ** math.floor(math.log10((hi - lo) / n))
    for m in (1, 2, 5, 10):
        if (hi - lo) / (step * m) <= n:
            step *= m
            break
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step) + 1)]


def _si(v: float) -> str:
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= div:
            return f"{v / div:.4g}{suffix}"
    return f"{v:.4g}"


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# ---- PNG ----------------------------------------------------------------------------------------


def _write_png(path: Path, labels: list[str], curves: list[dict]) -> None:
    try:
        import matplotlib
    except ImportError:
        raise UserError(f"--plot {path.name}: PNG output needs matplotlib: {PLOT_INSTALL}; or write FILE.html (no dependency)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_eval) = plt.subplots(2, 1, figsize=(9, 7.5))
    for i, (label, c) in enumerate(zip(labels, curves)):
        color = PALETTE[i % len(PALETTE)]
        if c["loss"]:
            ax_loss.plot(*zip(*c["loss"]), color=color, lw=1.0, label=label)
        if c["evals"]:
            ax_eval.plot(*zip(*c["evals"]), color=color, lw=1.2, marker="o", ms=3, label=label)
    starts = [c["loss"][0][1] for c in curves if c["loss"]]
    if starts:
        ax_loss.set_ylim(top=max(starts) * 1.03)
    panels = ((ax_loss, "training loss vs tokens", "loss (nats/token)"), (ax_eval, "val_bpb at evals vs tokens", "val_bpb"))
    for ax, title, ylabel in panels:
        ax.set_title(title)
        ax.set_xlabel("tokens")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
