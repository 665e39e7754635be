"""A mixture campaign's report: one self-contained HTML page (inline SVG and CSS, no script,
nothing fetched), written by `pretrainlab report CAMPAIGN -o mixture.html` (research/report.py
hands mixture campaigns here).

Plots: predicted vs measured (every proxy's held-out prediction, and the confirmation arms'
predictions against their fresh-seed means), and the recommended shares with their bootstrap
intervals beside the natural and the uniform mixture. Tables: the claims (target and per
domain), each arm's runs, the candidate models' held-out errors, the proxies.
"""

from __future__ import annotations

import html
from pathlib import Path

from ..ledger.plot import nice_ticks
from .mixture_campaign import ROLES, summary
from .report import campaign_record, research_log

COLORS = {"proxy": "#9e9e9e", "natural": "#1f77b4", "uniform": "#ff7f0e", "recommended": "#2ca02c"}
esc = html.escape


def _frame(title: str, width: int, height: int, legend: list[tuple[str, str]]) -> tuple[list[str], int]:
    """The SVG's opening, title and legend row; returns (parts, top of the plot area)."""
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-size="11">',
           f'<text x="70" y="18" font-size="13" font-weight="bold">{esc(title)}</text>']
    x, y = 70, 28
    for label, color in legend:  # rows of (swatch, label), wrapped at the width
        w = 20 + 6.5 * len(label)
        if x + w > width - 10 and x > 70:
            x, y = 70, y + 16
        out.append(f'<rect x="{x}" y="{y}" width="10" height="10" fill="{color}"/><text x="{x + 14}" y="{y + 9}">{esc(label)}</text>')
        x += w + 10
    return out, y + 22


def svg_scatter(title: str, xlabel: str, ylabel: str, groups: list[tuple[str, str, list[tuple[float, float, str]]]],
                width: int = 560, height: int = 460) -> str:
    """Points (x, y, tooltip) by group, on equal axes with the y = x line: predicted vs measured."""
    pts = [(x, y) for _, _, g in groups for x, y, _ in g]
    out, top = _frame(title, width, height, [(label, color) for label, color, g in groups if g])
    if not pts:
        return "\n".join(out + [f'<text x="80" y="{top + 40}">no data yet</text></svg>'])
    lo, hi = min(min(p) for p in pts), max(max(p) for p in pts)
    pad = 0.06 * (hi - lo or 1e-3)
    lo, hi = lo - pad, hi + pad
    left, bottom, right = 70, 46, 20
    side = min(width - left - right, height - top - bottom)
    sx = lambda v: left + (v - lo) / (hi - lo) * side
    sy = lambda v: top + side - (v - lo) / (hi - lo) * side
    out.append(f'<rect x="{left}" y="{top}" width="{side}" height="{side}" fill="none" stroke="#999"/>')
    for t in nice_ticks(lo, hi, 5):
        out.append(f'<line x1="{sx(t):.1f}" y1="{top}" x2="{sx(t):.1f}" y2="{top + side}" stroke="#eee"/>'
                   f'<text x="{sx(t):.1f}" y="{top + side + 15}" text-anchor="middle">{t:.4g}</text>'
                   f'<line x1="{left}" y1="{sy(t):.1f}" x2="{left + side}" y2="{sy(t):.1f}" stroke="#eee"/>'
                   f'<text x="{left - 6}" y="{sy(t) + 4:.1f}" text-anchor="end">{t:.4g}</text>')
    out.append(f'<line x1="{sx(lo):.1f}" y1="{sy(lo):.1f}" x2="{sx(hi):.1f}" y2="{sy(hi):.1f}" stroke="#555" stroke-dasharray="4 3">'
               "<title>y = x: a perfect prediction</title></line>")
    out.append(f'<text x="{left + side / 2}" y="{top + side + 34}" text-anchor="middle">{esc(xlabel)}</text>')
    out.append(f'<text transform="translate(14 {top + side / 2}) rotate(-90)" text-anchor="middle">{esc(ylabel)}</text>')
    for label, color, g in groups:
        r = 3 if label.startswith("proxies") else 6  # the arms stand out
        out += [f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="{r}" fill="{color}" fill-opacity="0.85"><title>{esc(tip)}</title></circle>'
                for x, y, tip in g]
    out.append("</svg>")
    return "\n".join(out)


