"""Data experiments: a change to the data recipe, built into a derived corpus, trained on,
and scored on the campaign's own, unchanged held-out data.

    base = base_data(campaign_base_recipe)              # the base corpus and the recipe that makes it
    recipe, built = apply_data_change(incumbent, campaign_base_recipe,
                                      steps=[{"step": "gopher_quality", "domains": ["docs"], "min_words": 80},
                                             {"step": "near_dedup", "threshold": 0.7}])
    recipe.data.corpus    # the derived corpus (content-addressed and cached by `data build`)

What a data experiment may change: the ordered [[steps]] of the data recipe (add, remove or
retune a filter; dedup on or off, or its threshold) and the mixture (data.weights). What it
may not: the base corpus's [corpus] table (split fraction, split seed, tokenizer) and its
[[sources]]. The lab writes those itself, from the base corpus's own record, so every
document keeps the split it has in the base corpus: `data build` deals the splits on the
original documents before any step runs, and steps only remove or rewrite train documents.

The lab then checks what it built instead of trusting that argument (`check_held_out`):
the derived corpus's val, monitor and test shards must be byte-identical to the base
corpus's, its tokenizer the same, every train document one of the base's train documents,
and none with the text of a held-out document. And a campaign scores every run on its base
corpus's val split whatever the run trained on (runners/job.py, `score_data`), so even a
corpus that got past these checks could not change what is scored.

Steps come from untrusted proposers (a model's tool call, a person's file): `check_steps`
bounds them (how many, parameter names, value types and sizes, MinHash permutations) before
the data recipe's own checks (data/recipe.py) see them. Every error is one line.
"""

from __future__ import annotations

import difflib
import json
import math
import random
import re
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..config import Recipe, apply_overrides
from ..errors import UserError

MAX_STEPS = 24  # a data recipe of the lab's ten step kinds, each used a few times over different domains
MAX_TEXT_CHARS = 100  # a string parameter (a normal form, a PII placeholder); a long one could blow up every document
MAX_LIST_ITEMS = 64  # a list parameter (domains)
MAX_ABS_NUMBER = 1e9  # no step threshold needs more; 1e308 is a probe, not a threshold
MAX_NUM_PERM = 1024  # near_dedup's cost (time and memory) is linear in its permutations: 8x the default
MAX_SAMPLE_DOCS = 8  # sample_documents: documents per call
MAX_SAMPLE_CHARS = 2000  # sample_documents: characters of each document shown (8 x 2000 fits one tool result)
DERIVED_NAME = "data-experiment"  # names the derived corpora's folders: derived-data-experiment-HASH
FATES = ("kept", "rewritten", "removed")  # what a strategy may look at: train documents only, never held-out ones
_PARAM = re.compile(r"^[a-z][a-z0-9_]{0,39}$")


@dataclass
class BaseData:
    """A campaign's base corpus and the data recipe that makes it."""

    corpus_dir: Path  # the corpus every run of the campaign is scored on
    header: str  # the [corpus] table and [[sources]] the lab writes into every derived recipe
    steps: list[dict]  # the base corpus's own steps as written (none for a prepared corpus)
    domains: list[str]


def base_data(base: Recipe) -> BaseData:
    """The base recipe's corpus and how it was made: a `data build` recipe (its sources must be
    absolute paths or the builtin corpus), the builtin corpus, or `data prepare --input` files."""
    from ..data import Corpus
    from ..runners.job import corpus_path

    corpus_dir = corpus_path(base)
    corpus = Corpus.open(corpus_dir, verify=False)
    where = f"the campaign's corpus {corpus_dir}"
    if corpus.tokenizer.name != "byte":
        raise UserError(f"{where} uses the {corpus.tokenizer.name} tokenizer, and a derived corpus trains its own BPE, which would "
                        "change the scored windows: run data experiments on a byte-tokenizer corpus (data.tokenizer=byte)")
    m = corpus.manifest
    source = m.get("source") or {}
    split = {"val_fraction": m["val_fraction"], "min_val_docs": m["min_val_docs"], "seed": m["seed"]}  # as the corpus was split
    steps: list[dict] = []
    if source.get("derived"):
        written = tomllib.loads(source["recipe_toml"])
        sources = written.get("sources", [])
        relative = [s["path"] for s in sources if "path" in s and not Path(s["path"]).is_absolute()]
        if relative:
            raise UserError(f"{where} was built from a recipe with relative source paths ({relative[0]}): rebuild it from a recipe "
                            "with absolute paths so the lab can build variants of it")
        steps = written.get("steps", [])
    elif source.get("builtin"):
        sources = [{"builtin": True, "max_bytes_per_domain": source["max_bytes_per_domain"]}]
    elif source.get("inputs"):
        sources = [{"path": str(Path(i["path"]).resolve()), "domain": i["domain"], "text_field": source.get("text_field", "text")}
                   for i in source["inputs"]]
    else:
        raise UserError(f"{where} does not record how it was made: build it with `pretrainlab data build RECIPE` (or `data "
                        "prepare --builtin` / `--input`) to run data experiments on it")
    header = _table("corpus", {"name": DERIVED_NAME, "tokenizer": "byte", **split})
    header += "".join(_table("sources", s, array=True) for s in sources)
    return BaseData(Path(corpus_dir), header, steps, corpus.domains)


