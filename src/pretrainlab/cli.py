"""The `pretrainlab` command line: a thin layer over api.py.

    pretrainlab recipes [--fields] [--json]
    pretrainlab train --recipe NAME [--set key=value ...] [--out DIR] [--json]
    pretrainlab train --resume DIR
    pretrainlab data prepare --builtin [--tokenizer byte|bpe:VOCAB] | --input PATH[:DOMAIN] ... --out DIR
    pretrainlab data report [CORPUS] [--json] [--html FILE]
    pretrainlab data build RECIPE [--out DIR] [--json]
    pretrainlab data why CORPUS DOC [--json]
    pretrainlab runs list [--status S] [--recipe KEY=VALUE ...] [--campaign C] [--since DATE] [--until DATE]
                          [--limit N] [--sort created|val_bpb] [--json]
    pretrainlab runs show RUN | compare RUN RUN ... [--plot FILE.html|FILE.png] | import DIR ... |
                     export --format json|csv|parquet -o FILE [filters] | note RUN TEXT [--author NAME] |
                     push RUN --to tensorboard|mlflow|wandb [--dest DIR_OR_URI]        (all: [--db URL] [--json])

    pretrainlab research start --recipe NAME [--set k=v ...] --budget-runs N | --budget-hours H --run-budget 8e4tok
                              [--strategy auto|claude|openai|optuna|random|manual] [--parallel N] [--seeds K] ...
    pretrainlab research status [CAMPAIGN] | resume CAMPAIGN | stop CAMPAIGN | log CAMPAIGN     [--json]
    pretrainlab research resume CAMPAIGN --budget-runs 60    # extend a finished campaign
    pretrainlab research mixture --recipe NAME --proxies 24 --run-budget 4e4tok --confirm-seeds 3 [--target D1,D2] [--transfer k=v ...]
    pretrainlab research suggest CAMPAIGN "hypothesis" [--set k=v ...] [--data-recipe STEPS.toml] | approve EXP | reject EXP [--reason TEXT]
    pretrainlab report CAMPAIGN -o report.html
    pretrainlab doctor RUN [--baseline RUN] [--json]        (RUN = run dir or run id)
    pretrainlab doctor --campaign ID [--json]               (cluster waste across a campaign's runs)
    pretrainlab mcp [--db URL] [--http [--host 127.0.0.1] [--port 8765]]   # the MCP server: stdio, or streamable HTTP
    pretrainlab ui [--host H] [--port P] [--db URL] [--author NAME] [--open]   the web dashboard
    pretrainlab scaling fit [POINTS.csv|.json] [--ladder L | --campaign C | --recipe KEY=VALUE ...] [--flops 1e21 ...]
                            [--params total|non-embedding] [--bootstrap N] [--plot FILE.svg|.html|.png] [--json]
    pretrainlab scaling ladder --recipe NAME --sizes n_embd=64,96,128 --tokens 50k,100k,200k | --flops 1e12,3e12
                               [--seeds K] [--parallel N] [--budget C] [--plot FILE] [--json] | --resume LADDER

Bad input exits with code 2 and one line on stderr naming the problem and the fix.
A finished run exits 0; a diverged run 3; a preempted (SIGTERM) run 75.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import stat
import sys
from pathlib import Path

from . import api
from .errors import UserError


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own usage errors: one line, exit 2
        extra = message.removeprefix("unrecognized arguments: ").split() if message.startswith("unrecognized arguments: ") else []
        if any("=" in a and not a.startswith("-") for a in extra):  # `--set a=1 b=2`: the flag takes one pair
            raise UserError(f"{message}: each KEY=VALUE needs its own flag, e.g. --set {extra[0]} --set ... "
                            f"(see `{self.prog} --help`)")
        raise UserError(f"{message} (see `{self.prog} --help`)")


def _me() -> str:
    """Who a person's actions are recorded under by default: env PRETRAINLAB_AUTHOR, else the login name (as `runs note`)."""
    import getpass

    try:
        return os.environ.get("PRETRAINLAB_AUTHOR") or getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container)
        return "person"


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("pretrainlab")
    except metadata.PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="pretrainlab", description="An AI research lab for LLM pre-training.")
    p.add_argument("--version", action="version", version=f"pretrainlab {_version()}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    r = sub.add_parser("recipes", help="list the named recipes with their sizes")
    r.add_argument("--fields", action="store_true", help="list every config key settable with --set")
    r.add_argument("--json", action="store_true")

    t = sub.add_parser("train", help="train a recipe into a run directory")
    t.add_argument("--recipe", help="recipe name (see `pretrainlab recipes`)")
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set budget.seconds=60 --set model.n_layer=6")
    t.add_argument("--out", type=Path, help="run directory (default runs/RECIPE-TIME-ID)")
    t.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue a run from its last checkpoint")
    t.add_argument("--json", action="store_true", help="print summary.json to stdout (logs stay on stderr)")
    t.add_argument("--db", metavar="URL", help="ledger to register the run in (default: env PRETRAINLAB_DB, else the workspace's)")
    t.add_argument("--no-ledger", action="store_true", help="do not register the run in the ledger (also env PRETRAINLAB_NO_LEDGER=1)")
    t.add_argument("--log-to", metavar="TRACKER", help="after the run, replay it into tensorboard, mlflow or wandb (if installed)")
    # the lab's job process (runners/job.py) has the trainer of a run of its own code score the run: two pipes of its own
    t.add_argument("--score-fds", metavar="R,W", help=argparse.SUPPRESS)

    d = sub.add_parser("data", help="prepare and inspect token corpora")
    dsub = d.add_subparsers(dest="data_command", required=True, parser_class=_Parser)
    dp = dsub.add_parser("prepare", help="tokenize a corpus into checksummed shards")
    dp.add_argument("--builtin", action="store_true", help="the builtin offline corpus (code, docs, literature)")
    dp.add_argument("--input", dest="inputs", action="append", default=[], metavar="PATH[:DOMAIN]",
                    help=".txt/.jsonl(.gz/.zst)/.parquet file or folder; domain defaults to the file name")
    dp.add_argument("--tokenizer", default="byte", help="'byte' (vocab 256) or 'bpe:VOCAB' (trained on the train split)")
    dp.add_argument("--text-field", default="text", help="JSONL/Parquet field holding the text")
    dp.add_argument("--out", type=Path, help="output directory: new, empty, or a corpus to replace (builtin: the default cache); "
                    "any other folder is refused")
    dp.add_argument("--force", action="store_true", help="replace the corpus already at --out (only a corpus: other folders are "
                    "never replaced)")
    dr = dsub.add_parser("report", help="documents, tokens and bytes per domain and split")
    dr.add_argument("corpus", nargs="?", help="corpus directory (default: the builtin corpus)")
    dr.add_argument("--tokenizer", default="byte", help="which builtin corpus, when no directory is given")
    dr.add_argument("--json", action="store_true")
    dr.add_argument("--html", type=Path, metavar="FILE", help="also write a self-contained HTML page with plots")
    db = dsub.add_parser("build", help="run a data recipe (TOML: sources and steps) into a derived corpus")
    db.add_argument("recipe", type=Path, help="the data recipe file (docs/data.md)")
    db.add_argument("--out", type=Path, help="output directory (default: $PRETRAINLAB_HOME/corpus/derived-NAME-HASH)")
    db.add_argument("--executor", choices=["local", "ray"], default="local",
                    help="where per-document steps run: local processes ([corpus] num_workers, 0: all cores) or Ray tasks; same output")
    db.add_argument("--address", help="the Ray cluster for --executor ray (default: RAY_ADDRESS, else a new local Ray instance)")
    db.add_argument("--json", action="store_true")
    dw = dsub.add_parser("why", help="why a document is (not) in a derived corpus's training set")
    dw.add_argument("corpus", help="the derived corpus directory")
    dw.add_argument("doc", help="the document's path, or a sha256 prefix")
    dw.add_argument("--json", action="store_true")
    _add_runs_parser(sub)
    _add_research_parser(sub)
    _add_scaling_parser(sub)
    return p


def _add_runs_parser(sub) -> None:
    rp = sub.add_parser("runs", help="query, compare, export and annotate the ledger of runs")
    rsub = rp.add_subparsers(dest="runs_command", required=True, parser_class=_Parser)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--db", metavar="URL", help="ledger: a path, sqlite:///PATH or postgresql://USER@HOST/DB "
                        "(default: env PRETRAINLAB_DB, else $PRETRAINLAB_WORKSPACE/pretrainlab.db)")
    common.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    filters = argparse.ArgumentParser(add_help=False)
    filters.add_argument("--status", help="ok, diverged, crashed, timeout, preempted or unknown (comma-separated for several)")
    filters.add_argument("--recipe", action="append", default=[], metavar="KEY=VALUE",
                         help="match the resolved recipe, e.g. --recipe model.n_layer=4 --recipe name=tiny-cpu")
    filters.add_argument("--campaign", help="campaign id or name")
    filters.add_argument("--since", metavar="DATE", help="created at or after: 2026-11-21, 2026-11-21T14:30, or an age: 30m, 12h, 3d")
    filters.add_argument("--until", metavar="DATE", help="created before (a date includes that whole day)")
    filters.add_argument("--sort", default="created", choices=["created", "val_bpb"], help="newest first, or best val_bpb first")
    ls = rsub.add_parser("list", parents=[common, filters], help="runs matching the filters")
    ls.add_argument("--limit", type=int, default=50, help="at most N runs (default 50; 0 = all)")
    show = rsub.add_parser("show", parents=[common], help="everything recorded about one run")
    show.add_argument("run", help="run id, unique id prefix, or run directory")
    cmp = rsub.add_parser("compare", parents=[common], help="recipe diff and metric deltas between runs")
    cmp.add_argument("runs", nargs="+", metavar="RUN", help="two or more runs; deltas are against the first")
    cmp.add_argument("--plot", type=Path, metavar="FILE", help="curve overlay: FILE.html (self-contained SVG) or FILE.png (matplotlib)")
    imp = rsub.add_parser("import", parents=[common], help="register run directories (or every run under a folder)")
    imp.add_argument("dirs", nargs="+", metavar="DIR")
    exp = rsub.add_parser("export", parents=[common, filters], help="write runs to a JSON, CSV or Parquet file")
    exp.add_argument("--format", help="json, csv or parquet (default: the --out file's extension)")
    exp.add_argument("out_file", nargs="?", type=Path, metavar="FILE", help="where to write (or -o FILE)")
    exp.add_argument("-o", "--out", type=Path, metavar="FILE")
    exp.add_argument("--limit", type=int, default=0, help="at most N runs (default 0 = all)")
    note = rsub.add_parser("note", parents=[common], help="attach a note to a run")
    note.add_argument("run", help="run id, unique id prefix, or run directory")
    note.add_argument("text")
    note.add_argument("--author", help="who writes it (default: env PRETRAINLAB_AUTHOR, else your login name)")
    push = rsub.add_parser("push", parents=[common], help="replay a run into TensorBoard, MLflow or Weights & Biases")
    push.add_argument("run", help="run id, unique id prefix, or run directory")
    push.add_argument("--to", required=True, help="tensorboard, mlflow or wandb")
    push.add_argument("--dest", metavar="DIR_OR_URI", help="tensorboard/wandb: a directory; mlflow: a tracking URI")