def svg_bars(title: str, categories: list[str], series: list[tuple[str, str, list[float], list | None, list | None]],
             width: int = 620, height: int = 300) -> str:
    """Grouped bars (one group per category) with optional low/high whiskers."""
    out, top = _frame(title, width, height, [(label, color) for label, color, *_ in series])
    left, bottom, right = 70, 40, 20
    pw, ph = width - left - right, height - top - bottom
    ymax = max([1e-9] + [v for *_, vals, _, hi in series for v in (hi or vals)]) * 1.08
    sy = lambda v: top + ph - v / ymax * ph
    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>')
    for t in nice_ticks(0, ymax, 5):
        out.append(f'<line x1="{left}" y1="{sy(t):.1f}" x2="{left + pw}" y2="{sy(t):.1f}" stroke="#eee"/>'
                   f'<text x="{left - 6}" y="{sy(t) + 4:.1f}" text-anchor="end">{t:.2g}</text>')
    group_w = pw / max(1, len(categories))
    bar_w = group_w * 0.8 / max(1, len(series))
    for i, cat in enumerate(categories):
        x0 = left + i * group_w + group_w * 0.1
        out.append(f'<text x="{left + (i + 0.5) * group_w:.1f}" y="{top + ph + 16}" text-anchor="middle">{esc(cat)}</text>')
        for j, (label, color, vals, lows, highs) in enumerate(series):
            x, v = x0 + j * bar_w, vals[i]
            tip = f"{label}, {cat}: {v:.3f}" + (f" (95% {lows[i]:.3f} .. {highs[i]:.3f})" if lows and highs else "")
            out.append(f'<rect x="{x:.1f}" y="{sy(v):.1f}" width="{bar_w * 0.9:.1f}" height="{top + ph - sy(v):.1f}" fill="{color}">'
                       f"<title>{esc(tip)}</title></rect>")
            if lows and highs:
                cx = x + bar_w * 0.45
                out.append(f'<line x1="{cx:.1f}" y1="{sy(lows[i]):.1f}" x2="{cx:.1f}" y2="{sy(highs[i]):.1f}" stroke="#222" '
                           'stroke-width="1.5"/>'
                           f'<line x1="{cx - 4:.1f}" y1="{sy(lows[i]):.1f}" x2="{cx + 4:.1f}" y2="{sy(lows[i]):.1f}" stroke="#222"/>'
                           f'<line x1="{cx - 4:.1f}" y1="{sy(highs[i]):.1f}" x2="{cx + 4:.1f}" y2="{sy(highs[i]):.1f}" stroke="#222"/>')
    out.append("</svg>")
    return "\n".join(out)


def _num(v, spec: str = ".4f") -> str:
    return "" if v is None else format(v, spec)


def _ci(effect, ci) -> str:
    if effect is None:
        return ""
    return f"{effect:+.4f}" + (f" [{ci[0]:+.4f}, {ci[1]:+.4f}]" if ci and ci[0] is not None else "")


