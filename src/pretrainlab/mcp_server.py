"""The lab as an MCP server, for Claude Code and any other MCP client: `pretrainlab mcp`.

    claude mcp add pretrainlab -- pretrainlab mcp                     # stdio; the workspace is the current directory
    pretrainlab mcp --http                                            # streamable HTTP on http://127.0.0.1:8765/mcp
    claude mcp add --transport http pretrainlab http://127.0.0.1:8765/mcp

A face like the CLI: every tool is one `pretrainlab.api` call, so the tools read and write
the same ledger, run directories and corpora the CLI does, and a user mistake comes back as
the same one-line message (an error result the model reads), never a traceback.

- Tools: start, watch and steer campaigns (research_start returns at once with the id to
  poll: the loop runs in a background process of its own); list, show, compare and
  diagnose runs; the campaign report; corpus reports.
- Resources: run://{run}/summary, campaign://{campaign}/log, corpus://{name}/report.
- Prompts: review_campaign, review_run.

Attribution: what a client does is recorded as that client's act, named from its initialize
handshake as `mcp:NAME/VERSION` (e.g. mcp:claude-code/1.2): the campaigns it starts
(started_by), its suggestions (proposer), approvals and rejections (decided_by), stop requests.

What a model may not do through the arguments it chooses: write a report outside the
workspace or the temp folder; read a recipe file outside the workspace (nor learn whether one
exists); point a campaign's LLM at an endpoint of its choosing (the API key would go there:
llm_base_url is not a tool argument, the server's environment sets ANTHROPIC_BASE_URL /
OPENAI_BASE_URL); raise a campaign's LLM spend caps above the lab's defaults (a person does
that with `research resume --spend-cap-usd`). No tool returns the environment or an API key,
in a result or an error. Over HTTP the server binds 127.0.0.1; bound to any other address
it requires a bearer token (env PRETRAINLAB_MCP_TOKEN, else one made up and printed at
start), and the token is taken out of the environment so no process it starts inherits it.
"""

import dataclasses
import inspect
import ipaddress
import json
import os
import re
import secrets
import sys
import tempfile
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

from . import api
from .errors import UserError
from .redaction import redact, scrub

INSTRUCTIONS = (
    "pretrainlab: an AI research lab for LLM pre-training. Start a campaign with research_start (it returns at once with "
    "the campaign id; poll research_status until its status is done), read campaigns (research_status, research_log, "
    "research_report, diagnose_campaign), runs (list_runs, show_run, compare_runs, diagnose_run) and corpora (corpus_report, data_why); steer "
    "a campaign with research_suggest (a config change or a data recipe), research_approve / research_reject and "
    "research_stop; fit scaling laws to a ladder's or a campaign's runs (scaling_fit). Numbers are val_bpb (lower is better) as the lab scored them; effects come with 95% CIs. Resources: "
    "run://{run}/summary, campaign://{campaign}/log, corpus://{name}/report. Prompts: review_campaign, review_run."
)

DEFAULT_PORT = 8765
TOKEN_ENV = "PRETRAINLAB_MCP_TOKEN"
# campaign settings a model does not choose over MCP, and why
NOT_OVER_MCP = {"llm_base_url": "the LLM endpoint is the server's to set (env ANTHROPIC_BASE_URL / OPENAI_BASE_URL): it receives "
                                "the API key",
                "ray_address": "the Ray cluster is the server's to set (env RAY_ADDRESS): the lab runs its jobs there and "
                               "deserialises what it sends back",
                "slurm_profile": "a SLURM profile is a file on the server's machine: the server's to choose",
                "slurm_account": "the SLURM account the jobs are charged to is the server's to set"}
CAPPED = ("spend_cap_usd", "spend_cap_tokens")  # a model may lower these below the lab's defaults, not raise them
# CLI flags whose tool argument is not the flag's name with underscores (--set KEY=VALUE is research_start's overrides)
RENAMED_FLAGS = {"set": "overrides", "recipe": "recipe_filter", "data-recipe": "data_recipe_toml", "bootstrap": "num_bootstrap"}
# the builtin corpus a tokenizer names, as data.parse_tokenizer_spec reads it: never a path
TOKENIZER_PATTERN = r"^(byte|bpe:[0-9]+)$"


