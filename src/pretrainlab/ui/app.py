"""The dashboard's routes: server-rendered pages over `pretrainlab.api`, JSON for the live parts.

    GET  /                               campaigns
    GET  /campaigns/ID                   leaderboard, progress chart, slot timeline, LLM spend (live)
    GET  /campaigns/ID/live.json         what the campaign page polls
    GET  /campaigns/ID/report            the campaign's static HTML report
    GET  /campaigns/ID/live/KEY          a run of the campaign still being written
    GET  /experiments/ID                 hypothesis, proposer, change, runs, decisions, notes, doctor
    GET  /runs, /runs/ID                 runs; one run's curves at full resolution (live while it runs)
    GET  /runs/ID/metrics.json           its metrics.jsonl as columns
    GET  /runs/ID/doctor                 the doctor's findings (an HTML fragment, computed once per run state)
    GET  /compare?runs=A,B               recipe diff, metric deltas, overlaid curves
    GET  /decisions                      every decision, filtered by who decided and verdict
    GET  /corpora, /corpora/NAME         prepared corpora and their data report
    POST /experiments/ID/review          approve / reject (recorded as the author's decision)
    POST /experiments/ID/notes           a note on an experiment
    POST /runs/ID/notes                  a note on a run

GETs only read; POSTs change the ledger and are guarded by security.Guard (token, CSRF,
same origin). Route handlers are plain functions: FastAPI runs them in its thread pool, so a
slow ledger or doctor call never blocks the event loop.
"""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
import threading
import time
from collections import OrderedDict
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlencode

from fastapi import FastAPI, Request
from fastapi.middleware.gzip import GZipMiddleware
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, FileSystemLoader
from markupsafe import Markup
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import api
from ..errors import LedgerError, UserError
from . import views
from .security import CSRF_FIELD, Guard, is_loopback

HERE = Path(__file__).parent
ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")  # run, experiment and campaign ids: never a path
LIVE_KEY = re.compile(r"^[A-Za-z0-9]+-s\d+$")
POLL_S = 2.0  # how often live pages ask for news
LIVE_COST_FACTOR = 10  # a live campaign page waits at least this many times what its last update cost the server
MAX_COMPARE = 8
MAX_RUNS_SHOWN = 5000  # the runs page's longest table: a browser lays out 60,000 cells in ~5 s on 2 cores
DECISIONS_SHOWN = 200  # the decisions log's newest rows on a page; "show more" asks for more
AUTHOR_COOKIE = "pretrainlab_author"


class NotFound(Exception):
    """A page for something the ledger does not have: 404 with one line."""


def _check_id(value: str, what: str) -> str:
    if not ID.match(value or ""):
        raise NotFound(f"no {what} {value!r}")
    return value


class DoctorCache:
    """The doctor's report per run, computed once per state of the run's metrics file (a
    finished run's never changes; a live run's is recomputed when it has grown)."""

    def __init__(self, size: int = 512):
        self.size, self.items, self.lock = size, OrderedDict(), threading.Lock()

    def get(self, run_id: str, db: str | None) -> dict:
        row = api.show_run(run_id, db=db)
        path = Path(row["run_dir"]) / "metrics.jsonl"
        stat = path.stat() if path.is_file() else None
        key = (row["run_id"], row["status"], stat.st_size if stat else -1, stat.st_mtime_ns if stat else -1)
        with self.lock:
            if key in self.items:
                self.items.move_to_end(key)
                return self.items[key]
        if not Path(row["run_dir"]).is_dir():
            report = {"verdict": "no_data", "findings": [], "data_quality": [f"run directory {row['run_dir']} is missing"], "checks": []}
        else:
            report = api.diagnose_run(row["run_id"], db=db).to_dict()
        with self.lock:
            self.items[key] = report
            while len(self.items) > self.size:
                self.items.popitem(last=False)
        return report


