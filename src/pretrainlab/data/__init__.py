"""The data layer: documents in, token shards on disk, batches out.

    sources.py     read user corpora (files, folders, Hugging Face datasets) as Documents
    builtin.py     the offline builtin corpus: stdlib code, Python docs, Shakespeare/Milton
    tokenizers.py  byte and byte-level BPE tokenizers, with bytes per token for bits/byte
    shards.py      prepare_corpus -> folder of .bin shards + manifest; Corpus opens/verifies it
    loader.py      BatchLoader (domain-weighted, exactly resumable) and the fixed eval windows
    prepare.py     prepare_builtin / prepare_from_inputs, what `pretrainlab data prepare` runs
    recipe.py      data recipes (TOML): sources and ordered steps, typed and validated
    steps.py       the data steps (filters, PII, dedup, boilerplate, decontamination) and their registry
    build.py       build_corpus: a recipe into a derived corpus, splits fixed first, cached, atomic
    fates.py       `data why` and the build report over a derived corpus's fates.jsonl
"""

from .build import build_corpus
from .builtin import builtin_corpus_dir, builtin_documents, default_home, fetch_literature_sdist
from .fates import why
from .prepare import prepare_builtin, prepare_from_inputs, prepare_sample
from .recipe import load_recipe, parse_recipe
from .shards import Corpus, corpus_report, prepare_corpus
from .sources import Document, iter_documents, iter_hf_dataset
from .tokenizers import BPETokenizer, ByteTokenizer, load_tokenizer, parse_tokenizer_spec

__all__ = [
    "BPETokenizer",
    "BatchLoader",
    "ByteTokenizer",
    "Corpus",
    "Document",
    "build_corpus",
    "builtin_corpus_dir",
    "builtin_documents",
    "corpus_report",
    "default_home",
    "fetch_literature_sdist",
    "iter_documents",
    "iter_eval_windows",
    "iter_hf_dataset",
    "load_recipe",
    "load_tokenizer",
    "parse_recipe",
    "parse_tokenizer_spec",
    "prepare_builtin",
    "prepare_corpus",
    "prepare_from_inputs",
    "prepare_sample",
    "why",
]


def __getattr__(name: str):
    """The loader's names are imported on first use: loader.py imports torch, which the data
    commands and a recipe's validation do not need."""
    if name in ("BatchLoader", "iter_eval_windows"):
        from . import loader

        return getattr(loader, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
