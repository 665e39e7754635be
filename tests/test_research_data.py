"""Data experiments in the research loop (research/data_experiments.py): a data-recipe change
built into a derived corpus whose held-out data is the base corpus's, proposed by a person,
a model (the real SDK against the fake API) or queued in a simulated campaign, and scored on
the base corpus's val windows whatever the run trained on."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, cli, tiny_overrides
from fake_llm_server import FakeServer, message, text, tool_use
from test_research_claude import view

from pretrainlab.config import apply_overrides
from pretrainlab.data import Corpus, build_corpus, iter_eval_windows, parse_recipe
from pretrainlab.data.builtin import code_documents, docs_documents
from pretrainlab.data.shards import HELD_OUT, assign_splits
from pretrainlab.data.sources import Document
from pretrainlab.errors import UserError
from pretrainlab.ledger import Ledger
from pretrainlab.recipes import get_recipe
from pretrainlab.research import data_experiments as dx
from pretrainlab.research import manage
from pretrainlab.research.campaign import CampaignConfig
from pretrainlab.research.llm import ClaudeStrategy
from pretrainlab.research.simulate import Landscape, SimulatedRunner, simulate
from pretrainlab.research.strategies import ManualStrategy, Proposal
from pretrainlab.research.tools import lab_tools
from pretrainlab.runners.job import visible_corpus_files

DEDUP = [{"step": "gopher_quality", "domains": ["docs"], "min_words": 5}, {"step": "near_dedup", "threshold": 0.8}]


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    """A derived base corpus of real text (stdlib code and docstrings) with junk the base's own
    gopher step removes and near-duplicates a dedup step would: its recipe names its sources by
    absolute path, so the lab can build variants of it."""
    root = tmp_path_factory.mktemp("sources")
    code = code_documents(80_000)
    docs = docs_documents(80_000, exclude=[d.path for d in code])
    code_texts = [d.text for d in code] + [d.text.replace("\n", "\n\n", 1) for d in code[:6]]  # near-duplicates
    docs_texts = [d.text for d in docs] + [f"See note {i}." for i in range(12)]  # too few words
    for name, texts in (("code", code_texts), ("docs", docs_texts)):
        (root / f"{name}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    recipe = parse_recipe(f'[corpus]\nname = "base"\nval_fraction = 0.25\n\n[[sources]]\npath = "{root}/code.jsonl"\ndomain = "code"\n\n'
                          f'[[sources]]\npath = "{root}/docs.jsonl"\ndomain = "docs"\n\n'
                          '[[steps]]\nstep = "gopher_quality"\ndomains = ["docs"]\nmin_words = 5\n')
    out, _ = build_corpus(recipe, tmp_path_factory.mktemp("base") / "corpus", progress=False)
    return out


@pytest.fixture(autouse=True)
def home(tmp_path_factory, monkeypatch):
    """Derived corpora go to a home of this module's own (content-addressed: later tests reuse them)."""
    path = tmp_path_factory.getbasetemp() / "data-experiments-home"
    monkeypatch.setenv("PRETRAINLAB_HOME", str(path))
    return path


def base_recipe(base_dir, **extra):
    return apply_overrides(get_recipe("tiny-cpu"), tiny_overrides(base_dir, **extra))


def held_out_shards(corpus_dir):
    m = Corpus.open(corpus_dir, verify=False).manifest["domains"]
    return {(d, s): m[d][s]["sha256"] for d in m for s in HELD_OUT}


def derived_corpora(home):
    return sorted(p.name for p in (home / "corpus").glob("derived-*")) if (home / "corpus").is_dir() else []


