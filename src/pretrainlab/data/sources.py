"""Reading user corpora into `Document`s: local files and folders, or a Hugging Face dataset.

    for doc in iter_documents("my_corpus/", domain="web"): ...
    for doc in iter_documents("crawl/", "web", on_skip=skipped.append): ...   # bad files skipped, not fatal
    for doc in iter_hf_dataset("roneneldan/TinyStories", limit=10_000): ...

Local formats: .txt and .md (one document per file), .jsonl / .jsonl.gz / .jsonl.zst (one
document per line, text in `text_field`), .parquet (one document per row of column
`text_field`). zstd and parquet need the optional `zstandard` and `pyarrow` packages,
imported only when such a file is read.

Text is read as the tokenizer will see it: a leading UTF-8 byte-order mark is dropped, and
NUL characters are removed from JSONL and parquet text (the byte tokenizer's separator is
byte 0), before anything dedups or splits it; a document left empty is dropped downstream.

Bad input: by default the first unreadable file or record is a UserError. With `on_skip`
(what `data build` does) it is left out and reported instead: a file that cannot be read
to its end (bad gzip/zstd, truncated, not UTF-8, a binary file, a broken parquet file, the
text field missing from its schema, a text file over MAX_DOCUMENT_BYTES) is skipped whole,
never half-read; one bad record (a malformed or unparseable JSON line, a line or row without
string text, an unpaired surrogate, a line or value over MAX_DOCUMENT_BYTES) is skipped
alone. In a folder, what is not a readable file of the folder is not read and is reported the
same way (a warning without `on_skip`): unsupported file types, symbolic links that lead
outside the folder or to a folder, broken links, FIFOs, devices and sockets, folders that
cannot be listed.
"""

from __future__ import annotations

import gzip
import importlib
import io
import json
import os
import re
import stat
import warnings
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError

DATA_EXTRA = "pip install 'pretrainlab[data]'"
# Longest suffix first so "x.jsonl.gz" is not read as plain ".jsonl".
FILE_KINDS = {".jsonl.gz": "jsonl.gz", ".jsonl.zst": "jsonl.zst", ".jsonl": "jsonl", ".parquet": "parquet", ".txt": "text", ".md": "text"}
_ZSTD_READ_BYTES = 1 << 16  # compressed bytes per read from the file
# Compressed bytes per decompress call. zstd expands at most ~32,000x (an RLE block: 4 bytes for
# 128 KiB), so one call yields at most ~8 MiB, whatever the file: a 44 KB bomb of short lines
# once made 1 GB per 64 KiB read.
_ZSTD_FEED_BYTES = 256
# The largest document read, in UTF-8 bytes: a text file, a JSONL line or a parquet value over
# it is refused (a record alone; a text file whole) before it is held in memory whole. 64 MiB is
# ~20 books; anything larger is a dump to split, and holding it costs several times its size.
MAX_DOCUMENT_BYTES = 64 * 2**20
_PARQUET_BATCH_ROWS = 64  # rows decoded at once: a dictionary-encoded column expands on decoding


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
    sorted path order). Unsupported files in a folder, and entries that are not its readable
    files (see the module doc), are skipped with a warning (with `on_skip`: reported to it).
    A bad file or record is a UserError, or with `on_skip`, reported to it and left out.

    Document paths are relative to the folder (or the file name), so the same data moved
    elsewhere gets the same train/val split.
    """
    root = Path(path)
    try:
        mode = root.stat().st_mode
    except FileNotFoundError:
        raise UserError(f"input not found: {root}: pass an existing file or folder") from None
    except OSError as e:
        raise UserError(f"cannot read input {root} ({e.strerror or e}): pass an existing, readable file or folder") from None
    if stat.S_ISREG(mode):
        kind = file_kind(root)
        if kind is None:
            raise UserError(f"unsupported file type: {root}: use {', '.join(FILE_KINDS)} files")
        yield from _read_checked(root, kind, root.name, domain, text_field, on_skip)
    elif stat.S_ISDIR(mode):
        num_read = 0
        for file, rel, reason in _folder_entries(root):
            kind = file_kind(file) if reason is None else None
            if reason is None and kind is None:
                reason = f"unsupported file type (supported: {', '.join(FILE_KINDS)})"
            if reason is not None:
                if on_skip is None:
                    warnings.warn(f"skipping {file}: {reason}", stacklevel=2)
                else:
                    on_skip(SkippedInput(rel, reason, True))
                continue
            num_read += 1
            yield from _read_checked(file, kind, rel, domain, text_field, on_skip)
        if num_read == 0:
            raise UserError(f"no supported files under {root}: add {', '.join(FILE_KINDS)} files")
    else:
        raise UserError(f"{root} is not a regular file or folder ({_special_kind(mode)}): pass a file or folder of text")


def _special_kind(mode: int) -> str:
    kinds = [(stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
             (stat.S_ISSOCK, "a socket")]
    return next((name for test, name in kinds if test(mode)), "a special file")


def _folder_entries(root: Path) -> list[tuple[Path, str, str | None]]:
    """(path, path relative to root, why it is not read or None) for everything under root
    that is not a folder, sorted by relative path. Walked with a stack, not recursion, so any
    depth is fine. Folder links are not followed (a loop, or a way out of root); a file link
    is read only if it resolves inside root, so a source folder never reads /etc/passwd."""
    real_root = Path(os.path.realpath(root))
    entries: list[tuple[Path, str, str | None]] = []
    folders = [root]
    while folders:
        folder = folders.pop()
        try:
            with os.scandir(folder) as it:
                children = list(it)
        except OSError as e:
            entries.append((folder, folder.relative_to(root).as_posix(), f"a folder that cannot be listed ({e.strerror or e})"))
            continue
        for child in children:
            path = Path(child.path)
            reason = None
            if child.is_symlink():
                reason = _link_reason(path, real_root)
            elif child.is_dir(follow_symlinks=False):
                folders.append(path)
                continue
            elif not child.is_file(follow_symlinks=False):
                reason = f"not a regular file ({_special_kind(child.stat(follow_symlinks=False).st_mode)})"
            entries.append((path, path.relative_to(root).as_posix(), reason))
    return sorted(entries, key=lambda e: e[1])


def _link_reason(link: Path, real_root: Path) -> str | None:
    """Why a symbolic link in a source folder is not read, or None: it is a file of the folder."""
    target = Path(os.path.realpath(link))  # non-strict: a loop or a broken link resolves to some path
    if target != real_root and real_root not in target.parents:
        return f"a symbolic link to {target}, outside the source folder: not read"
    try:
        mode = link.stat().st_mode
    except OSError as e:
        return f"a broken symbolic link ({e.strerror or e})"
    if stat.S_ISDIR(mode):
        return "a symbolic link to a folder: not followed"
    return None if stat.S_ISREG(mode) else f"not a regular file ({_special_kind(mode)})"


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


def _limit() -> str:
    return f"the limit on one document ({MAX_DOCUMENT_BYTES:,} bytes, sources.MAX_DOCUMENT_BYTES)"


def _read_file(file: Path, kind: str, rel: str, domain: str, text_field: str, bad_record: BadRecord) -> Iterator[Document]:
    if kind == "text":
        try:
            with open(file, "rb") as f:
                raw = f.read(MAX_DOCUMENT_BYTES + 1)  # never more than the limit in memory
        except OSError as e:
            raise _BadFile(f"cannot open ({e.strerror or e})", "check the file's permissions") from None
        if len(raw) > MAX_DOCUMENT_BYTES:
            raise _BadFile(f"a text file larger than {_limit()}", "split it into smaller files")
        try:
            text = raw.decode("utf-8-sig")  # a leading byte-order mark is no text
        except UnicodeDecodeError as e:
            raise _BadFile(f"not UTF-8 text (byte {e.start})", "convert it to UTF-8") from None
        if (nul := text.find("\0")) >= 0:  # valid UTF-8 is no proof of text: zero bytes mean a binary file
            raise _BadFile(f"a binary file, not text (a NUL byte at character {nul})", "remove it from the source")
        yield Document(domain, "file", rel, text)
    elif kind == "parquet":
        yield from _read_parquet(file, rel, domain, text_field, bad_record)
    else:
        yield from _read_jsonl(file, kind, rel, domain, text_field, bad_record)


def _as_tokenized(text: str) -> str:
    """The text as the tokenizer will see it: the byte tokenizer drops NULs (byte 0 is its
    separator), so they go before dedup and splitting compare texts; otherwise "t" and a copy
    of "t" with a NUL inside would be two documents, one in train and one in val."""
    return text.replace("\0", "")


class _ZstdFrames(io.RawIOBase):
    """The decompressed bytes of every zstd frame in a file, in order. zstandard's own
    stream_reader ends quietly at a truncated frame (half a file read as if whole); this
    raises EOFError there instead. Memory stays bounded: compressed input goes to the
    decompressor _ZSTD_FEED_BYTES at a time."""

    def __init__(self, file: Path, zstandard):
        super().__init__()
        self._file = open(file, "rb")  # noqa: SIM115 -- closed in close()
        self._dctx = zstandard.ZstdDecompressor()
        self._frame = None  # the decompressor of the frame being read; None between frames
        self._chunk = memoryview(b"")  # compressed bytes read from the file and not yet decompressed
        self._out = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._out:
            if not self._chunk:
                self._chunk = memoryview(self._file.read(_ZSTD_READ_BYTES))
                if not self._chunk:
                    if self._frame is not None:
                        raise EOFError("the file ends inside a zstd frame (truncated)")
                    return 0
            if self._frame is None:
                self._frame = self._dctx.decompressobj()
            piece = self._chunk[:_ZSTD_FEED_BYTES]
            self._out = memoryview(self._frame.decompress(piece))
            used = len(piece)
            if self._frame.eof:  # the rest of the piece starts the next frame
                used -= len(self._frame.unused_data)
                self._frame = None
            self._chunk = self._chunk[used:]
        n = min(len(buffer), len(self._out))
        buffer[:n] = self._out[:n]
        self._out = self._out[n:]
        return n

    def close(self) -> None:
        self._file.close()
        super().close()


def _open_text(file: Path, kind: str) -> io.TextIOBase:
    # utf-8-sig: a file saved with a byte-order mark reads like one without
    if kind == "jsonl":
        return open(file, encoding="utf-8-sig")
    if kind == "jsonl.gz":
        return gzip.open(file, "rt", encoding="utf-8-sig")
    zstandard = require("zstandard", "zstandard", f"reading {file.name}")
    return io.TextIOWrapper(io.BufferedReader(_ZstdFrames(file, zstandard)), encoding="utf-8-sig")


def _numbered_lines(lines: io.TextIOBase) -> Iterator[tuple[int, str | None]]:
    """(line number, line), or (line number, None) for a line over MAX_DOCUMENT_BYTES, which
    is read past in pieces rather than held whole (its characters are at least as many bytes)."""
    lineno = 0
    while line := lines.readline(MAX_DOCUMENT_BYTES + 1):
        lineno += 1
        if len(line) > MAX_DOCUMENT_BYTES and not line.endswith("\n"):
            while (rest := lines.readline(1 << 20)) and not rest.endswith("\n"):
                pass
            yield lineno, None
        else:
            yield lineno, line


def _read_jsonl(file: Path, kind: str, rel: str, domain: str, text_field: str, bad_record: BadRecord) -> Iterator[Document]:
    # Decompression and decoding failures surface while iterating lines; zlib.error is a
    # corrupt deflate stream inside a .gz whose header is fine.
    read_errors: tuple[type[BaseException], ...] = (OSError, EOFError, UnicodeDecodeError, zlib.error)
    if kind == "jsonl.zst":
        read_errors += (require("zstandard", "zstandard", f"reading {file.name}").ZstdError,)
    lineno = 0
    try:
        with _open_text(file, kind) as lines:
            for lineno, line in _numbered_lines(lines):
                if line is None:
                    bad_record(lineno, f"a line longer than {_limit()}", "split that document or drop it")
                    continue
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    bad_record(lineno, f"malformed JSON ({e.msg}, column {e.colno})", "fix or remove that line")
                    continue
                except RecursionError:
                    bad_record(lineno, "JSON nested too deeply to read", "fix or remove that line")
                    continue
                except ValueError as e:  # e.g. an integer of more than 4300 digits
                    bad_record(lineno, f"JSON this reader refuses ({_one_line(e)[:120]})", "fix or remove that line")
                    continue
                text = record.get(text_field) if isinstance(record, dict) else None
                if isinstance(record, dict) and text_field in record and not isinstance(text, str):
                    bad_record(lineno, f"{text_field!r} is {type(text).__name__}, not text", "drop or fix that line")
                    continue
                if not isinstance(text, str):
                    found = ", ".join(record) if isinstance(record, dict) else type(record).__name__
                    bad_record(lineno, f"no string field {text_field!r} (found: {found[:200]})", "pick the text field with --text-field "
                               "(text_field in a data recipe)")
                    continue
                try:
                    num_bytes = len(text.encode("utf-8"))
                except UnicodeEncodeError as e:  # JSON's "\ud800" escapes decode to text no UTF-8 file can hold
                    bad_record(lineno, f"an unpaired surrogate at character {e.start}, which is not valid Unicode",
                               "repair or drop it in the input")
                    continue
                if num_bytes > MAX_DOCUMENT_BYTES:  # escapes can make the text longer than its line
                    bad_record(lineno, f"a document of {num_bytes:,} bytes, over {_limit()}", "split that document or drop it")
                    continue
                yield Document(domain, "file", f"{rel}:{lineno}", _as_tokenized(text))
    except read_errors as e:
        raise _BadFile(f"cannot read after line {lineno} ({type(e).__name__}: {e})",
                       f"check the file is complete and really {kind}") from None


def _read_parquet(file: Path, rel: str, domain: str, text_field: str, bad_record: BadRecord) -> Iterator[Document]:
    pq = require("pyarrow.parquet", "pyarrow", f"reading {file.name}")
    import pyarrow
    import pyarrow.compute as pc

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
        for batch in parquet.iter_batches(batch_size=_PARQUET_BATCH_ROWS, columns=[text_field]):
            column = batch.column(0)
            sizes = pc.binary_length(column).to_pylist()  # UTF-8 bytes per row, None for a null: known before any text
            if max((n or 0 for n in sizes), default=0) <= MAX_DOCUMENT_BYTES:
                texts = column.to_pylist()
            else:  # no Python copy of a row over the limit
                texts = [None if n is None or n > MAX_DOCUMENT_BYTES else column[i].as_py() for i, n in enumerate(sizes)]
            for text, num_bytes in zip(texts, sizes):
                if num_bytes is None:
                    bad_record(row, f"{text_field!r} is null, not text", "drop or fill that row")
                elif num_bytes > MAX_DOCUMENT_BYTES:
                    bad_record(row, f"a document of {num_bytes:,} bytes, over {_limit()}", "split that document or drop it")
                else:
                    yield Document(domain, "file", f"{rel}:{row}", _as_tokenized(text))
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
        yield Document(domain, f"hf:{name}", f"{config or 'default'}/{split}/{index}", _as_tokenized(text))
