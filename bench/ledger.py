"""Ledger speed: listing 10,000 runs (with and without filters) and registering one run.

    python bench/ledger.py                                  # SQLite; PostgreSQL too when
                                                            # PRETRAINLAB_TEST_PG_URL is set
    python bench/ledger.py --runs 10000 --repeat 7 --pg-url postgresql://USER@HOST/DB

For each backend, in a fresh ledger (a temp SQLite file; a new PostgreSQL schema, dropped
afterwards):
  1. synthesize --runs runs through the ledger API (Ledger.upsert_run, one transaction each,
     realistic recipe/summary/provenance JSON, 5 evals each) and report the write rate;
  2. time Ledger.list_runs: everything, the CLI's default page (50), and filtered by status,
     by a recipe key (matched in the recipe JSON), by campaign, by date, sorted by val_bpb;
     plus `pretrainlab runs list --limit 0 --json` end to end (a new process: start-up,
     query, JSON printing);
  3. train one real tiny run and time registering it (Ledger.register_run: read the four
     files, hash and scan metrics.jsonl, upsert) in that 10,000-run ledger, and again with
     its metrics.jsonl grown to 10,000 steps (registration reads the whole file).
Times are medians over --repeat. Results print as Markdown and go to bench/results/ledger-DATE.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from pretrainlab import api
from pretrainlab.ledger import Ledger
from pretrainlab.recipes import get_recipe


def synth_record(i: int, rng: random.Random, base_recipe: dict, campaign_ids: list[str]) -> tuple[dict, str | None]:
    recipe = json.loads(json.dumps(base_recipe))
    recipe["seed"] = i % 5
    recipe["model"]["n_layer"] = rng.choice([2, 4, 6, 8, 12])
    recipe["optim"]["muon_lr"] = rng.choice([0.02, 0.035, 0.05])
    status = rng.choices(["ok", "timeout", "diverged", "crashed", "preempted"], [80, 5, 8, 5, 2])[0]
    val = None if status in ("diverged", "crashed") else round(rng.uniform(2.5, 3.5), 4)
    domains = None if val is None else {d: val + rng.uniform(-0.2, 0.2) for d in ("code", "docs", "literature")}
    created = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=7 * i)
    run_id = uuid.UUID(int=rng.getrandbits(128)).hex[:12]
    summary = {"status": status, "val_bpb": val, "val_bpb_domains": domains, "params": 850_000, "tokens": 2_000_000, "steps": 1000,
               "seconds": 60.0, "wall_seconds": 70.0, "tokens_per_s": rng.uniform(2e4, 4e4), "mfu": None, "flops_per_token": 5e6,
               "peak_mem_mb": 400.0, "world_size": 1, "error": None, "finished_at": created.isoformat()}
    prov = {"run_id": run_id, "git_commit": "c3664d2c92cf859e48faf40d9334b38daef39a07", "git_dirty": False, "git_diff": "",
            "packages": {"python": "3.11.7", "torch": "2.13.0+cpu"}, "device": "AMD EPYC (2 cores)", "device_type": "cpu",
            "world_size": 1, "recipe_hash": f"{i:012x}", "seed": recipe["seed"]}
    run = {"run_id": run_id, "run_dir": f"/runs/{recipe['name']}-{i:05d}", "recipe_name": recipe["name"],
           "recipe_hash": prov["recipe_hash"],
           "recipe": recipe, "seed": recipe["seed"], "git_commit": prov["git_commit"], "git_diff": "", "provenance": prov,
           "device": prov["device"], "world_size": 1, "status": status, **{k: summary[k] for k in
           ("val_bpb", "params", "tokens", "steps", "seconds", "tokens_per_s", "mfu", "peak_mem_mb")},
           "summary": summary, "created_at": created.isoformat(timespec="microseconds"), "finished_at": summary["finished_at"]}
    evals = [{"step": s, "tokens": s * 2048, "val_bpb": (val or 4.0) + (1000 - s) / 1000, "domains": domains}
             for s in (200, 400, 600, 800, 1000)]
    series = {"metrics_path": f"{run['run_dir']}/metrics.jsonl", "num_rows": 1005, "num_evals": 5, "first_step": 1, "last_step": 1000,
              "file_size": 400_000, "sha256": "0" * 64}
    return {"run": run, "evals": evals, "series": series}, (campaign_ids[i % len(campaign_ids)] if i % 4 == 0 else None)


def median_time(fn, repeat: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def real_run(work: Path) -> Path:
    """One tiny real run on a small stdlib corpus (the same setup as the test suite)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import tiny_overrides

    from pretrainlab.data import ByteTokenizer, prepare_corpus
    from pretrainlab.data.builtin import code_documents, docs_documents

    code = code_documents(100_000)
    docs = code + docs_documents(100_000, exclude=[d.path for d in code])
    corpus = prepare_corpus(docs, ByteTokenizer(), work / "corpus", val_fraction=0.2, progress=False)
    run_dir, _ = api.train_run("tiny-cpu", tiny_overrides(corpus, **{"budget.tokens": 1024 * 20, "train.eval_every": 5}), work / "run",
                               echo=False, ledger=False)
    return run_dir