def test_a_data_change_trains_on_a_derived_corpus_with_the_base_held_out_data(base_dir, home):
    base = base_recipe(base_dir)
    recipe, built = dx.apply_data_change(base, base, DEDUP, None)
    derived = recipe.data.corpus
    assert derived == built["corpus"] and derived.startswith(str(home)) and not built["cached"]
    assert built["removed_docs"]["1:near_dedup"] >= 1 and "near_dedup" in built["toml"] and built["steps"] == DEDUP
    assert held_out_shards(derived) == held_out_shards(base_dir)  # val, monitor and test byte for byte
    train = lambda c: Corpus.open(c, verify=False).manifest["domains"]["code"]["train"]["num_docs"]  # noqa: E731
    assert train(derived) < train(base_dir)
    again, built_again = dx.apply_data_change(base, base, DEDUP, {"code": 1.0, "docs": 2.0})
    assert built_again["cached"] and again.data.corpus == derived and again.data.weights == {"code": 1.0, "docs": 2.0}
    # the sandboxed trainer sees the derived corpus's train and monitor shards, never its val/test shards or its records
    visible = {p.name for p in visible_corpus_files(Path(derived))}
    assert visible == {"manifest.json", "code.train.bin", "code.monitor.bin", "docs.train.bin", "docs.monitor.bin"}
    # the base's own steps, unchanged, change nothing: refused before any run
    with pytest.raises(UserError, match="changes nothing"):
        dx.apply_data_change(base, base, [{"step": "gopher_quality", "domains": ["docs"], "min_words": 5}], None)


NASTY = [  # (steps, what the one-line error says)
    ("not a list", "steps must be a list"),
    ([{"threshold": 0.5}], "must be a table naming its step"),
    ([{"step": "normalize", 'form = "NFC"\n[[sources]]\npath = "/etc"\ndomain = "code"\n#': 1}], "is not a parameter name"),
    ([{"step": "near_dedup", "num_perm": 10**9}], "the lab allows at most 1024"),
    ([{"step": "near_dedup", "threshold": 1e308}], "out of range"),
    ([{"step": "near_dedup", "threshold": float("nan")}], "out of range"),
    ([{"step": "pii", "email_replacement": "x" * 10_000}], "at most 100 characters"),
    ([{"step": "pii", "email_replacement": "a\nb"}], "must be printable"),
    ([{"step": "near_dedup", "domains": [["code"]]}], "must be a boolean, number, text"),
    ([{"step": "near_dedup", "domains": ["../../etc"]}], "is not a domain of the corpus"),
    ([{"step": "near_dedup", "domains": ["cdoe"]}], "did you mean 'code'"),
    ([{"step": "rm -rf"}], "unknown step 'rm -rf'"),
    ([{"step": "near_dedup", "val_fraction": 0.9}], "unknown field 'val_fraction'"),
    ([{"step": "near_dedup", "threshold": "high"}], "threshold must be a Jaccard similarity"),
    ([{"step": "exact_dedup"}] * 25, "at most 24"),
]


@pytest.mark.parametrize("steps,error", NASTY, ids=[e for _, e in NASTY])
def test_untrusted_steps_are_one_line_errors_and_build_nothing(base_dir, home, steps, error):
    base = base_recipe(base_dir)
    before = derived_corpora(home)
    with pytest.raises(UserError) as e:
        dx.apply_data_change(base, base, steps, None)
    assert error in str(e.value) and "\n" not in str(e.value)
    assert derived_corpora(home) == before


def test_a_corpus_whose_held_out_data_moved_is_refused(base_dir, tmp_path):
    """What compose() never writes, built anyway: the check on the result catches it."""
    base = dx.base_data(base_recipe(base_dir))
    moved = dx.compose(base, []).text.replace("seed = 0", "seed = 7")  # another split seed deals other documents out
    out, _ = build_corpus(parse_recipe(moved), tmp_path / "moved", progress=False)
    with pytest.raises(UserError, match="differs from the base corpus's"):
        dx.check_held_out(base_dir, out)
    # a train document that is not one of the base's (another source under a known domain)
    extra = tmp_path / "extra.jsonl"
    extra.write_text(json.dumps({"text": "a new document that no base split holds, long enough to be one."}) + "\n")
    added = dx.compose(base, []).text + f'[[sources]]\npath = "{extra}"\ndomain = "docs"\n'
    out, _ = build_corpus(parse_recipe(added), tmp_path / "added", progress=False)
    held = held_out_shards(out) == held_out_shards(base_dir)
    with pytest.raises(UserError, match="differs from the base" if not held else "is not a train document of the base"):
        dx.check_held_out(base_dir, out)


