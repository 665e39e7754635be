"""A campaign's research log (Markdown) and report (one self-contained HTML page).

    pretrainlab research log CAMPAIGN            # what was tried, by whom, why, and what was decided
    pretrainlab report CAMPAIGN -o report.html   # progress chart, ablation table, findings, final diff

The page has inline SVG and CSS only (no script, nothing fetched), so it opens offline.
"""

from __future__ import annotations

import html
import math
import statistics
from pathlib import Path

from ..config import Recipe
from ..scaling.transfer import prediction_interval
from ..ledger.plot import svg_chart
from ..ledger.store import Role
from ..rundir import finite_float, read_summary
from .space import recipe_diff

KEPT, DISCARDED, FRONTIER = "#2ca02c", "#9e9e9e", "#1f77b4"


def campaign_record(ledger, campaign_id: str, reuse: dict[str, dict] | None = None) -> dict:
    """Everything the log and the report show, gathered once from the ledger. `reuse`:
    experiment rows read before, by id (Ledger.list_experiments: their JSON is not parsed again)."""
    campaign = ledger.get_campaign(campaign_id)
    experiments = ledger.list_experiments(campaign_id, reuse=reuse)
    decisions = ledger.list_decisions(campaign_id=campaign_id)
    runs = ledger.list_runs(campaign=campaign_id, columns=("run_id", "run_dir", "experiment_id", "seed", "status", "val_bpb", "tokens_per_s"))
    notes = ledger.list_notes(campaign_id=campaign_id)
    by_exp: dict[str, list[dict]] = {}
    for r in runs:
        by_exp.setdefault(r["experiment_id"], []).append(r)
    decisions_of: dict[str, list[dict]] = {}
    for d in decisions:  # in the order they were made
        decisions_of.setdefault(d["experiment_id"], []).append(d)
    rows = []
    for e in experiments:
        ds = decisions_of.get(e["id"], [])
        d = ds[-1] if ds else None
        values = [r["val_bpb"] for r in by_exp.get(e["id"], []) if r["status"] == "ok" and r["val_bpb"] is not None]
        rows.append({**e, "decision": d, "decisions": ds, "runs": sorted(by_exp.get(e["id"], []), key=lambda r: r["seed"] or 0),
                     "mean": statistics.fmean(values) if values else None, "values": values})
    return {"campaign": campaign, "experiments": rows, "notes": notes, "num_runs": len(runs)}


def _who(e: dict) -> str:
    return f"{e['proposer']} ({e['model_id']})" if e.get("model_id") else e["proposer"]


def _effect(d: dict | None) -> str:
    rung = ((d or {}).get("evidence") or {}).get("rung") or {}
    if d and d.get("effect") is None and rung.get("diff") is not None:
        return f"{rung['diff']:+.4f} at rung 1, stopped"  # a screen stopped early: how far it trailed its parent there
    if not d or d.get("effect") is None:
        return ""
    ci = f" [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}]" if d.get("ci_low") is not None else ""
    return f"{d['effect']:+.4f}{ci}"


def statistics_decision(decisions: list[dict]) -> dict | None:
    """The loop's latest decision on an experiment (its statistics', not a person's)."""
    return next((d for d in reversed(decisions) if d["decider_type"] != "person"), None)


def overturns(exp: dict, decisions: list[dict], verdict: str) -> dict | None:
    """The statistics' decision that a person's `verdict` on `exp` overturns (keep of a
    discard, discard of a keep), or None. The baseline's keep is the starting point the
    campaign measures everything against, not a verdict on a change."""
    d = statistics_decision(decisions)
    if d is None or exp.get("role") == Role.BASELINE or {d["verdict"], verdict} != {"keep", "discard"}:
        return None
    return d


def measured(d: dict) -> str:
    """What the statistics measured for a decision, in words: '+0.0401 val_bpb on its paired seed'."""
    ev = d.get("evidence") or {}
    if d.get("effect") is not None:
        n = (ev.get("comparison") or {}).get("n_candidate") or len(ev.get("values") or []) or (len(ev["seeds"]) if ev.get("seeds") else 0)
        seeds = " on its paired seed" if n == 1 else f" over {n} seeds" if n else ""
        return f"{d['effect']:+.4f} val_bpb{seeds}"
    rung = ev.get("rung") or {}
    if rung.get("diff") is not None:
        return f"{rung['diff']:+.4f} val_bpb at its first rung, stopped there"
    return (d.get("rationale") or "").split(";")[0][:200] or "no effect on record"