def _add_research_parser(sub) -> None:
    r = sub.add_parser("research", help="research campaigns: propose, run, decide, record")
    rsub = r.add_subparsers(dest="research_command", required=True, parser_class=_Parser)
    s = rsub.add_parser("start", help="start a campaign (runs in the foreground)")
    _config_flags(s, api.CampaignConfig)
    s.add_argument("--name", help="campaign name")
    s.add_argument("--author", default=_me(), help="who starts it (recorded)")
    s.add_argument("--db", metavar="URL", help="ledger URL (default: env PRETRAINLAB_DB, else the workspace's)")
    s.add_argument("--json", action="store_true")
    for name, help_ in (("status", "a campaign's leaderboard (or every campaign)"), ("resume", "continue a campaign"),
                        ("stop", "ask a running campaign to finish"), ("log", "the research log (Markdown)")):
        c = rsub.add_parser(name, help=help_)
        c.add_argument("campaign", nargs="?" if name == "status" else None)
        c.add_argument("--db", metavar="URL")
        c.add_argument("--json", action="store_true")
        if name == "resume":
            _config_flags(c, api.CampaignConfig, only=api.RESUMABLE, unchanged=True)
            c.add_argument("--author", default=_me(), help="who changed the budget (recorded)")
        if name == "stop":
            c.add_argument("--author", default=_me(), help="who asks it to stop (recorded)")
    _add_mixture_parser(rsub)
    g = rsub.add_parser("suggest", help="queue a person's experiment")
    g.add_argument("campaign")
    g.add_argument("hypothesis")
    g.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    g.add_argument("--data-recipe", metavar="STEPS.toml", help="a data experiment: the data recipe's [[steps]], built into a derived "
                   "corpus of the campaign's sources (validation and test data stay fixed)")
    g.add_argument("--author", default=_me())
    g.add_argument("--db", metavar="URL")
    g.add_argument("--json", action="store_true")
    for name in ("approve", "reject"):
        c = rsub.add_parser(name, help=f"{name} an experiment (recorded as your decision)" +
                            ("; a queued one is withdrawn" if name == "reject" else ""))
        c.add_argument("experiment")
        c.add_argument("--reason", help="why (recorded); needed to overturn the statistics' verdict (approve of a discard, reject of a keep)")
        c.add_argument("--author", default=_me())
        c.add_argument("--db", metavar="URL")
        c.add_argument("--json", action="store_true")
    doc = sub.add_parser("doctor", help="diagnose a run (finished or live): spikes, stalls, divergence, data problems; or a "
                                        "campaign's cluster waste (--campaign): queue wait, idle GPUs, stragglers, restarts")
    doc.add_argument("run", nargs="?", help="run directory or run id")
    doc.add_argument("--campaign", metavar="ID", help="diagnose this campaign's runs together (id, unique prefix or name) instead of one run")
    doc.add_argument("--baseline", help="compare against this run (dir or id)")
    doc.add_argument("--db", metavar="URL")
    doc.add_argument("--json", action="store_true")
    rep = sub.add_parser("report", help="a campaign's HTML report")
    rep.add_argument("campaign")
    rep.add_argument("-o", "--out", type=Path, default=Path("report.html"))
    rep.add_argument("--db", metavar="URL")
    rep.add_argument("--json", action="store_true", help="print {campaign, report} as JSON")
    mcp = sub.add_parser("mcp", help="serve the lab to an MCP client (Claude Code: `claude mcp add pretrainlab -- pretrainlab mcp`) "
                                     "over stdio, or over streamable HTTP with --http")
    mcp.add_argument("--db", metavar="URL", help="ledger URL (default: env PRETRAINLAB_DB, else the workspace's)")
    mcp.add_argument("--http", action="store_true", help="serve streamable HTTP at http://HOST:PORT/mcp instead of stdio")
    mcp.add_argument("--host", default="127.0.0.1", help="--http: the address to bind (default 127.0.0.1; any other address "
                                                         "requires a bearer token: env PRETRAINLAB_MCP_TOKEN, else one printed at start)")
    mcp.add_argument("--port", type=int, default=8765, help="--http: the port (default 8765; 0 = any free port, printed at start)")
    ui = sub.add_parser("ui", help="the web dashboard: live campaigns, experiments, runs, decisions, corpora")
    ui.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; any other needs the access "
                    "token it prints)")
    ui.add_argument("--port", type=int, default=8780, help="port (default 8780)")
    ui.add_argument("--db", metavar="URL", help="ledger URL (default: env PRETRAINLAB_DB, else the workspace's)")
    ui.add_argument("--author", default=_me(),
                    help="the name approvals and notes are recorded under unless the form gives another")
    ui.add_argument("--open", action="store_true", help="open the dashboard in a browser")


