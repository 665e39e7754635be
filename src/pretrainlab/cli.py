"""The `pretrainlab` command line: a thin layer over api.py.

    pretrainlab recipes [--fields] [--json]
    pretrainlab train --recipe NAME [--set key=value ...] [--out DIR] [--json]
    pretrainlab train --resume DIR
    pretrainlab data prepare --builtin [--tokenizer byte|bpe:VOCAB] | --input PATH[:DOMAIN] ... --out DIR
    pretrainlab data report [CORPUS] [--json]

Bad input exits with code 2 and one line on stderr naming the problem and the fix.
A finished run exits 0; a diverged run 3; a preempted (SIGTERM) run 75.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import api
from .errors import UserError


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own usage errors: one line, exit 2
        raise UserError(f"{message} (see `{self.prog} --help`)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="pretrainlab", description="An AI research lab for LLM pre-training.")
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

    d = sub.add_parser("data", help="prepare and inspect token corpora")
    dsub = d.add_subparsers(dest="data_command", required=True, parser_class=_Parser)
    dp = dsub.add_parser("prepare", help="tokenize a corpus into checksummed shards")
    dp.add_argument("--builtin", action="store_true", help="the builtin offline corpus (code, docs, literature)")
    dp.add_argument("--input", dest="inputs", action="append", default=[], metavar="PATH[:DOMAIN]",
                    help=".txt/.jsonl(.gz/.zst)/.parquet file or folder; domain defaults to the file name")
    dp.add_argument("--tokenizer", default="byte", help="'byte' (vocab 256) or 'bpe:VOCAB' (trained on the train split)")
    dp.add_argument("--text-field", default="text", help="JSONL/Parquet field holding the text")
    dp.add_argument("--out", type=Path, help="output directory (builtin: the default cache)")
    dp.add_argument("--force", action="store_true", help="rebuild even if a valid corpus exists")
    dr = dsub.add_parser("report", help="documents, tokens and bytes per domain and split")
    dr.add_argument("corpus", nargs="?", help="corpus directory (default: the builtin corpus)")
    dr.add_argument("--tokenizer", default="byte", help="which builtin corpus, when no directory is given")
    dr.add_argument("--json", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def cmd_recipes(args) -> int:
    if args.fields:
        rows = api.config_fields()
        if args.json:
            return _print_json(rows)
        for row in rows:
            print(f"{row['key']:<28} {row['type']:<22} {str(row['default']):<12} {row['doc']}")
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
    from .train import STATUS_EXIT

    run_dir, summary = api.train_run(args.recipe, args.overrides, args.out, args.resume, echo=True)
    if args.json:
        _print_json({"run_dir": str(run_dir), **summary})
    else:
        _print_summary(run_dir, summary)
    return STATUS_EXIT.get(summary["status"], 1)


def cmd_data(args) -> int:
    if args.data_command == "prepare":
        path = api.prepare_data(args.builtin, args.inputs, args.tokenizer, args.out, args.text_field, args.force)
        print(f"corpus ready: {path}")
        return 0
    info = api.corpus_info(args.corpus, args.tokenizer)
    if args.json:
        return _print_json(info)
    print(json.dumps(info, indent=2))
    return 0


def _print_summary(run_dir: Path, s: dict) -> None:
    from rich.table import Table

    table = Table(title=f"run {run_dir}", show_header=False)
    fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    table.add_row("status", s["status"])
    table.add_row("val_bpb", fmt(s["val_bpb"], ".4f"))
    for dom, v in (s.get("val_bpb_domains") or {}).items():
        table.add_row(f"  {dom}", fmt(v, ".4f"))
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
    print(json.dumps(obj, indent=2, default=str))
    return 0


COMMANDS = {"recipes": cmd_recipes, "train": cmd_train, "data": cmd_data}

if __name__ == "__main__":
    sys.exit(main())