def test_a_rewrite_that_would_copy_a_val_document_keeps_the_val_document(tmp_path):
    """A train copy of a val document that differs only by trailing spaces: `normalize` makes
    them identical. The build removes the train copy (copy_of_held_out), so the derived corpus
    keeps the base's val documents and the data change is accepted."""
    texts = {f"n{i:02d}.txt": f"Document number {i} talks about topic {i * 7 % 13} at some length, with words." for i in range(40)}
    for name, text in texts.items():  # the copy sorts first; find a document that is val with it present
        trial = {"a_copy.txt": text.replace(" words.", " words.   "), **texts}
        splits = dict(zip(sorted(trial), assign_splits([Document("docs", "file", p, trial[p]) for p in sorted(trial)], 0.25, 1, 0)))
        if splits["a_copy.txt"] == "train" and splits[name] == "val":
            break
    (tmp_path / "src").mkdir()
    for path, text in trial.items():
        (tmp_path / "src" / path).write_text(text)
    recipe = f'[corpus]\nval_fraction = 0.25\n[[sources]]\npath = "{tmp_path}/src"\ndomain = "docs"\n'
    base_dir, _ = build_corpus(parse_recipe(recipe), tmp_path / "base", progress=False)
    base = base_recipe(base_dir, **{"model.seq_len": 16})
    _, built = dx.apply_data_change(base, base, [{"step": "normalize"}], None)
    import json

    fates = {f["path"]: f for f in map(json.loads, (Path(built["corpus"]) / "fates.jsonl").read_text().splitlines())}
    assert fates["a_copy.txt"]["removed_by"]["rule"] == "copy_of_held_out" and fates[name]["split"] == "val"


def test_config_changes_cannot_move_the_corpus_and_a_persons_file_holds_only_steps(base_dir, tmp_path):
    for key in ("data.corpus", "data.tokenizer"):
        with pytest.raises(UserError, match=f"{key}: a campaign keeps its corpus"):
            dx.check_fixed_data({key: "/tmp/elsewhere"})
    # nor what keeps its runs comparable and its score the lab's: compute, the scored windows, faults, seeds, slots
    for key, why in (("budget.tokens", "same compute"), ("budget.wall_limit_s", "same compute"),
                     ("eval.tokens_per_domain", "same held-out windows"), ("eval.batch_rows", "same held-out windows"),
                     ("faults.nan_at_step", "fault injection"), ("seed", "its seed"), ("train.num_threads", "share of the CPU")):
        with pytest.raises(UserError, match=f"{key}: not an experiment's to change: .*{why}"):
            dx.check_fixed_data({"optim.lr": "0.01", key: "1"})
    dx.check_fixed_data({"optim.lr": "0.01", "model.n_layer": "6", "train.batch_tokens": "8192", "train.compile": "on"})
    # the context length is an experiment's to change, not which tokens are scored: the base scores 2048 targets per
    # domain in windows of 64; windows of 128 score the same tokens, windows of 96 or 1500 would leave some unscored
    base = base_recipe(base_dir)
    for seq_len in (32, 128, 64):
        dx.check_scored_tokens(apply_overrides(base, [f"model.seq_len={seq_len}"]), base)
    for seq_len, scored in ((96, 2016), (1500, 1500)):
        with pytest.raises(UserError, match=f"model.seq_len={seq_len}: the lab would score {scored} of domain .* baseline is "
                                            "scored on 2048 .*a seq_len that divides 2048"):
            dx.check_scored_tokens(apply_overrides(base, [f"model.seq_len={seq_len}"]), base)
    for body, error in (('[corpus]\nseed = 7\n', "[corpus] stays the base corpus's"),
                        ('[[sources]]\npath = "/etc/passwd"\ndomain = "code"\n', "[sources] stays the base corpus's"),
                        ("[[steps]\nstep = 'x'", "is not valid TOML")):
        (tmp_path / "bad.toml").write_text(body)
        with pytest.raises(UserError, match=error.replace("[", r"\[")):
            dx.load_steps(tmp_path / "bad.toml")
    # the example in docs/data.md, as written
    section = (ROOT / "docs" / "data.md").read_text().split("## Data experiments in the research loop")[1]
    (tmp_path / "dedup.toml").write_text(re.search(r"```toml\n(.*?)```", section, re.S).group(1))
    steps = dx.load_steps(tmp_path / "dedup.toml")
    assert steps == [{"step": "gopher_quality", "domains": ["docs"]}, {"step": "near_dedup", "threshold": 0.7}]
    assert [s.name for s in dx.compose(dx.base_data(base_recipe(base_dir)), steps).steps] == ["gopher_quality", "near_dedup"]


