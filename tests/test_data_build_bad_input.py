"""Bad input files in a data recipe's sources: skipped with their reason and counted, never fatal
and never silently dropped; a source that yields nothing is a one-line error (data/sources.py, build.py)."""

import gzip
import json
import random
from pathlib import Path

import pytest

from conftest import cli
from pretrainlab import api
from pretrainlab.data import build as build_module
from pretrainlab.data.build import build_corpus
from pretrainlab.data.recipe import parse_recipe
from pretrainlab.data.sources import iter_documents
from pretrainlab.errors import UserError

zstandard = pytest.importorskip("zstandard", reason="the .jsonl.zst cases need zstandard (the data extra)")
pa = pytest.importorskip("pyarrow", reason="the .parquet cases need pyarrow (the data extra)")
pq = pytest.importorskip("pyarrow.parquet")


def sentence(i: int) -> str:
    r = random.Random(i)
    return " ".join(r.choice(["the", "press", "printer", "shop", "machine", "hand", "moved", "slowly", "book"]) for _ in range(30)) + "."


def jsonl(records) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()


GOOD_LINES = jsonl([{"text": sentence(i)} for i in range(200)])  # compresses well: a cut lands inside the data


def write_parquet(path: Path, table) -> bytes:
    pq.write_table(table, path)
    return path.read_bytes()


def good_folder(folder: Path) -> Path:
    """Five good documents: enough for a domain's train, val, monitor and test splits."""
    folder.mkdir()
    for i in range(5):
        (folder / f"ok{i}.txt").write_text(sentence(i))
    return folder


