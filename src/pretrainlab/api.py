"""The lab's operations, written once. The CLI (and later the MCP server and the web
dashboard) are thin layers over these functions.

User mistakes surface as `UserError` with a one-line message naming the field and the fix.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

from .config import field_docs
from .errors import UserError
from .recipes import RECIPES, check_fits, estimate_params, resolve_recipe  # noqa: F401 (part of the api)
from .research.config import RESUMABLE, CampaignConfig, MixtureConfig  # noqa: F401 (the faces' campaign flags are these fields)
from .rundir import is_run_dir
from .workspace import default_run_dir, workspace  # noqa: F401 (part of the api)


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


def choices() -> dict[str, tuple[str, ...]]:
    """The fixed sets of values the faces offer, as the lab's own registries list them: a campaign's strategy, runner,
    decision and goal; a run's status; the parameter count a scaling fit uses."""
    from .ledger.rundir import RUN_STATUSES
    from .research.config import COMPARE_AT, DECISIONS
    from .research.strategies import STRATEGIES
    from .runners import RUNNERS
    from .scaling.points import PARAM_COUNTS

    return {"strategy": ("auto", "claude", "openai", *STRATEGIES), "runner": tuple(RUNNERS), "decision": DECISIONS,
            "compare_at": COMPARE_AT, "goal": ("val_bpb",), "run_status": tuple(RUN_STATUSES), "params": tuple(PARAM_COUNTS)}


def config_fields() -> list[dict]:
    """Every settable config key with type, default and doc (for `--set`)."""
    return [{"key": k, "type": t, "default": v, "doc": doc} for k, t, v, doc in field_docs()]


MCP_AUTHOR_PREFIX = "mcp:"  # how the MCP server names its clients in the record (mcp_server.client_author)
# characters NFKC leaves alone that read as a colon, and Cyrillic and Greek letters that read as m, c, p:
# "mср:x" (Cyrillic с, р) or "mcp∶x" (the ratio sign) would pass for an MCP client's name in any listing
LOOK_ALIKES = str.maketrans({**dict.fromkeys("∶ː˸꞉ꓽ׃։܃܄︓﹕", ":"), "м": "m", "с": "c", "ϲ": "c", "р": "p", "ρ": "p"})


def check_person(name: str) -> str:
    """A person's name as the CLI and the dashboard record it (NFKC-normalised): never one the MCP
    server gives its clients, nor a look-alike of one (a full-width colon, a Cyrillic letter, a
    zero-width space), so the record tells a person's act from an MCP client's."""
    import unicodedata

    name = unicodedata.normalize("NFKC", name)
    visible = "".join(ch for ch in name if not ch.isspace() and unicodedata.category(ch) != "Cf")
    if visible.casefold().translate(LOOK_ALIKES).startswith(MCP_AUTHOR_PREFIX):
        raise UserError(f"author {name!r}: names starting with {MCP_AUTHOR_PREFIX!r} (or one that reads as it) are the ones the "
                        "MCP server records for its clients; give your own name")
    return name


MAX_LIMIT = 1_000_000_000  # more runs than a ledger holds; SQLite's LIMIT overflows past 2**63 - 1
MAX_BOOTSTRAP = 100_000  # resamples of a scaling fit: each is a refit (the CLI's default is 1,000); more ran for hours


def check_count(name: str, value: int, low: int = 0, high: int = MAX_LIMIT) -> int:
    """A whole-number argument within [low, high], else a UserError naming it and the range."""
    if not low <= value <= high:
        raise UserError(f"{name} {value}: give a whole number from {low:,} to {high:,}"
                        + (" (0: no limit)" if name.lstrip("-") == "limit" and low == 0 else ""))
    return value


def train_run(recipe_name: str | None = None, overrides: list[str] | None = None, out: Path | None = None,
              resume: Path | None = None, echo: bool = True, db: str | None = None, ledger: bool = True,
              log_to: str | None = None) -> tuple[Path, dict]:
    """Train a recipe (or resume a run directory). Returns (run_dir, summary).

    The run is then registered in the ledger (`db`, default: the workspace's; off with
    ledger=False or env PRETRAINLAB_NO_LEDGER=1) and, with log_to, replayed into that tracker.
    Either failing only warns: the run directory is the record and stays as it is.
    """
    main_rank = os.environ.get("RANK", "0") == "0"  # under torchrun only rank 0 writes the run dir
    use_ledger = ledger and main_rank and os.environ.get("PRETRAINLAB_NO_LEDGER", "").lower() not in ("1", "true", "yes")
    if use_ledger:
        from .ledger.db import check_driver, resolve_url

        check_driver(resolve_url(db))  # a bad --db fails now, not after hours of training
    if log_to:
        from .ledger import trackers

        trackers.require(log_to)
    if resume is not None:
        if overrides:
            raise UserError("--set cannot be combined with --resume: a resumed run keeps its recipe.json")
        run_dir, kwargs = Path(resume), {"resume_dir": Path(resume)}
    else:
        if recipe_name is None:
            raise UserError("train needs --recipe NAME (see `pretrainlab recipes`) or --resume RUN_DIR")
        recipe = resolve_recipe(recipe_name, overrides)
        check_fits(recipe)
        run_dir = Path(out) if out else default_run_dir(recipe)
        kwargs = {"recipe": recipe, "out_dir": run_dir}
    from .train import train  # torch is imported only now: a bad recipe or flag is reported in well under a second

    try:
        summary = train(echo=echo, **kwargs)
    except UserError:
        raise  # bad input: no run was made (or a resumed one was left untouched)
    except BaseException:
        _after_run(run_dir, db, use_ledger, log_to if main_rank else None)  # crashed: record it
        raise
    _after_run(run_dir, db, use_ledger, log_to if main_rank else None)
    return run_dir, summary


