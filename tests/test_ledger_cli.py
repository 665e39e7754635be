"""`pretrainlab train` registers its run; `pretrainlab runs ...` through the real command line:
text and --json output, one-line errors with exit 2, and a ledger failure that loses nothing."""

import json
import os
import shutil
import signal
import time

import pytest
import forked
from conftest import cli, set_args, tiny_overrides

from pretrainlab import api
from pretrainlab.train import EXIT_PREEMPTED


def assert_user_error(res, *fragments):
    assert res.returncode == 2, (res.returncode, res.stdout[-500:], res.stderr[-1500:])
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in res.stderr, res.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def train(corpus_dir, out, *extra, tokens=2048, env_extra=None, **sets):
    """`pretrainlab train` in a subprocess: the real command line, end to end."""
    overrides = tiny_overrides(corpus_dir, **{"budget.tokens": tokens, **sets})
    return cli("train", "--recipe", "tiny-cpu", *set_args(overrides), "--out", str(out), *extra, env_extra=env_extra)


def train_here(capfd, corpus_dir, out, *extra, tokens=2048):
    """The same through cli.main in this process (no interpreter start-up): (exit code, stdout, stderr)."""
    from pretrainlab.cli import main

    capfd.readouterr()
    code = main(["train", "--recipe", "tiny-cpu", *set_args(tiny_overrides(corpus_dir, **{"budget.tokens": tokens})), "--out", str(out), *extra])
    out_, err = capfd.readouterr()
    return code, out_, err


def test_train_registers_its_run_and_runs_commands_read_it(corpus_dir, tmp_path, ledger_workspace, capfd, monkeypatch):
    res = train(corpus_dir, tmp_path / "a", "--json", **{"train.eval_every": 1})
    assert res.returncode == 0, res.stderr
    run_id = json.loads((tmp_path / "a" / "provenance.json").read_text())["run_id"]
    assert (ledger_workspace / "pretrainlab.db").is_file() and not (tmp_path / "pretrainlab.db").exists()
    assert train_here(capfd, corpus_dir, tmp_path / "b", "--no-ledger")[0] == 0
    monkeypatch.setenv("PRETRAINLAB_NO_LEDGER", "1")
    assert train_here(capfd, corpus_dir, tmp_path / "c")[0] == 0
    monkeypatch.delenv("PRETRAINLAB_NO_LEDGER")

    listed = json.loads(cli("runs", "list", "--json").stdout)
    assert [r["run_id"] for r in listed] == [run_id]  # --no-ledger and PRETRAINLAB_NO_LEDGER=1 were not registered
    assert listed[0]["run_dir"] == str((tmp_path / "a").absolute()) and listed[0]["status"] == "ok"

    note = cli("runs", "note", run_id[:5], "lr looks high", "--author", "alice")
    assert note.returncode == 0 and f"added to run {run_id} by alice" in note.stdout
    shown = json.loads(cli("runs", "show", str(tmp_path / "a"), "--json").stdout)
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert shown["run_id"] == run_id and shown["val_bpb"] == summary["val_bpb"]
    assert [(n["author"], n["text"]) for n in shown["notes"]] == [("alice", "lr looks high")]
    assert [e["step"] for e in shown["evals"]] == [1, 2] and shown["series"]["state"] == "unchanged"

    text = cli("runs", "show", run_id)
    assert text.returncode == 0 and run_id in text.stdout and "val_bpb" in text.stdout and "lr looks high" in text.stdout
    table = cli("runs", "list", "--recipe", "name=tiny-cpu", "--status", "ok")
    assert table.returncode == 0 and run_id in table.stdout and "tiny-cpu" in table.stdout
    assert "no runs match these filters" in cli("runs", "list", "--status", "crashed").stdout