def _toml_value(value: Any) -> str:
    # JSON spells booleans, numbers and (printable) strings the way TOML does; check_steps allows nothing else
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)


def _table(name: str, values: dict, array: bool = False) -> str:
    lines = [f"[[{name}]]" if array else f"[{name}]"]
    lines += [f"{key} = {_toml_value(v)}" for key, v in values.items() if v is not None]
    return "\n".join(lines) + "\n\n"


def _check_value(where: str, value: Any, in_list: bool = False) -> None:
    if isinstance(value, bool):
        return
    if isinstance(value, (int, float)):
        if not math.isfinite(value) or abs(value) > MAX_ABS_NUMBER:
            raise UserError(f"{where}: {value!r} is out of range: give a finite number of magnitude <= {MAX_ABS_NUMBER:g}")
        return
    if isinstance(value, str):
        if len(value) > MAX_TEXT_CHARS or not value.isprintable():
            raise UserError(f"{where}: a text value must be printable and at most {MAX_TEXT_CHARS} characters (got {len(value)})")
        return
    if isinstance(value, list) and not in_list:
        if len(value) > MAX_LIST_ITEMS:
            raise UserError(f"{where}: at most {MAX_LIST_ITEMS} items (got {len(value)})")
        for item in value:
            _check_value(where, item, in_list=True)
        return
    raise UserError(f"{where}: must be a boolean, number, text or a list of those (got {type(value).__name__})")


def check_steps(steps: Any, domains: list[str]) -> list[dict]:
    """Untrusted steps, bounded: a list of at most MAX_STEPS tables, each naming its `step`,
    with lowercase parameter names, scalar or flat-list values of bounded size, and domains
    the base corpus has. The recipe's own checks (data/recipe.py) then judge the values."""
    if not isinstance(steps, list):
        raise UserError(f"steps must be a list of step tables, e.g. [{{\"step\": \"near_dedup\", \"threshold\": 0.8}}] "
                        f"(got {type(steps).__name__})")
    if len(steps) > MAX_STEPS:
        raise UserError(f"{len(steps)} steps: a data recipe may have at most {MAX_STEPS}")
    out = []
    for i, raw in enumerate(steps):
        where = f"steps[{i}]"
        if not isinstance(raw, dict) or not isinstance(raw.get("step"), str):
            raise UserError(f"{where}: must be a table naming its step, e.g. {{\"step\": \"near_dedup\", \"threshold\": 0.8}}")
        for key, value in raw.items():
            if not isinstance(key, str) or not _PARAM.match(key):
                raise UserError(f"{where}: {str(key)[:60]!r} is not a parameter name (lowercase letters, digits and _)")
            _check_value(f"{where}.{key}", value)
        for domain in raw.get("domains") or []:
            if domain not in domains:
                close = difflib.get_close_matches(str(domain), domains, n=1)
                hint = f"did you mean {close[0]!r}?" if close else f"the corpus's domains are {', '.join(domains)}"
                raise UserError(f"{where}.domains: {str(domain)[:60]!r} is not a domain of the corpus: {hint}")
        if raw["step"] == "near_dedup" and isinstance(raw.get("num_perm"), int) and raw["num_perm"] > MAX_NUM_PERM:
            raise UserError(f"{where}.num_perm: {raw['num_perm']} permutations; the lab allows at most {MAX_NUM_PERM} "
                            "(cost is linear in them)")
        out.append(dict(raw))
    return out


