"""The experiment ledger: every run, experiment, decision and note, queryable and attributable.

SQLite in the workspace by default ($PRETRAINLAB_WORKSPACE/pretrainlab.db, WAL mode, safe
with many writer processes); PostgreSQL by URL for teams (--db postgresql://... or env
PRETRAINLAB_DB; extra `pg`). One schema, ordered migrations (schema.py). Metric series stay
at full resolution in each run's metrics.jsonl: the ledger indexes them and never copies the
per-step rows. Docs: docs/ledger.md. CLI: `pretrainlab runs list|show|compare|import|export|note|push`.

    db.py        URLs, connections (SQLite / PostgreSQL), migrations
    schema.py    the migrations
    rundir.py    a run directory -> its ledger row, eval rows and metrics index
    store.py     the Ledger: runs, campaigns, experiments, decisions, notes
    compare.py   recipe diffs and metric deltas between runs
    plot.py      curve overlays: self-contained HTML/SVG, or PNG with matplotlib
    export.py    runs as JSON / CSV / Parquet
    trackers.py  replay a run into TensorBoard, MLflow or Weights & Biases
"""

from ..errors import LedgerError
from .db import LedgerURL, connect, migrate, resolve_url, schema_version
from .rundir import read_run_dir
from .schema import MIGRATIONS
from .store import ACTOR_TYPES, EXPERIMENT_KINDS, PHASES, ROLES, RUN_STATUSES, VERDICTS, Ledger, Phase, Role

__all__ = [
           "ACTOR_TYPES",
           "EXPERIMENT_KINDS",
           "MIGRATIONS",
           "PHASES",
           "ROLES",
           "RUN_STATUSES",
           "VERDICTS",
           "Ledger",
           "LedgerError",
           "Phase",
           "Role",
           "LedgerURL",
           "connect",
           "migrate",
           "read_run_dir",
           "resolve_url",
           "schema_version",
]