def test_a_person_queues_a_data_experiment(base_dir, tmp_path):
    db = str(tmp_path / "ledger.db")
    base = base_recipe(base_dir)
    cid = Ledger(db).create_campaign("data", goal="lowest val_bpb", config={"campaign": {}, "base_recipe": base.to_dict()})
    steps = tmp_path / "dedup.toml"
    steps.write_text('[[steps]]\nstep = "gopher_quality"\ndomains = ["docs"]\nmin_words = 5\n\n[[steps]]\nstep = "near_dedup"\n')
    exp = Ledger(db).get_experiment(manage.suggest(cid, "dedup helps", [], "alice", db=db, data_recipe=str(steps)))
    assert exp["kind"] == "data" and exp["status"] == "queued" and exp["proposer"] == "alice"
    assert exp["change"]["data_recipe"]["steps"][1] == {"step": "near_dedup"}
    assert exp["change"]["diff"] == {"data.corpus": [str(base_dir), exp["change"]["data_recipe"]["corpus"]]}
    (tmp_path / "leak.toml").write_text('[corpus]\nval_fraction = 0.01\n')
    r = cli("research", "suggest", cid, "leak", "--data-recipe", str(tmp_path / "leak.toml"), "--db", db)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "[corpus] stays the base corpus's" in r.stderr, r.stderr


class RecordingRunner(SimulatedRunner):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.jobs = []

    def submit(self, job):
        self.jobs.append(job)
        super().submit(job)


class DerivedCorporaHurt(Landscape):
    """Any corpus but the base costs 0.05 bpb: the data experiment is clearly discarded, so the
    incumbent stays on the base corpus and "same as now" is judged against it. (In a plain
    Landscape a data change only moves the noise, drawn from the corpus's temporary path: the
    dedup change, of no true effect, was adopted on about half the paths (adopt at P >= 0.5), and "same as
    now" then changed something: the test failed at random.)"""

    def __init__(self, base_corpus, **kw):
        super().__init__(**kw)
        self.base_corpus = base_corpus

    def value(self, recipe, seed, rung=False):
        return super().value(recipe, seed, rung) + (0.05 if recipe.data.corpus != self.base_corpus else 0.0)


def test_a_campaign_decides_a_data_experiment_like_any_change_and_scores_it_on_the_base(base_dir, tmp_path):
    """In process (simulated runs): a data change is built, run and decided by the screen rule;
    a nasty one and one that changes nothing are rejected before running, with the reason."""
    manual = ManualStrategy()
    manual.queue = [
        Proposal("data", "near-dedup helps", "duplicates waste tokens", "alice", data_steps=DEDUP),
        Proposal("data", "leak", "r", "mallory", data_steps=[{"step": "normalize", "seed = 7\n[corpus": 1}]),
        Proposal("data", "same as now", "r", "bob", data_steps=[{"step": "gopher_quality", "domains": ["docs"], "min_words": 5}]),
        Proposal("config", "point at another corpus", "r", "mallory", values={"data.corpus": str(tmp_path)}),
    ]
    cfg = CampaignConfig(recipe="tiny-cpu", overrides=tiny_overrides(base_dir), run_budget="80000tok", budget_runs=10,
                         strategy="manual", parallel=2)
    landscape = DerivedCorporaHurt(str(base_dir), seed=0)
    runner = RecordingRunner(landscape, 2)
    result = simulate(cfg, landscape, tmp_path / "sim", strategy=manual, runner=runner)
    ledger, cid = result["ledger"], result["campaign_id"]
    by_hypothesis = {e["hypothesis"]: e for e in ledger.list_experiments(cid)}
    good = by_hypothesis["near-dedup helps"]
    derived = good["change"]["data_recipe"]["corpus"]
    assert good["kind"] == "data" and good["change"]["recipe"]["data"]["corpus"] == derived
    assert good["change"]["diff"] == {"data.corpus": [str(base_dir), derived]}
    (decision, *_) = ledger.list_decisions(experiment_id=good["id"])
    assert decision["evidence"]["stage"] == "screen" and decision["verdict"] == "discard"
    assert any(j.key.startswith(good["id"]) for j in runner.jobs)
    for hypothesis, reason in (("leak", "is not a parameter name"), ("same as now", "changes nothing"),
                               ("point at another corpus", "data.corpus: a campaign keeps its corpus")):
        e = by_hypothesis[hypothesis]
        (d,) = ledger.list_decisions(experiment_id=e["id"])
        assert e["status"] == "rejected" and d["verdict"] == "discard" and reason in d["rationale"], d["rationale"]
        assert "\n" not in d["rationale"]
        assert not any(j.key.startswith(e["id"]) for j in runner.jobs)
    # every run, the data experiment's included, is scored on the base corpus
    assert runner.jobs and all(j.score_data == {"corpus": str(base_dir), "tokenizer": "byte"} for j in runner.jobs)


