"""The doctor's fault-injection suite: real training runs with deliberately broken settings,
each of which the doctor must catch with the right finding id, plus healthy runs that must
stay silent. tests/test_doctor_faults.py runs a small version; bench/doctor_eval.py a larger
one that measures recall and the false-alarm rate.

    cases = fault_cases(domains=["code", "docs", "literature"])
    result = run_case(cases["lr_high"], seed=0, corpus=..., work=tmp, base=TINY)
    result.detected, result.report.ids("warning")

Every run uses the real trainer (pretrainlab.api.train_run) on a tiny model; the replay
case runs the CLI in a subprocess, stops it with SIGTERM and resumes it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from pretrainlab.doctor import diagnose
from pretrainlab.doctor.report import Report

# The tiny setup of tests/conftest.py tiny_overrides: ~50k params, 64-token windows,
# 1024-token batches (one step ~ 10-40 ms on one CPU thread).
TINY = {"model.seq_len": 64, "model.n_layer": 2, "model.n_embd": 64, "model.n_head": 2, "train.batch_tokens": 1024,
        "train.micro_batch_rows": 16, "eval.tokens_per_domain": 2048, "train.num_threads": 1}
BATCH_TOKENS = 1024


@dataclass
class Case:
    name: str
    expect: frozenset[str]  # finding ids (warning or error) any of which counts as detected; empty = healthy
    steps: int  # budget in optimizer steps
    overrides: dict = field(default_factory=dict)
    duplicated_corpus: bool = False  # train on make_duplicated_corpus(corpus)
    duplicated_domain: str = ""  # train on make_duplicated_corpus(corpus, only=this domain)
    replay_resume: bool = False  # SIGTERM mid-run, then --resume
    baseline: bool = False  # diagnose against the healthy run of the same seed
    doc: str = ""


def fault_cases(domains: list[str], healthy_steps: int = 250) -> dict[str, Case]:
    """The suite for a corpus with these domains (sorted, as Corpus.domains gives them).
    mixture_skew feeds the second domain (docs in the builtin corpus) and starves the others;
    mixture_bias forces the last one."""
    fed = domains[1] if len(domains) > 1 else domains[0]
    skew = ",".join(f"{d}:{1 if d == fed else 0.01}" for d in domains)
    minor = ",".join(f"{d}:{0.3 if d == domains[0] else 1 if d == fed else 0.02}" for d in domains)
    cases = [
        Case("healthy", frozenset(), healthy_steps, doc="the tiny recipe as is"),
        Case("lr_high", frozenset({"loss_spike", "divergence", "nan_loss"}), 100,
             {"optim.lr": 1.0, "optim.muon_lr": 1.0, "optim.grad_clip": 0}, doc="LR ~70x/30x too high, no clipping"),
        Case("no_warmup", frozenset({"no_warmup"}), 100,
             {"optim.lr": 0.1, "optim.muon_lr": 0.2, "optim.warmup_frac": 0}, doc="no warm-up at a high LR"),
        Case("lr_low", frozenset({"dead_training"}), 60, {"optim.lr": 1e-6, "optim.muon_lr": 1e-6}, doc="LR ~10^4x too low"),
        Case("nan", frozenset({"nan_loss"}), 40, {"faults.nan_at_step": 25}, doc="NaN loss injected at step 25"),
        Case("data_stall", frozenset({"data_stall"}), 40, {"faults.data_sleep_s": 0.03}, doc="the loader sleeps 30 ms a step"),
        Case("duplicated_data", frozenset({"train_val_gap"}), 100, duplicated_corpus=True,
             doc="train split = near-duplicate copies of two short documents per domain"),
        Case("duplicated_domain", frozenset({"train_val_gap"}), 200, {"data.weights": minor},
             duplicated_domain=domains[0], doc=f"only {domains[0]} is near-duplicate copies, and a minor share of the mix ({minor})"),
        Case("mixture_skew", frozenset({"mixture_imbalance"}), 100, {"data.weights": skew},
             doc=f"data.weights={skew}"),
        Case("mixture_bias", frozenset({"mixture_drift"}), 60, {"faults.mixture_bias": domains[-1]},
             doc=f"every other row from {domains[-1]}, whatever data.weights says"),
        Case("replay_on_resume", frozenset({"data_replay"}), 120, {"faults.replay_on_resume": "true", "train.ckpt_every": 10},
             replay_resume=True, doc="SIGTERM at ~step 30, then --resume rewinds the loader"),
        Case("regression", frozenset({"regression_vs_baseline"}), healthy_steps, {"optim.lr": 0.0015, "optim.muon_lr": 0.0035},
             baseline=True, doc="10x lower LR, compared with the healthy run of the same seed"),
    ]
    return {c.name: c for c in cases}


@dataclass
class Result:
    case: str
    seed: int
    run_dir: Path
    report: Report
    seconds: float

    @property
    def alarms(self) -> set[str]:
        """Finding ids at warning or error."""
        return self.report.ids("warning")


def run_case(case: Case, seed: int, corpus: Path, work: Path, base: dict | None = None,
             baseline_dir: Path | None = None) -> Result:
    """Train one case (in work/NAME-sSEED) and diagnose it."""
    from pretrainlab import api

    t0 = time.perf_counter()
    sets = {**(base or TINY), "data.corpus": str(corpus), "seed": seed, "budget.tokens": case.steps * BATCH_TOKENS, **case.overrides}
    if case.duplicated_corpus:
        sets["data.corpus"] = str(make_duplicated_corpus(corpus, work / "duplicated-corpus"))
    if case.duplicated_domain:
        sets["data.corpus"] = str(make_duplicated_corpus(corpus, work / f"duplicated-{case.duplicated_domain}", only=case.duplicated_domain))
    overrides = [f"{k}={v}" for k, v in sets.items()]
    run_dir = work / f"{case.name}-s{seed}"
    if case.replay_resume:
        _train_preempt_resume(overrides, run_dir)
    else:
        api.train_run("tiny-cpu", overrides, run_dir, echo=False)
    report = diagnose(run_dir, baseline_dir if case.baseline else None)
    return Result(case.name, seed, run_dir, report, time.perf_counter() - t0)


def _train_preempt_resume(overrides: list[str], run_dir: Path, stop_after_rows: int = 30) -> None:
    """Train in a subprocess, SIGTERM it once `stop_after_rows` steps are logged (it
    checkpoints and exits 75, preempted), then resume it in this process."""
    from pretrainlab import api

    args = [sys.executable, "-m", "pretrainlab", "train", "--recipe", "tiny-cpu", "--out", str(run_dir)]
    for o in overrides:
        args += ["--set", o]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + 120
    while not (metrics.exists() and metrics.read_text().count("\n") >= stop_after_rows):
        if proc.poll() is not None:
            raise RuntimeError(f"training ended before it could be preempted: {proc.stderr.read()[-2000:]}")
        if time.time() > deadline:
            proc.kill()
            raise RuntimeError("timed out waiting for the run to log steps")
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    if proc.returncode != 75:
        raise RuntimeError(f"expected exit 75 (preempted) after SIGTERM, got {proc.returncode}: {err[-2000:]}")
    api.train_run(resume=run_dir, echo=False)


def make_duplicated_corpus(source: Path, out: Path, docs_per_domain: int = 2, doc_bytes: int = 1000, copies: int = 30,
                           only: str | None = None) -> Path:
    """A byte-level corpus whose train split is `copies` near-duplicate copies (a distinct
    first line each, so exact dedup keeps them all) of `docs_per_domain` short documents
    per domain (or only in domain `only`; the others keep their train documents), and whose
    val split is the source corpus's val text, unchanged.

    prepare_corpus splits by a hash of the document path; the paths are chosen with
    assign_splits so that exactly the fresh val document of each domain lands in val.
    """
    from pretrainlab.data import ByteTokenizer, Corpus, Document, prepare_corpus
    from pretrainlab.data.shards import HELD_OUT, assign_splits

    if (out / "manifest.json").exists():
        return out
    src = Corpus.open(source)
    if src.manifest["tokenizer"]["name"] != "byte":
        raise ValueError("make_duplicated_corpus needs a byte-level source corpus")
    eot = src.manifest["tokenizer"]["eot_id"]
    num_held = len(HELD_OUT)  # one val, one monitor and one test document per domain
    num_docs = docs_per_domain * copies + num_held
    val_fraction = (num_held - 0.5) / num_docs  # ceil(val_fraction * num_docs) = num_held held-out documents
    documents = []
    for domain in src.domains:
        train_docs = _split_docs(src.tokens(domain, "train"), eot)[:docs_per_domain]
        held_text = {h: "\n".join(bytes(d).decode("utf-8", "replace") for d in _split_docs(src.tokens(domain, h), eot)) for h in HELD_OUT}
        texts = [bytes(d[:doc_bytes]).decode("utf-8", "ignore") for d in train_docs]
        copies_text = [f"[copy {i} of document {j}]\n{t}" for j, t in enumerate(texts) for i in range(copies)]
        if only is not None and domain != only:
            copies_text = [bytes(d).decode("utf-8", "replace") for d in _split_docs(src.tokens(domain, "train"), eot)]
        paths = [f"{domain}/doc-{k:04d}.txt" for k in range(len(copies_text) + num_held)]
        probe = [Document(domain, "probe", p, f"probe {p}") for p in paths]
        it = iter(copies_text)
        documents += [Document(domain, "duplicated", p, held_text[split] if split != "train" else next(it))
                      for p, split in zip(paths, assign_splits(probe, val_fraction=val_fraction, min_val_docs=1))]
    prepare_corpus(documents, ByteTokenizer(), out, val_fraction=val_fraction, min_val_docs=1, progress=False,
                   source={"duplicated_from": str(source), "copies": copies, "doc_bytes": doc_bytes})
    return out


def _split_docs(tokens, eot: int) -> list:
    out, start = [], 0
    arr = tokens.tolist()
    for i, t in enumerate(arr):
        if t == eot:
            if i > start:
                out.append(arr[start:i])
            start = i + 1
    if start < len(arr):
        out.append(arr[start:])
    return out


def summarize(results: list[Result], cases: dict[str, Case]) -> dict:
    """Recall (faults whose expected id was raised at warning/error / faults run) and the
    false-alarm rate (healthy runs with any warning/error finding / healthy runs)."""
    rows = {}
    for r in results:
        case = cases[r.case]
        row = rows.setdefault(r.case, {"runs": 0, "hits": 0, "alarmed": 0, "ids": {}})
        row["runs"] += 1
        if case.expect:
            row["hits"] += bool(case.expect & r.alarms)
        else:
            row["alarmed"] += bool(r.alarms)
        for i in r.alarms:
            row["ids"][i] = row["ids"].get(i, 0) + 1
    faults = [r for r in results if cases[r.case].expect]
    healthy = [r for r in results if not cases[r.case].expect]
    return {
        "cases": rows,
        "recall": sum(bool(cases[r.case].expect & r.alarms) for r in faults) / len(faults) if faults else None,
        "false_alarm_rate": sum(bool(r.alarms) for r in healthy) / len(healthy) if healthy else None,
        "num_faults": len(faults), "num_healthy": len(healthy),
    }


def dump(results: list[Result], path: Path) -> None:
    """One JSON line per run: case, seed, seconds, alarms, and the report."""
    with open(path, "w") as f:
        f.writelines(json.dumps({"case": r.case, "seed": r.seed, "seconds": r.seconds, "alarms": sorted(r.alarms),
                                "report": r.report.to_dict()}) + "\n" for r in results)