def _after_run(run_dir: Path, db: str | None, use_ledger: bool, log_to: str | None) -> None:
    """Register the run and push it to a tracker; a failure warns in one line and loses nothing."""
    if not is_run_dir(run_dir):
        return  # the run directory was never written
    if use_ledger:
        try:
            register_run(run_dir, db)
        except Exception as e:  # noqa: BLE001 - the run must survive any ledger problem
            print(f"warning: run {run_dir} was not registered in the ledger: {_one_line(e)}; "
                  f"register it later with `pretrainlab runs import {run_dir}`", file=sys.stderr)
    if log_to:
        try:
            push_run(str(run_dir), log_to)
        except Exception as e:  # noqa: BLE001
            print(f"warning: run {run_dir} was not logged to {log_to}: {_one_line(e)}; "
                  f"retry with `pretrainlab runs push {run_dir} --to {log_to}`", file=sys.stderr)


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if not isinstance(e, UserError) else text


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


def exit_code(summary: dict) -> int:
    """The process exit code for a run's summary: 0 ok/timeout, 3 diverged, 75 preempted, 1 crashed."""
    from .train import STATUS_EXIT

    return STATUS_EXIT.get(summary.get("status"), 1)


def serve_scoring(run_dir: Path, fds: str, code: int) -> int:
    """A trainer's last part for the lab's job process: score its own run on the job's pipes (scoring_worker.after_training)."""
    from .scoring_worker import after_training

    return after_training(run_dir, fds, code)


def corpus_info(path: str | None = None, tokenizer: str = "byte") -> dict:
    """Per-domain documents, tokens and bytes of a prepared corpus (builtin by default)."""
    from . import data
    from .data.tokenizers import tokenizer_dir_name

    # the tokenizer only names the builtin corpus's folder: 'byte' or 'bpe:VOCAB', never a path ("byte/../../x")
    corpus_dir = Path(path) if path else data.builtin_corpus_dir(tokenizer_dir_name(tokenizer))
    corpus = data.Corpus.open(corpus_dir, verify=True)
    return {"path": str(corpus.path), "manifest_sha256": corpus.manifest_hash, **data.corpus_report(corpus)}


def build_data(recipe: str | Path, out: str | Path | None = None, progress: bool = True, executor: str = "local",
               ray_address: str | None = None) -> dict:
    """Run a data recipe (TOML) into a derived corpus, content-addressed and cached; the
    per-document steps run on local processes or Ray tasks (executor "local" | "ray"), with the same result."""
    from .data.build import build_corpus
    from .data.fates import build_report
    from .data.recipe import load_recipe

    path, cached = build_corpus(load_recipe(recipe), out, progress=progress, executor=executor, ray_address=ray_address)
    manifest = json.loads((path / "manifest.json").read_text())
    report = build_report(path) or {}
    skipped = report.get("skipped_inputs") or {}
    steps = [{k: s.get(k) for k in ("step", "num_docs_in", "num_docs_out")} for s in report.get("steps") or [] if isinstance(s, dict)]
    return {"path": str(path), "cached": cached, "build_sha256": manifest["source"]["build_sha256"],
            "recipe_sha256": manifest["source"]["recipe_sha256"], "executor": executor,
            "num_skipped_files": skipped.get("num_files", 0), "num_skipped_records": skipped.get("num_records", 0),
            "steps": steps}


def data_why(corpus: str | Path, doc: str) -> dict:
    """Why a document of a derived corpus is (not) in its training set."""
    from .data.fates import why

    return why(corpus, doc)


# ---- runs: the ledger ----------------------------------------------------------------------
# `db` everywhere: a ledger URL or path; None = env PRETRAINLAB_DB, else
# $PRETRAINLAB_WORKSPACE/pretrainlab.db (see ledger/db.py).


def _ledger(db: str | None, create: bool = True):
    from .ledger import Ledger

    return Ledger(db, create=create)


def register_run(run_dir: Path | str, db: str | None = None) -> dict:
    """Add or update one run directory in the ledger (idempotent)."""
    with _ledger(db) as lg:
        return lg.register_run(Path(run_dir))


def list_runs(status: str | list[str] | None = None, recipe: list[str] | None = None, campaign: str | None = None,
              since: str | None = None, until: str | None = None, limit: int | None = None, sort: str = "created",
              db: str | None = None) -> list[dict]:
    """Runs matching every filter, newest first (sort="val_bpb": best first).

    status: ok, diverged, crashed, timeout, preempted, rejected, unscored, unknown (a list, or comma-separated);
    recipe: KEY=VALUE pairs on the resolved recipe (model.n_layer=4, name=tiny-cpu);
    campaign: id or name; since/until: a date, an ISO time, or an age such as 3d / 12h.
    """
    check_count("limit", limit or 0)  # a negative one would mean no limit in SQLite
    for flag, value in (("--status", status), ("--campaign", campaign), ("--since", since), ("--until", until)):
        if isinstance(value, str) and not value.strip():  # an empty filter is a slip, not "no filter"
            raise UserError(f"{flag} '': give a value, or leave the flag out")
    with _ledger(db, create=False) as lg:
        return lg.list_runs(**_run_filters(lg, status, recipe, campaign, since, until), limit=limit or None, sort=sort)


