"""Every process's CPU while a command runs, from the kernel's process accounting (acct(2)): nothing is missed between
samples, sandboxed processes included. Needs root (CAP_SYS_PACCT); Linux only; stops any accounting already on.

    sudo python bench/suite_acct.py -- make test
    python bench/suite_acct.py --json out.json -- .venv/bin/python -m pytest -q -n 2 --dist loadgroup

Prints the CPU by command name, and the Python processes that used 2.5-60 s each (nearly all of them import torch:
trainers, scoring workers, torchrun workers) grouped by their parents' names. The accounting file lives in a temp
folder, removed at the end.
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import json
import os
import struct
import subprocess
import sys
import tempfile

RECORD = 64  # struct acct_v3


def comp_t(v: int) -> int:
    """The kernel's 16-bit float: 13-bit mantissa, base-8 exponent."""
    return (v & 0x1FFF) << (3 * (v >> 13))


def records(path: str) -> list[dict]:
    data = open(path, "rb").read()
    out = []
    for off in range(0, len(data) - RECORD + 1, RECORD):
        r = data[off : off + RECORD]
        if r[1] != 3:  # ac_version: only acct_v3 is read
            continue
        pid, ppid = struct.unpack_from("<II", r, 16)  # ac_pid, ac_ppid (after flag, version, tty, exitcode, uid, gid)
        btime, etime = struct.unpack_from("<If", r, 24)  # started (epoch seconds), ran for (ticks)
        utime, stime = struct.unpack_from("<HH", r, 32)
        out.append({"pid": pid, "ppid": ppid, "comm": r[48:64].split(b"\0")[0].decode(errors="replace"),
                    "cpu_s": (comp_t(utime) + comp_t(stime)) / 100, "start": btime, "elapsed_s": etime / 100})  # AHZ = 100
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", help="write the table and the processes here")
    ap.add_argument("command", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        ap.error("give a command after --")
    libc = ctypes.CDLL(None, use_errno=True)
    with tempfile.TemporaryDirectory(prefix="pretrainlab-acct-") as tmp:
        path = os.path.join(tmp, "acct")
        open(path, "wb").close()
        if libc.acct(path.encode()) != 0:
            sys.exit(f"acct(2) failed ({os.strerror(ctypes.get_errno())}): run as root")
        try:
            code = subprocess.call(command)
        finally:
            libc.acct(None)
        procs = records(path)
    by_comm = collections.defaultdict(lambda: [0, 0.0])
    for p in procs:
        by_comm[p["comm"]][0] += 1
        by_comm[p["comm"]][1] += p["cpu_s"]
    total = sum(c for _, c in by_comm.values())
    print(f"{len(procs)} processes, {total:,.0f} s of CPU; exit {code}")
    for comm, (n, cpu) in sorted(by_comm.items(), key=lambda kv: -kv[1][1])[:15]:
        print(f"  {comm:20s} {n:6d} {cpu:9.1f} s")
    pid = {p["pid"]: p for p in procs}
    groups = collections.defaultdict(lambda: [0, 0.0])
    for p in procs:
        if p["comm"].startswith("python") and 2.5 <= p["cpu_s"] < 60:
            chain, up = [], pid.get(p["ppid"])
            while up is not None and len(chain) < 2:
                chain.append(up["comm"] + (" (long-lived)" if up["cpu_s"] >= 60 else ""))
                up = pid.get(up["ppid"])
            key = " <- ".join(chain) or "(parent still running)"
            groups[key][0] += 1
            groups[key][1] += p["cpu_s"]
    print("python processes of 2.5-60 s, by parent:")
    for key, (n, cpu) in sorted(groups.items(), key=lambda kv: -kv[1][1]):
        print(f"  {n:4d} {cpu:8.1f} s  {key}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"command": command, "exit": code, "by_comm": by_comm, "python_by_parent": groups, "processes": procs}, f)
    sys.exit(code)


if __name__ == "__main__":
    main()
