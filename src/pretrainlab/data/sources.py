"""Reading user corpora into `Document`s: local files and folders, or a Hugging Face dataset.

    for doc in iter_documents("my_corpus/", domain="web"): ...
    for doc in iter_documents("crawl/", "web", on_skip=skipped.append): ...   # bad files skipped, not fatal
    for doc in iter_hf_dataset("roneneldan/TinyStories", limit=10_000): ...

Local formats: .txt and .md (one document per file), .jsonl / .jsonl.gz / .jsonl.zst (one
document per line, text in `text_field`), .parquet (one document per row of column
`text_field`). zstd and parquet need the optional `zstandard` and `pyarrow` packages,
imported only when such a file is read.

Bad input: by default the first unreadable file or record is a UserError. With `on_skip`
(what `data build` does) it is left out and reported instead: a file that cannot be read
to its end (bad gzip/zstd, truncated, not UTF-8, a binary file, a broken parquet file, the
text field missing from its schema) is skipped whole, never half-read; one bad record
(a malformed JSON line, a line or row without string text, an unpaired surrogate) is
skipped alone.
"""

from __future__ import annotations

import gzip
import importlib
import io
import json
import re
import warnings
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError

DATA_EXTRA = "pip install 'pretrainlab[data]'"
# Longest suffix first so "x.jsonl.gz" is not read as plain ".jsonl".
FILE_KINDS = {".jsonl.gz": "jsonl.gz", ".jsonl.zst": "jsonl.zst", ".jsonl": "jsonl", ".parquet": "parquet", ".txt": "text", ".md": "text"}
_ZSTD_READ_BYTES = 1 << 16  # compressed bytes per read: text expands ~5-10x, so a few hundred KiB of text in memory


@dataclass(frozen=True)
class Document:
    """One unit of text; the train/val split never cuts a document in two."""

    domain: str  # the mixture component it belongs to, e.g. "code"
    source: str  # where it came from: "file", "python-stdlib", "hf:owner/name", ...
    path: str  # file path or id inside the source; with domain, it fixes the split
    text: str


@dataclass(frozen=True)
class SkippedInput:
    """A file, or one record of a file, that could not be read and was left out."""

    path: str  # the file as Document.path names it (relative to the source folder); FILE:N for record N
    reason: str  # one line: what was wrong
    whole_file: bool  # True: every record of the file was left out


class _BadFile(Exception):
    """The file cannot be read to its end; nothing of it is used."""

    def __init__(self, reason: str, fix: str):
        super().__init__(reason)
        self.reason, self.fix = reason, fix


BadRecord = Callable[[int, str, str], None]  # (line or row number, what is wrong, how to fix it)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())  # library messages (pyarrow's) can span lines; a report row may not


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


def iter_documents(path: str | Path, domain: str, text_field: str = "text",
                   on_skip: Callable[[SkippedInput], None] | None = None) -> Iterator[Document]:
    """Documents from a file, or from every supported file under a folder (recursive, in
    sorted path order). Unsupported files in a folder are skipped with a warning (with
    `on_skip`: reported to it). A bad file or record is a UserError, or with `on_skip`,
    reported to it and left out (see the module doc).

    Document paths are relative to the folder (or the file name), so the same data moved
    elsewhere gets the same train/val split.
    """
    root = Path(path)
    if root.is_file():
        kind = file_kind(root)
        if kind is None:
            raise UserError(f"unsupported file type: {root}: use {', '.join(FILE_KINDS)} files")
        yield from _read_checked(root, kind, root.name, domain, text_field, on_skip)
    elif root.is_dir():
        files = sorted((p for p in root.rglob("*") if p.is_file()), key=lambda p: p.relative_to(root).as_posix())
        num_read = 0
        for file in files:
            kind = file_kind(file)
            rel = file.relative_to(root).as_posix()
            if kind is None:
                if on_skip is None:
                    warnings.warn(f"skipping {file}: unsupported file type (supported: {', '.join(FILE_KINDS)})", stacklevel=2)
                else:
                    on_skip(SkippedInput(rel, f"unsupported file type (supported: {', '.join(FILE_KINDS)})", True))
                continue
            num_read += 1
            yield from _read_checked(file, kind, rel, domain, text_field, on_skip)
        if num_read == 0:
            raise UserError(f"no supported files under {root}: add {', '.join(FILE_KINDS)} files")
    else:
        raise UserError(f"input not found: {root}: pass an existing file or folder")


def _read_checked(file: Path, kind: str, rel: str, domain: str, text_field: str,
                  on_skip: Callable[[SkippedInput], None] | None) -> Iterator[Document]:
    if on_skip is None:
        def bad_record(index: int, reason: str, fix: str) -> None:
            raise UserError(f"{file}:{index}: {reason}: {fix}")

        try:
            yield from _read_file(file, kind, rel, domain, text_field, bad_record)
        except _BadFile as e:
            raise UserError(f"{file}: {e.reason}: {e.fix}") from None
        return
    # Skipping: read the whole file before yielding any of it, so a file that breaks halfway
    # (a truncated .gz) is left out whole rather than silently cut.
    skipped: list[SkippedInput] = []
    try:
        docs = list(_read_file(file, kind, rel, domain, text_field,
                               lambda index, reason, fix: skipped.append(SkippedInput(f"{rel}:{index}", _one_line(reason), False))))
    except _BadFile as e:
        on_skip(SkippedInput(rel, _one_line(e.reason), True))
        return
    for s in skipped:
        on_skip(s)
    yield from docs


