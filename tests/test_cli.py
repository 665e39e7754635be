"""The CLI contract: recipes listing, and every user error is one line, exit 2, no
traceback, nothing written."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import cli, set_args, tiny_overrides

from pretrainlab.recipes import RECIPES


def test_recipes_lists_every_recipe_with_size():
    res = cli("recipes", "--json")
    assert res.returncode == 0
    rows = json.loads(res.stdout)
    assert [r["name"] for r in rows] == list(RECIPES)
    assert all(r["params"] > 0 for r in rows)
    text = cli("recipes")
    assert text.returncode == 0 and all(name in text.stdout for name in RECIPES)


def test_recipes_fields_document_every_key():
    rows = json.loads(cli("recipes", "--fields", "--json").stdout)
    keys = {r["key"] for r in rows}
    assert {"model.n_layer", "budget.seconds", "budget.tokens", "data.weights", "optim.muon_lr"} <= keys
    assert all(r["doc"] for r in rows)


def assert_user_error(res, *fragments):
    assert res.returncode == 2, (res.returncode, res.stderr[-1500:])
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert "Traceback" not in res.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.mark.parametrize("override, fragments", [
    ("model.n_layr=3", ["model.n_layer"]),
    ("model.n_layer=three", ["model.n_layer", "integer"]),
    ("model.n_head=5", ["model.n_embd=64", "model.n_head=5"]),
    ("budget.seconds=-5", ["budget"]),
    ("data.weights=code:1,nosuchdomain:1", ["nosuchdomain"]),
    ("train.batch_tokens=1000", ["train.batch_tokens"]),
])
def test_bad_config_is_one_line_exit_2_and_writes_nothing(corpus_dir, tmp_path, override, fragments):
    out = tmp_path / "run"
    args = tiny_overrides(corpus_dir) + [override]
    assert_user_error(cli("train", "--recipe", "tiny-cpu", *set_args(args), "--out", str(out)), *fragments)
    assert not out.exists()


def test_unknown_recipe(tmp_path):
    assert_user_error(cli("train", "--recipe", "huge", "--out", str(tmp_path / "r")), "huge", "tiny-cpu")


def test_missing_corpus(tmp_path):
    out = tmp_path / "run"
    assert_user_error(cli("train", "--recipe", "tiny-cpu", "--set", f"data.corpus={tmp_path / 'nope'}", "--out", str(out)),
                      "corpus not found", "data prepare")
    assert not out.exists()


def test_corrupt_shard_fails_the_checksum(corpus_dir, tmp_path):
    import shutil

    bad = tmp_path / "corpus"
    shutil.copytree(corpus_dir, bad)
    shard = bad / "code.train.bin"
    data = np.fromfile(shard, dtype=np.uint16)
    data[100] ^= 1
    data.tofile(shard)
    out = tmp_path / "run"
    assert_user_error(cli("train", "--recipe", "tiny-cpu", *set_args(tiny_overrides(bad)), "--out", str(out)), "code.train.bin")
    assert not out.exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_out_dir_as_user(corpus_dir, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    assert_user_error(cli("train", "--recipe", "tiny-cpu", *set_args(tiny_overrides(corpus_dir)), "--out", str(ro / "run")), "not writable")


def test_unwritable_out_dir(corpus_dir, tmp_path):
    # a path under a regular file can never be created, even by root
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert_user_error(cli("train", "--recipe", "tiny-cpu", *set_args(tiny_overrides(corpus_dir)), "--out", str(blocker / "run")), "--out")


def test_existing_run_dir_is_not_overwritten(corpus_dir, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    assert_user_error(cli("train", "--recipe", "tiny-cpu", *set_args(tiny_overrides(corpus_dir)), "--out", str(out)), "--resume")
    assert (out / "keep.txt").read_text() == "precious"


def test_set_with_resume_is_refused(tmp_path):
    assert_user_error(cli("train", "--resume", str(tmp_path), "--set", "model.n_layer=2"), "--resume")


def test_resume_of_a_non_run(tmp_path):
    assert_user_error(cli("train", "--resume", str(tmp_path)), "recipe.json")


def test_argparse_errors_are_one_line():
    assert_user_error(cli("train", "--bogus"), "--bogus")
    assert_user_error(cli("nosuchcommand"))
    assert_user_error(cli("research", "approve", "e1", "--author", "mcp:claude-code/1.2"), "give your own name")
    # several overrides after one --set: the error says each pair takes its own flag
    assert_user_error(cli("train", "--recipe", "tiny-cpu", "--set", "model.n_layer=2", "model.n_embd=64"),
                      "unrecognized arguments: model.n_embd=64", "needs its own flag", "--set model.n_embd=64")


@pytest.mark.parametrize("argv", [
    ["train", "--recipe", "tiny-cpu", "--set", "model.n_head=5", "--no-ledger"],
    ["train", "--recipe", "tiny-cpu", "--set", "model.nope=1", "--no-ledger"],
    ["research", "start", "--recipe", "tiny-cpu", "--set", "model.n_head=5", "--budget-runs", "8"],
    ["research", "start", "--recipe", "tiny-cpu", "--spend-cap-usd", "nan"],  # NaN passes `< 0`; it may not pass at all
    ["research", "start", "--recipe", "tiny-cpu", "--run-budget", "nans"],
    ["research", "start", "--recipe", "tiny-cpu", "--parallel", "100000"],  # one process per slot: a fork bomb
    ["research", "start", "--recipe", "tiny-cpu", "--set", "data.corpus=/nonexistent"],  # ran crashing baselines until the loop died
    ["train", "--recipe", "tiny-cpu", "--set", "budget.seconds=nan", "--no-ledger"],  # trained 0 steps and said ok
    ["train", "--recipe", "tiny-cpu", "--set", "model.n_layer=1e400", "--no-ledger"],
    ["train", "--recipe", "tiny-cpu", "--set", "model.n_layer=1000000000", "--no-ledger"],  # hung, allocating
    ["research", "mixture", "--recipe", "tiny-cpu", "--proxies", "1"],
    ["data", "build", "no-such-recipe.toml"],
])
def test_a_bad_flag_or_recipe_is_reported_before_torch_is_imported(argv, tmp_path):
    # user errors come back at once: the recipe and the flags are checked before the heavy imports
    probe = ("import sys; from pretrainlab.cli import main; rc = main(sys.argv[1:]); "
             "print(rc, 'torch' in sys.modules, 'scipy.stats' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True, cwd=tmp_path,
                         env={**os.environ, "PRETRAINLAB_WORKSPACE": str(tmp_path)})
    assert out.stdout.split() == ["2", "False", "False"], (out.stdout, out.stderr[-1500:])
    assert out.stderr.startswith("error: ") and out.stderr.count("\n") == 1


def test_campaign_flags_are_the_settings_fields_and_reach_them():
    # the CLI generates `research start/resume/mixture` flags from the settings dataclasses: none is unreachable,
    # each default is the field's, and a value given on the command line lands in the field
    import dataclasses

    from pretrainlab import api
    from pretrainlab.cli import _config_options, build_parser

    parser = build_parser()
    defaults = _config_options(parser.parse_args(["research", "start"]), api.CampaignConfig)
    assert set(defaults) == {f.name for f in dataclasses.fields(api.CampaignConfig)}
    assert api.CampaignConfig(**defaults) == api.CampaignConfig()
    given = parser.parse_args(["research", "start", "--recipe", "small", "--set", "optim.lr=0.01", "--no-sweep", "--adopt-p", "0.7",
                               "--gpus", "0,1", "--decision", "paired", "--transfer", "model.n_layer=6", "--transfer", "model.n_embd=192",
                               "--max-looks", "3", "--strategy-seed", "4", "--llm-model", "m", "--run-memory", "6G"])
    cfg = api.CampaignConfig(**_config_options(given, api.CampaignConfig))
    assert (cfg.recipe, cfg.overrides, cfg.sweep, cfg.adopt_p, cfg.gpus, cfg.max_looks, cfg.strategy_seed, cfg.llm_model) == \
        ("small", ["optim.lr=0.01"], False, 0.7, [0, 1], 3, 4, "m")
    assert cfg.transfer == ["model.n_layer=6", "model.n_embd=192"] and cfg.run_memory == "6G"

    resumed = _config_options(parser.parse_args(["research", "resume", "abc", "--parallel", "3"]), api.CampaignConfig, only=api.RESUMABLE)
    assert resumed == {"budget_runs": None, "budget_hours": None, "parallel": 3, "gpus": None, "runner": None, "ray_address": None,
                       "slurm_profile": None, "slurm_partition": None, "slurm_account": None, "slurm_time": None,
                       "slurm_cpus_per_run": None, "slurm_gpus_per_run": None, "run_memory": None, "run_disk": None,
                       "spend_cap_usd": None, "spend_cap_tokens": None}  # None: not given, left as it was

    skip = ("concentration", "pool_size", "top", "num_resamples")
    mix = _config_options(parser.parse_args(["research", "mixture", "--target", "code, docs", "--proxies", "12"]), api.MixtureConfig, skip)
    assert mix["target"] == ["code", "docs"] and mix["proxies"] == 12
    assert api.MixtureConfig(**_config_options(parser.parse_args(["research", "mixture"]), api.MixtureConfig, skip)) == api.MixtureConfig()


def test_a_process_that_leaves_without_teardown_loses_nothing(tmp_path):
    """`pretrainlab train` ends with exit_without_teardown: what it printed, its atexit handlers
    and the finalizers of objects held only by a reference cycle all happen, with its exit code;
    a thread still working is waited for."""
    script = f"""
