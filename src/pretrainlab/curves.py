"""A run's curves as columns, for the faces that draw them (the dashboard's run, compare and live
pages), read once and then only as the run's metrics.jsonl grows.

    curves = CURVES.get(run_dir)                    # parsed once; a grown file adds only its new lines
    curves.to_dict(after_step=1200, after_eval=1000)  # what a page polling a live run lacks

A 100,000-step run's log is tens of megabytes of JSON, about two seconds to parse here: a
page polling such a run while it trains, or opened again, must not parse it again each time.
The cache keeps the columns of the runs read most recently, up to a total number of rows.
"""

from __future__ import annotations

import json
import threading
from bisect import bisect_right
from collections import OrderedDict
from pathlib import Path

from .rundir import MetricsTail, finite_float, int64, read_summary

TRAIN_CURVES = ("tokens", "loss", "lr", "grad_norm", "max_layer_grad_norm", "tokens_per_s", "mfu")  # columns beside "step"


number = finite_float  # a finite number as a float; anything else (missing, NaN, a string, 10**400) as None


def eval_row(row: dict, step: int) -> dict:
    domains = row.get("val_bpb_domains")
    return {"step": step, "tokens": number(row.get("tokens")), "val_bpb": number(row.get("val_bpb")),
            "split": row.get("split") if isinstance(row.get("split"), str) else None,
            "domains": {str(k): number(v) for k, v in domains.items()} if isinstance(domains, dict) else {}}


class RunCurves:
    """The columns of one run's metrics.jsonl: train rows as {"step": [...], TRAIN_CURVES...,
    "domain_loss": {domain: [...]}} (None where a row lacks a value or it is not finite), and
    the eval rows; update() adds what was appended since."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.tail = MetricsTail(run_dir)
        self.lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self.train: dict[str, list] = {"step": [], **{k: [] for k in TRAIN_CURVES}}
        self.domain_loss: dict[str, list] = {}
        self.evals: list[dict] = []
        self.sorted_train = self.sorted_eval = True  # steps never decreasing: a poll's "after" is a bisection
        self.full_json: tuple | None = None  # (state of the file, the whole run's answer as JSON): see CurveCache.read_json

    @property
    def num_rows(self) -> int:
        return len(self.train["step"]) + len(self.evals)

    def update(self) -> None:
        if self.tail.sync():  # replaced or rewritten (not only appended to): read it again from its start
            self._reset()
        for _, row in self.tail.read():
            self._add(row, self.train, self.domain_loss, self.evals)

    def _add(self, row: dict, train: dict, domain_loss: dict, evals: list, track: bool = True) -> None:
        step = int64(row.get("step"))
        if step is None:
            return
        if row.get("type") == "eval":
            if track and evals and step < evals[-1]["step"]:
                self.sorted_eval = False
            evals.append(eval_row(row, step))
            return
        if row.get("type") != "train":
            return
        n = len(train["step"])
        if track and n and step < train["step"][-1]:
            self.sorted_train = False
        train["step"].append(step)
        for k in TRAIN_CURVES:
            train[k].append(number(row.get(k)))
        losses = row.get("domain_loss")
        for domain, v in losses.items() if isinstance(losses, dict) else ():
            if str(domain) not in domain_loss:
                domain_loss[str(domain)] = [None] * n  # a domain first seen now: no value before
            domain_loss[str(domain)].append(number(v))
        for values in domain_loss.values():  # domains without a value this step
            if len(values) == n:
                values.append(None)

    def to_dict(self, after_step: int | None = None, after_eval: int | None = None) -> dict:
        """api.run_metrics' answer: the train rows after `after_step`, the eval rows after
        `after_eval` (default: after_step), with a last line still lacking its newline
        counted as a row, as iter_metrics does."""
        eval_after = after_step if after_eval is None else after_eval
        steps = self.train["step"]
        if after_step is None:
            keep = range(len(steps))
        elif self.sorted_train:
            keep = range(bisect_right(steps, after_step), len(steps))
        else:
            keep = [i for i, s in enumerate(steps) if s > after_step]
        train = {k: [col[i] for i in keep] if not isinstance(keep, range) else col[keep.start :] for k, col in self.train.items()}
        train["domain_loss"] = {d: ([col[i] for i in keep] if not isinstance(keep, range) else col[keep.start :])
                                for d, col in self.domain_loss.items()}
        evals = [e for e in self.evals if eval_after is None or e["step"] > eval_after]
        if self.tail.pending is not None:  # complete JSON without its newline yet: a row, for now, as iter_metrics reads it
            _, row = self.tail.pending
            step = int64(row.get("step"))
            if step is not None and (after_step is None or step > after_step if row.get("type") == "train" else
                                     eval_after is None or step > eval_after):
                self._add(row, train, train["domain_loss"], evals, track=False)
        return {"run_dir": str(self.run_dir), "train": train, "eval": evals, "finished": read_summary(self.run_dir) is not None,
                "skipped_lines": self.tail.skipped.num_lines, "torn": self.tail.skipped.torn}


class CurveCache:
    """RunCurves of the runs read most recently, by run directory, up to `max_rows` rows in all
    (a 100,000-step run's columns take about 30 MB)."""

    def __init__(self, max_rows: int = 500_000):
        self.max_rows = max_rows
        self.items: OrderedDict[str, RunCurves] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, run_dir: str | Path) -> RunCurves:
        key = str(Path(run_dir).resolve())
        with self.lock:
            curves = self.items.get(key)
            if curves is None:
                curves = self.items[key] = RunCurves(Path(run_dir))
            self.items.move_to_end(key)
        return curves

    def read(self, run_dir: str | Path, after_step: int | None = None, after_eval: int | None = None) -> dict:
        return self._read(run_dir, lambda curves: curves.to_dict(after_step, after_eval))

    def read_json(self, run_dir: str | Path, after_step: int | None = None, after_eval: int | None = None) -> str:
        """read() as compact JSON text; the whole run's (no `after`) is serialised once per state
        of the file: a long finished run's 14 MB of JSON costs half a second to write each time."""
        def answer(curves: RunCurves) -> str:
            if after_step is not None or after_eval is not None:
                return _dumps(curves.to_dict(after_step, after_eval))
            out = curves.to_dict()
            state = (curves.tail.offset, curves.tail.pending, out["torn"], out["skipped_lines"], out["finished"])
            if curves.full_json is None or curves.full_json[0] != state:
                curves.full_json = (state, _dumps(out))
            return curves.full_json[1]

        return self._read(run_dir, answer)

    def _read(self, run_dir: str | Path, answer):
        curves = self.get(run_dir)
        with curves.lock:  # one reader updates a run's columns at a time; others wait for it, then read
            curves.update()
            out = answer(curves)
        with self.lock:
            total = sum(c.num_rows for c in self.items.values())
            while total > self.max_rows and len(self.items) > 1:
                _, dropped = self.items.popitem(last=False)
                total -= dropped.num_rows
        return out


def _dumps(value: dict) -> str:
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))  # as the dashboard's JSONResponse


CURVES = CurveCache()