def test_a_preempted_then_resumed_run_updates_its_row(corpus_dir, tmp_path, ledger_url):
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PRETRAINLAB_DB": ledger_url}
    # 80 steps of >= 10 ms (a slowed loader), so SIGTERM lands mid-run on any machine
    overrides = tiny_overrides(corpus_dir, **{"budget.tokens": 1024 * 80, "faults.data_sleep_s": 0.01})
    args = ["train", "--recipe", "tiny-cpu", *set_args(overrides), "--out", str(run)]
    proc = forked.Forked(args, env=env)  # its own process, forked after torch's import (tests/forked.py)
    deadline = time.time() + 120
    while not ((run / "metrics.jsonl").exists() and len((run / "metrics.jsonl").read_text().splitlines()) >= 5):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-2000:]
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_PREEMPTED, err
    first = api.list_runs(db=ledger_url)
    assert len(first) == 1 and first[0]["status"] == "preempted" and first[0]["steps"] < 80

    res = cli("train", "--resume", str(run), env_extra={"PRETRAINLAB_DB": ledger_url})
    assert res.returncode == 0, res.stderr
    after = api.list_runs(db=ledger_url)
    assert len(after) == 1 and after[0]["run_id"] == first[0]["run_id"]
    assert after[0]["status"] == "ok" and after[0]["steps"] == 80
    shown = api.show_run(first[0]["run_id"], db=ledger_url)
    assert shown["series"]["last_step"] == 80 and shown["series"]["num_rows"] == 81  # 80 steps + the final eval
    assert shown["provenance"]["resumes"][0]["step"] == first[0]["steps"]


