"""`pretrainlab mcp`, driven the way Claude Code drives it: the official MCP SDK's client
launches the server as a subprocess and talks to it over stdio, or reaches it over
streamable HTTP. The tools read a real ledger (a campaign on the simulated runner, a real
trained run); a real tiny campaign is started through research_start, which returns at once,
and watched to the end through the other transport; what a client does is recorded under
the name it gave in its handshake; bad input comes back as an error result with the CLI's
one-line message; a report is never written outside the workspace or the temp folder; off
loopback the HTTP server wants its bearer token."""

import asyncio
import json
import os
import shutil
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager

import pytest
from conftest import tiny_overrides

from pretrainlab import api
from pretrainlab.ledger import Ledger
from pretrainlab.research.campaign import CampaignConfig
from pretrainlab.research.simulate import Landscape, simulate

mcp = pytest.importorskip("mcp")
import httpx2  # noqa: E402  (the SDK's HTTP client)
from mcp import Client, MCPError  # noqa: E402
from mcp.client.stdio import StdioServerParameters  # noqa: E402
from mcp.client.streamable_http import streamable_http_client  # noqa: E402
from mcp_types import Implementation  # noqa: E402

SECRET = "sk-ant-test-do-not-leak"
TOKEN = "test-bearer-token-do-not-leak"
CLAUDE_CODE = Implementation(name="claude-code", version="1.2")
DESKTOP = Implementation(name="claude-desktop", version="0.9")


def _text(result) -> str:
    return "".join(getattr(c, "text", "") for c in result.content)


def _data(result):
    """A tool's result as data: structured when the SDK gives it, else the JSON text."""
    if result.structured_content is not None:
        value = result.structured_content
        return value.get("result", value) if isinstance(value, dict) and set(value) == {"result"} else value
    return json.loads(_text(result))


def _env(workspace, **extra) -> dict:
    return {**os.environ, "PRETRAINLAB_WORKSPACE": str(workspace), "ANTHROPIC_API_KEY": SECRET, "PYTHONUNBUFFERED": "1", **extra}


def _stdio(env, db: str | None = None, client_info=CLAUDE_CODE) -> Client:
    args = ["-m", "pretrainlab", "mcp", *(["--db", db] if db else [])]
    return Client(StdioServerParameters(command=sys.executable, args=args, env=env), client_info=client_info)


def _http(url: str, token: str | None = None, client_info=CLAUDE_CODE) -> Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    transport = streamable_http_client(url, http_client=httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=300)))
    return Client(transport, client_info=client_info)


