"""Mixture design on a simulated landscape (docs/benchmarks.md, "Mixture design"): how far from
the true best mixture the recommendation lands, by number of proxies, with and without the
search's trust region (research/mixture.py).

    python bench/mixture.py --proxies 8,12,24 --draws 12

Two landscapes, research/simulate.py's MixtureLandscape (three domains with the builtin
corpus's natural shares; per-domain val_bpb falling with the log of the share that teaches
the domain): `default`, whose best mixture is inside the simplex near the uniform one, and
`edge`, where code gains most from its share and the best mixture is at an edge (docs 0,
code 0.83), far from both the natural and the uniform proxy. Each proxy's value is the landscape's plus the noise of one run on a shared seed
(the proxies share seed 0, so the seed offset cancels; what is left is the run noise of the
domain mean, 0.006 / sqrt(3) bpb). Regret: the recommendation's true value minus the best
true value among 100,000 draws. Results: bench/results/mixture-DATE.json and Markdown on stdout.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from datetime import date
from pathlib import Path

import numpy as np

from pretrainlab.research import mixture
from pretrainlab.research.simulate import MixtureLandscape


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--proxies", default="8,12,24", help="comma-separated proxy counts")
    ap.add_argument("--draws", type=int, default=12, help="design seeds per proxy count")
    ap.add_argument("--pool", type=int, default=mixture.POOL_SIZE)
    ap.add_argument("--top", type=int, default=mixture.TOP_MIXTURES)
    args = ap.parse_args()
    rows, landscapes = [], {}
    t0 = time.time()
    for name, land in (("default", MixtureLandscape()), ("edge", MixtureLandscape(gain={"code": 0.4, "docs": 0.05, "literature": 0.1}))):
        landscapes[name] = run_landscape(name, land, args, rows)
    result = {"date": date.today().isoformat(), "device": platform.processor() or platform.machine(), "args": vars(args),
              "landscapes": landscapes, "rows": rows, "seconds": round(time.time() - t0, 1)}
    out = Path(__file__).parent / "results" / f"mixture-{result['date']}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print("| landscape | proxies | search | mean regret (bpb) | worst of {} |".format(args.draws))
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['landscape']} | {r['proxies']} | {r['arm']} | {r['mean_regret']:.4f} | {r['max_regret']:.4f} |")
    for name, info in landscapes.items():
        print(f"\n{name}: best {info['best_mixture']}; regret of the natural mixture {info['natural_regret']:.4f}, "
              f"of the uniform one {info['uniform_regret']:.4f} bpb")
    print(f"\n{result['seconds']} s; {out}")


def run_landscape(name: str, land: MixtureLandscape, args, rows: list) -> dict:
    domains = list(land.natural)
    natural = mixture.normalise(np.array([land.natural[d] for d in domains]))
    noise = land.run_std / math.sqrt(len(domains))

    def true(X):
        return np.array([np.mean(list(land.true_domains(dict(zip(domains, mixture.normalise(x)))).values())) for x in np.atleast_2d(X)])

    reference = mixture.draw_mixtures(natural, 100_000, np.random.default_rng(12345))
    values = true(reference)
    best = float(values.min())
    for n in (int(v) for v in args.proxies.split(",")):
        for arm, radius in (("trust region", mixture.TRUST_RADIUS), ("whole pool", math.inf)):
            regrets, models = [], []
            for seed in range(args.draws):
                rng = np.random.default_rng(seed)
                X = mixture.sample_mixtures(natural, n, rng)
                y = true(X) + rng.normal(0, noise, n)
                d = mixture.design(X, y, natural, np.random.default_rng([seed, 1]), pool_size=args.pool, top=args.top, num_resamples=0,
                                   trust_radius=radius)
                regrets.append(float(true(d.recommended)[0]) - best)
                models.append(d.chosen.spec.label)
            rows.append({"landscape": name, "proxies": n, "arm": arm, "mean_regret": float(np.mean(regrets)),
                         "max_regret": float(np.max(regrets)), "regrets": regrets, "models": models})
    return {"best_true": best, "best_mixture": dict(zip(domains, np.round(reference[values.argmin()], 3).tolist())),
            "natural_regret": float(true(natural)[0]) - best, "uniform_regret": float(true(np.full(len(domains), 1 / len(domains)))[0]) - best}


if __name__ == "__main__":
    main()
