"""Research-loop benchmarks on the tiny-cpu task (docs/benchmarks.md, "Research loop").

    python bench/research.py --runs 24 --run-budget 5s --campaign-seeds 3 --parallel 2

1. Equal compute: each of optuna and random (both with the default paired rule), optuna
   with the unpaired Welch rule, and a single-seed greedy keep/discard loop (the
   autoresearch rule, with optuna proposals) gets the same number of training runs of the
   same per-run budget, over several campaign seeds.
   Each campaign's final incumbent recipe is then re-trained on `--eval-seeds` fresh seeds,
   so "best val_bpb reached" is measured without the winner's-curse bias of reporting the
   luckiest single run.
2. False discoveries on A/A: `--aa-runs` seeds of the unchanged recipe; random disjoint
   splits are compared by each rule (paired over 3 pairs of distinct seeds, Welch 3 vs 3,
   greedy 1 vs 1). Any "keep" is false.
3. Slot utilisation, from each campaign's closing note: while work was queued (idle only
   when a run could have started), until the last run started (any idle counts), and the
   idle slot-time by reason. `--utilisation-only` runs just the campaigns (no re-training,
   no A/A), e.g. at the issue's per-run budget:

    python bench/research.py --utilisation-only --runs 16 --run-budget 60s --campaign-seeds 3 --arms optuna

Results: bench/results/research[-utilisation]-DATE.json and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import tempfile
from datetime import date
from pathlib import Path

import numpy as np

from pretrainlab import api
from pretrainlab.config import Recipe
from pretrainlab.ledger import Ledger
from pretrainlab.research import manage
from pretrainlab.research.campaign import CampaignConfig
from pretrainlab.research.space import recipe_diff
from pretrainlab.research.stats import IMPROVEMENT, compare, greedy_single_seed
from pretrainlab.train.telemetry import device_name

ARMS = {"optuna": dict(strategy="optuna"), "random": dict(strategy="random"), "greedy-1-seed": dict(strategy="optuna", decision="greedy"),
        "optuna-welch": dict(strategy="optuna", decision="welch")}


def baseline_recipe(ledger, campaign_id) -> Recipe:
    """The campaign's starting recipe (as it ran: with the campaign's eval rungs)."""
    exp = next(e for e in ledger.list_experiments(campaign_id) if e["proposer"] == "campaign" and not (e["change"] or {}).get("transfer_of"))
    return Recipe.from_dict(exp["change"]["recipe"])


def final_recipe(ledger, campaign_id) -> Recipe:
    kept = [d for d in ledger.list_decisions(campaign_id=campaign_id) if d["verdict"] == "keep"]
    exp = ledger.get_experiment(kept[-1]["experiment_id"])
    return Recipe.from_dict(exp["change"]["recipe"])


_RETRAINED: dict[tuple[str, int], float] = {}  # (recipe hash, seed) -> val_bpb: campaigns often end on the same recipe


def retrain(recipe: Recipe, seeds: list[int], workdir: Path) -> list[float]:
    path = workdir / f"recipe-{recipe.hash()}.json"
    path.write_text(json.dumps(recipe.to_dict()))
    for s in seeds:
        if (recipe.hash(), s) not in _RETRAINED:
            run = api.train_run(str(path), [f"seed={s}"], workdir / f"eval-{recipe.hash()}-{s}", echo=False)
            _RETRAINED[recipe.hash(), s] = run[1]["val_bpb"]
    return [_RETRAINED[recipe.hash(), s] for s in seeds]


def utilisation(note: str) -> dict:
    """The figures in a campaign's closing note (Campaign.utilisation_note)."""
    def pct(pattern):
        m = re.search(pattern, note)
        return float(m.group(1)) / 100 if m else None  # 'n/a': every run started at once

    idle = {k: float(v) for v, k in re.findall(r"(\d+) s ([^,;]+)", note.split("idle slot-time:")[1].rsplit(";", 1)[0])}
    return {"queued": pct(r"utilisation ([\d.]+)%"), "until_last_start": pct(r"; ([\d.]+)% until the last run started"),
            "overall": pct(r"([\d.]+)% including the final drain"), "idle_s": idle,
            "seconds": float(re.search(r"; (\d+) s$", note).group(1))}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=24, help="training runs per campaign (equal compute)")
    ap.add_argument("--run-budget", default="5s")
    ap.add_argument("--campaign-seeds", type=int, default=3)
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--eval-seeds", type=int, default=3, help="fresh seeds to re-train each final recipe on")
    ap.add_argument("--aa-runs", type=int, default=12)
    ap.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated subset of {', '.join(ARMS)}")
    ap.add_argument("--utilisation-only", action="store_true", help="run the campaigns only: slot utilisation, no re-training or A/A")
    args = ap.parse_args()
    arms = {a: ARMS[a] for a in args.arms.split(",")}
    work = Path(tempfile.mkdtemp(prefix="pretrainlab-bench-research-"))
    os.environ["PRETRAINLAB_WORKSPACE"] = str(work)
    os.environ.pop("ANTHROPIC_API_KEY", None)
    ledger = Ledger()
    results = {"arms": {}, "aa": {}}

    # 1. equal compute, several campaign seeds per arm
    eval_seeds = list(range(1000, 1000 + args.eval_seeds))
    meta = {"date": date.today().isoformat(), "device": device_name(__import__("torch").device("cpu")), "platform": platform.platform(),
            "command": " ".join(sys.argv)}
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    result_file = out / f"research{'-utilisation' if args.utilisation_only else ''}-{meta['date']}.json"
    for arm, kw in arms.items():
        rows = []
        for cs in range(args.campaign_seeds):
            cfg = CampaignConfig(recipe="tiny-cpu", run_budget=args.run_budget, budget_runs=args.runs, parallel=args.parallel,
                                 seeds=3, strategy_seed=cs, **kw)
            cid = manage.start(cfg, name=f"{arm} seed {cs}", echo=False)
            note = next(n["text"] for n in ledger.list_notes(campaign_id=cid) if n["text"].startswith("closed"))
            util = utilisation(note)
            print(f"{arm} seed {cs}: {note}", file=sys.stderr)
            if args.utilisation_only:
                rows.append({"campaign": cid, "utilisation": util})
                results["arms"][arm] = rows
                result_file.write_text(json.dumps({"meta": meta, **results}, indent=2))
                continue
            recipe = final_recipe(ledger, cid)
            values = retrain(recipe, eval_seeds, work)
            kept = sum(d["verdict"] == "keep" for d in ledger.list_decisions(campaign_id=cid)) - 1
            base = baseline_recipe(ledger, cid)
            diff = recipe_diff(base, recipe)
            rows.append({"campaign": cid, "final_val_bpb": statistics.fmean(values), "final_values": values, "kept_changes": kept,
                         "utilisation": util, "recipe_hash": recipe.hash(), "final_diff": {k: list(v) for k, v in diff.items()},
                         "experiments": len(ledger.list_decisions(campaign_id=cid))})
            print(f"{arm} seed {cs}: final {statistics.fmean(values):.4f} ({kept} kept: {diff})", file=sys.stderr)
            results["arms"][arm] = rows
            result_file.write_text(json.dumps({"meta": meta, **results}, indent=2))  # partial results survive an interruption
    if args.utilisation_only:
        print(f"\n{meta['date']} | {meta['device']} | `{meta['command']}`\n")
        print("| arm | campaigns | while work was queued | until the last run started | including the final drain | idle slot-time by reason (mean s) |")
        print("|---|---|---|---|---|---|")
        for arm, rows in results["arms"].items():
            u = [r["utilisation"] for r in rows]
            reasons = sorted({k for x in u for k in x["idle_s"]})
            idle = ", ".join(f"{k} {statistics.fmean(x['idle_s'].get(k, 0) for x in u):.0f}" for k in reasons)
            cells = []
            for f in ("queued", "until_last_start", "overall"):
                xs = [x[f] for x in u if x[f] is not None]
                cells.append(f"{statistics.fmean(xs):.1%} ({min(xs):.0%}-{max(xs):.0%})" if xs else "n/a")
            print(f"| {arm} | {len(u)} | " + " | ".join(cells) + f" | {idle} |")
        return
    results["baseline_values"] = retrain(base, eval_seeds, work)

    # 2. A/A false discoveries
    aa = retrain(base, list(range(2000, 2000 + args.aa_runs)), work)
    rng = np.random.default_rng(0)
    trials = 2000
    welch_false = greedy_false = paired_false = 0
    for _ in range(trials):
        idx = rng.permutation(len(aa))
        a, b = [aa[i] for i in idx[:3]], [aa[i] for i in idx[3:6]]
        welch_false += compare(a, b).verdict == IMPROVEMENT
        paired_false += compare(a, b, paired=True).verdict == IMPROVEMENT
        greedy_false += greedy_single_seed(aa[idx[0]], aa[idx[1]]) == IMPROVEMENT
    results["aa"] = {"runs": aa, "seed_std": statistics.stdev(aa), "trials": trials, "paired_false_discovery": paired_false / trials,
                     "welch_false_discovery": welch_false / trials, "greedy_false_discovery": greedy_false / trials}
    result_file.write_text(json.dumps({"meta": meta, **results}, indent=2))
    print(f"\n{meta['date']} | {meta['device']} | `{meta['command']}`\n")
    print(f"baseline (tiny-cpu, {args.run_budget} runs) on {args.eval_seeds} fresh seeds: {statistics.fmean(results['baseline_values']):.4f}\n")
    print("| decision rule / strategy | final val_bpb per campaign seed (fresh-seed mean) | mean | kept changes | slot utilisation |")
    print("|---|---|---|---|---|")
    for arm, rows in results["arms"].items():
        finals = [r["final_val_bpb"] for r in rows]
        print(f"| {arm} | {', '.join(f'{v:.4f}' for v in finals)} | {statistics.fmean(finals):.4f} | "
              f"{statistics.fmean(r['kept_changes'] for r in rows):.1f} | {statistics.fmean(r['utilisation']['queued'] for r in rows):.0%} |")
    a = results["aa"]
    print(f"\nA/A ({args.aa_runs} seeds of the unchanged recipe, seed std {a['seed_std']:.4f}, {trials} random splits): "
          f"false discoveries paired 3 pairs {a['paired_false_discovery']:.1%}, Welch 3v3 {a['welch_false_discovery']:.1%}, "
          f"greedy 1v1 {a['greedy_false_discovery']:.1%}")


if __name__ == "__main__":
    main()
