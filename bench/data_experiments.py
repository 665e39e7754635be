"""Data experiments on the builtin corpus: does a filter or a dedup step help val_bpb, beyond noise?

    python bench/data_experiments.py                       # tiny-cpu, 80k tokens per run, 3 seeds, 2 at a time
    python bench/data_experiments.py --run-budget 4e4tok --seeds 2

A manual campaign (`--decision paired`, every candidate replicated on the baseline's seeds)
with the data recipes in bench/data_experiments/*.toml queued as a person's suggestions, so
each change gets a seed-matched paired test against the builtin corpus: effect ± 95% CI.
Then the two changes with the lowest effect are merged into one recipe (their steps in the
order of the files) and tested the same way, with `research resume --budget-runs`.
Every run is scored by the lab on the base corpus's val split. Results go to
bench/results/data-experiments-DATE.json and print as a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import tomllib
from datetime import date
from pathlib import Path

HERE = Path(__file__).parent
RECIPES = sorted((HERE / "data_experiments").glob("*.toml"))
ENV = dict(os.environ)  # + PRETRAINLAB_WORKSPACE: the campaign's runs go to the work directory


def cli(*args: str, db: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pretrainlab", *args, "--db", db], capture_output=True, text=True, check=check, env=ENV)


def suggest(campaign: str, path: Path, db: str) -> None:
    hypothesis = path.read_text().splitlines()[0].lstrip("# ").strip()
    out = cli("research", "suggest", campaign, hypothesis, "--data-recipe", str(path), "--author", "bench", db=db, check=False)
    print(f"suggested {path.stem}: {(out.stdout or out.stderr).strip().splitlines()[-1]}", flush=True)


def run_loop(args: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pretrainlab", *args], stdout=subprocess.PIPE, stderr=log.open("a"), text=True, env=ENV)


def merged(paths: list[Path], out: Path) -> Path:
    steps = [step for p in paths for step in tomllib.loads(p.read_text())["steps"]]
    lines = [f"# {' + '.join(p.stem for p in paths)}: the steps of both, in order"]
    for step in steps:
        lines.append("\n[[steps]]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in step.items()]
    out.write_text("\n".join(lines) + "\n")
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="tiny-cpu")
    ap.add_argument("--run-budget", default="8e4tok")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--workdir", default=None, help="workspace for the campaign (default: a temporary directory)")
    args = ap.parse_args()

    work = Path(args.workdir or tempfile.mkdtemp(prefix="data-experiments-"))
    work.mkdir(parents=True, exist_ok=True)
    ENV["PRETRAINLAB_WORKSPACE"] = str(work.resolve())
    db = f"sqlite:///{work / 'ledger.db'}"
    log = work / "campaign.log"
    budget = args.seeds * (1 + len(RECIPES))
    t0 = time.time()
    loop = run_loop(["research", "start", "--recipe", args.recipe, "--strategy", "manual", "--decision", "paired",
                     "--seeds", str(args.seeds), "--screen-margin", "1000", "--budget-runs", str(budget),
                     "--run-budget", args.run_budget, "--parallel", str(args.parallel), "--name", "data-experiments",
                     "--db", db, "--json"], log)
    campaign = None
    while campaign is None:  # the campaign's row appears once the loop has started; queue the changes while the baseline runs
        time.sleep(1)
        if loop.poll() is not None:
            sys.exit(f"the campaign exited early: see {log}")
        rows = json.loads(cli("research", "status", "--json", db=db, check=False).stdout or "[]")
        campaign = rows[0]["id"] if rows else None
    for path in RECIPES:
        suggest(campaign, path, db)
    loop.communicate()
    first = json.loads(cli("research", "status", campaign, "--json", db=db).stdout)
    tested = {e["hypothesis"]: e for e in first["experiments"] if e["proposer"] == "bench"}
    ranked = sorted((p for p in RECIPES if (e := tested.get(p.read_text().splitlines()[0].lstrip("# ").strip())) and e["effect"] is not None),
                    key=lambda p: tested[p.read_text().splitlines()[0].lstrip("# ").strip()]["effect"])
    if len(ranked) >= 2:  # the two best changes, merged, against the same baseline
        both = merged(sorted(ranked[:2]), work / "merged.toml")
        suggest(campaign, both, db)
        loop = run_loop(["research", "resume", campaign, "--budget-runs", str(budget + args.seeds), "--db", db, "--json"], log)
        loop.communicate()
    status = json.loads(cli("research", "status", campaign, "--json", db=db).stdout)
    rows = [{k: e[k] for k in ("hypothesis", "runs", "mean_val_bpb", "verdict", "effect", "ci")}
            for e in status["experiments"] if e["proposer"] in ("bench", "campaign")]
    import torch

    meta = {"date": date.today().isoformat(), "command": " ".join(sys.argv), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "campaign": campaign, "elapsed_s": round(time.time() - t0), "workdir": str(work)}
    out = HERE / "results" / f"data-experiments-{meta['date']}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "experiments": rows, "status": status}, indent=1))
    print(f"\n{meta['date']} | `{meta['command']}` | campaign {campaign} | {meta['elapsed_s']} s\n")
    print("| change | runs | mean val_bpb | effect vs its parent (95% CI) | verdict |")
    print("|---|---|---|---|---|")
    for r in rows:
        eff = f"{r['effect']:+.4f} [{r['ci'][0]:+.4f}, {r['ci'][1]:+.4f}]" if r["effect"] is not None else "—"
        mean = f"{r['mean_val_bpb']:.4f}" if r["mean_val_bpb"] is not None else "—"
        print(f"| {r['hypothesis']} | {r['runs']} | {mean} | {eff} | {r['verdict']} |")
    print(f"\nraw results: {out}; ledger: {db}")


if __name__ == "__main__":
    main()
