"""Plots of a scaling analysis (analysis.analyse's dict): FILE.svg (one self-contained SVG),
FILE.html (the SVG panels and the fitted numbers on one page, nothing fetched) or FILE.png
(needs matplotlib, the `plot` extra).

Panels: loss against compute with the law's curve at each model size and its compute-optimal
frontier; measured against predicted loss; N_opt and D_opt against compute with their bootstrap
bands (and the IsoFLOP minima); loss against N at each IsoFLOP budget with its parabola.
"""

from __future__ import annotations

import html
import importlib.util
import math
from pathlib import Path

import numpy as np

from ..errors import UserError

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
PLOT_INSTALL = "pip install 'pretrainlab[plot]'  (matplotlib)"
SUFFIXES = (".svg", ".html", ".htm", ".png")
MAX_SIZE_CURVES = 6  # model sizes drawn as law curves in the loss-vs-compute panel


def check_plot_path(path: Path | str) -> Path:
    path = Path(path)
    if path.suffix.lower() not in SUFFIXES:
        raise UserError(f"--plot {path}: the file must end in .svg or .html (self-contained) or .png (needs matplotlib)")
    if not path.parent.exists():
        raise UserError(f"--plot {path}: directory {path.parent} does not exist; create it or choose another path")
    if path.suffix.lower() == ".png" and importlib.util.find_spec("matplotlib") is None:
        raise UserError(f"--plot {path.name}: PNG output needs matplotlib: {PLOT_INSTALL}; or write FILE.svg / FILE.html (no dependency)")
    return path


def write_plot(path: Path | str, result: dict) -> str:
    path = check_plot_path(path)
    panels = panel_data(result)
    suffix = path.suffix.lower()
    if suffix == ".png":
        _write_png(path, panels)
    elif suffix == ".svg":
        path.write_text(stack_svg([svg_panel(p) for p in panels]), encoding="utf-8")
    else:
        path.write_text(render_html(result, panels), encoding="utf-8")
    return str(path)


# ---- what to draw ----------------------------------------------------------------------------------


def _law(fit: dict, n, d):
    return fit["E"] + fit["A"] * np.power(n, -fit["alpha"]) + fit["B"] * np.power(d, -fit["beta"])