def show_run(run: str, db: str | None = None) -> dict:
    """Everything the ledger has on one run (RUN = id, unique id prefix or run dir), plus its
    experiment and that experiment's decisions, and whether metrics.jsonl still matches."""
    from .ledger.rundir import file_sha256

    with _ledger(db, create=False) as lg:
        row = lg.get_run(lg.resolve_run(run))
        row["experiment"] = lg.get_experiment(row["experiment_id"]) if row["experiment_id"] else None
        row["decisions"] = lg.list_decisions(experiment_id=row["experiment_id"]) if row["experiment_id"] else []
        row["campaign"] = lg.get_campaign(row["campaign_id"]) if row["campaign_id"] else None
    series = row["series"]
    if series:
        path = Path(series["metrics_path"])
        series["state"] = ("missing" if not path.is_file() else
                           "unchanged" if path.stat().st_size == series["file_size"] and file_sha256(path) == series["sha256"] else
                           "changed since registration (re-register with `pretrainlab runs import`)")
    return row


def compare_runs(runs: list[str], plot: Path | str | None = None, db: str | None = None) -> dict:
    """Recipe keys that differ and metric deltas against the first run; with plot=FILE.html
    (self-contained SVG) or FILE.png (matplotlib), curve overlays too."""
    from .ledger.compare import compare
    from .ledger.plot import write_plot

    if len(runs) < 2:
        raise UserError("runs compare needs at least two runs: pretrainlab runs compare RUN RUN [RUN ...]")
    if plot is not None and Path(plot).suffix.lower() not in (".html", ".htm", ".png"):
        raise UserError(f"--plot {plot}: the file must end in .html (self-contained SVG) or .png (needs matplotlib)")
    with _ledger(db, create=False) as lg:
        rows = [lg.get_run(lg.resolve_run(r)) for r in runs]
    result = compare(rows)
    if plot is not None:
        result["plot"] = write_plot(Path(plot), result, rows)
    return result


def import_runs(paths: list[Path | str], db: str | None = None) -> dict:
    """Register run directories, or every run directory under the given folders.

    Runs without a run_id get a stable one from their absolute path. A run whose files
    cannot be read is reported under "skipped" and does not stop the others."""
    if not paths:
        raise UserError("runs import needs a run directory or a folder of them")
    found: list[Path] = []
    for p in map(Path, paths):
        if not p.is_dir():
            raise UserError(f"runs import {p}: no such directory")
        if is_run_dir(p):
            found.append(p)
            continue
        before = len(found)
        for root, dirs, _ in os.walk(p):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))  # the lab's .scoring/ and .compile-cache/ are not runs
            if is_run_dir(Path(root)):
                found.append(Path(root))
                dirs[:] = []  # ckpt/ and the like are not runs
        if len(found) == before:
            raise UserError(f"runs import {p}: no run directory (one with recipe.json) in it")
    done, skipped = [], []
    with _ledger(db) as lg:
        for run_dir in found:
            try:
                done.append(lg.register_run(run_dir))
            except UserError as e:
                skipped.append({"run_dir": str(run_dir.absolute()), "error": str(e)})
    return {"ledger": str(lg.target), "runs": done, "skipped": skipped}


def export_runs(fmt: str, out: Path | str, status: str | list[str] | None = None, recipe: list[str] | None = None,
                campaign: str | None = None, since: str | None = None, until: str | None = None, limit: int | None = None,
                sort: str = "created", db: str | None = None) -> dict:
    """Write the matching runs to a JSON, CSV or Parquet file (same filters as list_runs)."""
    from .ledger.export import FORMATS, write_export
    from .ledger.store import LIST_COLUMNS

    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r}: use one of {', '.join(FORMATS)}")
    check_count("limit", limit or 0)
    with _ledger(db, create=False) as lg:
        rows = lg.list_runs(**_run_filters(lg, status, recipe, campaign, since, until), limit=limit or None, sort=sort,
                            columns=(*LIST_COLUMNS, "recipe", "summary"))
    return write_export(rows, fmt, Path(out))


def note_run(run: str, text: str, author: str | None = None, db: str | None = None) -> dict:
    """Attach a note to a run; author defaults to env PRETRAINLAB_AUTHOR, else the login name."""
    import getpass

    author = author or os.environ.get("PRETRAINLAB_AUTHOR") or getpass.getuser()
    with _ledger(db, create=False) as lg:
        run_id = lg.resolve_run(run)
        note_id = lg.add_note(text, author=author, run_id=run_id)
        return next(n for n in lg.list_notes(run_id=run_id) if n["id"] == note_id)


def push_run(run: str, to: str, dest: str | None = None, db: str | None = None) -> dict:
    """Replay a run (every metrics row, the recipe, the summary) into tensorboard, mlflow or wandb."""
    from .ledger import trackers

    trackers.require(to)
    path = Path(run)
    if path.is_dir() and is_run_dir(path):
        run_dir = path
    else:
        with _ledger(db, create=False) as lg:
            run_dir = Path(lg.get_run(lg.resolve_run(run))["run_dir"])
    return trackers.push(run_dir, to, dest)


def _run_filters(lg, status, recipe, campaign, since, until) -> dict:
    """Command-line filter values -> Ledger.list_runs keyword arguments (bad ones -> UserError)."""
    import difflib

    if isinstance(status, str):
        status = [s.strip() for s in status.split(",") if s.strip()]
    pairs = []
    known = {key for key, *_ in field_docs()}
    for item in recipe or []:
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise UserError(f"--recipe {item!r}: expected KEY=VALUE, e.g. --recipe model.n_layer=4 or --recipe name=tiny-cpu")
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            raise UserError(f"--recipe {key!r} is not a recipe key{f' (did you mean {close[0]!r}?)' if close else ''}; "
                            "see `pretrainlab recipes --fields`")
        pairs.append((key, _as_set_reads_it(key, value)))
    return {"status": status, "recipe": pairs, "campaign": _campaign_filter(lg, campaign), "since": _when(since, "--since"),
            "until": _when(until, "--until", end=True)}


