"""Where a command's CPU goes, process by process: run it, sample /proc every 50 ms, and sum
the CPU of every process it (or anything else on the machine) started, by kind.

    python bench/suite_cpu.py -- .venv/bin/python -m pytest -q -n 2 --dist loadgroup
    python bench/suite_cpu.py --json out.json -- make test

Kinds: trainers (`pretrainlab train`), sandboxed scoring workers, campaign job processes, pytest
workers, other lab commands, Ray, SLURM, PostgreSQL, chromium; the trainer and scoring processes
are also summed by the test whose tmp folder their command line names. Processes that started and
ended between two samples are missed (a short-lived process's CPU is a few ms); the sampler's own
CPU is left out. Linux only.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import time

TICK = os.sysconf("SC_CLK_TCK")
KINDS = [  # (kind, pattern on the command line), first match wins
    ("bwrap (sandbox wrapper)", r"^\S*bwrap "),
    ("scoring worker", r"pretrainlab\.scoring_worker"),
    ("trainer", r"pretrainlab train\b"),
    ("campaign job", r"pretrainlab\.runners\.job"),
    ("pytest worker", r"exec\(eval\(sys\.stdin\.readline\(\)\)\)"),
    ("pytest", r"\bpytest\b"),
    ("torchrun / multiprocessing", r"torch\.distributed\.run|multiprocessing\.spawn|torchrun"),
    ("ray", r"\bray\b|raylet|gcs_server|dashboard"),
    ("slurm / munge", r"slurm|munge"),
    ("postgres", r"postgres"),
    ("chromium / playwright", r"chrom|playwright"),
    ("other lab command", r"pretrainlab"),
    ("other python", r"python"),
]


def sample(seen: dict, skip: set[str]) -> None:
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or pid in skip:
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
            fields = stat.rsplit(")", 1)[1].split()
            key = f"{pid}-{fields[19]}"  # pid and start time: a reused pid is another process
            cpu = (int(fields[11]) + int(fields[12])) / TICK
            if key in seen:
                seen[key]["cpu"] = max(seen[key]["cpu"], cpu)
                continue
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
            seen[key] = {"cmd": cmd or stat.split("(", 1)[1].rsplit(")", 1)[0], "cpu": cpu}
        except (OSError, IndexError, ValueError):
            continue


def kind_of(cmd: str) -> str:
    return next((k for k, pattern in KINDS if re.search(pattern, cmd)), "other")


def test_of(cmd: str) -> str | None:
    m = re.search(r"/pytest-\d+/(?:popen-gw\d+/)?([^/ ]+)", cmd)
    return re.sub(r"\d+$", "", m.group(1)) if m else None


def summarise(seen: dict) -> dict:
    kinds: dict[str, list] = collections.defaultdict(lambda: [0, 0.0])
    tests: dict[str, float] = collections.defaultdict(float)
    for p in seen.values():
        k = kind_of(p["cmd"])
        kinds[k][0] += 1
        kinds[k][1] += p["cpu"]
        if k in ("trainer", "scoring worker", "campaign job") and (t := test_of(p["cmd"])):
            tests[t] += p["cpu"]
    return {"total_cpu_s": round(sum(p["cpu"] for p in seen.values()), 1),
            "kinds": {k: {"processes": n, "cpu_s": round(c, 1)} for k, (n, c) in sorted(kinds.items(), key=lambda kv: -kv[1][1])},
            "runs_by_test_folder": {t: round(c, 1) for t, c in sorted(tests.items(), key=lambda kv: -kv[1])}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", help="also write the summary and every process seen here")
    ap.add_argument("--top", type=int, default=25, help="test folders to print")
    ap.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    args = ap.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        ap.error("give the command to measure after --")
    skip = {p for p in os.listdir("/proc") if p.isdigit()}  # already running: not the command's
    seen: dict = {}
    t0 = time.time()
    proc = subprocess.Popen(command)
    while proc.poll() is None:
        sample(seen, skip)
        time.sleep(0.05)
    sample(seen, skip)
    out = summarise(seen)
    out.update(command=command, wall_s=round(time.time() - t0, 1), returncode=proc.returncode)
    print(f"\n{out['total_cpu_s']:.0f} s of CPU in {out['wall_s']:.0f} s, exit {proc.returncode}", file=sys.stderr)
    for k, v in out["kinds"].items():
        print(f"{v['cpu_s']:9.1f} s  {v['processes']:5d} processes  {k}", file=sys.stderr)
    print("trainer, scoring and job CPU by test folder:", file=sys.stderr)
    for t, c in list(out["runs_by_test_folder"].items())[: args.top]:
        print(f"{c:9.1f} s  {t}", file=sys.stderr)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({**out, "processes": seen}, f)
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
