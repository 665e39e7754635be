"""Shards, manifest and Corpus; the batch loader and eval windows; preparing from inputs."""

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from pretrainlab.data import (
    BatchLoader,
    ByteTokenizer,
    Corpus,
    Document,
    corpus_report,
    iter_eval_windows,
    load_tokenizer,
    prepare_corpus,
    prepare_from_inputs,
)
from pretrainlab.data.shards import SPLITS, assign_splits, text_sha256
from pretrainlab.errors import UserError


def real_documents() -> list[Document]:
    """Real text, small: the json package's modules (code) and some pydoc topics (docs),
    plus an exact duplicate and an empty document that must be dropped."""
    from pydoc_data.topics import topics

    json_dir = Path(json.__file__).parent
    code = [Document("code", "python-stdlib", f.name, f.read_text(encoding="utf-8")) for f in sorted(json_dir.glob("*.py"))]
    code.append(Document("code", "python-stdlib", "textwrap.py", Path(textwrap.__file__).read_text(encoding="utf-8")))
    docs = [Document("docs", "pydoc", name, topics[name]) for name in sorted(topics)[:12]]
    duplicate = Document("docs", "copy", "copied-from-code", code[0].text)
    empty = Document("docs", "pydoc", "blank", "  \n")
    return code + docs + [duplicate, empty]


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> Path:
    return prepare_corpus(real_documents(), ByteTokenizer(), tmp_path_factory.mktemp("c") / "corpus", val_fraction=0.2, progress=False)


def read_provenance(path: Path) -> list[dict]:
    return [json.loads(line) for line in (path / "documents.jsonl").read_text(encoding="utf-8").splitlines()]


def test_manifest_and_shards_agree(corpus_dir):
    corpus = Corpus.open(corpus_dir)
    m = corpus.manifest
    assert m["format_version"] == 2 and m["dtype"] == "uint16" and m["tokenizer"]["name"] == "byte"
    assert m["num_dropped_duplicates"] == 1 and m["num_dropped_empty"] == 1
    assert corpus.domains == ["code", "docs"] and isinstance(load_tokenizer(corpus_dir), ByteTokenizer)
    rows = read_provenance(corpus_dir)
    for domain in corpus.domains:
        for split in SPLITS:
            info = m["domains"][domain][split]
            tokens = corpus.tokens(domain, split)
            assert len(tokens) == info["num_tokens"] and not tokens.flags.writeable
            mine = [r for r in rows if r["domain"] == domain and r["split"] == split]
            assert info["num_docs"] == len(mine) == int((np.asarray(tokens) == 0).sum())  # one separator per document
            assert info["num_bytes"] == sum(r["num_bytes"] for r in mine) == int(corpus.token_bytes()[tokens].sum())
            assert tokens[-1] == 0
    report = corpus_report(corpus)
    assert report["total"]["train"]["num_tokens"] == sum(corpus.domain_token_counts("train").values())
    assert report["domains"]["code"]["val"]["bytes_per_token"] == pytest.approx(1.0, abs=0.01)


def test_split_is_by_document_and_disjoint(corpus_dir, tmp_path):
    rows = read_provenance(corpus_dir)
    by_split = {split: {r["sha256"] for r in rows if r["split"] == split} for split in SPLITS}
    assert all(by_split.values())
    for a in SPLITS:  # train, monitor, val (decision) and test (hidden) never share a document
        for b in SPLITS:
            assert a == b or not by_split[a] & by_split[b]
    assert len(rows) == len({r["sha256"] for r in rows})  # exact duplicates were dropped
    for domain in ("code", "docs"):
        assert {r["split"] for r in rows if r["domain"] == domain} == set(SPLITS)
    # val documents are exactly the ones assign_splits (used to train BPE on train only) names
    docs = real_documents()
    expected = {(d.domain, d.path): s for d, s in zip(docs, assign_splits(docs, val_fraction=0.2)) if s}
    assert expected == {(r["domain"], r["path"]): r["split"] for r in rows}
    # the split depends only on (seed, domain, path): same inputs, same split, same bytes
    again = prepare_corpus(real_documents(), ByteTokenizer(), tmp_path / "again", val_fraction=0.2, progress=False)
    assert Corpus.open(again).manifest["domains"] == Corpus.open(corpus_dir).manifest["domains"]


def test_single_document_domain_is_an_error(tmp_path):
    docs = [Document("a", "t", str(i), f"text {i}") for i in range(4)] + [Document("b", "t", "1", "lonely")]
    with pytest.raises(UserError, match="domain 'b' has 1 document.*needs 3 held out"):
        prepare_corpus(docs, ByteTokenizer(), tmp_path / "c", progress=False)
    assert not (tmp_path / "c").exists() and list(tmp_path.iterdir()) == []  # nothing half-written


def test_invalid_unicode_is_a_user_error(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"text": "broken \\ud800 surrogate"}\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"bad\.jsonl:2.*unpaired surrogate"):
        prepare_from_inputs([(tmp_path / "bad.jsonl", "web")], "byte", tmp_path / "c", progress=False)