def create_app(db: str | None = None, author: str = "person", token: str | None = None, host: str = "127.0.0.1",
               poll_s: float = POLL_S):
    """The dashboard as an ASGI app. `db`: the ledger URL (default: the workspace's); `author`:
    the name approvals and notes are recorded under unless the form gives another; `token`:
    required when `host` is not a loopback address (see security.py)."""
    loopback = is_loopback(host)
    if not loopback and not token:
        raise UserError(f"--host {host}: a dashboard reachable from the network needs an access token")
    app = FastAPI(title="pretrainlab", docs_url=None, redoc_url=None, openapi_url=None)
    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=True, finalize=_finalize, trim_blocks=True,
                      lstrip_blocks=True)
    env.filters.update(num=views.num, when=views.when, duration=views.duration, effect=views.effect, pvalue=views.p_value,
                       who=views.who, decider=views.decider, change=views.change_summary, patch_lines=views.patch_lines,
                       pretty=views.pretty_json, short=views.short, cell=api.format_cell, first_line=views.first_line,
                       tojson=views.page_json)
    templates = Jinja2Templates(env=env)
    app.add_middleware(GZipMiddleware, minimum_size=100_000, compresslevel=1)  # a long run's curves: megabytes of JSON
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    doctor = DoctorCache()

    def page(request: Request, name: str, code: int = 200, **ctx) -> HTMLResponse:
        ctx.update(csrf=request.state.csrf, author=unquote(request.cookies.get(AUTHOR_COOKIE, "")) or author, poll_ms=int(poll_s * 1000),
                   path=request.url.path, here=request.url.path + (f"?{request.url.query}" if request.url.query else ""),
                   ledger=_ledger_name(db))
        return templates.TemplateResponse(request, name, ctx, status_code=code)

    # ---- errors: one line, never a traceback -------------------------------------------------------

    @app.exception_handler(NotFound)
    def not_found(request: Request, exc: NotFound):
        return page(request, "error.html", 404, title="Not found", message=str(exc))

    @app.exception_handler(StarletteHTTPException)
    def http_error(request: Request, exc: StarletteHTTPException):
        message = "no such page" if exc.status_code == 404 else str(exc.detail)
        return page(request, "error.html", exc.status_code, title=f"Error {exc.status_code}", message=message)

    @app.exception_handler(RequestValidationError)
    def bad_request(request: Request, exc: RequestValidationError):
        where = ", ".join(str(e["loc"][-1]) for e in exc.errors()) or "the request"
        return page(request, "error.html", 400, title="Bad request", message=f"{where}: not a valid value")

    @app.exception_handler(UserError)
    def user_error(request: Request, exc: UserError):  # the api's one-line message: an unknown id, a bad filter, an empty note
        if isinstance(exc, LedgerError):  # locked, damaged, unreachable: the page may work again once that is fixed
            return page(request, "error.html", 503, title="Ledger unavailable", message=str(exc))
        status = 404 if request.method == "GET" and str(exc).startswith("no ") else 400
        return page(request, "error.html", status, title="Not found" if status == 404 else "Not done", message=str(exc))

    @app.exception_handler(Exception)
    def internal_error(request: Request, exc: Exception):  # the traceback goes to the server's log, never to the page
        return page(request, "error.html", 500, title="Internal error",
                    message=f"the dashboard failed on this page ({type(exc).__name__}); the server's log has the details")

    # ---- campaigns ---------------------------------------------------------------------------------

    @app.get("/", response_class=HTMLResponse)
    def campaigns(request: Request):
        try:
            rows = api.research_status(None, db=db)
        except UserError as e:  # no ledger yet: an empty page that says where it looked
            return page(request, "campaigns.html", campaigns=[], empty=str(e))
        return page(request, "campaigns.html", campaigns=rows, empty=None)

    @app.get("/campaigns")
    def campaigns_redirect():
        return RedirectResponse("/", status_code=307)

    @app.get("/campaigns/{cid}", response_class=HTMLResponse)
    def campaign(request: Request, cid: str, sort: str = "val_bpb"):
        data = campaign_data(_check_id(cid, "campaign"), sort)
        return page(request, "campaign.html", **data, sort=sort, live_cost_factor=LIVE_COST_FACTOR)

    @app.get("/campaigns/{cid}/live.json")
    def campaign_live(request: Request, cid: str, sort: str = "val_bpb"):
        started = time.perf_counter()
        data = campaign_data(_check_id(cid, "campaign"), sort)
        board = env.get_template("_board.html").render(rows=data["rows"], csrf=request.state.csrf, here=f"/campaigns/{cid}",
                                                        author=unquote(request.cookies.get(AUTHOR_COOKIE, "")) or author)
        inflight = env.get_template("_inflight.html").render(live=data["live"], campaign=data["campaign"])
        payload = {"status": data["campaign"]["status"], "header": env.get_template("_campaign_head.html").render(**data),
                   "board": board, "inflight": inflight, "progress": data["progress"], "timeline": data["timeline"]}
        body = json.dumps(payload, sort_keys=True, default=str)  # serialised once: its hash is the version
        version = hashlib.sha1(body.encode()).hexdigest()[:16]
        # what this answer cost the server: the page waits at least LIVE_COST_FACTOR times that before asking again, so a
        # large campaign's page never keeps the server busy more than a small share of its time
        cost_ms = round((time.perf_counter() - started) * 1000)
        return Response(body[:-1] + f', "version": "{version}", "cost_ms": {cost_ms}}}', media_type="application/json")

    def campaign_data(cid: str, sort: str) -> dict:
        record = api.campaign_record(cid, db=db)
        cid = record["campaign"]["id"]
        status = api.research_status(cid, db=db, record=record)
        runs = api.list_runs(campaign=cid, limit=0, db=db)
        live = api.live_runs(cid, db=db)
        now = time.time()
        config = record["campaign"]["config"] or {}
        return {"campaign": record["campaign"], "status": status, "rows": views.board_rows(record, sort),
                "progress": views.progress(record, runs, now), "timeline": views.timeline(record, runs, live, now), "live": live,
                "spend": views.spend(config), "noise": views.noise(record), "settings": views.redact(config.get("campaign") or {}),
                "notes": [n for n in record["notes"] if not n.get("experiment_id") and not n.get("run_id")][-20:],
                "num_runs": len(runs)}

    @app.get("/campaigns/{cid}/report", response_class=HTMLResponse)
    def campaign_report(cid: str):
        with tempfile.TemporaryDirectory() as tmp:
            path = api.write_report(_check_id(cid, "campaign"), Path(tmp) / "report.html", db=db)
            text = views.scrub(path.read_text(encoding="utf-8"))
        # the report is a self-contained page with inline CSS and no script
        return HTMLResponse(text, headers={"content-security-policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:"})

    @app.get("/campaigns/{cid}/doctor", response_class=HTMLResponse)
    def campaign_doctor(cid: str):
        """The doctor's cluster-level findings over the campaign (queue wait, idle accelerators,
        stragglers, restarts), a fragment the campaign page loads after itself."""
        report = api.diagnose_campaign(_check_id(cid, "campaign"), db=db)
        return HTMLResponse(env.get_template("_doctor.html").render(report=report, campaign=True))

    @app.get("/campaigns/{cid}/live/{key}", response_class=HTMLResponse)
    def live_run(request: Request, cid: str, key: str):
        found = _live(cid, key)
        if found["finished"]:  # it has ended since the link was drawn: its page in the ledger, once registered
            registered = next((r for r in api.list_runs(campaign=cid, limit=0, db=db) if r["run_dir"] == found["run_dir"]), None)
            if registered is not None:
                return RedirectResponse(f"/runs/{registered['run_id']}", status_code=303)
        run = {"run_id": key, "status": "finished" if found["finished"] else "running", "experiment_id": found["experiment_id"],
               "seed": found["seed"], "campaign_id": cid, "created_at": found["started_at"], "notes": [], "summary": None, "recipe": None}
        return page(request, "run.html", run=run, live=True, metrics_url=f"/campaigns/{cid}/live/{key}/metrics.json")

    @app.get("/campaigns/{cid}/live/{key}/metrics.json")
    def live_run_metrics(cid: str, key: str, after: int | None = None, after_eval: int | None = None):
        return Response(api.run_metrics_json(_live(cid, key)["run_dir"], after_step=after, after_eval=after_eval, db=db),
                        media_type="application/json")

    def _live(cid: str, key: str) -> dict:
        """A run directory of the campaign's loop, by its name (never a path)."""
        _check_id(cid, "campaign")
        if not LIVE_KEY.match(key):
            raise NotFound(f"no live run {key!r}")
        found = next(iter(api.live_runs(cid, finished=True, db=db, key=key)), None)
        if found is None:
            raise NotFound(f"no run {key} in campaign {cid}'s directory here (the loop may run in another workspace): see the campaign page")
        return found

    # ---- experiments -------------------------------------------------------------------------------

    @app.get("/experiments/{eid}", response_class=HTMLResponse)
    def experiment(request: Request, eid: str):
        exp = api.show_experiment(_check_id(eid, "experiment"), db=db)
        change = exp["change"] or {}
        parent = change.get("parent")
        return page(request, "experiment.html", exp=exp, change=change, parent=parent,
                    data_recipe=views.redact(change.get("data_recipe")) if change.get("data_recipe") else None,
                    reviewable=exp["status"] in ("awaiting-approval", "decided", "queued"))

    @app.post("/experiments/{eid}/review")
    async def review(request: Request, eid: str):
        form = await _form(request)
        action = form.get("action")
        if action not in ("approve", "reject"):
            raise UserError("review: the action must be approve or reject")
        name = _author(form, author)
        reason = (form.get("reason") or "").strip() or None
        try:
            await _in_thread(api.research_review, _check_id(eid, "experiment"), action == "approve", name, reason, db=db)
        except UserError as e:  # overturning the statistics needs a reason: the CLI's --reason is the form's reason field here
            if reason is None and "--reason" in str(e):
                raise UserError(f"{e} (here: the reason field on the experiment's page, /experiments/{eid})") from None
            raise
        return _back(form, f"/experiments/{eid}", name)

    @app.post("/experiments/{eid}/notes")
    async def experiment_note(request: Request, eid: str):
        form = await _form(request)
        name = _author(form, author)
        await _in_thread(api.note_experiment, _check_id(eid, "experiment"), form.get("text", ""), name, db=db)
        return _back(form, f"/experiments/{eid}", name)

    # ---- runs --------------------------------------------------------------------------------------

    @app.get("/runs", response_class=HTMLResponse)
    def runs(request: Request, status: str = "", campaign: str = "", limit: int = 200):
        limit = max(1, min(limit, MAX_RUNS_SHOWN))
        try:
            rows = api.list_runs(status=status or None, campaign=campaign or None, limit=limit + 1, db=db)  # one more: are there more?
        except UserError as e:
            if "no ledger" not in str(e):
                raise
            return page(request, "runs.html", runs=[], empty=str(e), status=status, campaign=campaign, more_url=None)
        more = {"status": status, "campaign": campaign, "limit": min(MAX_RUNS_SHOWN, limit * 5)}
        more_url = "/runs?" + urlencode({k: v for k, v in more.items() if v}) if len(rows) > limit and limit < MAX_RUNS_SHOWN else None
        return page(request, "runs.html", runs=rows[:limit], empty=None, status=status, campaign=campaign, more_url=more_url,
                    capped=len(rows) > limit and limit >= MAX_RUNS_SHOWN)

    @app.get("/runs/{rid}", response_class=HTMLResponse)
    def run(request: Request, rid: str):
        row = api.show_run(_check_id(rid, "run"), db=db)
        row["recipe"] = views.redact(row["recipe"])
        prov = views.redact(row.get("provenance") or {})
        return page(request, "run.html", run=row, live=False, provenance=prov, metrics_url=f"/runs/{row['run_id']}/metrics.json",
                    dir_missing=not Path(row["run_dir"]).is_dir())

    @app.get("/runs/{rid}/metrics.json")
    def run_metrics(rid: str, after: int | None = None, after_eval: int | None = None):
        rid = api.show_run(_check_id(rid, "run"), db=db)["run_id"]  # an id, never a path
        return Response(api.run_metrics_json(rid, after_step=after, after_eval=after_eval, db=db),  # numbers, and the names of domains
                        media_type="application/json")  # and splits

    @app.get("/runs/{rid}/doctor", response_class=HTMLResponse)
    def run_doctor(request: Request, rid: str):
        report = doctor.get(_check_id(rid, "run"), db)
        return HTMLResponse(env.get_template("_doctor.html").render(report=report, run_id=rid))

    @app.post("/runs/{rid}/notes")
    async def run_note(request: Request, rid: str):
        form = await _form(request)
        name = _author(form, author)
        await _in_thread(api.note_run, _check_id(rid, "run"), form.get("text", ""), name, db=db)
        return _back(form, f"/runs/{rid}", name)

    @app.get("/compare", response_class=HTMLResponse)
    def compare(request: Request):
        given = ",".join(request.query_params.getlist("runs"))  # ?runs=A,B or ?runs=A&runs=B (the runs page's checkboxes)
        ids = list(dict.fromkeys(r for r in re.split(r"[,\s]+", given) if r))[:MAX_COMPARE]
        if len(ids) < 2:
            return page(request, "compare.html", result=None, ids=ids, message="pick two or more runs: /compare?runs=RUN_A,RUN_B")
        result = api.compare_runs([_check_id(r, "run") for r in ids], db=db)
        return page(request, "compare.html", result=views.redact(result), ids=[r["run_id"] for r in result["runs"]], message=None)

    # ---- decisions and corpora -----------------------------------------------------------------------

    @app.get("/decisions", response_class=HTMLResponse)
    def decisions(request: Request, who: str = "", verdict: str = "", campaign: str = "", limit: int = DECISIONS_SHOWN):
        try:
            everything = api.list_decisions(campaign=campaign or None, db=db)
            waiting = api.list_experiments(status="awaiting-approval", db=db, brief=True)
            campaigns_ = api.research_status(None, db=db)
        except UserError as e:
            if "no ledger" not in str(e):
                raise
            return page(request, "decisions.html", decisions=[], waiting=[], deciders=[], campaigns=[], empty=str(e),
                        who=who, verdict=verdict, campaign=campaign)
        deciders = sorted({d["decided_by"] for d in everything} | {d["model_id"] for d in everything if d["model_id"]})
        matching = [d for d in everything if (not verdict or d["verdict"] == verdict) and (not who or who in (d["decided_by"], d["model_id"]))]
        limit = max(1, limit)
        more = {"who": who, "verdict": verdict, "campaign": campaign, "limit": min(len(matching), max(limit * 4, 1000))}
        return page(request, "decisions.html", decisions=matching[:limit], num_matching=len(matching), waiting=waiting, deciders=deciders,
                    campaigns=campaigns_, empty=None, who=who, verdict=verdict, campaign=campaign,
                    more_url="/decisions?" + urlencode({k: v for k, v in more.items() if v}) if len(matching) > limit else None)

    @app.get("/corpora", response_class=HTMLResponse)
    def corpora(request: Request):
        return page(request, "corpora.html", corpora=api.list_corpora())

    @app.get("/corpora/{name}", response_class=HTMLResponse)
    def corpus(request: Request, name: str):
        found = _corpus(name)
        try:
            info, error = api.corpus_info(found["path"]), None
        except UserError as e:
            info, error = None, str(e)
        return page(request, "corpus.html", corpus=found, info=views.redact(info) if info else None, error=error)

    @app.get("/corpora/{name}/report", response_class=HTMLResponse)
    def corpus_report(name: str):
        info = api.corpus_info(_corpus(name)["path"])
        with tempfile.TemporaryDirectory() as tmp:
            text = api.write_corpus_report_html(info, Path(tmp) / "report.html").read_text(encoding="utf-8")
        return HTMLResponse(views.scrub(text), headers={"content-security-policy": "default-src 'none'; style-src 'unsafe-inline'"})

    def _corpus(name: str) -> dict:
        found = next((c for c in api.list_corpora() if c["name"] == name), None)
        if found is None:
            raise NotFound(f"no prepared corpus {name!r} under the corpus directory: see /corpora")
        return found

    return Guard(app, token, loopback)


