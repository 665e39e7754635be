"""The LLM path against a local fake API, through the real SDKs and the lab's real tools:
malformed tool inputs, the spend cap inside a round, read_code paging, prompt caching."""

import json
import math
import re

import pytest
from conftest import tiny_overrides
from fake_llm_server import FakeServer, message, text, tool_use
from test_research_claude import PROPOSE, view
from test_research_claude import lab_tools as fake_tools
from test_research_openai import call, chat

from pretrainlab.config import apply_overrides
from pretrainlab.recipes import get_recipe
from pretrainlab.research import tool_inputs as inputs
from pretrainlab.research.code_context import harness_context, read_page
from pretrainlab.research.llm import ClaudeStrategy, OpenAIStrategy, Spend, SpendCapReached, Tool
from pretrainlab.research.patches import PACKAGE_DIR
from pretrainlab.research.tools import lab_tools

GOOD_CONFIG = {"hypothesis": "a higher Muon LR trains faster", "rationale": "loss still falling", "changes": {"optim.muon_lr": 0.05}}
GOOD_MIX = {"hypothesis": "more code helps code bpb", "rationale": "code is the largest domain", "weights": {"code": 2, "docs": 1}}
WHY = {"hypothesis": "h", "rationale": "r"}
# (tool, input, what the error must say): each must fail alone, without losing the round
MALFORMED = [
    ("propose_code_patch", {**WHY, "patch": ["--- a/src/pretrainlab/model/gpt.py", "+++ b/src/pretrainlab/model/gpt.py"]},
     "patch: Input should be a valid string (got list)"),
    ("propose_config", {"rationale": "r", "changes": {"optim.lr": 0.02}}, "hypothesis: required field is missing"),
    ("propose_config", {"hypothesis": "h", "rationale": 42, "changes": {"optim.lr": 0.02}},
     "rationale: Input should be a valid string (got int)"),
    ("propose_config", {**WHY, "changes": {"optim.lr": 0.02}, "priority": "high"}, "priority: unknown field"),
    ("propose_config", {**WHY, "changes": {"optim.colour": 1}}, "unknown config key 'optim.colour'"),
    ("propose_data_mixture", {**WHY, "weights": {"code": 1, "klingon": 2}},
     "'klingon', not a domain of this corpus: its domains are code, docs"),
    ("propose_data_mixture", {**WHY, "weights": {"code": -1, "docs": 1}}, "weights.code: Input should be greater than or equal to 0"),
    ("propose_data_mixture", {**WHY, "weights": {"code": math.nan, "docs": 1}}, "weights.code: Input should be a finite number"),
    ("propose_data_mixture", {**WHY, "weights": {"code": 0, "docs": 0}}, "weights are all zero"),
    ("read_code", {"path": "../../etc/passwd"}, "cannot read '../../etc/passwd'"),
]


def real_tools(corpus_dir):
    base = apply_overrides(get_recipe("tiny-cpu"), tiny_overrides(corpus_dir))
    return lab_tools(None, {}, base)  # the propose tools and read_code never touch the ledger


def same(a, b):
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)  # NaN-safe equality


def assert_failed(failed, model_id):
    assert len(failed) == len(MALFORMED)
    for f, (tool, args, error) in zip(failed, MALFORMED):
        assert f["tool"] == tool and same(f["input"], args) and error in f["error"] and f["model_id"] == model_id


def test_malformed_inputs_are_tool_errors_and_failed_proposals_claude(corpus_dir):
    calls = [tool_use(f"m{i}", tool, args) for i, (tool, args, _) in enumerate(MALFORMED)]
    good = [tool_use("g1", "propose_config", GOOD_CONFIG), tool_use("g2", "propose_data_mixture", GOOD_MIX)]
    with FakeServer([message([*calls, *good], "tool_use"), message([text("Done.")], "end_turn")]) as server:
        s = ClaudeStrategy(real_tools(corpus_dir), api_key="k", base_url=server.url)
        config, mixture = s.propose(view(), 3)
    assert config.values == {"optim.muon_lr": 0.05} and mixture.weights == {"code": 2.0, "docs": 1.0}  # the round survived
    assert (config.proposer, config.model_id) == ("claude", "claude-opus-5")
    results = server.requests[1]["body"]["messages"][-1]["content"]
    assert [r["tool_use_id"] for r in results] == [f"m{i}" for i in range(len(MALFORMED))] + ["g1", "g2"]
    for r, (_, _, error) in zip(results, MALFORMED):
        assert r["is_error"] is True and error in r["content"]
    assert [r.get("is_error") for r in results[-2:]] == [None, None]
    assert_failed(s.failed, "claude-opus-5")