def test_claude_looks_at_the_corpus_and_proposes_a_data_recipe(base_dir):
    """The three data tools through the real SDK against the fake API: the report and samples
    show train data only, and every malformed proposal is a tool error and a failed proposal."""
    good = {"hypothesis": "near-dedup frees tokens for new text", "rationale": "sample_documents shows copies", "steps": DEDUP}
    bad = [
        ({**good, "sources": [{"path": "/etc", "domain": "code"}]}, "sources: unknown field"),
        ({**good, "steps": [{"step": "near_dedup", "num_perm": 10**9}]}, "the lab allows at most 1024"),
        ({**good, "steps": [{"step": "near_dedup", "seed = 7\n[corpus]\nval_fraction": 0.9}]}, "is not a parameter name"),
        ({**good, "steps": [{"step": "near_dedup", "threshold": "0.7"}]}, "threshold must be a Jaccard similarity"),
        ({**good, "weights": {"klingon": 1}}, "data.weights names 'klingon'"),
    ]
    script = [
        message([tool_use("r", "corpus_report", {}),
                 tool_use("s", "sample_documents", {"fate": "removed", "step": "gopher_quality", "num_docs": 2, "max_chars": 100}),
                 tool_use("h", "sample_documents", {"fate": "held_out"})], "tool_use"),
        message([*(tool_use(f"b{i}", "propose_data_recipe", args) for i, (args, _) in enumerate(bad)),
                 tool_use("g", "propose_data_recipe", good)], "tool_use"),
        message([text("Done.")], "end_turn"),
    ]
    with FakeServer(script) as server:
        s = ClaudeStrategy(lab_tools(None, {}, base_recipe(base_dir)), api_key="k", base_url=server.url)
        (p,) = s.propose(view(), 1)
    assert p.kind == "data" and p.data_steps == DEDUP and p.model_id == "claude-opus-5"
    report, sample, held = server.requests[1]["body"]["messages"][-1]["content"]
    assert report["content"].startswith('<untrusted-data source="corpus_report">\n')  # corpus text reaches the model fenced as data
    info = json.loads(unfence(report["content"]))
    assert info["derived"] and info["steps"] == [{"step": "gopher_quality", "domains": ["docs"], "min_words": 5}]
    assert set(info["domains"]["code"]) == {"train", "monitor"}  # no val or test rows
    assert info["build"]["steps"][0]["removed_by_rule"]["too_few_words"] >= 1
    docs = json.loads(unfence(sample["content"]))["documents"]
    assert len(docs) == 2 and all(d["fate"] == "removed" and d["removed_by"]["step"] == "gopher_quality" for d in docs)
    assert all(d["text"].startswith("See note") and len(d["text"]) <= 100 + 60 for d in docs)
    assert held["is_error"] and "fate: Input should be 'kept', 'rewritten' or 'removed'" in held["content"]
    assert len(server.requests) == 2  # the one proposal asked for arrived: the round ends without another call
    assert [f["tool"] for f in s.failed] == ["sample_documents"] + ["propose_data_recipe"] * len(bad)
    for failed, (args, error) in zip(s.failed[1:], bad):  # each a one-line tool error, recorded with its input
        assert error in failed["error"] and "\n" not in failed["error"] and failed["input"] == args, failed["error"]