@contextmanager
def _http_server(env, *args):
    """`pretrainlab mcp --http --port 0 ARGS` in the background: yields (url, its stderr lines)."""
    proc = subprocess.Popen([sys.executable, "-m", "pretrainlab", "mcp", "--http", "--port", "0", *args], env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines, serving = [], threading.Event()

    def drain():  # keep reading, so the server never blocks on a full pipe
        for line in proc.stderr:
            lines.append(line)
            if "serving http" in line:
                serving.set()
        serving.set()

    threading.Thread(target=drain, daemon=True).start()
    try:
        assert serving.wait(60) and proc.poll() is None, "".join(lines)
        yield re.search(r"http://\S+/mcp", "".join(lines)).group(0), lines
    finally:
        proc.terminate()
        proc.wait(15)


def test_the_lab_through_the_mcp_client(corpus_dir, tmp_path):
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    (workspace / "var").symlink_to("/var")
    home = tmp_path / "home"
    (home / "corpus").mkdir(parents=True)
    (home / "corpus" / "sample").symlink_to(corpus_dir)  # a prepared corpus in the lab's corpus home
    sim = simulate(CampaignConfig(recipe="tiny-cpu", budget_runs=8, strategy="random", seeds=2), Landscape(seed=0), tmp_path / "sim")
    db_url = f"sqlite:///{tmp_path / 'sim' / 'ledger.db'}"
    run_dir, _ = api.train_run("tiny-cpu", tiny_overrides(corpus_dir, **{"budget.tokens": 4096}), tmp_path / "run", echo=False, db=db_url)
    run_id = api.show_run(str(run_dir), db=db_url)["run_id"]
    api.note_run(run_id, "rerun with ANTHROPIC_API_KEY=sk-ant-api03-abcdefghijklmnop set", author="bob", db=db_url)
    cid = sim["campaign_id"]
    experiments = api.research_status(cid, db=db_url)["experiments"]
    baseline, other = experiments[0]["experiment"], experiments[1]["experiment"]
    kept = next(e["experiment"] for e in experiments if e["role"] != "baseline" and e["verdict"] == "keep")
    Ledger(db_url).set_campaign_status(cid, "running")  # a live campaign, for research_stop to stop
    author = "mcp:claude-code/1.2"

    async def session():
        async with _stdio(_env(workspace, PRETRAINLAB_HOME=str(home)), db_url) as client:
            tools = sorted(t.name for t in (await client.list_tools()).tools)
            templates = sorted(t.uri_template for t in (await client.list_resource_templates()).resource_templates)
            prompts = sorted(p.name for p in (await client.list_prompts()).prompts)
            calls = [
                ("list_recipes", {}),
                ("research_status", {"campaign": cid}),
                ("research_log", {"campaign": cid}),
                ("research_suggest", {"campaign": cid, "hypothesis": "a deeper model helps", "overrides": ["model.n_layer=6"]}),
                ("research_reject", {"experiment": kept, "reason": "seed 1 looked odd"}),  # overturns a keep: needs a reason
                ("research_approve", {"experiment": other, "reason": "worth a second look"}),  # overturns a discard: needs a reason
                ("list_runs", {"status": "ok"}),
                ("diagnose_run", {"run": str(run_dir)}),
                ("diagnose_campaign", {"campaign": cid}),
                ("research_report", {"campaign": cid}),
                ("research_report", {"campaign": cid, "out": str(tmp_path / "elsewhere" / "report.html")}),
                ("research_stop", {"campaign": cid}),
                # bad input
                ("research_status", {"campaign": "no-such-campaign"}),
                ("research_suggest", {"campaign": cid, "hypothesis": "bad", "overrides": ["model.nope=1"]}),
                ("show_run", {"run": "zzzz"}),
                ("research_start", {"recipe": "no-such-recipe"}),
                ("research_start", {"recipe": "tiny-cpu", "budget_runs": 1}),
                ("research_start", {"recipe": "tiny-cpu", "spend_cap_usd": 1000}),
                ("research_report", {"campaign": cid, "out": "/etc/pretrainlab-report.html"}),
                ("research_report", {"campaign": cid, "out": "../" * 40 + "pretrainlab-outside.html"}),
                ("research_report", {"campaign": cid, "out": "var/report.html"}),  # a link in the workspace that leads out
                ("research_report", {"campaign": cid, "out": "notes.txt"}),
                ("research_start", {"recipe": "tiny-cpu", "spend_cap_usd": "nan"}),  # NaN is above nothing: refused all the same
                ("list_runs", {"limit": "abc"}),  # the wrong type: one line naming the argument
                ("show_run", {"run": "x" * 100_000}),  # too long to be a path
                ("diagnose_run", {"run": "/etc"}),  # the server's files are not the client's to read
                ("diagnose_run", {"run": str(run_dir), "baseline": str(tmp_path)}),
                ("corpus_report", {"corpus": "/etc"}),
                ("data_why", {"corpus": "../" * 20 + "etc", "document": "passwd"}),
                ("show_run", {"run": run_id}),  # its note quotes a key: masked, as on the dashboard
            ]
            results = [await client.call_tool(name, args) for name, args in calls]
            unknown = []
            for args in ({"recipe": "tiny-cpu", "budget_run": 4}, {"llm_base_url": "http://attacker.example/v1"}):
                with pytest.raises(MCPError) as err:  # an argument the tool does not have is refused, not dropped
                    await client.call_tool("research_start", args)
                unknown.append(err.value.message)
            resources = [(await client.read_resource(uri)).contents[0] for uri in
                         (f"run://{run_id}/summary", f"campaign://{cid}/log", "corpus://sample/report")]
            with pytest.raises(MCPError) as no_run:
                await client.read_resource("run://zzzz/summary")
            review = await client.get_prompt("review_campaign", {"campaign": cid})
            diagnose = await client.get_prompt("review_run", {"run": run_id})
            with pytest.raises(MCPError) as no_campaign_prompt:
                await client.get_prompt("review_campaign", {"campaign": "no-such-campaign"})
            return tools, templates, prompts, results, unknown, resources, no_run.value, review, diagnose, no_campaign_prompt.value

    tools, templates, prompts, results, unknown, resources, no_run, review, diagnose, no_campaign_prompt = asyncio.run(session())
    assert tools == sorted(["list_recipes", "list_runs", "show_run", "compare_runs", "diagnose_run", "diagnose_campaign", "research_start", "research_status",
                            "research_log", "research_report", "research_suggest", "research_approve", "research_reject",
                            "research_stop", "corpus_report", "data_why", "scaling_fit"])
    assert templates == ["campaign://{campaign}/log", "corpus://{name}/report", "run://{run}/summary"]
    assert prompts == ["review_campaign", "review_run"]
    recipes, status, log, suggested, rejected, approved, runs, findings, campaign_findings, report, outside_workspace, stopped, *bad = results
    assert not any(r.is_error for r in results[:12]), [_text(r) for r in results[:12] if r.is_error]

    assert "tiny-cpu" in {r["name"] for r in _data(recipes)}
    assert _data(status)["campaign"] == cid and _data(status)["experiments"][0]["experiment"] == baseline
    assert "# Research log" in _data(log)
    assert str(run_dir) in {r["run_dir"] for r in _data(runs)}
    assert _data(findings)["facts"]["status"] == "ok"
    assert _data(campaign_findings)["kind"] == "pretrainlab.doctor.campaign_report" and _data(campaign_findings)["campaign"] == cid
    # the report: written where asked inside the workspace (default runs/campaigns/ID/) or the temp folder, with the log
    written = _data(report)
    assert written["report"] == str((workspace / "runs" / "campaigns" / cid / "report.html").resolve())
    assert "<svg" in open(written["report"]).read() and written["log"].startswith("# Research log")
    assert os.path.isfile(_data(outside_workspace)["report"])  # tmp_path is under the temp folder

    # what the client does is recorded as the client's, named from its handshake
    queued = next(e for e in api.research_status(cid, db=db_url)["experiments"] if e["experiment"] == _data(suggested)["experiment"])
    assert queued["proposer"] == author and queued["status"] == "queued"
    assert {k: v for k, v in _data(rejected).items() if k != "warning"} == {
        "experiment": kept, "action": "reject", "author": author, "reason": "seed 1 looked odd", "status": "decided", "decision": "discard"}
    assert "over the statistics' keep" in _data(rejected)["warning"]
    assert _data(approved)["decision"] == "keep" and _data(approved)["author"] == author
    record = api.research_log(cid, db=db_url, as_record=True)
    assert f"**discard** by {author}" in record["markdown"] and f"**keep** by {author}" in record["markdown"]
    assert _data(stopped) == {"campaign": cid, "status": "stopping"}
    assert any(n["author"] == author and n["text"] == "stop requested" for n in record["notes"])

    # bad input: an error result with the CLI's one-line message, no traceback, and the server lives on
    *bad, noted_run = bad
    (no_campaign, bad_key, no_run_tool, bad_recipe, bad_budget, spend, etc_path, escape, linked, not_html, nan_cap, bad_type, long_ref,
     etc_run, etc_baseline, etc_corpus, up_corpus) = bad
    assert all(r.is_error and "\n" not in _text(r) and "Traceback" not in _text(r) for r in bad), [(r.is_error, _text(r)[:150]) for r in bad if not r.is_error or "\n" in _text(r)]
    assert "spend_cap_usd" in _text(nan_cap) and "limit" in _text(bad_type) and "abc" in _text(bad_type)
    assert "no run 'xxxx" in _text(long_ref) and len(_text(long_ref)) < 1000
    assert all("name a run by its id" in _text(r) for r in (etc_run, etc_baseline))
    assert all("name a corpus by its folder" in _text(r) for r in (etc_corpus, up_corpus))
    assert not noted_run.is_error and "sk-ant-api03-abcdefghijklmnop" not in _text(noted_run) and "[redacted]" in _text(noted_run)
    assert "no campaign 'no-such-campaign'" in _text(no_campaign)
    assert "unknown config key 'model.nope'" in _text(bad_key)
    assert "zzzz" in _text(no_run_tool)
    assert "unknown recipe 'no-such-recipe'" in _text(bad_recipe) and "budget_runs 1" in _text(bad_budget)
    assert "spend_cap_usd" in _text(spend) and "can only be lowered" in _text(spend)
    assert all("inside the workspace" in _text(r) for r in (etc_path, escape, linked)) and ".html" in _text(not_html)
    assert not any(os.path.exists(p) for p in ("/etc/pretrainlab-report.html", "/pretrainlab-outside.html", "/var/report.html"))
    assert "budget_run" in unknown[0] and "budget_runs" in unknown[0]
    assert "llm_base_url" in unknown[1] and "ANTHROPIC_BASE_URL" in unknown[1]
    assert [c["id"] for c in api.research_status(db=db_url)] == [cid]  # no campaign was started by any of it

    # resources: a run's summary, the research log, a corpus report by name
    summary, campaign_log, corpus = resources
    assert json.loads(summary.text)["run_id"] == run_id and json.loads(summary.text)["summary"]["status"] == "ok"
    assert campaign_log.mime_type == "text/markdown" and campaign_log.text.startswith("# Research log") and cid in campaign_log.text
    assert os.path.realpath(json.loads(corpus.text)["path"]) == os.path.realpath(corpus_dir) and json.loads(corpus.text)["domains"]
    assert "zzzz" in no_run.message

    # prompts: instructions naming the campaign and the checks, with the log attached
    text, attached = review.messages[0].content.text, review.messages[1].content.resource
    assert cid in text and "95% CI" in text and "diagnose_run" in text and "research_suggest" in text
    assert attached.uri == f"campaign://{cid}/log" and attached.text.startswith("# Research log")
    assert run_id in diagnose.messages[0].content.text and "diagnose_run" in diagnose.messages[0].content.text
    assert "no campaign 'no-such-campaign'" in no_campaign_prompt.message

    replies = [_text(r) for r in results] + unknown + [r.text for r in resources] + [text, attached.text]
    assert all(SECRET not in r for r in replies)  # the server's environment never reaches a reply


def test_a_real_campaign_started_over_http_and_watched_over_stdio(corpus_dir, ledger_workspace):
    """research_start returns at once; the loop runs in a background process that outlives the
    server that started it; another client polls it to the end over stdio."""
    workspace = ledger_workspace
    shutil.copytree(corpus_dir, workspace / "corpus")  # over MCP a campaign's corpus lies in the workspace or the corpus home
    settings = {"recipe": "tiny-cpu", "overrides": tiny_overrides(workspace / "corpus"), "run_budget": "2048tok", "budget_runs": 2, "seeds": 1,
                "parallel": 1, "decision": "greedy", "strategy": "random", "early_stop": False, "name": "over mcp"}

    async def start(url):
        async with _http(url, TOKEN) as client:
            result = await client.call_tool("research_start", settings)
            assert not result.is_error, _text(result)
            started = _data(result)
            environ = open(f"/proc/{started['pid']}/environ", "rb").read() if os.path.exists("/proc") else b""
            status = _data(await client.call_tool("research_status", {"campaign": started["campaign"]}))
            return started, environ, status

    async def watch(cid):
        async with _stdio(_env(workspace), client_info=DESKTOP) as client:
            deadline = time.monotonic() + 240
            while (status := _data(await client.call_tool("research_status", {"campaign": cid})))["status"] not in ("done", "stopped"):
                assert time.monotonic() < deadline, status
                await asyncio.sleep(1)
            runs = _data(await client.call_tool("list_runs", {"campaign": cid}))
            summary = json.loads((await client.read_resource(f"run://{runs[0]['run_id']}/summary")).contents[0].text)
            log = (await client.read_resource(f"campaign://{cid}/log")).contents[0].text
            report = _data(await client.call_tool("research_report", {"campaign": cid}))
            rejected = _data(await client.call_tool("research_reject", {"experiment": status["experiments"][1]["experiment"],
                                                                         "reason": "one seed is not evidence"}))
            review = await client.get_prompt("review_campaign", {"campaign": cid})
            return status, runs, summary, log, report, rejected, review

    with _http_server(_env(workspace, PRETRAINLAB_MCP_TOKEN=TOKEN)) as (url, server_log):
        started, environ, running = asyncio.run(start(url))
    cid = started["campaign"]
    try:
        # it came back at once: the loop is running in its own process, recorded as started by the client
        assert started["status"] == "running" and started["started_by"] == "mcp:claude-code/1.2" and started["name"] == "over mcp"
        assert started["log"] == str(workspace.resolve() / "runs" / "campaigns" / cid / "loop.log")
        assert running["status"] == "running" and running["loop"]["pid"] == started["pid"] and running["loop"]["alive"]
        if environ:  # the loop has the server's environment, less the server's own bearer token
            assert f"PRETRAINLAB_WORKSPACE={workspace.resolve()}".encode() in environ and TOKEN.encode() not in environ
        status, runs, summary, log, report, rejected, review = asyncio.run(watch(cid))
    finally:
        if os.path.exists(f"/proc/{started['pid']}") and api.research_status(cid)["status"] not in ("done", "stopped"):
            os.killpg(started["pid"], signal.SIGKILL)

    assert status["status"] == "done" and status["runs"] == 2 and len(runs) == 2
    assert summary["status"] == "ok" and summary["campaign_id"] == cid and summary["val_bpb"] > 0
    assert "by mcp:claude-code/1.2" in log.splitlines()[2] and "seed 0 ok" in log
    assert os.path.isfile(report["report"]) and report["log"].startswith("# Research log")
    assert rejected["author"] == "mcp:claude-desktop/0.9" and rejected["decision"] == "discard"
    assert cid in review.messages[0].content.text
    row = api.research_log(cid, as_record=True)
    assert row["campaign"]["config"]["started_by"] == "mcp:claude-code/1.2"
    assert row["campaign"]["config"]["campaign"]["spend_cap_usd"] == CampaignConfig().spend_cap_usd  # the lab's caps apply
    assert "**discard** by mcp:claude-desktop/0.9" in row["markdown"]
    assert "closed done" in open(started["log"]).read()  # the loop's own output, in the workspace
    assert all(TOKEN not in line and SECRET not in line for line in server_log)


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="tells a zombie by /proc (Linux)")
def test_research_status_tells_a_dead_loop_from_a_live_one():
    """A campaign `running` whose loop process is gone (a crash, a kill) is not left for a
    client to poll forever: status says whether the process that runs its loop is alive."""
    import socket

    from pretrainlab.research.manage import loop_state

    here = socket.gethostname()
    exited = subprocess.Popen([sys.executable, "-c", "pass"])
    exited.wait()
    unreaped = subprocess.Popen([sys.executable, "-c", "pass"])  # a zombie until waited for
    deadline = time.monotonic() + 30
    while open(f"/proc/{unreaped.pid}/stat").read().rpartition(")")[2].split()[0] != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert loop_state({"pid": os.getpid(), "host": here})["alive"] is True
    assert loop_state({"pid": exited.pid, "host": here})["alive"] is False
    assert loop_state({"pid": unreaped.pid, "host": here})["alive"] is False
    assert loop_state({"pid": os.getpid(), "host": here + "-elsewhere"})["alive"] is None  # cannot tell from here
    assert loop_state(None) is None
    unreaped.wait()


