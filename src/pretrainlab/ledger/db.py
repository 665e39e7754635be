"""Where the ledger lives and how to talk to it: SQLite (embedded default) or PostgreSQL.

A ledger URL is one of
    postgresql://user:pass@host:5432/db    a team ledger (also postgres://; libpq options such
                                           as ?options=-csearch_path%3Dlab pick a schema)
    sqlite:////abs/path/lab.db             SQLAlchemy's convention: four slashes for an absolute
    sqlite:///relative/lab.db              path, three for one relative to the current directory
    path/to/lab.db                         a plain path (a directory means DIR/pretrainlab.db)
chosen by, first to last: the --db flag, env PRETRAINLAB_DB, then
$PRETRAINLAB_WORKSPACE/pretrainlab.db (the workspace defaults to the current directory).

SQL is written once with `?` placeholders; the PostgreSQL connection translates them.
SQLite runs in WAL mode with a 30 s busy timeout and takes the write lock at the start of
each write transaction (BEGIN IMMEDIATE), so many processes can write one file at once
without losing rows or failing on lock upgrades. WAL needs a local file system; use
PostgreSQL for a ledger shared across machines.
"""

from __future__ import annotations

import functools
import os
import re
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..errors import UserError
from .schema import MIGRATIONS, OLDEST_LAB, PYTHON_MIGRATIONS, statements

DEFAULT_FILE = "pretrainlab.db"
BUSY_TIMEOUT_S = 30.0
PG_INSTALL = "pip install 'pretrainlab[pg]'  (psycopg 3)"
_PG_LOCK_ID = 7_262_013  # pg_advisory_xact_lock key serialising migrations across processes


@dataclass(frozen=True)
class LedgerURL:
    kind: str  # "sqlite" | "postgresql"
    url: str  # what to connect to: a file path for SQLite, the libpq URL for PostgreSQL
    path: Path | None = None  # the SQLite file
    explicit: bool = True  # named by --db / PRETRAINLAB_DB (not the workspace default)

    def __str__(self) -> str:
        return str(self.path) if self.kind == "sqlite" else redact(self.url)


def resolve_url(db: str | None = None) -> LedgerURL:
    """The ledger named by `db`, else env PRETRAINLAB_DB, else the workspace default."""
    raw = db or os.environ.get("PRETRAINLAB_DB")
    if not raw:
        workspace = Path(os.environ.get("PRETRAINLAB_WORKSPACE") or ".")
        return LedgerURL("sqlite", str(workspace / DEFAULT_FILE), (workspace / DEFAULT_FILE).absolute(), explicit=False)
    raw = raw.strip()
    if raw.startswith(("postgresql://", "postgres://")):
        return LedgerURL("postgresql", raw)
    if raw.startswith("sqlite:"):
        if not raw.startswith("sqlite:///") or raw == "sqlite:///":
            raise UserError(f"ledger URL {raw!r}: write sqlite:///relative/path.db or sqlite:////absolute/path.db")
        path = Path(raw[len("sqlite:///"):])
    elif re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", raw):
        raise UserError(f"ledger URL {redact(raw)!r}: unsupported scheme; use a file path, sqlite:///PATH or postgresql://USER@HOST/DB")
    else:
        path = Path(raw).expanduser()
    if path.is_dir():
        path = path / DEFAULT_FILE
    return LedgerURL("sqlite", str(path), path.absolute())


def redact(url: str) -> str:
    """The URL without its password, for messages."""
    return re.sub(r"(://[^:/@]+):[^@/]*@", r"\1:***@", url)


def now() -> str:
    """The current time as the ledger stores it: ISO 8601, UTC, microseconds."""
    return datetime.now(UTC).isoformat(timespec="microseconds")


def to_utc(value: str | float | None) -> str | None:
    """An ISO timestamp (any offset; naive = UTC) or a POSIX time, in the ledger's format."""
    if value is None:
        return None
    if isinstance(value, (int, float)):
        dt = datetime.fromtimestamp(value, UTC)
    else:
        dt = datetime.fromisoformat(value)
        dt = dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt
    return dt.astimezone(UTC).isoformat(timespec="microseconds")


