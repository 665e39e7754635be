"""The dashboard in a real browser: Debian's chromium driven by Playwright (no browser
download), against the real server (uvicorn in a thread) on a real SQLite ledger, while a
campaign runs: the leaderboard fills in without a reload, approvals and notes land in the
ledger under the name typed, charts zoom, and ledger text carrying markup never runs.
Screenshots of every page go to $PRETRAINLAB_TEST_ARTIFACTS/ui (default test-artifacts/ui)."""

import os
import shutil
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the dashboard's extra: pip install 'pretrainlab[ui]'")
sync_api = pytest.importorskip("playwright.sync_api", reason="the browser tests drive chromium with Playwright: pip install playwright")
CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser")) if p), None)
if CHROMIUM is None:
    pytest.skip("no chromium on PATH: install Debian's chromium package (.ci/run does) to run the browser tests", allow_module_level=True)

from ui_lab import FAKE_KEY, XSS, Server, build_lab, campaign_config, campaign_workdir, new_campaign, start_campaign_thread  # noqa: E402

from pretrainlab import api  # noqa: E402
from pretrainlab.ui import create_app  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("PRETRAINLAB_TEST_ARTIFACTS") or ROOT / "test-artifacts") / "ui"
ENV_KEY = "sk-ant-api03-BROWSERenvKEY0123456789abcdefghij"
TIMEOUT_MS = 30_000


@pytest.fixture(scope="module")
def lab(tmp_path_factory, corpus_dir):
    root = tmp_path_factory.mktemp("ui-browser")
    (root / "home" / "corpus").mkdir(parents=True)
    (root / "home" / "corpus" / "sample").symlink_to(corpus_dir)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PRETRAINLAB_WORKSPACE", str(root))
        mp.setenv("PRETRAINLAB_HOME", str(root / "home"))
        mp.setenv("ANTHROPIC_API_KEY", ENV_KEY)  # in the server's environment for the whole module: no page may show it
        db = str(root / "lab.db")
        ids = build_lab(db)
        with Server(create_app(db=db, author="alice")) as server, sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM)
            try:
                yield {"db": db, "url": server.url, "browser": browser, **ids}
            finally:
                browser.close()


@pytest.fixture
def page(lab):
    """A fresh browser context per test; any script error or failed request fails the test."""
    context = lab["browser"].new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors = []
    page.on("pageerror", lambda e: errors.append(f"script error: {e}"))
    page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("dialog", lambda d: (errors.append(f"dialog: {d.message}"), d.dismiss()))
    page.errors = errors
    yield page
    context.close()
    assert errors == []


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def wait_until(page, expression: str, timeout_s: float = TIMEOUT_MS / 1000) -> None:
    """Poll a JavaScript expression until it is true (page.wait_for_function compiles its
    predicate with eval, which the dashboard's Content-Security-Policy forbids)."""
    deadline = time.time() + timeout_s
    while not page.evaluate(expression):
        assert time.time() < deadline, f"timed out waiting for {expression}"
        time.sleep(0.1)


def no_secret(page) -> None:
    html = page.content()
    assert ENV_KEY not in html and FAKE_KEY not in html


def test_the_leaderboard_updates_while_the_campaign_runs(lab, page):
    cid = new_campaign(lab["db"], "live sweep", campaign_config(budget_runs=10))
    page.goto(f"{lab['url']}/campaigns/{cid}")
    page.evaluate("window.__sameDocument = true")  # gone if the page ever reloads
    assert page.locator("#board tr[data-experiment]").count() == 0
    thread = start_campaign_thread(lab["db"], cid, campaign_workdir(cid), run_s=1.2)
    try:
        page.wait_for_selector("#board tr[data-experiment]")  # the baseline appears
        page.wait_for_selector("#inflight tbody tr")  # its runs, being written
        page.wait_for_selector("#timeline rect.plc-bar")
        shot(page, "campaign-live")
        wait_until(page, "document.querySelectorAll('#board tr[data-experiment]').length >= 3")
        page.wait_for_selector("#board .badge.v-keep")  # decided: the baseline is kept
        wait_until(page, "document.querySelectorAll('#progress circle.plc-pt').length >= 2")
    finally:
        thread.join(timeout=120)
    assert not thread.is_alive()
    wait_until(page, "document.getElementById('campaign-status').textContent.trim() === 'done'")
    experiments = api.list_experiments(cid, db=lab["db"])
    wait_until(page, f"document.querySelectorAll('#board tr[data-experiment]').length === {len(experiments)}")
    assert page.evaluate("window.__sameDocument") is True  # every update arrived without a reload
    assert int(page.evaluate("document.body.dataset.updates")) >= 3
    assert page.locator("#board .badge.v-discard, #board .badge.v-inconclusive").count() >= 1
    page.click("[data-xmode=by_time]")
    assert "since the campaign began" in page.locator("#progress .plc-label").first.text_content()
    no_secret(page)
    shot(page, "campaign-done")


