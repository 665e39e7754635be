"""A run directory is written by experiment code: the doctor, the ledger and their output must survive the nastiest
files a trainer can leave there, without hanging, filling memory, crashing, printing terminal escapes, or calling a
run healthy that is not."""

import json
import os
import threading

import pytest
from test_doctor import DOMAINS, make_rows, write_run

from pretrainlab import rundir
from pretrainlab.doctor import diagnose, render_text
from pretrainlab.doctor.runfiles import MAX_DOMAINS, MAX_WORLD
from pretrainlab.errors import UserError
from pretrainlab.ledger import Ledger
from pretrainlab.ledger.export import strict_json, write_export


def _diagnose_within(run, seconds=30.0):
    """diagnose(run), failing the test (not hanging the suite) if it has not returned in `seconds`."""
    out = {}
    worker = threading.Thread(target=lambda: out.update(report=diagnose(run)), daemon=True)
    worker.start()
    worker.join(seconds)
    assert "report" in out, f"the doctor did not return within {seconds} s"
    return out["report"]


@pytest.mark.parametrize("manifest", ["fifo", "zero", "list", "badtypes"])
def test_the_corpus_manifest_a_run_points_at_is_read_as_a_runs_file(tmp_path, manifest):
    """provenance.data_path is the run's word: a FIFO there hung the doctor (and the dashboard's worker) for good, /dev/zero
    read until memory ran out, a manifest of the wrong shape broke the train/val detector."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    run = write_run(tmp_path / "run", make_rows(), provenance={"data_path": str(corpus)})
    target = corpus / "manifest.json"
    if manifest == "fifo":
        os.mkfifo(target)
    elif manifest == "zero":
        target.symlink_to("/dev/zero")
    elif manifest == "list":
        target.write_text("[1, 2]")
    else:
        target.write_text(json.dumps({"domains": {"code": {"train": 5}, "docs": {"train": {"num_tokens": "many"}}, "x": 3}}))
    report = _diagnose_within(run)
    assert not [c for c in report.checks if "detector error" in c.note]
    assert any("train_val_gap" in c.detector for c in report.checks), [c.detector for c in report.checks]


def test_a_manifest_gives_epochs_per_domain(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "manifest.json").write_text(json.dumps({"domains": {d: {"train": {"num_tokens": 64 * 16 * 300}} for d in DOMAINS}}))
    rows = make_rows()
    run = write_run(tmp_path / "run", rows, provenance={"data_path": str(corpus)},
                    evals=[{"type": "eval", "step": 300, "tokens": 300 * 1024, "val_bpb": 6.0, "val_bpb_domains": {d: 6.0 for d in DOMAINS}}])
    finding = next(f for f in diagnose(run).findings if f.id == "train_val_gap")
    epochs = finding.evidence["epochs"]
    assert set(epochs) == set(DOMAINS) and all(0 < e < 1 for e in epochs.values())


def test_thousands_of_domains_and_ranks_are_cut_with_a_note(tmp_path):
    """A 2 MB metrics.jsonl naming a new domain on each of 30,000 rows took 110 s and 7 GB; a row listing 4 million ranks
    asked numpy for 9 GiB and crashed the doctor."""
    rows = [{"type": "train", "step": i, "loss": 2.0, "domain_rows": {f"d{i}": 1}} for i in range(1, 30_001)]
    rows[-1]["rank_step_s"] = [0] * 200_000  # (a line of 4 million is past what a metrics line may be, and skipped)
    run = write_run(tmp_path / "run", rows, evals=[])
    report = _diagnose_within(run, 60)
    notes = " ".join(report.data_quality)
    assert f"30,003 data domains, more than the {MAX_DOMAINS}" in notes and "unreadable line" not in notes  # 3 in provenance
    assert f"rank_step_s lists 200,000 ranks in a row, more than the {MAX_WORLD:,}" in notes


def test_json_nested_past_the_limit_is_not_json_and_never_reaches_a_writer(tmp_path):
    """990 levels parsed, and every recursive writer after it (the doctor's --json, the ledger's export, the dashboard's
    redaction) overflowed: one such run broke `runs export` for the whole ledger."""
    deep = "[" * 700 + "]" * 700
    with pytest.raises(ValueError, match="nested deeper than 64"):
        rundir._loads(deep.encode())
    assert rundir._loads(("[" * 64 + "]" * 64).encode()) is not None
    run = write_run(tmp_path / "run", make_rows(), summary={"status": "rejected"})
    (run / "summary.json").write_text(json.dumps({"status": "rejected", "steps": 300})[:-1] + ', "lab_score": {"probes": ' + deep + "}}")
    (run / "provenance.json").write_text((run / "provenance.json").read_text()[:-1] + ', "zz": ' + "[" * 980 + "]" * 980 + "}")
    report = diagnose(run)
    json.dumps(report.to_dict())  # (was a RecursionError)
    assert any("summary.json" in n for n in report.data_quality) and any("provenance.json" in n for n in report.data_quality)
    with Ledger(f"sqlite:///{tmp_path}/l.db") as lg:
        lg.register_run(write_run(tmp_path / "fine", make_rows()))
        with pytest.raises(UserError, match="summary.json is not valid JSON \\(JSON nested deeper than 64 levels\\)"):
            lg.register_run(run)  # (a campaign records the refusal as a note, and the run as failed)
        runs = lg.list_runs()
    strict_json(runs)
    write_export(runs, "json", tmp_path / "all.json")
    assert len(json.loads((tmp_path / "all.json").read_text())) == 1


def test_escapes_and_lone_surrogates_in_a_runs_strings_are_replaced(tmp_path):
    """A recipe name or run id carrying `ESC ]0;...BEL ESC [2J` retitled the terminal and cleared it when the doctor
    printed it; a lone surrogate ("\\ud800", valid JSON) crashed the text view and the ledger's CSV export."""
    esc = "\x1b]0;PWNED\x07\x1b[2J\x1b[31mRED"
    rows = make_rows()
    for r in rows:
        r["domain_rows"] = {f"code{esc}": r["domain_rows"]["code"], "docs\ud800": r["domain_rows"]["docs"]}
        r["max_grad_layer"] = "head" + esc
    run = write_run(tmp_path / "run", rows, recipe={"name": "r" + esc}, provenance={"run_id": "id\ud800" + esc, "device": "d" + esc},
                    summary={"status": "crashed", "error": "boom\ud800" + esc + "\nsecond line"})
    text = render_text(diagnose(run), color=False)
    assert "\x1b" not in text and "\x07" not in text and "PWNED" in text  # shown, made harmless
    text.encode("utf-8")
    assert "run_crashed" in diagnose(run).ids("error")
    with Ledger(f"sqlite:///{tmp_path}/l.db") as lg:
        lg.register_run(run)
        runs = lg.list_runs()
    write_export(runs, "csv", tmp_path / "runs.csv")
    assert "\x1b" not in (tmp_path / "runs.csv").read_text()
    assert rundir._loads(json.dumps({"a\x1bb": ["ok\ttab\nline", "\x9b"]}).encode()) == {"a\ufffdb": ["ok\ttab\nline", "\ufffd"]}


