"""The ledger on both backends (SQLite; PostgreSQL when PRETRAINLAB_TEST_PG_URL is set):
migrations, run registration from real run directories, attribution of experiments and
decisions, filters, run references, compare (diff, deltas, plots) and export."""

import hashlib
import json
import shutil
import sys

import pytest
from conftest import tiny_overrides

from pretrainlab import api
from pretrainlab.errors import UserError
from pretrainlab.ledger import MIGRATIONS, Ledger
from pretrainlab.ledger.db import to_utc
from pretrainlab.ledger.rundir import derived_run_id


@pytest.fixture(scope="module")
def real_runs(corpus_dir, tmp_path_factory):
    """Two real tiny runs with evals every 2 steps; B differs in n_layer, optim.lr and seed."""
    root = tmp_path_factory.mktemp("runs")
    base = {"budget.tokens": 4096, "train.eval_every": 2}
    a, _ = api.train_run("tiny-cpu", tiny_overrides(corpus_dir, **base), root / "a", echo=False, ledger=False)
    b, _ = api.train_run("tiny-cpu", tiny_overrides(corpus_dir, **base, **{"model.n_layer": 1, "optim.lr": 0.02, "seed": 1}),
                         root / "b", echo=False, ledger=False)
    return a, b


def metrics_rows(run_dir, kind=None):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if kind is None or r["type"] == kind]


def fake_record(run_id, status="ok", val_bpb=3.0, name="tiny-cpu", n_layer=4, created="2026-01-01T00:00:00+00:00",
                compile=False, weights=None):
    recipe = {"name": name, "seed": 0, "model": {"n_layer": n_layer, "n_embd": 128}, "train": {"compile": compile},
              "data": {"weights": weights}}
    run = {"run_id": run_id, "run_dir": f"/runs/{run_id}", "recipe_name": name, "recipe_hash": "0" * 12, "recipe": recipe, "seed": 0,
           "git_commit": "abc", "git_diff": "", "provenance": {"run_id": run_id}, "device": "cpu", "world_size": 1, "status": status,
           "val_bpb": val_bpb, "params": 1000, "tokens": 2048, "steps": 2, "seconds": 1.0, "tokens_per_s": 2048.0, "mfu": None,
           "peak_mem_mb": 100.0, "summary": {"status": status, "val_bpb": val_bpb}, "created_at": to_utc(created), "finished_at": None}
    return {"run": run, "evals": [], "series": None}


# ---- schema ---------------------------------------------------------------------------------


def test_migrations_apply_once_in_order(ledger_url):
    versions = [v for v, _ in MIGRATIONS]
    assert versions == sorted(set(versions)) and versions[0] == 1
    with Ledger(ledger_url) as lg:
        rows = lg.db.query("SELECT version FROM schema_migrations ORDER BY version")
        assert [r["version"] for r in rows] == versions
        for table in ("runs", "campaigns", "experiments", "decisions", "notes", "evals", "run_series"):
            assert lg.db.query_one(f"SELECT count(*) AS n FROM {table}")["n"] == 0
    with Ledger(ledger_url) as lg:  # reopening applies nothing twice
        assert [r["version"] for r in lg.db.query("SELECT version FROM schema_migrations ORDER BY version")] == versions
        with lg.db.transaction():
            lg.db.execute("INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)", (versions[-1] + 1, "2030-01-01"))
    with pytest.raises(UserError, match="newer than this pretrainlab"):
        Ledger(ledger_url)


def test_a_ledger_a_newer_lab_only_added_to_stays_usable(ledger_url):
    """A newer lab's migrations are applied when it first opens a shared ledger. A migration that only
    added (its schema_migrations.oldest_lab names an older lab) leaves it usable by this lab; one that
    did not (no oldest_lab) makes this lab refuse it, naming the version it needs."""
    from pretrainlab.ledger.schema import OLDEST_LAB

    latest = MIGRATIONS[-1][0]
    assert OLDEST_LAB[4] == 3  # migration 4 itself only added a column
    with Ledger(ledger_url) as lg:
        assert {r["version"]: r["oldest_lab"] for r in lg.db.query("SELECT version, oldest_lab FROM schema_migrations")}[4] == 3
        campaign = lg.create_campaign("shared", goal="val_bpb", config={"recipe": "tiny-cpu"})
        with lg.db.transaction():  # what a newer lab's additive migration leaves behind
            lg.db.execute("ALTER TABLE campaigns ADD COLUMN future_notes TEXT")
            lg.db.execute("INSERT INTO schema_migrations (version, applied_at, oldest_lab) VALUES (?, ?, ?)",
                          (latest + 1, "2030-01-01", latest))
    with Ledger(ledger_url) as lg:  # opens, reads and writes as before
        assert lg.get_campaign(campaign)["id"] == campaign
        lg.add_note("still here", author="dana", campaign_id=campaign)
        assert [n["text"] for n in lg.list_notes(campaign_id=campaign)] == ["still here"]
        with lg.db.transaction():  # and then one that changed what this lab reads
            lg.db.execute("INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)", (latest + 2, "2030-01-02"))
    with pytest.raises(UserError, match=f"newer than this pretrainlab's \\({latest}\\), and a lab that knows version {latest + 2} or later"):
        Ledger(ledger_url)


