"""Many processes writing one ledger at once lose nothing: 8 writer processes x 50 rounds of
(run, decision, note), all racing on a fresh ledger (migrations included) and on one shared
run row, then exact counts and contents. SQLite (one file, WAL) and PostgreSQL."""

import multiprocessing as mp

import pytest

from pretrainlab.ledger import MIGRATIONS, Ledger

NUM_PROCS, NUM_ROUNDS = 8, 50


def record(run_id, worker, i):
    run = {"run_id": run_id, "run_dir": f"/runs/{run_id}", "recipe_name": "tiny-cpu", "recipe_hash": "0" * 12,
           "recipe": {"name": "tiny-cpu", "seed": i}, "seed": i, "git_commit": "abc", "git_diff": "", "provenance": {"worker": worker},
           "device": "cpu", "world_size": 1, "status": "ok", "val_bpb": worker + i / 1000, "params": 1, "tokens": i, "steps": i,
           "seconds": 1.0, "tokens_per_s": 1.0, "mfu": None, "peak_mem_mb": 1.0, "summary": {"status": "ok"},
           "created_at": "2026-01-01T00:00:00.000000+00:00", "finished_at": None}
    return {"run": run, "evals": [{"step": i, "tokens": i, "val_bpb": 1.0, "domains": {"code": 1.0}}], "series": None}


def writer(url, worker, start):
    start.wait()  # all processes open the fresh ledger (and migrate it) at the same moment
    with Ledger(url) as lg:
        experiment_id = lg.add_experiment(f"worker {worker}", kind="config", proposer=f"worker-{worker}")
        for i in range(NUM_ROUNDS):
            run_id = f"w{worker:02d}r{i:03d}"
            lg.upsert_run(record(run_id, worker, i))
            lg.record_decision("keep" if i % 2 else "discard", decided_by=f"worker-{worker}", experiment_id=experiment_id,
                               effect=-i / 1000, rationale=f"{worker}:{i}")
            lg.add_note(f"note {worker}:{i}", author=f"worker-{worker}", run_id=run_id)
            lg.upsert_run(record("shared000000", worker, i))  # everyone updates the same row too


@pytest.mark.slow
def test_parallel_writers_lose_nothing(ledger_url):
    ctx = mp.get_context("spawn")  # no fork after torch was imported by other tests
    start = ctx.Event()
    procs = [ctx.Process(target=writer, args=(ledger_url, w, start)) for w in range(NUM_PROCS)]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(timeout=240)
    assert [p.exitcode for p in procs] == [0] * NUM_PROCS

    with Ledger(ledger_url) as lg:
        runs = {r["run_id"]: r for r in lg.list_runs()}
        decisions = lg.list_decisions()
        experiments = {e["id"]: e for e in lg.list_experiments()}
        versions = [r["version"] for r in lg.db.query("SELECT version FROM schema_migrations ORDER BY version")]
        notes = lg.db.query("SELECT run_id, author, text FROM notes")
        evals = lg.db.query("SELECT run_id, step FROM evals")
    want = {f"w{w:02d}r{i:03d}": (w, i) for w in range(NUM_PROCS) for i in range(NUM_ROUNDS)}
    assert set(runs) == set(want) | {"shared000000"}
    for run_id, (w, i) in want.items():
        assert (runs[run_id]["val_bpb"], runs[run_id]["steps"], runs[run_id]["seed"]) == (w + i / 1000, i, i)
    assert runs["shared000000"]["steps"] == NUM_ROUNDS - 1  # one row, last write of some worker
    assert len(decisions) == NUM_PROCS * NUM_ROUNDS
    assert sorted(d["rationale"] for d in decisions) == sorted(f"{w}:{i}" for w, i in want.values())
    assert all(d["decided_by"] == f"worker-{d['rationale'].split(':')[0]}" == experiments[d["experiment_id"]]["proposer"] for d in decisions)
    assert len(experiments) == NUM_PROCS and versions == [v for v, _ in MIGRATIONS]  # migrated exactly once
    assert sorted((n["run_id"], n["text"]) for n in notes) == sorted((r, f"note {w}:{i}") for r, (w, i) in want.items())
    assert len(evals) == len(want) + 1 and len({(e["run_id"], e["step"]) for e in evals}) == len(evals)
