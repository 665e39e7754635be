"""The dashboard (`pretrainlab ui`) through HTTP: every page over a real SQLite ledger, ids that
do not exist, ledger text that carries markup, secrets that must never show, and who may
change the ledger (token, CSRF, same origin). The browser tests are in test_ui_browser.py."""

import json
import os
import re
import socket
import subprocess
import sys
import time

import pytest

pytest.importorskip("fastapi", reason="the dashboard's extra: pip install 'pretrainlab[ui]'")
from fastapi.testclient import TestClient  # noqa: E402
from ui_lab import FAKE_KEY, PATCH, build_lab, free_port  # noqa: E402

from pretrainlab import api  # noqa: E402
from pretrainlab.ledger import Ledger  # noqa: E402
from pretrainlab.ui import create_app, views  # noqa: E402

BASE = "http://127.0.0.1:8765"
ENV_KEY = "sk-ant-api03-ENVKEYenvkeyENVKEY9876543210zyxwvu"


@pytest.fixture(scope="module")
def lab(tmp_path_factory, corpus_dir):
    """A ledger with a finished campaign and the awkward entries of ui_lab.build_lab, a run
    directory that has gone missing, and a corpus directory holding one prepared corpus."""
    root = tmp_path_factory.mktemp("ui-lab")
    home = root / "home"
    (home / "corpus").mkdir(parents=True)
    (home / "corpus" / "sample").symlink_to(corpus_dir)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PRETRAINLAB_WORKSPACE", str(root))
        db = str(root / "lab.db")
        ids = build_lab(db)
        gone = root / "gone-run"
        gone.mkdir()
        (gone / "recipe.json").write_text(json.dumps({"name": "tiny-cpu", "seed": 3}))
        (gone / "summary.json").write_text(json.dumps({"status": "ok", "val_bpb": 3.9}))
        ids["gone"] = api.register_run(gone, db=db)["run_id"]
        for f in gone.iterdir():
            f.unlink()
        gone.rmdir()
    return {"db": db, "home": home, **ids}


@pytest.fixture
def client(lab, monkeypatch):
    monkeypatch.setenv("PRETRAINLAB_HOME", str(lab["home"]))
    return TestClient(create_app(db=lab["db"], author="alice"), base_url=BASE, follow_redirects=False)


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf" value="([0-9a-f]+)"', html).group(1)


def pages(lab) -> list[str]:
    run = lab["runs"][0]
    return ["/", f"/campaigns/{lab['campaign']}", f"/campaigns/{lab['campaign']}?sort=new", f"/campaigns/{lab['campaign']}/live.json",
            f"/campaigns/{lab['campaign']}/report", f"/campaigns/{lab['campaign']}/doctor", f"/experiments/{lab['patch_experiment']}", f"/experiments/{lab['decided']}",
            f"/experiments/{lab['suggested']}", "/runs", f"/runs?campaign={lab['campaign']}&status=ok", f"/runs/{run}",
            f"/runs/{run}/metrics.json", f"/runs/{run}/doctor", f"/runs/{lab['gone']}", f"/compare?runs={run},{lab['runs'][1]}",
            f"/compare?runs={run}&runs={lab['runs'][1]}", "/compare", "/decisions", "/decisions?verdict=keep&who=pretrainlab+stats",
            "/corpora", "/corpora/sample", "/corpora/sample/report"]