def compose(base: BaseData, steps: Any):
    """The derived data recipe: the base's [corpus] and [[sources]], then `steps`. UserError
    (one line, naming the step and field) for anything the checks or the recipe refuse."""
    from ..data import parse_recipe

    steps = check_steps(steps, base.domains)
    text = base.header + "".join(_table("steps", s, array=True) for s in steps)
    recipe = parse_recipe(text, Path("/"), where="data recipe")
    fixed = parse_recipe(base.header, Path("/"), where="base data recipe").resolved()
    # what the experiment may not change, checked on the parsed result (not on how the text was written)
    if recipe.resolved()["corpus"] != fixed["corpus"] or recipe.resolved()["sources"] != fixed["sources"]:
        raise UserError("the data recipe changes the base corpus's [corpus] or [[sources]]: a data experiment changes only its steps")
    return recipe


def load_steps(path: str | Path) -> list[dict]:
    """A person's data experiment: a TOML file of [[steps]] tables (the lab keeps the base
    corpus's [corpus] and [[sources]])."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--data-recipe {path}: no such file: pass a TOML file of [[steps]] tables (see docs/data.md)")
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"--data-recipe {path} is not valid TOML ({e}): fix the syntax") from None
    other = sorted(set(doc) - {"steps"})
    if other:
        raise UserError(f"--data-recipe {path}: a data experiment changes only [[steps]]; [{other[0]}] stays the base corpus's, so "
                        f"held-out data cannot change: remove it")
    return doc.get("steps", [])


def check_held_out(base_dir: str | Path, derived_dir: str | Path) -> None:
    """UserError unless the derived corpus holds exactly the base corpus's held-out data:
    same domains and tokenizer, byte-identical val/monitor/test shards, train documents that
    are the base's train documents, none with the text of a held-out document."""
    from ..data import Corpus
    from ..data.shards import HELD_OUT

    a, b = Corpus.open(base_dir, verify=True), Corpus.open(derived_dir, verify=True)
    what = f"the derived corpus {Path(derived_dir).name}"
    if a.domains != b.domains:
        raise UserError(f"{what} has domains {', '.join(b.domains)}, the base corpus {', '.join(a.domains)}: held-out data must stay fixed")
    if a.manifest["tokenizer"] != b.manifest["tokenizer"]:
        raise UserError(f"{what} has another tokenizer than the base corpus: the scored windows must stay fixed")
    for domain in a.domains:
        for split in HELD_OUT:
            x, y = a.manifest["domains"][domain][split], b.manifest["domains"][domain][split]
            if (x["sha256"], x["num_tokens"]) != (y["sha256"], y["num_tokens"]):
                raise UserError(f"{what}: its {domain} {split} split ({y['num_docs']} documents) differs from the base corpus's "
                                f"({x['num_docs']}): held-out data must stay fixed, so it is not run")
    base_docs = {(d["domain"], d["path"]): d for d in _documents(a.path)}
    held_text = {d["sha256"] for d in base_docs.values() if d["split"] != "train"}
    for d in _documents(b.path):
        if d["split"] != "train":
            continue
        known = base_docs.get((d["domain"], d["path"]))
        if known is None or known["split"] != "train":
            raise UserError(f"{what}: train document {d['domain']}:{d['path']} is not a train document of the base corpus")
        if d["sha256"] in held_text:
            raise UserError(f"{what}: train document {d['domain']}:{d['path']} has the text of a held-out document")


def _documents(corpus_dir: Path):
    with open(corpus_dir / "documents.jsonl", encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)


def build_change(base: BaseData, steps: Any, progress: bool = False) -> tuple[Path, dict]:
    """Build (or reuse) the derived corpus of `steps`, check its held-out data; returns its
    folder and the record kept in the experiment's change."""
    from ..data import build_corpus
    from ..data.fates import build_report

    recipe = compose(base, steps)
    out, cached = build_corpus(recipe, progress=progress)
    check_held_out(base.corpus_dir, out)
    report = build_report(out) or {"steps": []}
    removed = {f"{i}:{s['step']}": s["num_docs_in"] - s["num_docs_out"] for i, s in enumerate(report["steps"])}
    return out, {"steps": list(steps), "corpus": str(out), "recipe_sha256": recipe.sha256(), "cached": cached,
                 "toml": recipe.text, "removed_docs": removed, "rewritten_docs": sum(s["num_rewritten"] for s in report["steps"])}