REVIEW_CAMPAIGN = """\
Review campaign {id} ("{name}", {status}: {runs} of {budget_runs} runs) of the pretrainlab lab, as a careful
pre-training researcher would. Its research log is attached (also the resource campaign://{id}/log).

1. Read the log and research_status("{id}"): each hypothesis, who proposed it, its runs and the decision.
2. Check every claim: is the effect's 95% CI clear of zero, over how many seeds, and is the effect larger than
   the seed noise of the baseline? Flag a keep decided on one seed or with a CI that touches zero, and a
   discard that had too few runs to find the effect.
3. Run diagnose_run on the runs behind each kept experiment and on any crashed, diverged or outlying run: do the
   doctor's findings (loss spikes, stalls, divergence, data problems) explain a result better than the change?
4. Say what the campaign established, with the numbers, and what it did not.
5. Suggest up to three next experiments: the hypothesis, the exact overrides (KEY=VALUE, see list_recipes and
   the recipe keys in the log) and why. Queue one with research_suggest only once the user agrees.
"""

REVIEW_RUN = """\
Diagnose run {run} of the pretrainlab lab{against}.

1. Read its summary (the resource run://{run}/summary, or show_run) for status, val_bpb, tokens and throughput.
2. Call diagnose_run("{run}"{baseline_arg}) and read each finding's cause, evidence and fix.
3. {compare}
4. Say what went wrong or right, how sure you are, and whether to rerun it with a change (the exact
   overrides KEY=VALUE) or to trust it as it is.
"""


def _plain(value: Any) -> Any:
    """JSON-safe data (paths, datetimes and the like as strings)."""
    return json.loads(json.dumps(value, default=str))


def client_author(ctx) -> str:
    """Who a request comes from, as the ledger records it: `mcp:NAME/VERSION` from the client's
    initialize handshake (or the request's envelope), "mcp" when the client does not say.
    The name is the client's own word: kept to a short run of plain characters."""
    params = ctx.session.client_params
    info = params.client_info if params is not None else None
    if info is None:
        return "mcp"
    name, version = (re.sub(r"[^A-Za-z0-9._+@-]+", "-", s or "").strip("-")[:64] for s in (info.name, info.version))
    return f"mcp:{name or 'client'}" + (f"/{version}" if version else "")


def _is_path(ref: str) -> bool:
    return "/" in ref or ref.startswith(("~", ".")) or ref in ("", ".", "..")


def _inside(ref: str, roots: list[Path]) -> Path | None:
    """The directory `ref` names (relative paths from the workspace, links followed), if it lies inside one of `roots`."""
    path = Path(ref).expanduser()
    try:
        path = (path if path.is_absolute() else api.workspace() / path).resolve()
        return path if path.is_dir() and any(path.is_relative_to(r.resolve()) for r in roots) else None
    except (OSError, RuntimeError):  # a name too long for the file system, a loop of links
        return None


def run_in_reach(ref: str, db: str | None) -> str:
    """A run as a client may name it for the doctor: an id (or unique prefix) from the ledger, a
    run directory the ledger has, or one inside the workspace (a live run not yet registered).
    Any other path is refused: over HTTP anyone holding the token would read the server's files
    through it."""
    if not _is_path(ref):
        return api.registered_run_dir(ref, db)
    root = api.workspace()
    path = _inside(ref, [root])
    if path is not None:
        return str(path)
    try:
        return api.registered_run_dir(ref, db)  # a directory the ledger has: a person registered it
    except UserError:
        raise UserError(f"run {ref[:200]!r}: name a run by its id (list_runs), or give a run directory inside the workspace "
                        f"({root}) or one in the ledger") from None


def corpus_in_reach(ref: str) -> str:
    """A corpus as a client may name it: its folder name in the lab's corpus home ('builtin' for
    the builtin corpus), or a directory inside the workspace or the corpus home."""
    if not _is_path(ref):
        return str(api.corpus_path(ref))
    homes = [api.workspace(), api.corpus_home()]
    path = _inside(ref, homes)
    if path is None:
        raise UserError(f"corpus {ref[:200]!r}: name a corpus by its folder in {homes[1]} (or 'builtin'), or give a directory "
                        f"inside the workspace ({homes[0]})")
    return str(path)