def panel_data(result: dict) -> list[dict]:
    """The panels as data: {title, xlabel, ylabel, xlog, ylog, series: [{label, color, kind, xy | band}]}.
    kind: "points", "line", "dashed" or "band" (xy: lower edge, then upper edge reversed)."""
    fit, pts = result["fit"], result["points"]
    loss_label = f"loss: {result['data']['loss']}"
    n = np.array([p["N"] for p in pts])
    sizes = np.unique(n)
    picks = sizes if len(sizes) <= MAX_SIZE_CURVES else np.unique(np.quantile(sizes, np.linspace(0, 1, MAX_SIZE_CURVES), method="nearest"))
    c_lo = min(p["C"] for p in pts)
    c_hi = max([p["C"] for p in pts] + [a["C"] for a in result["allocation"]])
    grid = np.geomspace(c_lo / 2, c_hi, 60)
    color_of = {float(s): PALETTE[i % len(PALETTE)] for i, s in enumerate(picks)}

    def nearest_color(v):
        return color_of[float(picks[np.argmin(np.abs(np.log(picks) - math.log(v)))])]

    series = [{"label": "runs", "color": "#555", "kind": "points",
               "xy": [(p["C"], p["loss"]) for p in pts], "colors": [nearest_color(p["N"]) for p in pts]}]
    for s in picks:
        series.append({"label": f"law at N={_si(s)}", "color": color_of[float(s)], "kind": "line",
                       "xy": [(c, float(_law(fit, s, c / (6 * s)))) for c in grid if c / (6 * s) > 1]})
    frontier = [(f["C"], f["loss"]) for f in result["frontier"] if f["loss"] is not None]
    if frontier:
        series.append({"label": "compute-optimal frontier", "color": "#000", "kind": "dashed", "xy": frontier})
    losses = [p["loss"] for p in pts] + [v for _, v in frontier]
    panels = [{"title": "loss vs compute C = 6ND (points: runs; lines: the fitted law at fixed N)", "xlabel": "C (FLOPs)",
               "ylabel": loss_label, "xlog": True, "xsci": True, "ylog": True, "series": series,
               "yrange": (min(losses), max(p["loss"] for p in pts))}]

    lo = min(min(p["loss"], p["predicted"]) for p in pts)
    hi = max(max(p["loss"], p["predicted"]) for p in pts)
    panels.append({"title": f"measured vs fitted loss (rms log-residual {fit['rms_log_residual']:.4f})", "xlabel": "fitted loss",
                   "ylabel": "measured loss", "xlog": True, "ylog": True,
                   "series": [{"label": "y = x", "color": "#999", "kind": "dashed", "xy": [(lo, lo), (hi, hi)]},
                              {"label": "runs", "color": "#1f77b4", "kind": "points", "xy": [(p["predicted"], p["loss"]) for p in pts]}]})

    opt = []
    for key, color, name in (("N_opt", PALETTE[0], "N_opt (parameters)"), ("D_opt", PALETTE[1], "D_opt (tokens)")):
        rows = [f for f in result["frontier"] if f[key] is not None]
        band = [f for f in rows if f.get(f"{key}_ci")]
        if band:
            opt.append({"label": f"{name}: {result['method']['level']:.0%} bootstrap band", "color": color, "kind": "band",
                        "xy": [(f["C"], f[f"{key}_ci"][0]) for f in band] + [(f["C"], f[f"{key}_ci"][1]) for f in reversed(band)]})
        opt.append({"label": f"{name}, Approach 3", "color": color, "kind": "line", "xy": [(f["C"], f[key]) for f in rows]})
    iso = result["isoflop"]
    used = [b for b in iso["budgets"] if b["used"]]
    if used:
        opt.append({"label": "IsoFLOP minima N_opt", "color": PALETTE[0], "kind": "points", "xy": [(b["C"], b["N_opt"]) for b in used]})
        opt.append({"label": "IsoFLOP minima D_opt", "color": PALETTE[1], "kind": "points", "xy": [(b["C"], b["D_opt"]) for b in used]})
    panels.append({"title": "compute-optimal allocation vs compute", "xlabel": "C (FLOPs)", "ylabel": "parameters / tokens",
                   "xlog": True, "xsci": True, "ylog": True, "series": opt})

    profiles = [b for b in iso["budgets"] if len(b["sizes"]) >= 3]
    if profiles and len(profiles) <= len(PALETTE):
        iso_series = []
        for j, b in enumerate(profiles):
            color = PALETTE[j % len(PALETTE)]
            members = [pts[k] for k in b["members"]]
            label = f"C={b['C']:.3g}" + ("" if b["used"] else " (no minimum inside the sizes)")
            iso_series.append({"label": label, "color": color, "kind": "points", "xy": [(p["N"], p["loss"]) for p in members]})
            if b["used"]:
                x = np.log([p["N"] for p in members])
                coef = np.polyfit(x, [p["loss"] for p in members], 2)
                xs = np.linspace(x.min(), x.max(), 30)
                iso_series.append({"label": "", "color": color, "kind": "line",
                                   "xy": [(math.exp(v), float(np.polyval(coef, v))) for v in xs]})
        panels.append({"title": "IsoFLOP profiles: loss vs N at each compute budget, with the fitted parabola where it has a minimum",
                       "xlabel": "N (parameters)", "ylabel": loss_label, "xlog": True, "ylog": False, "series": iso_series})
    return panels


# ---- SVG ---------------------------------------------------------------------------------------------


def _si(v: float) -> str:
    for div, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= div:
            return f"{v / div:.3g}{suffix}"
    return f"{v:.3g}"


def _ticks(lo: float, hi: float, log: bool) -> list[float]:
    if log:
        first, last = math.ceil(math.log10(lo)), math.floor(math.log10(hi))
        step = max(1, math.ceil((last - first + 1) / 8))
        ticks = [10.0 ** k for k in range(first, last + 1, step)]
        if len(ticks) >= 2:
            return ticks
        return _ticks(lo, hi, False)  # less than a decade: round linear steps, placed on the log axis
    step = 10 ** math.floor(math.log10((hi - lo) / 6)) if hi > lo else 1.0
    for m in (1, 2, 5, 10):
        if (hi - lo) / (step * m) <= 6:
            step *= m
            break
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step) + 1)]