def test_every_page_renders(client, lab):
    for url in pages(lab):
        r = client.get(url)
        assert r.status_code == 200, (url, r.text[-500:])
        assert "Traceback" not in r.text
    campaign = client.get(f"/campaigns/{lab['campaign']}").text
    assert "a deeper model helps" in campaign and "alice" in campaign  # a person's suggestion, attributed
    assert "$1.23" in campaign and "559,000" in campaign and "claude-opus-5" in campaign  # the LLM spend on record
    assert 'id="page-data"' in campaign and "/static/chart.js" in campaign
    cluster_url = f"/campaigns/{lab['campaign']}/doctor"
    assert f'data-doctor="{cluster_url}"' in campaign  # the cluster findings, loaded after the page
    cluster = client.get(cluster_url).text
    assert "sev-healthy" in cluster and "2 checks ran; skipped: idle_accelerator, straggler" in cluster  # CPU runs: no GPU, one process
    experiment = client.get(f"/experiments/{lab['patch_experiment']}").text
    assert '<span class="add">+        return self.proj(F.silu' in experiment and '<span class="del">-        return' in experiment
    assert "awaiting-approval" in experiment and 'value="approve"' in experiment
    decided = client.get(f"/experiments/{lab['decided']}").text
    assert "P(better)=" in decided and 'data-doctor="/runs/' in decided and "carol" in decided
    metrics = client.get(f"/runs/{lab['runs'][0]}/metrics.json").json()
    assert len(metrics["train"]["step"]) == 40 and metrics["train"]["loss"][0] > metrics["train"]["loss"][-1]
    assert set(metrics["train"]["domain_loss"]) == {"code", "docs"} and metrics["finished"] and len(metrics["eval"]) == 2
    assert "checks ran" in client.get(f"/runs/{lab['runs'][0]}/doctor").text
    for url in (f"/compare?runs={lab['runs'][0]},{lab['runs'][1]}", f"/compare?runs={lab['runs'][0]}&runs={lab['runs'][1]}"):
        compare = client.get(url).text
        assert "val_bpb" in compare and '"page": "compare"' in compare and lab["runs"][1] in compare, url
    corpus = client.get("/corpora/sample").text
    assert "code" in corpus and "val" in corpus and "bytes/token" in corpus
    waiting = client.get("/decisions").text
    assert 'id="awaiting"' in waiting and lab["patch_experiment"] in waiting


def test_the_decisions_log_shows_the_newest_and_links_to_more(client, lab):
    """A ledger's whole history is thousands of decisions: the page shows the newest and says how many match."""
    everything = api.list_decisions(db=lab["db"])
    assert len(everything) >= 2
    page = client.get("/decisions?limit=1").text
    assert re.findall(r'data-decision="([0-9a-f]+)"', page) == [everything[0]["id"]]  # the newest
    assert f"The newest 1 of {len(everything)} decisions" in page
    more = re.search(r'<a href="(/decisions\?[^"]+)">Show more</a>', page).group(1)
    assert re.findall(r'data-decision="([0-9a-f]+)"', client.get(more.replace("&amp;", "&")).text) == [d["id"] for d in everything]
    verdict = everything[-1]["verdict"]  # the filters apply before the limit: one match, nothing more to show
    one = client.get(f"/decisions?verdict={verdict}&limit=1").text
    matching = [d["id"] for d in everything if d["verdict"] == verdict]
    assert re.findall(r'data-decision="([0-9a-f]+)"', one) == matching[:1]
    assert ("Show more" in one) == (len(matching) > 1)
    assert f"{len(everything)} decisions." in client.get("/decisions").text


def test_the_runs_page_shows_the_newest_and_links_to_more(client, lab):
    everything = [r["run_id"] for r in api.list_runs(limit=0, db=lab["db"])]
    assert len(everything) >= 3
    page = client.get("/runs?limit=2").text
    assert re.findall(r'name="runs" value="([0-9a-f]+)"', page) == everything[:2]  # the newest
    more = re.search(r'<a href="(/runs\?[^"]+)">Show more</a>', page).group(1)
    assert "limit=10" in more and re.findall(r'name="runs" value="([0-9a-f]+)"', client.get(more.replace("&amp;", "&")).text) == everything[:10]
    whole = client.get(f"/runs?limit={len(everything)}").text
    assert "Show more" not in whole and f"{len(everything)} runs." in whole


def test_a_missing_run_directory_is_said_not_failed(client, lab):
    page = client.get(f"/runs/{lab['gone']}").text
    assert "is missing" in page
    assert client.get(f"/runs/{lab['gone']}/metrics.json").json()["train"]["step"] == []
    assert "missing" in client.get(f"/runs/{lab['gone']}/doctor").text


