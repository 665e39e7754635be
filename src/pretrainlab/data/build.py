"""`pretrainlab data build RECIPE`: run a data recipe's steps into a derived corpus.

    path, cached = build_corpus(load_recipe("filtered.toml"))
    path, cached = build_corpus(recipe, executor="ray", ray_address="auto")   # per-document steps on a Ray cluster

The spine:
  1. read every source's documents; an unreadable file or record is skipped and counted
     (sources.iter_documents), a source that yields nothing is an error;
  2. decide each document's split on the ORIGINAL documents (shards.assign_splits, the
     same split `data prepare` would make), so no step can move a document between splits;
  3. address the output by sha256(recipe, input documents' hashes, BUILD_VERSION): a
     corpus already there with that address is reused at once;
  4. run the steps in order over the train documents (per-document steps on the executor,
     engine.py: local processes or Ray tasks; corpus-wide steps in this process); held-out
     documents stay as they are;
  5. tokenize the survivors with their fixed splits (shards.prepare_corpus) into a staging
     folder, add fates.jsonl and build_report.json, and move it into place in one rename.

fates.jsonl holds every input document's fate (see fates.py); build_report.json the
per-step counts, score histograms, duplicate clusters, contamination and skipped inputs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections import Counter
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UserError
from .builtin import builtin_documents, default_home, fetch_literature_sdist, sources_dir
from .engine import check_executor, open_executor
from .recipe import DataRecipe
from .shards import FORMAT_VERSION, Corpus, _publish, assign_splits, prepare_corpus, text_sha256
from .sources import Document, SkippedInput, iter_documents
from .steps import STEPS, Outcome, StepConfig, StepDoc, minhash_backend
from .tokenizers import BPETokenizer, ByteTokenizer, parse_tokenizer_spec

BUILD_VERSION = 4  # bump when a step's behaviour or the record changes, so old derived corpora are not reused
FATES_FILE = "fates.jsonl"
REPORT_FILE = "build_report.json"
RECIPE_FILE = "recipe.toml"
_HISTOGRAM_BINS = 20
MAX_SKIPPED_LISTED = 1000  # skipped inputs listed one by one in build_report.json; all are counted


@dataclass
class _Doc:
    domain: str
    source: str
    path: str
    sha256: str  # of the original text
    split: str | None  # None: dropped before splitting (empty, or an exact copy of an earlier text)
    text: str
    removed_by: dict | None = None
    rewrites: list[dict] = field(default_factory=list)
    clusters: dict[str, str] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)  # step -> its score of this document
    labels: dict[str, str] = field(default_factory=dict)  # step -> what it called a kept document (language_id: the language)

    @property
    def in_train(self) -> bool:
        return self.split == "train" and self.removed_by is None


@dataclass(frozen=True)
class Skipped:
    """An input left out of a build because it could not be read (build_report.json lists it)."""

    source: str  # the recipe's source path
    domain: str
    path: str  # the file (relative to the source), or FILE:N for one record
    reason: str
    whole_file: bool


def read_sources(recipe: DataRecipe) -> tuple[list[Document], list[Skipped]]:
    """Every source's documents, and the inputs skipped because they could not be read."""
    documents: list[Document] = []
    skipped: list[Skipped] = []
    for source in recipe.sources:
        if source.builtin:
            sdist = fetch_literature_sdist(sources_dir())
            kwargs = {} if source.max_bytes_per_domain is None else {"max_bytes_per_domain": source.max_bytes_per_domain}
            documents += builtin_documents(sdist=sdist, **kwargs)
            continue
        bad: list[SkippedInput] = []
        found = list(iter_documents(recipe.base_dir / source.path, source.domain, source.text_field, on_skip=bad.append))
        if not found:
            why = f"{len(bad)} input(s) skipped, the first {bad[0].path}: {bad[0].reason}" if bad else "it holds no documents"
            raise UserError(f"source {source.path!r} (domain {source.domain}) yields no documents ({why}): fix or replace its files")
        documents += found
        skipped += [Skipped(source.path, source.domain, b.path, b.reason, b.whole_file) for b in bad]
    return documents, skipped