def carries(recipe: dict, exp: dict) -> bool:
    """Whether a recipe (a dict, as experiments record it) has every value `exp` changed:
    a later incumbent built on an experiment carries its change whatever became of its verdict."""
    diff = (exp.get("change") or {}).get("diff") or {}
    for key, (_, value) in diff.items():
        node = recipe
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node != value:
            return False
    return bool(diff)


def overrides(record: dict) -> list[tuple[dict, dict, dict]]:
    """The standing overrides of the statistics: (experiment, the person's decision, the
    statistics' decision it overturned), for each experiment whose latest decision is one."""
    out = []
    for e in record["experiments"]:
        d = e["decision"]
        if d and d["decider_type"] == "person" and (stats := overturns(e, e["decisions"], d["verdict"])):
            out.append((e, d, stats))
    return out


def _short(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _change(e: dict) -> str:
    from .manage import data_steps_text

    change = e.get("change") or {}
    steps = data_steps_text(change.get("data_recipe"))  # a data experiment: its steps, not the derived corpus's path
    diff = {k: v for k, v in (change.get("diff") or {}).items() if not (steps and k == "data.corpus")}
    if steps or diff:
        return ", ".join(filter(None, [f"data steps: {steps}" if steps else "",
                                       ", ".join(f"{k}: {_short(a)} -> {_short(b)}" for k, (a, b) in diff.items())]))
    if change.get("patch"):
        return "code patch"
    return "(starting recipe)" if e["proposer"] == "campaign" else "-"


def research_log(record: dict) -> str:
    c = record["campaign"]
    by = f" by {c['config']['started_by']}" if (c.get("config") or {}).get("started_by") else ""
    lines = [f"# Research log: {c['name']} ({c['id']})", "", f"Goal: {c['goal']}. Status: {c['status']}. Started {c['created_at']}{by}.", ""]
    noise = noise_summary(record)
    if noise:
        lines += [noise[0].upper() + noise[1:], ""]
    notes_by_exp: dict[str, list[dict]] = {}
    for n in record["notes"]:
        notes_by_exp.setdefault(n.get("experiment_id") or "", []).append(n)
    for e in record["experiments"]:
        lines.append(f"## {e['id']}: {e['hypothesis']}")
        lines.append(f"- proposed by **{_who(e)}** ({e['kind']}) at {e['created_at']}: {e.get('rationale') or ''}")
        lines.append(f"- change: {_change(e)}")
        if e["runs"]:
            lines.append("- runs: " + ", ".join(f"seed {r['seed']} {r['status']}" + (f" {r['val_bpb']:.4f}" if r["val_bpb"] is not None else "")
                                                 for r in e["runs"]))
        for i, d in enumerate(e["decisions"]):
            stats = overturns(e, e["decisions"][:i], d["verdict"]) if d["decider_type"] == "person" else None
            over = f" (overrides the statistics' {stats['verdict']}: {measured(stats)})" if stats else ""
            lines.append(f"- decision: **{d['verdict']}** by {d['decided_by']}{over} {_effect(d)} — {d.get('rationale') or ''}")
        for n in notes_by_exp.get(e["id"], []):
            lines.append(f"- note ({n['author']}): {n['text'].splitlines()[0][:300]}")
        lines.append("")
    general = notes_by_exp.get("", [])
    if general:
        lines.append("## Campaign notes")
        lines += [f"- {n['created_at']} ({n['author']}): {n['text'].splitlines()[0][:300]}" for n in general]
    return "\n".join(lines) + "\n"


def _stage(d: dict | None) -> str | None:
    return ((d or {}).get("evidence") or {}).get("stage")


def pruned_exp(record: dict) -> dict | None:
    """The experiment that handed back the final recipe without groups that scored better without them, if any."""
    return next((e for e in record["experiments"] if (e.get("change") or {}).get("pruned")), None)


def confirmation_section(record: dict) -> list[str]:
    """The confirmation phase (--decision screen): the final recipe against the baseline on
    fresh seeds, and what each changed group carries by its leave-one-out ablation."""
    esc = html.escape
    confirm = [e for e in record["experiments"] if (e.get("change") or {}).get("confirm") and _stage(e["decision"]) == "claim"]
    if not confirm:
        return []
    final = next((e for e in confirm if e["change"]["confirm"] == "final"), None)
    pruned = pruned_exp(record)
    dropped = set(pruned["change"]["pruned"]) if pruned else set()
    out = ["<h2>Confirmation on fresh seeds</h2>",
           "<p>Claims come only from here: seeds no screen ran on, a paired t-test per claim with the noise pooled over "
           "all of the phase's runs. Screens only moved the incumbent.</p>"]
    if final is not None:
        d = final["decision"]
        out.append(f"<p><b>The final recipe vs the baseline: {esc(_effect(d))}</b> val_bpb, <span class={esc(d['verdict'])}>"
                   f"{esc(d['verdict'])}</span> (seeds {esc(str(final['change']['seeds']))}).</p>")
    out.append("<table><tr><th>changed group</th><th>change</th><th>carries (final − without it) [95% CI]</th><th>claim</th>"
               "<th>handed back</th></tr>")
    groups = (final["change"].get("groups") or {}) if final else {}
    for e in confirm:
        group = (e["decision"].get("evidence") or {}).get("group")
        if not group or (e is final and len(groups) != 1):
            continue
        diff = (final or e)["change"].get("diff") or {}
        change = ", ".join(f"{k}: {_short(a)} -> {_short(b)}" for k, (a, b) in diff.items() if k in groups.get(group, {}))
        out.append(f"<tr><td class=mono>{esc(group)}</td><td>{esc(change)}</td><td>{_effect(e['decision'])}</td>"
                   f"<td class={esc(e['decision']['verdict'])}>{esc(e['decision']['verdict'])}</td>"
                   f"<td>{'dropped: it scored better without it' if group in dropped else 'kept'}</td></tr>")
    out.append("</table>")
    if dropped and final is not None:
        out.append(f"<p>These claims are about the confirmed final recipe ({esc(final['id'])}). The recipe handed back drops "
                   f"{esc(', '.join(sorted(dropped)))} (each scored better without it on these seeds): that recipe was not run "
                   "against the baseline, so no claim is its own. Run it on fresh seeds to claim it.</p>")
    return out


def progress_series(record: dict) -> list:
    """Metric per decided experiment in decision order: kept, discarded, and the frontier
    (screens and replicated decisions; the confirmation phase runs on other seeds)."""
    decided = [e for e in record["experiments"] if e["decision"] and e["mean"] is not None and _stage(e["decision"]) != "claim"]
    decided.sort(key=lambda e: e["decision"]["created_at"])
    kept, discarded, frontier = [], [], []
    best = None
    for i, e in enumerate(decided, 1):
        (kept if e["decision"]["verdict"] == "keep" else discarded).append((i, e["mean"]))
        if e["decision"]["verdict"] == "keep":
            best = e["mean"]
        if best is not None:
            frontier.append((i, best))
    return [("incumbent (frontier)", FRONTIER, frontier, False), ("kept", KEPT, kept, "only"), ("discarded", DISCARDED, discarded, "only")]


def noise_summary(record: dict) -> str:
    """One sentence: the decision rule, the seed noise, and how small an effect the
    campaign's comparisons could resolve (median 95% CI half-width)."""
    decisions = [d for e in record["experiments"] for d in e["decisions"]]
    rule = next((d["decided_by"] for d in decisions if d["decider_type"] != "person" and "(" in (d.get("decided_by") or "")), None)
    base = next((d for d in decisions if ((d.get("evidence") or {}).get("noise_floor") or {}).get("std") is not None), None)
    widths = sorted((d["ci_high"] - d["ci_low"]) / 2 for d in decisions if d.get("ci_low") is not None and d.get("ci_high") is not None)
    parts = []
    overridden = [f"{e['id']} {'kept' if d['verdict'] == 'keep' else 'discarded'} by {d['decided_by']}" for e, d, _ in overrides(record)]
    if rule:
        parts.append(f"decided by {rule}" + (f", except where a person overrode it ({', '.join(overridden)})" if overridden else ""))
    elif overridden:
        parts.append(f"a person overrode the statistics ({', '.join(overridden)})")
    if base:
        nf = base["evidence"]["noise_floor"]
        parts.append(f"seed noise of the baseline: std {nf['std']:.4f} val_bpb over {nf['n']} seeds")
    if widths:
        parts.append(f"median 95% CI of a decided effect: ±{statistics.median(widths):.4f} over {len(widths)} comparisons")
    noise = next((n for d in decisions if (n := (d.get("evidence") or {}).get("paired_noise"))), None)
    if noise:
        from .stats import describe_paired_noise

        parts.append(describe_paired_noise(noise) or (
            f"paired noise measured by the confirmation: {noise['std']:.4f} (90% interval {noise['low']:.4f} .. {noise['high']:.4f})"
            + (f", consistent with the {noise['assumed']:g} the screens assumed" if noise.get("assumed") else "")))
    return ("; ".join(parts) + ".") if parts else ""


def _interval(value, ci) -> str:
    if value is None:
        return "—"
    return f"{value:+.4f}" + (f" [{ci[0]:+.4f}, {ci[1]:+.4f}]" if ci else "")


def transfer_section(record: dict) -> list[str]:
    """Transfer checks: each small-scale winner's gain at the campaign's rung, what the
    ladder's law predicted at the larger rung (with --transfer-ladder), and what was measured."""
    esc = html.escape
    checked = [e for e in record["experiments"] if ((e["decision"] or {}).get("evidence") or {}).get("transfer")]
    if not checked:
        return []
    rung = ", ".join(checked[0]["decision"]["evidence"].get("transfer_rung") or [])
    out = [f"<h2>Transfer checks</h2><p>Each winner at the campaign's rung was measured again at the larger rung ({esc(rung)}), "
           "against the incumbent on the same seeds. Effects are candidate − incumbent in val_bpb (negative helps), "
           "with 95% intervals.</p>",
           "<table><tr><th>experiment</th><th>hypothesis</th><th>gain at the campaign's rung</th><th>predicted at the larger rung</th>"
           "<th>measured at the larger rung</th><th>verdict</th></tr>"]
    for e in checked:
        ev = e["decision"]["evidence"]
        small, measured, pred = ev["small_scale"], ev["transfer"], ev.get("prediction") or {}
        # the interval the measured gain should fall in: the law's, with both rungs' measurement noise
        ci = (prediction_interval(pred, (measured["ci_low"], measured["ci_high"])) if "effect_law_ci" in pred
              else pred.get("effect_ci")) if pred else None
        predicted = _interval(pred.get("effect"), ci) if pred else "no ladder"
        if pred.get("effect") is not None and ci:
            predicted += " ✓" if ci[0] <= measured["effect"] <= ci[1] else " ✗"
        out.append(f"<tr><td class=mono>{e['id']}</td><td>{esc(e['hypothesis'])}</td>"
                   f"<td>{_interval(small['effect'], [small['ci_low'], small['ci_high']])}</td><td>{esc(predicted)}</td>"
                   f"<td>{_interval(measured['effect'], [measured['ci_low'], measured['ci_high']])}</td>"
                   f"<td class={esc(e['decision']['verdict'])}>{esc(e['decision']['verdict'])}</td></tr>")
    out.append("</table>")
    if any((e["decision"]["evidence"].get("prediction") or {}).get("ladder") for e in checked):
        out.append("<p>Predicted: the small-rung gain carried to the larger rung as a constant compute multiplier along the "
                   "ladder's fitted law L(N, D) (✓: the measured gain fell inside the predicted interval).</p>")
    return out


def _lab_verdict(run: dict) -> dict | None:
    """The lab's verdict on a campaign run (runners/job.py writes it into the run's summary once the run has exited);
    None when the run was never scored."""
    summary = read_summary(run["run_dir"]) if run.get("run_dir") else None
    verdict = (summary or {}).get("lab_score") if isinstance(summary, dict) else None
    return verdict if isinstance(verdict, dict) and verdict.get("status") in ("ok", "rejected") else None


def _passes(verdict: dict, one_in: int) -> float:
    """The probability that a model looking ahead at 1 position in `one_in` passes this run's causality probes."""
    probes = verdict.get("probes")
    rows = probes.get("causality_rows") if isinstance(probes, dict) else None
    return (1 - 1 / one_in) ** rows if isinstance(rows, int) and not isinstance(rows, bool) and rows >= 0 else 1.0


def _unscored(n: int) -> str:
    if not n:
        return ""
    return (f" The other {n} ended before the lab scored them (stopped at a screen's first rung, or failed): a number "
            "of theirs (the run's own evaluation at the rung) can only have stopped a change, never kept one.")


def scoring_section(record: dict, kept: list[dict]) -> list[str]:
    """How every number in the report was measured: by the lab, from logits, with probes; what was rejected and why;
    and how likely a look-ahead in the kept changes would have gone unnoticed."""
    verdicts = {r["run_id"]: _lab_verdict(r) for e in record["experiments"] for r in e["runs"]}
    scored = [v for v in verdicts.values() if v]
    if not scored:
        return []
    esc = html.escape
    ok = [v for v in scored if v["status"] == "ok"]
    probes = [p if isinstance(p := v.get("probes"), dict) else {} for v in ok]
    worst = max((max(finite_float(p.get("causality_max_diff")) or 0.0, finite_float(p.get("replay_max_diff")) or 0.0)
                 for p in probes), default=0.0)
    tol = max((finite_float(p.get("tolerance")) or 0.0 for p in probes), default=0.0)
    out = ["<h2>How the scores were checked</h2>",
           f"<p>{len(scored)} of {len(verdicts)} runs were scored by the lab from their logits, in a sandboxed process that "
           f"never reported its own number ({sum(bool(v.get('sandboxed')) for v in scored)} sandboxed); {len(ok)} passed the "
           f"causality and replay probes, {len(scored) - len(ok)} were rejected. Largest difference a passing run showed "
           f"between two processes: {worst:.2g} nats (tolerance {tol:.0e}).{_unscored(len(verdicts) - len(scored))}</p>"]
    kept_runs = [verdicts.get(r["run_id"]) for e in kept for r in e["runs"]]
    kept_runs = [v for v in kept_runs if v and v["status"] == "ok"]
    if kept_runs:
        odds = {k: math.prod(_passes(v, k) for v in kept_runs) for k in (50, 100, 200)}
        out.append(f"<p>A change that looked ahead at 1 position in 50, 100 or 200 would have passed the probes of all "
                   f"{len(kept_runs)} runs of the kept experiments with probability {odds[50]:.1e}, {odds[100]:.1e} or "
                   f"{odds[200]:.1e}.</p>")
    rejected = [(e, v) for e in record["experiments"] for r in e["runs"] if (v := verdicts.get(r["run_id"])) and v["status"] == "rejected"]
    if rejected:
        out.append("<table><tr><th>experiment</th><th>proposed by</th><th>rejected because</th></tr>")
        seen = set()
        for e, v in rejected:
            if e["id"] not in seen:
                seen.add(e["id"])
                out.append(f"<tr><td class=mono>{e['id']}</td><td>{esc(_who(e))}</td><td>{esc(str(v.get('reason') or ''))}</td></tr>")
        out.append("</table>")
    return out


def _seeds(e: dict) -> str:
    return f"{len(e['values'])} seed{'s' if len(e['values']) != 1 else ''}"


def override_section(record: dict, start: dict | None, final: dict | None) -> list[str]:
    """Said near the top: the outcome includes a person's override of the statistics, who made
    it, on which experiment, what the statistics had measured, and the person's reason."""
    esc = html.escape
    overridden = overrides(record)
    if not overridden:
        return []
    confirmed = [e for e in record["experiments"] if (e.get("change") or {}).get("confirm") == "final"]
    out = ["<div class=override><p><b>This outcome includes a person's override of the statistics</b>: not everything below "
           "was decided by the statistics.</p><ul>"]
    for e, d, stats in overridden:
        item = (f"<b>{esc(d['decided_by'])}</b> {'kept' if d['verdict'] == 'keep' else 'discarded'} experiment <span class=mono>"
                f"{e['id']}</span> ({esc(_change(e))}) over the statistics' <b>{esc(stats['verdict'])}</b> "
                f"({esc(measured(stats))}). Their reason: “{esc(d.get('rationale') or '')}”.")
        if e is final:
            item += " Its recipe is the final recipe below"
            if e["mean"] is not None and start and start["mean"] is not None:
                item += (f": val_bpb {e['mean']:.4f} over {_seeds(e)}, against the baseline's {start['mean']:.4f} over "
                         f"{_seeds(start)}")
            item += "."
            if confirmed and confirmed[-1]["change"].get("of") != e["id"]:
                item += " The confirmation on fresh seeds measured the recipe before this override, not this one."
        elif _stage(stats) == "claim":
            item += " It is a claim of the confirmation phase: the claim on record is the person's, not the statistics'."
        elif final is None or final is start:
            item += " The final recipe below is the starting one."
        elif final["change"].get("recipe"):
            has = "which carries" if carries(final["change"]["recipe"], e) else "without"
            item += f" The final recipe below is experiment <span class=mono>{final['id']}</span>'s, {has} this change."
        out.append(f"<li>{item}</li>")
    out.append("</ul></div>")
    return out


def render_report(record: dict, findings: dict[str, list[dict]] | None = None) -> str:
    esc = html.escape
    c = record["campaign"]
    exps = record["experiments"]
    kept = [e for e in exps if e["decision"] and e["decision"]["verdict"] == "keep" and _stage(e["decision"]) != "claim"]
    kept.sort(key=lambda e: e["decision"]["created_at"])
    start, final = (exps[0] if exps else None), (kept[-1] if kept else None)
    out = ["<!doctype html><meta charset='utf-8'><title>pretrainlab report</title>",
           "<style>body{font:14px system-ui,sans-serif;margin:24px;max-width:1200px}table{border-collapse:collapse;margin:8px 0}"
           "td,th{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}th{background:#f5f5f5}"
           ".keep{color:#2ca02c;font-weight:bold}.discard{color:#777}.mono{font-family:monospace}"
           ".override{border-left:4px solid #d62728;background:#fff5f5;padding:2px 12px;margin:8px 0}</style>",
           f"<h1>{esc(c['name'])}</h1><p>Campaign <span class=mono>{c['id']}</span> — {esc(c['goal'] or '')} — status {esc(c['status'])}"
           f" — {len(exps)} experiments, {sum(len(e['runs']) for e in exps)} runs.</p>"]
    out += override_section(record, start, final)
    # a screen's number is one seed's (a person's keep of a screen is still one): the headline is the confirmation's then
    if (start and start["mean"] is not None and final and final["mean"] is not None
            and _stage(statistics_decision(final["decisions"]) or final["decision"]) != "screen"):
        seeds = f" (the final over {_seeds(final)}, the start over {_seeds(start)})" if len(final["values"]) != len(start["values"]) else ""
        out.append(f"<p><b>val_bpb {start['mean']:.4f} → {final['mean']:.4f}</b> ({final['mean'] - start['mean']:+.4f}) "
                   f"with {len(kept) - 1} kept change(s){seeds}.</p>")
    noise = noise_summary(record)
    if noise:
        out.append(f"<p>{esc(noise[0].upper() + noise[1:])}</p>")
    closing = (c.get("config") or {}).get("closing")
    if closing:  # the last loop's slot utilisation and where idle slot-time went
        from .campaign import slots_text

        out.append(f"<p>Slots: {esc(slots_text(closing[-1]))}.</p>")
    out.append(svg_chart("val_bpb per decided experiment (mean over seeds)", "experiment (in decision order)", "val_bpb",
                         progress_series(record)))
    out += confirmation_section(record)
    out += transfer_section(record)
    hidden = (c.get("config") or {}).get("hidden_test")
    if hidden:  # scored once, at the close: how much of the decision-split gain holds on documents no decision saw
        out.append(f"<h2>Hidden test split</h2><p>Final recipe ({hidden['final_experiment']}) vs the baseline on the hidden test "
                   f"split: {hidden['test']['final']:.4f} vs {hidden['test']['baseline']:.4f} (gain {hidden['gain_test']:+.4f}); on the "
                   f"decision split: {hidden['val']['final']:.4f} vs {hidden['val']['baseline']:.4f} (gain {hidden['gain_val']:+.4f}). "
                   f"Validation-overfitting gap: <b>{hidden['overfitting_gap']:+.4f}</b> bpb "
                   f"({hidden['runs']['final']} and {hidden['runs']['baseline']} runs)"
                   + (" — on unequal sets of runs (recorded by an earlier version of the lab), so the seeds' noise does not "
                      "cancel: read it with care" if hidden["runs"]["final"] != hidden["runs"]["baseline"] else "")
                   + (", the confirmed final recipe's, before the pruning above" if pruned_exp(record) else "") + ".</p>")
    out += scoring_section(record, kept)
    out.append("<h2>Ablations</h2><table><tr><th>experiment</th><th>hypothesis</th><th>proposed by</th><th>change</th><th>runs</th>"
               "<th>mean val_bpb</th><th>effect [95% CI]</th><th>verdict</th><th>why</th></tr>")
    for e in exps:
        d = e["decision"]
        verdict = d["verdict"] if d else e["status"]
        mean = "" if e["mean"] is None else f"{e['mean']:.4f}"
        why = (d or {}).get("rationale") or ""
        stats = statistics_decision(e["decisions"]) if d and d["decider_type"] == "person" else None
        if stats is not None and overturns(e, e["decisions"], d["verdict"]):
            why = f"{d['decided_by']} overrode the statistics' {stats['verdict']}: {why}"
        out.append(f"<tr><td class=mono>{e['id']}</td><td>{esc(e['hypothesis'])}</td><td>{esc(_who(e))}</td><td>{esc(_change(e))}</td>"
                   f"<td>{len(e['values'])}</td><td>{mean}</td><td>{_effect(stats or d)}</td>"
                   f"<td class={esc(verdict)}>{esc(verdict)}</td><td>{esc(why)}</td></tr>")
    out.append("</table>")
    if findings:
        out.append("<h2>Doctor findings</h2><table><tr><th>run</th><th>severity</th><th>finding</th><th>evidence</th></tr>")
        for run_id, items in findings.items():
            for f in items:
                out.append(f"<tr><td class=mono>{run_id}</td><td>{esc(f['severity'])}</td><td>{esc(f['id'])}</td>"
                           f"<td>{esc(f.get('summary') or '')}</td></tr>")
        out.append("</table>")
    out.append("<h2>Final recipe vs the starting baseline</h2>")
    if final and final["decision"]["decider_type"] == "person" and overturns(final, final["decisions"], "keep"):
        out.append(f"<p>The recipe of experiment <span class=mono>{final['id']}</span>, kept by {esc(final['decision']['decided_by'])} "
                   f"over the statistics' discard (see the top).</p>")
    if final and start and final is not start:
        out.append("<table><tr><th>field</th><th>start</th><th>final</th></tr>")
        for k, (a, b) in recipe_diff(Recipe.from_dict(start["change"]["recipe"]), Recipe.from_dict(final["change"]["recipe"])).items():
            out.append(f"<tr><td class=mono>{esc(k)}</td><td>{esc(str(a))}</td><td>{esc(str(b))}</td></tr>")
        out.append("</table>")
    elif any(d["verdict"] == "discard" for _, d, _ in overrides(record)):
        out.append("<p>No change is kept (a person discarded what the statistics kept, see the top): the starting recipe stands.</p>")
    elif not any(e["decision"] and e is not start for e in record["experiments"]):  # nothing was decided but the baseline
        state = record["campaign"].get("status")
        out.append(f"<p>No change was decided (the campaign is {esc(str(state))}; only the baseline ran): the starting recipe "
                   "stands, untested against any change.</p>")
    else:
        out.append("<p>No change beat the baseline beyond seed noise: the starting recipe stands.</p>")
    out.append(f"<h2>Research log</h2><pre>{esc(research_log(record))}</pre>")
    return "\n".join(out)


def write_report(ledger, campaign_id: str, path: Path, with_findings: bool = True) -> Path:
    if (ledger.get_campaign(campaign_id)["config"] or {}).get("kind") == "mixture":  # a mixture campaign has a page of its own
        from .mixture_report import write_report as write_mixture_report

        return write_mixture_report(ledger, campaign_id, path)
    record = campaign_record(ledger, campaign_id)
    findings = {}
    if with_findings:
        from ..doctor import diagnose

        for e in record["experiments"]:
            for r in e["runs"]:
                if Path(r["run_dir"]).is_dir():
                    items = [f for f in diagnose(Path(r["run_dir"])).to_dict().get("findings", []) if f.get("severity") != "info"]
                    if items:
                        findings[r["run_id"]] = items
    path = Path(path)
    path.write_text(render_report(record, findings))
    return path
