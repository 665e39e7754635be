"""Hostile inputs to the data workbench: --out folders that are not the lab's, hand-edited or
damaged corpora, pathological texts for the steps' patterns, and bad scaling points files.
Each must end in a one-line UserError (or the right result), never a traceback, a hang,
silently wrong data or a deleted file the lab did not write."""

import json
import random
import re
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from conftest import cli
from pretrainlab import api
from pretrainlab.data import steps as S
from pretrainlab.data.build import build_corpus
from pretrainlab.data.fates import iter_fates, why
from pretrainlab.data.loader import BatchLoader
from pretrainlab.data.recipe import load_recipe
from pretrainlab.data.shards import Corpus, corpus_report, prepare_corpus
from pretrainlab.data.sources import Document
from pretrainlab.data.tokenizers import BPETokenizer
from pretrainlab.errors import UserError
from pretrainlab.scaling.points import load_points

WORDS = "ships sail over the grey sea while gulls cry above harbours and lighthouses keep watch through the long night".split()


def sentence(i: int) -> str:
    r = random.Random(i)
    return f"Document {i} talks about " + " ".join(r.choice(WORDS) for _ in range(30)) + " ships.\n"


def write_recipe(tmp_path: Path, steps: str = '[[steps]]\nstep = "normalize"\n', with_copies: bool = True) -> Path:
    """12 documents; with_copies adds z*.txt, each a d*.txt with three trailing spaces."""
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    for i in range(12):
        (src / f"d{i:02d}.txt").write_text(sentence(i))
        if with_copies:
            (src / f"z{i:02d}.txt").write_text(sentence(i).replace(" ships.\n", " ships.   \n"))
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'[corpus]\nname = "r"\nval_fraction = 0.25\nnum_workers = 1\n\n[[sources]]\npath = "src"\ndomain = "web"\n\n{steps}')
    return recipe


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """A derived corpus (byte tokenizer) of the F5 inputs; tests copy it before damaging it."""
    tmp = tmp_path_factory.mktemp("built")
    out, cached = build_corpus(load_recipe(write_recipe(tmp)), tmp / "corpus", progress=False)
    assert not cached
    return out