def build_address(recipe: DataRecipe, documents: list[Document], skipped: list[Skipped] = ()) -> str:
    inputs = hashlib.sha256()
    for doc in documents:
        inputs.update(f"{doc.domain}\0{doc.path}\0{text_sha256(doc.text)}\n".encode())
    for s in skipped:  # so the report of what was skipped is this input's
        inputs.update(f"skipped\0{s.domain}\0{s.path}\0{s.reason}\n".encode())
    key = {"recipe": recipe.resolved(), "inputs": inputs.hexdigest(), "build_version": BUILD_VERSION, "format_version": FORMAT_VERSION}
    if any(s.name == "near_dedup" for s in recipe.steps):  # the two MinHash implementations hash differently
        key["minhash"] = minhash_backend()
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def default_out(recipe: DataRecipe, address: str) -> Path:
    return default_home() / "corpus" / f"derived-{recipe.corpus.name}-{address[:12]}"


def _cached(out: Path, address: str) -> bool:
    if not (out / "manifest.json").is_file() or not (out / FATES_FILE).is_file():
        return False
    from .fates import build_report  # fates imports this module

    try:
        if (Corpus.open(out, verify=True).manifest.get("source") or {}).get("build_sha256") != address:
            return False
        return build_report(out) is not None
    except UserError:
        return False  # damaged: rebuild


_CORPUS_FILES = frozenset({"manifest.json", "documents.jsonl", "tokenizer.json", FATES_FILE, REPORT_FILE, RECIPE_FILE})


def check_replaceable(out: Path) -> None:
    """A rebuild replaces (deletes) what is at `out`: only nothing, an empty folder, or a derived
    corpus this lab wrote, holding only the files the lab writes. Anything else is refused before
    any work is done, so nothing the lab did not write is ever deleted."""
    if not out.exists() and not out.is_symlink():
        return
    refuse = f"--out {out} {{}}: choose a new folder (a rebuild replaces only a derived corpus that `data build` wrote)"
    if out.is_symlink() or not out.is_dir():
        raise UserError(refuse.format("is a link or not a folder"))
    entries = sorted(p.name for p in out.iterdir())
    if not entries:
        return
    try:
        manifest = json.loads((out / "manifest.json").read_bytes())
        derived = isinstance(manifest, dict) and isinstance(manifest.get("format_version"), int) and \
            isinstance(manifest.get("source"), dict) and manifest["source"].get("derived") is True
        shards = {info["file"] for splits in manifest["domains"].values() for info in splits.values()} if derived else set()
    except (OSError, ValueError, RecursionError, KeyError, TypeError, AttributeError):
        derived = False
    if not derived:
        raise UserError(refuse.format("exists and is not a derived corpus (its manifest.json is not one `data build` wrote)"))
    others = [name for name in entries if name not in _CORPUS_FILES and name not in shards]
    if others:
        raise UserError(refuse.format(f"holds files the lab did not write ({', '.join(others[:3])}{', ...' if len(others) > 3 else ''}), "
                                      "which a rebuild would delete; move them out"))