def test_interrupted_prepare_keeps_the_previous_corpus(corpus_dir, tmp_path):
    out = prepare_corpus(real_documents(), ByteTokenizer(), tmp_path / "c", val_fraction=0.2, progress=False)
    before = (out / "manifest.json").read_bytes()

    def crashing():
        yield from real_documents()[:3]
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        prepare_corpus(crashing(), ByteTokenizer(), out, progress=False)
    assert (out / "manifest.json").read_bytes() == before and Corpus.open(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


@pytest.mark.filterwarnings("ignore:BPE vocabulary stopped")
def test_a_failed_prepare_leaves_no_new_directories(tmp_path):
    """The folders made on the way to --out go when the prepare fails; one that was there stays."""
    (tmp_path / "blank.txt").write_text(" \n")  # an input with no documents in it
    existing = tmp_path / "existing"
    existing.mkdir()
    with pytest.raises(UserError, match="no documents to prepare"):
        prepare_from_inputs([(tmp_path / "blank.txt", "notes")], "byte", existing / "new" / "deeper" / "corpus", progress=False)
    assert existing.is_dir() and list(existing.iterdir()) == []
    with pytest.raises(UserError, match="no documents to prepare"):
        prepare_from_inputs([(tmp_path / "blank.txt", "notes")], "bpe:300", tmp_path / "new" / "corpus", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blank.txt", "existing"]


def test_failed_data_prepare_command_leaves_nothing_behind(tmp_path):
    from conftest import cli

    (tmp_path / "empty").mkdir()
    res = cli("data", "prepare", "--input", f"{tmp_path / 'empty'}:notes", "--out", str(tmp_path / "a" / "b" / "corpus"))
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    res = cli("data", "prepare", "--input", f"{tmp_path / 'missing.txt'}:notes", "--out", str(tmp_path / "c" / "corpus"))
    assert res.returncode == 2 and "missing.txt" in res.stderr
    (tmp_path / "file").write_text("x")  # an unwritable place, even for root: a folder under a regular file
    res = cli("data", "prepare", "--input", f"{tmp_path / 'empty'}:notes", "--out", str(tmp_path / "file" / "sub" / "corpus"))
    assert res.returncode == 2 and "cannot create" in res.stderr and "Traceback" not in res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "file"]


def test_corrupt_or_missing_corpus_is_a_user_error(corpus_dir, tmp_path):
    with pytest.raises(UserError, match="corpus not found at .*pretrainlab data prepare --builtin"):
        Corpus.open(tmp_path / "nowhere")
    broken = prepare_corpus(real_documents(), ByteTokenizer(), tmp_path / "broken", val_fraction=0.2, progress=False)
    shard = broken / "docs.val.bin"
    data = bytearray(shard.read_bytes())
    data[5] ^= 0xFF
    shard.write_bytes(bytes(data))
    Corpus.open(broken, verify=False)  # sizes still match: only the checksum can tell
    with pytest.raises(UserError, match=r"docs\.val\.bin is corrupt: sha256 .* re-run `pretrainlab data prepare`"):
        Corpus.open(broken)
    shard.write_bytes(bytes(data[:-2]))
    with pytest.raises(UserError, match=r"docs\.val\.bin has .* bytes, the manifest expects"):
        Corpus.open(broken, verify=False)
    # a manifest edited into something else: one line naming it and the fix, whatever is wrong inside
    shard.write_bytes(bytes(data))
    manifest = json.loads((broken / "manifest.json").read_text())
    for spoiled in ([], {**manifest, "dtype": "no-such-dtype"}, {**manifest, "domains": {"docs": {"train": {}}}},
                    {**manifest, "domains": {"docs": 5}}, {**manifest, "tokenizer": {"name": 7}}):
        (broken / "manifest.json").write_text(json.dumps(spoiled))
        with pytest.raises(UserError, match=r"manifest\.json does not describe a corpus.*data prepare` with --force"):
            Corpus.open(broken, verify=False)


def test_manifest_hash_names_the_data_not_the_build_time(corpus_dir, tmp_path):
    again = prepare_corpus(real_documents(), ByteTokenizer(), tmp_path / "again", val_fraction=0.2, progress=False)
    assert Corpus.open(again).manifest_hash == Corpus.open(corpus_dir).manifest_hash
    other = prepare_corpus(real_documents(), ByteTokenizer(), tmp_path / "other", val_fraction=0.3, progress=False)
    assert Corpus.open(other).manifest_hash != Corpus.open(corpus_dir).manifest_hash


def test_batches_are_deterministic_and_resume_exactly(corpus_dir):
    corpus = Corpus.open(corpus_dir)
    a = BatchLoader(corpus, seq_len=16, batch_rows=8, seed=3)
    b = BatchLoader(corpus, seq_len=16, batch_rows=8, seed=3)
    x, y = a.next_batch()
    assert x.shape == y.shape == (8, 16) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert torch.equal(x, b.next_batch()[0])
    assert not torch.equal(x, BatchLoader(corpus, seq_len=16, batch_rows=8, seed=4).next_batch()[0])
    # resume from a state that went through JSON (as a checkpoint would carry it)
    a.next_batch()
    state = json.loads(json.dumps(a.state_dict()))
    expected = [a.next_batch() for _ in range(3)]
    fresh = BatchLoader(corpus, seq_len=16, batch_rows=8, seed=999)
    fresh.load_state_dict(state)
    assert fresh.num_batches == 2
    for ex, got in zip(expected, (fresh.next_batch() for _ in range(3))):
        assert torch.equal(ex[0], got[0]) and torch.equal(ex[1], got[1])
    # sampling never touches the global RNGs
    np_state, torch_state = np.random.get_state()[1].copy(), torch.get_rng_state()
    a.next_batch()
    assert (np.random.get_state()[1] == np_state).all() and torch.equal(torch.get_rng_state(), torch_state)


def test_rows_come_from_the_weighted_domain(corpus_dir):
    corpus = Corpus.open(corpus_dir)
    only_code = BatchLoader(corpus, seq_len=16, batch_rows=64, weights={"code": 1.0, "docs": 0.0}, seed=0)
    code = corpus.tokens("code", "train").tobytes()
    x, _ = only_code.next_batch()
    assert (only_code.last_batch_domains() == corpus.domains.index("code")).all()
    for row in x:  # every row really is a window of the code shard
        assert row.numpy().astype("<u2").tobytes() in code
    # default weights are proportional to train tokens
    loader = BatchLoader(corpus, seq_len=16, batch_rows=512, seed=0)
    counts = corpus.domain_token_counts("train")
    expected = counts["docs"] / sum(counts.values())
    docs_rows = []
    for _ in range(8):
        loader.next_batch()
        docs_rows.append(loader.last_batch_domains() == corpus.domains.index("docs"))
    assert abs(np.mean(docs_rows) - expected) < 0.03
    assert loader.weights["docs"] == pytest.approx(expected)


def test_bad_weights_are_user_errors(corpus_dir):
    corpus = Corpus.open(corpus_dir)
    with pytest.raises(UserError, match="'web', not a domain of this corpus: its domains are code, docs"):
        BatchLoader(corpus, seq_len=16, batch_rows=4, weights={"web": 1.0}, seed=0)
    with pytest.raises(UserError, match="all zero"):
        BatchLoader(corpus, seq_len=16, batch_rows=4, weights={"code": 0.0}, seed=0)
    with pytest.raises(UserError, match="fewer than seq_len"):
        BatchLoader(corpus, "val", seq_len=10**8, batch_rows=4, seed=0)


def test_eval_windows_are_fixed_and_contiguous(corpus_dir):
    corpus = Corpus.open(corpus_dir)
    windows = list(iter_eval_windows(corpus, "code", seq_len=32, max_tokens=320))
    assert len(windows) == 10 and all(x.shape == y.shape == (32,) and x.dtype == torch.int64 for x, y in windows)
    again = list(iter_eval_windows(Corpus.open(corpus_dir), "code", seq_len=32, max_tokens=320))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(windows, again))
    val = torch.from_numpy(corpus.tokens("code", "val").astype(np.int64))
    assert torch.equal(torch.cat([x for x, _ in windows]), val[:320]) and torch.equal(torch.cat([y for _, y in windows]), val[1:321])
    # a budget beyond the split uses what exists: full windows only
    n = len(val)
    assert len(list(iter_eval_windows(corpus, "code", seq_len=32, max_tokens=10**9))) == (n - 1) // 32