def unfence(content: str) -> str:
    """A fenced tool result's JSON (research/llm.py fence)."""
    return content.split("\n", 1)[1].rsplit("\n", 1)[0]


def test_sampled_documents_are_never_held_out(base_dir):
    sampler = dx.DocumentSampler(dx.base_data(base_recipe(base_dir)))
    held = {(d["domain"], d["path"]) for d in dx._documents(base_dir) if d["split"] != "train"}
    out = sampler.sample(base_dir, num_docs=8, max_chars=100, seed=3)
    assert out["matched"] > 8 and out["shown"] == 8
    assert not held & {(d["domain"], d["path"]) for d in out["documents"]}


def val_bytes(corpus_dir, seq_len, tokens_per_domain):
    corpus = Corpus.open(corpus_dir, verify=False)
    token_bytes = torch.as_tensor(corpus.token_bytes(), dtype=torch.int64)
    windows = [y for d in corpus.domains for _, y in iter_eval_windows(corpus, d, seq_len, tokens_per_domain, "val")]
    return sum(int(token_bytes[y].sum()) for y in windows)


def test_a_run_on_a_forged_corpus_is_scored_on_the_base_val_windows_and_cannot_read_them(base_dir, tmp_path):
    """A derived corpus whose val shard was swapped for trivial text after the build: the run
    trains on it in the sandbox, which cannot open its val or test shards, and the lab scores
    the model on the base corpus's val windows, not the forged ones."""
    from test_trust import hostile_import_patch

    from pretrainlab.research.patches import apply_patch
    from pretrainlab.runners import Job, LocalRunner
    from pretrainlab.runners.sandbox import Sandbox

    if not Sandbox.detect(warn=False).active:
        pytest.skip("no sandbox here")
    base = base_recipe(base_dir)
    derived, _ = dx.apply_data_change(base, base, DEDUP, None)
    forged = tmp_path / "forged"
    shutil.copytree(derived.data.corpus, forged)
    manifest = json.loads((forged / "manifest.json").read_text())
    easy = np.full(100, ord("a"), dtype="<u2")  # one window of 64: fewer bytes than the base's val windows
    easy.tofile(forged / "code.val.bin")
    manifest["domains"]["code"]["val"].update(num_tokens=len(easy), num_bytes=len(easy))
    (forged / "manifest.json").write_text(json.dumps(manifest))
    tries = "".join(f"try:\n    open({str(forged / name)!r}, 'rb').read(1)\n    print('READ', {name!r}, file=_sys.stderr)\n"
                    f"except OSError:\n    print('BLOCKED', {name!r}, file=_sys.stderr)\n"
                    for name in ("code.val.bin", "docs.test.bin", "fates.jsonl"))
    tree = apply_patch(hostile_import_patch(tries), tmp_path / "tree")
    overrides = tiny_overrides(forged, **{"budget.seconds": 0, "budget.tokens": 1024, "eval.tokens_per_domain": 256})  # one step
    runner = LocalRunner(num_slots=1, log_dir=tmp_path / "logs")
    runner.submit(Job("forged", "tiny-cpu", tmp_path / "run", overrides, pythonpath=tree.pythonpath, score_path=tmp_path / "score.json",
                      score_data={"corpus": str(base_dir), "tokenizer": "byte"}))
    (result,) = runner.wait()
    log = (tmp_path / "logs" / "forged.stderr").read_text()
    assert result.status == "ok", log[-2000:]
    assert log.count("BLOCKED") == 3 and not any(line.startswith("READ") for line in log.splitlines()), log[-2000:]
    score = json.loads((tmp_path / "score.json").read_text())
    seq_len, tokens = base.model.seq_len, 256
    assert score["splits"]["val"]["bytes"] == val_bytes(base_dir, seq_len, tokens) != val_bytes(forged, seq_len, tokens)
