"""Bad and hostile input at the lab's faces (MCP and CLI), as a reviewer drove them: a recipe
file outside the workspace, a tokenizer that walks out of the corpus home, secrets echoed in
errors, numbers masked as secrets, campaign prefixes, integers too large for SQLite, schemas
and errors in the CLI's words, look-alike author names. The MCP cases go through the official
SDK client over stdio, as tests/test_mcp_server.py does; none trains a model."""

import asyncio
import json
import os
import sys

import pytest
from conftest import cli

from pretrainlab import api
from pretrainlab.errors import UserError
from pretrainlab.ledger import Ledger
from pretrainlab.redaction import REDACTED, redact, scrub
from pretrainlab.research.campaign import CampaignConfig
from pretrainlab.research.simulate import Landscape, simulate

mcp = pytest.importorskip("mcp")
from mcp import Client  # noqa: E402
from mcp.client.stdio import StdioServerParameters  # noqa: E402
from mcp_types import Implementation  # noqa: E402

KEY = "sk-ant-api03-abcdefghijklmnopqrstu"


def _text(result) -> str:
    return "".join(getattr(c, "text", "") for c in result.content)


def _client(workspace, home, db: str) -> Client:
    env = {**os.environ, "PRETRAINLAB_WORKSPACE": str(workspace), "PRETRAINLAB_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    return Client(StdioServerParameters(command=sys.executable, args=["-m", "pretrainlab", "mcp", "--db", db], env=env),
                  client_info=Implementation(name="review-bot", version="0.1"))


def _calls(workspace, home, db: str, calls: list[tuple[str, dict]]) -> list:
    async def session():
        async with _client(workspace, home, db) as client:
            return [await client.call_tool(name, args) for name, args in calls]

    return asyncio.run(session())


@pytest.fixture
def lab(tmp_path, corpus_dir):
    """A workspace, a corpus home holding the sample corpus, and a ledger with a simulated campaign."""
    workspace, home = tmp_path / "workspace", tmp_path / "home"
    workspace.mkdir()
    (home / "corpus").mkdir(parents=True)
    (home / "corpus" / "sample").symlink_to(corpus_dir)
    sim = simulate(CampaignConfig(recipe="tiny-cpu", budget_runs=5, strategy="random", seeds=2), Landscape(seed=0), tmp_path / "sim")
    return workspace, home, f"sqlite:///{tmp_path / 'sim' / 'ledger.db'}", sim["campaign_id"]


def test_over_mcp_files_outside_the_workspace_stay_unread_and_errors_are_masked(lab, tmp_path):
    workspace, home, db, cid = lab
    outside = tmp_path / "x"
    outside.mkdir()
    (outside / "conf3.json").write_text(json.dumps({"model": {"n_layer": KEY}, "secret_field": 1}))
    (workspace / "linked.json").symlink_to(outside / "conf3.json")  # a link in the workspace that leads out
    (workspace / "inside.json").write_text(json.dumps({"model": {"n_layer": KEY}}))
    # the tokenizer names a builtin corpus: home/corpus/builtin-TOKENIZER-vN; a real corpus lies outside, at .../x/real-vN
    (home / "corpus" / "builtin-byte").mkdir()
    from pretrainlab.data.shards import FORMAT_VERSION

    (outside / f"real-v{FORMAT_VERSION}").symlink_to(home / "corpus" / "sample")
    walk = "byte/" + "../" * 20 + str(outside / "real").lstrip("/")
    results = _calls(workspace, home, db, [
        ("research_start", {"recipe": str(outside / "conf3.json")}),
        ("research_start", {"recipe": str(outside / "missing.json")}),  # the same answer: no probing for which files exist
        ("research_start", {"recipe": "linked.json"}),
        ("research_start", {"recipe": "inside.json"}),  # inside: read, and its error masked as results are
        ("list_runs", {"status": f"ANTHROPIC_API_KEY={KEY}"}),
        ("corpus_report", {"tokenizer": walk}),
        ("corpus_report", {"tokenizer": "bpe:300"}),  # a tokenizer name: its builtin corpus is not prepared
    ])
    outside_file, missing, linked, inside, status, walked, not_prepared = (_text(r) for r in results)
    assert all(r.is_error for r in results)
    for text in (outside_file, missing, linked):
        assert "inside the workspace" in text and "n_layer" not in text and "secret_field" not in text
    assert outside_file.replace(str(outside / "conf3.json"), "") == missing.replace(str(outside / "missing.json"), "")
    assert KEY not in inside and REDACTED in inside and "n_layer" in inside
    assert KEY not in status and REDACTED in status
    assert "tokenizer" in walked and "pattern" in walked and "num_docs" not in walked
    assert "corpus not found" in not_prepared and str(home / "corpus") in not_prepared
    assert [c["id"] for c in api.research_status(db=db)] == [cid]  # nothing was started