def test_migration_2_types_campaign_state_written_before(ledger_url):
    """A ledger written by the schema-1 lab (phase and seeds folded into "running:3", roles only
    inside the change JSON) gets phase, planned_seeds and role as columns when it is opened."""
    import json as _json

    from pretrainlab.ledger.db import PostgresDatabase, SQLiteDatabase, now, resolve_url
    from pretrainlab.ledger.schema import statements

    target = resolve_url(ledger_url)  # a bare connection: no migration applied on open
    db = SQLiteDatabase(target.path) if target.kind == "sqlite" else PostgresDatabase(target.url)
    with db.transaction():  # the schema as version 1 left it
        db.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)")
        for stmt in statements(MIGRATIONS[0][1]):
            db.execute(stmt)
        db.execute("INSERT INTO schema_migrations (version, applied_at) VALUES (1, ?)", (now(),))
        db.execute("INSERT INTO campaigns (id, name, status, created_at) VALUES ('c1', 'old', 'done', ?)", (now(),))
        rows = [  # (id, hypothesis, proposer, proposer_type, change, status) as the schema-1 campaign wrote them
            ("e1", "baseline: the starting recipe", "campaign", "strategy", {"values": {}, "recipe": {}}, "running:3"),
            ("e2", "sweep: optim.lr 0.01 -> 0.02", "sweep", "strategy", {"values": {"optim.lr": 0.02}, "sweep": ["optim.lr", 0.02]}, "decided"),
            ("e3", "raise lr", "optuna", "strategy", {"values": {"optim.lr": 0.03}}, "running:1"),
            ("e4", "alice's idea", "alice", "person", {"values": {"optim.wd": 0.1}}, "queued"),
            ("e5", "combine e2 and e3", "campaign", "strategy", {"combines": ["e2", "e3"], "parent": "e2"}, "queued"),
            ("e6", "confirmation: the final recipe", "campaign", "strategy", {"confirm": "final", "of": "e2", "seeds": [1, 2]}, "measured"),
            ("e7", "ablation: without optim.lr", "campaign", "strategy", {"confirm": "ablation", "of": "e2", "seeds": [1, 2]}, "running:2"),
            ("e8", "hand back without optim", "campaign", "strategy", {"pruned": ["optim"], "parent": "e2"}, "decided"),
            ("e9", "transfer check of e3", "campaign", "strategy", {"transfer_of": "e3", "role": "candidate"}, "running:3"),
            ("e10", "proxy 1/12", "mixture design", "strategy", {"role": "proxy", "scale": "campaign", "seeds": [0]}, "running"),
            ("e11", "reference: the natural mixture", "campaign", "strategy", {"role": "natural", "scale": "campaign"}, "measured"),
            ("e12", "the recommended mixture", "mixture design", "strategy", {"role": "recommended", "scale": "campaign"}, "decided"),
            ("e13", "a patch with \"confirm\": \"final\" in its text", "claude", "strategy",
             {"patch": 'x = {"confirm": "final"}'}, "awaiting-approval"),
        ]
        for eid, hyp, who, kind, change, status in rows:
            db.execute("INSERT INTO experiments (id, campaign_id, hypothesis, kind, proposer_type, proposer, change, status, created_at) "
                       "VALUES (?, 'c1', ?, 'config', ?, ?, ?, ?, ?)", (eid, hyp, kind, who, _json.dumps(change), status, now()))
        db.execute("INSERT INTO experiments (id, hypothesis, kind, proposer_type, proposer, status, created_at) "
                   "VALUES ('e14', 'outside any campaign', 'config', 'person', 'bob', 'proposed', ?)", (now(),))
    db.close()
    with Ledger(ledger_url) as lg:  # opening it applies migration 2
        got = {e["id"]: (e["status"], e["planned_seeds"], e["role"]) for e in lg.list_experiments()}
    assert got == {"e1": ("running", 3, "baseline"), "e2": ("decided", None, "sweep"), "e3": ("running", 1, "proposal"),
                   "e4": ("queued", None, "suggestion"), "e5": ("queued", None, "combination"),
                   "e6": ("measured", None, "confirmation"), "e7": ("running", 2, "ablation"), "e8": ("decided", None, "pruned"),
                   "e9": ("running", 3, "transfer"), "e10": ("running", None, "proxy"), "e11": ("measured", None, "reference"),
                   "e12": ("decided", None, "recommended"), "e13": ("awaiting-approval", None, "proposal"),
                   "e14": ("proposed", None, None)}


