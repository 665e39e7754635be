"""Where `data build` runs its per-document steps: local processes, or Ray tasks.

    with open_executor("local", num_workers=0) as ex:       # all cores
        results = ex.map(fn, chunks, num_items)
    with open_executor("ray", address="ray://head:10001") as ex:   # or a local Ray instance
        ...

An executor maps a function over chunks of documents and returns the results in order; the
build (data/build.py) decides what runs where. Per-document steps fan out; corpus-wide steps
(dedup, boilerplate, decontamination) need every document at once and run in the driver.
Outcomes depend only on each document and the step's config, never on the executor or the
chunking, so every executor gives the same fates and the same corpus (tested).

Why not datatrove's executors: they run a pipeline of readers, filters and writers over
shards of input files, each task writing its own output files and returning only counters.
The lab needs each document's outcome back in the driver, in input order, to keep its fate
and to run the corpus-wide steps over the survivors; a map over chunks is what that needs,
and the same small interface covers a process pool and Ray.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from multiprocessing import get_context

from ..errors import UserError
from .sources import require


def restore_env(before: dict[str, str]) -> None:
    """Undo what ray.init left in this process's environment once Ray is shut down (it sets
    RAY_AUTH_MODE, PYTHONBREAKPOINT, ...): a later connection to another cluster must not
    inherit the settings of the instance this process started and stopped."""
    for key in [k for k in os.environ if k not in before]:
        del os.environ[key]
    os.environ.update({k: v for k, v in before.items() if os.environ.get(k) != v})

EXECUTORS = ("local", "ray")
RAY_EXTRA = "pip install 'pretrainlab[ray]'"
_POOL_MIN_ITEMS = 256  # below this many documents a local pool costs more to start than it saves
LOCAL_CHUNK_DOCS = 64  # documents per task sent to a local worker process
RAY_CHUNK_DOCS = 256  # documents per Ray task: each task costs a scheduling round trip, more on a remote cluster


def check_executor(executor: str, address: str | None) -> None:
    """Fail before anything is read or written: an unknown executor, an address without Ray, Ray not installed."""
    if executor not in EXECUTORS:
        raise UserError(f"unknown executor {executor!r}: use one of {', '.join(EXECUTORS)}")
    if address is not None and executor != "ray":
        raise UserError("--address names a Ray cluster: add --executor ray, or drop --address")
    if executor == "ray":
        require("ray", "ray", "--executor ray", install=RAY_EXTRA)


class LocalExecutor:
    """A process pool over this machine's cores (spawned, so workers never inherit the
    driver's threads), started on first use and kept for the whole build: a worker loads a
    step's models (lingua's) once."""

    name = "local"
    chunk_docs = LOCAL_CHUNK_DOCS

    def __init__(self, num_workers: int = 0):
        self.num_workers = num_workers or os.cpu_count() or 1
        self._pool: ProcessPoolExecutor | None = None

    def map(self, fn: Callable, tasks: list, num_items: int) -> list:
        if self.num_workers == 1 or num_items < _POOL_MIN_ITEMS:
            return list(map(fn, tasks))
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.num_workers, mp_context=get_context("spawn"))
        return list(self._pool.map(fn, tasks))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()


class RayExecutor:
    """One Ray task per chunk. On first use, joins the Ray instance this process already has,
    else the cluster at `address` (default: RAY_ADDRESS, else a new local instance with
    `num_workers` CPUs, 0: all). Every node needs pretrainlab and the steps' packages
    installed, at the driver's version."""

    name = "ray"
    chunk_docs = RAY_CHUNK_DOCS

    def __init__(self, num_workers: int = 0, address: str | None = None):
        self._ray = require("ray", "ray", "--executor ray", install=RAY_EXTRA)
        self.num_workers, self.address = num_workers, address
        self._started = False  # whether this executor started (and so stops) the Ray instance
        self._remote: dict[Callable, object] = {}

    def _connect(self) -> None:
        if self._ray.is_initialized():
            return
        options = {"include_dashboard": False, "log_to_driver": False}
        if self.address is None and not os.environ.get("RAY_ADDRESS") and self.num_workers:
            options["num_cpus"] = self.num_workers  # only a new local instance takes a size
        # ray.init replaces this process's SIGTERM/SIGINT handlers (SIGTERM exits at once): they are put back in close()
        self._handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
        self._env = dict(os.environ)
        try:
            self._ray.init(address=self.address, **options)
        except ConnectionError as e:
            where = self.address or os.environ.get("RAY_ADDRESS")
            raise UserError(f"cannot reach the Ray cluster at {where}: {e}: check --address (or RAY_ADDRESS) and that it is up") from None
        self._started = True

    def map(self, fn: Callable, tasks: list, num_items: int) -> list:
        self._connect()
        if fn not in self._remote:
            self._remote[fn] = self._ray.remote(fn)
        return self._ray.get([self._remote[fn].remote(task) for task in tasks])  # results in submission order

    def close(self) -> None:
        if self._started:  # a Ray instance the caller had stays up
            self._ray.shutdown()
            restore_env(self._env)
        for sig, handler in getattr(self, "_handlers", {}).items():
            if handler is not None:
                signal.signal(sig, handler)


@contextmanager
def open_executor(executor: str = "local", num_workers: int = 0, address: str | None = None) -> Iterator[LocalExecutor | RayExecutor]:
    check_executor(executor, address)
    ex = RayExecutor(num_workers, address) if executor == "ray" else LocalExecutor(num_workers)
    try:
        yield ex
    finally:
        ex.close()