def grow_metrics(src: Path, dst: Path, steps: int) -> None:
    """A copy of a run whose metrics.jsonl has `steps` train rows (+ an eval every 500)."""
    import shutil

    shutil.copytree(src, dst)
    rows = [json.loads(line) for line in (src / "metrics.jsonl").read_text().splitlines()]
    train = next(r for r in rows if r["type"] == "train")
    ev = next(r for r in rows if r["type"] == "eval")
    rng = random.Random(steps)
    with open(dst / "metrics.jsonl", "w") as f:
        for s in range(1, steps + 1):  # a falling, noisy loss and a warm-up then warm-down lr, as a real run draws
            loss = 2.0 + 3.0 * math.exp(-s / (steps / 10)) + rng.gauss(0, 0.05)
            lr = train["lr"] * min(1.0, s / (steps / 50), (steps - s) / (steps / 3) + 1e-3)
            f.write(json.dumps({**train, "step": s, "tokens": s * 1024, "loss": round(loss, 5), "lr": lr}) + "\n")
            if s % 500 == 0:
                f.write(json.dumps({**ev, "step": s, "tokens": s * 1024, "val_bpb": round(loss / math.log(2) + 0.05, 5)}) + "\n")
    prov = json.loads((dst / "provenance.json").read_text())
    prov["run_id"] = uuid.uuid4().hex[:12]
    (dst / "provenance.json").write_text(json.dumps(prov))


