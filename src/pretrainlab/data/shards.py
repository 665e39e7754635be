"""Token shards on disk: prepare a corpus from documents, open and verify it, report on it.

A prepared corpus is a folder:

    manifest.json          format, tokenizer (and tokenizer.json's sha256), dtype, split
                           settings, and per domain and split: file (a plain file name in
                           this folder), num_tokens, num_docs, num_bytes, sha256
    documents.jsonl        provenance: one line per kept document (domain, split, source,
                           path, sha256 of its text, num_bytes, num_tokens incl. separator)
    {domain}.{split}.bin   the split's documents' token ids back to back, each followed by
                           the tokenizer's eot_id; raw little-endian uint16 (uint32 when
                           the vocabulary exceeds 65536 ids)
    tokenizer.json         BPE only

Splits are by document and per domain, fixed by (seed, domain, path), and exact-duplicate
texts are dropped (first kept) so no text is in two splits. They differ by who may read
them (docs/research.md, "The trust boundary"):

    train     what runs train on
    monitor   in-run curves and early stopping; experiment processes may read it
    val       the decision set: scored by the lab, never readable by an experiment process
    test      hidden: scored only for a campaign's final report, never shown to a strategy

A share `val_fraction` of each domain's documents (at least max(min_val_docs, 3)) is held
out and dealt, in a fixed pseudo-random order, to val, monitor and test in turn.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import os
import re
import shutil
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, TextIO

import numpy as np

from ..errors import UserError
from .sources import Document
from .tokenizers import BPETokenizer, ByteTokenizer, Tokenizer, tokenizer_from_manifest

FORMAT_VERSION = 2
SPLITS = ("train", "monitor", "val", "test")
HELD_OUT = ("val", "monitor", "test")  # dealt in this order, so val gets the most documents
OPTIONAL_SPLITS = ("val", "test")  # absent inside an experiment's sandbox
PREPARE_HINT = "run `pretrainlab data prepare --builtin` (or --input ...)"
_DOMAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*\Z")
_CHUNK_DOCS = 256  # documents tokenized per batch (BPE encodes a batch on all cores)
_CHUNK_BYTES = 8 * 2**20


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype("<u2") if vocab_size <= 2**16 else np.dtype("<u4")


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _is_empty(text: str) -> bool:
    return not text.strip()


def _split_rank(seed: int, domain: str, path: str) -> str:
    return hashlib.sha256(f"{seed}:{domain}:{path}".encode()).hexdigest()


def _num_val(domain: str, num_docs: int, val_fraction: float, min_val_docs: int) -> int:
    """Documents held out of training (val + monitor + test)."""
    num_val = max(math.ceil(val_fraction * num_docs), min_val_docs, len(HELD_OUT))
    if num_val >= num_docs:
        raise UserError(
            f"domain {domain!r} has {num_docs} document(s) but needs {num_val} held out (val, monitor and test get at least one "
            "each), leaving none to train on: add documents (at least 4 per domain; a long text can be split into several files)"
        )
    return num_val


def _held_out(domain: str, paths: list[str], val_fraction: float, min_val_docs: int, seed: int) -> dict[int, str]:
    """{document index: held-out split}: the first ceil(val_fraction * n) documents (at least
    max(min_val_docs, 3)) ranked by sha256(f"{seed}:{domain}:{path}"), dealt to val, monitor,
    test in turn."""
    num_val = _num_val(domain, len(paths), val_fraction, min_val_docs)
    ranked = sorted(range(len(paths)), key=lambda i: (_split_rank(seed, domain, paths[i]), i))
    return {i: HELD_OUT[k % len(HELD_OUT)] for k, i in enumerate(ranked[:num_val])}


def _check_split_args(val_fraction: float, min_val_docs: int) -> None:
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if min_val_docs < 1:
        raise ValueError(f"min_val_docs must be >= 1 (every domain needs validation text), got {min_val_docs}")


def assign_splits(documents: list[Document], val_fraction: float = 0.1, min_val_docs: int = 1, seed: int = 0) -> list[str | None]:
    """The split (one of SPLITS) `prepare_corpus` gives each document with the same
    arguments, or None for a dropped one (empty, or a duplicate of an earlier text).
    Used to train a BPE tokenizer on the train documents only."""
    _check_split_args(val_fraction, min_val_docs)
    seen: set[str] = set()
    kept_by_domain: dict[str, list[int]] = {}
    for i, doc in enumerate(documents):
        digest = text_sha256(doc.text)
        if _is_empty(doc.text) or digest in seen:
            continue
        seen.add(digest)
        kept_by_domain.setdefault(doc.domain, []).append(i)
    splits: list[str | None] = [None] * len(documents)
    for domain, indices in kept_by_domain.items():
        held = _held_out(domain, [documents[i].path for i in indices], val_fraction, min_val_docs, seed)
        for j, i in enumerate(indices):
            splits[i] = held.get(j, "train")
    return splits


@dataclass
class _DocRecord:
    source: str
    path: str
    sha256: str
    num_bytes: int
    offset: int  # first token in the domain's staging file
    num_tokens: int  # including the separator


@dataclass
class _DomainStage:
    """All of one domain's tokens in arrival order, before the split is known."""

    file: BinaryIO
    records: list[_DocRecord] = field(default_factory=list)
    num_tokens: int = 0