def _campaign_filter(lg, ref: str | None) -> str | None:
    """A campaign filter as the ledger matches it (an id, or a name: every campaign of that name)
    from an id, a name or a unique id prefix, as research_status takes them: an unknown or
    ambiguous one is an error, not an empty list."""
    if not ref:
        return None
    campaigns = lg.list_campaigns()
    if any(ref in (c["id"], c["name"]) for c in campaigns):
        return ref
    matches = [c["id"] for c in campaigns if c["id"].startswith(ref)]
    if len(matches) > 1:
        raise UserError(f"campaign {ref!r} is the start of {len(matches)} campaign ids ({', '.join(matches[:5])}): give more of the id")
    if not matches:
        raise UserError(f"no campaign {ref!r} in the ledger: give a campaign id, a unique id prefix or a name "
                        "(`pretrainlab research status` lists them)")
    return matches[0]


def _as_set_reads_it(key: str, value: str) -> str:
    """A filter's text value as `--set KEY=VALUE` would read it, where that gives text (train.compile=true is
    `on`, as stored recipes now read); anything else, or a value --set refuses here, as typed."""
    from .config import Recipe, apply_overrides

    try:
        parsed = apply_overrides(Recipe(), [f"{key}={value}"]).to_dict()
        for part in key.split("."):
            parsed = parsed[part]
    except (ValueError, KeyError, TypeError) as e:
        if " expects " in str(e):  # the wrong type for the field (model.n_layer=abc) matches no run: say so
            raise UserError(f"--recipe {key}={value}: {e}") from None
        return value  # a value --set refuses now (a range an older recipe may have had): as typed
    return parsed if isinstance(parsed, str) else value


def _when(text: str | None, flag: str, end: bool = False) -> str | None:
    """A date (2026-11-21; --until includes that whole day), an ISO time (local unless it
    has an offset) or an age (30m, 12h, 3d, 2w) -> the ledger's UTC timestamp format."""
    import re
    from datetime import timedelta

    if not text:
        return None
    text = text.strip()
    age = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([mhdw])", text)
    if age:
        unit = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}[age.group(2)]
        try:
            dt = datetime.now(UTC) - timedelta(**{unit: float(age.group(1))})
        except OverflowError:  # 99999999d: before any date there is
            raise UserError(f"{flag} {text!r}: an age reaches back before year 1; give a smaller one") from None
    else:
        try:
            dt = datetime.fromisoformat(text)
        except ValueError:
            raise UserError(f"{flag} {text!r}: use a date (2026-11-21), a time (2026-11-21T14:30) or an age (30m, 12h, 3d)") from None
        if end and re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            dt += timedelta(days=1)  # --until DAY includes that day
        if dt.tzinfo is None:
            dt = dt.astimezone()  # local time
    return dt.astimezone(UTC).isoformat(timespec="microseconds")


# ---- research campaigns ------------------------------------------------------------------------
# The loop lives in research/; these are its operations as the CLI, MCP and web call them.


def research_start(recipe: str = "tiny-cpu", overrides: list[str] | None = None, *, name: str | None = None,
                   db: str | None = None, echo: bool = True, author: str | None = None, **options) -> str:
    """Start a campaign (foreground) and return its id; `author`, who started it, is recorded.
    `options` are CampaignConfig fields: goal, budget_runs, budget_hours, run_budget, strategy,
    parallel, seeds, alpha, ..."""
    try:
        cfg = CampaignConfig(recipe=recipe, overrides=list(overrides or []), **options)
    except TypeError as e:
        raise UserError(f"research start: {e}") from None
    from .research import manage  # after the settings are checked: a bad flag is reported before the loop loads

    return manage.start(cfg, name=name, db=db, echo=echo, author=author)


def research_mixture(recipe: str = "tiny-cpu", overrides: list[str] | None = None, *, name: str | None = None,
                     db: str | None = None, echo: bool = True, **options) -> str:
    """Run a mixture campaign (foreground; research/mixture_campaign.py) and return its id.
    `options` are MixtureConfig fields: proxies, run_budget, confirm_seeds, target, transfer,
    parallel, gpus, alpha, design_seed, ... Its record reads back through research_status
    (under "mixture") and write_report."""
    try:
        cfg = MixtureConfig(recipe=recipe, overrides=list(overrides or []), **options)
    except TypeError as e:
        raise UserError(f"research mixture: {e}") from None
    from .research import mixture_campaign

    return mixture_campaign.start(cfg, name=name, db=db, echo=echo)


def research_resume(campaign: str, db: str | None = None, echo: bool = True, **changes) -> str:
    """Continue a campaign; budget_runs / budget_hours / parallel / gpus / runner / ray_address / slurm_* extend or reshape it."""
    from .research import manage

    return manage.resume(campaign, db=db, echo=echo, **changes)


def research_status(campaign: str | None = None, db: str | None = None, record: dict | None = None) -> dict | list[dict]:
    """One campaign's leaderboard, or (no id) every campaign in the ledger. `record`: the
    campaign's campaign_record, if already read (nothing is then read twice)."""
    from .research import manage

    if campaign is None:
        with _ledger(db, create=False) as lg:
            return [{**{k: c[k] for k in ("id", "name", "status", "goal", "created_at")},
                     "kind": (c["config"] or {}).get("kind") or "research"} for c in lg.list_campaigns()]
    return manage.status(campaign, db=db, record=record)


def strict_json(obj):
    """obj with every NaN or infinite float as None: what the faces print as JSON (strict parsers reject NaN tokens)."""
    from .ledger.export import strict_json as strict

    return strict(obj)


def campaign_id(campaign: str, db: str | None = None) -> str:
    """A campaign's full id from its id, a unique prefix of it, or its name."""
    from .research import manage

    with _ledger(db, create=False) as lg:
        return manage.find_campaign(lg, campaign)["id"]