def test_migration_5_resolves_and_rehashes_runs_registered_before(ledger_url):
    """Rows a lab at schema 4 registered: the recipe as recipe.json had it (a field added since missing, a
    bool train.compile) and the hash of every value. Opening the ledger rewrites both as this lab reads
    them; a recipe it cannot read is left as it was."""
    import json as _json

    from pretrainlab.config import Recipe
    from pretrainlab.ledger.db import PostgresDatabase, SQLiteDatabase, now, resolve_url
    from pretrainlab.ledger.schema import statements
    from pretrainlab.recipes import get_recipe

    today = get_recipe("tiny-cpu")
    old = today.to_dict()
    del old["model"]["residual_dtype"]
    old["train"]["compile"] = False
    unreadable = {**today.to_dict(), "model": {"n_layer": "four"}}
    target = resolve_url(ledger_url)
    db = SQLiteDatabase(target.path) if target.kind == "sqlite" else PostgresDatabase(target.url)
    with db.transaction():  # the schema as version 4 left it
        db.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)")
        for version, sql in MIGRATIONS[:4]:
            for stmt in statements(sql):
                db.execute(stmt)
            db.execute("INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)", (version, now()))
        for run_id, recipe in (("old000000001", old), ("bad000000001", unreadable)):
            db.execute("INSERT INTO runs (run_id, run_dir, recipe_name, recipe_hash, recipe, status, created_at, registered_at, "
                       "updated_at) VALUES (?, ?, 'tiny-cpu', 'f' || ?, ?, 'ok', ?, ?, ?)",
                       (run_id, f"/runs/{run_id}", run_id[:11], _json.dumps(recipe), now(), now(), now()))
    db.close()
    with Ledger(ledger_url) as lg:  # opening it applies migration 5
        raw = {r["run_id"]: r for r in lg.db.query("SELECT run_id, recipe, recipe_hash FROM runs")}
        assert lg.db.query_one("SELECT oldest_lab FROM schema_migrations WHERE version = 5")["oldest_lab"] == 4
    fixed = _json.loads(raw["old000000001"]["recipe"])
    assert fixed["model"]["residual_dtype"] == "float32" and fixed["train"]["compile"] == "off"
    assert raw["old000000001"]["recipe_hash"] == Recipe.from_dict(fixed).hash() != "fold00000000"
    assert _json.loads(raw["bad000000001"]["recipe"]) == unreadable and raw["bad000000001"]["recipe_hash"] == "fbad00000000"


def test_experiment_phase_and_role_are_checked(ledger_url):
    with Ledger(ledger_url) as lg:
        eid = lg.add_experiment("h", kind="config", proposer="alice", status="running", planned_seeds=3, role="suggestion")
        assert {k: lg.get_experiment(eid)[k] for k in ("status", "planned_seeds", "role")} == \
            {"status": "running", "planned_seeds": 3, "role": "suggestion"}
        lg.set_experiment_status(eid, "decided")  # the seeds it planned stay on record
        assert (lg.get_experiment(eid)["status"], lg.get_experiment(eid)["planned_seeds"]) == ("decided", 3)
        with pytest.raises(UserError, match="experiment phase 'running:3' is not one of"):
            lg.set_experiment_status(eid, "running:3")
        with pytest.raises(UserError, match="planned_seeds >= 1"):
            lg.set_experiment_status(eid, "running")
        with pytest.raises(UserError, match="experiment role 'baseline2' is not one of .*did you mean 'baseline'"):
            lg.add_experiment("h", kind="config", proposer="alice", role="baseline2")


def test_a_reread_reuses_parsed_json_and_reads_what_changed(ledger_url):
    """A campaign loop rereads its experiments and decisions after every write: rows it read
    before keep their parsed JSON (never changed once recorded); status, planned seeds and
    new rows come from the ledger, and the whole reads as a fresh read does."""
    with Ledger(ledger_url) as lg:
        cid = lg.create_campaign("c")
        first_id = lg.add_experiment("h1", kind="config", proposer="alice", campaign_id=cid, change={"values": {"optim.lr": 0.01}},
                                     parent_recipe={"seed": 0}, status="queued")
        d1 = lg.record_decision("inconclusive", decided_by="alice", experiment_id=first_id, evidence={"runs": ["r1"]})
        before = {e["id"]: e for e in lg.list_experiments(cid)}
        decisions_before = {d["id"]: d for d in lg.list_decisions(campaign_id=cid)}
        lg.set_experiment_status(first_id, "running", planned_seeds=2)
        second_id = lg.add_experiment("h2", kind="config", proposer="bob", campaign_id=cid, change={"values": {"optim.lr": 0.02}},
                                      status="queued")
        d2 = lg.record_decision("keep", decided_by="bob", experiment_id=second_id, evidence={"runs": ["r2"]})
        again = lg.list_experiments(cid, reuse=before)
        decisions = lg.list_decisions(campaign_id=cid, reuse=decisions_before)
        assert again == lg.list_experiments(cid) and decisions == lg.list_decisions(campaign_id=cid)
        assert [e["id"] for e in again] == [first_id, second_id] and [d["id"] for d in decisions] == [d1, d2]
        assert again[0]["change"] is before[first_id]["change"] and decisions[0]["evidence"] is decisions_before[d1]["evidence"]
        assert (again[0]["status"], again[0]["planned_seeds"]) == ("running", 2)  # the columns that change are read again
        assert again[1]["change"] == {"values": {"optim.lr": 0.02}} and decisions[1]["evidence"] == {"runs": ["r2"]}


# ---- runs -----------------------------------------------------------------------------------


