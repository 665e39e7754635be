"""Does the lab's scaling law predict a run it was not fitted on?

    python bench/scaling_holdout.py                       # 4 sizes x 3 token budgets, then 2 held-out runs
    python bench/scaling_holdout.py --sizes n_embd=32,48,64,96 --tokens 200k,500k,1250k \
        --holdout n_embd=128:1250k --holdout n_embd=96:3000k

1. `scaling ladder` on tiny-cpu: every size at every token budget, real runs on this machine.
2. The law L(N, D) = E + A/N^alpha + B/D^beta fitted to them (scaling/law.py, Hoffmann et al.'s
   Approach 3) with bootstrap resamples of the points.
3. Each held-out run (a larger model, or more tokens than any ladder run) predicted from the fit,
   with the bootstrap's 95% percentile interval of the prediction, then trained and measured.

Results: bench/results/scaling-holdout-DATE.json and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="tiny-cpu")
    ap.add_argument("--sizes", default="n_embd=32,48,64,96")
    ap.add_argument("--tokens", default="200k,500k,1250k")
    ap.add_argument("--holdout", action="append", default=[], metavar="KEY=VALUE:TOKENS",
                    help="a held-out run: one size override and its token budget (default: n_embd=128:1250k, n_embd=96:3000k)")
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--workspace", type=Path, help="where the runs and the ledger go (default: a new temp dir)")
    args = ap.parse_args()
    holdouts = args.holdout or ["n_embd=128:1250k", "n_embd=96:3000k"]

    workspace = args.workspace or Path(tempfile.mkdtemp(prefix="scaling-holdout-"))
    workspace.mkdir(parents=True, exist_ok=True)
    os.environ["PRETRAINLAB_WORKSPACE"] = str(workspace)
    os.environ.pop("PRETRAINLAB_DB", None)
    from pretrainlab import api
    from pretrainlab.research.ladder import parse_count
    from pretrainlab.scaling import law

    started = time.time()
    done = api.scaling_ladder(args.recipe, [], sizes=[args.sizes], tokens=[args.tokens], parallel=args.parallel,
                              num_bootstrap=0, echo=True)
    ladder_s = time.time() - started
    points = api.scaling_fit(ladder=done["ladder"], num_bootstrap=0)["points"]
    n = np.array([p["N"] for p in points])
    d = np.array([p["D"] for p in points])
    loss = np.array([p["loss"] for p in points])
    fit = law.fit_law(n, d, loss)
    thetas = law.bootstrap_law(n, d, loss, fit, args.bootstrap, np.random.default_rng(0))

    rows = []
    for spec in holdouts:
        size, _, tokens = spec.rpartition(":")
        key, _, value = size.partition("=")
        key = key if "." in key else f"model.{key}"
        budget = parse_count(tokens)
        t0 = time.time()
        run_dir, summary = api.train_run(args.recipe, [f"{key}={value}", f"budget.tokens={budget}"],
                                         workspace / "holdout" / f"{key.split('.')[-1]}{value}-{tokens}", echo=False)
        row = api.show_run(str(run_dir))
        nn, dd = float(row["params"]), float(row["tokens"])
        a, b, e, alpha, beta = thetas.T
        boot = np.exp(e) + np.exp(a) * nn ** -alpha + np.exp(b) * dd ** -beta
        lo, hi = (float(v) for v in np.nanpercentile(boot, [2.5, 97.5]))
        rows.append({"holdout": spec, "N": nn, "D": dd, "predicted": float(fit.predict(nn, dd)), "interval": [lo, hi],
                     "measured": float(summary["val_bpb"]), "seconds": round(time.time() - t0, 1)})

    result = {"meta": {"date": date.today().isoformat(), "command": " ".join([sys.executable.rsplit("/", 1)[-1], *sys.argv]),
                       "machine": f"{platform.machine()}, {os.cpu_count()} cores", "ladder_seconds": round(ladder_s, 1)},
              "ladder": done["ladder"], "points": points, "fit": fit.to_dict(), "num_bootstrap": len(thetas), "holdout": rows}
    out = Path(__file__).parent / "results" / f"scaling-holdout-{result['meta']['date']}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str))

    f = fit.to_dict()
    print(f"\nfit on {len(points)} ladder runs: E={f['E']:.3f} A={f['A']:.4g} alpha={f['alpha']:.3f} B={f['B']:.4g} "
          f"beta={f['beta']:.3f}, rms log residual {f['rms_log_residual']:.4f}\n")
    print("| held-out run | N | D | predicted val_bpb [95%] | measured | error |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        inside = "inside" if r["interval"][0] <= r["measured"] <= r["interval"][1] else "outside"
        print(f"| {r['holdout']} | {r['N']:,.0f} | {r['D']:,.0f} | {r['predicted']:.4f} [{r['interval'][0]:.4f}, {r['interval'][1]:.4f}] "
              f"| {r['measured']:.4f} | {r['measured'] - r['predicted']:+.4f} ({inside}) |")
    print(f"\nresults: {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