def research_stop(campaign: str, db: str | None = None, author: str | None = None) -> str:
    """Ask a running campaign to finish; with `author`, who asked is noted on its record. Returns its status after
    ("stopping"; "stopped" when its loop was gone; an ended campaign's own, unchanged)."""
    from .research import manage

    return manage.stop(campaign, db=db, author=author)


def research_suggest(campaign: str, hypothesis: str, overrides: list[str], author: str, db: str | None = None,
                     data_recipe: str | None = None) -> str:
    """Queue a person's experiment: --set overrides and/or a data recipe's [[steps]] (TOML)."""
    from .research import manage

    return manage.suggest(campaign, hypothesis, overrides, author, db=db, data_recipe=data_recipe)


def research_review(experiment: str, approve: bool, author: str, reason: str | None = None, db: str | None = None) -> dict:
    """A person's approve or reject, recorded as their decision; reject withdraws a queued
    experiment. Overturning the statistics (approve of a discard, reject of a keep) needs a
    reason and returns a warning saying what it adopts. Returns what was done."""
    from .research import manage

    return manage.review(experiment, approve, author, reason, db=db)


def research_log(campaign: str, db: str | None = None, as_record: bool = False) -> str | dict:
    """The campaign's research log as Markdown; with as_record, the record it is written from
    (campaign_record) plus the Markdown, as data."""
    from .research import report

    record = campaign_record(campaign, db=db)
    text = report.research_log(record)
    return {**record, "markdown": text} if as_record else text


def campaign_record(campaign: str, db: str | None = None) -> dict:
    """The campaign (id or unique prefix) as data: the campaign row, its experiments with their
    runs and decisions, and its notes: what the log, the report and the dashboard show. A live
    page asks for this every few seconds: experiments read before keep their parsed JSON (it never
    changes once recorded; only their status does), so a 1,000-experiment campaign is not parsed
    again each time."""
    from .research import manage, report

    with _ledger(db, create=False) as lg:
        cid = manage.find_campaign(lg, campaign)["id"]
        record = report.campaign_record(lg, cid, reuse=_PARSED_EXPERIMENTS.get((str(lg.target), cid)))
        _PARSED_EXPERIMENTS.put((str(lg.target), cid), {e["id"]: e for e in record["experiments"]})
    return record


class _Recent:
    """A small, thread-safe store of the most recently used values by key."""

    def __init__(self, size: int):
        import threading
        from collections import OrderedDict

        self.size, self.items, self.lock = size, OrderedDict(), threading.Lock()

    def get(self, key):
        with self.lock:
            if key in self.items:
                self.items.move_to_end(key)
            return self.items.get(key)

    def put(self, key, value) -> None:
        with self.lock:
            self.items[key] = value
            self.items.move_to_end(key)
            while len(self.items) > self.size:
                self.items.popitem(last=False)


_PARSED_EXPERIMENTS = _Recent(16)  # (ledger, campaign id) -> {experiment id: row}: campaign_record's parsed experiments


def write_report(campaign: str, out: Path, db: str | None = None) -> Path:
    from .research import manage, report

    with _ledger(db, create=False) as lg:
        row = manage.find_campaign(lg, campaign)
        manage.refuse_ladder(row)  # a ladder's runs are fitted, not ranked: `scaling fit --ladder ID`
        return report.write_report(lg, row["id"], Path(out))


# ---- the run doctor ----------------------------------------------------------------------------


def _run_dir(ref: str, db: str | None) -> Path:
    """A run directory given as a path, or a run id / unique id prefix looked up in the ledger."""
    if not str(ref).strip():
        raise UserError("an empty run: give a run directory or a run id (see `pretrainlab runs list`)")
    path = Path(ref)
    try:
        if path.is_dir():
            return path
        if path.exists():
            raise UserError(f"{ref} is a file, not a run directory: give the folder a run wrote (its metrics.jsonl and "
                            "summary.json), or a run id")
    except OSError:  # a name too long to be a path: an id, or nothing
        pass
    with _ledger(db, create=False) as lg:
        return Path(lg.get_run(lg.resolve_run(ref))["run_dir"])


def write_corpus_report_html(info: dict, out: Path | str) -> Path:
    """A corpus report (corpus_info's dict) as one HTML page with its plots."""
    from .data.fates import report_html

    Path(out).write_text(report_html(info), encoding="utf-8")
    return Path(out)


def format_cell(metric: dict, i: int) -> str:
    """One cell of `runs compare`: a metric value, with its delta against the first run."""
    from .ledger.plot import format_cell as fmt

    return fmt(metric, i)


def render_diagnosis(report, color: bool = False) -> str:
    """The doctor's report as text (findings first, then the checks that ran)."""
    from .doctor import render_text

    return render_text(report, color=color)


def diagnose_run(run: str, baseline: str | None = None, db: str | None = None):
    """The doctor's Report for a run (dir or id), optionally against a baseline run."""
    from .doctor import diagnose

    return diagnose(_run_dir(run, db), baseline_dir=_run_dir(baseline, db) if baseline else None)


# ---- for the MCP server (mcp_server.py): campaigns started in the background, corpora by name ----


def research_launch(recipe: str = "tiny-cpu", overrides: list[str] | None = None, *, author: str, name: str | None = None,
                    db: str | None = None, **options) -> dict:
    """Start a campaign in a background process and return at once with its id to poll
    (research_status): {campaign, name, status, started_by, pid, log}. The settings are
    CampaignConfig's, checked before anything starts; `author` is recorded as who started it."""
    try:
        cfg = CampaignConfig(recipe=recipe, overrides=list(overrides or []), **options)
    except TypeError as e:
        raise UserError(f"research start: {e}") from None
    from .research import manage

    return manage.launch(cfg, author=author, name=name, db=db)