def _read_file(file: Path, kind: str, rel: str, domain: str, text_field: str, bad_record: BadRecord) -> Iterator[Document]:
    if kind == "text":
        try:
            raw = file.read_bytes()
        except OSError as e:
            raise _BadFile(f"cannot open ({e.strerror or e})", "check the file's permissions") from None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise _BadFile(f"not UTF-8 text (byte {e.start})", "convert it to UTF-8") from None
        if (nul := text.find("\0")) >= 0:  # valid UTF-8 is no proof of text: zero bytes mean a binary file
            raise _BadFile(f"a binary file, not text (a NUL byte at character {nul})", "remove it from the source")
        yield Document(domain, "file", rel, text)
    elif kind == "parquet":
        yield from _read_parquet(file, rel, domain, text_field, bad_record)
    else:
        yield from _read_jsonl(file, kind, rel, domain, text_field, bad_record)


class _ZstdFrames(io.RawIOBase):
    """The decompressed bytes of every zstd frame in a file, in order. zstandard's own
    stream_reader ends quietly at a truncated frame (half a file read as if whole); this
    raises EOFError there instead."""

    def __init__(self, file: Path, zstandard):
        super().__init__()
        self._file = open(file, "rb")  # noqa: SIM115 -- closed in close()
        self._dctx = zstandard.ZstdDecompressor()
        self._frame = None  # the decompressor of the frame being read; None between frames
        self._out = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._out:
            chunk = self._file.read(_ZSTD_READ_BYTES)
            if not chunk:
                if self._frame is not None:
                    raise EOFError("the file ends inside a zstd frame (truncated)")
                return 0
            out = bytearray()
            while chunk:
                if self._frame is None:
                    self._frame = self._dctx.decompressobj()
                out += self._frame.decompress(chunk)
                if self._frame.eof:  # the rest of the chunk starts the next frame
                    chunk, self._frame = self._frame.unused_data, None
                else:
                    chunk = b""
            self._out = memoryview(bytes(out))
        n = min(len(buffer), len(self._out))
        buffer[:n] = self._out[:n]
        self._out = self._out[n:]
        return n

    def close(self) -> None:
        self._file.close()
        super().close()


def _open_text(file: Path, kind: str) -> io.TextIOBase:
    if kind == "jsonl":
        return open(file, encoding="utf-8")
    if kind == "jsonl.gz":
        return gzip.open(file, "rt", encoding="utf-8")
    zstandard = require("zstandard", "zstandard", f"reading {file.name}")
    return io.TextIOWrapper(io.BufferedReader(_ZstdFrames(file, zstandard)), encoding="utf-8")


def _read_jsonl(file: Path, kind: str, rel: str, domain: str, text_field: str, bad_record: BadRecord) -> Iterator[Document]:
    # Decompression and decoding failures surface while iterating lines; zlib.error is a
    # corrupt deflate stream inside a .gz whose header is fine.
    read_errors: tuple[type[BaseException], ...] = (OSError, EOFError, UnicodeDecodeError, zlib.error)
    if kind == "jsonl.zst":
        read_errors += (require("zstandard", "zstandard", f"reading {file.name}").ZstdError,)
    lineno = 0
    try:
        with _open_text(file, kind) as lines:
            for lineno, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    bad_record(lineno, f"malformed JSON ({e.msg}, column {e.colno})", "fix or remove that line")
                    continue
                text = record.get(text_field) if isinstance(record, dict) else None
                if isinstance(record, dict) and text_field in record and not isinstance(text, str):
                    bad_record(lineno, f"{text_field!r} is {type(text).__name__}, not text", "drop or fix that line")
                    continue
                if not isinstance(text, str):
                    found = ", ".join(record) if isinstance(record, dict) else type(record).__name__
                    bad_record(lineno, f"no string field {text_field!r} (found: {found})", "pick the text field with --text-field "
                               "(text_field in a data recipe)")
                    continue
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError as e:  # JSON's "\ud800" escapes decode to text no UTF-8 file can hold
                    bad_record(lineno, f"an unpaired surrogate at character {e.start}, which is not valid Unicode",
                               "repair or drop it in the input")
                    continue
                yield Document(domain, "file", f"{rel}:{lineno}", text)
    except read_errors as e:
        raise _BadFile(f"cannot read after line {lineno} ({type(e).__name__}: {e})",
                       f"check the file is complete and really {kind}") from None


def _read_parquet(file: Path, rel: str, domain: str, text_field: str, bad_record: BadRecord) -> Iterator[Document]:
    pq = require("pyarrow.parquet", "pyarrow", f"reading {file.name}")
    import pyarrow

    try:
        parquet = pq.ParquetFile(file)
        schema = parquet.schema_arrow
        if text_field not in schema.names:
            raise _BadFile(f"no column {text_field!r} (found: {', '.join(schema.names)})", "pick the text field with --text-field "
                           "(text_field in a data recipe)")
        column_type = schema.field(text_field).type
        if not (pyarrow.types.is_string(column_type) or pyarrow.types.is_large_string(column_type)):
            raise _BadFile(f"column {text_field!r} holds {column_type}, not text", "pick the text column")
        row = 0
        for batch in parquet.iter_batches(columns=[text_field]):
            for text in batch.column(0).to_pylist():
                if isinstance(text, str):
                    yield Document(domain, "file", f"{rel}:{row}", text)
                else:
                    bad_record(row, f"{text_field!r} is null, not text", "drop or fill that row")
                row += 1
    except (pyarrow.ArrowException, OSError) as e:
        raise _BadFile(f"cannot read as parquet ({e})", "check it is a complete parquet file") from None


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
