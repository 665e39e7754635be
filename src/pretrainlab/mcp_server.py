"""The lab as an MCP server, for Claude Code and any other MCP client: `pretrainlab mcp`.

    claude mcp add pretrainlab -- pretrainlab mcp          # stdio; the workspace is the current directory

A face like the CLI: every tool is one `pretrainlab.api` call, so the tools read the same
ledger, run directories and corpora the CLI does, and a user mistake comes back as the same
one-line message (an error result the model reads), never a traceback. What a person does
through a tool is recorded as that person's act: suggestions and approvals carry `author`
(default "mcp"), and the model that asked is named in the note when the client says which.

The tools never return the environment, API keys or files outside what the api reads (run
directories, the ledger, corpora). Campaigns are started with the CLI (`pretrainlab research
start` runs in the foreground for hours); from here a client watches, steers and reviews them.
"""

from __future__ import annotations

import json
from typing import Any

from . import api
from .errors import UserError

INSTRUCTIONS = (
    "pretrainlab: an AI research lab for LLM pre-training. Read campaigns (research_status, research_log), runs "
    "(list_runs, show_run, compare_runs, diagnose_run) and corpora (corpus_report, data_why); steer a running campaign "
    "with research_suggest (a config change or a data recipe), research_review (approve/reject) and research_stop; "
    "fit scaling laws to a ladder's or a campaign's runs (scaling_fit). "
    "Numbers are val_bpb (lower is better) as the lab scored them; effects come with 95% CIs."
)


def _plain(value: Any) -> Any:
    """JSON-safe data (paths, datetimes and the like as strings)."""
    return json.loads(json.dumps(value, default=str))


def build_server(db: str | None = None):
    """The MCP server with the lab's tools; `db` is the ledger URL (default: the workspace's)."""
    from mcp.server import MCPServer
    from mcp.server.mcpserver.exceptions import ToolError

    server = MCPServer("pretrainlab", instructions=INSTRUCTIONS)

    def call(fn, *args, **kwargs):
        try:
            return _plain(fn(*args, **kwargs))
        except UserError as e:  # the CLI's one-line message, as an error result the model reads
            raise ToolError(str(e)) from None

    @server.tool()
    def list_recipes() -> list[dict]:
        """Every named recipe with its size, shape, tokenizer, batch and budget."""
        return call(api.list_recipes)

    @server.tool()
    def list_runs(status: str | None = None, recipe_filter: list[str] | None = None, campaign: str | None = None,
                  since: str | None = None, limit: int = 50) -> list[dict]:
        """Runs in the ledger, newest first. status: ok, diverged, crashed, timeout, preempted;
        recipe_filter: KEY=VALUE filters on the resolved recipe (e.g. model.n_layer=4); since: an
        ISO date or an age (30m, 12h, 3d)."""
        return call(api.list_runs, status=status, recipe=recipe_filter, campaign=campaign, since=since, limit=limit, db=db)

    @server.tool()
    def show_run(run: str) -> dict:
        """One run (id or directory): its recipe, summary, provenance, files, notes."""
        return call(api.show_run, run, db=db)

    @server.tool()
    def compare_runs(runs: list[str]) -> dict:
        """Recipe keys that differ and metric deltas against the first run."""
        return call(api.compare_runs, runs, db=db)

    @server.tool()
    def diagnose_run(run: str, baseline: str | None = None) -> dict:
        """The run doctor's findings (loss spikes, stalls, divergence, data problems, idle
        accelerators...) with cause, evidence and fix; optionally against a baseline run."""
        return call(lambda: api.diagnose_run(run, baseline, db=db).to_dict())

    @server.tool()
    def research_status(campaign: str | None = None) -> dict | list[dict]:
        """A campaign's leaderboard (experiments with who proposed them, effect ± 95% CI and
        verdict), or every campaign when none is named."""
        return call(api.research_status, campaign, db=db)

    @server.tool()
    def research_log(campaign: str) -> str:
        """The campaign's research log in Markdown: every hypothesis, who proposed it and why,
        its runs, the decision and the statistics behind it."""
        return call(api.research_log, campaign, db=db)

    @server.tool()
    def research_suggest(campaign: str, hypothesis: str, overrides: list[str] | None = None,
                         data_recipe_toml: str | None = None, author: str = "mcp") -> dict:
        """Queue an experiment in a campaign, recorded as `author`'s suggestion: config
        overrides (KEY=VALUE, e.g. optim.lr=0.01) or a data recipe's [[steps]] as TOML text
        (docs/data.md). The campaign's loop runs it when a slot is free."""
        if data_recipe_toml is None:
            return call(lambda: {"experiment": api.research_suggest(campaign, hypothesis, list(overrides or []), author, db=db)})
        import tempfile
        from pathlib import Path

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "steps.toml"
            path.write_text(data_recipe_toml)
            return call(lambda: {"experiment": api.research_suggest(campaign, hypothesis, list(overrides or []), author, db=db,
                                                                    data_recipe=path)})

    @server.tool()
    def research_review(experiment: str, approve: bool, reason: str | None = None, author: str = "mcp") -> dict:
        """Approve or reject an experiment (one awaiting approval, or override a decided one's
        verdict), recorded as `author`'s decision with the reason."""
        return call(api.research_review, experiment, approve, author, reason, db=db)

    @server.tool()
    def research_stop(campaign: str) -> dict:
        """Ask a running campaign to finish: its loop checkpoints the runs in flight and exits;
        `pretrainlab research resume` continues it."""
        return call(lambda: api.research_stop(campaign, db=db) or {"campaign": campaign, "status": "stopping"})

    @server.tool()
    def corpus_report(corpus: str | None = None, tokenizer: str = "byte") -> dict:
        """A prepared corpus's documents, tokens and bytes per domain and split (the builtin
        corpus when none is named), and for a derived corpus its build report per step."""
        return call(api.corpus_info, corpus, tokenizer)

    @server.tool()
    def data_why(corpus: str, document: str) -> dict:
        """Why a document is (not) in a derived corpus's training set: the step, rule and
        score that decided, or its near-duplicate cluster and the document kept."""
        return call(api.data_why, corpus, document)

    @server.tool()
    def scaling_fit(ladder: str | None = None, campaign: str | None = None, flops: list[float] | None = None, params: str = "total",
                    num_bootstrap: int = 300) -> dict:
        """Fit L(N, D) = E + A/N^alpha + B/D^beta (Hoffmann et al.'s Approach 3, bootstrap
        intervals) to a scaling ladder's runs (`pretrainlab scaling ladder`) or a campaign's:
        N parameters (params: total or non-embedding), D tokens, L val_bpb; with the
        compute-optimal N and D for FLOP budgets (C = 6ND) and the IsoFLOP exponent."""
        def fit() -> dict:
            result = api.scaling_fit(ladder=ladder, campaign=campaign, flops=flops, params=params, num_bootstrap=num_bootstrap, db=db)
            return {k: v for k, v in result.items() if k not in ("points", "frontier")}  # per-point rows: `scaling fit --json`

        return call(fit)

    return server


def serve(db: str | None = None) -> None:
    """Serve over stdio until the client closes the connection."""
    try:
        import mcp  # noqa: F401
    except ImportError:
        raise UserError("the MCP server needs the `mcp` package: pip install 'pretrainlab[mcp]' (or `pip install mcp`)") from None
    build_server(db).run("stdio")