def corpus_home() -> Path:
    """The lab's corpus home: $PRETRAINLAB_HOME/corpus, where prepared and derived corpora live."""
    from . import data

    return data.default_home() / "corpus"


def registered_run_dir(ref: str, db: str | None = None) -> str:
    """The directory of a run in the ledger (RUN = id or unique id prefix)."""
    with _ledger(db, create=False) as lg:
        return lg.get_run(lg.resolve_run(ref))["run_dir"]


def corpus_path(name: str) -> Path:
    """A prepared corpus by name: a folder of the lab's corpus home ($PRETRAINLAB_HOME/corpus:
    builtin-*, derived-*, ...), or "builtin" / "builtin-TOKENIZER" (builtin-bpe8192) for the
    builtin corpus."""
    from . import data

    home = data.default_home() / "corpus"
    if not name or Path(name).name != name or name in (".", ".."):
        raise UserError(f"corpus {name!r}: give the name of a folder in {home} (or 'builtin'), not a path")
    if (home / name).is_dir():
        return home / name
    if name == "builtin" or name.startswith("builtin-"):
        return data.builtin_corpus_dir(name.removeprefix("builtin").removeprefix("-") or "byte")
    known = sorted(p.name for p in home.iterdir() if p.is_dir()) if home.is_dir() else []
    raise UserError(f"no corpus {name!r} in {home}: " + (f"one of {', '.join(known)}" if known else
                    "prepare one with `pretrainlab data prepare --builtin` or `pretrainlab data build RECIPE.toml`"))


# ---- the web dashboard's reads (pretrainlab ui) ------------------------------------------------
# What `pretrainlab ui` shows beyond the operations above: one experiment with everything around
# it, the decisions log, a run's curves at full resolution, a live campaign's runs still being
# written, notes on experiments, and the prepared corpora. Read-only except note_experiment.



def show_experiment(experiment: str, db: str | None = None) -> dict:
    """One experiment with its campaign, runs (by seed), decisions (oldest first) and notes."""
    with _ledger(db, create=False) as lg:
        exp = lg.get_experiment(experiment.strip())
        if exp is None:
            raise UserError(f"no experiment {experiment!r} in the ledger {lg.target}: see `pretrainlab research status CAMPAIGN` for ids")
        campaign = lg.get_campaign(exp["campaign_id"]) if exp["campaign_id"] else None
        exp["campaign"] = {k: campaign[k] for k in ("id", "name", "status")} if campaign else None
        exp["runs"] = sorted(lg.list_runs(experiment=exp["id"]), key=lambda r: (r["seed"] is None, r["seed"] or 0))
        exp["decisions"] = lg.list_decisions(experiment_id=exp["id"])
        exp["notes"] = lg.list_notes(experiment_id=exp["id"])
    return exp


def list_experiments(campaign: str | None = None, status: str | None = None, db: str | None = None, brief: bool = False) -> list[dict]:
    """Experiments (of one campaign, id or unique prefix), oldest first, optionally in one status
    (proposed, queued, awaiting-approval, running, decided, measured, failed, rejected); brief:
    without the rationale and the recipes (the columns of ledger.store.EXPERIMENT_BRIEF)."""
    from .ledger.store import EXPERIMENT_BRIEF
    from .research import manage

    with _ledger(db, create=False) as lg:
        campaign_id = manage.find_campaign(lg, campaign)["id"] if campaign else None
        return lg.list_experiments(campaign_id, status=status, columns=EXPERIMENT_BRIEF if brief else None)


def note_experiment(experiment: str, text: str, author: str | None = None, db: str | None = None) -> dict:
    """Attach a note to an experiment; author defaults to env PRETRAINLAB_AUTHOR, else the login name."""
    import getpass

    author = author or os.environ.get("PRETRAINLAB_AUTHOR") or getpass.getuser()
    with _ledger(db, create=False) as lg:
        note_id = lg.add_note(text, author=author, experiment_id=experiment)
        return next(n for n in lg.list_notes(experiment_id=experiment) if n["id"] == note_id)


def list_decisions(decided_by: str | None = None, verdict: str | None = None, campaign: str | None = None,
                   db: str | None = None) -> list[dict]:
    """Every decision, newest first, with its experiment's hypothesis, kind, proposer and status
    under "experiment". decided_by matches the decider's name or model id; verdict is keep,
    discard or inconclusive; campaign is an id (or unique prefix)."""
    from .ledger.store import EXPERIMENT_BRIEF
    from .research import manage

    with _ledger(db, create=False) as lg:
        campaign_id = manage.find_campaign(lg, campaign)["id"] if campaign else None
        decisions = lg.list_decisions(campaign_id=campaign_id)
        experiments = {e["id"]: e for e in lg.list_experiments(campaign_id, columns=EXPERIMENT_BRIEF)}
        names = {c["id"]: c["name"] for c in lg.list_campaigns()}
    out = []
    for d in reversed(decisions):
        if verdict and d["verdict"] != verdict:
            continue
        if decided_by and decided_by not in (d["decided_by"], d["model_id"]):
            continue
        e = experiments.get(d["experiment_id"])
        d["experiment"] = {k: e[k] for k in ("id", "hypothesis", "kind", "proposer", "proposer_type", "model_id", "status")} if e else None
        d["campaign_name"] = names.get(d["campaign_id"])
        out.append(d)
    return out


