"""The Claude strategy against a local fake Messages API, through the real anthropic SDK."""

import json

import pytest
from fake_llm_server import FakeServer, message, rate_limited, text, tool_use

from pretrainlab.errors import UserError
from pretrainlab.recipes import get_recipe
from pretrainlab.research import tool_inputs as inputs
from pretrainlab.research.llm import ClaudeStrategy, LLMUnavailable, SpendCapReached, Tool
from pretrainlab.research.space import apply, default_space
from pretrainlab.research.strategies import CampaignView, Proposal


def view(history=()):
    base = get_recipe("tiny-cpu")
    return CampaignView(base=base, incumbent=base, space=default_space(base), incumbent_value=2.75, history=list(history))


def lab_tools(calls):
    def list_runs(args):
        calls.append(("list_runs", args.model_dump(exclude_defaults=True)))
        return [{"run_id": "abc", "val_bpb": 2.75, "status": "ok"}]

    def big(args):
        return {"blob": "x" * 30_000}

    def propose_config(args):
        base = get_recipe("tiny-cpu")
        apply(base, args.changes)  # ValueError names the bad field
        return Proposal("config", args.hypothesis, args.rationale, "claude", "claude-opus-5", values=dict(args.changes))

    return [Tool("list_runs", "List runs", inputs.ListRuns, list_runs), Tool("read_code", "Read a harness file", inputs.ReadCode, big),
            Tool("propose_config", "Propose a config change", inputs.ProposeConfig, propose_config)]


def strategy(server, calls, **kw):
    return ClaudeStrategy(lab_tools(calls), api_key="test-key", base_url=server.url, **kw)


PROPOSE = tool_use("t2", "propose_config", {"hypothesis": "higher Muon LR trains faster", "rationale": "loss still falling at the end",
                                            "changes": {"optim.muon_lr": 0.05}})


def test_tool_protocol():
    calls = []
    with FakeServer([message([text("Let me look."), tool_use("t1", "list_runs", {"status": "ok"})], "tool_use"),
                     message([PROPOSE], "tool_use"), message([text("Done.")], "end_turn")]) as server:
        s = strategy(server, calls)
        (p,) = s.propose(view(), 1)
    assert p.values == {"optim.muon_lr": 0.05} and p.model_id == "claude-opus-5" and p.rationale
    assert calls == [("list_runs", {"status": "ok"})]
    first, second = server.requests[0]["body"], server.requests[1]["body"]
    assert server.requests[0]["path"] == "/v1/messages"
    assert first["model"] == "claude-opus-5" and "val_bpb 2.75" in first["messages"][0]["content"][0]["text"]
    assert first["tools"][2]["input_schema"]["required"] == ["hypothesis", "rationale", "changes"]  # generated from the typed input
    result = second["messages"][-1]["content"][0]
    assert result["type"] == "tool_result" and result["tool_use_id"] == "t1" and "abc" in result["content"]
    assert second["messages"][-2]["content"][1]["id"] == "t1"  # the assistant turn is sent back verbatim
    assert s.spend.calls == 2  # stopped once the one proposal asked for arrived


@pytest.mark.parametrize("reason", ["end_turn", "stop_sequence", "refusal"])
def test_ending_stop_reasons(reason):
    with FakeServer([message([text("I will not do that." if reason == "refusal" else "Nothing to add.")], reason)]) as server:
        s = strategy(server, [])
        assert s.propose(view(), 2) == []
    assert len(server.requests) == 1
    if reason == "refusal":
        assert any("refusal" in e for e in s.events)


def test_max_tokens_and_pause_turn_continue_the_turn():
    truncated = tool_use("t9", "propose_config", {"hypothesis": "cut"})
    with FakeServer([message([text("Thinking at length..."), truncated], "max_tokens"),
                     message([text("searching")], "pause_turn"),
                     message([PROPOSE], "tool_use")]) as server:
        (p,) = strategy(server, []).propose(view(), 1)
    assert p.values == {"optim.muon_lr": 0.05}
    after_max = server.requests[1]["body"]["messages"]
    assert after_max[-1]["content"][0]["text"].startswith("You hit the output limit")
    assert all(b.get("type") != "tool_use" for b in after_max[-2]["content"])  # the truncated call was dropped
    after_pause = server.requests[2]["body"]["messages"]
    assert after_pause[-1] == {"role": "assistant", "content": [{"type": "text", "text": "searching"}]}


def test_429_is_retried_with_backoff():
    with FakeServer([rate_limited(), message([PROPOSE], "tool_use")]) as server:
        (p,) = strategy(server, [], max_retries=2).propose(view(), 1)
    assert len(server.requests) == 2 and p.kind == "config"


def test_persistent_server_errors_surface_as_unavailable():
    err = (503, {"type": "error", "error": {"type": "overloaded_error", "message": "overloaded"}})
    with FakeServer([err, err]) as server, pytest.raises(LLMUnavailable, match="503"):
        strategy(server, [], max_retries=1).propose(view(), 1)