FLAG = re.compile(r"`[^`]*`|--([a-z][a-z0-9-]*)")


def as_arguments(text: str, arguments: set[str]) -> str:
    """A CLI-worded message or doc in the words of a tool: `--budget-runs` as budget_runs and
    `--set` as overrides where the tool has that argument; a command in backticks stays, it is
    for a person to type."""
    def name(m: re.Match) -> str:
        if m.group(1) is None:
            return m.group(0)
        flag = m.group(1)
        for candidate in (flag.replace("-", "_"), RENAMED_FLAGS.get(flag)):
            if candidate in arguments:
                return candidate
        return m.group(0)

    return FLAG.sub(name, text)


def corpus_override_in_reach(recipe: str, overrides: list[str]) -> list[str]:
    """research_start's overrides, with the corpus its recipe trains on (from the overrides or the recipe file) checked as
    corpus_in_reach checks a corpus and pinned by its resolved path: a client could otherwise train a campaign on a
    prepared corpus anywhere on the server, and read its documents back through the runs' samples and reports."""
    corpus = api.resolve_recipe(recipe, overrides).data.corpus
    if corpus == "builtin":
        return overrides
    try:
        where = corpus_in_reach(corpus)  # (a name: a corpus in the corpus home)
    except UserError:
        where = None
    if where is None:
        raise UserError(f"data.corpus {corpus[:200]!r}: over MCP a campaign trains on 'builtin' or a prepared corpus inside the "
                        f"workspace ({api.workspace()}) or the corpus home ({api.corpus_home()})")
    return [*overrides, f"data.corpus={where}"]


def recipe_in_reach(recipe: str) -> str:
    """research_start's recipe: a name, or a recipe.json inside the workspace (relative paths from
    there, links followed). Any other file is refused before it is opened: over HTTP anyone holding
    the token would otherwise read the server's JSON files through the errors, or learn which exist."""
    if not recipe.endswith(".json"):
        return recipe
    root = api.workspace().resolve()
    try:
        path = Path(recipe).expanduser()
        path = (path if path.is_absolute() else root / path).resolve()
    except (OSError, RuntimeError):  # a name too long for the file system, a loop of links
        path = None
    if path is None or not path.is_relative_to(root):
        raise UserError(f"recipe {recipe[:200]!r}: over MCP a recipe file is a .json inside the workspace ({root}; relative paths "
                        "are taken from there), or name a recipe (list_recipes)")
    return str(path)


def listing(rows: list):
    """A tool's list as one text block of JSON (`[]` when empty: a client that reads only text
    sees an empty list, not nothing) with the same structured content."""
    from mcp_types import CallToolResult, TextContent

    return CallToolResult(content=[TextContent(type="text", text=json.dumps(rows, indent=2))], structured_content={"result": rows})


def one_line(text: str) -> str:
    """An error as one line: argument validation's report (pydantic's: a header, then each field
    and its message on lines of their own, with a link) as `field: message (got VALUE)`."""
    lines = [ln for ln in text.splitlines() if ln.strip() and "errors.pydantic.dev" not in ln]
    if len(lines) < 2:
        return " ".join(lines)
    head, parts, field = lines[0].split(": ", 1)[0], [], None
    for ln in lines[1:]:
        if not ln.startswith(" "):
            field = ln.strip()
            continue
        message = re.sub(r"\s*\[type=[^,\]]*(?:, input_value=(.*?))?(?:, input_type=\w+)?\]$",
                         lambda m: f" (got {m.group(1)[:80]})" if m.group(1) else "", ln.strip())
        parts.append(f"{field}: {message}" if field else message)
    return f"{head}: {'; '.join(parts)}" if parts else " ".join(ln.strip() for ln in lines)


