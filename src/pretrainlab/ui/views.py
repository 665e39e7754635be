"""What the pages show, shaped from `pretrainlab.api` results: leaderboard rows, chart series,
the slot timeline, patch lines, and the text of effects and p-values. Pure functions over
plain dicts, so each is tested without a server.

Everything here that reaches a page goes through Jinja's autoescaping (or JSON, read by the
page's script as data), and `scrub` masks anything shaped like an API key: ledger text comes
from models and people, and a run's files from experiment code.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime

from jinja2.utils import htmlsafe_json_dumps
from markupsafe import Markup

from ..redaction import redact, scrub

VERDICT_COLORS = {"keep": "#2a9d4b", "discard": "#8f959e", "inconclusive": "#d9891a", None: "#3b6fd8"}
STATUS_COLORS = {"ok": "#3b6fd8", "timeout": "#3b6fd8", "diverged": "#d43d3d", "crashed": "#d43d3d", "preempted": "#d9891a",
                 "rejected": "#d43d3d", "unscored": "#8f959e", "unknown": "#8f959e", "live": "#2a9d4b"}

class PageJSON(Markup):
    """A page's data for its script (the `tojson` filter): redacted before it was encoded."""


def page_json(value) -> PageJSON:
    return PageJSON(htmlsafe_json_dumps(redact(value)))


def pretty_json(value) -> str:
    return json.dumps(redact(value), indent=2, sort_keys=True, default=str)


# ---- numbers and words ---------------------------------------------------------------------------


def num(v, spec: str = ".4f") -> str:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return ""
    return format(v, spec)