def test_malformed_inputs_are_tool_errors_and_failed_proposals_openai(corpus_dir):
    calls = [call(f"m{i}", tool, args) for i, (tool, args, _) in enumerate(MALFORMED)]
    with FakeServer([chat({"content": None, "tool_calls": [*calls, call("g1", "propose_config", GOOD_CONFIG)]}),
                     chat({"content": "done"}, "stop")]) as server:
        s = OpenAIStrategy(real_tools(corpus_dir), model="local-model", base_url=server.url + "/v1")
        (config,) = s.propose(view(), 2)
    assert config.values == {"optim.muon_lr": 0.05}
    tool_msgs = [m for m in server.requests[1]["body"]["messages"] if m["role"] == "tool"]
    assert [m["tool_call_id"] for m in tool_msgs] == [f"m{i}" for i in range(len(MALFORMED))] + ["g1"]
    for m, (_, _, error) in zip(tool_msgs, MALFORMED):
        assert m["content"].startswith("error: ") and error in m["content"]
    assert json.loads(tool_msgs[-1]["content"]) == {"accepted": True, "proposal": 1}
    assert_failed(s.failed, "local-model")


def test_a_tool_that_breaks_is_a_tool_error_not_a_lost_round():
    def broken(args):
        return {}["missing"]  # a bug in a read tool

    reply = message([tool_use("a", "list_runs", {}), tool_use("b", "curve_summary", {"run_id": "r1"}), PROPOSE], "tool_use")
    with FakeServer([reply]) as server:
        s = ClaudeStrategy([*fake_tools([]), Tool("curve_summary", "A curve", inputs.RunRef, broken)], api_key="k", base_url=server.url)
        (p,) = s.propose(view(), 1)
    assert p.values == {"optim.muon_lr": 0.05}
    assert s.failed == [{"tool": "curve_summary", "input": {"run_id": "r1"}, "error": "KeyError: 'missing'", "model_id": "claude-opus-5"}]


# ---- the spend cap, after every call ---------------------------------------------------------

def test_claude_spend_cap_stops_the_round_at_the_call_that_crosses_it():
    # each call reports 450 tokens; the cap of 1,000 is crossed by the 3rd, which proposes
    look = message([tool_use("a", "list_runs", {})], "tool_use", input_tokens=400, cache_read=0, cache_write=0)
    crossing = message([PROPOSE], "tool_use", input_tokens=400, cache_read=0, cache_write=0)
    never = message([text("this reply must never be asked for")], "end_turn")
    with FakeServer([look, look, crossing, never, never]) as server:
        s = ClaudeStrategy(fake_tools([]), api_key="k", base_url=server.url, spend_cap_tokens=1000)
        (p,) = s.propose(view(), 2)  # 2 asked for: only the cap ends this round
        assert len(server.requests) == 3 and s.spend.total_tokens == 1350
        assert p.values == {"optim.muon_lr": 0.05}  # the crossing reply's proposal is kept
        assert any("spend_cap" in e for e in s.events)
        with pytest.raises(SpendCapReached, match="1,350 tokens"):
            s.propose(view(), 1)
        assert len(server.requests) == 3  # no call after the cap was crossed


def test_claude_dollar_cap_counts_cache_writes_and_reads():
    # 100k cache-write tokens at 1.25 x $5/MTok = $0.625 per call: a $1 cap is crossed by the 2nd call
    look = message([tool_use("a", "list_runs", {})], "tool_use", input_tokens=0, output_tokens=0, cache_read=0, cache_write=100_000)
    with FakeServer([look, look, look, look]) as server:
        s = ClaudeStrategy(fake_tools([]), api_key="k", base_url=server.url, spend_cap_usd=1.0)
        assert s.propose(view(), 1) == []
        assert len(server.requests) == 2 and s.spend.dollars("claude-opus-5") == pytest.approx(1.25)