def storable(value: Any) -> Any:
    """Text as both backends store it: a NUL (which PostgreSQL's text refuses) becomes U+FFFD, and a
    lone surrogate (which UTF-8 cannot encode; JSON's "\ud800" parses to one) becomes "?". Text
    reaches the ledger from run directories, model replies and people: none of it may fail a write."""
    if type(value) is not str:
        return value
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            value = value.encode("utf-8", "replace").decode("utf-8")
    return value.replace("\x00", "\ufffd") if "\x00" in value else value


def _bind(params: tuple | list) -> list:
    return [storable(v) for v in params]


class Database:
    """One connection. `query` returns dicts; writes go inside `with db.transaction():`."""

    kind: str

    def execute(self, sql: str, params: tuple | list = ()) -> int:
        """Run one statement; returns the number of rows it changed."""
        raise NotImplementedError

    def executemany(self, sql: str, rows: list[tuple]) -> None:
        raise NotImplementedError

    def query(self, sql: str, params: tuple | list = ()) -> list[dict]:
        raise NotImplementedError

    def transaction(self):
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def query_one(self, sql: str, params: tuple | list = ()) -> dict | None:
        rows = self.query(sql, params)
        return rows[0] if rows else None


class SQLiteDatabase(Database):
    kind = "sqlite"

    def __init__(self, path: Path):
        self.path = path
        self.conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)  # autocommit; we BEGIN ourselves
        self.conn.row_factory = sqlite3.Row
        self.conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        self.conn.execute("PRAGMA foreign_keys = ON")
        # Switching a new file to WAL takes an exclusive lock; a concurrent opener can get
        # SQLITE_BUSY here without the busy handler, so retry within the same timeout.
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        while True:
            try:
                self.conn.execute("PRAGMA journal_mode = WAL")
                break
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        self.conn.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: durable across app crashes, fast commits

    def execute(self, sql, params=()):
        return self.conn.execute(sql, _bind(params)).rowcount

    def executemany(self, sql, rows):
        self.conn.executemany(sql, [_bind(r) for r in rows])

    def query(self, sql, params=()):
        return [dict(r) for r in self.conn.execute(sql, _bind(params)).fetchall()]

    @contextmanager
    def transaction(self) -> Iterator[None]:
        self.conn.execute("BEGIN IMMEDIATE")  # take the write lock now: no deadlock on upgrade
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def close(self):
        self.conn.close()


@functools.lru_cache(maxsize=256)
def _pg_sql(sql: str) -> str:
    """`?` placeholders as psycopg's `%s`; a literal `%` (a LIKE pattern in a migration) doubled."""
    return sql.replace("%", "%%").replace("?", "%s")


class PostgresDatabase(Database):
    kind = "postgresql"

    def __init__(self, url: str):
        psycopg = import_psycopg()
        from psycopg.rows import dict_row

        self.conn = psycopg.connect(url, autocommit=True, row_factory=dict_row, connect_timeout=15)

    def execute(self, sql, params=()):
        return self.conn.execute(_pg_sql(sql), _bind(params)).rowcount

    def executemany(self, sql, rows):
        with self.conn.cursor() as cur:
            cur.executemany(_pg_sql(sql), [_bind(r) for r in rows])

    def query(self, sql, params=()):
        return self.conn.execute(_pg_sql(sql), _bind(params)).fetchall()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with self.conn.transaction():
            yield

    def close(self):
        self.conn.close()


def import_psycopg():
    try:
        import psycopg
    except ImportError:
        raise UserError(f"a PostgreSQL ledger needs psycopg 3: {PG_INSTALL}") from None
    return psycopg


def check_driver(target: LedgerURL) -> None:
    """Fail early (before a long training run) when the URL's driver is not installed."""
    if target.kind == "postgresql":
        import_psycopg()