def apply_data_change(incumbent: Recipe, base: Recipe, steps: list[dict] | None, weights: dict[str, float] | None,
                      progress: bool = False) -> tuple[Recipe, dict | None]:
    """The incumbent with a data change: `steps` (the full ordered list; None keeps the
    incumbent's corpus) built into a derived corpus of the base's sources, and/or mixture
    `weights`. Returns (recipe, the build's record or None). UserError/ValueError otherwise."""
    from ..data import Corpus
    from ..runners.job import corpus_path

    if steps is None and weights is None:
        raise UserError("a data experiment changes the steps, the mixture, or both: give one")
    recipe, built = incumbent, None
    if steps is not None:
        out, built = build_change(base_data(base), steps, progress)
        before = Corpus.open(corpus_path(incumbent), verify=False)
        after = Corpus.open(out, verify=False)
        if all(before.manifest["domains"].get(d, {}).get("train", {}).get("sha256") == after.manifest["domains"][d]["train"]["sha256"]
               for d in after.domains):
            raise UserError("the data recipe changes nothing: its train data is the incumbent's (no document removed or rewritten "
                            "differently): change a threshold, a step or its domains")
        recipe = replace(recipe, data=replace(recipe.data, corpus=str(out)))
    if weights is not None:
        recipe = apply_overrides(recipe, [f"data.weights={json.dumps(weights)}"])
    if steps is not None:
        _check_trainable(recipe, Corpus.open(recipe.data.corpus, verify=False))
    return recipe, built


FIXED_DATA_KEYS = ("data.corpus", "data.tokenizer")  # what a config change may not set: the scored held-out data
# what else no experiment of a campaign may change, by key or prefix, and why: each would make its runs incomparable
# with the baseline's, or move what the lab measures
FIXED_KEYS = {
    "budget.": "every run of a campaign gets the same compute, the campaign's --run-budget",
    "eval.": "the lab scores every run on the same held-out windows, set by the campaign",
    "faults.": "fault injection is for testing the doctor, not a change to try",
    "seed": "the lab gives each run its seed (the paired seeds its decisions rely on)",
    "train.device": "the runner gives each slot its device",
    "train.num_threads": "the runner gives each slot its share of the CPU",
}


def check_fixed_data(keys) -> None:
    """A config change may not point a campaign at another corpus or tokenizer (every run is
    scored on the base corpus's held-out data, and the corpus changes only through a data
    experiment, whose build the lab checks), nor change what FIXED_KEYS keeps fixed."""
    keys = {k.strip() for k in keys}  # as apply_overrides reads them: " budget.tokens" sets budget.tokens
    touched = sorted(keys & set(FIXED_DATA_KEYS))
    if touched:
        raise UserError(f"{touched[0]}: a campaign keeps its corpus and tokenizer (every run is scored on the base corpus's held-out "
                        "data); change the data with a data experiment (its [[steps]]) instead")
    for key in sorted(keys):
        why = next((why for fixed, why in FIXED_KEYS.items() if key == fixed or (fixed.endswith(".") and key.startswith(fixed))), None)
        if why:
            raise UserError(f"{key}: not an experiment's to change: {why}")



def check_scored_tokens(recipe: Recipe, base: Recipe) -> None:
    """An experiment may change the context length (model.seq_len), not which held-out tokens are scored. The lab scores
    the first eval.tokens_per_domain targets of each domain in full windows of the run's seq_len: a seq_len that does not
    divide them leaves a remainder unscored, and one past half of them scores a single window of each domain."""
    if recipe.model.seq_len == base.model.seq_len:
        return
    from ..data import Corpus
    from ..runners.job import corpus_path

    corpus = Corpus.open(corpus_path(base), verify=False)
    n = base.eval.tokens_per_domain
    for split in ("val", "monitor"):
        for domain, tokens in corpus.domain_token_counts(split).items():
            targets = min(n, tokens - 1)
            new, old = targets // recipe.model.seq_len * recipe.model.seq_len, targets // base.model.seq_len * base.model.seq_len
            if new != old:
                raise UserError(f"model.seq_len={recipe.model.seq_len}: the lab would score {new} of domain {domain!r}'s {split} "
                                f"tokens where the baseline is scored on {old} (only full windows are scored): every run of a "
                                f"campaign is scored on the same tokens; use a seq_len that divides {targets}, e.g. "
                                f"{base.model.seq_len}")

def _check_trainable(recipe: Recipe, corpus) -> None:
    """The mixture names the corpus's domains, and every domain the run samples keeps enough
    train tokens for one window."""
    counts = corpus.domain_token_counts("train")
    weights = recipe.data.weights
    unknown = sorted(set(weights or {}) - set(counts))
    if unknown:
        raise UserError(f"data.weights names {', '.join(map(repr, unknown))}, not a domain of this corpus: its domains are "
                        f"{', '.join(counts)}")
    for domain, n in counts.items():
        sampled = counts[domain] > 0 if weights is None else weights.get(domain, 0) > 0
        if sampled and n < recipe.model.seq_len + 1:
            raise UserError(f"the data recipe leaves domain {domain!r} {n} train tokens, fewer than one window "
                            f"({recipe.model.seq_len + 1}): loosen its steps for {domain}, or give it weight 0")