def test_http_off_loopback_wants_the_bearer_token(tmp_path):
    with _http_server(_env(tmp_path), "--host", "0.0.0.0") as (url, lines):
        token = re.search(r"bearer token (\S+)", "".join(lines)).group(1)
        local = url.replace("0.0.0.0", "127.0.0.1")
        for header in ({}, {"Authorization": "Bearer wrong"}):
            request = urllib.request.Request(local, data=b"{}", headers={"Content-Type": "application/json", **header})
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(request, timeout=30)
            assert refused.value.code == 401

        async def list_tools():
            async with _http(local, token) as client:
                return [t.name for t in (await client.list_tools()).tools]

        assert "research_start" in asyncio.run(list_tools())


def test_every_tool_is_a_cli_command_and_research_start_takes_its_flags():
    """One operation, two faces: each tool is a `pretrainlab` command, and research_start's
    arguments are `research start`'s flags (the CampaignConfig fields) less llm_base_url, ray_address, slurm_profile and
    slurm_account."""
    import dataclasses

    from pretrainlab.cli import build_parser
    from pretrainlab.mcp_server import build_server

    cli_of = {"list_recipes": "recipes", "list_runs": "runs list", "show_run": "runs show", "compare_runs": "runs compare",
              "diagnose_run": "doctor", "diagnose_campaign": "doctor", "research_start": "research start", "research_status": "research status",
              "research_log": "research log", "research_report": "report", "research_suggest": "research suggest",
              "research_approve": "research approve", "research_reject": "research reject", "research_stop": "research stop",
              "corpus_report": "data report", "data_why": "data why", "scaling_fit": "scaling fit"}

    def commands(parser, prefix=""):
        found = set()
        for action in parser._subparsers._group_actions if parser._subparsers else []:
            for name, sub in action.choices.items():
                found |= {f"{prefix}{name}"} | commands(sub, f"{prefix}{name} ")
        return found

    tools = {t.name: t for t in asyncio.run(build_server().list_tools())}
    assert set(tools) == set(cli_of) and set(cli_of.values()) <= commands(build_parser())
    fields = {f.name for f in dataclasses.fields(CampaignConfig)}
    assert set(tools["research_start"].input_schema["properties"]) == fields - {"llm_base_url", "ray_address", "slurm_profile", "slurm_account"} | {"name"}
    # the tools that only read say so (a client may run those without asking); the rest change the ledger or write a file
    assert {n for n, t in tools.items() if t.annotations.read_only_hint} == {n for n in cli_of if not n.startswith("research_")} | \
        {"research_status", "research_log"}
    budget = tools["research_start"].input_schema["properties"]["budget_runs"]
    assert budget["default"] == CampaignConfig().budget_runs and budget["description"].startswith("training runs in total")