def svg_panel(panel: dict, width: int = 820, height: int = 360) -> str:
    esc = html.escape
    legend, x, y = [], 70, 36
    for s in panel["series"]:
        if not s["label"]:
            continue
        w = 26 + 6.3 * len(s["label"])
        if x + w > width - 20 and x > 70:
            x, y = 70, y + 16
        dash = ' stroke-dasharray="5 3"' if s["kind"] == "dashed" else ""
        mark = (f'<circle cx="{x + 9}" cy="{y - 4}" r="3" fill="{s["color"]}"/>' if s["kind"] == "points" else
                f'<rect x="{x}" y="{y - 8}" width="18" height="8" fill="{s["color"]}" fill-opacity="0.2"/>' if s["kind"] == "band" else
                f'<line x1="{x}" y1="{y - 4}" x2="{x + 18}" y2="{y - 4}" stroke="{s["color"]}" stroke-width="2"{dash}/>')
        legend.append(f'{mark}<text x="{x + 22}" y="{y}">{esc(s["label"])}</text>')
        x += w + 12
    left, right, top, bottom = 76, 20, y + 12, 46
    height += top - 30
    pw, ph = width - left - right, height - top - bottom
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
           f'font-family="sans-serif" font-size="11">',
           f'<text x="{left}" y="18" font-size="13" font-weight="bold">{esc(panel["title"])}</text>', *legend]
    pts = [(a, b) for s in panel["series"] for a, b in s["xy"]
           if math.isfinite(a) and math.isfinite(b) and (a > 0 or not panel["xlog"]) and (b > 0 or not panel["ylog"])]
    if not pts:
        out.append(f'<text x="{left + 10}" y="{top + ph / 2}">no data</text></svg>')
        return "\n".join(out)
    fx = (lambda v: math.log10(v)) if panel["xlog"] else (lambda v: v)
    fy = (lambda v: math.log10(v)) if panel["ylog"] else (lambda v: v)
    x0, x1 = min(fx(p[0]) for p in pts), max(fx(p[0]) for p in pts)
    y0, y1 = (fy(v) for v in panel["yrange"]) if panel.get("yrange") else (min(fy(p[1]) for p in pts), max(fy(p[1]) for p in pts))
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1e-3)
    padx, pady = 0.03 * (x1 - x0), 0.05 * (y1 - y0)
    x0, x1, y0, y1 = x0 - padx, x1 + padx, y0 - pady, y1 + pady

    def sx(v):
        return left + (fx(v) - x0) / (x1 - x0) * pw

    def sy(v):
        return top + ph - (fy(v) - y0) / (y1 - y0) * ph

    clip = f"clip{abs(hash(panel['title'])) % 10**8}"
    out.append(f'<defs><clipPath id="{clip}"><rect x="{left}" y="{top}" width="{pw}" height="{ph}"/></clipPath></defs>'
               f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>')
    inv = (lambda v: 10 ** v) if panel["xlog"] else (lambda v: v)
    for t in _ticks(inv(x0), inv(x1), panel["xlog"]):
        label = f"{t:.0e}" if panel.get("xsci") else _si(t)
        out.append(f'<line x1="{sx(t):.1f}" y1="{top}" x2="{sx(t):.1f}" y2="{top + ph}" stroke="#eee"/>'
                   f'<text x="{sx(t):.1f}" y="{top + ph + 15}" text-anchor="middle">{label}</text>')
    inv = (lambda v: 10 ** v) if panel["ylog"] else (lambda v: v)
    for t in _ticks(inv(y0), inv(y1), panel["ylog"]):
        label = _si(t) if abs(t) >= 1e3 else f"{t:.4g}"
        out.append(f'<line x1="{left}" y1="{sy(t):.1f}" x2="{left + pw}" y2="{sy(t):.1f}" stroke="#eee"/>'
                   f'<text x="{left - 6}" y="{sy(t) + 4:.1f}" text-anchor="end">{label}</text>')
    out.append(f'<text x="{left + pw / 2}" y="{height - 8}" text-anchor="middle">{esc(panel["xlabel"])}'
               f'{" (log)" if panel["xlog"] else ""}</text>')
    out.append(f'<text transform="translate(14 {top + ph / 2}) rotate(-90)" text-anchor="middle">{esc(panel["ylabel"])}'
               f'{" (log)" if panel["ylog"] else ""}</text>')
    ok = lambda a, b: math.isfinite(a) and math.isfinite(b) and (a > 0 or not panel["xlog"]) and (b > 0 or not panel["ylog"])  # noqa: E731
    out.append(f'<g clip-path="url(#{clip})">')
    for s in panel["series"]:
        xy = [(a, b) for a, b in s["xy"] if ok(a, b)]
        if not xy:
            continue
        coords = " ".join(f"{sx(a):.1f},{sy(b):.1f}" for a, b in xy)
        if s["kind"] == "band":
            out.append(f'<polygon points="{coords}" fill="{s["color"]}" fill-opacity="0.15" stroke="none"/>')
        elif s["kind"] in ("line", "dashed"):
            dash = ' stroke-dasharray="5 3"' if s["kind"] == "dashed" else ""
            out.append(f'<polyline fill="none" stroke="{s["color"]}" stroke-width="1.6"{dash} points="{coords}"/>')
        else:
            colors = s.get("colors") or [s["color"]] * len(s["xy"])
            out += [f'<circle cx="{sx(a):.1f}" cy="{sy(b):.1f}" r="2.6" fill="{c}" fill-opacity="0.8"><title>{a:.4g}, {b:.4g}</title></circle>'
                    for (a, b), c in zip(s["xy"], colors) if ok(a, b)]
    out.append("</g></svg>")
    return "\n".join(out)


def stack_svg(panels: list[str]) -> str:
    """Several panel SVGs, one under the other, as one SVG document."""
    import re

    y, body, width = 0, [], 0
    for svg in panels:
        w, h = (int(v) for v in re.search(r'width="(\d+)" height="(\d+)"', svg).groups())
        body.append(svg.replace("<svg ", f'<svg x="0" y="{y}" ', 1))
        y, width = y + h + 10, max(width, w)
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{y}" viewBox="0 0 {width} {y}">\n'
            + "\n".join(body) + "\n</svg>\n")