@pytest.mark.parametrize("url", ["/runs/nosuchrun", "/experiments/nosuchexp", "/campaigns/nosuch", "/campaigns/nosuch/live.json",
                                 "/corpora/nosuch", "/runs/..%2F..%2Fetc", "/no/such/page", "/campaigns/abc/live/x-s0",
                                 "/runs/nosuchrun/metrics.json", "/runs/nosuchrun/doctor", "/campaigns/nosuch/doctor"])
def test_a_bad_id_is_a_404_with_one_line(client, url):
    r = client.get(url)
    assert r.status_code == 404, (url, r.status_code, r.text[-300:])
    assert "Traceback" not in r.text and "File \"" not in r.text
    message = re.search(r'<p class="error-message">(.*?)</p>', r.text, re.S).group(1)
    assert message.strip() and "\n" not in message.strip()


def test_a_bad_query_value_is_a_400_with_one_line(client):
    r = client.get("/runs?limit=many")
    assert r.status_code == 400 and "limit: not a valid value" in r.text and "Traceback" not in r.text
    r = client.get("/runs?status=fine")
    assert r.status_code == 400 and "unknown run status &#39;fine&#39;" in r.text


def test_a_run_being_written_shows_live(client, lab):
    """A run of the campaign's loop with no summary.json yet: listed on the campaign page, drawn
    on the timeline, and its curves read as far as they go (the last line cut mid-write)."""
    run_dir = api.workspace() / "runs" / "campaigns" / lab["campaign"] / f"{lab['suggested']}-s0"
    run_dir.mkdir(parents=True)
    (run_dir / "recipe.json").write_text(json.dumps({"name": "tiny-cpu", "seed": 0}))
    rows = [{"type": "train", "step": s, "tokens": 64 * s, "loss": 5.0 - 0.1 * s, "lr": 0.01} for s in range(1, 6)]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"type": "train", "st')
    key = run_dir.name
    page = client.get(f"/campaigns/{lab['campaign']}").text
    assert f"/campaigns/{lab['campaign']}/live/{key}" in page and "4.5000" in page  # its last loss
    live = client.get(f"/campaigns/{lab['campaign']}/live.json").json()
    assert key in live["inflight"] and any(b["status"] == "live" for b in live["timeline"]["bars"])
    assert client.get(f"/campaigns/{lab['campaign']}/live/{key}").status_code == 200
    metrics = client.get(f"/campaigns/{lab['campaign']}/live/{key}/metrics.json").json()
    assert metrics["train"]["step"] == [1, 2, 3, 4, 5] and metrics["torn"] and not metrics["finished"]
    news = client.get(f"/campaigns/{lab['campaign']}/live/{key}/metrics.json?after=3").json()  # what a polling page asks for
    assert news["train"]["step"] == [4, 5] and news["train"]["loss"] == [4.6, 4.5]
    # the trainer logs step 5's train row, then evaluates at step 5: a page that drew train row 5 must still get that eval
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write('ep": 6}\n{"type": "eval", "step": 5, "val_bpb": 3.9}\n')
    news = client.get(f"/campaigns/{lab['campaign']}/live/{key}/metrics.json?after=5&after_eval=-1").json()
    assert news["train"]["step"] == [6] and [e["step"] for e in news["eval"]] == [5]
    assert client.get(f"/campaigns/{lab['campaign']}/live/{key}/metrics.json?after=6&after_eval=5").json()["eval"] == []
    (run_dir / "summary.json").write_text(json.dumps({"status": "ok", "val_bpb": 3.7}))
    assert key not in client.get(f"/campaigns/{lab['campaign']}/live.json").json()["inflight"]
    assert client.get(f"/campaigns/{lab['campaign']}/live/{key}/metrics.json").json()["finished"]  # an open page learns it ended
    assert client.get(f"/campaigns/{lab['campaign']}/live/{key}").status_code == 200  # ended, not registered yet
    run_id = api.register_run(run_dir, db=lab["db"])["run_id"]
    with Ledger(lab["db"]) as lg:
        lg.link_run(run_id, campaign_id=lab["campaign"], experiment_id=lab["suggested"])
    r = client.get(f"/campaigns/{lab['campaign']}/live/{key}")
    assert r.status_code == 303 and r.headers["location"] == f"/runs/{run_id}"  # registered: its page in the ledger