def test_over_mcp_a_campaign_trains_only_on_a_corpus_in_reach(lab, tmp_path, corpus_dir):
    """A prepared corpus outside the workspace and the corpus home, named by an override or by a recipe file in the
    workspace, is refused before anything starts (its documents would come back through the runs' samples)."""
    workspace, home, db, cid = lab
    outside = tmp_path / "elsewhere"
    outside.symlink_to(corpus_dir)  # a real prepared corpus, out of reach
    (workspace / "sneaky.json").write_text(json.dumps({"data": {"corpus": str(outside)}}))
    results = _calls(workspace, home, db, [
        ("research_start", {"overrides": [f"data.corpus={outside}"]}),
        ("research_start", {"overrides": [f"data.corpus = {outside}"]}),
        ("research_start", {"recipe": "sneaky.json"}),
    ])
    for result in results:
        assert result.is_error and "over MCP a campaign trains on 'builtin' or a prepared corpus inside" in _text(result), _text(result)
    assert [c["id"] for c in api.research_status(db=db)] == [cid]  # nothing was started


def test_a_tokenizer_is_a_name_never_a_path(tmp_path, monkeypatch):
    (tmp_path / "corpus" / "builtin-byte").mkdir(parents=True)
    monkeypatch.setenv("PRETRAINLAB_HOME", str(tmp_path))
    for bad in ("byte/../../../etc", "../x", "byte-v2/../..", "bpe:8192/.."):
        with pytest.raises(UserError, match="unknown tokenizer"):
            api.corpus_info(tokenizer=bad)
    with pytest.raises(UserError, match="corpus not found"):
        api.corpus_info(tokenizer="bpe:8192")


def test_numbers_are_never_masked_and_secrets_always_are():
    shown = redact({"bytes_per_token": 3.9, "train_bytes_per_token": 4.1, "flops_per_token": 12345, "num_tokens": 7,
                    "api_key": "abc", "token": "xyz", "password": "hunter2", "settings": {"auth_token": "t0k"},
                    "credentials": {"user": "bob", "port": 5432}, "note": f"export ANTHROPIC_API_KEY={KEY}",
                    "ledger": "postgresql://lab:hunter2@db.example:5432/lab", "hf": "hf_abcdefghijklmnopqrstuvwx",
                    "tokenizer": "byte", "empty_token": None, "is_secret": True})
    assert shown["bytes_per_token"] == 3.9 and shown["train_bytes_per_token"] == 4.1 and shown["flops_per_token"] == 12345
    assert shown["num_tokens"] == 7 and shown["tokenizer"] == "byte" and shown["empty_token"] is None and shown["is_secret"] is True
    assert shown["api_key"] == shown["token"] == shown["password"] == shown["settings"]["auth_token"] == REDACTED
    assert shown["credentials"] == {"user": REDACTED, "port": 5432}
    assert KEY not in shown["note"] and shown["hf"] == REDACTED
    assert shown["ledger"] == f"postgresql://lab:{REDACTED}@db.example:5432/lab"
    assert scrub("sqlite:///runs/pretrainlab.db and https://example.com/a") == "sqlite:///runs/pretrainlab.db and https://example.com/a"


def test_corpus_report_over_mcp_shows_bytes_per_token(lab):
    workspace, home, db, _ = lab
    (report,) = _calls(workspace, home, db, [("corpus_report", {"corpus": "sample"})])
    assert not report.is_error, _text(report)
    info = json.loads(_text(report))
    assert all(isinstance(split["bytes_per_token"], float) for parts in info["domains"].values() for split in parts.values())


def test_campaign_filters_take_a_prefix_and_refuse_an_unknown_one(lab, monkeypatch):
    workspace, home, db, cid = lab
    runs = api.list_runs(db=db)
    assert [r["run_id"] for r in api.list_runs(campaign=cid[:3], db=db)] == [r["run_id"] for r in runs] and runs
    assert len(api.list_runs(campaign=api.research_status(cid, db=db)["name"], db=db)) == len(runs)  # a name, as before
    with pytest.raises(UserError, match="no campaign 'zzz'"):
        api.list_runs(campaign="zzz", db=db)
    with pytest.raises(UserError, match="no campaign 'zzz'"):
        api.scaling_fit(campaign="zzz", db=db)
    with Ledger(db) as lg:  # 17 ids over 16 hex digits: two share their first
        ids = [cid] + [lg.create_campaign(f"c{i}", goal="x", config={}) for i in range(16)]
    shared = next(i[0] for i in ids if sum(j.startswith(i[0]) for j in ids) > 1)
    with pytest.raises(UserError, match="give more of the id"):
        api.list_runs(campaign=shared, db=db)
    done = cli("runs", "list", "--campaign", cid[:4], "--json", "--db", db)
    assert done.returncode == 0 and len(json.loads(done.stdout)) == len(runs)
    results = _calls(workspace, home, db, [("list_runs", {"campaign": cid[:4]}), ("list_runs", {"campaign": "zzz"}),
                                           ("list_runs", {"status": "crashed"})])
    prefixed, unknown, empty = results
    assert len(json.loads(_text(prefixed))) == len(runs)
    assert unknown.is_error and "no campaign 'zzz'" in _text(unknown)
    assert not empty.is_error and json.loads(_text(empty)) == []  # a client that reads only text sees an empty list


