"""The run directory module: tolerant reads of a live or damaged run, atomic writes, and
every reader of metrics.jsonl surviving the same torn file."""

import importlib.util
import json
import os

import pytest
from test_doctor import make_rows, write_run

from pretrainlab import rundir
from pretrainlab.rundir import Skipped, iter_metrics, iter_numbered_metrics, read_summary, write_summary

TORN = '{"type": "train", "step": 151, "loss": 2.'  # the writer is mid-line


def write_lines(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_a_live_runs_half_written_last_line_is_skipped(tmp_path):
    rows = [{"type": "train", "step": i, "loss": 3.0 - i / 10} for i in range(1, 4)]
    write_lines(tmp_path / "run" / rundir.METRICS, "".join(json.dumps(r) + "\n" for r in rows) + TORN)
    skipped = Skipped()
    assert list(iter_metrics(tmp_path / "run", skipped)) == rows
    assert skipped.torn and skipped.lines == []


def test_a_complete_last_row_without_its_newline_is_read(tmp_path):
    path = write_lines(tmp_path / "m.jsonl", '{"type": "eval", "step": 1, "val_bpb": 2.5}\n{"type": "eval", "step": 2, "val_bpb": 2.4}')
    skipped = Skipped()
    assert [r["step"] for r in iter_metrics(path, skipped)] == [1, 2]
    assert not skipped.torn


def test_lines_that_are_not_json_objects_are_skipped_and_counted(tmp_path):
    lines = ['{"type": "train", "step": 1, "loss": NaN}', "not json at all", "[1, 2, 3]", "", "42", '"eval"',
             '{"type": "train", "step": 2, "loss": Infinity}', '{"type": "train", "st{"type": "train", "step": 3}', "\x00\xff garbage",
             '{"type": "eval", "step": 3, "val_bpb": 2.0}']
    path = write_lines(tmp_path / "run" / rundir.METRICS, "\n".join(lines) + "\n")
    skipped = Skipped()
    numbered = list(iter_numbered_metrics(path, skipped))
    assert [n for n, _ in numbered] == [1, 7, 10]  # 1-based line numbers, blank line 4 included in the count
    assert [r["step"] for _, r in numbered] == [1, 2, 3]
    assert skipped.lines == [2, 3, 5, 6, 8, 9] and skipped.num_lines == 6 and not skipped.torn


def test_only_one_row_type_is_parsed_when_asked(tmp_path):
    lines = ['{"type": "train", "step": 1}', '{"type": "eval", "step": 1, "val_bpb": 3.0}', "garbage", '"eval"',
             '{"type": "train", "step": 2, "note": "eval"}', '{"type": "eval", "step": 2, "val_bpb": 2.9}', '{"type": "eval", "st']
    path = write_lines(tmp_path / "m.jsonl", "\n".join(lines))
    skipped = Skipped()
    assert [r["val_bpb"] for r in iter_metrics(path, skipped, only="eval")] == [3.0, 2.9]
    assert skipped.lines == [4] and skipped.torn  # garbage without '"eval"' in it is never parsed


def test_invalid_utf8_is_replaced_not_fatal(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_bytes(b'{"type": "train", "step": 1, "max_grad_layer": "bl\xffock"}\n'
                     b'{"type": "train", "step": 2, "max_grad_layer": "\xe2\x82')
    skipped = Skipped()
    rows = list(iter_metrics(path, skipped))
    assert [r["step"] for r in rows] == [1] and rows[0]["max_grad_layer"] == "bl\ufffdock"
    assert skipped.torn  # a row torn inside a multi-byte character


def test_empty_or_missing_metrics_give_no_rows(tmp_path):
    skipped = Skipped()
    assert list(iter_metrics(tmp_path / "nowhere", skipped)) == []
    (tmp_path / "run").mkdir()
    assert list(iter_metrics(tmp_path / "run", skipped)) == []  # a run dir before its first row
    write_lines(tmp_path / "run" / rundir.METRICS, "")
    assert list(iter_metrics(tmp_path / "run", skipped)) == []
    write_lines(tmp_path / "run" / rundir.METRICS, "\n\n  \n")
    assert list(iter_metrics(tmp_path / "run", skipped)) == []
    assert skipped == Skipped()


def test_rows_written_are_rows_read(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    train: rundir.TrainRow = {"type": "train", "step": 1, "tokens": 1024, "loss": float("nan"), "lr": 0.01, "grad_norm": 0.5,
                              "max_layer_grad_norm": 0.3, "max_grad_layer": "head", "tokens_per_s": 1e4, "mfu": None, "step_s": 0.1,
                              "data_wait_frac": 0.01, "peak_mem_mb": 300.0, "train_seconds": 0.0, "domain_rows": {"code": 16},
                              "batch_hash": "abc", "domain_loss": {"code": 5.0}, "cpu_s": 0.1}
    evals: rundir.EvalRow = {"type": "eval", "step": 1, "tokens": 1024, "progress": 1.0, "val_bpb": 3.0}
    rundir.append_rows(run, [train])
    rundir.append_rows(run, [])
    rundir.append_rows(run, [evals])
    first, second = iter_metrics(run)
    assert first.keys() == train.keys() and first["loss"] != first["loss"] and second == evals
    rundir.write_rows(run, [evals])
    assert list(iter_metrics(run)) == [evals] and sorted(os.listdir(run)) == [rundir.METRICS]


def test_summary_is_written_atomically_and_read_back(tmp_path, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    assert read_summary(run) is None  # a live run: no summary yet
    summary: rundir.Summary = {"status": "ok", "val_bpb": 2.5, "steps": 10, "mfu": None}
    write_summary(run, summary)
    assert read_summary(run) == summary
    assert os.listdir(run) == [rundir.SUMMARY]  # no temporary file left behind
    # a writer that dies mid-write leaves the old summary whole: the new one is renamed in only when complete
    def killed(*args):
        raise OSError("killed before the rename")

    monkeypatch.setattr(rundir.os, "replace", killed)
    with pytest.raises(OSError):
        write_summary(run, {"status": "crashed", "val_bpb": None})
    assert read_summary(run) == summary


def test_json_readers_return_none_for_what_they_cannot_read(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    assert rundir.read_recipe(run) is None and rundir.read_provenance(run) is None and not rundir.is_run_dir(run)
    (run / rundir.SUMMARY).write_text('{"status": "ok", ')
    (run / rundir.PROVENANCE).write_text("[1, 2]")
    (run / rundir.RECIPE).write_text('{"name": "x"}')
    assert read_summary(run) is None and rundir.read_provenance(run) is None
    assert rundir.read_recipe(run) == {"name": "x"} and rundir.is_run_dir(run)
    with pytest.raises(rundir.NotAnObject, match="holds a list, not an object"):
        rundir.load_json(run / rundir.PROVENANCE)
    with pytest.raises(ValueError):
        rundir.load_json(run / rundir.SUMMARY)
    with pytest.raises(OSError):
        rundir.load_json(run / "missing.json")


class OneRunLedger:
    """The two calls research/tools.py makes to find a run's directory."""

    def __init__(self, run_dir):
        self.run_dir = run_dir

    def resolve_run(self, run_id):
        return run_id

    def get_run(self, run_id):
        return {"run_id": run_id, "run_dir": str(self.run_dir)}


def test_every_reader_survives_a_torn_live_run(tmp_path):
    from pretrainlab.doctor import diagnose
    from pretrainlab.ledger import trackers
    from pretrainlab.ledger.plot import run_curves
    from pretrainlab.ledger.rundir import read_run_dir
    from pretrainlab.recipes import get_recipe
    from pretrainlab.research import early_stop
    from pretrainlab.research.tool_inputs import RunRef
    from pretrainlab.research.tools import lab_tools
    from pretrainlab.train.trainer import _truncate_metrics

    evals = [{"type": "eval", "step": s, "tokens": s * 1024, "progress": s / 200, "val_bpb": 3.0 - s / 100,
              "val_bpb_domains": {"code": 3.0}, "eval_tokens": 6144, "eval_s": 0.05, "split": "monitor"} for s in (50, 100, 150)]
    run = write_run(tmp_path / "run", make_rows(n=150), evals=evals, summary=False)
    with open(run / rundir.METRICS, "ab") as f:
        f.write(b'{"type": "eval", "step": 151, "val_bpb": 2.\xe2\x82')  # cut mid-number and mid-character

    report = diagnose(run)
    assert report.facts["status"] == "running" and report.facts["last_step"] == 150
    assert any("cut short" in n for n in report.data_quality)

    index = read_run_dir(run)
    assert [e["step"] for e in index["evals"]] == [50, 100, 150]
    assert index["series"]["num_rows"] == 153 and (index["series"]["first_step"], index["series"]["last_step"]) == (1, 150)
    assert index["run"]["status"] == "unknown"

    curves = run_curves({"run_dir": str(run), "evals": index["evals"]})
    assert len(curves["loss"]) == 150 and curves["missing"] is None
    assert sorted(early_stop.eval_curve(run, 0.25)) == [1, 2, 3]

    (curve_summary,) = [t for t in lab_tools(OneRunLedger(run), {}, get_recipe("tiny-cpu")) if t.name == "curve_summary"]
    summary = curve_summary.run(RunRef(run_id="r1"))
    assert len(summary["train"]) == 10 and [e["step"] for e in summary["eval"]] == [50, 100, 150]

    assert rundir.read_summary(run) is None
    assert len(trackers.scalars(list(iter_metrics(run)))) == 153
    if importlib.util.find_spec("tensorboard") is not None:
        pushed = trackers.push(run, "tensorboard", dest=str(tmp_path / "tb"))
        assert pushed["num_rows"] == 153

    # a resume from step 100: the torn line goes, rows after the checkpoint move to metrics.superseded.jsonl
    _truncate_metrics(run / rundir.METRICS, 100)
    kept, moved = list(iter_metrics(run)), list(iter_metrics(run / rundir.SUPERSEDED))
    assert max(r["step"] for r in kept) == 100 and len(kept) == 102
    assert len(moved) == 51 and {r["superseded_by_resume_at"] for r in moved} == {100}


def within(seconds, fn):
    """fn() run in a thread, which must return within `seconds` (a reader that follows /dev/zero, waits on a FIFO or
    enumerates 2**62 steps never does)."""
    import threading

    out = []
    t = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    t.start()
    t.join(seconds)
    assert out, f"{fn} did not return within {seconds} s"
    return out[0]


def test_files_planted_by_experiment_code_are_never_followed_or_waited_on(tmp_path):
    """The lab reads and writes run directories from outside the sandbox: a symlink planted there
    must not make it read a host file into the ledger, read /dev/zero forever, write through into
    a host file, or block on a FIFO."""

    from pretrainlab.curves import RunCurves
    from pretrainlab.errors import UserError
    from pretrainlab.ledger.rundir import read_run_dir, scan_metrics
    from pretrainlab.runners.scoring import _Worker

    host = tmp_path / "host"
    host.mkdir()
    secret = host / "credentials.json"
    secret.write_text('{"status": "ok", "val_bpb": 0.1, "api_key": "sk-host-secret"}')
    precious = host / "bashrc"
    precious.write_text("precious\n")
    run = tmp_path / "run"
    run.mkdir()
    rundir.write_json_atomic(run / rundir.RECIPE, {"name": "tiny-cpu", "seed": 0})
    (run / rundir.SUMMARY).symlink_to(secret)
    (run / rundir.METRICS).symlink_to("/dev/zero")
    (run / rundir.PROVENANCE).symlink_to(secret)

    assert within(10, lambda: read_summary(run)) is None and within(10, lambda: rundir.read_provenance(run)) is None
    assert within(10, lambda: list(iter_metrics(run))) == [] and within(10, lambda: rundir.last_row(run)) is None
    assert within(10, lambda: scan_metrics(run / rundir.METRICS)) == ([], None)
    with pytest.raises(UserError, match="summary.json is a symbolic link or a special file.*remove it"):
        read_run_dir(run)  # registering it says what is wrong, and never reads the host file
    curves = RunCurves(run)
    within(10, curves.update)
    assert curves.to_dict()["train"]["step"] == []
    (run / rundir.METRICS).unlink()
    os.mkfifo(run / rundir.METRICS)  # a FIFO with no writer: open() would wait forever
    assert within(10, lambda: list(iter_metrics(run))) == [] and within(10, lambda: rundir.last_row(run)) is None

    # writes: a symlink at the file, or at every temporary name an atomic write could use, is replaced, not written through
    (run / rundir.SUMMARY).unlink()
    (run / f".{rundir.SUMMARY}.tmp{os.getpid()}").symlink_to(precious)
    rundir.write_summary(run, {"status": "ok"})
    (run / rundir.METRICS).unlink()
    (run / rundir.METRICS).symlink_to(precious)
    rundir.append_rows(run, [{"type": "train", "step": 1}])
    worker = _Worker(["true"], {}, run / "scorer.log")
    (run / "scorer-probe.log").symlink_to(precious)
    probe = _Worker(["sh", "-c", "echo from the worker >&2"], {}, run / "scorer-probe.log")
    probe.proc.wait()
    assert "from the worker" in (run / "scorer-probe.log").read_text()  # into a file of the lab's, not through the link
    worker.close(abort=True)
    probe.close(abort=True)
    assert precious.read_text() == "precious\n"  # untouched
    assert read_summary(run) == {"status": "ok"} and [r["step"] for r in iter_metrics(run)] == [1]
    assert not (run / rundir.METRICS).is_symlink() and not (run / "scorer-probe.log").is_symlink()


def test_values_experiment_code_writes_never_crash_hang_or_reach_the_ledger_untyped(tmp_path, ledger_url):
    """summary.json, provenance.json and metrics.jsonl come from the trainer, which may be experiment code: an integer
    beyond float (or BIGINT) range, NaN, a dict where text belongs, NUL bytes and lone surrogates (which PostgreSQL or
    UTF-8 refuse), JSON nested 200,000 deep, a 20 MB line, a step of 2**62. Registering the run, its curves and the
    doctor must each come back at once, with such values left out of the ledger's columns."""

    from pretrainlab.curves import CurveCache
    from pretrainlab.doctor import diagnose
    from pretrainlab.errors import UserError
    from pretrainlab.ledger import Ledger
    from pretrainlab.ledger.rundir import read_run_dir

    deep = "[" * 200_000 + "]" * 200_000
    huge = 10**400
    cases = {
        "summary": {"status": float("nan"), "val_bpb": huge, "tokens": 2**70, "seconds": [1], "params": {"a": 1}, "steps": 1e300,
                    "finished_at": 1e300},
        "provenance": {"run_id": {"id": 1}, "device": "cpu\x00\ud800", "world_size": huge, "git_commit": ["x"], "git_diff": "a\x00b",
                       "started_at": "not a time"},
        "recipe": {"name": "bad\x00name", "seed": huge},
        "train_row": {"step": 7, "loss": huge, "tokens": 2**70, "lr": float("inf"), "domain_loss": {"code": huge}, "domain_rows": {"code": huge}},
        "eval_row": {"step": 40, "val_bpb": huge, "tokens": {"a": 1}, "val_bpb_domains": {"code": huge}},
    }
    rows = make_rows(n=40)
    rows[6].update(cases["train_row"])
    run = tmp_path / "run"
    write_run(run, rows, evals=[{"type": "eval", "step": 40, "tokens": 40960, "val_bpb": 2.5, "val_bpb_domains": {}, **cases["eval_row"]}],
              provenance=cases["provenance"], summary=None)
    for name in ("summary", "recipe"):
        path = run / f"{name}.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **cases[name]}))
    with open(run / rundir.METRICS, "a") as f:  # then lines no reader may choke on, and a row after them
        f.write(deep + "\n" + "x" * (20 << 20) + "\n" + json.dumps({"type": "train", "step": 2**62, "loss": 1.0}) + "\n")

    ledger = Ledger(ledger_url)
    ledger.upsert_run(within(30, lambda: read_run_dir(run)))
    row = ledger.get_run(ledger.list_runs()[0]["run_id"])
    assert row["status"] == "unknown" and row["val_bpb"] is None and row["tokens"] is None and row["steps"] is None
    assert row["world_size"] is None and row["seed"] is None and row["finished_at"] is None
    assert len(row["run_id"]) == 12 and "\x00" not in (row["device"] or "") and row["recipe_name"] == "bad\ufffdname"
    assert [(e["val_bpb"], e["tokens"]) for e in row["evals"]] == [(None, None)] and row["series"]["last_step"] == 2**62
    report = within(30, lambda: diagnose(run))
    assert any("unreadable line" in n for n in report.data_quality) and any("missing" in n for n in report.data_quality)
    curves = json.loads(within(30, lambda: CurveCache().read_json(run)))
    assert curves["train"]["step"][-1] == 2**62 and curves["skipped_lines"] == 2
    assert curves["train"]["loss"][6] is None and curves["train"]["lr"][6] is None and curves["eval"][0]["val_bpb"] is None
    for name in ("summary.json", "provenance.json", "recipe.json"):  # a file nested too deep: one clear error, not a crash
        spoiled = tmp_path / f"deep-{name}"
        write_run(spoiled, make_rows(n=5))
        (spoiled / name).write_text(deep)
        with pytest.raises(UserError, match=f"{name} is not valid JSON"):
            read_run_dir(spoiled)
    assert report.facts["steps_logged"] == 41
