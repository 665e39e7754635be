"""`pretrainlab mcp`, driven the way Claude Code drives it: the official MCP SDK's client
launches the server as a subprocess and talks to it over stdio. The tools read a real
ledger (a campaign on the simulated runner, a real trained run), a person's suggestion and
review through them are recorded as that person's, and bad input comes back as an error
result with the CLI's one-line message."""

import asyncio
import json
import os
import sys

import pytest
from conftest import tiny_overrides

from pretrainlab import api
from pretrainlab.research.campaign import CampaignConfig
from pretrainlab.research.simulate import Landscape, simulate

mcp = pytest.importorskip("mcp")
from mcp import Client  # noqa: E402
from mcp.client.stdio import StdioServerParameters  # noqa: E402

SECRET = "sk-ant-test-do-not-leak"


def _text(result) -> str:
    return "".join(getattr(c, "text", "") for c in result.content)


def _data(result):
    """A tool's result as data: structured when the SDK gives it, else the JSON text."""
    if result.structured_content is not None:
        value = result.structured_content
        return value.get("result", value) if isinstance(value, dict) and set(value) == {"result"} else value
    return json.loads(_text(result))


async def _session(db_url: str, workspace, calls):
    env = {**os.environ, "PRETRAINLAB_WORKSPACE": str(workspace), "ANTHROPIC_API_KEY": SECRET}
    params = StdioServerParameters(command=sys.executable, args=["-m", "pretrainlab", "mcp", "--db", db_url], env=env)
    async with Client(params) as client:
        names = sorted(t.name for t in (await client.list_tools()).tools)
        return names, [await client.call_tool(name, args) for name, args in calls]


def test_the_lab_through_the_mcp_client(corpus_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("PRETRAINLAB_WORKSPACE", str(tmp_path))
    sim = simulate(CampaignConfig(recipe="tiny-cpu", budget_runs=8, strategy="random", seeds=2), Landscape(seed=0), tmp_path / "sim")
    db_url = f"sqlite:///{tmp_path / 'sim' / 'ledger.db'}"
    run_dir, _ = api.train_run("tiny-cpu", tiny_overrides(corpus_dir, **{"budget.tokens": 4096}), tmp_path / "run", echo=False, db=db_url)
    cid = sim["campaign_id"]
    baseline = api.research_status(cid, db=db_url)["experiments"][0]["experiment"]

    names, results = asyncio.run(_session(db_url, tmp_path, [
        ("list_recipes", {}),
        ("research_status", {"campaign": cid}),
        ("research_log", {"campaign": cid}),
        ("research_suggest", {"campaign": cid, "hypothesis": "a deeper model helps", "overrides": ["model.n_layer=6"],
                              "author": "alice"}),
        ("research_review", {"experiment": baseline, "approve": False, "reason": "seed 1 looked odd", "author": "bob"}),
        ("list_runs", {"status": "ok"}),
        ("diagnose_run", {"run": str(run_dir)}),
        ("research_status", {"campaign": "no-such-campaign"}),
        ("research_suggest", {"campaign": cid, "hypothesis": "bad", "overrides": ["model.nope=1"]}),
        ("show_run", {"run": "zzzz"}),
    ]))
    assert {"list_recipes", "list_runs", "show_run", "compare_runs", "diagnose_run", "research_status", "research_log",
            "research_suggest", "research_review", "research_stop", "corpus_report", "data_why"} <= set(names)
    recipes, status, log, suggested, reviewed, runs, findings, *bad = results
    assert not any(r.is_error for r in results[:7]), [_text(r) for r in results[:7] if r.is_error]

    assert "tiny-cpu" in {r["name"] for r in _data(recipes)}
    assert _data(status)["campaign"] == cid and _data(status)["experiments"][0]["experiment"] == baseline
    assert "# Research log" in _data(log)
    # a person's acts through the tools are recorded as theirs
    queued = next(e for e in api.research_status(cid, db=db_url)["experiments"] if e["experiment"] == _data(suggested)["experiment"])
    assert queued["proposer"] == "alice" and queued["status"] == "queued"
    assert _data(reviewed) == {"experiment": baseline, "action": "reject", "author": "bob", "reason": "seed 1 looked odd",
                               "status": "decided", "decision": "discard"}
    assert "**discard** by bob" in api.research_log(cid, db=db_url)
    assert str(run_dir) in {r["run_dir"] for r in _data(runs)}
    assert _data(findings)["facts"]["status"] == "ok"

    # bad input: an error result with the CLI's one-line message, no traceback, and the server lives on
    no_campaign, bad_key, no_run = bad
    assert no_campaign.is_error and "no campaign 'no-such-campaign'" in _text(no_campaign)
    assert bad_key.is_error and "unknown config key 'model.nope'" in _text(bad_key)
    assert no_run.is_error and "zzzz" in _text(no_run) and "Traceback" not in _text(no_run)
    assert all(SECRET not in _text(r) for r in results)  # the server's environment never reaches a reply