def test_approve_in_the_browser_changes_the_ledger(lab, page):
    exp = lab["patch_experiment"]
    page.goto(f"{lab['url']}/decisions")
    row = page.locator(f"#awaiting tr[data-experiment='{exp}']")
    assert XSS in row.locator("td.hyp").text_content()  # the markup is shown as text
    shot(page, "decisions")
    row.locator("input[name=author]").fill("dana")
    row.locator("input[name=reason]").fill("small patch, worth a screen")
    row.locator("button.approve").click()
    page.wait_for_url("**/decisions")
    assert page.locator(f"#awaiting tr[data-experiment='{exp}']").count() == 0
    assert api.show_experiment(exp, db=lab["db"])["status"] == "queued"

    decided = lab["decided"]
    page.goto(f"{lab['url']}/experiments/{decided}")
    page.fill(".review-form input[name=author]", "erin")
    page.fill(".review-form input[name=reason]", "the screen was one seed")
    page.click(".review-form button.reject")
    page.wait_for_url(f"**/experiments/{decided}")
    last = api.show_experiment(decided, db=lab["db"])["decisions"][-1]
    assert (last["verdict"], last["decided_by"], last["rationale"]) == ("discard", "erin", "the screen was one seed")
    assert page.locator("table .badge.v-discard").count() >= 1
    page.goto(f"{lab['url']}/decisions?who=erin")
    assert page.locator("#decisions tbody tr").count() == 1


def test_notes_post_with_their_author(lab, page):
    run = lab["runs"][1]
    page.goto(f"{lab['url']}/runs/{run}")
    page.fill(".note-form input[name=author]", "frank")
    page.fill(".note-form textarea[name=text]", "grad-norm spike at step 12 <b>worth a look</b>")
    page.click(".note-form button[type=submit]")
    page.wait_for_url(f"**/runs/{run}")
    note = page.locator(".notes li").last
    assert note.locator(".who").text_content() == "frank" and "<b>worth a look</b>" in note.text_content()
    assert api.show_run(run, db=lab["db"])["notes"][-1]["author"] == "frank"
    assert page.input_value(".note-form input[name=author]") == "frank"  # remembered for the next form

    exp = lab["suggested"]
    page.goto(f"{lab['url']}/experiments/{exp}")
    page.fill(".note-form textarea[name=text]", "try n_layer 6 as well")
    page.click(".note-form button[type=submit]")
    page.wait_for_url(f"**/experiments/{exp}")
    assert [(n["author"], n["text"]) for n in api.show_experiment(exp, db=lab["db"])["notes"]] == [("frank", "try n_layer 6 as well")]


