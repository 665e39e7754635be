"""Tokenizers: raw UTF-8 bytes, or byte-level BPE trained with Hugging Face `tokenizers`.

Both expose the same small surface used by the rest of the package:
`name`, `vocab_size`, `eot_id` (the document separator appended after every document),
`encode`, `decode`, `encode_documents` (what `prepare_corpus` calls) and `token_bytes()`,
the number of UTF-8 bytes each token id stands for, which turns a loss in nats per token
into bits per byte (eval.py).

    tok = BPETokenizer.train(texts, vocab_size=8192); tok.save("tokenizer.json")
    tok = load_tokenizer(corpus_dir)   # whatever the corpus manifest names
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ..errors import UserError

EOT_TOKEN = "<|endoftext|>"
TOKENIZER_SPEC_HELP = "use 'byte' or 'bpe:VOCAB' (e.g. bpe:8192)"


class ByteTokenizer:
    """One token per UTF-8 byte. Byte 0 (NUL) doubles as the document separator, so NUL
    characters are removed from document text before encoding (`encode_documents`)."""

    name = "byte"
    vocab_size = 256
    eot_id = 0

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Iterable[int]) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")

    def encode_documents(self, texts: list[str]) -> list[np.ndarray]:
        """Token ids (uint8) of each document, without the separator."""
        return [np.frombuffer(t.replace("\0", "").encode("utf-8"), dtype=np.uint8) for t in texts]

    def token_bytes(self) -> np.ndarray:
        counts = np.ones(self.vocab_size, dtype=np.int32)
        counts[self.eot_id] = 0  # the separator is not text
        return counts


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table, which byte-level BPE uses to spell tokens.

    Printable Latin-1 bytes map to themselves; the other 68 bytes map to U+0100 upwards.
    Source: openai/gpt-2 encoder.py (the Hugging Face ByteLevel pre-tokenizer uses the same).
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


_UNICODE_TO_BYTE = {ch: b for b, ch in _bytes_to_unicode().items()}


def _require_hf_tokenizers():
    try:
        import tokenizers
    except ImportError:
        raise UserError("the BPE tokenizer needs Hugging Face tokenizers: pip install tokenizers") from None
    return tokenizers


class BPETokenizer:
    """Byte-level BPE (GPT-2 style) with `<|endoftext|>` as the document separator.

    Any text round-trips, and a literal "<|endoftext|>" inside a document is encoded as
    ordinary text, never as the separator.
    """

    def __init__(self, hf_tokenizer) -> None:
        self._hf = hf_tokenizer
        self._hf.encode_special_tokens = True  # document text cannot forge a separator
        self.vocab_size: int = hf_tokenizer.get_vocab_size()
        self.name = f"bpe{self.vocab_size}"
        eot_id = hf_tokenizer.token_to_id(EOT_TOKEN)
        if eot_id is None:
            raise UserError(f"tokenizer has no {EOT_TOKEN} token: it was not made by pretrainlab; re-run `pretrainlab data prepare`")
        self.eot_id: int = eot_id

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> BPETokenizer:
        """Learn merges from `texts`. The vocabulary may come out smaller than `vocab_size`
        when the texts run out of pairs to merge (a warning says so)."""
        if vocab_size <= 257:
            raise ValueError(f"vocab_size must be > 257 (256 bytes + {EOT_TOKEN}), got {vocab_size}")
        hf = _require_hf_tokenizers()
        tokenizer = hf.Tokenizer(hf.models.BPE())
        tokenizer.pre_tokenizer = hf.pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = hf.decoders.ByteLevel()
        trainer = hf.trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[EOT_TOKEN],
            initial_alphabet=hf.pre_tokenizers.ByteLevel.alphabet(),  # every byte, seen or not
            show_progress=False,
        )
        tokenizer.train_from_iterator(texts, trainer=trainer)
        if tokenizer.get_vocab_size() < vocab_size:
            warnings.warn(
                f"BPE vocabulary stopped at {tokenizer.get_vocab_size()} of {vocab_size} tokens: "
                "the training text has no more pairs to merge; use more text or a smaller vocab",
                stacklevel=2,
            )
        return cls(tokenizer)

    def save(self, path: str | Path) -> None:
        self._hf.save(str(path))

    @classmethod
    def load(cls, path: str | Path) -> BPETokenizer:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"tokenizer file not found at {path}: re-run `pretrainlab data prepare`")
        hf = _require_hf_tokenizers()
        return cls(hf.Tokenizer.from_file(str(path)))

    def encode(self, text: str) -> list[int]:
        return self._hf.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int]) -> str:
        return self._hf.decode([int(i) for i in ids], skip_special_tokens=False)

    def encode_documents(self, texts: list[str]) -> list[np.ndarray]:
        """Token ids of each document, without the separator (batched: Rust, all cores)."""
        encodings = self._hf.encode_batch(texts, add_special_tokens=False)
        return [np.asarray(e.ids, dtype=np.int64) for e in encodings]

    def token_bytes(self) -> np.ndarray:
        counts = np.zeros(self.vocab_size, dtype=np.int32)
        special = {t.content for t in self._hf.get_added_tokens_decoder().values() if t.special}
        for token, token_id in self._hf.get_vocab().items():
            if token in special:
                continue  # separators decode to no text
            # Each character of a byte-level token spells exactly one raw byte.
            counts[token_id] = len(bytes(_UNICODE_TO_BYTE[ch] for ch in token))
        return counts


Tokenizer = ByteTokenizer | BPETokenizer


def parse_tokenizer_spec(spec: str) -> int | None:
    """'byte' -> None, 'bpe:8192' -> 8192; anything else is a UserError."""
    if spec == "byte":
        return None
    kind, _, vocab = spec.partition(":")
    if kind != "bpe" or not vocab.isdigit():
        raise UserError(f"unknown tokenizer {spec!r}: {TOKENIZER_SPEC_HELP}")
    if int(vocab) <= 257:
        raise UserError(f"tokenizer {spec!r}: a BPE vocabulary needs more than 257 tokens (256 bytes + {EOT_TOKEN}), e.g. bpe:8192")
    return int(vocab)


def tokenizer_dir_name(spec: str) -> str:
    """The short name used in corpus folder names: 'byte' or 'bpe8192'."""
    vocab = parse_tokenizer_spec(spec)
    return "byte" if vocab is None else f"bpe{vocab}"


def tokenizer_from_manifest(manifest: dict, corpus_dir: Path) -> Tokenizer:
    info = manifest["tokenizer"]
    if info["name"] == "byte":
        return ByteTokenizer()
    tokenizer = BPETokenizer.load(Path(corpus_dir) / info["file"])
    if tokenizer.vocab_size != info["vocab_size"]:
        raise UserError(
            f"{corpus_dir}/{info['file']} has {tokenizer.vocab_size} tokens but the manifest says "
            f"{info['vocab_size']}: re-run `pretrainlab data prepare` with --force"
        )
    return tokenizer


def load_tokenizer(corpus_dir: str | Path) -> Tokenizer:
    """The tokenizer a prepared corpus was made with, as named in its manifest.json."""
    manifest_path = Path(corpus_dir) / "manifest.json"
    if not manifest_path.is_file():
        raise UserError(f"corpus not found at {corpus_dir}: run `pretrainlab data prepare --builtin` (or --input ...)")
    return tokenizer_from_manifest(json.loads(manifest_path.read_text()), Path(corpus_dir))