def copy_corpus(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def edit_manifest(corpus: Path, edit) -> None:
    manifest = json.loads((corpus / "manifest.json").read_text())
    edit(manifest)
    (corpus / "manifest.json").write_text(json.dumps(manifest))


def one_line(e: pytest.ExceptionInfo) -> str:
    message = str(e.value)
    assert "\n" not in message
    return message


# --- F2: --out never deletes what the lab did not write ----------------------------------


def test_out_folder_that_is_not_a_lab_corpus_is_refused_and_kept(tmp_path, built):
    recipe = load_recipe(write_recipe(tmp_path))
    mine = tmp_path / "mydata"
    mine.mkdir()
    (mine / "notes.txt").write_text("notes")
    (mine / "fates.jsonl").write_text("")
    with pytest.raises(UserError, match="not a derived corpus") as e:
        build_corpus(recipe, mine, progress=False)
    one_line(e)
    assert (mine / "notes.txt").read_text() == "notes"

    # a real derived corpus with a file of the user's in it: refused too, nothing deleted
    other = copy_corpus(built, tmp_path / "other")
    edit_manifest(other, lambda m: m["source"].update(build_sha256="0" * 64))  # not this build: would be rebuilt
    (other / "my-notes.txt").write_text("mine")
    with pytest.raises(UserError, match="my-notes.txt"):
        build_corpus(recipe, other, progress=False)
    assert (other / "my-notes.txt").read_text() == "mine"

    # a plain derived corpus is replaced; an empty folder is used
    (other / "my-notes.txt").unlink()
    assert build_corpus(recipe, other, progress=False) == (other, False)
    (tmp_path / "empty").mkdir()
    assert build_corpus(recipe, tmp_path / "empty", progress=False) == (tmp_path / "empty", False)


def test_out_refusal_on_the_command_line_is_one_line_exit_2(tmp_path):
    recipe = write_recipe(tmp_path, with_copies=False)
    mine = tmp_path / "mydata"
    mine.mkdir()
    (mine / "notes.txt").write_text("notes")
    (mine / "fates.jsonl").write_text("")
    r = cli("data", "build", str(recipe), "--out", str(mine))
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert (mine / "notes.txt").exists()


# --- F5: fates agree with the corpus when a rewrite makes two documents identical ---------


def test_documents_made_identical_by_a_rewrite_are_removed_as_duplicates(built):
    fates = {f["path"]: f for f in iter_fates(built)}
    in_corpus = {(d["domain"], d["path"]) for d in map(json.loads, (built / "documents.jsonl").read_text().splitlines())}
    in_training = {(f["domain"], f["path"]) for f in fates.values() if f["fate"] in ("kept", "rewritten", "held_out")}
    assert in_training == in_corpus
    copies = [f for p, f in fates.items() if p.startswith("z") and f["split"] == "train"]
    assert copies and all(f["fate"] == "removed" for f in copies)
    duplicates = [f for f in copies if f["removed_by"]["rule"] == "duplicate_after_rewrite"]
    assert duplicates and all(f["removed_by"]["rule"] == "copy_of_held_out" for f in copies if f not in duplicates)
    assert all(f["removed_by"]["kept_doc"] == "d" + f["path"][1:] for f in duplicates)
    manifest = json.loads((built / "manifest.json").read_text())
    assert manifest["num_dropped_duplicates"] == 0
    report = json.loads((built / "build_report.json").read_text())
    in_train = report["fates"].get("kept", 0) + report["fates"].get("rewritten", 0)
    assert in_train == manifest["domains"]["web"]["train"]["num_docs"]
    assert "kept copy is d" in why(built, duplicates[0]["path"])["explanation"]


# --- F6, F15: hand edits the checks must catch ----------------------------------------------


def test_a_dtype_the_vocabulary_does_not_use_is_refused(tmp_path, built):
    corpus = copy_corpus(built, tmp_path / "c")

    def to_uint8(m):
        m["dtype"] = "uint8"
        for splits in m["domains"].values():
            for info in splits.values():
                info["num_tokens"] *= 2
    edit_manifest(corpus, to_uint8)
    with pytest.raises(UserError, match="dtype uint8") as e:
        Corpus.open(corpus, verify=True)
    one_line(e)


@pytest.mark.parametrize("file", ["/tmp/outside.bin", "../web.train.bin", "sub/web.train.bin", ""])
def test_a_shard_path_outside_the_corpus_folder_is_refused(tmp_path, built, file):
    corpus = copy_corpus(built, tmp_path / "c")
    edit_manifest(corpus, lambda m: m["domains"]["web"]["train"].update(file=file))
    with pytest.raises(UserError, match="not a plain file name") as e:
        Corpus.open(corpus, verify=False)
    one_line(e)


def bpe_corpus(out: Path, seed: int) -> Path:
    docs = [Document("web", "src", f"d{i}.txt", sentence(seed * 100 + i) * 3) for i in range(12)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tokenizer = BPETokenizer.train([d.text for d in docs], 300)
    return prepare_corpus(docs, tokenizer, out, val_fraction=0.25, progress=False)


def test_a_replaced_or_damaged_tokenizer_is_caught(tmp_path):
    a, b = bpe_corpus(tmp_path / "a", 1), bpe_corpus(tmp_path / "b", 2)
    assert json.loads((a / "manifest.json").read_text())["tokenizer"]["sha256"]
    assert Corpus.open(b).tokenizer.vocab_size == Corpus.open(a).tokenizer.vocab_size
    assert (a / "tokenizer.json").read_bytes() != (b / "tokenizer.json").read_bytes()
    (a / "tokenizer.json").write_bytes((b / "tokenizer.json").read_bytes())
    with pytest.raises(UserError, match="not the one the corpus was made with") as e:
        Corpus.open(a, verify=True)
    one_line(e)
    # a corpus written before the field existed still opens
    edit_manifest(b, lambda m: m["tokenizer"].pop("sha256"))
    Corpus.open(b, verify=True)
    # F14: a damaged tokenizer file is one line
    (b / "tokenizer.json").write_text('{"model": ')
    with pytest.raises(UserError, match="cannot be read") as e:
        Corpus.open(b, verify=True)
    one_line(e)


def put_token(corpus: Path, split: str, token_id: int) -> Path:
    """Write token_id into the split's shard and update the manifest's sha256 to match."""
    import hashlib

    shard = corpus / f"web.{split}.bin"
    ids = np.fromfile(shard, dtype="<u2")
    ids[len(ids) // 2] = token_id
    ids.tofile(shard)
    edit_manifest(corpus, lambda m: m["domains"]["web"][split].update(sha256=hashlib.sha256(shard.read_bytes()).hexdigest()))
    return shard


def test_token_ids_outside_the_vocabulary_are_caught(tmp_path, built):
    corpus = copy_corpus(built, tmp_path / "c")
    put_token(corpus, "train", 300)
    with pytest.raises(UserError, match=r"web.train.bin holds token id 300, outside the tokenizer's 256 ids") as e:
        Corpus.open(corpus, verify=True)
    one_line(e)
    loader = BatchLoader(Corpus.open(corpus, verify=False), seq_len=16, batch_rows=64, seed=0)
    with pytest.raises(UserError, match="web.train.bin holds token id 300"):
        for _ in range(200):  # every window of the shard is drawn well within this
            loader.next_batch()

    held = copy_corpus(built, tmp_path / "h")
    put_token(held, "val", 999)
    with pytest.raises(UserError, match="web.val.bin holds token id 999"):
        Corpus.open(held, verify=False).tokens("web", "val")


def test_missing_held_out_shards_are_reported(tmp_path, built):
    corpus = copy_corpus(built, tmp_path / "c")
    (corpus / "web.val.bin").unlink()
    (corpus / "web.test.bin").unlink()
    opened = Corpus.open(corpus, verify=True)  # as in an experiment's sandbox, which cannot see val and test
    assert not opened.has_split("val")
    with pytest.raises(UserError, match=r"web\.(val|test)\.bin is missing") as e:
        corpus_report(opened)
    one_line(e)
    with pytest.raises(UserError, match="is missing"):
        api.corpus_info(str(corpus))


def test_one_domain_missing_its_val_shard_is_an_error_at_open(tmp_path):
    docs = [Document(domain, "src", f"{domain}{i}.txt", sentence(i + 50 * k)) for k, domain in enumerate(("a", "b")) for i in range(8)]
    from pretrainlab.data.tokenizers import ByteTokenizer

    corpus = prepare_corpus(docs, ByteTokenizer(), tmp_path / "c", val_fraction=0.25, progress=False)
    (corpus / "a.val.bin").unlink()
    with pytest.raises(UserError, match=r"a\.val\.bin is missing"):
        Corpus.open(corpus, verify=False)


# --- F13: damaged build records -------------------------------------------------------------


@pytest.mark.parametrize("content", [b'{"steps": [', b"\xff\xfe", b"[]", b'{"steps": [1], "num_input_docs": 3, "fates": {}}'])
def test_a_damaged_build_report_is_one_line_and_a_build_replaces_it(tmp_path, content):
    recipe = load_recipe(write_recipe(tmp_path, with_copies=False))
    out, _ = build_corpus(recipe, tmp_path / "c", progress=False)
    (out / "build_report.json").write_bytes(content)
    with pytest.raises(UserError, match="build_report.json is damaged.*rebuild") as e:
        api.corpus_info(str(out))
    one_line(e)
    assert build_corpus(recipe, out, progress=False) == (out, False)  # not reused: rebuilt
    api.corpus_info(str(out))


@pytest.mark.parametrize("edit", [
    lambda f: f.update(removed_by="x"),
    lambda f: f.update(labels={"language_id": "en"}, scores={}),
    lambda f: f.update(rewrites=[{"step": 1}]),
    lambda f: f.update(removed_by={"step": "a", "rule": "b", "score": "high"}),
])
def test_a_damaged_fates_line_is_one_line(tmp_path, built, edit):
    corpus = copy_corpus(built, tmp_path / "c")
    lines = [json.loads(x) for x in (corpus / "fates.jsonl").read_text().splitlines()]
    edit(lines[0])
    (corpus / "fates.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    with pytest.raises(UserError, match="fates.jsonl is damaged.*line 1") as e:
        why(corpus, lines[0]["path"])
    one_line(e)


# --- F8: the steps' patterns run in linear time, with the same results ----------------------

OLD_EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
OLD_KEYS = re.compile(S.API_KEYS.pattern + r"|-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----")
OLD_TRAILING = re.compile(r"[ \t]+$", re.MULTILINE)
OLD_SENTENCE_END = re.compile(r"[.!?]+(?:\s|$)")


@pytest.mark.parametrize("step, text", [
    ("normalize", " " * 60_000 + "x\n"),
    ("pii", "a." * 60_000),
    ("pii", "-----BEGIN PRIVATE KEY-----" * 6_000),
    ("pii", "a@" + "a." * 60_000),
    ("c4_lines", "One two three four five " + "." * 60_000 + "x.\n"),
])
def test_pathological_texts_take_linear_time(step, text):
    # each took 10 s to minutes with the quadratic patterns; linear, they take milliseconds
    start = time.perf_counter()
    S.STEPS[step].fn(text, S.STEPS[step].config())
    assert time.perf_counter() - start < 2.0


def test_the_linear_patterns_give_the_old_results():
    r = random.Random(0)
    pieces = ["a", "b", "1", ".", "_", "%", "-", "@", " ", "é", "co", "m", "\n", "\t", "x@y.org", "A.B", "!", "?"]
    for _ in range(3000):
        t = "".join(r.choice(pieces) for _ in range(r.randint(0, 30)))
        assert S._sub_emails(t, "<E>") == OLD_EMAIL.subn("<E>", t)
        assert "\n".join(line.rstrip(" \t") for line in t.split("\n")) == OLD_TRAILING.sub("", t)
        assert len(S._SENTENCE_END.findall(t)) == len(OLD_SENTENCE_END.findall(t))
    pieces = ["-----BEGIN ", "-----END ", "RSA ", "PRIVATE KEY-----", "abc", "\n", " ", "AKIA" + "A" * 16, " sk-" + "a" * 20 + " ", "-"]
    for _ in range(3000):
        t = "".join(r.choice(pieces) for _ in range(r.randint(0, 12)))
        assert S._sub_keys(t, "<K>") == OLD_KEYS.subn("<K>", t)
    text = "Mail bob.smith@mail.example.org or 8.8.8.8 now\n-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----\n"
    assert S.pii(text, S.PIIConfig()).text == "Mail <EMAIL> or <IP> now\n<KEY>\n"


# --- F18/F20: scaling points files ----------------------------------------------------------

GOOD_ROWS = [(n, d, 2.0 + 1e3 / n + 1e3 / d) for n in (1e6, 2e6, 4e6) for d in (1e7, 2e7, 4e7)]


@pytest.mark.parametrize("name, content, match", [
    ("big.json", '[{"N": 1' + "0" * 400 + ', "D": 1, "loss": 1}]', "too large"),
    ("deep.json", "[" * 200_000, "nested too deeply"),
    ("huge.json", '[{"N": 1' + "0" * 5000 + ', "D": 1, "loss": 1}]', "not JSON this lab reads"),
    ("field.csv", "N,D,loss\n" + "1" * 140_000 + ",1,1\n", "not a CSV file"),
    ("bool.json", json.dumps([{"N": True, "D": 1e9, "loss": 3.0}]), "N is true, not a number"),
])
def test_bad_points_files_are_one_line(tmp_path, name, content, match):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(UserError, match=match) as e:
        load_points(path)
    one_line(e)


def test_a_csv_with_a_byte_order_mark_is_read(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes(("\ufeffN,D,loss\n" + "".join(f"{n},{d},{l}\n" for n, d, l in GOOD_ROWS)).encode("utf-8"))
    points = load_points(path)
    assert len(points) == 9 and points.n[0] == 1e6