def test_register_real_run_records_everything_and_indexes_metrics(ledger_url, real_runs):
    a, _ = real_runs
    summary = json.loads((a / "summary.json").read_text())
    prov = json.loads((a / "provenance.json").read_text())
    with Ledger(ledger_url) as lg:
        res = lg.register_run(a)
        assert res["action"] == "added" and res["run_id"] == prov["run_id"]
        run = lg.get_run(prov["run_id"])
    assert run["run_dir"] == str(a.absolute())
    assert run["recipe"] == json.loads((a / "recipe.json").read_text()) and run["recipe_name"] == "tiny-cpu"
    assert run["recipe_hash"] == prov["recipe_hash"] and run["git_commit"] == prov["git_commit"] and run["git_diff"] == prov["git_diff"]
    assert run["provenance"] == prov and run["summary"] == summary
    for key in ("status", "val_bpb", "params", "tokens", "steps", "seconds", "tokens_per_s", "mfu", "peak_mem_mb"):
        assert run[key] == summary[key], key
    assert run["seed"] == 0 and run["finished_at"] == to_utc(summary["finished_at"])
    # evals are copied (a few rows), per-step rows are not: the file is indexed instead
    evals = metrics_rows(a, "eval")
    assert len(evals) == 2
    assert run["evals"] == [{"step": e["step"], "tokens": e["tokens"], "val_bpb": e["val_bpb"], "domains": e["val_bpb_domains"]} for e in evals]
    lines = (a / "metrics.jsonl").read_bytes()
    assert run["series"] == {"metrics_path": str((a / "metrics.jsonl").absolute()), "num_rows": len(metrics_rows(a)), "num_evals": 2,
                             "first_step": 1, "last_step": 4, "file_size": len(lines), "sha256": hashlib.sha256(lines).hexdigest()}


def test_registration_is_idempotent_and_a_resumed_run_updates_its_row(ledger_url, real_runs, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(real_runs[0], run_dir)
    with Ledger(ledger_url) as lg:
        first = lg.register_run(run_dir)
        before = lg.get_run(first["run_id"])
        assert lg.register_run(run_dir)["action"] == "updated"
        assert lg.count_runs() == 1
        # the run goes on (as after --resume): more steps, a new eval, a new summary
        summary = json.loads((run_dir / "summary.json").read_text())
        summary.update(steps=6, tokens=6144, val_bpb=3.5)
        (run_dir / "summary.json").write_text(json.dumps(summary))
        with open(run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"type": "train", "step": 5, "tokens": 5120, "loss": 3.0}) + "\n")
            f.write(json.dumps({"type": "eval", "step": 6, "tokens": 6144, "val_bpb": 3.5, "val_bpb_domains": {"code": 3.4}}) + "\n")
        assert lg.register_run(run_dir)["action"] == "updated"
        after = lg.get_run(first["run_id"])
        assert lg.count_runs() == 1
    assert (after["steps"], after["tokens"], after["val_bpb"]) == (6, 6144, 3.5)
    assert [e["step"] for e in after["evals"]] == [2, 4, 6]
    assert after["series"]["last_step"] == 6 and after["series"]["num_rows"] == before["series"]["num_rows"] + 2
    assert after["created_at"] == before["created_at"] and after["registered_at"] == before["registered_at"]
    assert after["updated_at"] > before["updated_at"]


def test_killed_run_and_run_without_id(ledger_url, real_runs, tmp_path):
    run_dir = tmp_path / "killed"
    shutil.copytree(real_runs[0], run_dir)
    (run_dir / "summary.json").unlink()
    prov = json.loads((run_dir / "provenance.json").read_text())
    del prov["run_id"]
    (run_dir / "provenance.json").write_text(json.dumps(prov))
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write('{"type": "train", "step": 5, "tok')  # torn by the kill
    with Ledger(ledger_url) as lg:
        res = lg.register_run(run_dir)
        assert res["run_id"] == derived_run_id(run_dir) == hashlib.sha256(str(run_dir.absolute()).encode()).hexdigest()[:12]
        assert lg.register_run(run_dir)["run_id"] == res["run_id"]  # stable
        run = lg.get_run(res["run_id"])
        assert run["status"] == "unknown" and run["val_bpb"] is None and run["summary"] is None
        assert run["series"]["num_rows"] == len(metrics_rows(real_runs[0])) and run["series"]["last_step"] == 4
        copy = tmp_path / "copy"
        shutil.copytree(run_dir, copy)
        assert lg.register_run(copy)["run_id"] != res["run_id"]