def render(s: dict, log: str) -> str:
    domains, target = s["domains"], s["target"]
    out = ["<!doctype html><meta charset='utf-8'><title>pretrainlab mixture report</title>",
           "<style>body{font:14px system-ui,sans-serif;margin:24px;max-width:1200px}table{border-collapse:collapse;margin:8px 0}"
           "td,th{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}th{background:#f5f5f5}"
           ".keep{color:#2ca02c;font-weight:bold}.discard{color:#d62728}.mono{font-family:monospace}"
           ".plots{display:flex;flex-wrap:wrap;gap:16px}</style>",
           f"<h1>{esc(s['name'])}</h1><p>Mixture campaign <span class=mono>{esc(s['campaign'])}</span> — target: <b>{esc(target)}</b> "
           f"(lower is better) — status {esc(s['status'])} — {s['runs']} of {s['planned_runs']} planned runs "
           f"({len(s['proxies'])} proxies at {esc(s['config']['run_budget'])}, confirmation on {s['config']['confirm_seeds']} fresh seeds"
           + (f", transfer rung {esc(', '.join(s['config']['transfer']))}" if s["config"]["transfer"] else "") + ").</p>"]
    rec, design = s["recommended"], s["design"]
    if rec:
        shares = ", ".join(f"{esc(d)} <b>{rec['weights'][d]:.3f}</b>"
                           + (f" [{rec['low'][d]:.3f}, {rec['high'][d]:.3f}]" if rec.get("low") else "") for d in domains)
        out.append(f"<p>Recommended mixture (95% bootstrap intervals over the proxies): {shares}. Natural: "
                   + ", ".join(f"{esc(d)} {s['natural'][d]:.3f}" for d in domains) + ".</p>")
    else:
        out.append("<p>No recommendation yet: the proxies are not all in, or too few of them scored (see the notes).</p>")
    for c in s["claims"]:
        where = "at the campaign's scale" if c["scale"] == "campaign" else "at the transfer rung"
        predicted = f"; the model predicted {c['predicted_effect']:+.4f}" if c.get("predicted_effect") is not None else ""
        out.append(f"<p>Recommended vs <b>{esc(c['against'])}</b> {where}: {esc(target)} {_ci(c['effect'], c['ci'])} "
                   f"<span class={esc(c['verdict'])}>{esc(c['verdict'])}</span>{esc(predicted)}.</p>")
    # plots
    proxies = [(p["loo_prediction"], p["value"], f"{p['experiment']}: " + ", ".join(f"{d} {p['weights'][d]:.2f}" for d in domains)
                + f" — measured {p['value']:.4f}, held-out prediction {p['loo_prediction']:.4f}")
               for p in s["proxies"] if p["value"] is not None and p["loo_prediction"] is not None]
    groups = [("proxies (held-out prediction, seed 0)", COLORS["proxy"], proxies)]
    for role in ROLES:
        arm = (s["arms"].get("campaign") or {}).get(role)
        if arm and arm["predicted"] is not None and arm["mean"] is not None:
            groups.append((f"{role} (fresh seeds)", COLORS[role],
                           [(arm["predicted"], arm["mean"], f"{role}: predicted {arm['predicted']:.4f}, measured {arm['mean']:.4f}")]))
    bars = [(role, COLORS[role], [arm["weights"][d] for d in domains], None, None)
            for role in ("natural", "uniform") if (arm := (s["arms"].get("campaign") or {}).get(role))]
    if rec:
        low, high = rec.get("low"), rec.get("high")
        bars.append(("recommended", COLORS["recommended"], [rec["weights"][d] for d in domains],
                     [low[d] for d in domains] if low else None, [high[d] for d in domains] if high else None))
    out.append("<div class=plots>")
    out.append(svg_scatter(f"predicted vs measured {target}", f"predicted {target}", f"measured {target}", groups))
    out.append(svg_bars("domain shares (recommended: 95% bootstrap interval)", domains, bars))
    out.append("</div>")
    out.append("<p>Proxies ran once each on seed 0 and are plotted at their leave-one-out prediction (the model fitted without "
               "them); the confirmation arms ran on other seeds, so a shared seed offset moves them off the line together: "
               "compare the arms' differences, which the claims test.</p>")
    # claims per domain
    if s["claims"]:
        out.append("<h2>Claims</h2><table><tr><th>against</th><th>scale</th><th>" + esc(target) + " effect [95% CI]</th><th>verdict</th>"
                   + "".join(f"<th>{esc(d)} val_bpb</th>" for d in domains) + "</tr>")
        for c in s["claims"]:
            cells = "".join(f"<td>{_ci(c['domains'][d]['effect'], c['domains'][d]['ci'])} ({esc(c['domains'][d]['verdict'])})</td>"
                            if d in c["domains"] else "<td></td>" for d in domains)
            out.append(f"<tr><td>{esc(c['against'])}</td><td>{esc(c['scale'])}</td><td>{_ci(c['effect'], c['ci'])}</td>"
                       f"<td class={esc(c['verdict'])}>{esc(c['verdict'])}</td>{cells}</tr>")
        out.append("</table><p>Effects are recommended minus reference (negative: the recommendation is better), pooled paired "
                   "t-tests over the confirmation seeds; the per-domain columns show what the mixture trades between domains.</p>")
    # arms
    if s["arms"]:
        out.append("<h2>Confirmation arms</h2><table><tr><th>scale</th><th>arm</th><th>weights</th><th>runs (seed: value)</th>"
                   f"<th>mean {esc(target)}</th><th>predicted</th>" + "".join(f"<th>{esc(d)}</th>" for d in domains) + "</tr>")
        for scale, arms in s["arms"].items():
            for role, arm in arms.items():
                weights = ", ".join(f"{d} {arm['weights'][d]:.3f}" for d in domains)
                runs = ", ".join(f"{seed}: {v:.4f}" for seed, v in arm["values"].items())
                out.append(f"<tr><td>{esc(scale)}</td><td>{esc(role)}</td><td>{esc(weights)}</td><td>{esc(runs)}</td>"
                           f"<td>{_num(arm['mean'])}</td><td>{_num(arm['predicted'])}</td>"
                           + "".join(f"<td>{_num(arm['domains'][d])}</td>" for d in domains) + "</tr>")
        out.append("</table>")
    # the fit
    if design:
        out.append(f"<h2>The regression</h2><p>Chosen: <b>{esc(design['model'])}</b>, by leave-one-out RMSE over the proxies. "
                   f"Search: the mean of the {s['config']['top']} best-predicted of {design.get('pool_searched')} mixtures drawn like the "
                   "proxies and no farther from the nearest proxy than proxies are from each other (the trust region). "
                   f"Bootstrap ({design['num_resamples']} resamples of the proxies, the chosen model refitted on each): predicted "
                   f"{_num(design['predicted']['recommended'])} (95% {_num(design['predicted_interval'][0])} .. "
                   f"{_num(design['predicted_interval'][1])}); "
                   + ", ".join(f"P(recommended predicted below {k}) = {v:.2f}" for k, v in (design.get("p_better") or {}).items()) + ".</p>")
        out.append("<table><tr><th>model</th><th>leave-one-out RMSE</th><th>Spearman (held-out vs measured)</th></tr>")
        for i, c in enumerate(design["candidates"]):
            out.append(f"<tr><td>{esc(c['model'])}{' (chosen)' if i == 0 else ''}</td><td>{c['loo_rmse']:.4f}</td>"
                       f"<td>{_num(c['loo_spearman'], '.3f')}</td></tr>")
        out.append("</table>")
    out.append("<h2>Proxies</h2><table><tr><th>experiment</th>" + "".join(f"<th>{esc(d)}</th>" for d in domains)
               + f"<th>measured {esc(target)}</th><th>held-out prediction</th><th>status</th></tr>")
    for p in s["proxies"]:
        out.append(f"<tr><td class=mono>{esc(p['experiment'])}</td>" + "".join(f"<td>{p['weights'][d]:.3f}</td>" for d in domains)
                   + f"<td>{_num(p['value'])}</td><td>{_num(p['loo_prediction'])}</td><td>{esc(p['status'])}</td></tr>")
    out.append("</table>")
    out.append(f"<h2>Research log</h2><pre>{esc(log)}</pre>")
    return "\n".join(out)


def write_report(ledger, campaign_id: str, path: Path) -> Path:
    path = Path(path)
    path.write_text(render(summary(ledger, campaign_id), research_log(campaign_record(ledger, campaign_id))))
    return path