def test_prepare_from_inputs_with_bpe(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i, f in enumerate(sorted(Path(json.__file__).parent.glob("*.py"))):
        (inputs / f"{i}.txt").write_text(f.read_text(encoding="utf-8"), encoding="utf-8")
    (tmp_path / "prose.jsonl").write_text(
        "".join(json.dumps({"text": f"Paragraph {i}: naïve café — Grüße ☃. " * 20}) + "\n" for i in range(6)), encoding="utf-8"
    )
    out = prepare_from_inputs([(inputs, "code"), (tmp_path / "prose.jsonl", "prose")], "bpe:300", tmp_path / "corpus", progress=False)
    corpus = Corpus.open(out)
    assert corpus.tokenizer.name == "bpe300" and (out / "tokenizer.json").is_file()
    for domain in corpus.domains:
        for split in SPLITS:
            info = corpus.manifest["domains"][domain][split]
            assert int(corpus.token_bytes()[corpus.tokens(domain, split)].sum()) == info["num_bytes"]
    shas = {r["sha256"] for r in read_provenance(out)}
    assert text_sha256((inputs / "0.txt").read_text(encoding="utf-8")) in shas
    with pytest.raises(UserError, match="already holds a corpus: pass --force"):
        prepare_from_inputs([(inputs, "code")], "byte", out, progress=False)
