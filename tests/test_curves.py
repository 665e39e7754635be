"""A run's curves read once, then only as the log grows: every stage of a live run reads as a
fresh full read of the same file does, whatever happened to the file in between (torn and
completed lines, garbage, a resume that rewrote it, a rewrite in place, deletion)."""

import json
import os

from pretrainlab import rundir
from pretrainlab.curves import CurveCache, RunCurves
from pretrainlab.rundir import MetricsTail, iter_numbered_metrics, last_row


def train(step, **extra):
    return {"type": "train", "step": step, "tokens": step * 64, "loss": 3.0 - step / 100, "lr": 0.01, "grad_norm": 1.0, **extra}


def ev(step):
    return {"type": "eval", "step": step, "tokens": step * 64, "val_bpb": 2.5 - step / 1000, "val_bpb_domains": {"code": 2.4}}


def append(path, text):
    with open(path, "a") as f:
        f.write(text)


def lines(*rows):
    return "".join(json.dumps(r) + "\n" for r in rows)


def test_a_tail_parses_each_line_once_and_reads_what_a_full_read_reads(tmp_path):
    path = tmp_path / "metrics.jsonl"
    append(path, lines(train(1), train(2)) + '{"type": "train", "st')  # torn: the trainer is mid-line
    tail = MetricsTail(path)
    assert not tail.sync()
    first = list(tail.read())
    assert [n for n, _ in first] == [1, 2] and tail.skipped.torn and tail.pending is None
    append(path, 'ep": 3, "loss": 2.9}\nnot json\n\n' + lines(ev(3), train(4)) + json.dumps(train(5)))  # 5: no newline yet
    assert not tail.sync()
    second = list(tail.read())
    assert [(n, r["step"]) for n, r in second] == [(3, 3), (6, 3), (7, 4)]  # each line parsed once, numbered as in the file
    assert tail.pending == (8, train(5)) and not tail.skipped.torn and tail.skipped.lines == [4]
    full = rundir.Skipped()
    assert first + second + [tail.pending] == list(iter_numbered_metrics(path, full)) and full.lines == tail.skipped.lines
    assert list(tail.read()) == []  # nothing new; the pending line is read again next time, once it ends
    append(path, "\n")
    assert [n for n, _ in tail.read()] == [8] and tail.pending is None


def test_a_tail_starts_over_when_the_file_is_not_the_one_it_read(tmp_path):
    path = tmp_path / "metrics.jsonl"
    append(path, lines(*[train(s) for s in range(1, 11)]))
    tail = MetricsTail(path)
    tail.sync()
    assert len(list(tail.read())) == 10
    rundir.write_rows(path, [train(s) for s in range(1, 6)])  # a resume from step 5: the file is replaced
    assert tail.sync() and [r["step"] for _, r in tail.read()] == [1, 2, 3, 4, 5]
    with open(path, "r+") as f:  # rewritten in place, same inode and longer: the bytes before the point read differ
        f.write(lines(*[train(s, loss=9.0) for s in range(1, 8)]))
    assert tail.sync() and [r["loss"] for _, r in tail.read()] == [9.0] * 7
    os.truncate(path, 0)
    assert tail.sync() and list(tail.read()) == []
    append(path, lines(train(1), train(2)))
    assert not tail.sync() and [r["step"] for _, r in tail.read()] == [1, 2]
    path.unlink()
    assert tail.sync() and list(tail.read()) == []  # gone: nothing to read
    assert not tail.sync()  # and nothing read since the start over
    append(path, lines(train(1)))
    assert not tail.sync() and [r["step"] for _, r in tail.read()] == [1]


