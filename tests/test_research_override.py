"""A person's approve / reject against the statistics' verdict, and the withdrawal of a queued
suggestion, on a finished campaign of simulated runs (research/simulate.py, in process):
overturning a verdict needs a reason, says what it adopts, and the report says a person
decided it; a rejected suggestion is never run by a later loop."""

import re

import pytest

from pretrainlab import api, cli
from pretrainlab.errors import UserError
from pretrainlab.ledger import Ledger
from pretrainlab.research import manage
from pretrainlab.research.campaign import Campaign, CampaignConfig
from pretrainlab.research.simulate import Landscape, SimulatedRunner


@pytest.fixture
def finished(monkeypatch):
    """A finished campaign (--decision screen, the random strategy after the sweep): the
    baseline on 3 seeds, a sweep point discarded and one kept on screens, the confirmation."""
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.setattr(manage, "make_runner", lambda cfg, workdir: SimulatedRunner(Landscape(seed=0), cfg.parallel))
    monkeypatch.setattr(Campaign, "record_hidden_test", lambda self: None)  # simulated runs have no weights to score
    cid = manage.start(CampaignConfig(recipe="tiny-cpu", budget_runs=8, strategy="random", seeds=3), echo=False)
    board = manage.status(cid)["experiments"]
    assert manage.status(cid)["status"] == "done"
    discarded = next(e for e in board if e["verdict"] == "discard" and e["effect"] is not None and e["effect"] > 0)
    kept = next(e for e in board if e["verdict"] == "keep" and e["role"] == "sweep")
    return {"campaign": cid, "baseline": board[0], "discarded": discarded, "kept": kept}


def test_approving_a_discard_needs_a_reason_and_the_report_says_a_person_decided(finished, tmp_path, capsys):
    exp = finished["discarded"]["experiment"]
    effect = f"{finished['discarded']['effect']:+.4f} val_bpb on its paired seed"
    with pytest.raises(UserError) as err:
        api.research_review(exp, True, "alice")
    message = str(err.value)
    assert "\n" not in message and f"experiment {exp} was discarded by the statistics ({effect})" in message
    assert "adopts a change measured worse" in message and "--reason" in message
    assert [d["decider_type"] for d in Ledger().list_decisions(experiment_id=exp)] == ["strategy"]  # nothing recorded

    assert cli.main(["research", "approve", exp, "--author", "alice"]) == 2  # the CLI: one line on stderr
    err_lines = capsys.readouterr().err.strip().splitlines()
    assert len(err_lines) == 1 and err_lines[0].startswith("error: ") and "--reason" in err_lines[0]

    assert cli.main(["research", "approve", exp, "--author", "alice", "--reason", "the lower LR is what we ship at scale"]) == 0
    out = capsys.readouterr()
    assert f"experiment {exp}: approved by alice" in out.out
    assert out.err.startswith("warning: ") and f"over the statistics' discard ({effect})" in out.err
    assert "adopts a change measured worse" in out.err and f"hands back is now {exp}'s" in out.err

    last = Ledger().list_decisions(experiment_id=exp)[-1]
    assert (last["verdict"], last["decided_by"], last["decider_type"]) == ("keep", "alice", "person")
    assert last["rationale"] == "the lower LR is what we ship at scale" and last["evidence"]["overrides"]["verdict"] == "discard"
    assert manage.status(finished["campaign"])["incumbent"]["experiment"] == exp  # what the campaign now hands back

    page = api.write_report(finished["campaign"], tmp_path / "report.html").read_text()
    top = page[:page.index("<svg")]  # near the top: before the chart and every table
    assert "This outcome includes a person's override of the statistics" in top
    assert "<b>alice</b> kept experiment" in top and exp in top and "the lower LR is what we ship at scale" in top
    assert f"over the statistics' <b>discard</b> ({effect})" in top
    assert "over 1 seed, against the baseline's" in top and "over 3 seeds" in top  # a 1-seed number is said to be one
    assert "except where a person overrode it" in top and "Decided by pretrainlab stats" in top
    assert "alice overrode the statistics&#x27; discard" in page  # the ablation table's why
    final = page[page.index("Final recipe vs the starting baseline"):]
    assert f"The recipe of experiment <span class=mono>{exp}</span>, kept by alice over the statistics' discard" in final
    log = api.research_log(finished["campaign"])
    assert "except where a person overrode it" in log and "**keep** by alice (overrides the statistics' discard" in log