def build_corpus(recipe: DataRecipe, out_dir: str | Path | None = None, progress: bool = True, executor: str = "local",
                 ray_address: str | None = None) -> tuple[Path, bool]:
    """Build (or reuse) the recipe's derived corpus; returns (its folder, whether it was cached).
    `executor` runs the per-document steps: "local" (a process pool of [corpus] num_workers,
    0: all cores) or "ray" (tasks on the Ray cluster at `ray_address`; see engine.py). Every
    executor gives the same corpus."""
    check_executor(executor, ray_address)
    # 1. Read.
    documents, skipped = read_sources(recipe)
    if not documents:
        raise UserError("the recipe's sources hold no documents: add files to them")
    seen_keys: set[tuple[str, str]] = set()
    for doc in documents:
        if (doc.domain, doc.path) in seen_keys:
            raise UserError(f"two sources give domain {doc.domain!r} the document {doc.path!r}: give them different domains")
        seen_keys.add((doc.domain, doc.path))
    check_step_domains(recipe, {doc.domain for doc in documents})
    # 2. Fix the splits on the original documents.
    c = recipe.corpus
    splits = assign_splits(documents, c.val_fraction, c.min_val_docs, c.seed)
    # 3. Address and cache.
    address = build_address(recipe, documents, skipped)
    out = Path(out_dir) if out_dir is not None else default_out(recipe, address)
    if _cached(out, address):
        return out, True
    check_replaceable(out)
    docs = [_Doc(d.domain, d.source, d.path, text_sha256(d.text), s, d.text) for d, s in zip(documents, splits)]
    del documents
    # 4. Steps.
    report = _run_steps(recipe, docs, progress, executor, ray_address)
    _drop_copies_of_held_out(docs, report)
    _drop_duplicates_made_by_rewrites(docs, report)
    report["skipped_inputs"] = _skipped_report(skipped)
    # 5. Tokenize and publish atomically.
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.build-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        survivors = [d for d in docs if d.split is not None and (d.split != "train" or d.removed_by is None)]
        spec = parse_tokenizer_spec(c.tokenizer)
        tokenizer = ByteTokenizer() if spec is None else BPETokenizer.train([d.text for d in survivors if d.split == "train"], spec)
        source = {
            "derived": True,
            "recipe_name": c.name,
            "recipe_sha256": recipe.sha256(),
            "build_sha256": address,
            "build_version": BUILD_VERSION,
            "tokenizer_spec": c.tokenizer,
            "recipe_toml": recipe.text,
        }
        prepare_corpus(
            (Document(d.domain, d.source, d.path, d.text) for d in survivors),
            tokenizer,
            staging,
            c.val_fraction,
            c.min_val_docs,
            c.seed,
            progress=progress,
            source=source,
            splits={(d.domain, d.path): d.split for d in survivors},
        )
        corpus = Corpus.open(staging, verify=False)
        _finish_report(report, docs, corpus)
        with open(staging / FATES_FILE, "w", encoding="utf-8") as f:
            for d in docs:
                f.write(json.dumps(_fate(d), ensure_ascii=False) + "\n")
        (staging / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
        (staging / RECIPE_FILE).write_text(recipe.text, encoding="utf-8")
        _publish(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out, False


def _drop_copies_of_held_out(docs: list[_Doc], report: dict) -> None:
    """A rewriting step can turn a train document into the exact text of a held-out one.
    The held-out document wins: the train copy is removed (rule `copy_of_held_out`), so
    evaluation stays what the splits fixed and nothing scored is also trained on."""
    held = {text_sha256(d.text) for d in docs if d.split is not None and d.split != "train"}
    copies = [d for d in docs if d.in_train and text_sha256(d.text) in held]
    for d in copies:
        d.removed_by = {"step": "splits", "rule": "copy_of_held_out", "score": None, "cluster": None, "kept_doc": None}
    if copies:
        report.setdefault("copies_of_held_out", len(copies))


def _drop_duplicates_made_by_rewrites(docs: list[_Doc], report: dict) -> None:
    """A rewrite can make two train documents identical (normalize strips the trailing spaces
    that told them apart). The corpus writer keeps the first of two identical texts, so the
    later one is removed here, as a duplicate of the kept one, and its fate says so: every
    document the fates put in training is in the corpus."""
    first: dict[str, _Doc] = {}
    num = 0
    for d in docs:
        if not d.in_train:
            continue
        digest = text_sha256(d.text)
        if digest not in first:
            first[digest] = d
            continue
        d.removed_by = {"step": "splits", "rule": "duplicate_after_rewrite", "score": None, "cluster": digest[:16],
                        "kept_doc": first[digest].path}
        num += 1
    if num:
        report["duplicates_after_rewrite"] = num


def _fate(d: _Doc) -> dict:
    if d.split is None:
        fate = "dropped"
    elif d.split != "train":
        fate = "held_out"
    elif d.removed_by is not None:
        fate = "removed"
    else:
        fate = "rewritten" if d.rewrites else "kept"
    line = {"domain": d.domain, "source": d.source, "path": d.path, "sha256": d.sha256, "split": d.split, "fate": fate}
    return line | {"removed_by": d.removed_by, "rewrites": d.rewrites, "clusters": d.clusters, "scores": d.scores, "labels": d.labels}


def _skipped_report(skipped: list[Skipped]) -> dict:
    return {
        "num_files": sum(s.whole_file for s in skipped),
        "num_records": sum(not s.whole_file for s in skipped),
        "items": [asdict(s) for s in skipped[:MAX_SKIPPED_LISTED]],
        "num_unlisted": max(0, len(skipped) - MAX_SKIPPED_LISTED),
    }


# --- running the steps -----------------------------------------------------------------


def check_step_domains(recipe, domains: set[str]) -> None:
    """Every domain a step names is one of the sources': `domains = ["note"]` for "notes" ran the step on nothing. (A
    step's own default, language_id's exclude_domains = ["code"], may name one the sources lack.)"""
    import dataclasses
    import difflib

    for i, step in enumerate(recipe.steps, 1):
        defaults = {f.name: f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
                    for f in dataclasses.fields(step.config)}
        for key in ("domains", "exclude_domains"):
            for name in getattr(step.config, key, None) or ():
                if name not in domains and name not in (defaults.get(key) or ()):
                    close = difflib.get_close_matches(name, sorted(domains), n=1)
                    hint = f"did you mean {close[0]!r}? " if close else ""
                    raise UserError(f"step {i} ({step.name}): {key} names {name!r}, which no source gives ({hint}the sources' "
                                    f"domains: {', '.join(sorted(domains))})")


def applies(config: StepConfig, domain: str) -> bool:
    """A step runs on its `domains` (empty: every domain) less its `exclude_domains`, where its
    config has them (language_id leaves code alone by default)."""
    return (not config.domains or domain in config.domains) and domain not in getattr(config, "exclude_domains", ())


def _apply_doc_steps(task: tuple[list[tuple[str, StepConfig]], list[tuple[str, str]]]) -> list[list[Outcome | None]]:
    """In a worker: each (domain, text) through the per-document steps in order; None where a
    step does not apply (another domain) or the document is already removed."""
    steps, items = task
    results = []
    for domain, text in items:
        outcomes: list[Outcome | None] = []
        for name, config in steps:
            if text is None or not applies(config, domain):
                outcomes.append(None)
                continue
            outcome = STEPS[name].fn(text, config) if text.strip() else Outcome.remove("empty", 0)
            outcomes.append(outcome)
            if outcome.action == "remove":
                text = None
            elif outcome.action == "rewrite":
                text = outcome.text
        results.append(outcomes)
    return results


def _stage_groups(recipe: DataRecipe) -> list[list[tuple[str, StepConfig]]]:
    """Consecutive per-document steps run together in one pass; a corpus-wide step is its own group."""
    groups: list[list[tuple[str, StepConfig]]] = []
    for s in recipe.steps:
        if STEPS[s.name].per_document and groups and STEPS[groups[-1][0][0]].per_document:
            groups[-1].append((s.name, s.config))
        else:
            groups.append([(s.name, s.config)])
    return groups


def _new_stats(name: str) -> dict:
    return {"step": name, "num_docs_in": 0, "num_docs_out": 0, "num_bytes_in": 0, "num_bytes_out": 0, "num_rewritten": 0,
            "removed_by_rule": Counter(), "scores": [], "cluster_sizes": Counter(), "num_eval_overlaps": 0,
            "bytes_in_by_domain": Counter(), "bytes_out_by_domain": Counter()}


def _record(stats: dict, name: str, d: _Doc, outcome: Outcome) -> None:
    """Apply one step's outcome to a train document and count it."""
    stats["num_docs_in"] += 1
    stats["num_bytes_in"] += (num_bytes := len(d.text.encode("utf-8")))
    stats["bytes_in_by_domain"][d.domain] += num_bytes
    if outcome.score is not None:
        stats["scores"].append(float(outcome.score))
        d.scores[name] = outcome.score
    if outcome.action == "keep" and outcome.rule is not None:
        d.labels[name] = outcome.rule
    if outcome.cluster is not None:
        d.clusters[name] = outcome.cluster
    if outcome.action == "remove":
        d.removed_by = {"step": name, "rule": outcome.rule, "score": outcome.score, "cluster": outcome.cluster,
                        "kept_doc": outcome.kept_doc}
        stats["removed_by_rule"][outcome.rule] += 1
        if name == "decontaminate":
            stats["num_eval_overlaps"] += int(outcome.score or 0)
        return
    if outcome.action == "rewrite":
        assert outcome.text is not None
        if not outcome.text.strip():  # a rewrite that leaves nothing removes the document
            d.removed_by = {"step": name, "rule": f"empty after {outcome.rule}", "score": outcome.score, "cluster": None, "kept_doc": None}
            stats["removed_by_rule"]["empty_after_rewrite"] += 1
            return
        d.text = outcome.text
        d.rewrites.append({"step": name, "rule": outcome.rule, "score": outcome.score})
        stats["num_rewritten"] += 1
    stats["num_docs_out"] += 1
    stats["num_bytes_out"] += (num_bytes := len(d.text.encode("utf-8")))
    stats["bytes_out_by_domain"][d.domain] += num_bytes


def _run_steps(recipe: DataRecipe, docs: list[_Doc], progress: bool, executor: str, ray_address: str | None) -> dict:
    stats = [_new_stats(s.name) for s in recipe.steps]
    bar = _progress(progress)
    with bar if bar is not None else nullcontext(), open_executor(executor, recipe.corpus.num_workers, ray_address) as ex:
        index = 0
        for group in _stage_groups(recipe):
            names = [name for name, _ in group]
            task = bar.add_task(", ".join(names), total=None) if bar is not None else None
            if STEPS[names[0]].per_document:
                train = [d for d in docs if d.in_train]
                items = [(d.domain, d.text) for d in train]
                chunks = [(group, items[i : i + ex.chunk_docs]) for i in range(0, len(items), ex.chunk_docs)]
                results = [r for chunk in ex.map(_apply_doc_steps, chunks, len(items)) for r in chunk]
                for d, outcomes in zip(train, results):
                    for k, outcome in enumerate(outcomes):
                        if outcome is not None:
                            _record(stats[index + k], names[k], d, outcome)
            else:
                name, config = group[0]
                train = [d for d in docs if d.in_train and applies(config, d.domain)]
                # decontamination reads val and test only: monitor is what experiments may read anyway
                held = [StepDoc(d.domain, d.path, d.text) for d in docs if d.split in ("val", "test")]
                outcomes = STEPS[name].fn([StepDoc(d.domain, d.path, d.text) for d in train], held, config)
                assert len(outcomes) == len(train), f"step {name} returned {len(outcomes)} outcomes for {len(train)} documents"
                for d, outcome in zip(train, outcomes):
                    _record(stats[index], name, d, outcome)
                clusters = Counter(o.cluster for o in outcomes if o.cluster is not None)
                stats[index]["cluster_sizes"] = Counter(clusters.values())
            if bar is not None:
                bar.update(task, completed=1, total=1)
            index += len(group)
    return {"steps": stats}


def _progress(enabled: bool):
    if not enabled:
        return None
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
    from rich.table import Column

    return Progress(SpinnerColumn(), TextColumn("{task.description}", table_column=Column(overflow="fold", ratio=1)),
                    TimeElapsedColumn())


def _histogram(scores: list[float]) -> dict | None:
    if not scores:
        return None
    counts, edges = np.histogram(np.asarray(scores), bins=_HISTOGRAM_BINS)
    return {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]}


def _finish_report(report: dict, docs: list[_Doc], corpus: Corpus) -> None:
    """Turn the raw step counters into the report's JSON: histograms, tokens (bytes at each
    domain's train bytes per token: exact for the byte tokenizer, an estimate for BPE)."""
    train_bpt = {}
    for domain in corpus.domains:
        t = corpus.manifest["domains"][domain]["train"]
        train_bpt[domain] = t["num_bytes"] / t["num_tokens"] if t["num_tokens"] else 1.0
    for s in report["steps"]:
        for way in ("in", "out"):
            by_domain = s.pop(f"bytes_{way}_by_domain")
            s[f"num_tokens_{way}"] = round(sum(n / train_bpt.get(domain, 1.0) for domain, n in by_domain.items()))
        s["removed_by_rule"] = dict(s["removed_by_rule"])
        s["score_histogram"] = _histogram(s.pop("scores"))
        s["cluster_sizes"] = {str(size): n for size, n in sorted(s["cluster_sizes"].items())}
    fates = Counter(_fate(d)["fate"] for d in docs)
    report["num_input_docs"] = len(docs)
    report["fates"] = dict(fates)
    report["tokens_are_estimates"] = corpus.tokenizer.name != "byte"