def test_openai_spend_cap_is_checked_after_every_call():
    look = chat({"content": None, "tool_calls": [call("a", "list_runs", {})]})  # 150 tokens a call
    with FakeServer([look, look, look, look]) as server:
        s = OpenAIStrategy(fake_tools([]), model="m", base_url=server.url + "/v1", spend_cap_tokens=300)
        assert s.propose(view(), 1) == []
        assert len(server.requests) == 2
        with pytest.raises(SpendCapReached, match="300 tokens"):
            s.propose(view(), 1)
        assert len(server.requests) == 2


# ---- read_code: plain text, whole, numbered, paged ----------------------------------------------

def unnumber(page: str) -> tuple[list[str], str]:
    """The source lines of a read_code page (number column removed) and its last line."""
    header, *body, footer = page.split("\n")
    assert re.fullmatch(r"src/pretrainlab/\S+: lines \d+-\d+ of \d+", header)
    return [re.fullmatch(r" *\d+\t(.*)", line, re.S).group(1) for line in body], footer


def test_trainer_reaches_the_model_intact_across_pages(corpus_dir):
    source = (PACKAGE_DIR / "train" / "trainer.py").read_text()
    num_lines = len(source.splitlines())
    assert num_lines > 400  # the point of the test: more than one page
    offsets = list(range(1, num_lines + 1, 200))
    script = [message([tool_use(f"r{i}", "read_code", {"path": "train/trainer.py", "offset": o, "limit": 200})], "tool_use")
              for i, o in enumerate(offsets)]
    with FakeServer([*script, message([text("Read it.")], "end_turn")]) as server:
        ClaudeStrategy(real_tools(corpus_dir), api_key="k", base_url=server.url, compact_after_chars=10**7).propose(view(), 1)
    pages = [server.requests[i + 1]["body"]["messages"][-1]["content"][0]["content"] for i in range(len(offsets))]
    lines = []
    assert pages[0].count('"""') >= 2  # the module's docstring arrives as written
    for i, page in enumerate(pages):
        assert "\\n" not in page.split("\n")[1]  # plain text, not a JSON-escaped string
        body, footer = unnumber(page)
        lines += body
        if i < len(pages) - 1:
            assert footer == (f"[cut: lines {offsets[i + 1]}-{num_lines} are not shown; call read_code with "
                              f'{{"path": "train/trainer.py", "offset": {offsets[i + 1]}}} for the next page]')
        else:
            assert footer == "[end of file]"
    assert "\n".join(lines) + "\n" == source


def test_read_code_default_pages_followed_by_their_footers_give_the_whole_file(corpus_dir):
    (read_code,) = [t for t in real_tools(corpus_dir) if t.name == "read_code"]
    source = (PACKAGE_DIR / "train" / "trainer.py").read_text()
    lines, offset, num_pages = [], 1, 0
    while True:
        page = read_code.run(read_code.input_model(path="src/pretrainlab/train/trainer.py", offset=offset))
        assert len(page) <= 20_000  # never cut by the loop's cap on one result
        body, footer = unnumber(page)
        lines += body
        num_pages += 1
        if footer == "[end of file]":
            break
        offset = json.loads(re.search(r"(\{.*\})", footer).group(1))["offset"]
        assert offset == len(lines) + 1
    assert "\n".join(lines) + "\n" == source and num_pages >= 2
    with pytest.raises(ValueError, match="past the end"):
        read_page("train/trainer.py", len(source.splitlines()) + 5)


# ---- prompt caching ------------------------------------------------------------------------------

def usages(server):
    return [r["usage"] for r in server.replies]