def _parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """parse_args, with an unknown flag named against the command it was given to (`--paralel`: did you mean --parallel?
    see `pretrainlab research start --help`)."""
    import difflib

    args, extra = parser.parse_known_args(argv)
    if not extra:
        return args
    command, path = parser, [parser.prog]
    while True:  # the deepest subcommand given
        subs = [a for a in command._actions if isinstance(a, argparse._SubParsersAction)]
        name = getattr(args, subs[0].dest, None) if subs else None
        if name is None or name not in subs[0].choices:
            break
        command, path = subs[0].choices[name], [*path, name]
    flags = [o for a in command._actions for o in a.option_strings if o.startswith("--")]
    hints = []
    for arg in extra:
        close = difflib.get_close_matches(arg.split("=", 1)[0], flags, n=1, cutoff=0.8) if arg.startswith("--") else []
        if close:
            hints.append(f"{arg}: did you mean {close[0]}?")
    if hints:
        raise UserError(f"unrecognized arguments: {' '.join(extra)} ({'; '.join(hints)} see `{' '.join(path)} --help`)")
    command.error(f"unrecognized arguments: {' '.join(extra)}")


def main(argv: list[str] | None = None) -> int:
    args = None
    try:
        args = _parse(build_parser(), argv)
        if isinstance(getattr(args, "author", None), str):
            args.author = api.check_person(args.author)
        return COMMANDS[args.command](args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        what = (getattr(args, "command", None), getattr(args, "research_command", None))
        if what[0] == "research" and what[1] in ("start", "resume", "mixture"):  # the loop stopped its runs with a checkpoint
            which = args.campaign if what[1] == "resume" else "ID"
            print(f"interrupted: the runs in flight were checkpointed; `pretrainlab research resume {which}` continues the "
                  "campaign (`pretrainlab research status` lists them)", file=sys.stderr)
        else:
            print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `pretrainlab runs list --json | head`: the reader left; nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as e:  # a path the user gave that cannot be written or read (-o into a missing directory, /proc, a directory)
        if e.filename is None:
            raise
        print(f"error: {e.filename}: {e.strerror or e}; check the path (its directory must exist and be writable)", file=sys.stderr)
        return 2


def exit_without_teardown(code: int) -> None:
    """End the process as sys.exit(code) would, less the interpreter's teardown of torch's
    modules (about a second of CPU after every run, and in a campaign its slot waits for it):
    atexit handlers run (trackers, compile workers), reference cycles are collected (their
    finalizers close what they hold), stdout and stderr are flushed, then the process ends.
    With a thread other than the main one still running, the interpreter's usual exit waits
    for it instead."""
    import atexit
    import gc
    import threading

    if any(t is not threading.main_thread() and not t.daemon and t.is_alive() for t in threading.enumerate()):
        sys.exit(code)
    atexit._run_exitfuncs()
    gc.collect()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code if isinstance(code, int) else 0 if code is None else 1)


def cmd_recipes(args) -> int:
    if args.fields:
        rows = api.config_fields()
        if args.json:
            return _print_json(rows)
        print("the defaults of a bare config; a named recipe sets many of them (`pretrainlab recipes` shows each recipe's)")
        for row in rows:
            print(f"{row['key']:<28} {row['type']:<22} {row['default']!s:<12} {row['doc']}")
        return 0
    rows = api.list_recipes()
    if args.json:
        return _print_json(rows)
    from rich.table import Table

    table = Table(title="pretrainlab recipes")
    for col in ("recipe", "params", "layers x width, heads, context", "tokenizer", "batch tokens", "budget"):
        table.add_column(col, no_wrap=True)
    for r in rows:
        budget = ", ".join(f"{k}={v:g}" for k, v in r["budget"].items())
        table.add_row(r["name"], f"{r['params'] / 1e6:.1f}M", f"{r['n_layer']} x {r['n_embd']}, {r['n_head']}h, T={r['seq_len']}",
                      r["tokenizer"], f"{r['batch_tokens']:,}", budget)
    console = _console()
    console.print(table)
    for r in rows:
        console.print(f"  [bold]{r['name']}[/bold]: {r['doc']}")
    return 0


def cmd_train(args) -> int:
    if args.score_fds is not None:  # (the job's, never a person's: checked before hours of training all the same)
        fds = args.score_fds.split(",")
        try:
            if len(fds) != 2:
                raise ValueError
            for fd in fds:
                if int(fd) < 3 or not stat.S_ISFIFO(os.fstat(int(fd)).st_mode):
                    raise ValueError
                os.set_inheritable(int(fd), False)  # this process's alone: nothing it starts holds the job's pipes open
        except (ValueError, OSError):
            raise UserError(f"--score-fds {args.score_fds!r}: two pipes R,W other than the standard streams are expected (it is "
                            "the lab's job process's flag: leave it out)") from None
    run_dir, summary = api.train_run(args.recipe, args.overrides, args.out, args.resume, echo=True, db=args.db,
                                     ledger=not args.no_ledger, log_to=args.log_to)
    if args.json:
        _print_json({"run_dir": str(run_dir), **summary})
    else:
        _print_summary(run_dir, summary)
    if args.score_fds:
        return api.serve_scoring(run_dir, args.score_fds, api.exit_code(summary))
    return api.exit_code(summary)


