"""Hostile inputs to `data prepare` and the readers under `data build`: an --out that is not a
corpus, links and special files in a source folder, NULs, JSON no parser can read, byte-order
marks, deep folders, odd domain names and compression bombs. Each is refused on one line, or
skipped and reported, and nothing the lab did not write is ever moved or deleted
(data/prepare.py, data/sources.py)."""

import gzip
import io
import json
import os
import random
import warnings
from pathlib import Path

import pytest

from conftest import cli
from pretrainlab.data import prepare_builtin, prepare_from_inputs
from pretrainlab.data import sources
from pretrainlab.data.build import build_corpus
from pretrainlab.data.recipe import parse_recipe
from pretrainlab.data.sources import iter_documents
from pretrainlab.errors import UserError


def sentence(i: int) -> str:
    r = random.Random(i)
    return " ".join(r.choice(["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "again"]) for _ in range(20)) + "."


def notes(folder: Path, num_docs: int = 6) -> Path:
    folder.mkdir()
    for i in range(num_docs):
        (folder / f"n{i}.txt").write_text(sentence(i))
    return folder


def jsonl(records) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def skipped(path: Path, **kw) -> tuple[list, dict]:
    found = []
    docs = list(iter_documents(path, "web", on_skip=found.append, **kw))
    return docs, {s.path: s.reason for s in found}


def siblings(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}."))


# F1, F16: --out


def test_prepare_never_replaces_a_folder_that_is_not_a_corpus(tmp_path):
    src = notes(tmp_path / "notes")
    userdir = tmp_path / "userdir"
    userdir.mkdir()
    (userdir / "thesis.txt").write_text("four years of work")
    for force in (False, True):
        with pytest.raises(UserError, match=r"--out .*userdir is not empty and not a corpus \(it holds 'thesis.txt'\)"):
            prepare_from_inputs([(src, "notes")], "byte", userdir, force=force, progress=False)
    with pytest.raises(UserError, match="not a corpus"):  # refused before anything is fetched or read
        prepare_builtin("byte", userdir, force=True, progress=False)
    assert (userdir / "thesis.txt").read_text() == "four years of work" and os.listdir(userdir) == ["thesis.txt"]

    out = prepare_from_inputs([(src, "notes")], "byte", tmp_path / "empty-is-fine", progress=False)
    (out / "notes.txt").write_text("mine")  # a corpus with a file of the user's in it is no longer only a corpus
    with pytest.raises(UserError, match=r"not a corpus \(it holds 'notes.txt'\)"):
        prepare_from_inputs([(src, "notes")], "byte", out, force=True, progress=False)
    (out / "notes.txt").unlink()
    with pytest.raises(UserError, match="already holds a corpus: pass --force"):
        prepare_from_inputs([(src, "notes")], "byte", out, progress=False)
    assert prepare_from_inputs([(src, "notes")], "byte", out, force=True, progress=False) == out  # a corpus is replaced
    (tmp_path / "empty").mkdir()
    assert (prepare_from_inputs([(src, "notes")], "byte", tmp_path / "empty", progress=False) / "manifest.json").is_file()


def test_prepare_refuses_an_out_that_overlaps_an_input(tmp_path):
    src = notes(tmp_path / "notes")
    before = sorted(os.listdir(src))
    for out in (src, src / "corpus", tmp_path):
        with pytest.raises(UserError, match="overlaps the input"):
            prepare_from_inputs([(src, "notes")], "byte", out, force=True, progress=False)
    assert sorted(os.listdir(src)) == before


def test_prepare_refuses_a_link_or_a_file_at_out_before_any_work(tmp_path):
    src = notes(tmp_path / "notes")
    real = prepare_from_inputs([(src, "notes")], "byte", tmp_path / "real", progress=False)
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(UserError, match="is a symbolic link"):
        prepare_from_inputs([(src, "notes")], "byte", link, force=True, progress=False)
    assert link.is_symlink() and siblings(link) == [] and (real / "manifest.json").is_file()
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    with pytest.raises(UserError, match="exists and is not a folder"):
        prepare_from_inputs([(src, "notes")], "byte", afile, force=True, progress=False)
    assert afile.read_text() == "not a folder" and siblings(afile) == []


def test_cli_refuses_a_user_folder_with_exit_2_on_one_line(tmp_path):
    userdir = tmp_path / "userdir"
    userdir.mkdir()
    (userdir / "thesis.txt").write_text("x")
    res = cli("data", "prepare", "--builtin", "--out", str(userdir), env_extra={"PRETRAINLAB_HOME": str(tmp_path / "home")})
    assert res.returncode == 2 and res.stderr.strip().count("\n") == 0 and "not a corpus" in res.stderr, res.stderr
    assert os.listdir(userdir) == ["thesis.txt"]


# F3, F21, F17: what a source folder holds


def test_links_out_of_the_folder_and_special_files_are_not_read_but_reported(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("the password is hunter2")
    (tmp_path / "outside").mkdir()
    src = notes(tmp_path / "src")
    (src / "evil.txt").symlink_to("../secret.txt")
    (src / "zero.txt").symlink_to("/dev/zero")
    (src / "dirlink").symlink_to(tmp_path / "outside")
    (src / "loop").symlink_to(".")
    (src / "alias.txt").symlink_to("n0.txt")  # a link inside the folder is read
    (src / "broken.txt").symlink_to("nowhere.txt")
    os.mkfifo(src / "fifo.txt")
    docs, reasons = skipped(src)
    assert all("hunter2" not in d.text for d in docs) and "alias.txt" in [d.path for d in docs]
    assert "outside the source folder: not read" in reasons["evil.txt"] and "/dev/zero" in reasons["zero.txt"]
    assert "outside the source folder" in reasons["dirlink"] and reasons["loop"] == "a symbolic link to a folder: not followed"
    assert "broken symbolic link" in reasons["broken.txt"] and reasons["fifo.txt"] == "not a regular file (a FIFO)"
    with warnings.catch_warnings(record=True) as caught:  # data prepare: a warning per entry, as for unsupported files
        warnings.simplefilter("always")
        assert len(list(iter_documents(src, "web"))) == len(docs)
    assert sorted(str(w.message).split(": ")[0].rpartition("/")[2] for w in caught) == sorted(reasons)


def test_a_special_file_given_directly_is_one_line(tmp_path):
    os.mkfifo(tmp_path / "fifo.jsonl")
    with pytest.raises(UserError, match=r"fifo.jsonl is not a regular file or folder \(a FIFO\)"):
        list(iter_documents(tmp_path / "fifo.jsonl", "web"))
    with pytest.raises(UserError, match=r"/dev/null is not a regular file or folder \(a character device\)"):
        list(iter_documents("/dev/null", "web"))


def test_a_folder_of_any_depth_is_read(tmp_path):
    deep = tmp_path / "deep"
    deep.mkdir()
    folders = [deep]
    for _ in range(1100):  # rglob recursed once per level: RecursionError past ~1000
        folders.append(folders[-1] / "a")
        folders[-1].mkdir()
    (folders[-1] / "x.txt").write_text("at the bottom")
    try:
        (doc,) = iter_documents(deep, "web")
        assert doc.text == "at the bottom" and doc.path == "a/" * 1100 + "x.txt"
    finally:  # pytest's own cleanup (shutil.rmtree) recurses too deep for this tree
        (folders[-1] / "x.txt").unlink()
        for folder in reversed(folders):
            folder.rmdir()


# F4: NULs


def test_nul_characters_go_before_dedup_and_split(tmp_path):
    texts = [sentence(i) for i in range(8)]
    copies = [t.replace("fox", "f\0ox", 1) for t in texts if "fox" in t]
    assert copies
    (tmp_path / "d.jsonl").write_text(jsonl([{"text": t} for t in texts + copies] + [{"text": "\0\0\0"}]))
    out = prepare_from_inputs([(tmp_path / "d.jsonl", "web")], "byte", tmp_path / "c", progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["num_dropped_duplicates"], manifest["num_dropped_empty"]) == (len(copies), 1)
    shas = [json.loads(line)["sha256"] for line in (out / "documents.jsonl").read_text().splitlines()]
    assert len(shas) == len(set(shas)) == len(texts)

    recipe = parse_recipe('[corpus]\nnum_workers = 1\n[[sources]]\npath = "d.jsonl"\ndomain = "web"\n', tmp_path)
    built, _ = build_corpus(recipe, tmp_path / "b", progress=False)  # data build reads through the same reader
    fates = [json.loads(line) for line in (built / "fates.jsonl").read_text().splitlines()]
    assert sum(f["fate"] == "dropped" for f in fates) == len(copies) + 1


# F12, F22: JSON lines


def test_json_no_parser_reads_is_one_line_in_prepare_and_one_skipped_record_in_build(tmp_path):
    bad = tmp_path / "bad.jsonl"
    for line, reason in (("[" * 100_000 + "]" * 100_000, "nested too deeply"), ('{"text": "a", "n": ' + "9" * 5000 + "}", "4300 digits")):
        bad.write_text(jsonl([{"text": "first"}]) + line + "\n" + jsonl([{"text": "third"}]))
        with pytest.raises(UserError, match=rf"bad\.jsonl:2: .*{reason}.*: fix or remove that line"):
            list(iter_documents(bad, "web"))
        docs, reasons = skipped(bad)
        assert [d.text for d in docs] == ["first", "third"] and reason in reasons["bad.jsonl:2"]


def test_a_byte_order_mark_is_not_text(tmp_path):
    data = "\ufeff" + jsonl([{"text": "one"}, {"text": "two"}])
    (tmp_path / "bom.jsonl").write_text(data, encoding="utf-8")
    (tmp_path / "bom.jsonl.gz").write_bytes(gzip.compress(data.encode()))
    (tmp_path / "bom.txt").write_text("\ufeffplain", encoding="utf-8")
    assert [d.text for d in iter_documents(tmp_path / "bom.jsonl", "web")] == ["one", "two"]
    assert [d.text for d in iter_documents(tmp_path / "bom.jsonl.gz", "web")] == ["one", "two"]
    assert [d.text for d in iter_documents(tmp_path / "bom.txt", "web")] == ["plain"]


# F19: domain names


def test_a_domain_with_a_trailing_newline_is_refused(tmp_path):
    src = notes(tmp_path / "notes")
    with pytest.raises(UserError, match=r"domain name 'web\\n' is not usable in file names"):
        prepare_from_inputs([(src, "web\n")], "byte", tmp_path / "c", progress=False)
    assert not (tmp_path / "c").exists()


# F9, F10, F11: memory


def test_a_document_over_the_limit_is_refused_alone(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "MAX_DOCUMENT_BYTES", 1000)
    big = tmp_path / "big.jsonl"
    lines = [json.dumps(r, ensure_ascii=False) for r in ({"text": "small"}, {"text": "x" * 5000}, {"text": "é" * 600}, {"text": "after"})]
    big.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"big\.jsonl:2: a line longer than the limit on one document \(1,000 bytes"):
        list(iter_documents(big, "web"))
    docs, reasons = skipped(big)
    assert [d.text for d in docs] == ["small", "after"]  # the line after a long one is still line 4
    assert "a document of 1,200 bytes" in reasons["big.jsonl:3"] and "big.jsonl:2" in reasons
    (tmp_path / "big.txt").write_text("y" * 1001)
    with pytest.raises(UserError, match=r"big\.txt: a text file larger than the limit on one document"):
        list(iter_documents(tmp_path / "big.txt", "web"))


def test_parquet_is_read_in_small_batches_and_a_row_over_the_limit_is_skipped(tmp_path, monkeypatch):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    rows = ["z" * 2000] * 300 + ["ok"]  # one dictionary entry: a few hundred bytes on disk, 600 KB decoded
    pq.write_table(pa.table({"text": rows}), tmp_path / "bomb.parquet")
    batch_sizes = []
    real = pq.ParquetFile.iter_batches

    def recording(self, *args, **kw):
        batch_sizes.append(kw.get("batch_size", 65536))
        return real(self, *args, **kw)

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", recording)
    monkeypatch.setattr(sources, "MAX_DOCUMENT_BYTES", 1000)
    docs, reasons = skipped(tmp_path / "bomb.parquet")
    assert batch_sizes and max(batch_sizes) <= 64
    assert [d.text for d in docs] == ["ok"] and len(reasons) == 300 and "a document of 2,000 bytes" in reasons["bomb.parquet:0"]


def test_zstd_is_decompressed_in_bounded_pieces(tmp_path):
    zstandard = pytest.importorskip("zstandard")
    data = jsonl([{"text": "x"}]).encode() * 3_000_000  # 42 MB of short lines: ~4 KB compressed
    (tmp_path / "bomb.jsonl.zst").write_bytes(zstandard.ZstdCompressor(level=19).compress(data))
    sizes = []

    class Recording:
        def __init__(self, obj):
            self.obj = obj

        def decompress(self, chunk):
            out = self.obj.decompress(chunk)
            sizes.append(len(out))
            return out

        def __getattr__(self, name):
            return getattr(self.obj, name)

    frames = sources._ZstdFrames(tmp_path / "bomb.jsonl.zst", zstandard)
    real_dctx = frames._dctx
    frames._dctx = type("Dctx", (), {"decompressobj": lambda self: Recording(real_dctx.decompressobj())})()
    with io.BufferedReader(frames) as stream:
        total = sum(len(block) for block in iter(lambda: stream.read(1 << 20), b""))
    assert total == len(data) and max(sizes) <= 16 * 2**20, max(sizes)  # the old reader made all 42 MB in one call