@pytest.mark.parametrize("status", ["CRASHED", "bogus", "crashed\x1b[0m"])
def test_a_status_the_trainer_never_writes_is_a_warning_not_healthy(tmp_path, status):
    report = diagnose(write_run(tmp_path / "run", make_rows(), summary={"status": status}))
    assert "run_status_unknown" in report.ids("warning")


@pytest.mark.parametrize("lab_score", ["nope", {"splits": {"val": 3}}, {"splits": [1]}, {"reason": 7}])
def test_a_rejected_run_with_a_malformed_lab_score_is_still_rejected(tmp_path, lab_score):
    report = diagnose(write_run(tmp_path / "run", make_rows(), summary={"status": "rejected", "lab_score": lab_score}))
    assert "run_rejected" in report.ids("error")
    assert not [c for c in report.checks if "detector error" in c.note]


@pytest.mark.parametrize("kind", ["symlink", "fifo", "folder"])
def test_a_metrics_file_that_is_not_a_plain_file_is_said_to_be_ignored(tmp_path, kind):
    run = write_run(tmp_path / "run", make_rows())
    (run / "metrics.jsonl").unlink()
    if kind == "symlink":
        (run / "metrics.jsonl").symlink_to("/etc/hostname")
    elif kind == "fifo":
        os.mkfifo(run / "metrics.jsonl")
    else:
        (run / "metrics.jsonl").mkdir()
    report = _diagnose_within(run)
    note = "a symbolic link" if kind == "symlink" else "not a regular file"
    assert any(n.startswith(f"metrics.jsonl is {note}: not read") for n in report.data_quality), report.data_quality
    assert not any("empty" in n for n in report.data_quality)