def cmd_data(args) -> int:
    if args.data_command == "prepare":
        path = api.prepare_data(args.builtin, args.inputs, args.tokenizer, args.out, args.text_field, args.force)
        print(f"corpus ready: {path}")
        if not args.builtin:
            _corpus_notes(api.corpus_info(str(path)))
        return 0
    if args.data_command == "build":
        result = api.build_data(args.recipe, args.out, progress=not args.json, executor=args.executor, ray_address=args.address)
        if args.json:
            return _print_json(result)
        print(f"corpus {'cached (same recipe and inputs), reused' if result['cached'] else 'built'}: {result['path']}")
        for i, step in enumerate(result["steps"], 1):  # a step that took most of the training documents: said
            n_in, n_out = step.get("num_docs_in"), step.get("num_docs_out")
            if isinstance(n_in, int) and isinstance(n_out, int) and n_in and n_out < n_in / 2:
                print(f"note: step {i} ({step.get('step')}) kept {n_out:,} of {n_in:,} training documents: check its "
                      "thresholds (`pretrainlab data why CORPUS DOC` says why a document went)")
        if result["num_skipped_files"] or result["num_skipped_records"]:
            print(f"skipped as unreadable: {result['num_skipped_files']} file(s), {result['num_skipped_records']} record(s); "
                  f"`pretrainlab data report {result['path']}` lists them")
        return 0
    if args.data_command == "why":
        fate = api.data_why(args.corpus, args.doc)
        if args.json:
            return _print_json(fate)
        print(f"{fate['domain']}:{fate['path']} ({fate['sha256'][:12]}): {fate['explanation']}")
        return 0
    info = api.corpus_info(args.corpus, args.tokenizer)
    if args.html:
        api.write_corpus_report_html(info, args.html)
    if args.json:
        return _print_json(info)
    _print_corpus(info)
    return 0


def _print_corpus(info: dict) -> None:
    """`data report` for people: documents and tokens per domain and split (`--json` has every figure)."""
    from rich.table import Table

    splits = ("train", "monitor", "val", "test")
    table = Table(title=_esc(f"corpus {info['path']} ({info['tokenizer']}, vocabulary {info['vocab_size']:,})"))
    table.add_column("domain")
    for split in splits:
        table.add_column(f"{split} docs / tokens", justify="right")
    for name, parts in [*info["domains"].items(), ("all", info.get("total") or {})]:
        cells = [f"{parts[sp]['num_docs']:,} / {parts[sp]['num_tokens']:,}" if sp in parts else "-" for sp in splits]
        table.add_row(_esc(name), *cells)
    _console().print(table)
    print(f"manifest sha256 {info['manifest_sha256'][:16]}")
    if info.get("build"):
        print("built by `pretrainlab data build` from a data recipe: `--json` shows the recipe and each step's counts")
    _corpus_notes(info, always=True)


def _corpus_notes(info: dict, always: bool = False) -> None:
    """What a person preparing a corpus should know: documents dropped, decision splits too small to score on."""
    dropped = (info.get("num_dropped_duplicates") or 0, info.get("num_dropped_empty") or 0)
    if always or any(dropped):
        print(f"dropped while preparing: {dropped[0]} duplicate and {dropped[1]} empty document(s)")
    small = [d for d, parts in info["domains"].items() if (parts.get("val") or {}).get("num_tokens", 0) < 8192]
    if small:
        print(f"note: the decision (val) split of {', '.join(small)} holds under 8,192 tokens: scores on it are noisy; add "
              "documents")


def _print_summary(run_dir: Path, s: dict) -> None:
    from rich.table import Table

    table = Table(title=_esc(f"run {run_dir}"), show_header=False)
    fmt = lambda v, f: "-" if v is None else format(v, f)
    table.add_row("status", _esc(str(s["status"])))
    table.add_row("val_bpb", fmt(s["val_bpb"], ".4f"))
    for dom, v in (s.get("val_bpb_domains") or {}).items():
        table.add_row(_esc(f"  {dom}"), fmt(v, ".4f"))
    table.add_row("params", f"{s['params']:,}")
    table.add_row("steps / tokens", f"{s['steps']:,} / {s['tokens']:,}")
    table.add_row("training seconds", fmt(s["seconds"], ".1f"))
    table.add_row("tokens/s", fmt(s["tokens_per_s"], ",.0f"))
    table.add_row("MFU", fmt(s["mfu"], ".1%") if s["mfu"] is not None else "n/a (no peak figure for this device)")
    table.add_row("peak memory", f"{s['peak_mem_mb']:,.0f} MiB")
    _console().print(table)


def _console():
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 120)  # pipes and logs get full rows


def _print_json(obj) -> int:
    print(json.dumps(api.strict_json(obj), indent=2, default=str, allow_nan=False))  # no NaN or Infinity token
    return 0


# ---- runs: the ledger ----------------------------------------------------------------------


def cmd_runs(args) -> int:
    handler = {"list": _runs_list, "show": _runs_show, "compare": _runs_compare, "import": _runs_import,
               "export": _runs_export, "note": _runs_note, "push": _runs_push}[args.runs_command]
    return handler(args)


def _runs_list(args) -> int:
    limit = api.check_count("--limit", args.limit) or None
    rows = api.list_runs(args.status, args.recipe, args.campaign, args.since, args.until,
                         limit=limit + 1 if limit else None, sort=args.sort, db=args.db)
    more = limit is not None and len(rows) > limit
    rows = rows[:limit] if limit else rows
    if args.json:
        return _print_json(rows)
    from rich.table import Table

    console = _console()
    if not rows:
        filtered = any([args.status, args.recipe, args.campaign, args.since, args.until])
        console.print("no runs match these filters" if filtered else
                      "no runs yet: `pretrainlab train` registers its runs; `pretrainlab runs import DIR` adds older ones")
        return 0
    table = Table(title="runs" + (" by val_bpb" if args.sort == "val_bpb" else ""), title_justify="left")
    for col, justify in (("run", "left"), ("created", "left"), ("recipe", "left"), ("status", "left"), ("val_bpb", "right"),
                         ("params", "right"), ("tokens", "right"), ("tokens/s", "right"), ("MFU", "right"), ("run dir", "left")):
        table.add_column(col, justify=justify, no_wrap=col != "run dir", overflow="fold")
    for r in rows:
        table.add_row(r["run_id"], _local_time(r["created_at"]), _esc(r["recipe_name"] or "-"), _status(r["status"]),
                      _fmt(r["val_bpb"], ".4f"), _millions(r["params"]), _millions(r["tokens"]), _fmt(r["tokens_per_s"], ",.0f"),
                      _fmt(r["mfu"], ".1%"), _esc(_short_path(r["run_dir"])))
    console.print(table)
    if more:
        console.print(f"showing the first {limit}; more match: raise --limit, or --limit 0 for all")
    return 0