def write_nasty_folder(folder: Path) -> dict[str, str]:
    """Every kind of bad file next to good ones; returns {bad file: a phrase its skip reason must hold}."""
    folder.mkdir()
    (folder / "good.txt").write_text(sentence(1) + "\n")
    (folder / "good.jsonl").write_bytes(jsonl([{"text": sentence(2)}, {"text": sentence(3)}]))
    gz = gzip.compress(GOOD_LINES)
    (folder / "good.jsonl.gz").write_bytes(gz)
    frame = zstandard.ZstdCompressor().compress(GOOD_LINES)
    (folder / "two-frames.jsonl.zst").write_bytes(frame + zstandard.ZstdCompressor().compress(jsonl([{"text": "after the frame"}])))
    (folder / "huge-line.jsonl").write_bytes(jsonl([{"text": "word " * 700_000}]))  # a 3.5 MB line is text, not an error
    (folder / "blank.txt").write_text(" \n")  # an empty document: dropped before splitting, not an unreadable file
    parquet = write_parquet(folder / "rows.parquet", pa.table({"text": [sentence(4), None, sentence(5)]}))

    bad = {
        "cut.jsonl.gz": (gz[: len(gz) // 2], "EOFError"),
        "flipped.jsonl.gz": (gz[:60] + bytes([gz[60] ^ 0xFF]) + gz[61:], "cannot read after line"),
        "not-gzip.jsonl.gz": (GOOD_LINES, "Not a gzipped file"),
        "cut.jsonl.zst": (frame[: len(frame) // 2], "truncated"),
        "cut-second-frame.jsonl.zst": (frame + frame[: len(frame) // 2], "truncated"),
        "garbage.jsonl.zst": (bytes(range(256)) * 4, "ZstdError"),
        "cut.parquet": (parquet[: len(parquet) // 2], "cannot read as parquet"),
        "latin1.txt": ("café au lait".encode("latin-1"), "not UTF-8"),
        "png.txt": (b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR" + bytes(64), "not UTF-8"),
        "zeros.md": (bytes(1024), "a binary file"),
        # invalid UTF-8 after 100 good lines: the whole file goes, not the first 100 lines
        "late-bad-bytes.jsonl": (GOOD_LINES[: GOOD_LINES.index(b"\n", 10_000) + 1] + b'{"text": "caf\xe9"}\n' + GOOD_LINES,
                                 "UnicodeDecodeError"),
        "image.png": (b"\x89PNG\r\n\x1a\n", "unsupported file type"),
    }
    for name, (data, _) in bad.items():
        (folder / name).write_bytes(data)
    write_parquet(folder / "other-column.parquet", pa.table({"content": [sentence(6)]}))
    write_parquet(folder / "int-column.parquet", pa.table({"text": [1, 2, 3]}))
    (folder / "records.jsonl").write_bytes(
        jsonl([{"text": sentence(7)}]) + b'{"text": "cut off\n' + jsonl([{"body": "no text"}, ["a", "list"], {"text": 42}])
        + json.dumps({"text": "lone \ud800 surrogate"}).encode() + b"\n" + jsonl([{"text": sentence(8)}])
    )
    return {name: phrase for name, (_, phrase) in bad.items()} | {
        "other-column.parquet": "no column 'text' (found: content)",
        "int-column.parquet": "holds int64, not text",
    }


RECORD_SKIPS = {  # (path, a phrase of its reason) for the bad records of files that are otherwise read
    ("records.jsonl:2", "malformed JSON"),
    ("records.jsonl:3", "no string field 'text' (found: body)"),
    ("records.jsonl:4", "no string field 'text' (found: list)"),
    ("records.jsonl:5", "'text' is int, not text"),
    ("records.jsonl:6", "unpaired surrogate"),
    ("rows.parquet:1", "'text' is null"),
}


def test_every_bad_file_is_skipped_with_its_reason_and_the_rest_is_built(tmp_path):
    bad_files = write_nasty_folder(tmp_path / "web")
    (tmp_path / "r.toml").write_text('[corpus]\nval_fraction = 0.2\nnum_workers = 1\n'
                                     '[[sources]]\npath = "web"\ndomain = "web"\n[[steps]]\nstep = "normalize"\n')
    res = cli("data", "build", "r.toml", "--out", "out", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert f"skipped as unreadable: {len(bad_files)} file(s), {len(RECORD_SKIPS)} record(s)" in res.stdout

    report = api.corpus_info(str(tmp_path / "out"))  # what `data report --json` prints
    skipped = report["build"]["skipped_inputs"]
    assert (skipped["num_files"], skipped["num_records"], skipped["num_unlisted"]) == (len(bad_files), len(RECORD_SKIPS), 0)
    by_path = {x["path"]: x for x in skipped["items"]}
    assert set(by_path) == set(bad_files) | {p for p, _ in RECORD_SKIPS}
    for name, phrase in bad_files.items():
        assert by_path[name]["whole_file"] and phrase in by_path[name]["reason"], by_path[name]
    for path, phrase in RECORD_SKIPS:
        assert not by_path[path]["whole_file"] and phrase in by_path[path]["reason"], by_path[path]
    assert all(x["source"] == "web" and x["domain"] == "web" and "\n" not in x["reason"] for x in skipped["items"])

    fates = [json.loads(line) for line in (tmp_path / "out" / "fates.jsonl").read_text().splitlines()]
    files = {f["path"].split(":")[0] for f in fates}
    assert files == {"good.txt", "good.jsonl", "good.jsonl.gz", "two-frames.jsonl.zst", "huge-line.jsonl", "blank.txt", "rows.parquet",
                     "records.jsonl"}  # nothing of a skipped file, not even the lines before its fault
    paths = {f["path"] for f in fates}
    assert {"records.jsonl:1", "records.jsonl:7", "rows.parquet:0", "rows.parquet:2", "two-frames.jsonl.zst:201"} <= paths
    assert sum(p.startswith("good.jsonl.gz:") for p in paths) == 200
    assert next(f for f in fates if f["path"] == "blank.txt")["fate"] == "dropped"
    assert report["build"]["num_input_docs"] == len(fates)

    res = cli("data", "report", "out", "--html", "report.html", "--json", cwd=tmp_path)
    assert json.loads(res.stdout)["build"]["skipped_inputs"] == skipped
    page = (tmp_path / "report.html").read_text()
    assert "Skipped as unreadable" in page and "cut.jsonl.zst" in page and "late-bad-bytes.jsonl" in page


def test_skipped_inputs_are_all_counted_and_the_list_is_capped(tmp_path, monkeypatch):
    folder = good_folder(tmp_path / "web")
    (folder / "bad.jsonl").write_bytes(b"not json\n" * 5 + jsonl([{"text": sentence(1)}]))
    monkeypatch.setattr(build_module, "MAX_SKIPPED_LISTED", 3)
    out, _ = build_corpus(parse_recipe('[[sources]]\npath = "web"\ndomain = "web"\n', tmp_path), tmp_path / "out", progress=False)
    skipped = api.corpus_info(str(out))["build"]["skipped_inputs"]
    assert (skipped["num_records"], len(skipped["items"]), skipped["num_unlisted"]) == (5, 3, 2)


def test_changing_which_file_is_bad_rebuilds(tmp_path):
    folder = good_folder(tmp_path / "web")
    (folder / "x.jsonl.gz").write_bytes(b"garbage")
    recipe = parse_recipe('[[sources]]\npath = "web"\ndomain = "web"\n', tmp_path)
    assert build_corpus(recipe, tmp_path / "out", progress=False)[1] is False
    assert build_corpus(recipe, tmp_path / "out", progress=False)[1] is True
    (folder / "x.jsonl.gz").write_bytes(gzip.compress(b"garbage"))  # still unreadable, for another reason
    assert build_corpus(recipe, tmp_path / "out", progress=False)[1] is False
    reason = api.corpus_info(str(tmp_path / "out"))["build"]["skipped_inputs"]["items"][0]["reason"]
    assert "malformed JSON" in reason


def test_a_source_that_yields_nothing_is_one_line_and_writes_nothing(tmp_path):
    (tmp_path / "cut.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(GOOD_LINES)[:100])
    good_folder(tmp_path / "notes")
    text = '[[sources]]\npath = "notes"\ndomain = "notes"\n[[sources]]\npath = "cut.jsonl.zst"\ndomain = "web"\n'
    (tmp_path / "r.toml").write_text(text)
    res = cli("data", "build", "r.toml", "--out", "out", cwd=tmp_path)
    assert res.returncode == 2 and res.stderr.strip().count("\n") == 0
    assert "source 'cut.jsonl.zst' (domain web) yields no documents (1 input(s) skipped, the first cut.jsonl.zst:" in res.stderr
    assert "truncated" in res.stderr
    assert not (tmp_path / "out").exists()
    folder = tmp_path / "empty"
    folder.mkdir()
    (folder / "only.jsonl").write_text("\n\n")
    with pytest.raises(UserError, match=r"source 'empty' \(domain web\) yields no documents \(it holds no documents\)"):
        build_corpus(parse_recipe('[[sources]]\npath = "empty"\ndomain = "web"\n', tmp_path), tmp_path / "out", progress=False)


def test_without_skipping_the_reader_still_stops_at_the_first_bad_input(tmp_path):
    """`data prepare` reads strictly: the zstd reader now notices a cut frame there too."""
    frame = zstandard.ZstdCompressor().compress(GOOD_LINES)
    (tmp_path / "cut.jsonl.zst").write_bytes(frame + frame[:50])
    with pytest.raises(UserError, match=r"cut\.jsonl\.zst: cannot read after line 200 \(EOFError: the file ends inside a zstd frame"):
        list(iter_documents(tmp_path / "cut.jsonl.zst", "web"))
    (tmp_path / "zeros.txt").write_bytes(bytes(10))
    with pytest.raises(UserError, match="a binary file"):
        list(iter_documents(tmp_path / "zeros.txt", "web"))


@pytest.mark.parametrize("text, error", [
    ('corpus = 3\n[[sources]]\nbuiltin = true\n', r"\[corpus\]: should be a table of fields, got 3"),
    ('sources = [1]\n', r"sources\[0\]: should be a table of fields, got 1"),
    ('steps = ["a"]\n[[sources]]\nbuiltin = true\n', r"steps are \[\[steps\]\] tables"),
    ('[[sources]]\nbuiltin = true\n[[steps]]\nstep = "gopher_repetition"\nngram_rules = "false"\n',
     r"ngram_rules should be true or false, got 'false'"),  # a string, which Python takes as true
])
def test_a_recipe_of_the_wrong_shape_is_one_line(tmp_path, text, error):
    from pretrainlab.data.recipe import parse_recipe
    from pretrainlab.errors import UserError

    with pytest.raises(UserError, match=error):
        parse_recipe(text, tmp_path)


def test_a_damaged_fates_file_and_a_points_file_that_is_not_text_are_one_line(tmp_path):
    from pretrainlab.data.fates import FATES_FILE, why
    from pretrainlab.errors import UserError
    from pretrainlab.scaling.points import load_points

    for body in (b"\xff\xfe\n", b"{not json\n", b"[1, 2]\n", b'{"path": "a", "sha256": "b", "fate": "made-up"}\n'):
        (tmp_path / FATES_FILE).write_bytes(body)
        with pytest.raises(UserError, match="is damaged.*rebuild the corpus"):
            why(tmp_path, "a")
    (tmp_path / "points.csv").write_bytes(b"N,D,loss\n\xff\xff,1,2\n")
    with pytest.raises(UserError, match="not UTF-8 text"):
        load_points(tmp_path / "points.csv")


def test_a_step_naming_a_domain_no_source_gives_is_one_line_and_a_step_that_took_most_is_said(tmp_path):
    """`domains = ["note"]` for a source "notes" built a corpus in which the step had run on nothing."""
    notes = tmp_path / "notes"
    notes.mkdir()
    for i in range(8):
        (notes / f"n{i}.txt").write_text(" ".join(sentence(i * 10 + k) for k in range(4)))
    head = '[corpus]\nname = "t"\n[[sources]]\npath = "notes/"\ndomain = "notes"\n[[steps]]\nstep = "gopher_quality"\n'
    (tmp_path / "typo.toml").write_text(head + 'domains = ["note"]\n')
    res = cli("data", "build", "typo.toml", "--out", "out", cwd=tmp_path)
    assert res.returncode == 2 and res.stderr.strip() == ("error: step 1 (gopher_quality): domains names 'note', which no "
                                                          "source gives (did you mean 'notes'? the sources' domains: notes)")
    assert not (tmp_path / "out").exists()
    (tmp_path / "lang.toml").write_text(head.replace("gopher_quality", "language_id"))  # its own default names "code"
    assert cli("data", "build", "lang.toml", "--out", "lang", cwd=tmp_path).returncode == 0
    (tmp_path / "strict.toml").write_text(head + "min_words = 100000\n")
    res = cli("data", "build", "strict.toml", "--out", "strict", cwd=tmp_path)
    assert res.returncode == 0 and "note: step 1 (gopher_quality) kept 0 of 5 training documents: check its thresholds" in res.stdout