def test_a_ledger_failure_never_loses_the_run(corpus_dir, tmp_path, capfd, monkeypatch):
    broken = tmp_path / "broken.db"
    broken.write_text("this is not a database\n" * 100)
    out = tmp_path / "run"
    monkeypatch.setenv("PRETRAINLAB_DB", str(broken))
    code, stdout, stderr = train_here(capfd, corpus_dir, out, "--json")
    assert code == 0, stderr
    assert json.loads(stdout)["status"] == "ok" and json.loads((out / "summary.json").read_text())["status"] == "ok"
    warnings = [line for line in stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and f"run {out} was not registered in the ledger" in warnings[0]
    assert f"pretrainlab runs import {out}" in warnings[0] and "Traceback" not in stderr
    assert broken.read_text() == "this is not a database\n" * 100  # the broken file is left alone


def test_a_crashed_run_is_registered_as_crashed(corpus_dir, tmp_path, monkeypatch):
    from pretrainlab import eval as evaluation

    def boom(*a, **kw):
        raise RuntimeError("simulated crash in the final evaluation")

    monkeypatch.setattr(evaluation, "evaluate_bpb", boom)  # after the steps, with the run directory written
    with pytest.raises(RuntimeError, match="simulated crash"):
        api.train_run("tiny-cpu", tiny_overrides(corpus_dir, **{"budget.tokens": 2048}), tmp_path / "r", echo=False)
    rows = api.list_runs()
    assert len(rows) == 1 and rows[0]["status"] == "crashed" and rows[0]["steps"] == 2
    assert "simulated crash" in api.show_run(rows[0]["run_id"])["summary"]["error"]


def test_import_a_folder_of_runs_skips_broken_ones(corpus_dir, tmp_path):
    root = tmp_path / "runs"
    for name in ("a", "b"):
        api.train_run("tiny-cpu", tiny_overrides(corpus_dir, **{"budget.tokens": 2048}), root / name, echo=False, ledger=False)
    (root / "nested").mkdir()
    os.rename(root / "b", root / "nested" / "b")
    (root / "broken").mkdir()
    (root / "broken" / "recipe.json").write_text("{")
    res = cli("runs", "import", str(root), "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert sorted(r["run_dir"] for r in out["runs"]) == [str(root / "a"), str(root / "nested" / "b")]
    assert {r["action"] for r in out["runs"]} == {"added"}
    assert [s["run_dir"] for s in out["skipped"]] == [str(root / "broken")] and "not valid JSON" in out["skipped"][0]["error"]
    again = cli("runs", "import", str(root / "a"))
    assert again.returncode == 0 and again.stdout.startswith("updated") and "1 runs in" in again.stdout
    compare = cli("runs", "compare", str(root / "a"), str(root / "nested" / "b"), "--plot", str(tmp_path / "cmp.html"))
    assert compare.returncode == 0, compare.stderr
    assert "recipes: identical" in compare.stdout and "val_bpb" in compare.stdout and (tmp_path / "cmp.html").is_file()
    exported = cli("runs", "export", "--format", "csv", "-o", str(tmp_path / "runs.csv"))
    assert exported.returncode == 0 and "exported 2 runs" in exported.stdout
    assert len((tmp_path / "runs.csv").read_text().splitlines()) == 3
    # a copy of a run keeps its run_id: importing it would have re-pointed the original's row at the copy, silently
    shutil.copytree(root / "a", tmp_path / "copy-of-a")
    copied = json.loads(cli("runs", "import", str(tmp_path / "copy-of-a"), "--json").stdout)
    assert copied["runs"] == [] and "a copied run directory keeps its run_id" in copied["skipped"][0]["error"]
    assert {r["run_dir"] for r in api.list_runs()} == {str(root / "a"), str(root / "nested" / "b")}
    os.rename(root / "a", tmp_path / "moved-a")  # a run moved elsewhere takes its row with it
    moved = json.loads(cli("runs", "import", str(tmp_path / "moved-a"), "--json").stdout)
    assert [r["action"] for r in moved["runs"]] == ["updated"]
    assert {r["run_dir"] for r in api.list_runs()} == {str(tmp_path / "moved-a"), str(root / "nested" / "b")}


@pytest.mark.parametrize("args, fragments", [
    (["runs", "list"], ["no ledger at", "runs import"]),  # nothing registered yet in this workspace
    (["runs", "show", "nope", "--db", "{db}"], ["no run 'nope'"]),
    (["runs", "list", "--status", "okk", "--db", "{db}"], ["unknown run status 'okk'", "did you mean 'ok'"]),
    (["runs", "list", "--recipe", "model.n_layers=2", "--db", "{db}"], ["model.n_layer"]),
    (["runs", "list", "--recipe", "model.n_layer", "--db", "{db}"], ["expected KEY=VALUE"]),
    (["runs", "list", "--since", "last tuesday", "--db", "{db}"], ["--since", "2026-11-21"]),
    (["runs", "compare", "x", "--db", "{db}"], ["at least two runs"]),
    (["runs", "compare", "a", "b", "--plot", "out.svg", "--db", "{db}"], [".html", ".png"]),
    (["runs", "export", "--format", "xml", "-o", "x.xml", "--db", "{db}"], ["json, csv, parquet"]),
    (["runs", "push", "abc", "--to", "neptune", "--db", "{db}"], ["tensorboard, mlflow, wandb"]),
    (["runs", "import", "no/such/dir"], ["no such directory"]),
    (["runs", "list", "--db", "mysql://u@h/db"], ["unsupported scheme"]),
    (["runs", "bogus"], ["invalid choice"]),
])
def test_runs_errors_are_one_line_exit_2(args, fragments, tmp_path):
    db = tmp_path / "l.db"
    from pretrainlab.ledger import Ledger

    Ledger(str(db)).close()
    assert_user_error(cli(*[a.replace("{db}", str(db)) for a in args], cwd=tmp_path), *fragments)


@pytest.mark.parametrize("tracker", ["tensorboard", "mlflow", "wandb"])
def test_train_with_a_missing_tracker_fails_before_training(corpus_dir, tmp_path, capfd, monkeypatch, tracker):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == tracker else real_find_spec(name, *a))
    out = tmp_path / "run"
    code, _, err = train_here(capfd, corpus_dir, out, "--log-to", tracker)
    assert code == 2 and err.strip() == f"error: logging to {tracker} needs the {tracker} package: pip install 'pretrainlab[{tracker}]'"
    assert not out.exists()
