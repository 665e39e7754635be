"""`data build --executor ray` (data/engine.py): the same recipe on a local Ray instance gives the
same fates and the same corpus as the local process pool."""

import json
import random

import os

import pytest

from pretrainlab import api
from pretrainlab.data import engine
from pretrainlab.data.build import build_corpus
from pretrainlab.data.recipe import parse_recipe
from pretrainlab.data.shards import Corpus
from pretrainlab.errors import UserError

WORDS = "the of and to in that is was he for it with as his on be at by had not are but from or have an they which one you were".split()
GERMAN = "Die Arbeit der Werkstatt ging langsam von der Hand zur Maschine über, und jeder Drucker lernte von dem vorherigen. "

RECIPE = """
[corpus]
val_fraction = 0.1
num_workers = 2

[[sources]]
path = "web"
domain = "web"

[[steps]]
step = "normalize"
[[steps]]
step = "pii"
[[steps]]
step = "language_id"
[[steps]]
step = "gopher_quality"
min_words = 30
min_mean_word_length = 2.0
[[steps]]
step = "exact_dedup"
[[steps]]
step = "near_dedup"
threshold = 0.7
"""


def write_web(folder):
    """300 documents (over the local pool's minimum): prose, German, e-mail addresses, copies, short ones."""
    folder.mkdir()
    for i in range(300):
        r = random.Random(i)
        text = "\n".join(" ".join(r.choice(WORDS) for _ in range(12)).capitalize() + "." for _ in range(5)) + "\n"
        if i % 9 == 0:
            text = f"{i}. " + GERMAN * 4
        elif i % 7 == 0:
            text += f"Write to user{i}@example.org or 8.8.{i % 200}.1 today.\n"
        elif i % 11 == 0:
            text = f"Too short, number {i}.\n"
        elif i % 13 == 0:
            text = (folder / f"d{i - 1:03d}.txt").read_text().replace("\n", "  \n")  # a copy once normalised
        (folder / f"d{i:03d}.txt").write_text(text)


def test_ray_and_the_local_pool_build_the_same_corpus(tmp_path, monkeypatch):
    ray = pytest.importorskip("ray", reason="--executor ray needs ray: pip install 'pretrainlab[ray]' (make setup installs it)")
    pytest.importorskip("lingua", reason="the recipe's language_id step needs lingua-language-detector (the data extra)")
    write_web(tmp_path / "web")
    recipe = parse_recipe(RECIPE, tmp_path)
    calls = []
    monkeypatch.setattr(engine.RayExecutor, "chunk_docs", 64)  # several tasks from a small corpus
    ray_map = engine.RayExecutor.map
    monkeypatch.setattr(engine.RayExecutor, "map", lambda self, fn, tasks, n: calls.append(len(tasks)) or ray_map(self, fn, tasks, n))

    local, _ = build_corpus(recipe, tmp_path / "local", progress=False, executor="local")
    env = dict(os.environ)
    on_ray, _ = build_corpus(recipe, tmp_path / "ray", progress=False, executor="ray")  # starts, then stops, a local Ray with 2 CPUs
    assert len(calls) == 1 and calls[0] >= 4  # the per-document steps ran as Ray tasks, 64 documents each
    assert not ray.is_initialized()  # the instance the build started is stopped
    assert dict(os.environ) == env  # and what ray.init set in the environment (RAY_AUTH_MODE...) is undone: a later
    # connection to another cluster (research --runner ray) must not inherit it

    assert (local / "fates.jsonl").read_text() == (on_ray / "fates.jsonl").read_text()
    assert (local / "build_report.json").read_text() == (on_ray / "build_report.json").read_text()
    assert Corpus.open(local, verify=True).manifest_hash == Corpus.open(on_ray, verify=True).manifest_hash
    for split in ("train", "val"):
        assert (local / f"web.{split}.bin").read_bytes() == (on_ray / f"web.{split}.bin").read_bytes()
    fates = [json.loads(line) for line in (local / "fates.jsonl").read_text().splitlines()]
    rules = {f["removed_by"]["rule"] for f in fates if f["removed_by"]}
    assert {"language_de", "too_few_words", "exact_duplicate"} <= rules  # the steps had work to do
    assert any(f["fate"] == "rewritten" for f in fates)


def test_executor_mistakes_are_one_line_errors_before_anything_is_read(tmp_path, monkeypatch):
    recipe = tmp_path / "r.toml"
    recipe.write_text('[[sources]]\npath = "missing"\ndomain = "web"\n')
    with pytest.raises(UserError, match="--address names a Ray cluster: add --executor ray"):
        api.build_data(recipe, tmp_path / "out", progress=False, ray_address="auto")
    with pytest.raises(UserError, match="unknown executor 'slurm'"):
        api.build_data(recipe, tmp_path / "out", progress=False, executor="slurm")
    monkeypatch.setitem(__import__("sys").modules, "ray", None)
    with pytest.raises(UserError, match=r"--executor ray needs the `ray` package: pip install 'pretrainlab\[ray\]'"):
        api.build_data(recipe, tmp_path / "out", progress=False, executor="ray")
    assert not (tmp_path / "out").exists()
