"""Reading user corpora into `Document`s: local files and folders, or a Hugging Face dataset.

    for doc in iter_documents("my_corpus/", domain="web"): ...
    for doc in iter_hf_dataset("roneneldan/TinyStories", limit=10_000): ...

Local formats: .txt and .md (one document per file), .jsonl / .jsonl.gz / .jsonl.zst (one
document per line, text in `text_field`), .parquet (one document per row of column
`text_field`). zstd and parquet need the optional `zstandard` and `pyarrow` packages,
imported only when such a file is read.
"""

from __future__ import annotations

import gzip
import importlib
import io
import json
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError

DATA_EXTRA = "pip install 'pretrainlab[data]'"
# Longest suffix first so "x.jsonl.gz" is not read as plain ".jsonl".
FILE_KINDS = {".jsonl.gz": "jsonl.gz", ".jsonl.zst": "jsonl.zst", ".jsonl": "jsonl", ".parquet": "parquet", ".txt": "text", ".md": "text"}


@dataclass(frozen=True)
class Document:
    """One unit of text; the train/val split never cuts a document in two."""

    domain: str  # the mixture component it belongs to, e.g. "code"
    source: str  # where it came from: "file", "python-stdlib", "hf:owner/name", ...
    path: str  # file path or id inside the source; with domain, it fixes the split
    text: str


def file_kind(path: Path) -> str | None:
    name = path.name.lower()
    for suffix, kind in FILE_KINDS.items():
        if name.endswith(suffix):
            return kind
    return None


def require(module: str, package: str, purpose: str, install: str = DATA_EXTRA):
    """Import an optional dependency, or raise a UserError naming the pip install."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f"{purpose} needs the `{package}` package: {install}") from None


def iter_documents(path: str | Path, domain: str, text_field: str = "text") -> Iterator[Document]:
    """Documents from a file, or from every supported file under a folder (recursive, in
    sorted path order). Unsupported files in a folder are skipped with a warning.

    Document paths are relative to the folder (or the file name), so the same data moved
    elsewhere gets the same train/val split.
    """
    root = Path(path)
    if root.is_file():
        kind = file_kind(root)
        if kind is None:
            raise UserError(f"unsupported file type: {root}: use {', '.join(FILE_KINDS)} files")
        yield from _read_file(root, kind, root.name, domain, text_field)
    elif root.is_dir():
        files = sorted((p for p in root.rglob("*") if p.is_file()), key=lambda p: p.relative_to(root).as_posix())
        num_read = 0
        for file in files:
            kind = file_kind(file)
            if kind is None:
                warnings.warn(f"skipping {file}: unsupported file type (supported: {', '.join(FILE_KINDS)})", stacklevel=2)
                continue
            num_read += 1
            yield from _read_file(file, kind, file.relative_to(root).as_posix(), domain, text_field)
        if num_read == 0:
            raise UserError(f"no supported files under {root}: add {', '.join(FILE_KINDS)} files")
    else:
        raise UserError(f"input not found: {root}: pass an existing file or folder")


def _read_file(file: Path, kind: str, rel: str, domain: str, text_field: str) -> Iterator[Document]:
    if kind == "text":
        try:
            text = file.read_bytes().decode("utf-8")
        except UnicodeDecodeError as e:
            raise UserError(f"{file} is not UTF-8 text (byte {e.start}): convert it to UTF-8") from None
        yield Document(domain, "file", rel, text)
    elif kind == "parquet":
        yield from _read_parquet(file, rel, domain, text_field)
    else:
        yield from _read_jsonl(file, kind, rel, domain, text_field)


def _open_text(file: Path, kind: str) -> io.TextIOBase:
    if kind == "jsonl":
        return open(file, encoding="utf-8")
    if kind == "jsonl.gz":
        return gzip.open(file, "rt", encoding="utf-8")
    zstandard = require("zstandard", "zstandard", f"reading {file.name}")
    compressed = open(file, "rb")  # noqa: SIM115 -- closed by the reader (closefd=True)
    return io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(compressed, read_across_frames=True, closefd=True), encoding="utf-8")


def _read_jsonl(file: Path, kind: str, rel: str, domain: str, text_field: str) -> Iterator[Document]:
    # Decompression and decoding failures surface while iterating lines.
    read_errors: tuple[type[BaseException], ...] = (OSError, EOFError, UnicodeDecodeError)
    if kind == "jsonl.zst":
        read_errors += (require("zstandard", "zstandard", f"reading {file.name}").ZstdError,)
    with _open_text(file, kind) as lines:
        lineno = 0
        try:
            for lineno, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise UserError(f"{file}:{lineno}: malformed JSON ({e.msg}, column {e.colno}): fix or remove that line") from None
                text = record.get(text_field) if isinstance(record, dict) else None
                if not isinstance(text, str):
                    found = ", ".join(record) if isinstance(record, dict) else type(record).__name__
                    raise UserError(
                        f"{file}:{lineno}: no string field {text_field!r} (found: {found}): pick the text field with --text-field"
                    )
                yield Document(domain, "file", f"{rel}:{lineno}", text)
        except read_errors as e:
            raise UserError(f"cannot read {file} after line {lineno}: {e}: check the file is complete and really {kind}") from None


def _read_parquet(file: Path, rel: str, domain: str, text_field: str) -> Iterator[Document]:
    pq = require("pyarrow.parquet", "pyarrow", f"reading {file.name}")
    import pyarrow

    try:
        parquet = pq.ParquetFile(file)
        columns = parquet.schema_arrow.names
        if text_field not in columns:
            raise UserError(f"{file} has no column {text_field!r} (found: {', '.join(columns)}): pick the text field with --text-field")
        row = 0
        for batch in parquet.iter_batches(columns=[text_field]):
            for text in batch.column(0).to_pylist():
                if not isinstance(text, str):
                    raise UserError(f"{file} row {row}: {text_field!r} is {type(text).__name__}, not text: drop or fill that row")
                yield Document(domain, "file", f"{rel}:{row}", text)
                row += 1
    except pyarrow.ArrowException as e:
        raise UserError(f"cannot read {file}: {e}: check it is a complete parquet file") from None


def iter_hf_dataset(
    name: str,
    split: str = "train",
    text_field: str = "text",
    config: str | None = None,
    limit: int | None = None,
    domain: str | None = None,
    data_files: str | list[str] | None = None,
) -> Iterator[Document]:
    """Stream documents from a Hugging Face dataset (network, unless `name` is a local
    builder such as "json" with `data_files`). `limit` caps the number of documents;
    `domain` defaults to the dataset's name without its owner."""
    datasets = require("datasets", "datasets", f"reading the Hugging Face dataset {name}", install="pip install 'pretrainlab[hf]'")
    domain = domain or re.sub(r"[^A-Za-z0-9_-]+", "-", name.rsplit("/", 1)[-1])
    try:
        stream = datasets.load_dataset(name, config, split=split, streaming=True, data_files=data_files)
    except (FileNotFoundError, ConnectionError) as e:
        raise UserError(f"cannot load dataset {name!r} (config {config}, split {split}): {e}") from None
    for index, record in enumerate(stream):
        if limit is not None and index >= limit:
            break
        text = record.get(text_field)
        if not isinstance(text, str):
            raise UserError(f"dataset {name} row {index} has no string field {text_field!r} (found: {', '.join(record)}): pass text_field=")
        yield Document(domain, f"hf:{name}", f"{config or 'default'}/{split}/{index}", text)