def test_rejecting_a_keep_needs_a_reason_too(finished, tmp_path):
    exp = finished["kept"]["experiment"]
    with pytest.raises(UserError, match=rf"experiment {exp} was kept by the statistics \(-0\.\d+ val_bpb on its paired seed\): "
                                        r"rejecting it drops a change measured better; say why with --reason"):
        api.research_review(exp, False, "bob", reason="  ")  # a blank reason is none
    done = api.research_review(exp, False, "bob", reason="its gain is one seed's")
    assert done["decision"] == "discard" and "over the statistics' keep" in done["warning"]
    assert "drops a change measured better" in done["warning"]
    assert f"hands back is now the baseline's, its starting recipe (was {exp}'s)" in done["warning"]
    assert manage.status(finished["campaign"])["incumbent"]["experiment"] != exp
    page = api.write_report(finished["campaign"], tmp_path / "report.html").read_text()
    top = page[:page.index("<svg")]
    assert "<b>bob</b> discarded experiment" in top and "its gain is one seed&#x27;s" in top and "over the statistics' <b>keep</b>" in top
    assert "The final recipe below is the starting one." in top
    assert "No change is kept (a person discarded what the statistics kept, see the top)" in page

    # agreeing with the statistics needs no reason and warns of nothing; the baseline, what everything is compared with,
    # cannot be rejected at all
    again = api.research_review(finished["discarded"]["experiment"], False, "bob")
    assert again["decision"] == "discard" and "warning" not in again
    with pytest.raises(UserError, match="is its campaign's baseline.*cannot be rejected"):
        api.research_review(finished["baseline"]["experiment"], False, "bob")


def test_rejecting_a_queued_suggestion_withdraws_it_and_no_loop_runs_it(finished, capsys):
    cid = finished["campaign"]
    withdrawn = api.research_suggest(cid, "a deeper model helps", ["model.n_layer=5"], "alice")
    kept_in = api.research_suggest(cid, "a wider model helps", ["model.n_embd=192"], "alice")
    with pytest.raises(UserError, match="is queued; it runs when a slot is free"):
        api.research_review(withdrawn, True, "alice")  # nothing to approve yet

    assert cli.main(["research", "reject", withdrawn, "--author", "alice", "--reason", "n_layer=5 ran last week"]) == 0
    assert f"experiment {withdrawn}: rejected by alice: it will not run" in capsys.readouterr().out
    exp = api.show_experiment(withdrawn)
    assert exp["status"] == "rejected"
    (d,) = exp["decisions"]
    assert (d["verdict"], d["decided_by"], d["decider_type"], d["rationale"]) == ("discard", "alice", "person", "n_layer=5 ran last week")

    manage.resume(cid, echo=False, budget_runs=30)  # room for both suggestions: only the one still queued runs
    ledger = Ledger()
    assert not ledger.list_runs(experiment=withdrawn, columns=("run_id",))
    assert ledger.list_runs(experiment=kept_in, columns=("run_id",)) and api.show_experiment(kept_in)["status"] == "decided"
    assert api.show_experiment(withdrawn)["status"] == "rejected" and len(api.show_experiment(withdrawn)["decisions"]) == 1
    with pytest.raises(UserError, match="is rejected"):
        api.research_review(withdrawn, False, "alice")  # withdrawn once


def test_the_dashboard_asks_for_the_reason_and_records_it(finished):
    pytest.importorskip("fastapi", reason="the dashboard's extra: pip install 'pretrainlab[ui]'")
    from fastapi.testclient import TestClient

    from pretrainlab.ui import create_app

    exp = finished["discarded"]["experiment"]
    client = TestClient(create_app(author="alice"), base_url="http://127.0.0.1:8765", follow_redirects=False)
    token = re.search(r'name="csrf" value="([0-9a-f]+)"', client.get(f"/experiments/{exp}").text).group(1)
    r = client.post(f"/experiments/{exp}/review", data={"csrf": token, "action": "approve", "author": "dana"})  # the compact form's post
    assert r.status_code == 400 and "Traceback" not in r.text
    assert "was discarded by the statistics" in r.text and "the reason field on the experiment&#39;s page" in r.text
    r = client.post(f"/experiments/{exp}/review", data={"csrf": token, "action": "approve", "author": "dana", "reason": "ship it"})
    assert r.status_code == 303
    last = api.show_experiment(exp)["decisions"][-1]
    assert (last["verdict"], last["decided_by"], last["rationale"]) == ("keep", "dana", "ship it")
    report = client.get(f"/campaigns/{finished['campaign']}/report").text
    assert "This outcome includes a person's override of the statistics" in report and "<b>dana</b> kept experiment" in report


def test_the_dashboard_withdraws_a_queued_suggestion(finished):
    pytest.importorskip("fastapi", reason="the dashboard's extra: pip install 'pretrainlab[ui]'")
    from fastapi.testclient import TestClient

    from pretrainlab.ui import create_app

    exp = api.research_suggest(finished["campaign"], "a deeper model helps", ["model.n_layer=5"], "alice")
    client = TestClient(create_app(author="alice"), base_url="http://127.0.0.1:8765", follow_redirects=False)
    page = client.get(f"/experiments/{exp}").text
    assert "Withdraw it before it runs" in page and 'value="reject" class="reject">Withdraw</button>' in page
    assert 'value="approve"' not in page.split("Withdraw it before it runs")[1].split("</form>")[0]  # nothing to approve yet
    token = re.search(r'name="csrf" value="([0-9a-f]+)"', page).group(1)
    r = client.post(f"/experiments/{exp}/review", data={"csrf": token, "action": "reject", "author": "dana", "reason": "ran it"})
    assert r.status_code == 303
    withdrawn = api.show_experiment(exp)
    assert withdrawn["status"] == "rejected" and withdrawn["decisions"][-1]["decided_by"] == "dana"
