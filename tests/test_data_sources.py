"""Reading user corpora: every supported format, folders, and the errors users will hit."""

import gzip
import json
import sys

import pytest

from pretrainlab.data import iter_documents, iter_hf_dataset
from pretrainlab.errors import UserError

RECORDS = [{"text": "first document", "id": 1}, {"text": "second — naïve ☃", "id": 2}]


def write_jsonl(path, records=RECORDS):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def texts(docs):
    return [d.text for d in docs]


def test_txt_and_md_are_one_document_per_file(tmp_path):
    (tmp_path / "a.txt").write_text("hello ☃\n", encoding="utf-8")
    (doc,) = iter_documents(tmp_path / "a.txt", domain="notes")
    assert (doc.domain, doc.source, doc.path, doc.text) == ("notes", "file", "a.txt", "hello ☃\n")
    (tmp_path / "b.md").write_text("# Title\n", encoding="utf-8")
    assert texts(iter_documents(tmp_path / "b.md", "notes")) == ["# Title\n"]


def test_jsonl_and_gzip(tmp_path):
    docs = list(iter_documents(write_jsonl(tmp_path / "d.jsonl"), "web"))
    assert texts(docs) == [r["text"] for r in RECORDS]
    assert [d.path for d in docs] == ["d.jsonl:1", "d.jsonl:2"]
    with gzip.open(tmp_path / "d.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write((tmp_path / "d.jsonl").read_text(encoding="utf-8"))
    assert texts(iter_documents(tmp_path / "d.jsonl.gz", "web")) == [r["text"] for r in RECORDS]


def test_jsonl_zst(tmp_path):
    zstandard = pytest.importorskip("zstandard")
    raw = write_jsonl(tmp_path / "d.jsonl").read_bytes()
    (tmp_path / "d.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(raw))
    assert texts(iter_documents(tmp_path / "d.jsonl.zst", "web")) == [r["text"] for r in RECORDS]


def test_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    pq.write_table(pa.table({"content": [r["text"] for r in RECORDS], "id": [1, 2]}), tmp_path / "d.parquet")
    docs = list(iter_documents(tmp_path / "d.parquet", "web", text_field="content"))
    assert texts(docs) == [r["text"] for r in RECORDS] and docs[1].path == "d.parquet:1"
    with pytest.raises(UserError, match="no column 'text'.*content, id"):
        list(iter_documents(tmp_path / "d.parquet", "web"))


def test_folder_is_recursive_sorted_and_skips_unknown_files(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "z.txt").write_text("z", encoding="utf-8")
    (tmp_path / "b.txt").write_text("b", encoding="utf-8")
    write_jsonl(tmp_path / "a.jsonl")
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    with pytest.warns(UserWarning, match="image.png"):
        docs = list(iter_documents(tmp_path, "mixed"))
    assert [d.path for d in docs] == ["a.jsonl:1", "a.jsonl:2", "b.txt", "sub/z.txt"]


def test_malformed_json_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n\n{"text": "broken\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"bad\.jsonl:3: malformed JSON"):
        list(iter_documents(bad, "web"))
    write_jsonl(bad, [{"body": "no text field"}])
    with pytest.raises(UserError, match=r"bad\.jsonl:1: no string field 'text' \(found: body\)"):
        list(iter_documents(bad, "web"))


def test_input_errors_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="input not found"):
        list(iter_documents(tmp_path / "missing", "web"))
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(UserError, match="unsupported file type"):
        list(iter_documents(tmp_path / "data.csv", "web"))
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
    with pytest.raises(UserError, match="not UTF-8"):
        list(iter_documents(tmp_path / "latin1.txt", "web"))
    (tmp_path / "cut.jsonl.gz").write_bytes(gzip.compress(b'{"text": "a"}\n' * 100)[:40])
    with pytest.raises(UserError, match="cannot read"):
        list(iter_documents(tmp_path / "cut.jsonl.gz", "web"))


def test_hf_dataset_from_a_local_file(tmp_path):
    pytest.importorskip("datasets")
    path = write_jsonl(tmp_path / "d.jsonl")
    docs = list(iter_hf_dataset("json", data_files=str(path), limit=1, domain="web"))
    assert texts(docs) == [RECORDS[0]["text"]] and docs[0].source == "hf:json" and docs[0].domain == "web"


def test_missing_optional_packages_name_the_pip_install(tmp_path, monkeypatch):
    for module in ("zstandard", "pyarrow", "pyarrow.parquet", "datasets"):
        monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail
    (tmp_path / "d.jsonl.zst").write_bytes(b"")
    with pytest.raises(UserError, match=r"needs the `zstandard` package: pip install 'pretrainlab\[data\]'"):
        list(iter_documents(tmp_path / "d.jsonl.zst", "web"))
    (tmp_path / "d.parquet").write_bytes(b"")
    with pytest.raises(UserError, match=r"needs the `pyarrow` package: pip install 'pretrainlab\[data\]'"):
        list(iter_documents(tmp_path / "d.parquet", "web"))
    with pytest.raises(UserError, match=r"pip install 'pretrainlab\[hf\]'"):
        list(iter_hf_dataset("owner/name"))
