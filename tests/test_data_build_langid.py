"""The language_id step (data/langid.py): lingua, offline, scored into the fates, code left alone."""

import json
import subprocess
import sys

import pytest

from pretrainlab import api
from pretrainlab.data import langid
from pretrainlab.data.build import build_corpus
from pretrainlab.data.langid import LanguageIdConfig, detect, language_id
from pretrainlab.data.recipe import parse_recipe
from pretrainlab.errors import UserError

pytest.importorskip("lingua", reason="the language_id step needs lingua-language-detector (the data extra)")

ENGLISH = ("The history of the printing press is a story of many small improvements. Each printer learned from the one before, "
           "and the work of the shop moved slowly from hand to machine.\n")
GERMAN = ("Die Geschichte der Druckerpresse ist eine Geschichte vieler kleiner Verbesserungen. Jeder Drucker lernte von dem "
          "vorherigen, und die Arbeit der Werkstatt ging langsam von der Hand zur Maschine über.\n")
FRENCH = ("L'histoire de l'imprimerie est celle de nombreuses petites améliorations. Chaque imprimeur apprenait de celui qui "
          "l'avait précédé, et le travail de l'atelier passait lentement de la main à la machine.\n")
CODE = "def scale(values, factor):\n    # multiply every value\n    return [v * factor for v in values]\n"


def test_detect_names_the_language_with_a_confidence():
    assert detect(ENGLISH)[0] == "en" and detect(GERMAN)[0] == "de" and detect(FRENCH)[0] == "fr"
    assert detect(ENGLISH)[1] > 0.9
    assert detect("1234 5678 ### 42") == (None, 0.0)  # no letters, no language


def test_step_keeps_listed_languages_and_names_what_it_removes():
    c = LanguageIdConfig()
    kept = language_id(ENGLISH, c)
    assert (kept.action, kept.rule) == ("keep", "en") and kept.score >= c.min_confidence
    removed = language_id(GERMAN, c)
    assert (removed.action, removed.rule) == ("remove", "language_de") and removed.score > 0.9
    assert language_id(GERMAN, LanguageIdConfig(languages=["en", "de"])).action == "keep"
    assert language_id("=== 0x1F ### 42 ===", c).rule == "no_language"
    strict = language_id("The Druckerpresse ist eine story.", LanguageIdConfig(languages=["en", "de"], min_confidence=0.999))
    assert strict.action == "remove" and strict.rule.startswith("low_confidence_") and strict.score < 0.999
    # only the first max_chars characters are read: an English opening decides a long document
    assert language_id(ENGLISH + GERMAN * 50, LanguageIdConfig(max_chars=len(ENGLISH))).action == "keep"


@pytest.mark.parametrize(("field", "message"), [
    ('languages = ["EN"]', "'EN' is not an ISO 639-1 code"),
    ("languages = []", "non-empty list"),
    ("min_confidence = 1.5", "min_confidence must be a fraction"),
    ('accuracy = "best"', "accuracy must be one of low, high"),
    ("max_chars = 0", "max_chars must be a positive integer"),
    ('domains = ["code"]', "code are in both domains and exclude_domains"),
    ("min_confidense = 0.5", "did you mean 'min_confidence'"),
])
def test_bad_language_id_settings_are_one_line_errors(field, message):
    with pytest.raises(UserError, match=message) as e:
        parse_recipe(f'[[sources]]\nbuiltin = true\n[[steps]]\nstep = "language_id"\n{field}\n')
    assert "\n" not in str(e.value) and "steps[0] (language_id)" in str(e.value)


def test_missing_lingua_names_the_pip_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "lingua", None)
    langid.supported_languages.cache_clear()
    try:
        with pytest.raises(UserError, match=r"needs the `lingua-language-detector` package: pip install 'pretrainlab\[data\]'"):
            LanguageIdConfig()
    finally:
        langid.supported_languages.cache_clear()


def test_detection_needs_no_network():
    """lingua's models are inside its wheel: a fresh process whose sockets all fail still detects."""
    script = (
        "import socket\n"
        "def refuse(*a, **k):\n    raise OSError('network disabled in this test')\n"
        "socket.socket.connect = refuse\nsocket.create_connection = refuse\nsocket.getaddrinfo = refuse\n"
        "from pretrainlab.data.langid import detect\n"
        f"print(detect({GERMAN!r})[0], detect({ENGLISH!r})[0])\n"
    )
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["de", "en"]


def test_build_filters_prose_by_language_and_leaves_code_alone(tmp_path):
    notes, code = tmp_path / "notes", tmp_path / "code"
    notes.mkdir()
    code.mkdir()
    texts = {"en": ENGLISH, "de": GERMAN, "fr": FRENCH}
    for i in range(8):
        for lang, text in texts.items():
            (notes / f"{lang}{i}.txt").write_text(f"{i}. {text}")
        (code / f"m{i}.py.txt").write_text(CODE.replace("scale", f"scale{i}"))
    recipe = ('[corpus]\nval_fraction = 0.2\nnum_workers = 1\n'
              '[[sources]]\npath = "notes"\ndomain = "notes"\n[[sources]]\npath = "code"\ndomain = "code"\n'
              '[[steps]]\nstep = "normalize"\n[[steps]]\nstep = "language_id"\nlanguages = ["en", "de"]\n')
    out, _ = build_corpus(parse_recipe(recipe, tmp_path), tmp_path / "out", progress=False)
    fates = [json.loads(line) for line in (out / "fates.jsonl").read_text().splitlines()]
    train = [f for f in fates if f["split"] == "train"]
    for f in train:
        if f["domain"] == "code":  # exclude_domains = ["code"] by default: not scored, not removed
            assert f["fate"] == "kept" and "language_id" not in f["scores"]
        elif f["path"].startswith("fr"):
            assert f["removed_by"]["step"] == "language_id" and f["removed_by"]["rule"] == "language_fr"
            assert f["removed_by"]["score"] == f["scores"]["language_id"] > 0.5
        else:
            assert f["fate"] == "kept" and f["labels"] == {"language_id": f["path"][:2]}
            assert f["scores"]["language_id"] >= 0.65
    assert {f["path"][:2] for f in train if f["domain"] == "notes"} == {"en", "de", "fr"}  # every case was exercised
    kept_en = next(f["path"] for f in train if f["path"].startswith("en"))
    assert "language_id: en (score" in api.data_why(out, kept_en)["explanation"]
    step = api.corpus_info(str(out))["build"]["steps"][1]
    assert step["step"] == "language_id" and step["removed_by_rule"] == {"language_fr": sum(f["path"].startswith("fr") for f in train)}
    assert sum(step["score_histogram"]["counts"]) == step["num_docs_in"] == sum(f["domain"] == "notes" for f in train)