def test_runs_written_before_a_field_existed_read_like_todays(ledger_url, real_runs, tmp_path):
    """A run directory written by a version without model.residual_dtype has the same recipe as
    today's run of it: one hash, no diff row, found by a filter on the new field's default. A
    recipe this version cannot read (a key from a newer version) is kept as it was."""
    a, _ = real_runs
    old = tmp_path / "old"
    shutil.copytree(a, old)
    recipe = json.loads((old / "recipe.json").read_text())
    del recipe["model"]["residual_dtype"]
    (old / "recipe.json").write_text(json.dumps(recipe))
    prov = json.loads((old / "provenance.json").read_text())
    prov.update(run_id="0ld000000001", recipe_hash=hashlib.sha256(json.dumps(
        {k: v for k, v in recipe.items() if k != "name"}, sort_keys=True).encode()).hexdigest()[:12])  # how that version hashed
    (old / "provenance.json").write_text(json.dumps(prov))
    newer = tmp_path / "newer"
    shutil.copytree(a, newer)
    recipe["model"]["flux_capacitor"] = 3
    (newer / "recipe.json").write_text(json.dumps(recipe))
    (newer / "provenance.json").write_text(json.dumps({**prov, "run_id": "e0e000000001", "recipe_hash": "feedfacecafe"}))
    with Ledger(ledger_url) as lg:
        ra, ro, rn = (lg.register_run(d)["run_id"] for d in (a, old, newer))
        run_a, run_old, run_new = (lg.get_run(r) for r in (ra, ro, rn))
        assert run_old["recipe_hash"] == run_a["recipe_hash"] != prov["recipe_hash"]
        assert run_old["recipe"] == run_a["recipe"] and run_old["recipe"]["model"]["residual_dtype"] == "float32"
        assert {r["run_id"] for r in lg.list_runs(recipe=[("model.residual_dtype", "float32")])} == {ra, ro}
        assert run_new["recipe"] == recipe and run_new["recipe_hash"] == "feedfacecafe"
        # a row stored by a version that kept recipe.json as it was reads the same way
        lg.db.execute("UPDATE runs SET recipe = ? WHERE run_id = ?", (json.dumps(recipe | {"model": {
            k: v for k, v in recipe["model"].items() if k != "flux_capacitor"}}), ro))
        assert lg.get_run(ro)["recipe"] == run_a["recipe"]
    res = api.compare_runs([str(a), str(old)], db=ledger_url)
    assert res["recipe_diff"] == {}


def test_unreadable_run_dir_is_a_clear_error(ledger_url, real_runs, tmp_path):
    run_dir = tmp_path / "bad"
    shutil.copytree(real_runs[0], run_dir)
    (run_dir / "summary.json").write_text("{not json")
    with Ledger(ledger_url) as lg:
        with pytest.raises(UserError, match=r"summary.json is not valid JSON .*repair or remove"):
            lg.register_run(run_dir)
        with pytest.raises(UserError, match="not a run directory"):
            lg.register_run(tmp_path)
        assert lg.count_runs() == 0


# ---- campaigns, experiments, decisions, notes ---------------------------------------------------


def test_experiments_and_decisions_are_attributed(ledger_url):
    with Ledger(ledger_url) as lg:
        cid = lg.create_campaign("lr sweep", goal="lowest val_bpb in 60 s", config={"seeds": 3})
        by_model = lg.add_experiment("muon lr 0.05 beats 0.035", kind="config", proposer="claude", proposer_type="strategy",
                                     model_id="claude-opus-4-1", rationale="higher lr converges faster at this size", campaign_id=cid,
                                     parent_recipe={"optim": {"muon_lr": 0.035}}, change={"optim.muon_lr": 0.05})
        by_person = lg.add_experiment("add code data", kind="data", proposer="alice", campaign_id=cid, change={"code": 2, "docs": 1})
        d1 = lg.record_decision("discard", decided_by="alice", experiment_id=by_model, effect=0.004, ci_low=-0.001, ci_high=0.009,
                                rationale="within seed noise", evidence={"runs": ["r1", "r2"], "seeds": 3})
        d2 = lg.record_decision("keep", decided_by="optuna", decider_type="strategy", model_id=None, experiment_id=by_person, effect=-0.02)
        lg.add_note("looked at the curves: lr too high early", author="bob", experiment_id=by_model)
        lg.set_experiment_status(by_model, "decided")
        exps = {e["id"]: e for e in lg.list_experiments(cid)}
        decisions = {d["id"]: d for d in lg.list_decisions(campaign_id=cid)}
        notes = lg.list_notes(experiment_id=by_model)
        assert lg.get_campaign(cid)["config"] == {"seeds": 3}
    e = exps[by_model]
    assert (e["proposer_type"], e["proposer"], e["model_id"], e["kind"], e["status"]) == ("strategy", "claude", "claude-opus-4-1", "config", "decided")
    assert e["change"] == {"optim.muon_lr": 0.05} and e["parent_recipe"] == {"optim": {"muon_lr": 0.035}} and e["campaign_id"] == cid
    assert (exps[by_person]["proposer_type"], exps[by_person]["model_id"]) == ("person", None)
    d = decisions[d1]
    assert (d["verdict"], d["decided_by"], d["decider_type"], d["effect"], d["ci_low"], d["ci_high"]) == ("discard", "alice", "person", 0.004, -0.001, 0.009)
    assert d["campaign_id"] == cid and d["evidence"] == {"runs": ["r1", "r2"], "seeds": 3} and d["rationale"] == "within seed noise"
    assert (decisions[d2]["verdict"], decisions[d2]["decided_by"], decisions[d2]["decider_type"]) == ("keep", "optuna", "strategy")
    assert [(n["author"], n["text"]) for n in notes] == [("bob", "looked at the curves: lr too high early")]