def test_spend_cap_in_tokens_and_dollars():
    with FakeServer([message([PROPOSE], "tool_use", input_tokens=900, output_tokens=200, cache_read=0, cache_write=0)]) as server:
        s = strategy(server, [], spend_cap_tokens=1000)
        s.propose(view(), 1)
        with pytest.raises(SpendCapReached, match="1,100 tokens"):
            s.propose(view(), 1)
    with FakeServer([message([PROPOSE], "tool_use", input_tokens=1_000_000, output_tokens=0, cache_read=0, cache_write=0)]) as server:
        s = strategy(server, [], spend_cap_usd=4.0)
        s.propose(view(), 1)
        assert s.spend.dollars("claude-opus-5") == pytest.approx(5.0)
        with pytest.raises(SpendCapReached, match=r"\$5.00"):
            s.propose(view(), 1)
    with FakeServer([]) as server, pytest.raises(SpendCapReached):  # a cap that is not a number stops, it never lifts
        strategy(server, [], spend_cap_usd=float("nan")).propose(view(), 1)


def test_long_conversations_are_compacted():
    script = [message([tool_use(f"r{i}", "read_code", {"path": "model/gpt.py"})], "tool_use") for i in range(8)]
    script.append(message([PROPOSE], "tool_use"))
    with FakeServer(script) as server:
        s = strategy(server, [], compact_after_chars=80_000)
        (p,) = s.propose(view(), 1)
    sizes = [len(json.dumps(r["body"]["messages"])) for r in server.requests]
    assert max(sizes) < 130_000  # without compaction the 8th request would carry > 240 KB
    assert any("[compacted" in json.dumps(r["body"]["messages"]) for r in server.requests)
    first_result = server.requests[1]["body"]["messages"][-1]["content"][0]["content"]  # a 30,000-character result
    assert len(first_result) < 20_200 and first_result.endswith("are shown; ask for less (a smaller limit, fewer runs)]")
    assert p.values


def test_state_summary_is_bounded_on_long_campaigns():
    history = [{"id": i, "kind": "config", "values": {"optim.lr": 0.01 + i * 1e-5}, "value": 3.0 - i * 1e-4, "verdict": "no effect"}
               for i in range(2000)]
    with FakeServer([message([text("ok")], "end_turn")]) as server:
        strategy(server, []).propose(view(history), 1)
    summary = server.requests[0]["body"]["messages"][0]["content"][0]["text"]
    assert len(summary) < 10_000 and "2000 experiments so far" in summary


def test_state_summary_tells_the_model_every_run_gets_the_same_flops():
    from pretrainlab.research.config import CampaignConfig

    base = CampaignConfig(run_budget="8e4tok").base_recipe()  # equal FLOPs per run: the default
    with FakeServer([message([text("ok")], "end_turn"), message([text("ok")], "end_turn")]) as server:
        strategy(server, []).propose(CampaignView(base=base, incumbent=base, space=default_space(base), incumbent_value=2.75,
                                                  history=[]), 1)
        strategy(server, []).propose(view(), 1)  # a recipe on its own token budget: nothing said
    equal, plain = (r["body"]["messages"][0]["content"][0]["text"] for r in server.requests)
    assert f"{base.budget.flops:.4g} training FLOPs (80,000 tokens" in equal and "trains proportionally fewer tokens" in equal
    assert "training FLOPs" not in plain


def test_state_summary_says_why_the_lab_rejected_an_experiment():
    history = [{"id": "e1", "kind": "code", "patch": True, "value": None, "verdict": "discard",
                "rejected": "non-causal model: its logits at position 3 changed"}]
    with FakeServer([message([text("ok")], "end_turn")]) as server:
        strategy(server, []).propose(view(history), 1)
    summary = server.requests[0]["body"]["messages"][0]["content"][0]["text"]
    assert "-> rejected (discard: non-causal model: its logits at position 3 changed)" in summary


def test_malformed_replies_become_failed_proposals_and_the_loop_goes_on():
    with FakeServer([message([tool_use("a", "rm_rf", {}), tool_use("b", "propose_config", {"hypothesis": "h", "rationale": "r",
                                                                                             "changes": {"model.n_layers": 3}})], "tool_use"),
                     message([tool_use("c", "propose_config", "not an object")], "tool_use"),
                     message([PROPOSE], "tool_use")]) as server:
        s = strategy(server, [])
        (p,) = s.propose(view(), 1)
    errors = server.requests[1]["body"]["messages"][-1]["content"]
    assert [e["is_error"] for e in errors] == [True, True]
    assert "unknown tool 'rm_rf'" in errors[0]["content"] and "model.n_layer" in errors[1]["content"]
    assert [f["tool"] for f in s.failed] == ["rm_rf", "propose_config", "propose_config"]
    assert p.values == {"optim.muon_lr": 0.05}


def test_no_key_and_endpoint_down(monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(UserError, match="ANTHROPIC_API_KEY"):
        ClaudeStrategy(lab_tools([]))
    s = ClaudeStrategy(lab_tools([]), api_key="k", base_url="http://127.0.0.1:9", max_retries=0)
    with pytest.raises(LLMUnavailable, match="cannot reach"):
        s.propose(view(), 1)
