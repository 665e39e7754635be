"""Research-loop benchmarks on the tiny-cpu task (docs/benchmarks.md, "Research loop").

    python bench/research.py --runs 40 --run-budget 8e4tok --campaign-seeds 3 --parallel 2

1. Equal compute: each arm gets the same training compute: `--runs` runs of the same
   per-run budget (a run stopped early counts the share of its budget it used). Arms:
   `screen` (the default loop: optuna proposals, 1-seed screens that move the incumbent,
   rung stops, merges, then the confirmation phase and its claims), `greedy-1-seed` (the
   autoresearch rule with optuna proposals), `random-greedy` (random proposals, keep if
   lower: random search), and the older replicated rules (`optuna-paired`,
   `random-paired`, `optuna-welch`). Campaigns run interleaved by campaign seed (seed 0 of
   every arm, then seed 1, ...), so partial results compare arms on the same seeds. Each
   campaign's final recipe is re-trained on `--eval-seeds` fresh seeds (1000, 1001, ...):
   "best val_bpb reached" without the winner's curse of reporting the luckiest run.
2. False discoveries on A/A: `--aa-runs` seeds of the unchanged recipe. Random disjoint
   draws play the confirmation phase's claims (the final recipe against the baseline and
   two ablations, 2 seeds each, one pooled noise estimate), the paired test over 3 pairs,
   Welch 3 vs 3 and greedy 1 vs 1. Any "improvement" is false.
3. `--simulated N` runs the same arms in process on N simulated landscapes
   (research/simulate.py: seed-matched noise measured on tiny-cpu) in seconds, plus N
   campaigns of the default loop on a flat landscape (no change has any effect: every
   recorded claim is false).
4. `--paired-noise`: the noise the default loop's screens work against. The baseline and six
   one-key changes of tiny-cpu, each on seeds 0-3, 2 processes at a time: the std over seeds
   of each change's seed-matched difference to the baseline (final, and at the half-budget
   rung), against the baseline's own seed std.
5. `--utilisation-only`: the campaigns alone (no re-training, no A/A), e.g.

    python bench/research.py --utilisation-only --runs 16 --run-budget 60s --campaign-seeds 3 --arms screen

   With `--runner ray --ray-nodes 4` the campaigns run on a Ray cluster started on this
   machine for the benchmark: a head node with no CPU for runs and 4 worker nodes of 1 CPU
   each (`ray start`, one process group per node), so each of the 4 slots is a node:

    python bench/research.py --utilisation-only --runner ray --ray-nodes 4 --parallel 4 --runs 16 --run-budget 16384tok --campaign-seeds 1 --arms screen

Results: bench/results/research[-utilisation|-simulated]-DATE.json and Markdown on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np

from pretrainlab import api
from pretrainlab.config import Recipe
from pretrainlab.ledger import Ledger
from pretrainlab.research import manage
from pretrainlab.research.campaign import CampaignConfig, handed_back
from pretrainlab.research.space import recipe_diff
from pretrainlab.research.stats import IMPROVEMENT, compare, greedy_single_seed, pooled_paired
from pretrainlab.train.telemetry import device_name

ARMS = {"screen": dict(strategy="optuna", decision="screen"), "greedy-1-seed": dict(strategy="optuna", decision="greedy"),
        "random-greedy": dict(strategy="random", decision="greedy"), "optuna-paired": dict(strategy="optuna", decision="paired"),
        "random-paired": dict(strategy="random", decision="paired"), "optuna-welch": dict(strategy="optuna", decision="welch"),
        "screen-no-sweep": dict(strategy="optuna", decision="screen", sweep=False),
        "screen-random": dict(strategy="random", decision="screen"),
        "screen-adopt-0.7": dict(strategy="optuna", decision="screen", adopt_p=0.7),
        "screen-adopt-0.85": dict(strategy="optuna", decision="screen", adopt_p=0.85),
        "screen-rung-0.03": dict(strategy="optuna", decision="screen", rung_stop=0.03)}


def baseline_recipe(ledger, campaign_id) -> Recipe:
    """The campaign's starting recipe (as it ran: with the campaign's eval rungs)."""
    return Recipe.from_dict(ledger.get_campaign(campaign_id)["config"]["base_recipe"])


_RETRAINED: dict[tuple[str, int], float] = {}  # (recipe hash, seed) -> val_bpb: campaigns often end on the same recipe


def retrain(recipe: Recipe, seeds: list[int], workdir: Path) -> list[float]:
    path = workdir / f"recipe-{recipe.hash()}.json"
    path.write_text(json.dumps(recipe.to_dict()))
    for s in seeds:
        if (recipe.hash(), s) not in _RETRAINED:
            run = api.train_run(str(path), [f"seed={s}"], workdir / f"eval-{recipe.hash()}-{s}", echo=False)
            _RETRAINED[recipe.hash(), s] = run[1]["val_bpb"]
    return [_RETRAINED[recipe.hash(), s] for s in seeds]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def local_ray_cluster(num_nodes: int):
    """A Ray cluster on this machine: a head node with no CPU for runs and `num_nodes` worker
    nodes of 1 CPU each, each `ray start --block` in a process group of its own; yields its
    address and stops every node (and the workers Ray started) on exit."""
    import ray

    ray_bin = shutil.which("ray", path=str(Path(sys.executable).parent)) or shutil.which("ray")
    if ray_bin is None:
        sys.exit("--ray-nodes needs the `ray` command: pip install 'pretrainlab[ray]'")
    temp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # short: Ray's socket paths must fit in 107 characters
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    ip, port = ray.util.get_node_ip_address(), _free_port()
    common = ["--block", f"--temp-dir={temp}", "--object-store-memory=100000000", "--disable-usage-stats"]
    procs = []

    def start(name: str, args: list[str]) -> None:
        with open(temp / f"{name}.log", "w") as log:
            procs.append(subprocess.Popen([ray_bin, "start", *args, *common, f"--dashboard-agent-listen-port={_free_port()}"], env=env,
                                          stdout=log, stderr=subprocess.STDOUT, start_new_session=True))

    def listening() -> bool:
        with socket.socket() as s:
            return s.connect_ex((ip, port)) == 0

    def wait(what: str, ready, log: str) -> None:  # a loaded 2-core machine takes a minute or more per node
        deadline = time.time() + 180
        while not ready():
            if time.time() > deadline or procs[-1].poll() is not None:
                sys.exit(f"{what} did not start: {(temp / log).read_text()[-2000:]}")
            time.sleep(0.5)

    try:
        start("head", ["--head", "--num-cpus=0", f"--port={port}", "--include-dashboard=false",
                       f"--ray-client-server-port={_free_port()}", f"--dashboard-port={_free_port()}"])
        wait("the Ray head", listening, "head.log")
        os.environ.update({k: v for k, v in env.items() if k.startswith("RAY_")})
        ray.init(address=f"{ip}:{port}", log_to_driver=False)
        workers = lambda: sum(n["Alive"] and n["Resources"].get("CPU", 0) >= 1 for n in ray.nodes())
        for i in range(num_nodes):  # one at a time: nodes started together time out registering on a loaded machine
            start(f"node{i}", [f"--address={ip}:{port}", "--num-cpus=1"])
            wait(f"Ray worker node {i}", lambda: workers() > i, f"node{i}.log")
        ray.shutdown()  # the campaign's runner connects by itself, as `research start --ray-address` does
        yield f"{ip}:{port}"
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        for entry in Path("/proc").iterdir():  # the workers Ray started, each in a process group of its own
            with contextlib.suppress(OSError):
                if entry.name.isdigit() and f"{temp}/" in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    os.kill(int(entry.name), signal.SIGKILL)
        shutil.rmtree(temp, ignore_errors=True)


def utilisation(ledger, campaign_id: str) -> dict:
    """A campaign's last loop's slot utilisation and idle slot-time (Campaign.closing_stats)."""
    c = ledger.get_campaign(campaign_id)["config"]["closing"][-1]
    out = {"queued": c["utilisation_queued"], "until_last_start": c["utilisation_until_last_start"], "overall": c["utilisation"],
           "idle_s": c["idle_s"], "seconds": c["seconds"]}
    tries = ledger.list_attempts(campaign_id)
    if tries and "busy_s" in c:  # a slot counts as busy from the runner taking the run; a Ray slot may then wait for a node
        place = sum(a["place_s"] for a in tries)
        overhead = c["idle_s"].get("overhead", 0.0)
        out |= {"busy_s": c["busy_s"], "place_s": round(place, 1), "attempts": len(tries),
                "queued_placed": (c["busy_s"] - place) / max(1e-9, c["busy_s"] + overhead)}
    return out


def compute_used(ledger, campaign_id: str, budget_tokens: int) -> float:
    """Full-run equivalents the campaign trained: a run stopped early counts its share."""
    rows = ledger.list_runs(campaign=campaign_id, limit=0, columns=("run_id", "status", "tokens"))
    return sum(1.0 if r["status"] == "ok" or not r["tokens"] else min(1.0, r["tokens"] / budget_tokens) for r in rows)


def claims_of(ledger, campaign_id: str) -> list[dict]:
    out = []
    for d in ledger.list_decisions(campaign_id=campaign_id):
        ev = d.get("evidence") or {}
        if ev.get("stage") == "claim":
            out.append({"claim": ev.get("claim"), "group": ev.get("group"), "verdict": d["verdict"], "effect": d["effect"],
                        "ci": [d["ci_low"], d["ci_high"]]})
    return out


def campaign_row(ledger, cid: str, arm: str, values: list[float], budget_tokens: int, wall_s: float) -> dict:
    base = baseline_recipe(ledger, cid)
    recipe = handed_back(ledger, cid)
    decisions = ledger.list_decisions(campaign_id=cid)
    adopted = sum(d["verdict"] == "keep" and (d.get("evidence") or {}).get("stage") not in ("claim", "prune") for d in decisions) - 1
    return {"arm": arm, "campaign": cid, "final_val_bpb": statistics.fmean(values), "final_values": values, "kept_changes": adopted,
            "recipe_hash": recipe.hash(), "final_diff": {k: list(v) for k, v in recipe_diff(base, recipe).items()},
            "decisions": len(decisions), "runs": compute_used(ledger, cid, budget_tokens), "claims": claims_of(ledger, cid),
            "hidden_test": ledger.get_campaign(cid)["config"].get("hidden_test"), "wall_s": round(wall_s)}


def aa_claims(aa: list[float], trials: int, rng) -> dict:
    """A/A false discoveries of each rule, on random disjoint draws of real replicates."""
    false = {"claims (pooled, 2 seeds, 4 recipes)": 0, "paired 3 pairs": 0, "welch 3v3": 0, "greedy 1v1": 0}
    comparisons = {"final": ("baseline", "final"), "a": ("without a", "final"), "b": ("without b", "final")}
    claims = 0
    for _ in range(trials):
        idx = rng.permutation(len(aa))
        if len(aa) < 8:  # the claims' draw needs 4 recipes x 2 seeds of distinct runs
            break
        runs = {name: {0: aa[idx[2 * i]], 1: aa[idx[2 * i + 1]]} for i, name in enumerate(("baseline", "final", "without a", "without b"))}
        results = pooled_paired(runs, comparisons)
        claims += len(results)
        false["claims (pooled, 2 seeds, 4 recipes)"] += sum(c.verdict == IMPROVEMENT for c in results.values())
        a, b = [aa[i] for i in idx[:3]], [aa[i] for i in idx[3:6]]
        false["welch 3v3"] += compare(a, b).verdict == IMPROVEMENT
        false["paired 3 pairs"] += compare(a, b, paired=True).verdict == IMPROVEMENT
        false["greedy 1v1"] += greedy_single_seed(aa[idx[0]], aa[idx[1]]) == IMPROVEMENT
    return {k: v / (claims if k.startswith("claims") else trials) for k, v in false.items() if claims or not k.startswith("claims")}


NOISE_CHANGES = {"base": [], "lr x2": ["optim.lr=0.03"], "muon_lr x2": ["optim.muon_lr=0.06"], "muon_lr /2": ["optim.muon_lr=0.0175"],
                 "width 192": ["model.n_embd=192", "model.n_head=6"], "warmdown 0.7": ["optim.warmdown_frac=0.7"],
                 "batch x2": ["train.batch_tokens=4096"]}


def paired_noise(args, meta: dict, out: Path) -> None:
    import subprocess
    from concurrent.futures import ThreadPoolExecutor

    from pretrainlab.research.config import run_budget_overrides
    from pretrainlab.research.early_stop import eval_curve

    work = Path(tempfile.mkdtemp(prefix="pretrainlab-bench-noise-"))
    seeds = range(4)

    def train(job):
        name, seed = job
        sets = [*run_budget_overrides(args.run_budget), "train.eval_every_frac=0.5", f"seed={seed}", "train.num_threads=1",
                *NOISE_CHANGES[name]]
        cmd = [sys.executable, "-m", "pretrainlab", "train", "--recipe", "tiny-cpu", "--out", str(work / f"{name}-s{seed}"), "--json"]
        subprocess.run(cmd + [a for o in sets for a in ("--set", o)], check=True, capture_output=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1", "PRETRAINLAB_NO_LEDGER": "1"})

    with ThreadPoolExecutor(args.parallel) as pool:
        list(pool.map(train, [(n, s) for s in seeds for n in NOISE_CHANGES]))
    final = {(n, s): json.loads((work / f"{n}-s{s}" / "summary.json").read_text())["val_bpb"] for n in NOISE_CHANGES for s in seeds}
    rung = {(n, s): eval_curve(work / f"{n}-s{s}", 0.5)[1] for n in NOISE_CHANGES for s in seeds}
    rows = {}
    for n in NOISE_CHANGES:
        if n == "base":
            continue
        d = [final[n, s] - final["base", s] for s in seeds]
        r = [rung[n, s] - rung["base", s] for s in seeds]
        rows[n] = {"final_diffs": d, "rung_diffs": r, "final_sd": statistics.stdev(d), "rung_sd": statistics.stdev(r)}
    base = [final["base", s] for s in seeds]
    result = {"meta": meta, "seed_std": statistics.stdev(base), "rung_seed_std": statistics.stdev([rung["base", s] for s in seeds]),
              "changes": rows, "pooled_paired_sd": float(np.sqrt(np.mean([r["final_sd"] ** 2 for r in rows.values()])))}
    (out / f"research-paired-noise-{meta['date']}{args.tag}.json").write_text(json.dumps(result, indent=2))
    print(f"\n{meta['date']} | {meta['device']} | `{meta['command']}`\n")
    print("| change (seeds 0-3) | mean difference to the baseline | std of the paired difference | at the half-budget rung: mean, std |")
    print("|---|---|---|---|")
    for n, r in rows.items():
        print(f"| {n} | {statistics.fmean(r['final_diffs']):+.4f} | {r['final_sd']:.4f} | {statistics.fmean(r['rung_diffs']):+.4f}, {r['rung_sd']:.4f} |")
    print(f"\nbaseline seed std {result['seed_std']:.4f} (rung {result['rung_seed_std']:.4f}); paired-difference std pooled over the "
          f"changes {result['pooled_paired_sd']:.4f}")


def simulated(args, arms: dict, meta: dict, out: Path) -> None:
    """The arms on simulated landscapes: the true value of each final recipe, in seconds."""
    from pretrainlab.research.simulate import Landscape, simulate

    results = {"arms": {}, "aa": {}}
    for arm, kw in arms.items():
        gains = []
        for i in range(args.simulated):
            cfg = CampaignConfig(recipe="tiny-cpu", run_budget=args.run_budget, budget_runs=args.runs, parallel=args.parallel, seeds=3,
                                 strategy_seed=i, **kw)
            r = simulate(cfg, Landscape(seed=100 + i), tempfile.mkdtemp(prefix="pretrainlab-sim-"))
            gains.append(r["final_true"] - r["base_true"])
        results["arms"][arm] = gains
        print(f"{arm}: mean true gain over the starting recipe {statistics.fmean(gains):+.4f} ({args.simulated} landscapes)", file=sys.stderr)
    claims = kept = any_false = runs = 0
    for i in range(args.simulated):
        cfg = CampaignConfig(recipe="tiny-cpu", run_budget=args.run_budget, budget_runs=args.runs, parallel=args.parallel, seeds=3,
                             strategy_seed=i, strategy="optuna")
        r = simulate(cfg, Landscape(seed=500 + i, flat=True), tempfile.mkdtemp(prefix="pretrainlab-sim-"))
        k = sum(c["verdict"] == "keep" for c in r["claims"])
        claims, kept, any_false, runs = claims + len(r["claims"]), kept + k, any_false + (k > 0), runs + r["compute_used"]
    results["aa"] = {"campaigns": args.simulated, "claims": claims, "false_claims": kept, "campaigns_with_a_false_claim": any_false,
                     "runs": runs}
    (out / f"research-simulated-{meta['date']}.json").write_text(json.dumps({"meta": meta, **results}, indent=2))
    print(f"\n{meta['date']} | simulated | `{meta['command']}`\n")
    print("| arm | mean true gain over the starting recipe | vs greedy-1-seed (paired by landscape) | landscapes won vs greedy |")
    print("|---|---|---|---|")
    ref = results["arms"].get("greedy-1-seed")
    for arm, gains in results["arms"].items():
        if ref:
            d = [a - b for a, b in zip(gains, ref)]
            vs = f"{statistics.fmean(d):+.4f} ± {statistics.stdev(d) / len(d) ** 0.5:.4f}"
            won = f"{sum(x < 0 for x in d)}/{len(d)}"
        else:
            vs = won = "-"
        print(f"| {arm} | {statistics.fmean(gains):+.4f} | {vs} | {won} |")
    print(f"\nA/A (flat landscape, default loop, {args.simulated} campaigns): {kept} of {claims} claims recorded as improvements "
          f"({kept / max(1, claims):.1%}); {any_false} campaigns with any false claim; {runs / max(1, claims):.1f} runs per tested claim")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=40, help="training runs per campaign (equal compute)")
    ap.add_argument("--run-budget", default="8e4tok")
    ap.add_argument("--campaign-seeds", type=int, default=3)
    ap.add_argument("--first-seed", type=int, default=0, help="first campaign seed (to extend an earlier benchmark)")
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--eval-seeds", type=int, default=3, help="fresh seeds to re-train each final recipe on")
    ap.add_argument("--aa-runs", type=int, default=12)
    ap.add_argument("--arms", default="screen,greedy-1-seed,random-greedy", help=f"comma-separated subset of {', '.join(ARMS)}")
    ap.add_argument("--utilisation-only", action="store_true", help="run the campaigns only: slot utilisation, no re-training or A/A")
    ap.add_argument("--runner", default="local", choices=("local", "ray"), help="where the campaigns' runs go")
    ap.add_argument("--ray-nodes", type=int, default=0,
                    help="--runner ray: start a Ray cluster here of a head and this many 1-CPU worker nodes for the benchmark")
    ap.add_argument("--simulated", type=int, default=0, help="run the arms on this many simulated landscapes instead (in process)")
    ap.add_argument("--paired-noise", action="store_true", help="measure the paired-difference noise of one-key changes instead")
    ap.add_argument("--tag", default="", help="appended to the results file name")
    ap.add_argument("--reuse", action="append", default=[], metavar="FILE:ARM,ARM",
                    help="take these arms' campaigns from an earlier results file where it has them (same code for those arms); repeatable")
    args = ap.parse_args()
    arms = {a: ARMS[a] for a in args.arms.split(",")}
    meta = {"date": date.today().isoformat(), "device": device_name(__import__("torch").device("cpu")), "platform": platform.platform(),
            "command": " ".join(sys.argv), "runner": args.runner, "ray_nodes": args.ray_nodes or None}
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    if args.simulated:
        return simulated(args, arms, meta, out)
    if args.paired_noise:
        return paired_noise(args, meta, out)
    if args.ray_nodes:
        if args.runner != "ray":
            sys.exit("--ray-nodes starts a Ray cluster for --runner ray: add --runner ray")
        with local_ray_cluster(args.ray_nodes) as address:
            return campaigns(args, arms, meta, out, address)
    return campaigns(args, arms, meta, out, None)


def campaigns(args, arms, meta, out, ray_address: str | None):
    work = Path(tempfile.mkdtemp(prefix="pretrainlab-bench-research-"))
    os.environ["PRETRAINLAB_WORKSPACE"] = str(work)
    os.environ.pop("ANTHROPIC_API_KEY", None)
    ledger = Ledger()
    results = {"arms": {a: [] for a in arms}, "aa": {}}
    result_file = out / f"research{'-utilisation' if args.utilisation_only else ''}-{meta['date']}{args.tag}.json"
    save = lambda: result_file.write_text(json.dumps({"meta": meta, **results}, indent=2))  # partial results survive an interruption

    # 1. equal compute, several campaign seeds per arm, interleaved by seed
    eval_seeds = list(range(1000, 1000 + args.eval_seeds))
    base = None
    reused = {}
    for spec in args.reuse:
        path, names = spec.rsplit(":", 1)
        earlier = json.loads(Path(path).read_text())
        meta.setdefault("reused", []).append({"file": path, "command": earlier["meta"]["command"], "date": earlier["meta"]["date"],
                                              "arms": names.split(",")})
        for name in names.split(","):
            for row in earlier["arms"].get(name, []):
                reused[name, row["strategy_seed"]] = {**row, "reused_from": path}
                for h, s, v in zip([row["recipe_hash"]] * len(row["final_values"]), eval_seeds, row["final_values"]):
                    _RETRAINED[h, s] = v
    for cs in range(args.first_seed, args.first_seed + args.campaign_seeds):
        for arm, kw in arms.items():
            if (arm, cs) in reused:
                results["arms"][arm].append(reused[arm, cs])
                save()
                continue
            cfg = CampaignConfig(recipe="tiny-cpu", run_budget=args.run_budget, budget_runs=args.runs, parallel=args.parallel,
                                 seeds=3, strategy_seed=cs, runner=args.runner, ray_address=ray_address, **kw)
            started = time.time()
            cid = manage.start(cfg, name=f"{arm} seed {cs}", echo=False)
            wall = time.time() - started
            print(f"{arm} seed {cs}: {manage.status(cid)['slots']}", file=sys.stderr)
            base = baseline_recipe(ledger, cid)
            if args.utilisation_only:
                results["arms"][arm].append({"campaign": cid, "utilisation": utilisation(ledger, cid)})
                save()
                continue
            values = retrain(handed_back(ledger, cid), eval_seeds, work)
            row = {**campaign_row(ledger, cid, arm, values, base.budget.tokens, wall), "strategy_seed": cs, "utilisation": utilisation(ledger, cid)}
            results["arms"][arm].append(row)
            print(f"{arm} seed {cs}: final {row['final_val_bpb']:.4f} ({row['kept_changes']} adopted, {row['runs']:.2f} runs, "
                  f"{len(row['claims'])} claims: {row['final_diff']})", file=sys.stderr)
            save()
    if args.utilisation_only:
        print_utilisation(meta, results)
        return
    results["baseline_values"] = retrain(base, eval_seeds, work)
    save()

    # 2. A/A false discoveries on real replicates
    aa = retrain(base, list(range(2000, 2000 + args.aa_runs)), work)
    trials = 2000
    results["aa"] = {"runs": aa, "seed_std": statistics.stdev(aa), "trials": trials, **aa_claims(aa, trials, np.random.default_rng(0))}
    save()
    print_table(args, meta, results)


def print_table(args, meta, results):
    print(f"\n{meta['date']} | {meta['device']} | `{meta['command']}`\n")
    print(f"baseline (tiny-cpu, {args.run_budget} runs) on {args.eval_seeds} fresh seeds: {statistics.fmean(results['baseline_values']):.4f}\n")
    print("| arm | final val_bpb per campaign seed (fresh-seed mean) | mean | adopted / kept changes | runs used | claims recorded (tested) |")
    print("|---|---|---|---|---|---|")
    for arm, rows in results["arms"].items():
        finals = [r["final_val_bpb"] for r in rows]
        claims = [c for r in rows for c in r["claims"]]
        recorded = sum(c["verdict"] == "keep" for c in claims)
        print(f"| {arm} | {', '.join(f'{v:.4f}' for v in finals)} | {statistics.fmean(finals):.4f} | "
              f"{statistics.fmean(r['kept_changes'] for r in rows):.1f} | {statistics.fmean(r['runs'] for r in rows):.2f} | "
              f"{recorded} ({len(claims)}) |")
    for arm, rows in results["arms"].items():
        claims = [c for r in rows for c in r["claims"]]
        decided = sum(c["verdict"] != "inconclusive" for c in claims)
        gaps = [r["hidden_test"]["overfitting_gap"] for r in rows if r.get("hidden_test")]
        if claims or gaps:
            print(f"{arm}: {statistics.fmean(r['runs'] for r in rows) * len(rows) / max(1, decided):.1f} runs per decided claim; "
                  f"hidden-test gap (gain on val - gain on test) " + ", ".join(f"{g:+.4f}" for g in gaps))
    a = results["aa"]
    print(f"\nA/A ({args.aa_runs} seeds of the unchanged recipe, seed std {a['seed_std']:.4f}, {a['trials']} random draws): "
          + ", ".join(f"{k} {v:.1%}" for k, v in a.items() if k not in ("runs", "seed_std", "trials")))


def print_utilisation(meta, results):
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
    placed = [(r["campaign"], r["utilisation"]) for rows in results["arms"].values() for r in rows if "place_s" in r["utilisation"]]
    for cid, u in placed:
        print(f"\ncampaign {cid}: {u['attempts']} attempts; {u['place_s']:.0f} slot-seconds between the runner taking a run and a node "
              f"starting it (of {u['busy_s']:.0f} busy); while work was queued, counting that wait as idle: {u['queued_placed']:.1%}")


if __name__ == "__main__":
    main()
