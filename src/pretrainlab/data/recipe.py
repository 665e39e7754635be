"""Data recipes: a TOML file naming a derived corpus's sources and ordered steps.

    [corpus]
    name = "filtered"
    tokenizer = "byte"              # or "bpe:8192" (trained on the kept train documents)

    [[sources]]
    builtin = true                  # the builtin corpus's documents (code, docs, literature)
    max_bytes_per_domain = 200000

    [[sources]]
    path = "notes/"                 # a file or folder, as `data prepare --input` reads it
    domain = "notes"

    [[steps]]
    step = "gopher_quality"
    domains = ["literature"]
    min_words = 100

`load_recipe(path)` parses and validates it; every mistake is a UserError that names the
field and the fix. Step parameters are the fields of the step's config (data/steps.py).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ..errors import UserError
from .steps import STEPS, StepConfig, config_fields
from .tokenizers import parse_tokenizer_spec


@dataclass
class SourceSpec:
    builtin: bool = False  # the builtin corpus's documents
    max_bytes_per_domain: int | None = None  # builtin only: cap per domain (None: the builtin default, 6 MiB)
    path: str | None = None  # a user file or folder (relative paths are relative to the recipe file)
    domain: str | None = None  # the domain of a user source's documents
    text_field: str = "text"  # JSONL/Parquet field holding the text

    def __post_init__(self) -> None:
        if self.builtin == (self.path is not None):
            raise ValueError("a source needs exactly one of builtin = true or path = \"...\"")
        if self.path is not None and not self.domain:
            raise ValueError(f"source {self.path!r} needs domain = \"...\"")
        if self.max_bytes_per_domain is not None and (not isinstance(self.max_bytes_per_domain, int) or self.max_bytes_per_domain < 1):
            raise ValueError(f"max_bytes_per_domain must be a positive integer, got {self.max_bytes_per_domain!r}")


@dataclass
class CorpusSpec:
    name: str = "derived"  # names the output folder: derived-{name}-{hash}
    tokenizer: str = "byte"  # 'byte' or 'bpe:VOCAB'
    val_fraction: float = 0.1  # share of each domain's documents held out (val + monitor + test), decided before any step
    min_val_docs: int = 1  # held-out documents per domain, at least
    seed: int = 0  # fixes the split
    num_workers: int = 0  # processes for per-document steps (or CPUs of a new local Ray instance, --executor ray); 0: all cores

    def __post_init__(self) -> None:
        if not self.name or not all(ch.isalnum() or ch in "-_" for ch in self.name):
            raise ValueError(f"name must be letters, digits, '-' and '_', got {self.name!r}")
        try:
            parse_tokenizer_spec(self.tokenizer)
        except UserError as e:
            raise ValueError(f"tokenizer: {e}") from None
        if not isinstance(self.val_fraction, (int, float)) or not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction!r}")
        if not isinstance(self.min_val_docs, int) or self.min_val_docs < 1:
            raise ValueError(f"min_val_docs must be an integer >= 1, got {self.min_val_docs!r}")
        if not isinstance(self.num_workers, int) or self.num_workers < 0:
            raise ValueError(f"num_workers must be an integer >= 0 (0: all cores), got {self.num_workers!r}")


@dataclass
class StepSpec:
    name: str
    config: StepConfig


@dataclass
class DataRecipe:
    corpus: CorpusSpec
    sources: list[SourceSpec]
    steps: list[StepSpec] = field(default_factory=list)
    text: str = ""  # the TOML as written, kept in the derived corpus's manifest
    base_dir: Path = Path(".")  # where relative source paths start

    def resolved(self) -> dict:
        """Everything that decides the output, as plain data (hashed into the corpus's address)."""
        return {
            "corpus": {k: v for k, v in asdict(self.corpus).items() if k != "num_workers"},  # workers never change the output
            "sources": [asdict(s) | ({"path": str(self.base_dir / s.path)} if s.path else {}) for s in self.sources],
            "steps": [{"step": s.name, **asdict(s.config)} for s in self.steps],
        }

    def sha256(self) -> str:
        return hashlib.sha256(json.dumps(self.resolved(), sort_keys=True).encode()).hexdigest()


def _build(cls, table: dict, where: str):
    if not isinstance(table, dict):
        raise UserError(f"{where}: should be a table of fields, got {table!r:.60}")
    known = [f.name for f in fields(cls) if f.init]
    for f in fields(cls):  # a string where a flag belongs ("false" is true in Python) is an error, not a quiet True
        if f.type in ("bool", bool) and f.name in table and not isinstance(table[f.name], bool):
            raise UserError(f"{where}: {f.name} should be true or false, got {table[f.name]!r:.60}")
    for key in table:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"known fields: {', '.join(known)}"
            raise UserError(f"{where}: unknown field {key!r}: {hint}")
    try:
        return cls(**table)
    except (ValueError, TypeError) as e:
        raise UserError(f"{where}: {e}") from None


def parse_recipe(text: str, base_dir: Path = Path("."), where: str = "recipe") -> DataRecipe:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{where} is not valid TOML ({e}): fix the syntax") from None
    for key in doc:
        if key not in ("corpus", "sources", "steps"):
            raise UserError(f"{where}: unknown table {key!r}: a recipe has [corpus], [[sources]] and [[steps]]")
    corpus = _build(CorpusSpec, doc.get("corpus", {}), f"{where} [corpus]")
    raw_sources = doc.get("sources", [])
    if not isinstance(raw_sources, list) or not raw_sources:
        raise UserError(f"{where}: no [[sources]]: add one, e.g. [[sources]] builtin = true")
    sources = [_build(SourceSpec, s, f"{where} sources[{i}]") for i, s in enumerate(raw_sources)]
    steps = []
    raw_steps = doc.get("steps", [])
    if not isinstance(raw_steps, list) or not all(isinstance(r, dict) for r in raw_steps):
        raise UserError(f"{where}: steps are [[steps]] tables, each with step = NAME (docs/data.md)")
    if not all(isinstance(s, dict) for s in raw_sources):
        raise UserError(f"{where}: sources are [[sources]] tables (docs/data.md)")
    for i, raw in enumerate(raw_steps):
        raw = dict(raw)
        name = raw.pop("step", None)
        if name not in STEPS:
            close = difflib.get_close_matches(str(name), list(STEPS), n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"steps: {', '.join(sorted(STEPS))}"
            raise UserError(f"{where} steps[{i}]: unknown step {name!r}: {hint}")
        steps.append(StepSpec(name, _build(STEPS[name].config, raw, f"{where} steps[{i}] ({name})")))
    return DataRecipe(corpus, sources, steps, text, base_dir)


def load_recipe(path: str | Path) -> DataRecipe:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"data recipe not found: {path}: pass a .toml file (see docs/data.md)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"data recipe {path} is not UTF-8 text (byte {e.start}): save it as UTF-8 TOML (docs/data.md)") from None
    return parse_recipe(text, path.parent, str(path))


def step_help() -> dict[str, dict]:
    """Each step's one-line doc and parameters, for `data build --help` and docs."""
    return {name: {"doc": s.doc, "fields": config_fields(s.config)} for name, s in sorted(STEPS.items())}