def short(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def when(ts: str | None) -> str:
    """An ISO UTC timestamp as 'YYYY-MM-DD HH:MM:SS' (UTC)."""
    return ts.replace("T", " ")[:19] if isinstance(ts, str) else ""


def parse_time(ts: str | None) -> float | None:
    try:
        return datetime.fromisoformat(ts).timestamp() if ts else None
    except (TypeError, ValueError):
        return None


def duration(seconds) -> str:
    if not isinstance(seconds, (int, float)):
        return ""
    seconds = float(seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def first_line(text: str | None) -> str:
    lines = (text or "").strip().splitlines()
    return lines[0] if lines else ""


def who(e: dict) -> str:
    """Who proposed an experiment: 'optuna', 'claude (claude-opus-5)', 'alice'."""
    return f"{e['proposer']} ({e['model_id']})" if e.get("model_id") else e.get("proposer") or ""


def decider(d: dict) -> str:
    return f"{d['decided_by']} ({d['model_id']})" if d.get("model_id") else d.get("decided_by") or ""


def effect(d: dict | None) -> str:
    """'-0.0343 [-0.0600, -0.0086]' (val_bpb, treatment - baseline: negative helps)."""
    rung = ((d or {}).get("evidence") or {}).get("rung") or {}
    if d and not isinstance(d.get("effect"), (int, float)) and isinstance(rung.get("diff"), (int, float)):
        return f"{rung['diff']:+.4f} at rung 1, stopped"  # a screen stopped early: how far it trailed its parent there
    if not d or not isinstance(d.get("effect"), (int, float)):
        return ""
    ci = f" [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}]" if isinstance(d.get("ci_low"), (int, float)) else ""
    return f"{d['effect']:+.4f}{ci}"


def p_value(d: dict | None) -> str:
    """The p-value a decision rests on, in words: a test's one-sided p against its level, or a
    screen's posterior probability that the change is better (not a p-value, so said so)."""
    ev = (d or {}).get("evidence") or {}
    cmp = ev.get("comparison") or ev.get("transfer")
    if isinstance(cmp, dict) and isinstance(cmp.get("p_improvement"), (int, float)):
        worse = cmp.get("verdict") == "regression"
        p = cmp["p_regression"] if worse else cmp["p_improvement"]
        level = f" vs α {cmp['alpha']:.3g}" if isinstance(cmp.get("alpha"), (int, float)) else ""
        return f"p(worse)={p:.3g}{level}" if worse else f"p(better)={p:.3g}{level}"
    if ev.get("stage") == "screen" and isinstance(ev.get("p_improvement"), (int, float)):
        return f"P(better)={ev['p_improvement']:.3g} (screen)"
    return ""


def change_summary(e: dict) -> str:
    change = e.get("change") or {}
    if change.get("diff"):
        return ", ".join(f"{k}: {short(a)} → {short(b)}" for k, (a, b) in change["diff"].items())
    if change.get("patch"):
        return "code patch"
    if change.get("data_recipe"):
        return "data recipe"
    return "(starting recipe)" if e.get("proposer") == "campaign" else ""


def patch_lines(patch: str) -> list[tuple[str, str]]:
    """(css class, line) for a unified diff: added, removed, hunk headers, file headers."""
    out = []
    for line in patch.splitlines():
        if line.startswith(("+++", "---", "diff ", "index ")):
            cls = "meta"
        elif line.startswith("@@"):
            cls = "hunk"
        elif line.startswith("+"):
            cls = "add"
        elif line.startswith("-"):
            cls = "del"
        else:
            cls = ""
        out.append((cls, line))
    return out


# ---- a campaign ------------------------------------------------------------------------------------


def stage(d: dict | None) -> str | None:
    return ((d or {}).get("evidence") or {}).get("stage")


def board_rows(record: dict, sort: str = "val_bpb") -> list[dict]:
    """The leaderboard: one row per experiment of a campaign record (api.campaign_record),
    best mean val_bpb first (unmeasured last), or newest first with sort="new"."""
    rows = []
    for e in record["experiments"]:
        d = e["decision"]
        status = e["status"]
        if status == "running" and e.get("planned_seeds"):
            status = f"running: {e['planned_seeds']} seed{'s' if e['planned_seeds'] > 1 else ''}"
        rows.append({"id": e["id"], "hypothesis": e["hypothesis"], "who": who(e), "proposer_type": e["proposer_type"],
                     "kind": e["kind"], "role": e.get("role"), "change": change_summary(e), "status": status, "runs": len(e["runs"]),
                     "mean": e["mean"], "effect": effect(d), "p": p_value(d), "verdict": d["verdict"] if d else None,
                     "decided_by": decider(d) if d else "", "stage": stage(d), "created_at": e["created_at"]})
    if sort == "new":
        return rows[::-1]
    return sorted(rows, key=lambda r: (r["mean"] is None, r["mean"] if r["mean"] is not None else 0.0))


def time_unit(span_s: float) -> tuple[str, float]:
    """The unit a time axis spanning span_s seconds reads best in, and its length in seconds."""
    return ("seconds", 1.0) if span_s < 120 else ("minutes", 60.0) if span_s < 3 * 3600 else ("hours", 3600.0)


def run_span(run: dict, now: float) -> tuple[float, float] | None:
    """(start, end) in epoch seconds of a registered run: created_at to finished_at, else its
    start plus the wall (or training) seconds its summary gives; with neither, an unfinished
    run ends now and a finished one where it began."""
    start = parse_time(run.get("created_at"))
    if start is None:
        return None
    end = parse_time(run.get("finished_at"))
    if end is None:
        summary = run.get("summary") or {}
        secs = next((summary.get(k) for k in ("wall_seconds", "seconds") if isinstance(summary.get(k), (int, float))), run.get("seconds"))
        end = start + secs if isinstance(secs, (int, float)) else now if run.get("status") == "unknown" else start
    return start, max(end, start)


def progress(record: dict, runs: list[dict], now: float) -> dict:
    """The progress chart's series: every finished run's val_bpb in finish order (x: run number,
    and time since the campaign began, in `time_unit`), coloured by its experiment's verdict;
    the best run so far; and the incumbent (the mean of the last kept experiment) as each keep
    was decided."""
    verdicts = {e["id"]: (e["decision"] or {}).get("verdict") for e in record["experiments"]}
    hypotheses = {e["id"]: e["hypothesis"] for e in record["experiments"]}
    t0 = parse_time(record["campaign"]["created_at"]) or now
    done = []
    for r in runs:
        span = run_span(r, now)
        if r["status"] == "ok" and isinstance(r.get("val_bpb"), (int, float)) and span:
            done.append((span[1], r))
    done.sort(key=lambda x: x[0])
    unit, per = time_unit((done[-1][0] if done else now) - t0)
    groups: dict = {}
    best, best_pts_i, best_pts_t = math.inf, [], []
    finish_times = []
    for i, (end, r) in enumerate(done, 1):
        elapsed = (end - t0) / per
        finish_times.append(end)
        v = verdicts.get(r["experiment_id"])
        g = groups.setdefault(v, {"i": [], "t": [], "labels": [], "links": []})
        g["i"].append([i, r["val_bpb"]])
        g["t"].append([elapsed, r["val_bpb"]])
        g["labels"].append(scrub(f"{r['run_id']} · {hypotheses.get(r['experiment_id'], '')[:80]} · seed {r['seed']}"))
        g["links"].append(f"/runs/{r['run_id']}")
        if r["val_bpb"] < best:
            best = r["val_bpb"]
        best_pts_i.append([i, best])
        best_pts_t.append([elapsed, best])
    means = {e["id"]: e["mean"] for e in record["experiments"]}
    incumbent_i, incumbent_t = [], []
    keeps = sorted((d for e in record["experiments"] for d in e["decisions"] if d["verdict"] == "keep" and stage(d) != "claim"),
                   key=lambda d: d["created_at"])
    for d in keeps:
        when_s = parse_time(d["created_at"]) or now
        mean = means.get(d["experiment_id"])
        if mean is None:
            continue
        index = sum(1 for t in finish_times if t <= when_s)
        incumbent_i.append([max(index, 1), mean])
        incumbent_t.append([(when_s - t0) / per, mean])
    if incumbent_i:  # carry the incumbent to the end of the chart
        incumbent_i.append([max(len(done), incumbent_i[-1][0]), incumbent_i[-1][1]])
        incumbent_t.append([max(((done[-1][0] if done else now) - t0) / per, incumbent_t[-1][0]), incumbent_t[-1][1]])
    names = {"keep": "runs of kept experiments", "discard": "runs of discarded experiments",
             "inconclusive": "runs of inconclusive experiments", None: "runs not decided yet"}
    series_i, series_t = [], []
    for v, g in groups.items():
        base = {"name": names.get(v, str(v)), "color": VERDICT_COLORS.get(v, "#3b6fd8"), "kind": "points", "labels": g["labels"],
                "links": g["links"]}
        series_i.append({**base, "points": g["i"]})
        series_t.append({**base, "points": g["t"]})
    for name, color, pi, pt, dash in (("best run so far", "#222", best_pts_i, best_pts_t, "4 3"),
                                      ("incumbent (mean of its seeds)", "#7b3fc4", incumbent_i, incumbent_t, None)):
        if pi:
            series_i.append({"name": name, "color": color, "kind": "step", "points": pi, "dash": dash})
            series_t.append({"name": name, "color": color, "kind": "step", "points": pt, "dash": dash})
    return {"by_index": series_i, "by_time": series_t, "time_unit": unit, "num_runs": len(done)}


def timeline(record: dict, runs: list[dict], live: list[dict], now: float) -> dict:
    """Runs as bars over wall time (seconds, minutes or hours since the first started, by the
    span), packed into lanes: a run takes the lowest lane free when it starts, which recovers
    the campaign's slots."""
    verdicts = {e["id"]: (e["decision"] or {}).get("verdict") for e in record["experiments"]}
    items = []
    for r in runs:
        span = run_span(r, now)
        if span:
            items.append({"start": span[0], "end": span[1], "label": f"{r['experiment_id'] or r['run_id']}-s{r['seed']}",
                          "status": r["status"], "verdict": verdicts.get(r["experiment_id"]), "href": f"/runs/{r['run_id']}"})
    for r in live:
        start = parse_time(r["started_at"])
        if start is not None:
            items.append({"start": start, "end": now, "label": r["key"], "status": "live", "verdict": None,
                          "href": f"/campaigns/{record['campaign']['id']}/live/{r['key']}"})
    if not items:
        return {"bars": [], "lanes": 0, "unit": "minutes"}
    items.sort(key=lambda x: (x["start"], x["end"]))
    t0 = items[0]["start"]
    unit, per = time_unit(max(it["end"] for it in items) - t0)
    lane_ends: list[float] = []
    bars = []
    for it in items:
        lane = next((i for i, end in enumerate(lane_ends) if end <= it["start"] + 0.5), None)  # 0.5 s: a slot's hand-over
        if lane is None:
            lane = len(lane_ends)
            lane_ends.append(it["end"])
        else:
            lane_ends[lane] = it["end"]
        color = STATUS_COLORS["live"] if it["status"] == "live" else \
            STATUS_COLORS.get(it["status"], "#8f959e") if it["status"] != "ok" else VERDICT_COLORS.get(it["verdict"], "#3b6fd8")
        bars.append({"lane": lane, "x0": (it["start"] - t0) / per, "x1": (it["end"] - t0) / per, "label": it["label"], "color": color,
                     "status": it["status"], "href": it["href"]})
    return {"bars": bars, "lanes": len(lane_ends), "unit": unit, "start": datetime.fromtimestamp(t0, UTC).isoformat(timespec="seconds")}


def spend(config: dict) -> dict | None:
    """The LLM strategy's spend as the campaign records it (config["llm_spend"]), with a token total."""
    s = (config or {}).get("llm_spend")
    if not isinstance(s, dict):
        return None
    tokens = sum(s.get(k) or 0 for k in ("input_tokens", "output_tokens", "cache_write_tokens", "cache_read_tokens"))
    return {**s, "total_tokens": tokens}


def noise(record: dict) -> dict | None:
    """The baseline's seed noise (std of val_bpb over its seeds), from its decision's evidence."""
    for e in record["experiments"]:
        for d in e["decisions"]:
            nf = (d.get("evidence") or {}).get("noise_floor")
            if isinstance(nf, dict) and isinstance(nf.get("std"), (int, float)):
                return nf
    return None