def test_run_curves_zoom_and_reset(lab, page):
    page.goto(f"{lab['url']}/runs/{lab['runs'][0]}")
    page.wait_for_selector("#chart-loss path.plc-line")
    page.wait_for_selector("[data-doctor] .badge")  # the doctor's findings, loaded after the page
    assert "40 steps" in page.text_content("#curve-state")
    chart = page.locator("#chart-loss")
    reset = chart.locator("button", has_text="reset zoom")
    assert reset.is_hidden()
    box = chart.locator("svg").bounding_box()
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] * 0.3, y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.6, y + 2, steps=5)
    page.mouse.up()
    assert reset.is_visible()
    ticks = chart.locator(".plc-axes text").all_text_contents()
    assert "40" not in ticks  # zoomed into the middle of the run
    assert page.locator("#chart-lr .plc-axes text").all_text_contents()[:3] == ticks[:3]  # the other curves follow its steps
    page.mouse.move(box["x"] + box["width"] * 0.45, y)
    assert chart.locator(".plc-tip").is_visible() and "loss" in chart.locator(".plc-tip").text_content()
    shot(page, "run-zoomed")
    chart.locator("svg").dblclick()
    assert reset.is_hidden() and page.locator("#chart-lr button", has_text="reset zoom").is_hidden()
    chart.locator("button", has_text="log x").click()
    assert chart.locator("button", has_text="log x").get_attribute("aria-pressed") == "true"
    page.click("[data-xkey=tokens]")
    assert chart.locator(".plc-label").first.text_content().startswith("tokens")
    no_secret(page)


def test_every_page_while_a_campaign_runs(lab, page):
    """Each page loads while a campaign runs, runs its script without error, shows no key, and
    runs no ledger markup; a run being written draws its curves as they grow."""
    cid = new_campaign(lab["db"], "background sweep", campaign_config(budget_runs=60))
    thread = start_campaign_thread(lab["db"], cid, campaign_workdir(cid), run_s=2.0)
    try:
        deadline = time.time() + 30
        while not (live := api.live_runs(cid, db=lab["db"])):
            assert time.time() < deadline and thread.is_alive(), "no run was started"
            time.sleep(0.05)
        page.goto(f"{lab['url']}/campaigns/{cid}/live/{live[0]['key']}")
        page.wait_for_selector("#chart-loss path.plc-line")
        assert page.text_content("h1 .badge") in ("being written", "ended, not registered yet")
        shot(page, "run-live")
        page.evaluate("window.__sameDocument = true")
        wait_until(page, "document.getElementById('curve-state').textContent.startsWith('40 steps')")  # grown to its end
        assert page.evaluate("window.__sameDocument") is True  # in place, without a reload
        runs = lab["runs"]
        pages = {"campaigns": "/", "campaign-running": f"/campaigns/{cid}", "campaign": f"/campaigns/{lab['campaign']}",
                 "experiment-patch": f"/experiments/{lab['patch_experiment']}", "experiment": f"/experiments/{lab['decided']}",
                 "runs": "/runs", "run": f"/runs/{runs[0]}", "compare": f"/compare?runs={runs[0]},{runs[1]}", "decisions-all": "/decisions",
                 "corpora": "/corpora", "corpus": "/corpora/sample", "not-found": "/runs/nosuchrun"}
        for name, url in pages.items():
            response = page.goto(lab["url"] + url)
            page.wait_for_load_state("networkidle")
            assert response.status == (404 if name == "not-found" else 200), name
            assert page.evaluate("window.__xss") is None, name
            no_secret(page)
            shot(page, name)
        assert thread.is_alive(), "the campaign ended before every page was seen"
    finally:
        api.research_stop(cid, db=lab["db"])  # `research stop`: the loop finishes at its next poll
        thread.join(timeout=120)
    assert api.research_status(cid, db=lab["db"])["status"] == "stopped"
    assert page.text_content(".error-message").startswith("no run 'nosuchrun'")
    page.errors.remove("console error: Failed to load resource: the server responded with a status of 404 (Not Found)")
    page.goto(f"{lab['url']}/experiments/{lab['patch_experiment']}")
    assert page.text_content("h1.hypothesis") == XSS + " gated MLP"
    assert page.locator(".patch .add").count() == 1 and page.locator(".patch .del").count() == 1
    page.goto(f"{lab['url']}/compare?runs={runs[0]},{runs[1]}")
    page.wait_for_selector("#chart-loss path.plc-line")
    assert page.locator("#chart-loss path.plc-line").count() == 2  # one curve per run
    page.goto(f"{lab['url']}/runs")
    page.check(f"input[value='{runs[0]}']")
    page.check(f"input[value='{runs[2]}']")
    page.click("text=Compare selected")
    page.wait_for_selector("#chart-loss path.plc-line")
    assert runs[2] in page.url
