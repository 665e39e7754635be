"""A campaign driven by Claude (the real SDK, a local fake API) through `research start` and
`resume`, on the simulated runner (test_research_campaign_sim.py's `sim` fixture: runs end at
once on a virtual clock): proposals are attributed to the model; malformed replies and a
patch to the metric are recorded, a malformed call does not lose the proposals made beside
it, the campaign goes on, and its LLM spend is kept across resumes. What is asserted here is
the strategy path and the campaign's bookkeeping; no patch of these campaigns reaches a run
(the cheat is refused by the tool, the stale patch does not apply), and a hostile patch
meeting the sandbox and the lab's scorer is tested on real processes in test_trust.py and
test_research_data.py."""

import difflib

import pytest
from conftest import tiny_overrides
from fake_llm_server import FakeServer, message, text, tool_use
from test_research_campaign_sim import sim  # noqa: F401  (the fixture: research start/resume on the simulated runner)
from test_research_claude import view

from pretrainlab.ledger import Ledger
from pretrainlab.research import manage
from pretrainlab.research.campaign import CampaignConfig
from pretrainlab.research.llm import SpendCapReached
from pretrainlab.research.patches import PACKAGE_DIR


def diff(rel, old, new):
    src = (PACKAGE_DIR / rel).read_text()
    return "".join(difflib.unified_diff(src.splitlines(True), src.replace(old, new).splitlines(True),
                                         f"a/src/pretrainlab/{rel}", f"b/src/pretrainlab/{rel}"))


def test_claude_campaign(sim, corpus_dir, monkeypatch):  # noqa: F811
    cheat = diff("eval.py", "\"val_bpb\": bits_per_byte(total_nats, total_bytes),", "\"val_bpb\": 0.5 * bits_per_byte(total_nats, total_bytes),")
    stale = diff("model/gpt.py", "relu_squared(self.c_fc(x))", "F.gelu(self.c_fc(x))").replace("relu_squared(self.c_fc(x))", "F.relu(x)")
    good = {"hypothesis": "a higher Muon LR trains faster in a short budget", "rationale": "the baseline loss is still falling steeply",
            "changes": {"optim.muon_lr": 0.05}}
    script = [
        message([text("Looking at the baseline."), tool_use("a", "list_runs", {})], "tool_use"),
        message([tool_use("b", "propose_code_patch", {"hypothesis": "score better", "rationale": "halve the metric", "patch": cheat}),
                 tool_use("c", "no_such_tool", {}),
                 tool_use("d", "propose_code_patch", {"hypothesis": "GELU", "rationale": "smoother", "patch": stale})], "tool_use"),
        # a patch sent as a list of lines and a domain the corpus lacks, in the same reply as a good proposal
        message([tool_use("x", "propose_code_patch", {"hypothesis": "GELU", "rationale": "smoother", "patch": stale.splitlines()}),
                 tool_use("y", "propose_data_mixture", {"hypothesis": "more fiction", "rationale": "r", "weights": {"klingon": 1}}),
                 tool_use("e", "propose_config", good)], "tool_use"),
        message([text("That is my proposal.")], "end_turn"),
    ]
    with FakeServer(script) as server:
        # the replicated loop's budget arithmetic (baseline 2 + a screen); the screened default is tested in test_research_policy
        cfg = CampaignConfig(recipe="tiny-cpu", overrides=tiny_overrides(corpus_dir), run_budget="8192tok", budget_runs=5, parallel=1,
                             seeds=2, strategy="claude", llm_base_url=server.url, decision="paired")
        monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
        cid = manage.start(cfg, echo=False)
    assert sim.runners  # the loop ran on the simulated runner
    ledger = Ledger()
    experiments = ledger.list_experiments(cid)
    by_model = {e["hypothesis"]: e for e in experiments if e["model_id"] == "claude-opus-5"}
    assert set(by_model) == {"GELU", good["hypothesis"]}
    assert by_model["GELU"]["status"] == "rejected"  # the stale patch did not apply: recorded, never run
    assert not any(key.startswith(by_model["GELU"]["id"]) for r in sim.runners for key in r.submitted)
    kept = by_model[good["hypothesis"]]
    assert kept["proposer"] == "claude" and kept["proposer_type"] == "strategy" and kept["rationale"] == good["rationale"]
    assert kept["change"]["diff"] == {"optim.muon_lr": [0.035, 0.05]}
    notes = " ".join(n["text"] for n in ledger.list_notes(campaign_id=cid))
    assert "read-only" in notes and "eval.py" in notes  # the cheat was refused and recorded
    assert "no_such_tool" in notes
    assert "tool propose_code_patch: patch: Input should be a valid string (got list)" in notes
    assert "tool propose_data_mixture: weights name 'klingon', not a domain of this corpus" in notes
    (rejection,) = ledger.list_decisions(experiment_id=by_model["GELU"]["id"])
    assert rejection["verdict"] == "discard" and "does not apply" in rejection["rationale"]
    runs = ledger.list_runs(campaign=cid)
    assert len(runs) >= 3 and all(r["status"] == "ok" and r["experiment_id"] for r in runs)  # baseline 2 + the screen
    assert any(r["experiment_id"] == kept["id"] for r in runs)  # the proposal made beside the malformed calls ran
    sent = server.requests[0]["body"]
    assert sent["model"] == "claude-opus-5" and sent["system"][-1]["cache_control"] == {"type": "ephemeral"}
    assert all(r["usage"]["cache_read_input_tokens"] > 4096 for r in server.replies[1:])  # the harness prefix is read from the cache


def test_llm_spend_is_kept_across_resumes_and_the_cap_covers_the_whole_campaign(sim, corpus_dir, monkeypatch):  # noqa: F811
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    good = {"hypothesis": "a higher Muon LR", "rationale": "loss still falling", "changes": {"optim.muon_lr": 0.05}}
    script = [message([tool_use("a", "propose_config", good)], "tool_use"), message([text("Done.")], "end_turn")]
    with FakeServer(script) as server:
        cfg = CampaignConfig(recipe="tiny-cpu", overrides=tiny_overrides(corpus_dir), run_budget="8192tok", budget_runs=3, parallel=1,
                             seeds=2, strategy="claude", llm_base_url=server.url)
        cid = manage.start(cfg, echo=False)
    spend = manage.status(cid)["llm_spend"]
    assert spend["model"] == "claude-opus-5" and spend["calls"] == 1 and spend["dollars"] > 0
    # resume with a cap below what the campaign already spent: Claude is not asked again (its server is gone)
    manage.resume(cid, echo=False, budget_runs=5, spend_cap_usd=spend["dollars"] / 2, author="carol")
    assert len(sim.runners) == 2  # the resumed loop ran (on its own simulated runner)
    notes = " ".join(n["text"] for n in Ledger().list_notes(campaign_id=cid))
    assert "spend_cap_usd 25.0 -> " in notes
    assert manage.status(cid)["llm_spend"]["calls"] == 1  # nothing more was spent
    # whenever the resumed loop asks, its strategy refuses before any call: it counts what the first loop spent
    resumed = manage.make_strategy(CampaignConfig(**Ledger().get_campaign(cid)["config"]["campaign"]), Ledger(), cid, echo=False)
    assert resumed.spend.calls == 1
    with pytest.raises(SpendCapReached, match="spend cap reached"):
        resumed.propose(view(), 1)