def test_curves_grown_line_by_line_equal_a_fresh_read_at_every_stage(tmp_path):
    path = tmp_path / "run"
    path.mkdir()
    metrics = path / rundir.METRICS
    stages = [
        lines(train(1), train(2)) + '{"type": "tr',  # torn
        'ain", "step": 3}\n' + lines(ev(3), train(4, domain_loss={"code": 2.0})),  # a domain first seen at step 4
        "garbage\n" + lines(train(5, domain_loss={"docs": 2.1}), train(6, loss=float("nan"))) + json.dumps(ev(6)),  # pending eval
        "\n" + lines(train(3, loss=1.0)),  # steps go back (an older trainer's log): polls filter instead of bisecting
    ]
    cached = CurveCache()
    for i, text in enumerate(stages):
        append(metrics, text)
        fresh = RunCurves(path)
        fresh.update()
        for after, after_eval in ((None, None), (2, None), (4, 2), (6, 6)):
            assert cached.read(path, after, after_eval) == fresh.to_dict(after, after_eval), (i, after, after_eval)
    rundir.write_rows(metrics, [train(1), ev(1)])  # a resume rewrote it
    assert cached.read(path)["train"]["step"] == [1] and [e["step"] for e in cached.read(path)["eval"]] == [1]
    full = cached.read(path, None)
    assert full["skipped_lines"] == 0 and not full["torn"] and not full["finished"]


def test_the_cache_keeps_recent_runs_up_to_its_rows(tmp_path):
    cache = CurveCache(max_rows=25)
    runs = []
    for k in range(3):
        run = tmp_path / f"r{k}"
        run.mkdir()
        append(run / rundir.METRICS, lines(*[train(s) for s in range(1, 11)]))
        runs.append(run)
        assert len(cache.read(run)["train"]["step"]) == 10
    assert [os.path.basename(k) for k in cache.items] == ["r1", "r2"]  # the oldest went; 20 rows kept
    big = tmp_path / "big"
    big.mkdir()
    append(big / rundir.METRICS, lines(*[train(s) for s in range(1, 41)]))
    assert len(cache.read(big)["train"]["step"]) == 40 and list(cache.items) == [str(big.resolve())]  # alone over the cap, it stays


def test_last_row_reads_back_from_the_end_as_far_as_it_must(tmp_path):
    path = tmp_path / "metrics.jsonl"
    assert last_row(path) is None
    append(path, lines(train(1)) + lines(*[ev(s) for s in range(1, 400)]) + '{"type": "train", "step": 99')  # torn last line
    assert last_row(path, only="train", window=256)["step"] == 1  # the one train row is ~40 kB back
    assert last_row(path, only="eval", window=256)["step"] == 399
    assert last_row(path)["step"] == 399 and last_row(path, only="nothing") is None


def test_the_whole_runs_json_is_written_once_per_state_of_the_file(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    append(run / rundir.METRICS, lines(train(1), train(2), ev(2)))
    cache = CurveCache()
    first = cache.read_json(run)
    assert json.loads(first) == cache.read(run) and cache.read_json(run) is first  # unchanged: the same text, not written again
    assert json.loads(cache.read_json(run, 1)) == cache.read(run, 1)  # a poll's answer is its own
    append(run / rundir.METRICS, lines(train(3)))
    grown = cache.read_json(run)
    assert grown is not first and json.loads(grown)["train"]["step"] == [1, 2, 3]
    rundir.write_summary(run, {"status": "ok"})
    assert json.loads(cache.read_json(run))["finished"]  # the run ended: the answer says so
    append(run / rundir.METRICS, json.dumps(train(4)))  # a pending last line counts too
    assert json.loads(cache.read_json(run))["train"]["step"] == [1, 2, 3, 4]


def test_last_row_reads_back_no_further_than_its_cap(tmp_path):
    """A log that experiment code filled with something else costs a live page's poll a bounded read."""
    path = tmp_path / "metrics.jsonl"
    append(path, lines(train(7)) + lines(*[ev(s) for s in range(1, 2000)]))  # ~170 kB of evals after the one train row
    assert last_row(path, only="train", window=1024, max_bytes=1 << 20)["step"] == 7
    assert last_row(path, only="train", window=1024, max_bytes=1 << 14) is None  # not within the last 16 kB
    assert last_row(path, only="eval", window=1024, max_bytes=1 << 14)["step"] == 1999