def test_integers_out_of_range_are_one_line_errors(lab):
    workspace, home, db, cid = lab
    for limit in (-1, 10**23):
        with pytest.raises(UserError, match=r"limit .*from 0 to 1,000,000,000"):
            api.list_runs(limit=limit, db=db)
    for args in (["runs", "list", "--limit", str(10**23), "--json"], ["runs", "list", "--limit", "-1"],
                 ["runs", "export", "x.csv", "--limit", "-1"], ["scaling", "fit", "--campaign", cid, "--bootstrap", str(10**20)]):
        done = cli(*args, "--db", db)
        assert done.returncode == 2 and "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert ("--limit" if "--limit" in args else "--bootstrap") in done.stderr
    results = _calls(workspace, home, db, [("list_runs", {"limit": 10**23}), ("list_runs", {"limit": -1}),
                                           ("scaling_fit", {"campaign": cid, "num_bootstrap": 10**20})])
    assert all(r.is_error and "\n" not in _text(r) for r in results)
    too_large, negative, bootstrap = (_text(r) for r in results)
    assert "limit" in too_large and "less than or equal to 1000000000" in too_large
    assert "limit" in negative and "greater than or equal to 0" in negative and "num_bootstrap" in bootstrap


def test_tool_schemas_list_the_allowed_values_and_errors_name_tool_arguments(lab):
    from pretrainlab.ledger.rundir import RUN_STATUSES
    from pretrainlab.mcp_server import build_server
    from pretrainlab.research.strategies import STRATEGIES
    from pretrainlab.runners import RUNNERS
    from pretrainlab.scaling.points import PARAM_COUNTS

    tools = {t.name: t for t in asyncio.run(build_server().list_tools())}
    start = tools["research_start"].input_schema["properties"]
    assert start["strategy"]["enum"] == ["auto", "claude", "openai", *STRATEGIES] and start["runner"]["enum"] == list(RUNNERS)
    assert start["decision"]["enum"] == ["screen", "paired", "welch", "greedy"] and start["goal"]["const"] == "val_bpb"
    assert "comma-separated" not in start["gpus"]["description"] and "[0, 1, 2, 3]" in start["gpus"]["description"]
    assert "--runner" not in start["slurm_partition"]["description"]
    assert tools["scaling_fit"].input_schema["properties"]["params"]["enum"] == list(PARAM_COUNTS)
    assert tools["corpus_report"].input_schema["properties"]["tokenizer"]["pattern"]
    assert all(s in tools["list_runs"].description for s in RUN_STATUSES)

    workspace, home, db, cid = lab
    results = _calls(workspace, home, db, [
        ("research_suggest", {"campaign": cid, "hypothesis": "nothing"}),
        ("research_suggest", {"campaign": cid, "hypothesis": "bad toml", "data_recipe_toml": "[[steps]\nx ="}),
        ("research_start", {"recipe": "tiny-cpu", "budget_runs": 1}),
        ("list_runs", {"recipe_filter": ["nope"]}),
        ("research_start", {"strategy": "gpt"}),
    ])
    nothing, bad_toml, budget, bad_filter, strategy = (_text(r) for r in results)
    assert all(r.is_error for r in results)
    assert "overrides" in nothing and "data_recipe_toml" in nothing and "--set" not in nothing
    assert "data_recipe_toml is not valid TOML" in bad_toml and "/tmp" not in bad_toml and "steps.toml" not in bad_toml
    assert "budget_runs 1" in budget and "--budget-runs" not in budget
    assert "recipe_filter" in bad_filter and "--recipe" not in bad_filter
    assert "strategy" in strategy and "optuna" in strategy