def bench_backend(name: str, url: str, args, run_dir: Path, long_run: Path) -> dict:
    rng = random.Random(0)
    base = get_recipe("tiny-cpu").to_dict()
    out: dict = {"backend": name, "runs": args.runs}
    with Ledger(url) as lg:
        campaigns = [lg.create_campaign(f"campaign-{k}") for k in range(10)]
        t0 = time.perf_counter()
        for i in range(args.runs):
            rec, cid = synth_record(i, rng, base, campaigns)
            lg.upsert_run(rec, campaign_id=cid)
        out["write_runs_per_s"] = args.runs / (time.perf_counter() - t0)
        assert lg.count_runs() == args.runs
        start = datetime(2026, 1, 1, tzinfo=UTC)  # synth_record's first created_at
        queries = {
            "list all runs": dict(),
            "list, newest 50 (the CLI default)": dict(limit=50),
            "--status ok (all matches)": dict(status=["ok"]),
            "--recipe model.n_layer=4 (all matches)": dict(recipe=[("model.n_layer", "4")]),
            "--recipe model.n_layer=4 --limit 50": dict(recipe=[("model.n_layer", "4")], limit=50),
            "--campaign C (all matches)": dict(campaign=campaigns[2]),
            "--since (last 10% of runs)": dict(since=(start + timedelta(minutes=7 * args.runs * 0.9)).isoformat()),
            "--sort val_bpb --limit 50": dict(sort="val_bpb", limit=50),
        }
        out["list"] = []
        for label, kw in queries.items():
            seconds, rows = median_time(lambda kw=kw: lg.list_runs(**kw), args.repeat)
            out["list"].append({"query": label, "rows": len(rows), "seconds": seconds})
        env = {**os.environ, "PRETRAINLAB_DB": url}
        seconds, res = median_time(lambda: subprocess.run([sys.executable, "-m", "pretrainlab", "runs", "list", "--limit", "0", "--json"],
                                                          capture_output=True, env=env, check=True), max(3, args.repeat // 2))
        out["list"].append({"query": "`pretrainlab runs list --limit 0 --json` (new process)", "rows": len(json.loads(res.stdout)),
                            "seconds": seconds})
        for key, path in (("register_run_s", run_dir), ("register_long_run_s", long_run)):
            out[key], _ = median_time(lambda path=path: lg.register_run(path), args.repeat)
    return out


@contextmanager
def pg_schema(pg_url: str):
    """A fresh schema in that PostgreSQL, dropped afterwards; yields a ledger URL that uses it."""
    import psycopg

    schema = f"bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield f"{pg_url}{'&' if '?' in pg_url else '?'}options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--pg-url", default=os.environ.get("PRETRAINLAB_TEST_PG_URL"),
                    help="PostgreSQL to benchmark too (a schema is created and dropped)")
    args = ap.parse_args()
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "cpu")
    device = f"{cpu} ({os.cpu_count()} cores)"
    results = {"date": date.today().isoformat(), "device": device, "command": " ".join(["python", *sys.argv]), "backends": []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        run_dir = real_run(work)
        summary = json.loads((run_dir / "summary.json").read_text())
        results["real_run"] = {"steps": summary["steps"], "wall_seconds": summary["wall_seconds"],
                               "metrics_bytes": (run_dir / "metrics.jsonl").stat().st_size}
        long_run = work / "long"
        grow_metrics(run_dir, long_run, 10_000)
        results["long_run_metrics_bytes"] = (long_run / "metrics.jsonl").stat().st_size
        results["backends"].append(bench_backend("sqlite", str(work / "bench.db"), args, run_dir, long_run))
        if args.pg_url:
            with pg_schema(args.pg_url) as url:
                results["backends"].append(bench_backend("postgresql", url, args, run_dir, long_run))
    out_dir = Path(__file__).parent / "results"
    out_dir.mkdir(exist_ok=True)
    (out_dir / f"ledger-{results['date']}.json").write_text(json.dumps(results, indent=2))
    print_markdown(results)


def print_markdown(r: dict) -> None:
    names = [b["backend"] for b in r["backends"]]
    print(f"Command: `{r['command']}` | device: {r['device']} | date: {r['date']}\n")
    print(f"| {r['backends'][0]['runs']:,} runs | " + " | ".join(f"{n}: rows | {n}: seconds" for n in names) + " |")
    print("|---|" + "---:|---:|" * len(names))
    for i, q in enumerate(r["backends"][0]["list"]):
        cells = " | ".join(f"{b['list'][i]['rows']:,} | {b['list'][i]['seconds']:.3f}" for b in r["backends"])
        print(f"| {q['query']} | {cells} |")
    print()
    rr = r["real_run"]
    for b in r["backends"]:
        print(f"- {b['backend']}: writes {b['write_runs_per_s']:,.0f} runs/s (one transaction each); registering a real run "
              f"({rr['steps']} steps, {rr['metrics_bytes']:,}-byte metrics.jsonl, {rr['wall_seconds']:.1f} s of wall time) "
              f"takes {b['register_run_s'] * 1000:.1f} ms; with a 10,000-step metrics.jsonl "
              f"({r['long_run_metrics_bytes'] / 1e6:.1f} MB) {b['register_long_run_s'] * 1000:.1f} ms")


if __name__ == "__main__":
    main()