def render_html(result: dict, panels: list[dict]) -> str:
    from .analysis import render_text

    esc = html.escape
    svgs = "\n".join(svg_panel(p) for p in panels)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>pretrainlab scaling fit</title>
<style>
body {{ font: 14px system-ui, sans-serif; margin: 24px; color: #222; }}
pre {{ background: #f6f6f6; padding: 12px; overflow-x: auto; font-size: 12.5px; }}
svg {{ display: block; margin: 8px 0 24px; }}
</style></head><body>
<h1>scaling fit</h1>
<pre>{esc(render_text(result))}</pre>
{svgs}
</body></html>
"""


# ---- PNG --------------------------------------------------------------------------------------------


def _write_png(path: Path, panels: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(panels), 1, figsize=(9, 4.2 * len(panels)))
    for ax, p in zip(np.atleast_1d(axes), panels):
        for s in p["series"]:
            if not s["xy"]:
                continue
            xs, ys = zip(*s["xy"])
            if s["kind"] == "band":
                ax.fill(xs, ys, color=s["color"], alpha=0.15, lw=0, label=s["label"] or None)
            elif s["kind"] == "points":
                ax.scatter(xs, ys, s=10, c=s.get("colors") or s["color"], label=s["label"] or None)
            else:
                ax.plot(xs, ys, color=s["color"], ls="--" if s["kind"] == "dashed" else "-", lw=1.4, label=s["label"] or None)
        ax.set_xscale("log" if p["xlog"] else "linear")
        ax.set_yscale("log" if p["ylog"] else "linear")
        ax.set_title(p["title"], fontsize=10)
        ax.set_xlabel(p["xlabel"])
        ax.set_ylabel(p["ylabel"])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