@pytest.mark.parametrize("call, message", [
    (lambda lg: lg.add_experiment("h", kind="hyper", proposer="a"), "experiment kind 'hyper' is not one of config, code, data"),
    (lambda lg: lg.add_experiment("h", kind="config", proposer="a", proposer_type="robot"), "proposer_type 'robot' is not one of person, strategy"),
    (lambda lg: lg.add_experiment("h", kind="config", proposer="alice", model_id="gpt-5"), "set proposer_type='strategy'"),
    (lambda lg: lg.add_experiment("h", kind="config", proposer=""), "proposer"),
    (lambda lg: lg.add_experiment("h", kind="config", proposer="a", campaign_id="nope"), "campaign 'nope' is not in the ledger"),
    (lambda lg: lg.record_decision("kep", decided_by="a", campaign_id=None, experiment_id="x"), "verdict 'kep' is not one of keep, discard, inconclusive (did you mean 'keep'?)"),
    (lambda lg: lg.record_decision("keep", decided_by="a"), "needs experiment_id or campaign_id"),
    (lambda lg: lg.record_decision("keep", decided_by="a", experiment_id="nope"), "experiment 'nope' is not in the ledger"),
    (lambda lg: lg.record_decision("keep", decided_by="a", decider_type="model", experiment_id="x"), "decider_type 'model'"),
    (lambda lg: lg.record_decision("keep", decided_by="a", experiment_id="x", ci_low=0.1, ci_high=-0.1), "ci_low=0.1 is above ci_high=-0.1"),
    (lambda lg: lg.record_decision("keep", decided_by="a", experiment_id="x", effect="big"), "effect must be a number"),
    (lambda lg: lg.add_note("text", author="a"), "a note needs a run, an experiment or a campaign"),
    (lambda lg: lg.add_note(" ", author="a", run_id="r"), "note text must be a non-empty string"),
    (lambda lg: lg.add_note("hi", author="a", run_id="nope"), "run 'nope' is not in the ledger"),
])
def test_bad_values_are_one_line_errors_that_name_the_fix(ledger_url, call, message):
    with Ledger(ledger_url) as lg:
        with pytest.raises(UserError) as err:
            call(lg)
        assert message in str(err.value) and "\n" not in str(err.value)
        for table in ("experiments", "decisions", "notes"):
            assert lg.db.query_one(f"SELECT count(*) AS n FROM {table}")["n"] == 0


# ---- queries ------------------------------------------------------------------------------------


def test_list_filters_and_sorts(ledger_url):
    with Ledger(ledger_url) as lg:
        cid = lg.create_campaign("sweep")
        records = [
            fake_record("aaaa00000001", status="ok", val_bpb=3.0, n_layer=4, created="2026-01-01T10:00:00+00:00"),
            fake_record("aaaa00000002", status="ok", val_bpb=2.5, n_layer=6, created="2026-01-02T10:00:00+00:00", compile=True),
            fake_record("bbbb00000003", status="diverged", val_bpb=None, n_layer=4, created="2026-01-03T10:00:00+00:00", name="small"),
            fake_record("bbbb00000004", status="timeout", val_bpb=2.8, n_layer=4, created="2026-01-04T10:00:00+00:00",
                        weights={"code": 2.0, "docs": 1.0}),
        ]
        for i, rec in enumerate(records):
            lg.upsert_run(rec, campaign_id=cid if i >= 2 else None)

        def ids(**kw):
            return [r["run_id"][-1] for r in lg.list_runs(**kw)]

        assert ids() == ["4", "3", "2", "1"]  # newest first
        assert ids(sort="val_bpb") == ["2", "4", "1", "3"]  # best first, no metric last
        assert ids(status=["ok"]) == ["2", "1"] and ids(status=["ok", "timeout"]) == ["4", "2", "1"]
        assert ids(recipe=[("model.n_layer", "4")]) == ["4", "3", "1"]
        assert ids(recipe=[("model.n_layer", "4.0"), ("name", "tiny-cpu")]) == ["4", "1"]
        # recipes stored with train.compile as a bool (before auto|on|off) read as today's values
        assert ids(recipe=[("train.compile", "on")]) == ["2"] and ids(recipe=[("train.compile", "off")]) == ["4", "3", "1"]
        assert ids(recipe=[("data.weights", "code:2,docs:1")]) == ["4"] and ids(recipe=[("data.weights", "none")]) == ["3", "2", "1"]
        assert ids(recipe=[("model.n_layer", "4")], limit=2) == ["4", "3"]
        assert ids(campaign=cid) == ["4", "3"] and ids(campaign="sweep") == ["4", "3"] and ids(campaign="other") == []
        assert ids(limit=3, sort="val_bpb") == ["2", "4", "1"]
        with pytest.raises(UserError, match="unknown run status 'okk' .*did you mean 'ok'"):
            lg.list_runs(status=["okk"])
    # dates through the API: --until DAY includes that day
    assert [r["run_id"][-1] for r in api.list_runs(since="2026-01-02T00:00:00+00:00", until="2026-01-03T23:00:00+00:00", db=ledger_url)] == ["3", "2"]
    from datetime import datetime

    day_end = datetime(2026, 1, 2).astimezone().isoformat()  # --until 2026-01-01: up to local midnight
    want = [r["run"]["run_id"][-1] for r in reversed(records) if r["run"]["created_at"] < to_utc(day_end)]
    assert [r["run_id"][-1] for r in api.list_runs(until="2026-01-01", db=ledger_url)] == want and want
    assert len(api.list_runs(since="30d", db=ledger_url)) == 0
    # a filter value reads as --set reads it: train.compile=true is today's `on`
    assert [r["run_id"][-1] for r in api.list_runs(recipe=["train.compile=true"], db=ledger_url)] == ["2"]
    assert [r["run_id"][-1] for r in api.list_runs(recipe=["model.n_head=3"], db=ledger_url)] == []  # refused by --set here: as typed
    with pytest.raises(UserError, match="--recipe 'model.n_layr' is not a recipe key .*did you mean 'model.n_layer'"):
        api.list_runs(recipe=["model.n_layr=4"], db=ledger_url)
    with pytest.raises(UserError, match="--since 'yesterday'"):
        api.list_runs(since="yesterday", db=ledger_url)