def test_a_campaign_whose_loop_died_says_so(client, lab, tmp_path):
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    with Ledger(lab["db"]) as lg:
        cid = lg.create_campaign("orphaned", config={"campaign": {"budget_runs": 4}, "started_by": "kim",
                                                     "loop": {"pid": int(done.stdout), "host": socket.gethostname()}})
    page = client.get(f"/campaigns/{cid}").text
    assert "is not running: it crashed or was killed" in page and f"research resume {cid}" in page and "by kim" in page


def test_a_mixture_campaign_shows_its_recommendation(tmp_path, monkeypatch):
    from pretrainlab.research.config import MixtureConfig
    from pretrainlab.research.simulate import MixtureLandscape, simulate_mixture

    cfg = MixtureConfig(recipe="tiny-cpu", proxies=6, run_budget="8192tok", confirm_seeds=2, parallel=2)
    result = simulate_mixture(cfg, MixtureLandscape(), tmp_path)
    client = TestClient(create_app(db=str(tmp_path / "ledger.db")), base_url=BASE)
    page = client.get(f"/campaigns/{result['campaign_id']}").text
    assert "Mixture search" in page and "recommended weight" in page and "literature" in page
    assert client.get(f"/campaigns/{result['campaign_id']}/live.json").status_code == 200


def test_a_scaling_ladder_links_to_its_runs_and_has_no_campaign_report(tmp_path):
    """A ladder is kept as a campaign row: the home page linked it to a campaign page that answered 400, and `report`
    wrote "0 experiments ... the starting recipe stands" for its 9 runs."""
    from pretrainlab import api
    from pretrainlab.errors import UserError
    from pretrainlab.ledger import Ledger

    db = str(tmp_path / "ledger.db")
    with Ledger(db) as ledger:
        cid = ledger.create_campaign("a ladder", goal="L(N, D)", config={"kind": "scaling-ladder", "ladder": {}})
    page = TestClient(create_app(db=db), base_url=BASE).get("/").text
    assert f'href="/runs?campaign={cid}"' in page and f'href="/campaigns/{cid}"' not in page and "scaling ladder" in page
    with pytest.raises(UserError, match=f"^{cid} is a scaling ladder, not a research campaign: `pretrainlab scaling fit"):
        api.write_report(cid, tmp_path / "r.html", db=db)
    assert not (tmp_path / "r.html").exists()


def test_an_empty_workspace_shows_empty_pages(tmp_path, monkeypatch):
    monkeypatch.setenv("PRETRAINLAB_HOME", str(tmp_path / "home"))
    client = TestClient(create_app(db=str(tmp_path / "none.db")), base_url=BASE)
    for url in ("/", "/runs", "/decisions", "/corpora"):
        r = client.get(url)
        assert r.status_code == 200 and ("Nothing to show yet" in r.text or "No prepared corpus" in r.text), url
    assert client.get("/campaigns/abc").status_code == 404
    assert not (tmp_path / "none.db").exists()  # looking never creates a ledger


def test_ledger_text_is_escaped_everywhere(client, lab):
    urls = [f"/campaigns/{lab['campaign']}", f"/experiments/{lab['patch_experiment']}", f"/experiments/{lab['decided']}", "/decisions",
            f"/campaigns/{lab['campaign']}/report"]
    for url in urls:
        text = client.get(url).text
        assert "<script>window.__xss" not in text and "<img src=x" not in text, url
    page = client.get(f"/experiments/{lab['patch_experiment']}").text
    assert "&lt;script&gt;window.__xss = 1&lt;/script&gt;" in page  # shown as text
    assert "&lt;/pre&gt;&lt;script&gt;window.__xss = 3" in page  # inside the patch too
    board = client.get(f"/campaigns/{lab['campaign']}/live.json").json()["board"]
    assert "&lt;script&gt;" in board and "<script>" not in board
    assert "default-src 'self'; script-src 'self'" in client.get("/").headers["content-security-policy"]