import atexit, sys, threading, time
from pathlib import Path
from pretrainlab.cli import exit_without_teardown
out = Path({str(tmp_path)!r})
atexit.register(lambda: (out / "atexit").write_text("ran"))
class Held:
    def __del__(self):
        (out / "finalized").write_text("ran")
a, b = Held(), Held()
a.other, b.other = b, a  # a cycle: only the collector frees it
del a, b
if sys.argv[1] == "thread":
    threading.Thread(target=lambda: (time.sleep(0.5), (out / "thread").write_text("ran"))).start()
sys.stdout.write("x" * 100000)  # buffered: a pipe
exit_without_teardown(3)
"""
    for mode in ("plain", "thread"):
        proc = subprocess.run([sys.executable, "-c", script, mode], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 3 and proc.stdout == "x" * 100000, proc.stderr
        ran = sorted(p.name for p in tmp_path.iterdir())
        assert ran == (["atexit", "finalized", "thread"] if mode == "thread" else ["atexit", "finalized"]), ran
        for p in tmp_path.iterdir():
            p.unlink()


def test_text_from_models_and_people_is_never_read_as_markup(capsys, tmp_path):
    """A hypothesis, proposer or change holding rich markup ("[/bold]", "[link=...]") prints as itself: parsed, it
    stopped `research status` with a MarkupError for as long as the experiment was in the campaign."""
    from pretrainlab import cli

    hostile = "[/bold] IGNORE [link=file:///etc/passwd]x[/link] [red"
    exp = {"experiment": "e1", "hypothesis": hostile, "proposer": "[/]", "model_id": None, "change": {"model.n_layer": ["[b]", 6]},
           "role": "proposal", "runs": 2, "mean_val_bpb": 3.5, "effect": None, "ci": None, "verdict": None, "status": "[/x]",
           "planned_seeds": None}
    cli._print_leaderboard({"campaign": "c1", "status": "running", "runs": 2, "budget_runs": 8, "experiments": [exp]})
    cli._print_summary(tmp_path / "[/run]", {"status": "[/ok]", "val_bpb": 3.5, "val_bpb_domains": {"[/d]": 3.5}, "params": 1,
                                             "steps": 1, "tokens": 1, "seconds": 1.0, "tokens_per_s": 1.0, "mfu": None, "peak_mem_mb": 1.0})
    out = capsys.readouterr().out
    assert "[/bold] IGNORE" in out and "[/x]" in out and "[/run]" in out and "[/ok]" in out and "[/d]" in out


def test_notes_print_without_terminal_control_characters(tmp_path):
    """A note (a person's, or a strategy's failure quoting a model's input) holding an escape sequence printed raw:
    it could clear the reader's screen, retitle the window or write the clipboard (OSC 52)."""
    from test_doctor import make_rows, write_run

    run = write_run(tmp_path / "run", make_rows(n=5))
    assert cli("runs", "import", str(run)).returncode == 0
    hostile = "look \x1b[2J\x1b]52;c;cHduZWQ=\x07 here\x9b31m"
    assert cli("runs", "note", str(run), hostile).returncode == 0
    shown = cli("runs", "show", str(run))
    assert shown.returncode == 0 and "look" in shown.stdout and "here" in shown.stdout
    assert not any(c in shown.stdout for c in "\x1b\x07\x9b")


def test_an_output_path_that_cannot_be_written_is_one_line(tmp_path):
    from test_doctor import make_rows, write_run

    assert cli("runs", "import", str(write_run(tmp_path / "run", make_rows(n=5)))).returncode == 0
    assert_user_error(cli("runs", "export", "--format", "json", "-o", str(tmp_path)), str(tmp_path), "Is a directory")
    assert_user_error(cli("runs", "export", "--format", "csv", "-o", "/proc/self/runs.csv"), "/proc/self/runs.csv")
    listing = subprocess.run(f"{sys.executable} -m pretrainlab runs list --json | head -c 1", shell=True, capture_output=True, text=True)
    assert "Traceback" not in listing.stderr and listing.stdout == "["  # the reader left early: no BrokenPipeError


def test_malformed_files_and_out_of_range_values_are_one_line(tmp_path):
    from test_doctor import make_rows, write_run

    (tmp_path / "list.json").write_text("[]")
    assert_user_error(cli("train", "--recipe", str(tmp_path / "list.json"), "--no-ledger"), "a recipe is a JSON object")
    broken = write_run(tmp_path / "run", make_rows(n=5))
    (broken / "recipe.json").write_text('{"model": 5}')
    assert_user_error(cli("train", "--resume", str(broken)), "recipe.json cannot be read as a recipe", "model must be an object")
    (tmp_path / "latin1.toml").write_bytes(b"\xff\xfe[corpus]\n")
    assert_user_error(cli("data", "build", str(tmp_path / "latin1.toml")), "is not UTF-8 text")
    assert cli("runs", "import", str(write_run(tmp_path / "ok", make_rows(n=5)))).returncode == 0
    assert_user_error(cli("runs", "list", "--since", "99999999d"), "before year 1")
    assert_user_error(cli("ui", "--port", "99999"), "a port is 0-65535")
    assert_user_error(cli("mcp", "--http", "--port", "-1"), "a port is 0-65535")


def test_every_command_prints_its_help(capsys):
    """Each subcommand's --help, down to the nested ones (`research start`): a flag's help with a bare "%" once crashed
    argparse's formatter for three of them."""
    import argparse

    from pretrainlab.cli import build_parser

    def commands(parser, path):
        yield path
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from commands(sub, [*path, name])

    seen = list(commands(build_parser(), []))
    assert ["research", "start"] in seen and ["research", "mixture"] in seen and len(seen) > 30
    helps = {}
    for path in seen:
        with pytest.raises(SystemExit) as e:
            build_parser().parse_args([*path, "--help"])
        helps[" ".join(path)] = " ".join(capsys.readouterr().out.split())
        assert e.value.code == 0 and helps[" ".join(path)].startswith("usage: pretrainlab"), path
    assert "auto: 90% of the machine's RAM split over the runs" in helps["research start"]


def test_a_mistyped_flag_gets_the_closest_one_and_the_commands_own_help(capsys):
    from pretrainlab.cli import main

    assert main(["research", "start", "--paralel", "1"]) == 2
    assert capsys.readouterr().err.strip() == ("error: unrecognized arguments: --paralel 1 (--paralel: did you mean --parallel? "
                                               "see `pretrainlab research start --help`)")
    assert main(["runs", "list", "--zzzz"]) == 2
    assert capsys.readouterr().err.strip() == "error: unrecognized arguments: --zzzz (see `pretrainlab runs list --help`)"
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("pretrainlab ")


def test_runs_export_takes_its_format_from_the_file_name(tmp_path, ledger_workspace, capsys):
    from pretrainlab.cli import main
    from pretrainlab.ledger import Ledger

    Ledger(None).close()  # the workspace's ledger, empty
    assert main(["runs", "export", str(tmp_path / "runs.csv")]) == 0
    assert capsys.readouterr().out.strip().endswith("(csv)") and (tmp_path / "runs.csv").exists()
    assert main(["runs", "export", "-o", str(tmp_path / "runs.json")]) == 0 and (tmp_path / "runs.json").exists()
    capsys.readouterr()
    assert main(["runs", "export", "-o", str(tmp_path / "runs2.json"), "--format", "csv"]) == 2
    assert "--format csv into 'runs2.json', a .json name" in capsys.readouterr().err
    assert main(["runs", "export", str(tmp_path / "runs.txt")]) == 2
    assert "cannot tell the format from 'runs.txt'" in capsys.readouterr().err


def test_data_report_is_a_table_for_people_and_json_with_the_flag(corpus_dir, capsys):
    from pretrainlab.cli import main

    assert main(["data", "report", str(corpus_dir)]) == 0
    out = capsys.readouterr().out
    assert "train docs / tokens" in out and "\nall " not in out.split("┃ domain")[0] and not out.lstrip().startswith("{")
    assert main(["data", "report", str(corpus_dir), "--json"]) == 0
    assert set(json.loads(capsys.readouterr().out)["domains"]) == {"code", "docs", "literature"}


def test_the_leaderboard_ranks_by_paired_effect_and_says_what_is_left(capsys):
    """One-seed screens and the baseline's three-seed mean do not rank against each other: a discarded screen whose mean
    happens to be lower stayed above the baseline. A dead loop and experiments the campaign never ran are said."""
    from pretrainlab.cli import _print_leaderboard

    def exp(eid, role, verdict, mean, effect, status="decided"):
        return {"experiment": eid, "hypothesis": eid, "proposer": "optuna", "model_id": None, "change": None, "runs": 1,
                "role": role, "status": status, "verdict": verdict, "mean_val_bpb": mean, "effect": effect, "ci": None,
                "planned_seeds": 1, "rung_effect": None}

    status = {"campaign": "c1", "status": "running", "runs": 5, "budget_runs": 9, "slots": None, "llm_spend": None,
              "loop": {"pid": 1, "host": "h", "alive": False},
              "experiments": [exp("worse-but-low", "screen", "discard", 3.80, 0.03), exp("base", "baseline", "keep", 3.85, None),
                              exp("kept", "screen", "keep", 3.82, -0.02), exp("queued", "suggestion", None, None, None, "queued")]}
    _print_leaderboard(status)
    out = capsys.readouterr().out
    order = [line.split("│")[1].strip() for line in out.splitlines() if line.startswith("│")]
    assert order == ["base", "kept", "worse-but-low", "queued"]
    assert "loop: not running (process 1 has ended" in out and "`pretrainlab research resume c1` continues it" in out
    _print_leaderboard({**status, "status": "done"})
    assert "not run: 1 queued experiment(s) (queued): the campaign ended first" in capsys.readouterr().out
    # a data experiment shows its steps and what they removed, not the derived corpus's path
    data = {**exp("data", "suggestion", "discard", 3.9, 0.01), "change": {"data.corpus": ["builtin", "/cache/derived-x"]},
            "data_steps": "near_dedup(threshold=0.7): 50 documents removed"}
    _print_leaderboard({**status, "experiments": [data]})
    out = capsys.readouterr().out
    assert "near_dedup(threshold=0.7)" in out and "derived-x" not in out
