"""Wall time and machine CPU of N tiny scored campaign jobs, one after another, through LocalRunner: what the lab's
per-run machinery (the job process, the sandbox, the cgroup caps, the lab's scoring) costs a run, with hardly any
training in it.

    python bench/job_overhead.py                        # this checkout (runs of the lab's code forked from a warm host)
    python bench/job_overhead.py --fresh                # each run's trainer a fresh process (LocalRunner(warm=False))
    python bench/job_overhead.py --src /tmp/old/src     # another checkout's src (e.g. a git worktree of an older commit)

Run them interleaved on an otherwise idle machine; compare wall seconds and CPU seconds (every process on the machine,
from /proc/stat: the sandboxed trainers and a warm host are nobody's children here). Needs the builtin corpus
(`pretrainlab data prepare --builtin`).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import shutil, sys, time
from pathlib import Path
sys.path.insert(0, {tests!r})
from conftest import tiny_overrides
from pretrainlab.data import builtin_corpus_dir
from pretrainlab.runners import Job, LocalRunner

out = Path({out!r})
overrides = tiny_overrides(builtin_corpus_dir("byte"), **{{"budget.seconds": 0, "budget.tokens": 4096}})
runner = LocalRunner(num_slots=1, log_dir=out / "logs", **({{"warm": False}} if {fresh} else {{}}))
t0 = time.time()
for i in range({jobs}):
    runner.submit(Job(f"j{{i}}", "tiny-cpu", out / "runs" / f"j{{i}}", overrides, score_path=out / "scores" / f"j{{i}}.json"))
    for result in runner.wait():
        assert result.status == "ok", result.stderr_tail[-500:]
print(f"{{time.time() - t0:.1f}}")
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", type=Path, default=ROOT / "src", help="the pretrainlab source tree to time (default: this one)")
    ap.add_argument("--jobs", type=int, default=4)
    ap.add_argument("--fresh", action="store_true", help="a fresh trainer process per run, no warm host")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="pretrainlab-job-overhead-") as out:
        code = CHILD.format(tests=str(ROOT / "tests"), out=out, jobs=args.jobs, fresh=args.fresh)
        env = {**os.environ, "PYTHONPATH": str(args.src.resolve())}
        before = busy_seconds()
        seconds = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.strip()
        cpu = busy_seconds() - before
    print(f"{args.src}{' (fresh trainers)' if args.fresh else ''}: {args.jobs} tiny scored jobs in {seconds} s, "
          f"{cpu:.1f} s of machine CPU")


def busy_seconds() -> float:
    """CPU seconds every process on the machine has used since boot (/proc/stat: all but idle and iowait)."""
    fields = [int(v) for v in open("/proc/stat").readline().split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


if __name__ == "__main__":
    main()