def test_run_references(ledger_url, real_runs, tmp_path):
    a, b = real_runs
    with Ledger(ledger_url) as lg:
        ra, rb = lg.register_run(a)["run_id"], lg.register_run(b)["run_id"]
        lg.upsert_run(fake_record("abc000000001"))
        lg.upsert_run(fake_record("abc000000002"))
        assert lg.resolve_run(ra) == ra and lg.resolve_run(str(b)) == rb and lg.resolve_run("abc000000001") == "abc000000001"
        assert lg.resolve_run(ra[:6] if ra[:3] != "abc" else ra) == ra
        with pytest.raises(UserError, match=r"run prefix 'abc' is ambiguous \(abc000000001, abc000000002\)"):
            lg.resolve_run("abc")
        with pytest.raises(UserError, match="no run 'zzz' in the ledger"):
            lg.resolve_run("zzz")
        other = tmp_path / "other"
        shutil.copytree(a, other)
        (other / "provenance.json").write_text("{}")
        with pytest.raises(UserError, match=f"run directory {other} is not in the ledger.*runs import {other}"):
            lg.resolve_run(str(other))


# ---- compare, plots, export -------------------------------------------------------------------


def test_compare_shows_only_differing_keys_and_deltas(real_runs):
    a, b = real_runs
    api.import_runs([a.parent])
    res = api.compare_runs([str(a), str(b)])
    assert set(res["recipe_diff"]) == {"seed", "model.n_layer", "optim.lr"}
    assert res["recipe_diff"]["model.n_layer"] == [2, 1] and res["recipe_diff"]["optim.lr"] == [0.015, 0.02]
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (a, b))
    m = {row["key"]: row for row in res["metrics"]}
    assert m["val_bpb"]["values"] == [sa["val_bpb"], sb["val_bpb"]]
    assert m["val_bpb"]["deltas"] == [None, sb["val_bpb"] - sa["val_bpb"]]
    assert m["params"]["deltas"][1] == sb["params"] - sa["params"] < 0
    assert m["tokens_per_s"]["delta_pcts"][1] == pytest.approx(100 * (sb["tokens_per_s"] - sa["tokens_per_s"]) / sa["tokens_per_s"])
    for dom, v in sa["val_bpb_domains"].items():
        assert m[f"val_bpb.{dom}"]["values"] == [v, sb["val_bpb_domains"][dom]]
    with pytest.raises(UserError, match="at least two runs"):
        api.compare_runs([str(a)])


def test_compare_plot_html_is_self_contained_with_every_step(real_runs, tmp_path):
    import re

    a, b = real_runs
    api.import_runs([a, b])
    out = tmp_path / "cmp.html"
    res = api.compare_runs([str(a), str(b)], plot=out)
    assert res["plot"] == {"path": str(out), "missing": {}}
    page = out.read_text()
    for forbidden in ("<script", "src=", "href=", "@import", "url(", "https://"):
        assert forbidden not in page, forbidden
    assert page.count("<svg") == 2
    polylines = re.findall(r'<polyline [^>]*points="([^"]*)"', page)
    train_counts = [len(metrics_rows(d, "train")) for d in (a, b)]
    eval_counts = [len(metrics_rows(d, "eval")) for d in (a, b)]
    assert [len(p.split()) for p in polylines] == train_counts + eval_counts  # every logged step, every eval
    assert page.count("<circle") == sum(eval_counts)
    with pytest.raises(UserError, match=r"--plot .*cmp.txt: the file must end in .html .* or .png"):
        api.compare_runs([str(a), str(b)], plot=tmp_path / "cmp.txt")


def test_compare_png_needs_matplotlib(real_runs, tmp_path, monkeypatch):
    a, b = real_runs
    api.import_runs([a, b])
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    with pytest.raises(UserError, match=r"PNG output needs matplotlib: pip install 'pretrainlab\[plot\]'"):
        api.compare_runs([str(a), str(b)], plot=tmp_path / "cmp.png")
    assert not (tmp_path / "cmp.png").exists()