# ---- helpers -------------------------------------------------------------------------------------------


def _finalize(value):
    """Every {{ value }} on a page passes here: None prints as nothing, key-shaped text is masked."""
    if value is None:
        return ""
    if isinstance(value, views.PageJSON):
        return value  # redacted before it was encoded (masking JSON text would cut it at an escaped quote)
    if isinstance(value, Markup):
        return Markup(views.scrub(str(value), markup=True))
    if isinstance(value, str):
        return views.scrub(value)
    return value


def _ledger_name(db: str | None) -> str:
    return "ledger: " + (db if db and "://" not in db else (db.split("://")[0] + "://…" if db else "workspace default"))


async def _form(request: Request) -> dict[str, str]:
    """A url-encoded form (the Guard has already checked its CSRF token)."""
    body = (await request.body()).decode("utf-8", "replace")
    return {k: v[-1] for k, v in parse_qs(body, keep_blank_values=True).items() if k != CSRF_FIELD}


async def _in_thread(fn, *args, **kwargs):
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(fn, *args, **kwargs)


def _author(form: dict, default: str) -> str:
    name = " ".join((form.get("author") or "").split())[:80]
    return api.check_person(name or default)


def _back(form: dict, default: str, name: str) -> Response:
    """303 to the page the form came from (a local path only), remembering the author's name."""
    target = form.get("next") or default
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        target = default
    response = RedirectResponse(quote(target, safe="/?=&%#:,.-_~"), status_code=303)
    response.set_cookie(AUTHOR_COOKIE, quote(name), httponly=True, samesite="lax")
    return response

