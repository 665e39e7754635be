"""The OpenAI-compatible strategy against a local fake chat-completions endpoint."""

import json

import pytest
from fake_llm_server import FakeServer
from test_research_claude import lab_tools, view

from pretrainlab.research.llm import LLMUnavailable, OpenAIStrategy


def chat(message, finish="tool_calls"):
    return 200, {"id": "c1", "object": "chat.completion", "created": 0, "model": "local-model",
                 "choices": [{"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish}],
                 "usage": {"prompt_tokens": 120, "completion_tokens": 30, "total_tokens": 150}}


def call(id_, name, args):
    return {"id": id_, "type": "function", "function": {"name": name, "arguments": args if isinstance(args, str) else json.dumps(args)}}


def test_tool_calls_invalid_json_and_proposal():
    good = {"hypothesis": "h", "rationale": "r", "changes": {"optim.lr": 0.02}}
    with FakeServer([chat({"content": None, "tool_calls": [call("a", "list_runs", {}), call("b", "propose_config", "{not json")]}),
                     chat({"content": None, "tool_calls": [call("c", "propose_config", good)]})]) as server:
        s = OpenAIStrategy(lab_tools([]), model="local-model", base_url=server.url + "/v1")
        (p,) = s.propose(view(), 1)
    assert p.values == {"optim.lr": 0.02} and (p.proposer, p.model_id) == ("openai", "local-model")
    second = server.requests[1]["body"]["messages"]
    tool_msgs = [m for m in second if m["role"] == "tool"]
    assert [m["tool_call_id"] for m in tool_msgs] == ["a", "b"]
    assert tool_msgs[1]["content"].startswith("error: tool input must be a JSON object") and "{not json" in tool_msgs[1]["content"]
    assert server.requests[0]["path"] == "/v1/chat/completions"
    assert s.spend.input_tokens == 240


def test_length_continues_and_stop_ends():
    with FakeServer([chat({"content": "long..."}, "length"), chat({"content": "done"}, "stop")]) as server:
        s = OpenAIStrategy(lab_tools([]), model="m", base_url=server.url + "/v1")
        assert s.propose(view(), 1) == []
    assert len(server.requests) == 2


def test_endpoint_down():
    s = OpenAIStrategy(lab_tools([]), model="m", base_url="http://127.0.0.1:9/v1", max_retries=0)
    with pytest.raises(LLMUnavailable, match="cannot reach"):
        s.propose(view(), 1)


@pytest.mark.parametrize("usage", [None, {"prompt_tokens": None, "completion_tokens": None},
                                   {"prompt_tokens": -10**10, "completion_tokens": -10**10, "total_tokens": -2 * 10**10}])
def test_an_endpoint_that_reports_no_usable_usage_still_spends(usage):
    """Missing, null or negative usage is counted from the text: the token cap stops the strategy after its first
    call instead of never (it made ten calls on a cap of one token, and negative usage drove spend below zero)."""
    status, body = chat({"content": None, "tool_calls": [call("a", "list_runs", {})]})
    body = {k: v for k, v in body.items() if k != "usage"} | ({"usage": usage} if usage is not None else {})
    with FakeServer([(status, body)] * 10) as server:
        s = OpenAIStrategy(lab_tools([]), model="m", base_url=server.url + "/v1", spend_cap_tokens=1)
        s.propose(view(), 1)
    assert len(server.requests) == 1 and s.spend.calls == 1 and s.spend.total_tokens > 1


def test_an_answer_without_choices_is_the_endpoint_failing():
    status, body = chat({"content": "x"})
    with FakeServer([(status, {**body, "choices": []})]) as server, pytest.raises(LLMUnavailable, match="no choices"):
        OpenAIStrategy(lab_tools([]), model="m", base_url=server.url + "/v1").propose(view(), 1)