def _runs_show(args) -> int:
    r = api.show_run(args.run, db=args.db)
    if args.json:
        return _print_json(r)
    from rich.table import Table

    console = _console()
    s = r["summary"] or {}
    table = Table(title=f"run {r['run_id']}", title_justify="left", show_header=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    table.add_row("status", _status(r["status"]) + (_esc(f"  ({' '.join(s['error'].split()[-12:])})") if s.get("error") else ""))
    table.add_row("run dir", _esc(r["run_dir"]))
    table.add_row("recipe", _esc(f"{r['recipe_name']} (hash {r['recipe_hash']}, seed {r['seed']})"))
    table.add_row("created / finished", f"{_local_time(r['created_at'])} / {_local_time(r['finished_at'])}")
    diff = r["git_diff"] or ""
    dirty = f" + uncommitted diff ({len(diff.splitlines())} lines; --json shows it)" if diff else ""
    table.add_row("code", f"{r['git_commit'] or 'not a git checkout'}{dirty}")
    table.add_row("device", _esc(f"{r['device'] or '-'} x {r['world_size'] or 1}"))
    table.add_row("val_bpb", _fmt(r["val_bpb"], ".4f"))
    for dom, v in (s.get("val_bpb_domains") or {}).items():
        table.add_row(_esc(f"  {dom}"), _fmt(v, ".4f"))
    table.add_row("params", _fmt(r["params"], ","))
    table.add_row("steps / tokens", f"{_fmt(r['steps'], ',')} / {_fmt(r['tokens'], ',')}")
    table.add_row("training seconds", _fmt(r["seconds"], ".1f"))
    table.add_row("tokens/s", _fmt(r["tokens_per_s"], ",.0f"))
    table.add_row("MFU", _fmt(r["mfu"], ".1%"))
    table.add_row("peak memory", f"{_fmt(r['peak_mem_mb'], ',.0f')} MiB")
    if r["campaign"]:
        table.add_row("campaign", _esc(f"{r['campaign']['id']} {r['campaign']['name']}"))
    if r["experiment"]:
        e = r["experiment"]
        who = e["proposer"] + (f" ({e['model_id']})" if e["model_id"] else "") + f", {e['proposer_type']}"
        table.add_row("experiment", _esc(f"{e['id']} [{e['kind']}] {e['hypothesis']} — proposed by {who}"))
    series = r["series"]
    if series:
        table.add_row("metrics.jsonl", f"{series['num_rows']:,} rows, steps {series['first_step']}..{series['last_step']}, "
                                       f"{series['file_size']:,} bytes, sha256 {series['sha256'][:12]}: {series['state']}")
    else:
        table.add_row("metrics.jsonl", "none")
    console.print(table)
    if r["evals"]:
        evals = Table(title="evals", title_justify="left")
        domains = list(r["evals"][-1].get("domains") or {})
        for col in ("step", "tokens", "val_bpb", *domains):
            evals.add_column(col, justify="right")
        for e in r["evals"]:
            evals.add_row(f"{e['step']:,}", _fmt(e["tokens"], ","), _fmt(e["val_bpb"], ".4f"),
                          *[_fmt((e.get("domains") or {}).get(d), ".4f") for d in domains])
        console.print(evals)
    for d in r["decisions"]:
        ci = f" (95% CI {d['ci_low']:+.4f} .. {d['ci_high']:+.4f})" if d["ci_low"] is not None and d["ci_high"] is not None else ""
        effect = f" effect {d['effect']:+.4f}{ci}" if d["effect"] is not None else ""
        by = d["decided_by"] + (f" ({d['model_id']})" if d["model_id"] else "")
        console.print(f"decision {d['id']}: [bold]{d['verdict']}[/bold]{effect} by {_esc(by)}: {_esc(d['rationale'] or '')}", highlight=False)
    for n in r["notes"]:
        console.print(_printable(f"note {_local_time(n['created_at'])} {n['author']}: {n['text']}"), markup=False, highlight=False)
    return 0


def _runs_compare(args) -> int:
    res = api.compare_runs(args.runs, plot=args.plot, db=args.db)
    for run_id, why in (res.get("plot") or {}).get("missing", {}).items():
        print(f"warning: no training-loss curve for run {run_id}: {why}", file=sys.stderr)
    if args.json:
        return _print_json(res)
    from rich.table import Table

    console = _console()
    ids = [r["run_id"] for r in res["runs"]]
    diff = Table(title="recipe differences", title_justify="left")
    diff.add_column("key")
    for i in ids:
        diff.add_column(i, overflow="fold")
    for key, values in res["recipe_diff"].items():
        diff.add_row(key, *[_esc(str(v)) for v in values])
    if res["recipe_diff"]:
        console.print(diff)
    else:
        console.print("recipes: identical")
    metrics = Table(title=f"metrics (deltas against {ids[0]})", title_justify="left")
    metrics.add_column("metric")
    for i in ids:
        metrics.add_column(i, justify="right")
    for m in res["metrics"]:
        metrics.add_row(m["metric"], *[api.format_cell(m, i) for i in range(len(ids))])
    metrics.add_row("status", *[str(r["status"]) for r in res["runs"]])
    console.print(metrics)
    if res.get("plot"):
        console.print(f"plot: {res['plot']['path']}")
    return 0


def _runs_import(args) -> int:
    res = api.import_runs(args.dirs, db=args.db)
    if args.json:
        _print_json(res)
    else:
        for r in res["runs"]:
            print(f"{r['action']:<8} {r['run_id']}  {r['status']:<9} val_bpb {_fmt(r['val_bpb'], '.4f'):<7}  {r['run_dir']}")
        for sk in res["skipped"]:
            print(f"skipped  {sk['run_dir']}: {sk['error']}", file=sys.stderr)
        added = sum(r["action"] == "added" for r in res["runs"])
        num = len(res["runs"])
        print(f"{num} runs in {res['ledger']} ({added} added, {num - added} updated), {len(res['skipped'])} skipped")
    if res["skipped"] and not res["runs"]:
        raise UserError(f"runs import: none of the {len(res['skipped'])} run directories could be read: {res['skipped'][0]['error']}")
    return 0


def _runs_export(args) -> int:
    if args.out and args.out_file and args.out != args.out_file:
        raise UserError(f"runs export: two files given ({args.out_file} and -o {args.out}): give one")
    out = args.out or args.out_file
    if out is None:
        raise UserError("runs export needs a file: `pretrainlab runs export runs.csv` (json, csv or parquet, from its extension)")
    ext = out.suffix.lower().lstrip(".")
    fmt = args.format or ext
    if args.format is None and fmt not in ("json", "csv", "parquet"):
        raise UserError(f"runs export: cannot tell the format from {out.name!r}: give --format json, csv or parquet")
    if args.format and ext in ("json", "csv", "parquet") and ext != args.format:
        raise UserError(f"runs export: --format {args.format} into {out.name!r}, a .{ext} name: use a .{args.format} file or "
                        f"--format {ext}")
    res = api.export_runs(fmt, out, args.status, args.recipe, args.campaign, args.since, args.until,
                          limit=api.check_count("--limit", args.limit), sort=args.sort, db=args.db)
    if args.json:
        return _print_json(res)
    print(f"exported {res['num_runs']} runs to {res['path']} ({res['format']})")
    return 0


def _runs_note(args) -> int:
    note = api.note_run(args.run, args.text, author=args.author, db=args.db)
    if args.json:
        return _print_json(note)
    print(f"note {note['id']} added to run {note['run_id']} by {note['author']}")
    return 0


def _runs_push(args) -> int:
    res = api.push_run(args.run, args.to, dest=args.dest, db=args.db)
    if args.json:
        return _print_json(res)
    print(f"pushed run {res['run_id']} to {res['to']}: {res['num_rows']:,} rows ({res['num_values']:,} values), "
          f"{res['num_params']} params -> {res['dest']}")
    return 0


def _esc(text: str) -> str:
    """User text (paths, hypotheses, rationales, list values) must not be read as rich markup."""
    from rich.markup import escape

    return escape(_printable(text))


CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _printable(text: str) -> str:
    """Text from models, people and run files without terminal control characters: an escape
    sequence in a note or a hypothesis must not clear the screen, retitle the window or write
    the clipboard of whoever reads it (newlines and tabs stay)."""
    return CONTROL.sub("\ufffd", text)


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _millions(v) -> str:
    return "-" if v is None else (f"{v / 1e9:.2f}B" if v >= 1e9 else f"{v / 1e6:.2f}M" if v >= 1e4 else f"{v:,}")


def _status(status: str) -> str:
    color = {"ok": "green", "timeout": "yellow", "preempted": "yellow", "diverged": "red", "crashed": "red"}.get(status, "dim")
    return f"[{color}]{_esc(str(status))}[/{color}]"


def _local_time(stamp: str | None) -> str:
    from datetime import datetime

    return "-" if not stamp else datetime.fromisoformat(stamp).astimezone().strftime("%Y-%m-%d %H:%M")


def _short_path(path: str) -> str:
    try:
        return str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        return path


def cmd_research(args) -> int:
    c = args.research_command
    if c == "start":
        options = _config_options(args, api.CampaignConfig)
        cid = api.research_start(options.pop("recipe"), options.pop("overrides"), name=args.name, db=args.db, echo=True,
                                 author=args.author, **options)
        return _campaign_done(cid, args)
    if c == "mixture":
        return _cmd_mixture(args)
    if c == "resume":
        changes = _config_options(args, api.CampaignConfig, only=api.RESUMABLE)
        return _campaign_done(api.research_resume(args.campaign, db=args.db, author=args.author, **changes), args)
    if c == "status":
        status = api.research_status(args.campaign, db=args.db)
        if args.json:
            return _print_json(status)
        if args.campaign is None:
            for row in status:
                print(f"{row['id']}  {row['status']:<9} {row['created_at']}  {row['name']}")
            return 0
        _print_leaderboard(status)
        return 0
    if c == "stop":
        status = api.research_stop(args.campaign, db=args.db, author=args.author)
        if args.json:  # the campaign's full id, as status and resume give it, not the prefix typed
            return _print_json({"campaign": api.campaign_id(args.campaign, db=args.db), "status": status})
        print({"stopping": f"campaign {args.campaign}: stop requested; the running loop finishes its runs' checkpoints and exits",
               "stopped": f"campaign {args.campaign}: stopped (its loop was no longer running); `research resume` continues it"}
              .get(status, f"campaign {args.campaign} is {status}: nothing to stop"))
        return 0
    if c == "log":
        if args.json:
            return _print_json(api.research_log(args.campaign, db=args.db, as_record=True))
        print(_printable(api.research_log(args.campaign, db=args.db)))
        return 0
    if c == "suggest":
        exp = api.research_suggest(args.campaign, args.hypothesis, args.overrides, args.author, db=args.db, data_recipe=args.data_recipe)
        return _print_json({"experiment": exp}) if args.json else (print(f"queued experiment {exp}") or 0)
    done = api.research_review(args.experiment, c == "approve", args.author, args.reason, db=args.db)
    if done.get("warning"):  # a person's override of the statistics: said, whatever the output format
        print(f"warning: {done['warning']}", file=sys.stderr)
    if args.json:
        return _print_json(done)
    withdrawn = ": it will not run" if done["status"] == "rejected" else ""
    print(f"experiment {args.experiment}: {'approved' if c == 'approve' else 'rejected'} by {args.author}{withdrawn}")
    return 0


def _add_mixture_parser(rsub) -> None:
    m = rsub.add_parser("mixture", help="a mixture campaign: proxy runs on sampled mixtures, a regression, the predicted best "
                                        "mixture confirmed against the natural and uniform ones (docs/data.md)")
    _config_flags(m, api.MixtureConfig, skip=("concentration", "pool_size", "top", "num_resamples"))
    m.add_argument("--name", help="campaign name")
    m.add_argument("--db", metavar="URL", help="ledger URL (default: env PRETRAINLAB_DB, else the workspace's)")
    m.add_argument("--json", action="store_true", help="print the campaign's record (plan, fit, recommendation, claims) as JSON")


def _cmd_mixture(args) -> int:
    options = _config_options(args, api.MixtureConfig, skip=("concentration", "pool_size", "top", "num_resamples"))
    cid = api.research_mixture(options.pop("recipe"), options.pop("overrides"), name=args.name, db=args.db, echo=True, **options)
    report = api.write_report(cid, api.workspace() / "runs" / "campaigns" / cid / "report.html", db=args.db)
    s = api.research_status(cid, db=args.db)["mixture"]
    if args.json:
        return _print_json({**s, "report": str(report)})
    print(f"mixture campaign {cid} ({s['status']}): {s['runs']}/{s['planned_runs']} runs; target {s['target']}")
    if s["recommended"]:
        rec = s["recommended"]
        print("recommended: " + ", ".join(f"{d} {rec['weights'][d]:.3f} [{rec['low'][d]:.3f}, {rec['high'][d]:.3f}]" for d in s["domains"])
              + f"  (natural: {', '.join(f'{d} {w:.3f}' for d, w in s['natural'].items())}; model {s['design']['model']})")
    for c in s["claims"]:
        ci = f" [{c['ci'][0]:+.4f}, {c['ci'][1]:+.4f}]" if c["ci"][0] is not None else ""
        effect = f"{c['effect']:+.4f}{ci}" if c["effect"] is not None else "not testable"
        print(f"vs {c['against']} ({c['scale']}): {effect} -> {c['verdict']}")
    print(f"report: {report}")
    return 0


COMMA_LISTS = {"target", "tokens", "flops"}  # list[str] fields given as one comma-separated value; other lists repeat their flag


def _config_flags(parser, cls, skip: tuple[str, ...] = (), only: tuple[str, ...] | None = None, unchanged: bool = False) -> None:
    """One flag per field of a settings dataclass (research/config.py), its help the field's
    doc: --budget-runs for budget_runs, --sweep/--no-sweep for a bool, a repeated flag for a
    list (--set for the recipe overrides), comma-separated GPU indices for gpus. With
    `unchanged` (research resume) every flag defaults to None: not given, not changed."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(cls)
    shared = {f.name for b in cls.__mro__[1:] if dataclasses.is_dataclass(b) for f in dataclasses.fields(b)}
    for f in sorted(dataclasses.fields(cls), key=lambda f: f.name in shared):  # the class's own flags first, then where runs go
        if f.name in skip or (only is not None and f.name not in only):
            continue
        flag = "--set" if f.name == "overrides" else "--" + f.name.replace("_", "-")
        kind = hints[f.name]
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        base = args[0] if typing.get_origin(kind) in (typing.Union, __import__("types").UnionType) and len(args) == 1 else kind
        default = None if unchanged else (f.default if f.default is not dataclasses.MISSING else None)  # lists: None -> []
        shown = "" if unchanged or default in (None, [], "") else f" (default {default})"
        # argparse formats help with %: a doc's own "90%" must reach it as "90%%"
        kw = {"dest": f.name, "default": default, "help": ((f.metadata.get("doc") or "") + shown).replace("%", "%%")}
        if base is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        elif typing.get_origin(base) is list and typing.get_args(base) == (int,):
            parser.add_argument(flag, type=_gpu_list, metavar="0,1,...", **kw)
        elif typing.get_origin(base) is list and f.name in COMMA_LISTS:
            parser.add_argument(flag, type=lambda v: [d.strip() for d in v.split(",") if d.strip()], metavar="A,B", **kw)
        elif typing.get_origin(base) is list:
            parser.add_argument(flag, action="append", metavar="KEY=VALUE", **kw)
        else:
            parser.add_argument(flag, type=base, **kw)


def _config_options(args, cls, skip: tuple[str, ...] = (), only: tuple[str, ...] | None = None) -> dict:
    """The parsed flags of _config_flags as keyword arguments of `cls` (a list flag never given: [])."""
    import dataclasses

    out = {}
    for f in dataclasses.fields(cls):
        if f.name in skip or (only is not None and f.name not in only):
            continue
        value = getattr(args, f.name)
        out[f.name] = [] if value is None and f.default is dataclasses.MISSING else value
    return out


def _gpu_list(spec: str | None) -> list[int] | None:
    if spec is None:
        return None
    try:
        return [int(g) for g in spec.split(",")]
    except ValueError:
        raise UserError(f"--gpus {spec!r}: give comma-separated GPU indices, e.g. --gpus 0,1") from None


def _campaign_done(cid: str, args) -> int:
    report = api.write_report(cid, api.workspace() / "runs" / "campaigns" / cid / "report.html", db=args.db)
    status = api.research_status(cid, db=args.db)
    if args.json:
        return _print_json({**status, "report": str(report)})
    _print_leaderboard(status)
    print(f"report: {report}")
    return 0


def _print_leaderboard(status: dict) -> None:
    from rich.table import Table

    used = f" ({status['compute_used']:g} of {status['budget_runs']} in full-run equivalents)" if status.get("compute_used") is not None else ""
    table = Table(title=f"campaign {status['campaign']} ({status['status']}): {status['runs']} runs{used}")
    for col in ("experiment", "hypothesis", "proposed by", "change", "runs", "mean val_bpb", "effect [95% CI]", "verdict"):
        table.add_column(col, overflow="ellipsis", no_wrap=True, max_width={"hypothesis": 28, "change": 44}.get(col),
                         min_width={"experiment": 12, "runs": 4, "mean val_bpb": 8, "verdict": 12, "proposed by": 8}.get(col))
    # the baseline first, then kept changes, then the rest, each by its paired effect against the recipe it changed: means
    # over different seeds (a one-seed screen, the baseline's three) do not rank against each other
    def rank(e: dict) -> tuple:
        effect = e["effect"] if e["effect"] is not None else e.get("rung_effect")
        group = 0 if e.get("role") == "baseline" else 1 if e["verdict"] == "keep" else 2 if effect is not None else 3
        return group, effect if effect is not None else (e["mean_val_bpb"] or 0)

    rows = sorted(status["experiments"], key=rank)
    for e in rows:
        ci = e["ci"] or [None, None]
        effect = "" if e["effect"] is None else f"{e['effect']:+.4f}" + (f" [{ci[0]:+.4f}, {ci[1]:+.4f}]" if ci[0] is not None else "")
        if e["effect"] is None and e.get("rung_effect") is not None:
            effect = f"{e['rung_effect']:+.4f} at rung 1, stopped"
        short = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)
        diff = {k: v for k, v in (e["change"] or {}).items() if not (e.get("data_steps") and k == "data.corpus")}  # a path
        change = ", ".join(filter(None, [e.get("data_steps"), ", ".join(f"{k.split('.')[-1]} {short(a)}→{short(b)}"
                                                                          for k, (a, b) in diff.items())])) or \
            (f"({e['role']})" if e.get("role") in ("baseline", "pruned") else "")
        who = f"{e['proposer']} ({e['model_id']})" if e["model_id"] else e["proposer"]
        seeds = e.get("planned_seeds")
        verdict = e["verdict"] or (f"running ({seeds} seed{'s' if seeds != 1 else ''})" if e["status"] == "running" and seeds
                                   else e["status"])
        # text from models and people: never read as markup (a hypothesis "[/bold]" would stop the table)
        table.add_row(_esc(e["experiment"]), _esc(e["hypothesis"][:80]), _esc(who), _esc(change[:120]), str(e["runs"]),
                      _fmt(e["mean_val_bpb"], ".4f"), effect, "[green]keep[/green]" if verdict == "keep" else _esc(str(verdict)))
    from rich.console import Console

    Console(width=None if sys.stdout.isatty() else 200).print(table)  # one line per experiment in logs too
    print("ranked: the baseline, kept changes, then the rest, each by its effect against the recipe it changed (on the same "
          "seeds); means over different numbers of seeds do not compare")
    queued = [e["experiment"] for e in status["experiments"] if e["status"] == "queued"]
    if queued and status["status"] != "running":
        print(f"not run: {len(queued)} queued experiment(s) ({', '.join(queued[:5])}{', ...' if len(queued) > 5 else ''}): the "
              f"campaign ended first; `pretrainlab research resume {status['campaign']} --budget-runs N` (more than "
              f"{status['budget_runs']}) runs them")
    loop = status.get("loop") or {}
    if status["status"] == "running" and loop.get("alive") is False:
        print(f"loop: not running (process {loop.get('pid')} has ended: stopped, interrupted or killed); "
              f"`pretrainlab research resume {status['campaign']}` continues it")
    if status.get("slots"):
        print(f"slots (the last loop's): {status['slots']}")
    if status.get("llm_spend"):
        s = status["llm_spend"]
        cost = f", ${s['dollars']:.2f}" if s.get("dollars") is not None else ""
        print(f"llm spend: {s['model']}: {s['calls']} calls, {s['input_tokens'] + s['output_tokens'] + s['cache_write_tokens'] + s['cache_read_tokens']:,} tokens{cost}")


def cmd_doctor(args) -> int:
    if args.campaign:
        if args.run or args.baseline:
            raise UserError("doctor --campaign diagnoses a whole campaign: drop the RUN argument (and --baseline), or drop --campaign")
        report = api.diagnose_campaign(args.campaign, db=args.db)
        if args.json:
            return _print_json(report.to_dict())
        print(api.render_campaign_diagnosis(report))
        return 0
    if not args.run:
        raise UserError("doctor needs a RUN (run directory or run id) or --campaign ID")
    report = api.diagnose_run(args.run, args.baseline, db=args.db)
    if args.json:
        return _print_json(report.to_dict())
    print(api.render_diagnosis(report, color=sys.stdout.isatty()))
    return 0


def cmd_ui(args) -> int:
    from .ui import serve  # fastapi and uvicorn only now: a missing one is a one-line error naming the extra

    serve(host=args.host, port=args.port, db=args.db, author=args.author, open_browser=args.open)
    return 0


def cmd_mcp(args) -> int:
    from .mcp_server import serve  # the other face, launched from this one

    serve(args.db, http=args.http, host=args.host, port=args.port)
    return 0


# ---- scaling laws --------------------------------------------------------------------------------


def _add_scaling_parser(sub) -> None:
    sc = sub.add_parser("scaling", help="fit L(N, D) = E + A/N^alpha + B/D^beta and the compute-optimal N, D; train ladders (docs/scaling.md)")
    ssub = sc.add_subparsers(dest="scaling_command", required=True, parser_class=_Parser)
    fit_flags = argparse.ArgumentParser(add_help=False)
    fit_flags.add_argument("--bootstrap", dest="num_bootstrap", type=int, default=1000, metavar="N",
                           help="resamples of the points refitted for the intervals (default 1000; 0: none)")
    fit_flags.add_argument("--db", metavar="URL", help="ledger (default: env PRETRAINLAB_DB, else the workspace's)")
    fit_flags.add_argument("--plot", type=Path, metavar="FILE", help="FILE.svg or FILE.html (self-contained) or FILE.png (matplotlib)")
    fit_flags.add_argument("--json", action="store_true", help="the whole analysis as JSON on stdout")
    f = ssub.add_parser("fit", parents=[fit_flags], help="fit points from a file or the ledger's runs (Hoffmann et al. Approaches 3 and 2)")
    f.add_argument("points", nargs="?", help="CSV or JSON of (N, D, loss) points (columns: N|params, D|tokens or FLOPs, loss|val_bpb)")
    f.add_argument("--ladder", help="fit a ladder's runs (id or name, from `pretrainlab scaling ladder`)")
    f.add_argument("--campaign", help="fit a campaign's runs (id or name)")
    f.add_argument("--status", help="only runs with this status (default: all; those without a val_bpb are listed as left out)")
    f.add_argument("--recipe", action="append", default=[], metavar="KEY=VALUE", help="runs whose recipe matches, e.g. name=tiny-cpu")
    f.add_argument("--since", metavar="DATE", help="runs created at or after (2026-11-21, or an age: 3d)")
    f.add_argument("--until", metavar="DATE", help="runs created before")
    f.add_argument("--flops", "--budget", dest="flops", action="append", default=[], metavar="C",
                   help="compute budget(s) for the optimal N and D: 1e21, 5ZFLOPs, 100pf-days (repeat or comma-separate; "
                        "default: the largest run's power of ten, 10x and 100x)")
    f.add_argument("--params", default="total", choices=["total", "non-embedding"],
                   help="ledger runs: count N as total (Hoffmann et al.) or non-embedding (Kaplan et al.) parameters")
    f.add_argument("--drop-highest", type=int, default=0, metavar="K", help="leave out the K highest losses (Besiroglu et al. drop 5)")
    f.add_argument("--level", type=float, default=0.95, help="coverage of the percentile intervals (default 0.95)")
    f.add_argument("--starts", default="128", metavar="N|all",
                   help="descents from the 4,500-point initialisation grid: its N best and spread (default 128), or all")
    f.add_argument("--optimizer", default="bfgs", choices=["bfgs", "l-bfgs-b"], help="quasi-Newton method of each descent")
    f.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resamples")
    lad = ssub.add_parser("ladder", parents=[fit_flags], help="train model sizes x token (or compute) budgets as real runs, then fit")
    _config_flags(lad, api.LadderConfig)
    lad.add_argument("--budget", action="append", default=[], metavar="C",
                     help="compute budget(s) for the optimal N and D in the fit (default: the largest run's power of ten, 10x, 100x)")
    lad.add_argument("--name", help="the ladder's name")
    lad.add_argument("--resume", metavar="LADDER", help="continue an interrupted ladder as planned: its registered runs are kept "
                     "(only --parallel and --gpus apply)")
    lad.set_defaults(**{name: None for name in ("recipe", "seeds", "parallel", "params")})  # not given: the field's default (or, resumed, as it was)


def cmd_scaling(args) -> int:
    if args.scaling_command == "fit":
        starts = None if args.starts.strip().lower() == "all" else _int_flag("--starts", args.starts)
        flops = [v.strip() for item in args.flops for v in item.split(",") if v.strip()] or None
        result = api.scaling_fit(args.points, ladder=args.ladder, campaign=args.campaign, status=args.status, recipe=args.recipe,
                                 since=args.since, until=args.until, flops=flops, params=args.params, drop_highest=args.drop_highest,
                                 num_bootstrap=args.num_bootstrap, level=args.level, num_starts=starts, optimizer=args.optimizer,
                                 seed=args.seed, plot=args.plot, db=args.db)
        if args.json:
            return _print_json(result)
        print(api.render_scaling_fit(result))
        if result.get("plot"):
            print(f"plot: {result['plot']}")
        return 0
    options = _config_options(args, api.LadderConfig)
    budgets = [v.strip() for item in args.budget for v in item.split(",") if v.strip()] or None
    done = api.scaling_ladder(options.pop("recipe"), options.pop("overrides"), name=args.name, resume=args.resume, db=args.db,
                              budgets=budgets, num_bootstrap=args.num_bootstrap, plot=args.plot, **options)
    if args.json:
        return _print_json(done)
    if done["fit"] is not None:
        print(api.render_scaling_fit(done["fit"]))
        if done["fit"].get("plot"):
            print(f"plot: {done['fit']['plot']}")
    print(f"ladder {done['ladder']}: refit with `pretrainlab scaling fit --ladder {done['ladder']}`")
    return 0


def _int_flag(flag: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise UserError(f"{flag} {value!r}: give a whole number") from None


COMMANDS = {"ui": cmd_ui, "mcp": cmd_mcp, "scaling": cmd_scaling, "doctor": cmd_doctor, "recipes": cmd_recipes, "train": cmd_train, "data": cmd_data, "runs": cmd_runs, "research": cmd_research,
            "report": lambda args: _print_json({"campaign": args.campaign, "report": str(api.write_report(args.campaign, args.out, db=args.db))})
            if args.json else print(f"report: {api.write_report(args.campaign, args.out, db=args.db)}") or 0}

if __name__ == "__main__":
    sys.exit(main())