def test_compare_png_with_matplotlib(real_runs, tmp_path):
    pytest.importorskip("matplotlib")
    a, b = real_runs
    api.import_runs([a, b])
    api.compare_runs([str(a), str(b)], plot=tmp_path / "cmp.png")
    assert (tmp_path / "cmp.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_export_json_csv_parquet(ledger_url, real_runs, tmp_path):
    import csv

    a, b = real_runs
    api.import_runs([a, b], db=ledger_url)
    got = {}
    for fmt in ("json", "csv", "parquet"):
        res = api.export_runs(fmt, tmp_path / f"runs.{fmt}", db=ledger_url)
        assert res["num_runs"] == 2
    got["json"] = json.loads((tmp_path / "runs.json").read_text())
    got["csv"] = list(csv.DictReader(open(tmp_path / "runs.csv")))
    pq = pytest.importorskip("pyarrow.parquet")
    got["parquet"] = pq.read_table(tmp_path / "runs.parquet").to_pylist()
    sa = json.loads((a / "summary.json").read_text())
    rid = json.loads((a / "provenance.json").read_text())["run_id"]
    row = next(r for r in got["json"] if r["run_id"] == rid)
    assert row["recipe"]["model"]["n_layer"] == 2 and row["summary"] == sa and row["val_bpb"] == sa["val_bpb"]
    for fmt in ("csv", "parquet"):
        flat = next(r for r in got[fmt] if r["run_id"] == rid)
        assert float(flat["val_bpb"]) == pytest.approx(sa["val_bpb"])
        assert float(flat["recipe.model.n_layer"]) == 2 and float(flat["recipe.optim.lr"]) == 0.015
        assert float(flat["val_bpb.code"]) == pytest.approx(sa["val_bpb_domains"]["code"])
    one = api.export_runs("csv", tmp_path / "one.csv", recipe=["model.n_layer=1"], db=ledger_url)
    assert one["num_runs"] == 1
    with pytest.raises(UserError, match="--format 'xml': use one of json, csv, parquet"):
        api.export_runs("xml", tmp_path / "runs.xml", db=ledger_url)


def test_postgres_without_psycopg_names_the_pip_install(monkeypatch, tmp_path, corpus_dir):
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if the `pg` extra were not installed
    with pytest.raises(UserError, match=r"needs psycopg 3: pip install 'pretrainlab\[pg\]'"):
        Ledger("postgresql://lab@127.0.0.1:5432/lab")
    # train checks before training, so nothing is lost to a missing driver
    with pytest.raises(UserError, match=r"pretrainlab\[pg\]"):
        api.train_run("tiny-cpu", tiny_overrides(corpus_dir, **{"budget.tokens": 1024}), tmp_path / "r", echo=False,
                      db="postgresql://lab@127.0.0.1/lab")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("url, message", [
    ("mysql://u@h/db", "unsupported scheme"),
    ("sqlite:/x.db", "write sqlite:///relative/path.db or sqlite:////absolute/path.db"),
    ("sqlite:///no/such/dir/x.db", "no/such/dir does not exist (sqlite:/// paths are relative; use sqlite://// for an absolute path)"),
])
def test_bad_ledger_urls(url, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as err:
        Ledger(url)
    assert message in str(err.value)


def test_ledger_urls_resolve(tmp_path, monkeypatch):
    from pretrainlab.ledger.db import resolve_url

    monkeypatch.chdir(tmp_path)
    assert resolve_url(f"sqlite:///{tmp_path}/a.db").path == tmp_path / "a.db"  # four slashes: absolute
    assert resolve_url("sqlite:///rel.db").path == tmp_path / "rel.db"
    assert resolve_url(str(tmp_path)).path == tmp_path / "pretrainlab.db"
    assert resolve_url("postgres://u:secret@h/db").kind == "postgresql" and "secret" not in str(resolve_url("postgres://u:secret@h/db"))
    monkeypatch.setenv("PRETRAINLAB_DB", str(tmp_path / "env.db"))
    assert resolve_url(None).path == tmp_path / "env.db"
    monkeypatch.delenv("PRETRAINLAB_DB")
    monkeypatch.setenv("PRETRAINLAB_WORKSPACE", str(tmp_path / "ws"))
    assert resolve_url(None).path == tmp_path / "ws" / "pretrainlab.db"
    Ledger().close()  # the default workspace is created on first use
    assert (tmp_path / "ws" / "pretrainlab.db").is_file()


def test_every_status_a_run_can_have_is_a_filter(tmp_path, ledger_url):
    """A campaign records runs its probes refused as `rejected` and runs that ended unscored as `unscored`: both are
    statuses `runs list --status` takes; a status no version of the lab writes is registered as `unknown`."""
    from test_doctor import make_rows, write_run

    ledger = Ledger(ledger_url)
    for status in ("ok", "rejected", "unscored", "made-up"):
        write_run(tmp_path / status, make_rows(n=5), provenance={"run_id": f"run-{status}"}, summary={"status": status})
        ledger.register_run(tmp_path / status)
    assert [r["run_id"] for r in ledger.list_runs(status=["rejected", "unscored"], sort="created")] in (
        ["run-rejected", "run-unscored"], ["run-unscored", "run-rejected"])
    assert [r["run_id"] for r in ledger.list_runs(status=["unknown"])] == ["run-made-up"]
