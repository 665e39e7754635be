"""What the per-tree compiler cache saves a campaign: the same run trained several times in a row
through the campaign runner (job process, sandbox, lab scoring) with train.compile=on.

    python bench/compile_cache.py [--recipe tiny-cpu] [--runs 3] [--tokens 20000]

Each run is a campaign job of the unpatched code in one runs folder, so they share
RUN_PARENT/.compile-cache/<tree hash> (runners/job.py): the first compiles with an empty cache,
the others find what it generated. Prints each run's compile warm-up (from its log), its
training wall time and the job's, as JSON; results with device and date go in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import tempfile
import time
from datetime import date
from pathlib import Path

from pretrainlab.runners import Job, LocalRunner


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="tiny-cpu")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=20_000)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-compile-cache-"))
    runner = LocalRunner(num_slots=1, log_dir=root / "logs", threads_per_slot=args.threads)
    overrides = ["train.compile=on", f"budget.tokens={args.tokens}", "budget.seconds=0", f"train.num_threads={args.threads}"]
    rows = []
    for i in range(args.runs):
        run_dir = root / "runs" / f"run{i}"
        t0 = time.perf_counter()
        runner.submit(Job(f"run{i}", args.recipe, run_dir, overrides, score_path=root / "scores" / f"run{i}.json"))
        while not (done := runner.wait()):
            pass
        (result,) = done
        job_s = time.perf_counter() - t0
        log = (run_dir / "log.txt").read_text()
        warm = re.search(r"compiled and warmed up in ([0-9.]+)s", log)
        rows.append({"run": i, "status": result.status, "warmup_s": float(warm.group(1)) if warm else None,
                     "train_wall_s": round((result.summary or {}).get("wall_seconds") or 0, 1), "job_s": round(job_s, 1)})
        print(json.dumps(rows[-1]), flush=True)
    caches = sorted(p.name for p in (root / "runs" / ".compile-cache").iterdir())
    print(json.dumps({"date": str(date.today()), "machine": platform.processor() or platform.machine(), "recipe": args.recipe,
                      "tokens": args.tokens, "threads": args.threads, "caches": caches, "runs": rows}, indent=1))


if __name__ == "__main__":
    main()