# ---- what a strategy may see of a corpus: its train side only -------------------------------------------


def report_for_strategy(corpus_dir: str | Path) -> dict:
    """The corpus's data report without its decision and hidden splits: the data recipe's
    steps as written, per-domain train and monitor documents, tokens and bytes per token,
    and for a derived corpus each step's documents and tokens in and out, the rules that
    removed documents, score histograms and duplicate-cluster sizes."""
    from ..data import Corpus, corpus_report

    info = corpus_report(Corpus.open(corpus_dir, verify=False))
    source = Corpus.open(corpus_dir, verify=False).manifest.get("source") or {}
    steps = tomllib.loads(source["recipe_toml"]).get("steps", []) if source.get("derived") else []
    out = {"corpus": Path(info["path"]).name, "derived": bool(source.get("derived")), "steps": steps,
           "domains": {d: {s: r for s, r in splits.items() if s in ("train", "monitor")} for d, splits in info["domains"].items()}}
    build = info.get("build")
    if build:
        keep = ("step", "num_docs_in", "num_docs_out", "num_tokens_in", "num_tokens_out", "num_rewritten", "removed_by_rule",
                "score_histogram", "cluster_sizes", "num_eval_overlaps")
        out["build"] = {"num_input_docs": build["num_input_docs"], "fates": build["fates"],
                        "steps": [{k: s.get(k) for k in keep} for s in build["steps"]]}
    return out


class DocumentSampler:
    """sample_documents: train documents of a corpus by domain, fate (kept, rewritten,
    removed), the step and rule that removed or rewrote them and its score, with their
    original text (read once from the base's sources). Held-out documents are never shown."""

    def __init__(self, base: BaseData):
        self.base = base
        self._texts: dict[tuple[str, str], str] | None = None

    def text(self, domain: str, path: str) -> str:
        if self._texts is None:
            from ..data.build import read_sources

            documents, _ = read_sources(compose(self.base, []))  # (documents, inputs skipped as unreadable)
            self._texts = {(d.domain, d.path): d.text for d in documents}
        return self._texts.get((domain, path), "")

    def sample(self, corpus_dir: str | Path, *, domain: str | None = None, fate: str | None = None, step: str | None = None,
               rule: str | None = None, min_score: float | None = None, max_score: float | None = None, num_docs: int = 3,
               max_chars: int = 1500, seed: int = 0) -> dict:
        from ..data.fates import iter_fates

        corpus_dir = Path(corpus_dir)
        if domain is not None and domain not in self.base.domains:
            raise UserError(f"domain {domain!r} is not a domain of the corpus: its domains are {', '.join(self.base.domains)}")
        if (corpus_dir / "fates.jsonl").is_file():
            records = [f for f in iter_fates(corpus_dir) if f["split"] == "train"]
        else:  # a prepared corpus: every train document is kept as it is
            records = [{**d, "fate": "kept"} for d in _documents(corpus_dir) if d["split"] == "train"]
        scored = step is not None or rule is not None or min_score is not None or max_score is not None
        matched = []
        for f in records:
            assert f["split"] == "train"
            if (domain and f["domain"] != domain) or (fate and f["fate"] != fate):
                continue
            if scored:
                actions = ([f["removed_by"]] if f.get("removed_by") else []) + list(f.get("rewrites") or [])
                if not any((step is None or a["step"] == step) and (rule is None or a["rule"] == rule)
                           and (min_score is None or (a.get("score") is not None and a["score"] >= min_score))
                           and (max_score is None or (a.get("score") is not None and a["score"] <= max_score)) for a in actions):
                    continue
            matched.append(f)
        picked = sorted(random.Random(seed).sample(range(len(matched)), min(num_docs, len(matched))))
        docs = []
        for i in picked:
            f = matched[i]
            text = self.text(f["domain"], f["path"])
            doc = {"domain": f["domain"], "path": f["path"], "fate": f["fate"], "num_chars": len(text),
                   "text": text[:max_chars] + (f"\n[cut: {len(text) - max_chars:,} more characters]" if len(text) > max_chars else "")}
            if f.get("removed_by"):
                doc["removed_by"] = {k: v for k, v in f["removed_by"].items() if v is not None}
            if f.get("rewrites"):
                doc["rewrites"] = f["rewrites"]
            docs.append(doc)
        return {"matched": len(matched), "shown": len(docs), "documents": docs,
                "note": "train documents only (held-out documents are never shown); text as read from the sources, before any rewrite"}