def report_path(out: str | None, campaign_id: str) -> Path:
    """Where research_report may write: an .html path inside the workspace (relative paths are
    taken from there) or the temp folder; links are followed before the check."""
    root = api.workspace().resolve()
    path = Path(out) if out else root / "runs" / "campaigns" / campaign_id / "report.html"
    path = (path if path.is_absolute() else root / path).resolve()
    temp = Path(tempfile.gettempdir()).resolve()
    if path.suffix.lower() not in (".html", ".htm"):
        raise UserError(f"out {out!r}: the report is one HTML page: give a path ending in .html")
    if not (path.is_relative_to(root) or path.is_relative_to(temp)):
        raise UserError(f"out {out!r}: a report is written inside the workspace ({root}) or the temp folder ({temp}); "
                        "a relative path is taken from the workspace")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _with_campaign_settings(fn):
    """Give `fn`, which takes the campaign settings as **settings, those settings as keyword
    parameters: each CampaignConfig field (bar NOT_OVER_MCP) with its type, default and doc,
    as `research start` has them as flags (cli._config_flags). The tool's schema is built
    from this signature, so the MCP face and the CLI cannot drift apart."""
    from pydantic import Field

    hints = typing.get_type_hints(api.CampaignConfig)
    sig = inspect.signature(fn)
    params = [p for p in sig.parameters.values() if p.kind is not p.VAR_KEYWORD]
    fields = [f for f in dataclasses.fields(api.CampaignConfig) if f.name not in NOT_OVER_MCP]
    arguments, choices = {p.name for p in params} | {f.name for f in fields}, api.choices()
    for f in fields:
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        kind = Literal[choices[f.name]] if f.name in choices else hints[f.name]
        doc = f.metadata.get("doc", "")
        if f.name == "gpus":  # the flag's comma-separated text is a list here
            doc = doc.replace("comma-separated GPU indices, one per slot (e.g. 0,1,2,3)", "a list of GPU indices, one per slot "
                              "(e.g. [0, 1, 2, 3])").replace("any list (e.g. 0)", "any list (e.g. [0])")
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                        annotation=Annotated[kind, Field(description=as_arguments(doc, arguments))]))
    fn.__signature__ = sig.replace(parameters=params)
    fn.__annotations__ = {**{p.name: p.annotation for p in params}, "return": sig.return_annotation}
    return fn