def test_no_api_key_reaches_any_page(client, lab, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", ENV_KEY)
    monkeypatch.setenv("OPENAI_API_KEY", ENV_KEY)
    seen = 0
    for url in pages(lab):
        text = client.get(url).text
        assert ENV_KEY not in text and FAKE_KEY not in text, url
        seen += "[redacted]" in text
    assert seen  # the note that quoted a key shows with the key masked
    assert "ANTHROPIC_API_KEY" not in client.get(f"/runs/{lab['runs'][0]}").text


def test_approve_reject_and_notes_are_recorded_with_their_author(client, lab):
    page = client.get(f"/experiments/{lab['patch_experiment']}")
    token = csrf_of(page.text)
    r = client.post(f"/experiments/{lab['patch_experiment']}/review", data={"csrf": token, "action": "approve", "author": "dana",
                                                                           "reason": "the patch is small", "next": "/decisions?verdict=keep"})
    assert r.status_code == 303 and r.headers["location"] == "/decisions?verdict=keep"
    assert api.show_experiment(lab["patch_experiment"], db=lab["db"])["status"] == "queued"

    r = client.post(f"/experiments/{lab['decided']}/review", data={"csrf": token, "action": "reject", "author": "  erin  "})
    assert r.status_code == 303 and r.headers["location"] == f"/experiments/{lab['decided']}"
    last = api.show_experiment(lab["decided"], db=lab["db"])["decisions"][-1]
    assert (last["verdict"], last["decided_by"], last["decider_type"]) == ("discard", "erin", "person")

    r = client.post(f"/runs/{lab['runs'][1]}/notes", data={"csrf": token, "text": "loss <b>spike</b> at step 12", "author": "frank"})
    assert r.status_code == 303
    assert [(n["author"], n["text"]) for n in api.show_run(lab["runs"][1], db=lab["db"])["notes"]][-1] == ("frank", "loss <b>spike</b> at step 12")
    page = client.get(f"/runs/{lab['runs'][1]}").text
    assert "loss &lt;b&gt;spike&lt;/b&gt;" in page and 'name="author" value="frank"' in page  # the name typed is remembered
    r = client.post(f"/experiments/{lab['suggested']}/notes", data={"csrf": token, "text": "try 6 too", "author": ""})
    notes = api.show_experiment(lab["suggested"], db=lab["db"])["notes"]
    assert notes[-1]["author"] == "alice"  # no name typed: the dashboard's --author

    r = client.post(f"/runs/{lab['runs'][1]}/notes", data={"csrf": token, "text": "  ", "author": "frank"})
    assert r.status_code == 400 and "note text" in r.text and "Traceback" not in r.text
    r = client.post(f"/experiments/{lab['suggested']}/review", data={"csrf": token, "action": "approve"})
    assert r.status_code == 400 and "queued" in r.text  # nothing to approve: the api's one-line reason
    r = client.post(f"/experiments/{lab['decided']}/review", data={"csrf": token, "action": "approve", "reason": "worth a second look",
                                                                   "next": "//evil.example/x"})  # overturning a discard needs a reason
    assert r.headers["location"] == f"/experiments/{lab['decided']}"  # never redirected off the dashboard
    before = len(api.show_experiment(lab["decided"], db=lab["db"])["decisions"])
    r = client.post(f"/experiments/{lab['decided']}/review", data={"csrf": token, "action": "reject", "author": "mcp:claude-code/1.2"})
    assert r.status_code == 400 and "give your own name" in r.text  # the MCP server's names for its clients are not a person's
    assert len(api.show_experiment(lab["decided"], db=lab["db"])["decisions"]) == before


def test_posts_need_the_sessions_csrf_token_and_the_same_origin(client, lab):
    url = f"/runs/{lab['runs'][2]}/notes"
    before = len(api.show_run(lab["runs"][2], db=lab["db"])["notes"])
    token = csrf_of(client.get(f"/runs/{lab['runs'][2]}").text)
    assert client.post(url, data={"text": "x", "author": "m"}).status_code == 403
    assert client.post(url, data={"text": "x", "author": "m", "csrf": "0" * 64}).status_code == 403
    other = TestClient(create_app(db=lab["db"]), base_url=BASE)  # another session's token is not this one's
    assert other.post(url, data={"text": "x", "csrf": token}).status_code == 403
    for headers in ({"origin": "http://evil.example"}, {"origin": "null"}, {"referer": "http://evil.example/page"},
                    {"sec-fetch-site": "cross-site"}):
        assert client.post(url, data={"text": "x", "csrf": token}, headers=headers).status_code == 403, headers
    assert client.put(url, data={"text": "x", "csrf": token}).status_code == 405
    assert len(api.show_run(lab["runs"][2], db=lab["db"])["notes"]) == before
    assert client.post(url, data={"text": "ok", "csrf": token}, headers={"origin": BASE}).status_code == 303
    assert client.post(url, data={"text": "ok"}, headers={"x-csrf-token": token}).status_code == 303


def test_a_loopback_dashboard_answers_only_to_loopback_names(lab):
    app = create_app(db=lab["db"])
    assert TestClient(app, base_url="http://localhost:8765").get("/").status_code == 200
    assert TestClient(app, base_url="http://[::1]:8765").get("/").status_code == 200
    r = TestClient(app, base_url="http://rebound.evil.example:8765").get("/")  # DNS rebinding
    assert r.status_code == 403 and "Host" in r.text


def test_beyond_loopback_every_request_needs_the_token(lab):
    with pytest.raises(api.UserError, match="token"):
        create_app(db=lab["db"], host="0.0.0.0")
    app = create_app(db=lab["db"], host="0.0.0.0", token="s3cret-token")
    anon = TestClient(app, base_url="http://lab.example:8765", follow_redirects=False)
    for url in ("/", f"/runs/{lab['runs'][0]}", f"/runs/{lab['runs'][0]}/metrics.json", "/static/app.js", "/nope"):
        r = anon.get(url)
        assert r.status_code == 401 and "access token" in r.text, url
    assert anon.get("/?token=wrong").status_code == 401
    assert anon.post(f"/runs/{lab['runs'][0]}/notes", data={"text": "x"}).status_code == 401

    r = anon.get("/decisions?verdict=keep&token=s3cret-token")
    assert r.status_code == 303 and r.headers["location"] == "/decisions?verdict=keep"  # the token leaves the address bar
    assert "pretrainlab_token=s3cret-token" in r.headers["set-cookie"] and "HttpOnly" in r.headers["set-cookie"]
    assert anon.get("/decisions").status_code == 200  # the cookie carries it now
    assert TestClient(app, base_url="http://lab.example:8765").get("/", headers={"authorization": "Bearer s3cret-token"}).status_code == 200

    url = f"/runs/{lab['runs'][0]}/notes"
    token = csrf_of(anon.get(f"/runs/{lab['runs'][0]}").text)
    assert anon.post(url, data={"text": "x"}).status_code == 403  # the token alone is not enough: CSRF too
    assert anon.post(url, data={"text": "x", "csrf": token}, headers={"origin": "http://evil.example"}).status_code == 403
    r = anon.post(url, data={"text": "from the team box", "csrf": token, "author": "gina"}, headers={"origin": "http://lab.example:8765"})
    assert r.status_code == 303
    assert api.show_run(lab["runs"][0], db=lab["db"])["notes"][-1]["author"] == "gina"


def test_the_live_endpoint_changes_when_the_ledger_does(client, lab):
    url = f"/campaigns/{lab['campaign']}/live.json"
    first = client.get(url).json()
    assert first["version"] == client.get(url).json()["version"]  # nothing new: same version, the page redraws nothing
    assert isinstance(first["cost_ms"], int) and first["cost_ms"] >= 0  # the page asks again after >= 10x this (app.js)
    with Ledger(lab["db"]) as lg:
        lg.add_experiment("warmup 5% beats 2%", kind="config", proposer="hana", campaign_id=lab["campaign"], status="queued")
    second = client.get(url).json()
    assert second["version"] != first["version"] and "warmup 5% beats 2%" in second["board"] and "hana" in second["board"]
    assert {"by_index", "by_time", "time_unit"} <= set(second["progress"]) and second["timeline"]["lanes"] >= 1


# ---- the pieces -------------------------------------------------------------------------------------


def test_patch_lines_classify_a_unified_diff():
    kinds = [cls for cls, _ in views.patch_lines(PATCH)]
    assert kinds == ["meta", "meta", "meta", "hunk", "", "del", "add"]


def test_effect_and_p_value_text():
    screen = {"effect": -0.0343, "ci_low": None, "evidence": {"stage": "screen", "p_improvement": 0.9958}}
    assert views.effect(screen) == "-0.0343" and views.p_value(screen) == "P(better)=0.996 (screen)"
    claim = {"effect": -0.05, "ci_low": -0.197, "ci_high": 0.0966,
             "evidence": {"comparison": {"p_improvement": 0.0719, "p_regression": 0.928, "alpha": 0.025, "verdict": "no effect"}}}
    assert views.effect(claim) == "-0.0500 [-0.1970, +0.0966]" and views.p_value(claim) == "p(better)=0.0719 vs α 0.025"
    worse = {"evidence": {"comparison": {"p_improvement": 0.99, "p_regression": 0.004, "alpha": 0.025, "verdict": "regression"}}}
    assert views.p_value(worse) == "p(worse)=0.004 vs α 0.025"
    assert views.p_value(None) == views.effect(None) == ""


def test_timeline_packs_runs_into_slots():
    run = lambda rid, start, end, status="ok": {"run_id": rid, "experiment_id": "e", "seed": 0, "status": status,  # noqa: E731
                                               "created_at": f"2026-01-01T00:{start:02d}:00+00:00",
                                               "finished_at": f"2026-01-01T00:{end:02d}:00+00:00"}
    record = {"campaign": {"id": "c"}, "experiments": [{"id": "e", "decision": {"verdict": "keep"}}]}
    t = views.timeline(record, [run("a", 0, 10), run("b", 0, 5), run("c", 5, 9), run("d", 10, 20, "crashed")], [], now=0)
    assert t["lanes"] == 2 and t["unit"] == "minutes"
    assert [(b["href"][-1], b["lane"], b["x0"], b["x1"]) for b in t["bars"]] == [("b", 0, 0, 5), ("a", 1, 0, 10), ("c", 0, 5, 9),
                                                                                 ("d", 0, 10, 20)]
    assert next(b for b in t["bars"] if b["status"] == "crashed")["color"] == views.STATUS_COLORS["crashed"]


def test_scrub_and_redact_mask_keys():
    for secret in ("sk-ant-api03-abcdefghijklmnop", "sk-proj-abcdefghijklmnopqrstuvwx", "hf_abcdefghijklmnopqrstuvwx",
                   "ghp_abcdefghijklmnopqrstuvwxyz12", "AKIAABCDEFGHIJKLMNOP", "OPENAI_API_KEY=whatever", "MY_SECRET: 'x1'"):
        assert secret not in views.scrub(f"before {secret} after") and "[redacted]" in views.scrub(secret), secret
    kept = "tokens_per_s=48000 batch_tokens: 2048 val_bpb 3.7 sk-learn"
    assert views.scrub(kept) == kept
    red = views.redact({"api_key": "x", "hf_token": "y", "batch_tokens": 2048, "nested": [{"password": "z", "note": "sk-ant-api03-abcdefghij"}]})
    assert red == {"api_key": "[redacted]", "hf_token": "[redacted]", "batch_tokens": 2048,
                   "nested": [{"password": "[redacted]", "note": "[redacted]"}]}


# ---- the command line -----------------------------------------------------------------------------------


def test_ui_flags_and_a_missing_fastapi(tmp_path):
    from pretrainlab.cli import build_parser

    args = build_parser().parse_args(["ui", "--host", "0.0.0.0", "--port", "9000", "--db", "x.db", "--author", "ivy", "--open"])
    assert (args.host, args.port, args.db, args.author, args.open) == ("0.0.0.0", 9000, "x.db", "ivy", True)
    probe = ("import sys; sys.modules['fastapi'] = None; from pretrainlab.cli import main; rc = main(['ui']); "
             "print(rc, 'uvicorn' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path)
    assert out.stdout.split() == ["2", "False"], out.stderr
    assert out.stderr.strip() == "error: the dashboard needs fastapi, uvicorn and jinja2: pip install 'pretrainlab[ui]'"
    lazy = subprocess.run([sys.executable, "-c", "import sys; from pretrainlab.cli import build_parser; build_parser(); "
                           "print('fastapi' in sys.modules, 'jinja2' in sys.modules)"], capture_output=True, text=True)
    assert lazy.stdout.split() == ["False", "False"]  # `pretrainlab --help` stays fast


def test_ui_command_serves_and_prints_the_token_address(tmp_path):
    import httpx

    port = free_port()
    env = {**os.environ, "PRETRAINLAB_WORKSPACE": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    taken = subprocess.run([sys.executable, "-m", "pretrainlab", "ui", "--port", str(busy.getsockname()[1])], capture_output=True,
                           text=True, env=env, timeout=60)
    busy.close()
    assert taken.returncode == 2 and taken.stderr.count("\n") == 1 and "--port" in taken.stderr, taken.stderr
    proc = subprocess.Popen([sys.executable, "-m", "pretrainlab", "ui", "--host", "0.0.0.0", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        match = re.fullmatch(rf"pretrainlab ui: http://127\.0\.0\.1:{port}/\?token=(\S+)\n", line)
        if not match:
            pytest.fail(f"unexpected first line {line!r}")
        deadline = time.time() + 30
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/")
                break
            except httpx.ConnectError:
                assert time.time() < deadline
                time.sleep(0.1)
        assert r.status_code == 401
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as browser:
            r = browser.get(f"/?token={match.group(1)}", follow_redirects=True)
            assert r.status_code == 200 and "Nothing to show yet" in r.text
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_masking_never_breaks_a_pages_data(client, lab):
    """Text shaped like NAME="value" (a hypothesis, a query parameter) is masked before the page's data is encoded as
    JSON: masking the encoded JSON ate the backslash of \\" and cut the page's script data short."""
    for url in (f"/campaigns/{lab['campaign']}?sort=PASSWORD=%22x", f"/campaigns/{lab['campaign']}", f"/runs/{lab['runs'][0]}",
                f"/compare?runs={lab['runs'][0]},{lab['runs'][1]}"):
        text = client.get(url).text
        data = re.search(r'<script type="application/json" id="page-data">(.*?)</script>', text, re.S)
        assert data is not None, url
        json.loads(data.group(1))  # parses: the page's charts and live updates read it
    assert views.scrub('{"h": "unset HF_SECRET=\\"\\" first"}', markup=True) == '{"h": "unset HF_SECRET=\\"\\" first"}'
    assert views.scrub('<td>PASSWORD=hunter2</td>', markup=True) == "<td>[redacted]</td>"
    masked = json.loads(views.page_json({"note": 'API_KEY="sk-ant-api03-abcdefghij"', "api_key": "x"}))
    assert "sk-ant" not in masked["note"] and "[redacted]" in masked["note"] and masked["api_key"] == "[redacted]"
