"""Dashboard speed with a 10,000-run ledger: each page's server time, and its load in a browser.

    python bench/ui.py                                   # 10,000 runs on SQLite, chromium if installed
    python bench/ui.py --runs 2000 --big-campaign 200 --no-browser
    python bench/ui.py --pg-url postgresql://USER@HOST/DB   # the ledger on PostgreSQL (a schema, dropped after)
    python bench/ui.py --workspace /tmp/uilab             # built there once, then reused (SQLite only)

It builds a workspace in a temporary directory:
  - campaigns through the real campaign loop on the simulated runner (research/simulate.py):
    one large one (--big-campaign runs, TPE) and --campaigns smaller ones (--campaign-runs
    runs each, random and TPE, paired and screening decisions), their run directories where
    `research start` keeps them, so the campaign pages find them;
  - a real tiny training run, and copies of it whose metrics.jsonl holds 10,000 and 100,000
    steps (a run page draws every step);
  - synthetic finished runs outside any campaign (bench/ledger.py's records) up to --runs.
Then it serves the workspace with `pretrainlab ui` (the real command, in its own process)
and times:
  - the server: every page and data endpoint, one cold request then the median of
    --repeat, with the bytes sent;
  - chromium (Playwright with Debian's chromium, no download): each page from navigation
    until its content is drawn (the leaderboard and slot timeline, the curves, the doctor's
    findings), median of --browser-repeat fresh contexts.
Results print as Markdown and go to bench/results/ui-DATE.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from ledger import grow_metrics, pg_schema, real_run, synth_record  # noqa: E402 (bench/ledger.py)

from pretrainlab.ledger import Ledger  # noqa: E402
from pretrainlab.recipes import get_recipe  # noqa: E402


def build_campaign(url: str, workspace: Path, name: str, runs: int, strategy: str, decision: str, seed: int) -> tuple[str, float]:
    """One campaign of `runs` runs through the real loop on the simulated runner; (id, seconds)."""
    from pretrainlab.research.campaign import Campaign, CampaignConfig
    from pretrainlab.research.manage import make_strategy
    from pretrainlab.research.simulate import Landscape, SimulatedRunner

    t0 = time.perf_counter()
    cfg = CampaignConfig(recipe="tiny-cpu", run_budget="81920tok", budget_runs=runs, parallel=8, seeds=2, strategy=strategy,
                         decision=decision, strategy_seed=seed)
    base = cfg.base_recipe()
    with Ledger(url) as lg:
        cid = lg.create_campaign(name, goal=f"lowest val_bpb per run budget {cfg.run_budget}",
                                 config={"campaign": asdict(cfg), "base_recipe": base.to_dict()})
        campaign = Campaign(lg, cid, make_strategy(cfg, lg, cid, echo=False), SimulatedRunner(Landscape(seed=seed), cfg.parallel),
                            workspace / "runs" / "campaigns" / cid, echo=False)
        campaign.record_hidden_test = lambda: None  # simulated runs have no weights to score
        campaign.run(poll_s=1.0)
    return cid, time.perf_counter() - t0


def build_lab(url: str, workspace: Path, args) -> dict:
    """The ledger and workspace the pages are timed on; returns the ids the pages need."""
    lab: dict = {"campaigns": [], "build_seconds": {}}
    print(f"building: a {args.big_campaign}-run campaign", file=sys.stderr, flush=True)
    big, secs = build_campaign(url, workspace, "large TPE sweep", args.big_campaign, "optuna", "paired", 0)
    lab["big"], lab["build_seconds"]["big_campaign"] = big, secs
    kinds = [("random", "paired"), ("optuna", "screen"), ("random", "screen"), ("optuna", "paired")]
    t0 = time.perf_counter()
    for k in range(args.campaigns):
        strategy, decision = kinds[k % len(kinds)]
        print(f"building: campaign {k + 1}/{args.campaigns} ({args.campaign_runs} runs)", file=sys.stderr, flush=True)
        lab["campaigns"].append(build_campaign(url, workspace, f"{strategy} {decision} {k}", args.campaign_runs, strategy, decision, k + 1)[0])
    lab["build_seconds"]["small_campaigns"] = time.perf_counter() - t0
    print("building: a real run and its 10,000- and 100,000-step copies", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    real = real_run(workspace / "real")
    grow_metrics(real, workspace / "long-10k", 10_000)
    grow_metrics(real, workspace / "long-100k", 100_000)
    with Ledger(url) as lg:
        lab["real"], lab["long_10k"], lab["long_100k"] = (lg.register_run(p)["run_id"] for p in (real, workspace / "long-10k",
                                                                                                    workspace / "long-100k"))
        lab["build_seconds"]["real_runs"] = time.perf_counter() - t0
        have = lg.count_runs()
        fill = max(0, args.runs - have)
        print(f"building: {fill:,} synthetic runs ({have:,} so far)", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        rng, base = random.Random(0), get_recipe("tiny-cpu").to_dict()
        for i in range(fill):
            record, _ = synth_record(i, rng, base, [None])
            lg.upsert_run(record)
        lab["build_seconds"]["synthetic_runs"] = time.perf_counter() - t0
        lab["num_runs"] = lg.count_runs()
        lab["num_decisions"] = len(lg.list_decisions())
        lab["num_experiments"] = len(lg.list_experiments())
        decided = [e for e in lg.list_experiments(big) if e["status"] == "decided"]
        lab["experiment"] = decided[len(decided) // 2]["id"]
        lab["big_runs"] = sum(1 for _ in lg.list_runs(campaign=big, limit=0, columns=("run_id",)))
    lab["metrics_bytes"] = {k: (workspace / d / "metrics.jsonl").stat().st_size for k, d in (("long_10k", "long-10k"), ("long_100k", "long-100k"))}
    return lab


def pages(lab: dict) -> list[tuple[str, str, str | None]]:
    """(label, path, what the browser waits for: a CSS selector, or None for the load event;
    None as the whole entry's third item also marks a data endpoint the browser never opens)."""
    big, small, exp = lab["big"], lab["campaigns"][0] if lab["campaigns"] else lab["big"], lab["experiment"]
    board = "#board tr[data-experiment]"
    curves = "#chart-loss path.plc-line"
    return [
        ("campaigns", "/", None),
        (f"a campaign of {lab['big_runs']:,} runs", f"/campaigns/{big}", board),
        ("  its live update (polled every 2 s)", f"/campaigns/{big}/live.json", "data"),
        ("  its cluster findings", f"/campaigns/{big}/doctor", "data"),
        ("  its report", f"/campaigns/{big}/report", None),
        ("a smaller campaign", f"/campaigns/{small}", board),
        ("an experiment", f"/experiments/{exp}", None),
        ("runs (newest 200)", "/runs", None),
        ("runs, 5,000 of them", "/runs?limit=5000", None),
        ("runs of the large campaign, status ok", f"/runs?status=ok&campaign={big}", None),
        ("a real run (20 steps)", f"/runs/{lab['real']}", curves),
        ("a 10,000-step run", f"/runs/{lab['long_10k']}", curves),
        ("  its curves", f"/runs/{lab['long_10k']}/metrics.json", "data"),
        ("  its doctor", f"/runs/{lab['long_10k']}/doctor", "data"),
        ("a 100,000-step run", f"/runs/{lab['long_100k']}", curves),
        ("  its curves", f"/runs/{lab['long_100k']}/metrics.json", "data"),
        ("  its doctor", f"/runs/{lab['long_100k']}/doctor", "data"),
        ("compare three runs (20, 10,000, 100,000 steps)", f"/compare?runs={lab['real']},{lab['long_10k']},{lab['long_100k']}", curves),
        (f"decisions (all {lab['num_decisions']:,})", "/decisions", None),
        ("decisions by optuna, keep", "/decisions?who=optuna&verdict=keep", None),
        ("corpora", "/corpora", None),
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str) -> tuple[float, int]:
    """(seconds until the whole body arrived, bytes) for one GET, as a browser asks (gzip accepted)."""
    req = urllib.request.Request(url, headers={"accept-encoding": "gzip"})
    t0 = time.perf_counter()
    with urllib.request.urlopen(req, timeout=300) as r:
        body = r.read()
        if r.status != 200:
            raise RuntimeError(f"{url}: HTTP {r.status}")
    return time.perf_counter() - t0, len(body)


def time_server(base: str, lab: dict, repeat: int) -> list[dict]:
    out = []
    for label, path, _ in pages(lab):
        cold, size = get(base + path)
        warm = [get(base + path)[0] for _ in range(repeat)]
        out.append({"page": label, "path": path, "cold_s": cold, "median_s": statistics.median(warm), "max_s": max(warm), "bytes": size})
        print(f"  server {label}: {statistics.median(warm) * 1000:.0f} ms", file=sys.stderr, flush=True)
    return out


# true while a doctor's panel still says "diagnosing…" (polled: page.wait_for_function compiles its
# predicate with eval, which the dashboard's Content-Security-Policy forbids)
DIAGNOSING = "[...document.querySelectorAll('[data-doctor]')].some((e) => e.textContent.includes('diagnosing'))"


def time_browser(base: str, lab: dict, repeat: int, chromium: str) -> list[dict]:
    from playwright.sync_api import sync_playwright

    out = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium)
        try:
            for label, path, wait in pages(lab):
                if wait == "data":
                    continue
                times, nav = [], {}
                for _ in range(repeat):
                    context = browser.new_context(viewport={"width": 1400, "height": 1000})
                    page = context.new_page()
                    page.set_default_timeout(300_000)
                    t0 = time.perf_counter()
                    page.goto(base + path, wait_until="load")
                    if wait:
                        page.wait_for_selector(wait, state="attached")
                    while page.evaluate(DIAGNOSING):  # the doctor's findings load after the page
                        time.sleep(0.01)
                    times.append(time.perf_counter() - t0)
                    nav = page.evaluate("(() => { const n = performance.getEntriesByType('navigation')[0];"
                                        " return {response_end: n.responseEnd, dom_ready: n.domContentLoadedEventEnd, load: n.loadEventEnd}; })()")
                    context.close()
                out.append({"page": label, "path": path, "drawn_s": statistics.median(times), "max_s": max(times),
                            "html_s": nav["response_end"] / 1000, "load_s": nav["load"] / 1000})
                print(f"  browser {label}: {statistics.median(times) * 1000:.0f} ms", file=sys.stderr, flush=True)
        finally:
            browser.close()
    return out