def build_server(db: str | None = None):
    """The MCP server with the lab's tools, resources and prompts; `db` is the ledger URL
    (default: the workspace's)."""
    from mcp.server import MCPServer
    from mcp.server.mcpserver import Context
    from mcp.server.mcpserver.exceptions import ResourceError, ToolError
    from mcp.server.mcpserver.prompts.base import UserMessage
    from mcp.shared.exceptions import MCPError
    from mcp_types import INVALID_PARAMS, EmbeddedResource, TextResourceContents, ToolAnnotations
    from pydantic import Field

    RUN_STATUSES, PARAM_COUNTS = api.choices()["run_status"], api.choices()["params"]

    server = MCPServer("pretrainlab", instructions=INSTRUCTIONS)
    arguments_of: dict[str, set[str]] = {}

    async def refuse_unknown_arguments(ctx, call_next):
        """An argument a tool does not have is an error, not silently dropped: a misspelt
        budget_runs would otherwise start a campaign on the default budget."""
        if ctx.method == "tools/call" and not arguments_of:
            arguments_of.update({t.name: set(t.input_schema.get("properties", {})) for t in await server.list_tools()})
        if ctx.method == "tools/call" and isinstance(ctx.params, dict) and isinstance(ctx.params.get("arguments"), dict):
            name, given = ctx.params.get("name"), set(ctx.params["arguments"])
            unknown = sorted(given - arguments_of.get(name, given))
            if unknown:
                why = "".join(f"; {NOT_OVER_MCP[k]}" for k in unknown if k in NOT_OVER_MCP)
                raise MCPError(INVALID_PARAMS, scrub(f"{name} has no argument {', '.join(unknown)}{why}; its arguments: "
                                                     f"{', '.join(sorted(arguments_of[name]))}"))
        result = await call_next(ctx)
        if ctx.method == "tools/call" and isinstance(result, dict) and result.get("isError"):  # the wire form of a tool's error
            arguments = arguments_of.get(ctx.params.get("name"), set()) if isinstance(ctx.params, dict) else set()
            for item in result.get("content") or []:  # e.g. pydantic's report on an argument of the wrong type
                if isinstance(item, dict) and item.get("type") == "text":
                    # one line, in the tool's words, with anything key-shaped masked as in results (it may echo an argument or a file)
                    item["text"] = scrub(as_arguments(one_line(item.get("text", "")), arguments))
        return result

    server.middleware.append(refuse_unknown_arguments)

    def call(fn, *args, **kwargs):
        try:
            return redact(_plain(fn(*args, **kwargs)))  # key-shaped text (a note quoting a key) masked, as on the dashboard
        except UserError as e:  # the CLI's one-line message, as an error result the model reads (in the tool's words: the middleware)
            raise ToolError(scrub(str(e))) from None

    def read(fn, *args, **kwargs):  # for resources
        try:
            return redact(fn(*args, **kwargs))
        except UserError as e:
            raise ResourceError(scrub(str(e))) from None

    def ask(fn, *args, **kwargs):  # for prompts: the message reaches the client as the error's
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            raise MCPError(INVALID_PARAMS, scrub(str(e))) from None

    def tool(read_only: bool = False):
        """Register a tool: its docstring is its description; read_only marks the ones that only
        read (a client may let those run without asking)."""
        def register(fn):
            annotations = ToolAnnotations(read_only_hint=read_only, destructive_hint=False, open_world_hint=False)
            return server.tool(description=inspect.cleandoc(fn.__doc__), annotations=annotations)(fn)
        return register

    # ---- tools: campaigns ---------------------------------------------------------------------

    def research_start(ctx: Context, name: str | None = None, **settings) -> dict:
        """Start a research campaign and return at once with its id: the loop trains real runs in
        a background process for minutes to hours; poll research_status(campaign) until its status
        is done (or stopped), then read research_log / research_report. The settings are the
        `pretrainlab research start` flags; a bad recipe or setting is an error now. Recorded as
        started by this client. Returns {campaign, name, status, started_by, pid, log}."""
        defaults = api.CampaignConfig()
        for cap in CAPPED:
            if not settings[cap] <= getattr(defaults, cap):  # NaN too: it is above nothing, and would stop nothing
                raise ToolError(f"{cap} {settings[cap]} is above the lab's default {getattr(defaults, cap)}: over MCP a campaign's LLM "
                                f"spend caps can only be lowered; a person raises them with `pretrainlab research resume ID "
                                f"--{cap.replace('_', '-')} N`")
        recipe, overrides = call(recipe_in_reach, settings.pop("recipe")), settings.pop("overrides")
        overrides = call(corpus_override_in_reach, recipe, list(overrides or []))
        return call(api.research_launch, recipe, overrides, author=client_author(ctx), name=name, db=db, **settings)

    tool()(_with_campaign_settings(research_start))

    @tool(read_only=True)
    def research_status(campaign: str | None = None) -> dict | list[dict]:
        """A campaign's status (running, stopping, stopped, done) and leaderboard: experiments with
        who proposed them, effect ± 95% CI and verdict; or every campaign when none is named.
        loop: the process running it; alive false while the status is running means the loop
        died (its log: runs/campaigns/ID/loop.log): `pretrainlab research resume ID` continues it."""
        status = call(api.research_status, campaign, db=db)
        return listing(status) if isinstance(status, list) else status

    @tool(read_only=True)
    def research_log(campaign: str) -> str:
        """The campaign's research log in Markdown: every hypothesis, who proposed it and why,
        its runs, the decision and the statistics behind it."""
        return call(api.research_log, campaign, db=db)

    @tool()
    def research_report(campaign: str, out: str | None = None) -> dict:
        """Write the campaign's report (one self-contained HTML page: leaderboard, curves, claims,
        ablations) and return its path with the research log. out: an .html path inside the
        workspace (relative to it) or the temp folder; default runs/campaigns/ID/report.html."""
        record = call(api.research_log, campaign, db=db, as_record=True)
        cid = record["campaign"]["id"]
        path = call(report_path, out, cid)
        return {"campaign": cid, "report": call(api.write_report, cid, Path(path), db=db), "log": record["markdown"]}

    @tool()
    def research_suggest(ctx: Context, campaign: str, hypothesis: str, overrides: list[str] | None = None,
                         data_recipe_toml: str | None = None) -> dict:
        """Queue an experiment in a campaign, recorded as this client's suggestion: config
        overrides (KEY=VALUE, e.g. optim.lr=0.01) and/or a data recipe's [[steps]] as TOML text
        (docs/data.md). The campaign's loop runs it when a slot is free."""
        author = client_author(ctx)
        if not overrides and not data_recipe_toml:
            raise ToolError("research_suggest needs the change to try: give overrides (e.g. [\"model.n_layer=6\"]) and/or "
                            "data_recipe_toml (a data recipe's [[steps]] as TOML text, docs/data.md)")
        if data_recipe_toml is None:
            return {"experiment": call(api.research_suggest, campaign, hypothesis, list(overrides or []), author, db=db)}

        def suggest(path: Path) -> str:
            try:
                return api.research_suggest(campaign, hypothesis, list(overrides or []), author, db=db, data_recipe=str(path))
            except UserError as e:  # the client knows the file the server wrote its TOML into as data_recipe_toml
                text = str(e).replace(f"--data-recipe {path}", "data_recipe_toml")
                raise UserError(text.replace(str(path), "data_recipe_toml")) from None

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "steps.toml"
            path.write_text(data_recipe_toml)
            return {"experiment": call(suggest, path)}

    @tool()
    def research_approve(ctx: Context, experiment: str, reason: str | None = None) -> dict:
        """Approve an experiment: release one awaiting approval (a held code patch) to run, or
        overrule the loop's verdict on a decided one as keep. Recorded as this client's decision.
        Overruling the statistics' discard needs a reason; the result's warning says what it adopts."""
        return call(api.research_review, experiment, True, client_author(ctx), reason, db=db)

    @tool()
    def research_reject(ctx: Context, experiment: str, reason: str | None = None) -> dict:
        """Reject an experiment: cancel one awaiting approval, withdraw a queued one (it never
        runs), or overrule the loop's verdict on a decided one as discard. Recorded as this
        client's decision, with the reason. Overruling the statistics' keep needs a reason; the
        result's warning says what it drops."""
        return call(api.research_review, experiment, False, client_author(ctx), reason, db=db)

    @tool()
    def research_stop(ctx: Context, campaign: str) -> dict:
        """Ask a running campaign to finish: its loop checkpoints the runs in flight and exits
        (status stopping, then stopped); `pretrainlab research resume` continues it. A campaign that has
        ended keeps its status (done, stopped), returned as it is."""
        return {"campaign": campaign, "status": call(api.research_stop, campaign, db=db, author=client_author(ctx))}

    # ---- tools: runs and data -----------------------------------------------------------------

    @tool(read_only=True)
    def list_recipes() -> list[dict]:
        """Every named recipe with its size, shape, tokenizer, batch and budget."""
        return listing(call(api.list_recipes))

    def list_runs(status: str | None = None, recipe_filter: list[str] | None = None, campaign: str | None = None,
                  since: str | None = None,
                  limit: Annotated[int, Field(ge=0, le=api.MAX_LIMIT, description="at most this many runs (0: all)")] = 50) -> list[dict]:
        return listing(call(api.list_runs, status=status, recipe=recipe_filter, campaign=campaign, since=since, limit=limit, db=db))

    list_runs.__doc__ = f"""Runs in the ledger, newest first. status: {', '.join(RUN_STATUSES)} (several comma-separated);
        recipe_filter: KEY=VALUE filters on the resolved recipe (e.g. model.n_layer=4); campaign: its id, a unique id
        prefix or its name; since: an ISO date or an age (30m, 12h, 3d)."""
    tool(read_only=True)(list_runs)

    @tool(read_only=True)
    def show_run(run: str) -> dict:
        """One run (id or directory): its recipe, summary, provenance, files, notes."""
        return call(api.show_run, run, db=db)

    @tool(read_only=True)
    def compare_runs(runs: list[str]) -> dict:
        """Recipe keys that differ and metric deltas against the first run."""
        return call(api.compare_runs, runs, db=db)

    @tool(read_only=True)
    def diagnose_run(run: str, baseline: str | None = None) -> dict:
        """The run doctor's findings (loss spikes, stalls, divergence, data problems, idle
        accelerators...) with cause, evidence and fix; optionally against a baseline run. A run
        is its id (or a unique prefix), or a run directory inside the workspace (a live run)."""
        return call(lambda: api.diagnose_run(run_in_reach(run, db), run_in_reach(baseline, db) if baseline else None, db=db).to_dict())

    @tool(read_only=True)
    def diagnose_campaign(campaign: str) -> dict:
        """The doctor's cluster findings over a campaign's runs (queue wait, allocated GPUs left
        idle, straggling ranks, restarts and the nodes that keep losing runs) with evidence and fix."""
        return call(lambda: api.diagnose_campaign(campaign, db=db).to_dict())

    @tool(read_only=True)
    def corpus_report(corpus: str | None = None,
                      tokenizer: Annotated[str, Field(pattern=TOKENIZER_PATTERN, description="which builtin corpus, when no corpus "
                                                      "is named: byte, or bpe:VOCAB (e.g. bpe:8192)")] = "byte") -> dict:
        """A prepared corpus's documents, tokens and bytes per domain and split (the builtin
        corpus when none is named), and for a derived corpus its build report per step. corpus:
        its folder name in the lab's corpus home ('builtin'), or a directory inside the workspace."""
        return call(lambda: api.corpus_info(corpus_in_reach(corpus) if corpus else None, tokenizer))

    @tool(read_only=True)
    def data_why(corpus: str, document: str) -> dict:
        """Why a document is (not) in a derived corpus's training set: the step, rule and
        score that decided, or its near-duplicate cluster and the document kept. corpus: as for
        corpus_report; document: its path as the report lists it, or a sha256 prefix."""
        return call(lambda: api.data_why(corpus_in_reach(corpus), document))

    @tool(read_only=True)
    def scaling_fit(ladder: str | None = None, campaign: str | None = None, flops: list[float] | None = None,
                    params: Literal[PARAM_COUNTS] = "total",
                    num_bootstrap: Annotated[int, Field(ge=0, le=api.MAX_BOOTSTRAP, description="resamples refitted for the "
                                                        "intervals (0: none)")] = 300) -> dict:
        """Fit L(N, D) = E + A/N^alpha + B/D^beta (Hoffmann et al.'s Approach 3, bootstrap
        intervals) to a scaling ladder's runs (`pretrainlab scaling ladder`) or a campaign's:
        N parameters (params: total or non-embedding), D tokens, L val_bpb; with the
        compute-optimal N and D for FLOP budgets (C = 6ND) and the IsoFLOP exponent."""
        def fit() -> dict:
            result = api.scaling_fit(ladder=ladder, campaign=campaign, flops=flops, params=params, num_bootstrap=num_bootstrap, db=db)
            return {k: v for k, v in result.items() if k not in ("points", "frontier")}  # per-point rows: `scaling fit --json`

        return call(fit)

    # ---- resources ----------------------------------------------------------------------------

    @server.resource("run://{run}/summary", name="run summary", mime_type="application/json",
                     description="A run's status, val_bpb, size, tokens, throughput and its summary.json (run id or unique prefix)")
    def run_summary(run: str) -> str:
        row = read(api.show_run, run, db=db)
        keys = ("run_id", "run_dir", "recipe_name", "status", "val_bpb", "params", "tokens", "steps", "seconds", "tokens_per_s", "mfu",
                "peak_mem_mb", "campaign_id", "experiment_id", "created_at", "finished_at", "summary")
        return json.dumps(_plain({k: row.get(k) for k in keys}), indent=1)

    @server.resource("campaign://{campaign}/log", name="research log", mime_type="text/markdown",
                     description="A campaign's research log: hypotheses, who proposed them, runs, decisions and statistics")
    def campaign_log(campaign: str) -> str:
        return read(api.research_log, campaign, db=db)

    @server.resource("corpus://{name}/report", name="corpus report", mime_type="application/json",
                     description="A prepared corpus's documents, tokens and bytes per domain and split, by its folder name in "
                                 "the lab's corpus home ('builtin' for the builtin corpus)")
    def corpus_resource(name: str) -> str:
        return json.dumps(_plain(read(lambda: api.corpus_info(str(api.corpus_path(name))))), indent=1)

    # ---- prompts ------------------------------------------------------------------------------

    @server.prompt(title="Review a campaign", description="Review a campaign: read its log, check each claim's 95% CI, look at "
                                                          "the doctor's findings, suggest next experiments")
    def review_campaign(campaign: str) -> list[UserMessage]:
        status = ask(api.research_status, campaign, db=db)
        log = ask(api.research_log, status["campaign"], db=db)
        text = REVIEW_CAMPAIGN.format(id=status["campaign"], name=status["name"], status=status["status"], runs=status["runs"],
                                      budget_runs=status["budget_runs"])
        attached = TextResourceContents(uri=f"campaign://{status['campaign']}/log", text=log, mime_type="text/markdown")
        return [UserMessage(text), UserMessage(EmbeddedResource(type="resource", resource=attached))]

    @server.prompt(title="Diagnose a run", description="Diagnose a run with the doctor, optionally against a baseline run, "
                                                       "and say what to do about it")
    def review_run(run: str, baseline: str | None = None) -> str:
        run_id = ask(api.show_run, run, db=db)["run_id"]
        base_id = ask(api.show_run, baseline, db=db)["run_id"] if baseline else None
        return REVIEW_RUN.format(
            run=run_id, against=f" against the baseline run {base_id}" if base_id else "",
            baseline_arg=f', baseline="{base_id}"' if base_id else "",
            compare=f'Call compare_runs(["{base_id}", "{run_id}"]): which recipe keys differ, and how the metrics moved.' if base_id
            else "Find comparable runs (list_runs with the same recipe name) and compare_runs against the best of them.")

    return server


