"""Reading a derived corpus's record: why a document is (not) in training, and the build report.

    why("corpora/filtered", "Lib/json/decoder.py")   # by path, or a sha256 prefix
    build_report(corpus)                                # per-step counts, histograms, clusters
    report_html(info)                                   # one self-contained page, inline SVG

fates.jsonl holds one JSON line per input document, in input order. JSON lines rather than
SQLite: written in one streaming pass, readable with grep and jq, and a linear scan answers
`data why` in well under a second for the corpora this lab builds.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

from ..errors import UserError
from .build import FATES_FILE, REPORT_FILE

_EXPLAIN = {
    "kept": "in the training set, unchanged",
    "rewritten": "in the training set, rewritten",
    "removed": "not in the training set",
    "held_out": "not in the training set: it is held out",
    "dropped": "not in the corpus: dropped before splitting (empty, or an exact copy of an earlier document)",
}


def iter_fates(corpus_dir: str | Path):
    path = Path(corpus_dir) / FATES_FILE
    if not path.is_file():
        raise UserError(f"{corpus_dir} has no {FATES_FILE}: it is not a derived corpus; build one with `pretrainlab data build RECIPE`")
    damaged = f"{path} is damaged ({{}}); rebuild the corpus with `pretrainlab data build RECIPE`"
    try:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                fate = json.loads(line)
                if not _is_fate(fate):
                    raise UserError(damaged.format(f"line {number} is not a document's fate"))
                yield fate
    except (UnicodeDecodeError, ValueError, RecursionError) as e:  # ValueError: JSON, and integers past Python's digit limit
        raise UserError(damaged.format(str(e).splitlines()[0][:120] if str(e) else type(e).__name__)) from None


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_fate(fate) -> bool:
    """Whether a fates.jsonl line has the shape build._fate writes (what `why` and `explain` read)."""
    if not (isinstance(fate, dict) and all(isinstance(fate.get(k), str) for k in ("domain", "path", "sha256"))
            and fate.get("fate") in _EXPLAIN and (fate.get("split") is None or isinstance(fate["split"], str))):
        return False
    r = fate.get("removed_by")
    if r is not None and not (isinstance(r, dict) and isinstance(r.get("step"), str) and isinstance(r.get("rule"), str)
                              and (r.get("score") is None or _is_number(r["score"]))
                              and all(r.get(k) is None or isinstance(r[k], str) for k in ("cluster", "kept_doc"))):
        return False
    rewrites = fate.get("rewrites") or []
    if not (isinstance(rewrites, list) and all(isinstance(w, dict) and isinstance(w.get("step"), str) and isinstance(w.get("rule"), str)
                                               for w in rewrites)):
        return False
    scores, labels = fate.get("scores") or {}, fate.get("labels") or {}
    return (isinstance(scores, dict) and all(v is None or _is_number(v) for v in scores.values())
            and isinstance(labels, dict) and all(isinstance(v, str) and k in scores for k, v in labels.items())  # a label comes with its score
            and isinstance(fate.get("clusters") or {}, dict))


def why(corpus_dir: str | Path, doc: str) -> dict:
    """The fate of the document whose path is `doc` (or ends with it) or whose original sha256 starts with `doc`."""
    if not doc:
        raise UserError("DOC is empty: pass a document path or a sha256 prefix")
    exact, partial = [], []
    for fate in iter_fates(corpus_dir):
        if fate["path"] == doc or fate["sha256"] == doc:
            exact.append(fate)
        elif fate["path"].endswith("/" + doc) or (len(doc) >= 6 and fate["sha256"].startswith(doc.lower())):
            partial.append(fate)
    matches = exact or partial
    if not matches:
        raise UserError(f"no document {doc!r} in {corpus_dir}: pass a path as `data report` lists it, or a sha256 prefix of 6+ characters")
    if len(matches) > 1:
        listed = ", ".join(f"{m['domain']}:{m['path']}" for m in matches[:5])
        raise UserError(f"{doc!r} matches {len(matches)} documents ({listed}...): pass a longer path or sha256 prefix")
    fate = matches[0]
    return fate | {"explanation": explain(fate)}


def explain(fate: dict) -> str:
    text = _EXPLAIN[fate["fate"]]
    if fate["fate"] == "held_out":
        text += f" in the {fate['split']} split, kept as it is"
    r = fate.get("removed_by")
    if r:
        text += f": removed by step {r['step']}, rule {r['rule']}"
        if r.get("score") is not None:
            text += f" (score {r['score']})"
        if r.get("kept_doc"):
            text += f"; duplicate cluster {r['cluster']}, the kept copy is {r['kept_doc']}"
    if fate.get("rewrites"):
        text += "; rewritten by " + ", ".join(f"{w['step']} ({w['rule']})" for w in fate["rewrites"])
    for step, label in (fate.get("labels") or {}).items():  # what a step called a kept document: language_id's language
        text += f"; {step}: {label} (score {fate['scores'][step]})"
    return text


def build_report(corpus_dir: str | Path) -> dict | None:
    """The build's per-step report, or None for a corpus that `data prepare` made. A damaged
    one (not JSON, not UTF-8, not the shape the build writes) is a one-line UserError."""
    path = Path(corpus_dir) / REPORT_FILE
    if not path.is_file():
        return None
    damaged = f"{path} is damaged ({{}}); rebuild the corpus with `pretrainlab data build RECIPE`"
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise UserError(damaged.format(str(e).splitlines()[0][:120] if str(e) else type(e).__name__)) from None
    if not _is_build_report(report):
        raise UserError(damaged.format("not the report `data build` writes"))
    return report


def _is_count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _is_build_report(report) -> bool:
    """Whether build_report.json has the shape build.py writes (what `data report` and report_html read)."""
    if not (isinstance(report, dict) and _is_count(report.get("num_input_docs")) and isinstance(report.get("fates"), dict)
            and all(isinstance(k, str) and _is_count(v) for k, v in report["fates"].items())
            and isinstance(report.get("steps"), list)):
        return False
    for s in report["steps"]:
        if not (isinstance(s, dict) and isinstance(s.get("step"), str)
                and all(_is_count(s.get(k)) for k in ("num_docs_in", "num_docs_out", "num_tokens_in", "num_tokens_out", "num_rewritten",
                                                      "num_eval_overlaps"))
                and isinstance(s.get("removed_by_rule"), dict) and all(_is_count(v) for v in s["removed_by_rule"].values())
                and isinstance(s.get("cluster_sizes"), dict) and all(_is_count(v) for v in s["cluster_sizes"].values())):
            return False
        hist = s.get("score_histogram")
        if hist is not None and not (isinstance(hist, dict) and isinstance(hist.get("counts"), list) and isinstance(hist.get("edges"), list)
                                     and len(hist["edges"]) == len(hist["counts"]) + 1 and all(map(_is_count, hist["counts"]))
                                     and all(_is_number(e) and math.isfinite(e) for e in hist["edges"])):
            return False
    skipped = report.get("skipped_inputs")
    if skipped is not None and not (isinstance(skipped, dict) and _is_count(skipped.get("num_files"))
                                    and _is_count(skipped.get("num_records")) and _is_count(skipped.get("num_unlisted"))
                                    and isinstance(skipped.get("items"), list)
                                    and all(isinstance(x, dict) and all(isinstance(x.get(k), str) for k in ("source", "domain", "path", "reason"))
                                            for x in skipped["items"])):
        return False
    return True


# --- HTML --------------------------------------------------------------------------------


def _svg_bars(counts: list[int], labels: list[str], width: int = 360, height: int = 120) -> str:
    """A bar chart as inline SVG (no scripts, no CDN: the page works offline)."""
    if not counts:
        return ""
    top = max(max(counts), 1)
    bar_w = width / len(counts)
    bars = []
    for i, (n, label) in enumerate(zip(counts, labels)):
        h = (height - 20) * n / top
        x = i * bar_w
        bars.append(f'<rect x="{x:.1f}" y="{height - 20 - h:.1f}" width="{max(bar_w - 1, 1):.1f}" height="{h:.1f}" fill="#4a78b5">'
                    f"<title>{html.escape(label)}: {n}</title></rect>")
    axis = f'<text x="0" y="{height - 5}" font-size="10">{html.escape(labels[0])}</text>'
    axis += f'<text x="{width}" y="{height - 5}" font-size="10" text-anchor="end">{html.escape(labels[-1])}</text>'
    return f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">{"".join(bars)}{axis}</svg>'


def report_html(info: dict) -> str:
    esc = html.escape
    rows = []
    for domain, splits in info["domains"].items():
        for split, r in splits.items():
            rows.append(f"<tr><td>{esc(domain)}</td><td>{split}</td><td>{r['num_docs']:,}</td><td>{r['num_tokens']:,}</td>"
                        f"<td>{r['num_bytes']:,}</td><td>{r['bytes_per_token']:.3f}</td></tr>")
    parts = [
        "<!doctype html><meta charset='utf-8'><title>corpus report</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px}</style>",
        f"<h1>Corpus {esc(info['path'])}</h1><p>tokenizer {esc(info['tokenizer'])}, manifest sha256 {info['manifest_sha256'][:16]}</p>",
        "<h2>Domains</h2><table><tr><th>domain</th><th>split</th><th>docs</th><th>tokens</th><th>bytes</th><th>bytes/token</th></tr>",
        *rows,
        "</table>",
    ]
    build = info.get("build")
    if build:
        parts.append(f"<h2>Build: {build['num_input_docs']:,} input documents</h2><p>"
                     + ", ".join(f"{esc(k)} {v:,}" for k, v in sorted(build["fates"].items())) + "</p>")
        skipped = build.get("skipped_inputs") or {}
        if skipped.get("items"):
            parts.append(f"<h3>Skipped as unreadable: {skipped['num_files']:,} file(s), {skipped['num_records']:,} record(s)</h3>"
                         "<table><tr><th>source</th><th>domain</th><th>input</th><th>reason</th></tr>")
            parts += [f"<tr><td>{esc(x['source'])}</td><td>{esc(x['domain'])}</td><td>{esc(x['path'])}</td><td>{esc(x['reason'])}</td></tr>"
                      for x in skipped["items"]]
            parts.append("</table>" + (f"<p>and {skipped['num_unlisted']:,} more</p>" if skipped["num_unlisted"] else ""))
        for s in build["steps"]:
            parts.append(f"<h3>{esc(s['step'])}</h3><p>documents {s['num_docs_in']:,} &rarr; {s['num_docs_out']:,}, "
                         f"tokens {s['num_tokens_in']:,} &rarr; {s['num_tokens_out']:,}, rewritten {s['num_rewritten']:,}</p>")
            if s["removed_by_rule"]:
                parts.append("<p>removed: " + ", ".join(f"{esc(k)} {v:,}" for k, v in s["removed_by_rule"].items()) + "</p>")
            hist = s.get("score_histogram")
            if hist:
                edges = hist["edges"]
                labels = [f"{edges[i]:.3g}–{edges[i + 1]:.3g}" for i in range(len(hist["counts"]))]
                parts.append("<p>scores</p>" + _svg_bars(hist["counts"], labels))
            if s["cluster_sizes"]:
                sizes = list(s["cluster_sizes"].items())
                parts.append("<p>duplicate-cluster sizes</p>" + _svg_bars([n for _, n in sizes], [f"size {k}" for k, _ in sizes]))
            if s["step"] == "decontaminate":
                parts.append(f"<p>contamination: {s['removed_by_rule'].get('eval_overlap', 0):,} train documents, "
                             f"{s['num_eval_overlaps']:,} shared n-grams</p>")
    return "\n".join(parts) + "\n"