def serve(workspace: Path, url: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "PRETRAINLAB_WORKSPACE": str(workspace), "PRETRAINLAB_HOME": str(workspace / "home")}
    proc = subprocess.Popen([sys.executable, "-m", "pretrainlab", "ui", "--db", url, "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=open(workspace / "ui.log", "wb"))
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            get(base + "/corpora")
            return proc, base
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"the dashboard did not start: {(workspace / 'ui.log').read_text()[-2000:]}") from None
            time.sleep(0.2)


def bench_backend(name: str, url: str, workspace: Path, args) -> dict:
    saved = workspace / "lab.json"
    if saved.exists():  # --workspace given and built before
        lab = json.loads(saved.read_text())
    else:
        lab = build_lab(url, workspace, args)
        saved.write_text(json.dumps(lab))
    proc, base = serve(workspace, url)
    try:
        result = {"backend": name, "lab": {k: v for k, v in lab.items() if k not in ("campaigns",)},
                  "server": time_server(base, lab, args.repeat)}
        chromium = next((p for p in map(shutil.which, ("chromium", "chromium-browser")) if p), None)
        if args.browser and chromium:
            result["browser"] = time_browser(base, lab, args.browser_repeat, chromium)
        elif args.browser:
            result["browser_skipped"] = "no chromium on PATH (Debian's chromium package)"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=10_000, help="runs in the ledger in all (default 10,000)")
    ap.add_argument("--big-campaign", type=int, default=1000, help="runs of the large campaign (default 1,000)")
    ap.add_argument("--campaigns", type=int, default=8, help="smaller campaigns (default 8)")
    ap.add_argument("--campaign-runs", type=int, default=100, help="runs of each smaller campaign (default 100)")
    ap.add_argument("--repeat", type=int, default=5, help="warm requests per page (default 5)")
    ap.add_argument("--browser-repeat", type=int, default=3, help="browser loads per page (default 3)")
    ap.add_argument("--no-browser", dest="browser", action="store_false", help="server times only")
    ap.add_argument("--pg-url", default=None, help="put the ledger on this PostgreSQL (a schema is created and dropped)")
    ap.add_argument("--workspace", type=Path, help="build the lab here and keep it; a later run with the same directory reuses it "
                    "(SQLite; the other build flags are then ignored)")
    args = ap.parse_args()
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "cpu")
    results = {"date": date.today().isoformat(), "device": f"{cpu} ({os.cpu_count()} cores)", "command": " ".join(["python", *sys.argv])}
    with tempfile.TemporaryDirectory() as tmp:
        workspace = Path(tmp)
        if args.workspace is not None:
            if args.pg_url:
                raise SystemExit("--workspace keeps a SQLite lab; it cannot be combined with --pg-url")
            workspace = args.workspace.resolve()
            workspace.mkdir(parents=True, exist_ok=True)
        os.environ["PRETRAINLAB_WORKSPACE"] = str(workspace)  # the campaign loops write here; the server reads here
        os.environ["PRETRAINLAB_HOME"] = str(workspace / "home")
        if args.pg_url:
            with pg_schema(args.pg_url) as url:
                results.update(bench_backend("postgresql", url, workspace, args))
        else:
            results.update(bench_backend("sqlite", str(workspace / "lab.db"), workspace, args))
    out_dir = HERE / "results"
    out_dir.mkdir(exist_ok=True)
    (out_dir / f"ui-{results['date']}-{results['backend']}.json").write_text(json.dumps(results, indent=2))
    print_markdown(results)


def print_markdown(r: dict) -> None:
    lab = r["lab"]
    print(f"Command: `{r['command']}` | device: {r['device']} | date: {r['date']} | ledger: {r['backend']}, {lab['num_runs']:,} runs, "
          f"{lab['num_experiments']:,} experiments, {lab['num_decisions']:,} decisions\n")
    browser = {b["path"]: b for b in r.get("browser", [])}
    print("| page | server, first | server, median | sent | browser: drawn (median) |")
    print("|---|---:|---:|---:|---:|")
    for s in r["server"]:
        b = browser.get(s["path"])
        drawn = f"{b['drawn_s'] * 1000:,.0f} ms" if b else "-"
        print(f"| {s['page']} | {s['cold_s'] * 1000:,.0f} ms | {s['median_s'] * 1000:,.0f} ms | {s['bytes'] / 1e3:,.0f} kB | {drawn} |")


if __name__ == "__main__":
    main()