def connect(target: LedgerURL, create: bool = True) -> Database:
    """Open the ledger and bring its schema up to date.

    create=False (read-only commands) refuses to create a missing SQLite file, so that
    `runs list` in the wrong directory says so instead of leaving an empty ledger behind.
    """
    if target.kind == "postgresql":
        psycopg = import_psycopg()
        try:
            db: Database = PostgresDatabase(target.url)
        except psycopg.Error as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"cannot connect to the ledger at {target}: {first}; "
                            "check the server and the URL (--db or PRETRAINLAB_DB)") from None
    else:
        path = target.path
        assert path is not None
        if not path.exists():
            if not create:
                raise UserError(f"no ledger at {path}: train a run or `pretrainlab runs import RUN_DIR` first, "
                                "or point --db / PRETRAINLAB_DB / PRETRAINLAB_WORKSPACE at your ledger")
            if not path.parent.exists():
                if target.explicit:
                    hint = " (sqlite:/// paths are relative; use sqlite://// for an absolute path)" if target.url != str(path) else ""
                    raise UserError(f"ledger {path}: directory {path.parent} does not exist{hint}; create it or choose another --db")
                path.parent.mkdir(parents=True, exist_ok=True)
        try:
            db = SQLiteDatabase(path)
        except sqlite3.Error as e:
            raise UserError(f"cannot open the ledger {path}: {e}; check the path and its permissions (--db or PRETRAINLAB_DB)") from None
    try:
        migrate(db)
    except sqlite3.DatabaseError as e:
        db.close()
        raise UserError(f"cannot use the ledger {target}: {e}; is it a pretrainlab ledger? choose another --db") from None
    except BaseException:
        db.close()
        raise
    return db


def schema_version(db: Database) -> int:
    """The highest applied migration, 0 for a new database."""
    if db.kind == "postgresql":
        if db.query_one("SELECT to_regclass('schema_migrations') AS t")["t"] is None:
            return 0
    elif not db.query("SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'"):
        return 0
    return db.query_one("SELECT max(version) AS v FROM schema_migrations")["v"] or 0


def migrate(db: Database) -> list[int]:
    """Apply pending migrations in order, each version once, safely under concurrency."""
    latest = MIGRATIONS[-1][0]
    current = schema_version(db)
    if current > latest:  # a newer lab migrated it: usable if every migration this lab lacks only added
        needs = db.query_one("SELECT max(COALESCE(oldest_lab, version)) AS n FROM schema_migrations WHERE version > ?", (latest,))["n"] \
            if _has_oldest_lab(db) else current
        if needs > latest:
            raise UserError(f"the ledger's schema is version {current}, newer than this pretrainlab's ({latest}), and a lab that "
                            f"knows version {needs} or later must use it: upgrade pretrainlab")
        return []
    if current == latest:
        return []
    applied = []
    with db.transaction():  # SQLite: BEGIN IMMEDIATE holds the write lock; PG: an advisory lock
        if db.kind == "postgresql":
            db.execute("SELECT pg_advisory_xact_lock(?)", (_PG_LOCK_ID,))
        db.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)")
        done = {r["version"] for r in db.query("SELECT version FROM schema_migrations")}
        for version, sql in MIGRATIONS:
            if version in done:
                continue
            if sql in PYTHON_MIGRATIONS:  # a data migration: rows rewritten by this version's code
                PYTHON_MIGRATIONS[sql](db)
            else:
                for stmt in statements(sql):
                    db.execute(stmt)
            db.execute("INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)", (version, now()))
            if version in OLDEST_LAB:
                db.execute("UPDATE schema_migrations SET oldest_lab = ? WHERE version = ?", (OLDEST_LAB[version], version))
            applied.append(version)
    return applied


def _has_oldest_lab(db: Database) -> bool:
    """Whether schema_migrations has its oldest_lab column (migration 4)."""
    if db.kind == "postgresql":
        return db.query_one("SELECT count(*) AS n FROM information_schema.columns WHERE table_name = 'schema_migrations' "
                            "AND column_name = 'oldest_lab' AND table_schema = current_schema()")["n"] > 0
    return any(r["name"] == "oldest_lab" for r in db.query("PRAGMA table_info(schema_migrations)"))