def prepare_corpus(
    documents: Iterable[Document],
    tokenizer: Tokenizer,
    out_dir: str | Path,
    val_fraction: float = 0.1,
    min_val_docs: int = 1,
    seed: int = 0,
    progress: bool = True,
    source: dict | None = None,
    splits: dict[tuple[str, str], str] | None = None,
) -> Path:
    """Tokenize documents into a corpus folder at out_dir (see the module docstring) and
    return its path. Streams: documents are tokenized as they arrive and staged on disk.

    Everything is built in a temporary sibling folder and moved into place at the end, so
    an interrupted run leaves the previous corpus (or none), never a half-written one.
    `source` is stored in the manifest as is, to describe where the documents came from.
    `splits` ({(domain, path): split}) fixes every document's split instead of dealing them
    here: a derived corpus keeps the splits its original documents had before filtering.
    """
    _check_split_args(val_fraction, min_val_docs)
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        _build(documents, tokenizer, staging, val_fraction, min_val_docs, seed, progress, source, splits)
        _publish(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


def _progress_bar(enabled: bool):
    if not enabled:
        return nullcontext(None)
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
    from rich.table import Column

    # a domain's name whole, and its counts folded onto a second line rather than cut off in a narrow terminal or a log
    return Progress(SpinnerColumn(), TextColumn("{task.description}", table_column=Column(no_wrap=True, min_width=12)),
                    TextColumn("{task.fields[status]}", table_column=Column(overflow="fold", ratio=1)), TimeElapsedColumn())


def _chunks(documents: Iterable[Document]) -> Iterator[list[Document]]:
    chunk, size = [], 0
    for doc in documents:
        chunk.append(doc)
        size += len(doc.text)
        if len(chunk) >= _CHUNK_DOCS or size >= _CHUNK_BYTES:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def _build(
    documents: Iterable[Document],
    tokenizer: Tokenizer,
    staging: Path,
    val_fraction: float,
    min_val_docs: int,
    seed: int,
    progress: bool,
    source: dict | None,
    splits: dict[tuple[str, str], str] | None = None,
) -> None:
    dtype = token_dtype(tokenizer.vocab_size)
    token_bytes = tokenizer.token_bytes()
    stages: dict[str, _DomainStage] = {}
    seen: set[str] = set()
    num_duplicates = num_empty = 0
    with _progress_bar(progress) as bar, ExitStack() as staging_files:
        tasks: dict[str, int] = {}
        # 1. Tokenize every document into its domain's staging file, in arrival order.
        for chunk in _chunks(documents):
            kept = []
            for doc in chunk:
                try:
                    digest = text_sha256(doc.text)
                except UnicodeEncodeError as e:
                    raise UserError(
                        f"document {doc.path} ({doc.domain}) holds an unpaired surrogate at character {e.start}, which is not "
                        "valid Unicode: repair or drop it in the input"
                    ) from None
                if _is_empty(doc.text):
                    num_empty += 1
                elif digest in seen:
                    num_duplicates += 1
                else:
                    seen.add(digest)
                    kept.append((doc, digest))
            for (doc, digest), ids in zip(kept, tokenizer.encode_documents([d.text for d, _ in kept])):
                if doc.domain not in stages:
                    if not _DOMAIN_NAME.match(doc.domain):
                        raise UserError(f"domain name {doc.domain!r} is not usable in file names: use letters, digits, '-' and '_'")
                    stages[doc.domain] = _DomainStage(staging_files.enter_context(open(staging / f"{doc.domain}.staging", "wb")))
                    if bar is not None:
                        tasks[doc.domain] = bar.add_task(doc.domain, total=None, status="")
                stage = stages[doc.domain]
                tokens = np.empty(len(ids) + 1, dtype=dtype)
                tokens[:-1] = ids
                tokens[-1] = tokenizer.eot_id
                stage.file.write(tokens.tobytes())
                # The UTF-8 bytes the tokens spell: the text's, less NULs for the byte tokenizer.
                num_bytes = int(token_bytes[ids].sum())
                stage.records.append(_DocRecord(doc.source, doc.path, digest, num_bytes, stage.num_tokens, len(tokens)))
                stage.num_tokens += len(tokens)
                if bar is not None:
                    docs_so_far = len(stage.records)
                    bar.update(tasks[doc.domain], status=f"{docs_so_far:,} docs, {stage.num_tokens:,} tokens")
        if not stages:
            raise UserError("no documents to prepare: every input was empty (or there were no inputs)")

        # 2. Split each domain by document and write its shards, one file per split.
        manifest_domains: dict[str, dict] = {}
        with open(staging / "documents.jsonl", "w", encoding="utf-8") as provenance:
            for domain in sorted(stages):
                stage = stages[domain]
                stage.file.close()
                manifest_domains[domain] = _write_splits(domain, stage, staging, dtype, val_fraction, min_val_docs, seed, provenance,
                                                          splits)
                (staging / f"{domain}.staging").unlink()
                if bar is not None:
                    counts = ", ".join(f"{s} {manifest_domains[domain][s]['num_docs']:,} docs" for s in SPLITS)
                    bar.update(tasks[domain], status=f"{stage.num_tokens:,} tokens; {counts}")

    tokenizer_info = {"name": tokenizer.name, "vocab_size": tokenizer.vocab_size, "eot_id": tokenizer.eot_id, "file": None}
    if isinstance(tokenizer, BPETokenizer):
        tokenizer_info["file"] = "tokenizer.json"
        tokenizer.save(staging / "tokenizer.json")
        tokenizer_info["sha256"] = _file_sha256(staging / "tokenizer.json")  # verify=True checks it, as it checks the shards
    manifest = {
        "format_version": FORMAT_VERSION,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "tokenizer": tokenizer_info,
        "dtype": dtype.name,
        "val_fraction": val_fraction,
        "min_val_docs": min_val_docs,
        "seed": seed,
        "num_dropped_duplicates": num_duplicates,
        "num_dropped_empty": num_empty,
        "source": source,
        "domains": manifest_domains,
    }
    _write_synced(staging / "manifest.json", (json.dumps(manifest, indent=2) + "\n").encode("utf-8"))


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _write_splits(
    domain: str, stage: _DomainStage, staging: Path, dtype: np.dtype, val_fraction: float, min_val_docs: int, seed: int, provenance: TextIO,
    splits: dict[tuple[str, str], str] | None = None,
) -> dict:
    if splits is None:
        held = _held_out(domain, [r.path for r in stage.records], val_fraction, min_val_docs, seed)
    else:
        held = {i: splits[(domain, r.path)] for i, r in enumerate(stage.records)}
    staged = np.memmap(staging / f"{domain}.staging", dtype=dtype, mode="r", shape=(stage.num_tokens,))
    entry = {}
    for split in SPLITS:
        records = [r for i, r in enumerate(stage.records) if held.get(i, "train") == split]
        file = f"{domain}.{split}.bin"
        digest = hashlib.sha256()
        with open(staging / file, "wb") as out:
            for r in records:  # documents keep their arrival order within a split
                chunk = staged[r.offset : r.offset + r.num_tokens].tobytes()
                digest.update(chunk)
                out.write(chunk)
                line = {"domain": domain, "split": split, "source": r.source, "path": r.path}
                line |= {"sha256": r.sha256, "num_bytes": r.num_bytes, "num_tokens": r.num_tokens}
                provenance.write(json.dumps(line, ensure_ascii=False) + "\n")
            out.flush()
            os.fsync(out.fileno())
        entry[split] = {
            "file": file,
            "num_tokens": sum(r.num_tokens for r in records),
            "num_docs": len(records),
            "num_bytes": sum(r.num_bytes for r in records),
            "sha256": digest.hexdigest(),
        }
    del staged
    return entry


def _publish(staging: Path, out_dir: Path) -> None:
    """Move the finished corpus into place; an existing one is swapped out, then deleted."""
    if out_dir.exists():
        old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
        os.replace(out_dir, old)
        os.replace(staging, out_dir)
        shutil.rmtree(old)
    else:
        os.replace(staging, out_dir)


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(2**20):
            digest.update(block)
    return digest.hexdigest()


def _shard_sha256_and_max(path: Path, dtype: np.dtype) -> tuple[str, int]:
    """sha256 of a shard and its largest token id (-1 when empty), in one read."""
    digest, top = hashlib.sha256(), -1
    with open(path, "rb") as f:
        while block := f.read(2**20):  # a multiple of every itemsize: the size was checked before
            digest.update(block)
            top = max(top, int(np.frombuffer(block, dtype=dtype).max()))
    return digest.hexdigest(), top


def rebuild_hint(path: Path, manifest: dict) -> str:
    """How to remake the corpus at path: `data build` for a derived corpus, `data prepare` otherwise."""
    if isinstance(manifest.get("source"), dict) and manifest["source"].get("derived"):
        return f"rebuild it with `pretrainlab data build RECIPE` (its recipe.toml) or delete {path}"
    return f"re-run `pretrainlab data prepare` with --force to rebuild {path}"


def plain_file_name(name, what: str, path: Path) -> str:
    """A manifest's file entry: a file name inside the corpus folder, never a path elsewhere."""
    if not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise ValueError(f"{what} file {name!r} is not a plain file name inside {path}")
    return name


def vocab_overflow_error(shard: Path, token_id: int, vocab_size: int, fix: str) -> UserError:
    return UserError(f"corpus shard {shard} holds token id {token_id}, outside the tokenizer's {vocab_size} ids: it is corrupt; {fix}")


@dataclass
class Corpus:
    """A prepared corpus, opened read-only. Token arrays are memory-mapped on first use."""

    path: Path
    manifest: dict
    manifest_hash: str  # sha256 of the manifest minus its timestamp: names this exact data in run provenance
    tokenizer: Tokenizer
    _arrays: dict[tuple[str, str], np.memmap] = field(default_factory=dict, init=False, repr=False)
    missing_splits: frozenset[str] = field(default=frozenset(), init=False)  # splits whose shards this process cannot see

    def has_split(self, split: str) -> bool:
        return split not in self.missing_splits

    @classmethod
    def open(cls, path: str | Path, verify: bool = True) -> Corpus:
        """Open the corpus at path. Shard sizes are always checked; verify=True also
        recomputes every shard's sha256 against the manifest (about 0.1 s per 50 MB)."""
        path = Path(path)
        manifest_path = path / "manifest.json"
        if not manifest_path.is_file():
            bpe = re.fullmatch(r"builtin-bpe(\d+)-v\d+", path.name)  # the builtin corpus under a BPE tokenizer: say which
            hint = f"run `pretrainlab data prepare --builtin --tokenizer bpe:{bpe[1]}`" if bpe else PREPARE_HINT
            raise UserError(f"corpus not found at {path}: {hint}")
        raw = manifest_path.read_bytes()
        try:
            manifest = json.loads(raw)
        except json.JSONDecodeError as e:
            raise UserError(f"{manifest_path} is not valid JSON ({e.msg}): re-run `pretrainlab data prepare` with --force") from None
        if not isinstance(manifest, dict):
            raise UserError(f"{manifest_path} does not describe a corpus (a JSON {type(manifest).__name__}): "
                            "re-run `pretrainlab data prepare` with --force")
        if manifest.get("format_version") != FORMAT_VERSION:
            raise UserError(
                f"corpus at {path} has format version {manifest.get('format_version')}, this pretrainlab reads {FORMAT_VERSION}: "
                "re-run `pretrainlab data prepare` with --force"
            )
        try:
            return cls._open(path, manifest, verify)
        except (KeyError, TypeError, ValueError, AttributeError) as e:  # a manifest edited by hand, or by something else
            what = f"no {e}" if isinstance(e, KeyError) else str(e).splitlines()[0][:200]
            raise UserError(f"{manifest_path} does not describe a corpus this version reads ({what}): "
                            f"{rebuild_hint(path, manifest)}") from None

    @classmethod
    def _open(cls, path: Path, manifest: dict, verify: bool) -> Corpus:
        fix = rebuild_hint(path, manifest)
        tokenizer = _open_tokenizer(path, manifest, verify, fix)
        dtype = np.dtype(manifest["dtype"])
        if dtype != token_dtype(tokenizer.vocab_size):  # the writer's rule: a hand-edited dtype reads the shards as other ids
            raise UserError(f"{path / 'manifest.json'} says dtype {manifest['dtype']}, but a corpus of {tokenizer.vocab_size} token ids "
                            f"is stored as {token_dtype(tokenizer.vocab_size).name}: {fix}")
        itemsize = dtype.itemsize
        missing: dict[str, list[str]] = {}  # split -> its domains whose shard is not there
        for domain, splits in manifest["domains"].items():
            for split in SPLITS:
                info = splits[split]
                file = path / plain_file_name(info["file"], f"the {domain} {split} shard", path)
                if not file.is_file():
                    if split in OPTIONAL_SPLITS:  # hidden from this process (an experiment's sandbox): an error only on use
                        missing.setdefault(split, []).append(domain)
                        continue
                    raise UserError(f"corpus shard {file} is missing: {fix}")
                expected_size = info["num_tokens"] * itemsize
                if file.stat().st_size != expected_size:
                    raise UserError(f"corpus shard {file} has {file.stat().st_size} bytes, the manifest expects {expected_size}: {fix}")
                if verify:
                    actual, top = _shard_sha256_and_max(file, dtype)
                    if actual != info["sha256"]:
                        raise UserError(
                            f"corpus shard {file} is corrupt: sha256 {actual[:12]}... but the manifest says {info['sha256'][:12]}...: {fix}"
                        )
                    if top >= tokenizer.vocab_size:
                        raise vocab_overflow_error(file, top, tokenizer.vocab_size, fix)
        for split, domains in missing.items():
            if len(domains) < len(manifest["domains"]):  # a sandbox hides a split's every shard, never some of them
                raise UserError(f"corpus shard {path / manifest['domains'][domains[0]][split]['file']} is missing (the {split} split "
                                f"of {', '.join(domains)}): {fix}")
        content = {k: v for k, v in manifest.items() if k != "created"}  # identical data, identical hash
        corpus = cls(path, manifest, hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest(), tokenizer)
        corpus.missing_splits = frozenset(missing)
        return corpus

    def missing_split_error(self) -> UserError | None:
        """Val or test shards absent (as in an experiment's sandbox, which may not read them): what
        a report of the whole corpus must say instead of showing the manifest's numbers."""
        if not self.missing_splits:
            return None
        split = sorted(self.missing_splits)[0]
        file = self.path / self.manifest["domains"][self.domains[0]][split]["file"]
        return UserError(f"corpus shard {file} is missing (the {', '.join(sorted(self.missing_splits))} split(s) of every domain): "
                         f"restore the files or {rebuild_hint(self.path, self.manifest)}")

    @property
    def domains(self) -> list[str]:
        return sorted(self.manifest["domains"])

    def _split_info(self, domain: str, split: str) -> dict:
        if domain not in self.manifest["domains"]:
            raise UserError(f"corpus {self.path} has no domain {domain!r}: its domains are {', '.join(self.domains)}")
        if split not in SPLITS:
            raise UserError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
        if split in self.missing_splits:
            raise UserError(f"the {split} split of {self.path} is not readable here: experiment processes see only train and "
                            "monitor; the lab scores val and test")
        return self.manifest["domains"][domain][split]

    def tokens(self, domain: str, split: str) -> np.memmap:
        """The split's token ids as a read-only 1-D memmap (uint16 or uint32)."""
        key = (domain, split)
        if key not in self._arrays:
            info = self._split_info(domain, split)
            dtype = np.dtype(self.manifest["dtype"])
            array = np.memmap(self.path / info["file"], dtype=dtype, mode="r", shape=(info["num_tokens"],))
            # Held-out splits are small and read whole by every evaluation: one max over them catches an id outside the
            # vocabulary here, whoever scores them. Train shards can be large: BatchLoader checks each batch instead.
            if split != "train" and len(array) and (top := int(array.max())) >= self.tokenizer.vocab_size:
                raise vocab_overflow_error(self.path / info["file"], top, self.tokenizer.vocab_size, rebuild_hint(self.path, self.manifest))
            self._arrays[key] = array
        return self._arrays[key]

    def token_bytes(self) -> np.ndarray:
        """UTF-8 bytes per token id (int32, [vocab_size]); 0 for the separator."""
        return self.tokenizer.token_bytes()

    def domain_token_counts(self, split: str = "train") -> dict[str, int]:
        return {d: self._split_info(d, split)["num_tokens"] for d in self.domains}


def _open_tokenizer(path: Path, manifest: dict, verify: bool, fix: str) -> Tokenizer:
    """The manifest's tokenizer; with verify, its file must have the sha256 the manifest records
    (corpora written before the field existed have none and are not checked)."""
    info = manifest["tokenizer"]
    if info["name"] == "byte":
        return ByteTokenizer()
    file = path / plain_file_name(info["file"], "the tokenizer", path)
    if verify and info.get("sha256") is not None and file.is_file() and _file_sha256(file) != info["sha256"]:
        raise UserError(f"tokenizer {file} is not the one the corpus was made with (its sha256 differs from the manifest's): {fix}")
    try:
        return tokenizer_from_manifest(manifest, path)
    except UserError:
        raise
    except Exception as e:  # Hugging Face tokenizers raises a bare Exception for a damaged file
        raise UserError(f"tokenizer {file} cannot be read ({str(e).splitlines()[0][:160] if str(e) else type(e).__name__}): {fix}") from None


def corpus_report(corpus: Corpus) -> dict:
    """Per domain and split: docs, tokens, bytes and bytes per token, plus totals per split;
    for a derived corpus also its recipe and build report (data/fates.py)."""
    from .fates import build_report  # fates imports build, which imports this module

    if (error := corpus.missing_split_error()) is not None:
        raise error

    def row(num_docs: int, num_tokens: int, num_bytes: int) -> dict:
        bytes_per_token = num_bytes / num_tokens if num_tokens else 0.0
        return {"num_docs": num_docs, "num_tokens": num_tokens, "num_bytes": num_bytes, "bytes_per_token": bytes_per_token}

    domains = {}
    totals = {split: [0, 0, 0] for split in SPLITS}
    for domain in corpus.domains:
        domains[domain] = {}
        for split in SPLITS:
            info = corpus.manifest["domains"][domain][split]
            values = (info["num_docs"], info["num_tokens"], info["num_bytes"])
            domains[domain][split] = row(*values)
            totals[split] = [a + b for a, b in zip(totals[split], values)]
    return {
        "path": str(corpus.path),
        "tokenizer": corpus.tokenizer.name,
        "vocab_size": corpus.tokenizer.vocab_size,
        "manifest_sha256": corpus.manifest_hash,
        "num_dropped_duplicates": corpus.manifest["num_dropped_duplicates"],
        "num_dropped_empty": corpus.manifest["num_dropped_empty"],
        "domains": domains,
        "total": {split: row(*totals[split]) for split in SPLITS},
        "recipe": _recipe_summary(corpus.manifest.get("source")),
        "build": build_report(corpus.path),  # per-step counts of a derived corpus (None for a prepared one)
    }


def _recipe_summary(source: dict | None) -> dict | None:
    if not source or not source.get("derived"):
        return None
    return {k: source[k] for k in ("recipe_name", "recipe_sha256", "build_sha256")}