def serve(db: str | None = None, http: bool = False, host: str = "127.0.0.1", port: int = DEFAULT_PORT) -> None:
    """Serve over stdio until the client closes the connection, or over streamable HTTP at
    http://HOST:PORT/mcp until interrupted."""
    import importlib.util

    if importlib.util.find_spec("mcp") is None:
        raise UserError("the MCP server needs the `mcp` package: pip install 'pretrainlab[mcp]' (or `pip install mcp`)")
    if not 0 <= port <= 65535:
        raise UserError(f"--port {port}: a port is 0-65535 (0: any free one)")
    token = os.environ.pop(TOKEN_ENV, None) or None  # out of the environment: no campaign or run process inherits it
    if not http:
        build_server(db).run("stdio")
        return
    import anyio

    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        raise UserError(f"--host {host!r}: give an IP address to bind (127.0.0.1, ::1, 0.0.0.0 or one of this machine's)") from None
    if not loopback and token is None:
        token = secrets.token_urlsafe(32)
        print(f"pretrainlab mcp: bearer token {token} (clients send `Authorization: Bearer {token}`; set {TOKEN_ENV} to choose it)",
              file=sys.stderr, flush=True)
    anyio.run(_serve_http, build_server(db), host, port, token)


async def _serve_http(server, host: str, port: int, token: str | None) -> None:
    import socket

    import uvicorn

    app = server.streamable_http_app(host=host)  # on a loopback host the SDK also checks Host/Origin (DNS rebinding)
    if token is not None:
        app = _bearer_only(app, token)
    try:
        sock = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    except OSError as e:
        reason = os.strerror(e.errno) if e.errno else str(e)
        raise UserError(f"cannot listen on {host}:{port} ({reason}): choose another --port or --host") from None
    bound = sock.getsockname()[1]  # --port 0: the one the system chose
    shown = f"[{host}]" if ":" in host else host
    print(f"pretrainlab mcp: serving http://{shown}:{bound}/mcp" + (" (bearer token required)" if token else ""),
          file=sys.stderr, flush=True)
    await uvicorn.Server(uvicorn.Config(app, log_level="warning")).serve(sockets=[sock])


def _bearer_only(app, token: str):
    """The ASGI app behind a check of `Authorization: Bearer TOKEN` on every HTTP request."""
    expected = f"Bearer {token}".encode()

    async def guarded(scope, receive, send):
        if scope["type"] == "http":
            given = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
            if not secrets.compare_digest(given, expected):
                await send({"type": "http.response.start", "status": 401,
                            "headers": [(b"content-type", b"application/json"), (b"www-authenticate", b'Bearer realm="pretrainlab"')]})
                await send({"type": "http.response.body",
                            "body": b'{"error": "send Authorization: Bearer TOKEN, the token the server printed when it started"}'})
                return
        await app(scope, receive, send)

    return guarded