def run_metrics(run: str, after_step: int | None = None, db: str | None = None, after_eval: int | None = None) -> dict:
    """A run's metrics.jsonl at full resolution (RUN = id, unique prefix or run dir), as columns:
    "train": {"step": [...], "loss": [...], ... curves.TRAIN_CURVES, "domain_loss": {domain: [...]}} with
    None where a row lacks a value or it is not finite; "eval": the eval rows; "finished": whether
    summary.json exists. A run still being written, or a missing file, is read as far as it goes;
    after_step keeps only the train rows after that step, and after_eval the eval rows after that
    one (default: after_step), which is what a page polling a live run lacks. The two are apart
    because the trainer logs step N's train row before it evaluates at step N: a page that drew
    train row N between the two would otherwise never get the eval of step N."""
    from .curves import CURVES

    return CURVES.read(_run_dir(run, db), after_step, after_eval)  # parsed once per run, then only what was appended


def run_metrics_json(run: str, after_step: int | None = None, db: str | None = None, after_eval: int | None = None) -> str:
    """run_metrics as compact JSON text (what the dashboard sends); a whole run's is written once
    per state of its metrics file."""
    from .curves import CURVES

    return CURVES.read_json(_run_dir(run, db), after_step, after_eval)


def live_runs(campaign: str, finished: bool = False, db: str | None = None, key: str | None = None) -> list[dict]:
    """A campaign's runs still being written: directories of its loop's workdir
    ($PRETRAINLAB_WORKSPACE/runs/campaigns/ID/EXPERIMENT-sSEED) with no summary.json yet, with
    their last logged step; with finished=True the ones that have ended too ("finished": True);
    `key` (a directory's name) looks at that one alone. Empty when the loop runs in another
    workspace or on another machine. A live page polls this: it stats each directory and reads
    only the end of each live run's log."""
    from .research import manage
    from .rundir import SUMMARY, last_row

    with _ledger(db, create=False) as lg:
        campaign_id = manage.find_campaign(lg, campaign)["id"]
    workdir = workspace() / "runs" / "campaigns" / campaign_id
    if key is not None:
        found = [workdir / key] if Path(key).name == key and key not in (".", "..") and (workdir / key).is_dir() else []
    else:
        found = sorted(workdir.glob("*-s*")) if workdir.is_dir() else []
    out = []
    for run_dir in found:
        done = (run_dir / SUMMARY).is_file()
        if (done and not finished) or not is_run_dir(run_dir):
            continue
        experiment_id, _, seed = run_dir.name.rpartition("-s")
        last = (None if done else last_row(run_dir, only="train")) or {}  # from the file's end: a long log is not parsed
        started = (run_dir / "recipe.json").stat().st_mtime
        out.append({"key": run_dir.name, "experiment_id": experiment_id, "seed": int(seed) if seed.isdigit() else None,
                    "run_dir": str(run_dir.absolute()), "started_at": datetime.fromtimestamp(started, UTC).isoformat(),
                    "finished": done, "step": last.get("step"), "tokens": last.get("tokens"), "loss": last.get("loss")})
    return out


def list_corpora() -> list[dict]:
    """The prepared corpora under $PRETRAINLAB_HOME/corpus (default ~/.cache/pretrainlab/corpus):
    name, path, tokenizer, domains and when each was built; read corpus_info for the full report."""
    from .data import default_home
    from .rundir import read_json

    root = default_home() / "corpus"
    out = []
    for path in sorted(root.iterdir()) if root.is_dir() else []:
        manifest = read_json(path / "manifest.json")
        if manifest is None:
            continue
        tokenizer = manifest.get("tokenizer")
        source = manifest.get("source") if isinstance(manifest.get("source"), dict) else {}
        out.append({"name": path.name, "path": str(path.absolute()), "created": manifest.get("created"),
                    "tokenizer": tokenizer.get("name") if isinstance(tokenizer, dict) else tokenizer,
                    "domains": sorted(manifest["domains"]) if isinstance(manifest.get("domains"), dict) else [],
                    "derived": bool(source.get("derived")), "recipe_name": source.get("recipe_name")})
    return out


# ---- scaling laws ------------------------------------------------------------------------------
# L(N, D) = E + A/N^alpha + B/D^beta fitted as Hoffmann et al. (2022) do (scaling/), on a file of
# points or on the ledger's runs, and ladders of real runs to fit it on (research/ladder.py).
# docs/scaling.md has the method and its validation on Besiroglu et al.'s (2024) Chinchilla data.

from .research.config import LadderConfig  # noqa: E402 (the faces' `scaling ladder` flags are its fields)