def test_the_cached_prefix_holds_the_harness_and_clears_every_minimum():
    s = ClaudeStrategy(fake_tools([]), api_key="k")
    assert s.system[-1]["cache_control"] == {"type": "ephemeral"} and s.system[-1]["text"] == harness_context()
    for rel in ("model/gpt.py", "train/trainer.py", "train/optim.py"):
        assert f"## src/pretrainlab/{rel}" in harness_context()
    assert "- research/campaign.py: " in harness_context()  # the code map covers the whole package
    # Claude models cache prefixes of at least 1,024-4,096 tokens depending on the model; even at
    # a generous 5 characters a token the prefix is well past the largest minimum.
    assert len(json.dumps([s.tool_specs, s.system])) / 5 > 2 * 4096


def test_later_calls_read_the_cached_prefix_and_spend_prices_it():
    look = message([tool_use("a", "list_runs", {})], "tool_use")
    with FakeServer([look, look, message([PROPOSE], "tool_use"), look, message([PROPOSE], "tool_use")]) as server:
        s = ClaudeStrategy(fake_tools([]), api_key="k", base_url=server.url)
        s.propose(view(), 1)  # round 1: 3 calls
        s.propose(view(), 1)  # round 2: 2 calls, minutes later in a real campaign
    u = usages(server)
    prefix_tokens = u[0]["cache_creation_input_tokens"]
    assert prefix_tokens > 4096 and u[0]["cache_read_input_tokens"] == 0
    for later in u[1:]:
        assert later["cache_read_input_tokens"] >= prefix_tokens  # tools + system (+ the turns before) come from the cache
    assert u[2]["cache_read_input_tokens"] > u[1]["cache_read_input_tokens"]  # the conversation breakpoint moves forward
    # every request carried exactly two breakpoints: the end of the system prompt and the newest user turn
    for r in server.requests:
        marked = [b for m in r["body"]["messages"] for b in m["content"] if "cache_control" in b]
        assert len(marked) == 1 and r["body"]["messages"][-1]["content"][-1] is marked[0]
        assert "cache_control" not in json.dumps(r["body"]["tools"])
    expected = Spend(input_tokens=sum(x["input_tokens"] for x in u), output_tokens=sum(x["output_tokens"] for x in u),
                     cache_write_tokens=sum(x["cache_creation_input_tokens"] for x in u),
                     cache_read_tokens=sum(x["cache_read_input_tokens"] for x in u), calls=5)
    assert s.spend == expected
    price_in, price_out = 5.0, 25.0  # claude-opus-5, $ per million tokens
    assert s.spend.dollars("claude-opus-5") == pytest.approx(
        (expected.input_tokens * price_in + expected.cache_write_tokens * price_in * 1.25 + expected.cache_read_tokens * price_in * 0.1
         + expected.output_tokens * price_out) / 1e6)


def test_the_fake_cache_compares_prefixes_and_honours_the_minimum():
    """The checks above mean something only if the fake cache can miss."""
    look, end = message([tool_use("a", "list_runs", {})], "tool_use"), message([text("Done.")], "end_turn")
    with FakeServer([look, end, look, end]) as server:
        small = ClaudeStrategy(fake_tools([]), api_key="k", base_url=server.url, code_context="A short context.")
        small.propose(view(), 1)  # two calls whose prefixes are under 1,024 tokens: nothing is cached
        other = ClaudeStrategy(fake_tools([]), api_key="k", base_url=server.url, code_context=harness_context() + "\nchanged")
        other.propose(view(), 1)
    u = usages(server)
    assert all(x["cache_read_input_tokens"] == x["cache_creation_input_tokens"] == 0 for x in u[:2])
    assert small.spend.cache_read_tokens == small.spend.cache_write_tokens == 0
    assert u[2]["cache_read_input_tokens"] == 0 and u[2]["cache_creation_input_tokens"] > 4096  # a new prefix: written, not read
    assert u[3]["cache_read_input_tokens"] >= u[2]["cache_creation_input_tokens"]


def test_spend_prices_cache_writes_and_reads():
    spend = Spend(input_tokens=1_000_000, output_tokens=1_000_000, cache_write_tokens=1_000_000, cache_read_tokens=1_000_000)
    assert spend.dollars("claude-opus-5") == pytest.approx(5 + 25 + 5 * 1.25 + 5 * 0.1)
    assert spend.dollars("claude-haiku-4-5") == pytest.approx(1 + 5 + 1.25 + 0.1)