def test_look_alike_author_names_are_refused_and_stop_records_its_author(lab, monkeypatch):
    _, _, db, cid = lab
    for name in ("mcp:x", "MCP:x", "mcp：x", "ｍｃｐ:x", "mcp∶x", "m\u200bcp:x", " mcp :x", "mср:x"):
        with pytest.raises(UserError, match="MCP server records"):
            api.check_person(name)
    assert api.check_person("Zoë") == "Zoë" and api.check_person("ﬁona") == "fiona"  # NFKC
    done = cli("research", "stop", cid, "--author", "mcp：x", "--db", db)
    assert done.returncode == 2 and "MCP server records" in done.stderr

    from pretrainlab.cli import main

    with Ledger(db) as lg:
        lg.set_campaign_status(cid, "running")
    assert main(["research", "stop", cid, "--author", "alice", "--db", db]) == 0
    with Ledger(db) as lg:
        lg.set_campaign_status(cid, "running")
    monkeypatch.setenv("PRETRAINLAB_AUTHOR", "bob")  # the default author, as other commands have it
    assert main(["research", "stop", cid, "--db", db]) == 0
    notes = api.research_log(cid, db=db, as_record=True)["notes"]
    assert {n["author"] for n in notes if n["text"] == "stop requested"} == {"alice", "bob"}


def test_a_json_review_of_the_cli_found_these(tmp_path, monkeypatch, capsys):
    """From a review of every read command's --json and bad arguments: a ladder of a trillion seeds was planned until
    memory ran out; `scaling ladder --resume` refused flags nobody gave (their defaults); `runs export` wrote NaN and
    Infinity into its JSON file; `doctor FILE` said "no data" with exit 0; campaigns were found by name in
    `runs list` but not in `research status`, `log`, `report` or `doctor --campaign`; `research stop PREFIX --json`
    echoed the prefix; an empty run id meant the current directory; a 100,000-character reason was recorded; an empty
    filter matched everything; `train --out FILE` said "not writable"; a missing BPE corpus pointed at the byte one's
    command."""
    from pretrainlab.cli import main
    from pretrainlab.ledger.export import write_export
    from pretrainlab.ledger.store import MAX_TEXT
    from pretrainlab.research import manage
    from pretrainlab.research.config import LadderConfig

    monkeypatch.setenv("PRETRAINLAB_WORKSPACE", str(tmp_path / "ws"))
    monkeypatch.delenv("PRETRAINLAB_DB", raising=False)
    with pytest.raises(UserError, match="--seeds must be from 1 to 100"):
        LadderConfig(seeds=999_999_999_999)
    with pytest.raises(UserError) as e:  # only the ladder's absence is wrong: the defaults are no flags given
        api.scaling_ladder(None, [], resume="nope", run_memory="auto", run_disk="auto", seeds=1)
    assert "do not apply" not in str(e.value) and "does not apply" not in str(e.value)
    with pytest.raises(UserError, match="--run-memory does not apply"):
        api.scaling_ladder(None, [], resume="nope", run_memory="2G")

    out = write_export([{"run_id": "r", "val_bpb": float("nan"), "summary": {"code": float("-inf")}}], "json", tmp_path / "x.json")
    assert out["num_runs"] == 1
    assert json.loads((tmp_path / "x.json").read_text(), parse_constant=lambda c: pytest.fail(c)) == [
        {"run_id": "r", "val_bpb": None, "summary": {"code": None}}]

    (tmp_path / "a.txt").write_text("x")
    assert main(["doctor", str(tmp_path / "a.txt"), "--json"]) == 2
    assert "is a file, not a run directory" in capsys.readouterr().err

    ledger = Ledger()
    first = ledger.create_campaign("sweep-a", status="done")
    assert manage.find_campaign(ledger, "sweep-a")["id"] == first and manage.find_campaign(ledger, first[:5])["id"] == first
    ledger.create_campaign("twin", status="done"), ledger.create_campaign("twin", status="done")
    with pytest.raises(UserError, match="'twin' is ambiguous: it names 2 campaigns"):
        manage.find_campaign(ledger, "twin")
    with pytest.raises(UserError, match="no campaign ''"):
        manage.find_campaign(ledger, "")
    assert main(["research", "stop", first[:6], "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"campaign": first, "status": "done"}
    with pytest.raises(UserError, match="an empty run"):
        ledger.resolve_run("  ")
    with pytest.raises(UserError, match=f"keep it under {MAX_TEXT:,}"):
        ledger.add_note("x" * (MAX_TEXT + 1), author="ana", campaign_id=first)
    with pytest.raises(UserError, match="--status '': give a value"):
        api.list_runs(status="")
    with pytest.raises(UserError, match="--recipe model.n_layer=abc: model.n_layer expects an integer"):  # matched nothing
        api.list_runs(recipe=["model.n_layer=abc"])
    from pretrainlab.data import Corpus
    from pretrainlab.train.trainer import prepare_run_dir

    with pytest.raises(UserError, match="is a file, not a directory"):
        prepare_run_dir(tmp_path / "a.txt")
    with pytest.raises(UserError, match=r"data prepare --builtin --tokenizer bpe:512"):  # not the byte corpus's command
        Corpus.open(tmp_path / "builtin-bpe512-v2")
