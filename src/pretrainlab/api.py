"""The lab's operations, written once. The CLI (and later the MCP server and the web
dashboard) are thin layers over these functions.

User mistakes surface as `UserError` with a one-line message naming the field and the fix.
"""

from __future__ import annotations

import json
import secrets
from datetime import datetime
from pathlib import Path

from .config import Recipe, apply_overrides, field_docs
from .errors import UserError
from .recipes import RECIPES, estimate_params, get_recipe


def list_recipes() -> list[dict]:
    """Every named recipe with its size, shape and budget."""
    rows = []
    for name, fn in RECIPES.items():
        r = fn()
        m = r.model
        rows.append({
            "name": name,
            "params": estimate_params(r),
            "n_layer": m.n_layer, "n_embd": m.n_embd, "n_head": m.n_head, "seq_len": m.seq_len,
            "tokenizer": r.data.tokenizer,
            "batch_tokens": r.train.batch_tokens,
            "budget": {k: v for k, v in vars(r.budget).items() if v},
            "doc": (fn.__doc__ or "").strip().splitlines()[0],
        })
    return rows


def config_fields() -> list[dict]:
    """Every settable config key with type, default and doc (for `--set`)."""
    return [{"key": k, "type": t, "default": v, "doc": doc} for k, t, v, doc in field_docs()]


def resolve_recipe(name: str, overrides: list[str] | None = None) -> Recipe:
    """A named recipe, or a recipe JSON file (e.g. another run's recipe.json), with
    `key=value` overrides applied; bad input -> UserError."""
    try:
        if name.endswith(".json"):
            try:
                base = Recipe.from_dict(json.loads(Path(name).read_text()))
            except (OSError, json.JSONDecodeError) as e:
                raise UserError(f"--recipe {name}: cannot read it as a recipe JSON ({e}); pass a recipe name or a recipe.json") from None
        else:
            base = get_recipe(name)
        return apply_overrides(base, overrides or [])
    except ValueError as e:
        raise UserError(f"{name}: {e}" if name.endswith(".json") else str(e)) from None


def default_run_dir(recipe: Recipe, root: Path = Path("runs")) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return root / f"{recipe.name}-{stamp}-{secrets.token_hex(2)}"


def train_run(recipe_name: str | None = None, overrides: list[str] | None = None, out: Path | None = None,
              resume: Path | None = None, echo: bool = True) -> tuple[Path, dict]:
    """Train a recipe (or resume a run directory). Returns (run_dir, summary)."""
    from .train import train  # torch import deferred so `recipes` stays instant

    if resume is not None:
        if overrides:
            raise UserError("--set cannot be combined with --resume: a resumed run keeps its recipe.json")
        summary = train(resume_dir=Path(resume), echo=echo)
        return Path(resume), summary
    if recipe_name is None:
        raise UserError("train needs --recipe NAME (see `pretrainlab recipes`) or --resume RUN_DIR")
    recipe = resolve_recipe(recipe_name, overrides)
    run_dir = Path(out) if out else default_run_dir(recipe)
    return run_dir, train(recipe, out_dir=run_dir, echo=echo)


def prepare_data(builtin: bool = False, inputs: list[str] | None = None, tokenizer: str = "byte",
                 out: Path | None = None, text_field: str = "text", force: bool = False, progress: bool = True) -> Path:
    """Build a token corpus: the builtin one, or user files/folders given as PATH[:DOMAIN]."""
    from . import data

    if builtin == bool(inputs):
        raise UserError("data prepare needs exactly one of --builtin or --input PATH[:DOMAIN] ...")
    data.parse_tokenizer_spec(tokenizer)  # bad spec -> UserError naming the fix
    if builtin:
        return data.prepare_builtin(tokenizer=tokenizer, out_dir=out, force=force, progress=progress)
    if out is None:
        raise UserError("data prepare --input needs --out DIR for the prepared corpus")
    pairs = []
    for item in inputs:
        path, _, domain = item.rpartition(":") if ":" in item and not Path(item).exists() else (item, "", "")
        pairs.append((Path(path), domain or Path(path).name.split(".")[0]))
    return data.prepare_from_inputs(pairs, tokenizer=tokenizer, out_dir=out, text_field=text_field, force=force, progress=progress)


def corpus_info(path: str | None = None, tokenizer: str = "byte") -> dict:
    """Per-domain documents, tokens and bytes of a prepared corpus (builtin by default)."""
    from . import data

    corpus_dir = Path(path) if path else data.builtin_corpus_dir(tokenizer.replace(":", ""))
    corpus = data.Corpus.open(corpus_dir, verify=True)
    return {"path": str(corpus.path), "manifest_sha256": corpus.manifest_hash, **data.corpus_report(corpus)}
