"""Tokenizers: round trips, the separator, and exact bytes per token (what bits/byte needs)."""

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest

from pretrainlab.data import BPETokenizer, ByteTokenizer
from pretrainlab.data.shards import token_dtype
from pretrainlab.data.tokenizers import parse_tokenizer_spec
from pretrainlab.errors import UserError

NON_ASCII = "naïve café — Grüße, 東京タワー, ελληνικά, emoji 😀🎉 and a tab\tend\n"


def real_texts() -> list[str]:
    """A few real stdlib modules plus non-ASCII text: small but realistic BPE training data."""
    files = [Path(textwrap.__file__), *sorted(Path(json.__file__).parent.glob("*.py"))]
    return [f.read_text(encoding="utf-8") for f in files] + [NON_ASCII * 20]


def test_byte_tokenizer_round_trip_and_token_bytes():
    tok = ByteTokenizer()
    ids = tok.encode(NON_ASCII)
    assert ids == list(NON_ASCII.encode("utf-8")) and tok.decode(ids) == NON_ASCII
    tb = tok.token_bytes()
    assert tb.dtype == np.int32 and tb.shape == (256,)
    assert tb[tok.eot_id] == 0 and tok.eot_id == 0 and (tb[1:] == 1).all()
    # documents lose NULs, which are the separator
    (doc,) = tok.encode_documents(["a\0b"])
    assert doc.tolist() == [ord("a"), ord("b")]


@pytest.fixture(scope="module")
def bpe() -> BPETokenizer:
    return BPETokenizer.train(real_texts(), vocab_size=400)


def test_bpe_train_round_trip_and_token_bytes(bpe, tmp_path):
    assert bpe.vocab_size == 400 and bpe.name == "bpe400"
    sample = "def f(x):\n    return {'ключ': x}  # " + NON_ASCII
    ids = bpe.encode(sample)
    assert bpe.decode(ids) == sample
    assert len(ids) < len(sample.encode("utf-8"))  # merges were learned
    tb = bpe.token_bytes()
    assert tb.shape == (400,) and tb.dtype == np.int32 and tb[bpe.eot_id] == 0
    assert int(tb[ids].sum()) == len(sample.encode("utf-8"))
    for text in real_texts():
        (doc_ids,) = bpe.encode_documents([text])
        assert int(tb[doc_ids].sum()) == len(text.encode("utf-8"))
    bpe.save(tmp_path / "tokenizer.json")
    loaded = BPETokenizer.load(tmp_path / "tokenizer.json")
    assert loaded.encode(sample) == ids and (loaded.token_bytes() == tb).all()


def test_bpe_document_text_cannot_forge_the_separator(bpe):
    (ids,) = bpe.encode_documents(["before <|endoftext|> after"])
    assert bpe.eot_id not in ids.tolist()
    assert int(bpe.token_bytes()[ids].sum()) == len("before <|endoftext|> after")


def test_bpe_load_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="tokenizer file not found"):
        BPETokenizer.load(tmp_path / "nope.json")


def test_tokenizer_specs_and_dtypes():
    assert parse_tokenizer_spec("byte") is None and parse_tokenizer_spec("bpe:8192") == 8192
    for bad in ("bpe", "bpe:x", "wordpiece:100", "bpe:100"):
        with pytest.raises(UserError, match="bpe:"):
            parse_tokenizer_spec(bad)
    assert token_dtype(256) == np.uint16 and token_dtype(65536) == np.uint16 and token_dtype(65537) == np.uint32
