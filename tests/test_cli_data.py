"""`pretrainlab data prepare | report` from the command line, on local files."""

import gzip
import json

from conftest import cli, set_args, tiny_overrides


def test_prepare_user_corpus_then_train_on_it(tmp_path):
    notes = tmp_path / "notes"
    notes.mkdir()
    for i in range(6):
        (notes / f"n{i}.txt").write_text(f"Note {i}: the optimizer state is sharded across ranks. " * 40)
    with gzip.open(tmp_path / "web.jsonl.gz", "wt") as f:
        for i in range(8):
            f.write(json.dumps({"text": f"Document {i} about learning-rate warmup and loss spikes. " * 40}) + "\n")
    out = tmp_path / "corpus"
    res = cli("data", "prepare", "--input", f"{notes}:notes", "--input", str(tmp_path / "web.jsonl.gz"), "--out", str(out))
    assert res.returncode == 0, res.stderr
    report = json.loads(cli("data", "report", str(out), "--json").stdout)
    assert set(report["domains"]) == {"notes", "web"}  # 'web' named after the file
    assert report["domains"]["web"]["val"]["num_docs"] >= 1
    run = tmp_path / "run"
    res = cli("train", "--recipe", "tiny-cpu", *set_args(tiny_overrides(out, **{"budget.tokens": 2048, "data.weights": "notes:1,web:3",
                                                                                 "eval.tokens_per_domain": 256})), "--out", str(run))
    assert res.returncode == 0, res.stderr
    assert set(json.loads((run / "summary.json").read_text())["val_bpb_domains"]) == {"notes", "web"}


def test_prepare_errors_are_one_line(tmp_path):
    res = cli("data", "prepare", "--input", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "c"))
    assert res.returncode == 2 and "missing.txt" in res.stderr and "Traceback" not in res.stderr
    res = cli("data", "prepare", "--builtin", "--tokenizer", "wordpiece")
    assert res.returncode == 2 and "wordpiece" in res.stderr
    res = cli("data", "prepare")
    assert res.returncode == 2 and "--builtin" in res.stderr