def scaling_fit(points: str | Path | None = None, *, ladder: str | None = None, campaign: str | None = None,
                status: str | list[str] | None = None, recipe: list[str] | None = None, since: str | None = None,
                until: str | None = None, flops: list[str | float] | None = None, params: str = "total", drop_highest: int = 0,
                num_bootstrap: int = 1000, level: float = 0.95, num_starts: int | None = 128, optimizer: str = "bfgs", seed: int = 0,
                plot: Path | str | None = None, db: str | None = None) -> dict:
    """Fit the law to (N, D, loss) points: a CSV/JSON file, a ladder's runs, a campaign's runs,
    or the runs matching ledger filters (status/recipe/since/until, as `runs list`). Returns the
    analysis (scaling.analyse) with the plot's path under "plot" when one was asked for."""
    from .scaling import analyse, load_points, points_from_runs
    from .scaling.plot import check_plot_path, write_plot

    if points is not None and (ladder or campaign or status or recipe or since or until):
        raise UserError("scaling fit: give a points file or ledger runs (--ladder, --campaign, --status, --recipe, --since), not both")
    if points is not None and params != "total":
        raise UserError(f"--params {params} applies to the ledger's runs: a file's N is used as given; count it as you mean it there")
    if ladder and campaign:
        raise UserError("scaling fit: --ladder and --campaign both given: a ladder is a campaign of its own; pass one of them")
    check_count("--bootstrap", num_bootstrap, 0, MAX_BOOTSTRAP)
    if plot is not None:
        check_plot_path(plot)  # a bad --plot fails before the fit, not after it
    if points is not None:
        data = load_points(points, drop_highest)
    elif ladder or campaign or recipe or since or until:
        from .research.ladder import find_ladder, ladder_points
        from .scaling.points import drop_highest_losses

        with _ledger(db, create=False) as lg:
            if ladder:
                data = ladder_points(lg, find_ladder(lg, ladder), params)
            else:
                filters = _run_filters(lg, status, recipe, campaign, since, until)  # runs that did not finish are listed as left out
                rows = lg.list_runs(**filters, columns=("run_id", "status", "params", "tokens", "val_bpb", "recipe"))
                what = [f"campaign {campaign}"] if campaign else []
                what += [f"{k}={v}" for k, v in filters["recipe"]] + [f"since {since}"] * bool(since) + [f"until {until}"] * bool(until)
                data = points_from_runs(rows, "runs: " + ", ".join(what), params)
        data = drop_highest_losses(data, drop_highest)
    else:
        raise UserError("scaling fit needs points: a CSV/JSON file of (N, D, loss), --ladder ID, --campaign ID, or run filters "
                        "such as --recipe name=tiny-cpu")
    result = analyse(data, flops=flops, num_bootstrap=num_bootstrap, level=level, num_starts=num_starts, optimizer=optimizer, seed=seed)
    if plot is not None:
        result["plot"] = write_plot(plot, result)
    return result


def scaling_ladder(recipe: str | None = None, overrides: list[str] | None = None, *, name: str | None = None, resume: str | None = None,
                   db: str | None = None, echo: bool = True, budgets: list[str | float] | None = None, num_bootstrap: int = 1000,
                   plot: Path | str | None = None, **options) -> dict:
    """Train a ladder of model sizes x token (or compute) budgets as real runs, registered in the
    ledger under the ladder's id, then fit them. `options` are LadderConfig fields: sizes, tokens,
    flops, seeds, parallel, gpus, params (None or empty: the field's default). With resume=ID, an
    interrupted ladder continues as planned (its registered runs kept; only parallel and gpus may
    change). budgets: the compute budgets to give the optimal allocation for. Returns {"ladder", "fit"}."""
    from .research import ladder as runs

    given = {k: v for k, v in {"recipe": recipe, "overrides": overrides, **options}.items() if v not in (None, [])}
    check_count("--bootstrap", num_bootstrap, 0, MAX_BOOTSTRAP)
    if plot is not None:
        from .scaling.plot import check_plot_path

        check_plot_path(plot)
    fit_options = {"flops": budgets, "num_bootstrap": num_bootstrap}
    if resume:  # a flag left at its default (e.g. --run-memory's "auto", which the CLI passes as given) changes nothing
        import dataclasses

        defaults = {f.name: f.default for f in dataclasses.fields(LadderConfig) if f.default is not dataclasses.MISSING}
        ignored = sorted(k for k in set(given) - {"parallel", "gpus"} if not (k in defaults and given[k] == defaults[k]))
        if ignored:
            flags = ", ".join("--set" if k == "overrides" else "--" + k.replace("_", "-") for k in ignored)
            raise UserError(f"--resume {resume} continues the ladder as it was planned: {flags} {'does' if len(ignored) == 1 else 'do'} "
                            "not apply (only --parallel and --gpus do)")
        lid, result = runs.resume(resume, db=db, echo=echo, parallel=given.get("parallel"), gpus=given.get("gpus"), fit_options=fit_options)
    else:
        try:
            cfg = LadderConfig(**given)
        except TypeError as e:
            raise UserError(f"scaling ladder: {e}") from None
        lid, result = runs.start(cfg, name=name, db=db, echo=echo, fit_options=fit_options)
    if result is not None and plot is not None:
        from .scaling.plot import write_plot

        result["plot"] = write_plot(plot, result)
    return {"ladder": lid, "fit": result}


def render_scaling_fit(result: dict) -> str:
    """A scaling analysis as text (parameters with intervals, the allocation, IsoFLOP, warnings)."""
    from .scaling import render_text

    return render_text(result)


# ---- the doctor's cluster findings over a campaign ---------------------------------------------


def diagnose_campaign(campaign: str, db: str | None = None):
    """The doctor's cluster-level findings over a campaign (id or unique prefix): queue wait,
    allocated GPUs left idle, straggling ranks, restarts; from its runs' attempts in the
    ledger (run_attempts) and their run directories. Returns a doctor.cluster.CampaignReport."""
    from .doctor.cluster import Attempt, CampaignRun
    from .doctor.cluster import diagnose_campaign as diagnose
    from .research import manage

    with _ledger(db, create=False) as lg:
        cid = manage.find_campaign(lg, campaign)["id"]
        attempts = lg.list_attempts(cid)
        registered = lg.list_runs(campaign=cid, limit=0, columns=("run_id", "run_dir"))
    runs: dict[str, CampaignRun] = {}
    for a in attempts:
        run = runs.setdefault(a["run_key"], CampaignRun(a["run_key"], Path(a["run_dir"])))
        run.attempts.append(Attempt(a["attempt"], a["node"], a["queue_s"], a["place_s"], a["run_s"], a["outcome"], a["reason"]))
    for row in registered:  # registered runs without attempts (a campaign from before the ledger kept them): their files only
        runs.setdefault(Path(row["run_dir"]).name, CampaignRun(Path(row["run_dir"]).name, Path(row["run_dir"])))
    return diagnose(cid, list(runs.values()))


def render_campaign_diagnosis(report) -> str:
    """A campaign's cluster findings as text."""
    from .doctor.cluster import render_campaign_text

    return render_campaign_text(report)
