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

A ledger that fails as infrastructure (locked past the timeout, damaged, read-only, a full disk,
a PostgreSQL server that is down or went away) raises LedgerError: one line naming the ledger,
what went wrong and the fix, never its password. A write that fails is rolled back whole. A
PostgreSQL connection that was lost (a server restart) reconnects, waiting up to RECONNECT_S;
a write whose connection dropped mid-way is reported, not retried.
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
from urllib.parse import unquote

from ..errors import LedgerError, UserError
from .schema import MIGRATIONS, OLDEST_LAB, PYTHON_MIGRATIONS, statements

DEFAULT_FILE = "pretrainlab.db"
BUSY_TIMEOUT_S = 30.0  # SQLite: how long a write waits for another process's write lock; PostgreSQL: lock_timeout
RECONNECT_S = 30.0  # PostgreSQL: how long a lost connection is retried (a server restart) before giving up
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


def _split_userinfo(url: str) -> tuple[str, str, str] | None:
    """(scheme://USER, PASSWORD, @REST) of a URL with a password, else None. The password runs from the first `:` of the
    user info to its last `@` before any query string: a password with an unescaped `@` or `/` is hidden whole."""
    m = re.match(r"([A-Za-z][A-Za-z0-9+.-]*://)([^?]*)@", url)
    if not m or ":" not in m.group(2):
        return None
    user, _, password = m.group(2).partition(":")
    return m.group(1) + user, password, url[m.end() - 1:]


def redact(url: str) -> str:
    """The URL without its password (in the user info or a password= parameter), for messages."""
    parts = _split_userinfo(url)
    if parts:
        url = f"{parts[0]}:***{parts[2]}"
    return re.sub(r"([?&]password=)[^&]*", r"\1***", url, flags=re.IGNORECASE)


def _secrets(url: str) -> list[str]:
    """Every form in which a URL's password could reappear in a driver's message, longest first."""
    found = [m.group(1) for m in re.finditer(r"[?&]password=([^&]*)", url, flags=re.IGNORECASE)]
    parts = _split_userinfo(url)
    if parts:
        found += [parts[1], *re.split(r"[@/:?]", parts[1])]  # libpq may cut an odd password anywhere and quote a piece
    found += [unquote(f) for f in found]
    return sorted({f for f in found if len(f) >= 3}, key=len, reverse=True)


def scrub_url_secrets(text: str, url: str) -> str:
    """`text` (a driver's message about `url`) with the URL's password masked wherever it appears."""
    for secret in _secrets(url):
        text = text.replace(secret, "***")
    return text


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
        with self.errors():
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

    @contextmanager
    def errors(self) -> Iterator[None]:
        """SQLite's errors about the file itself (locked, damaged, read-only, full, I/O) as a LedgerError naming the fix;
        any other (an SQL error: a bug) as it is."""
        try:
            yield
        except sqlite3.DatabaseError as e:
            if isinstance(e, (sqlite3.IntegrityError, sqlite3.ProgrammingError, sqlite3.InterfaceError)):
                raise
            raise self.explain(e) from None

    def explain(self, e: sqlite3.DatabaseError) -> Exception:
        code, path = getattr(e, "sqlite_errorname", "") or "", self.path
        if code.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
            return LedgerError(f"the ledger {path} is locked: another process held it for over {BUSY_TIMEOUT_S:g} s ({e}); "
                               f"retry when it is done, or find the process that holds it open (e.g. `fuser {path}`)")
        if code.startswith("SQLITE_FULL"):
            return LedgerError(f"the ledger {path}: the disk is full ({e}); nothing of this write was saved: free space on "
                               f"{path.parent} and retry, or choose another --db")
        if code.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")):
            return LedgerError(f"the ledger {path} is damaged or not a SQLite database ({e}): restore a backup, or recover what "
                               f"it holds with `sqlite3 {path} .recover | sqlite3 recovered.db`, or choose another --db")
        if code.startswith("SQLITE_READONLY"):
            return LedgerError(f"the ledger {path} is read-only ({e}): make the file and its folder {path.parent} writable, "
                               "or choose another --db")
        if code.startswith(("SQLITE_CANTOPEN", "SQLITE_PERM", "SQLITE_AUTH")):
            return LedgerError(f"cannot use the ledger {path} ({e}): SQLite needs to write the file and its folder {path.parent} "
                               "(its -wal and -shm files), even to read; make them writable or choose another --db")
        if code.startswith(("SQLITE_IOERR", "SQLITE_PROTOCOL", "SQLITE_NOLFS", "SQLITE_NOMEM")):
            return LedgerError(f"the ledger {path}: {e} ({code}); check the disk and its file system (SQLite needs a local one: "
                               "use PostgreSQL for a ledger shared across machines)")
        return e

    def execute(self, sql, params=()):
        with self.errors():
            return self.conn.execute(sql, _bind(params)).rowcount

    def executemany(self, sql, rows):
        with self.errors():
            self.conn.executemany(sql, [_bind(r) for r in rows])

    def query(self, sql, params=()):
        with self.errors():
            return [dict(r) for r in self.conn.execute(sql, _bind(params)).fetchall()]

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with self.errors():
            self.conn.execute("BEGIN IMMEDIATE")  # take the write lock now: no deadlock on upgrade
        try:
            yield
            with self.errors():
                self.conn.execute("COMMIT")  # a COMMIT that fails (a full disk) leaves the transaction open: rolled back below
        except BaseException:
            if self.conn.in_transaction:  # never leave this process holding the write lock
                try:
                    self.conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass  # the error being raised says what went wrong; SQLite rolls back what it could not commit
            raise

    def close(self):
        self.conn.close()


@functools.lru_cache(maxsize=256)
def _pg_sql(sql: str) -> str:
    """`?` placeholders as psycopg's `%s`; a literal `%` (a LIKE pattern in a migration) doubled."""
    return sql.replace("%", "%%").replace("?", "%s")


class PostgresDatabase(Database):
    """One libpq connection, in autocommit mode outside `transaction()`. A connection lost between operations (a server
    restart, an idle connection dropped) is opened again before the next one, for up to RECONNECT_S; a read that finds
    it lost is retried once on the new one; a write that loses it is rolled back by the server and reported."""

    kind = "postgresql"

    def __init__(self, url: str):
        self.url = url
        self.psycopg = import_psycopg()
        self.depth = 0  # open transaction() blocks
        self.conn = self._connect()

    def _connect(self):
        from psycopg.conninfo import conninfo_to_dict
        from psycopg.rows import dict_row

        given = conninfo_to_dict(self.url)
        # bounded waits unless the URL says otherwise: connecting, and a peer that vanished without closing (keepalives)
        extra = {k: v for k, v in (("connect_timeout", 15), ("keepalives_idle", 30), ("keepalives_interval", 10),
                                    ("keepalives_count", 3)) if k not in given}
        conn = self.psycopg.connect(self.url, autocommit=True, row_factory=dict_row, **extra)
        if conn.execute("SHOW lock_timeout").fetchone()["lock_timeout"] in ("0", "0ms"):
            conn.execute(f"SET lock_timeout = '{int(BUSY_TIMEOUT_S * 1000)}ms'")  # never wait forever on another session's lock
        return conn

    def _lost(self) -> bool:
        return self.conn.closed or self.conn.broken

    def _reconnect(self) -> None:
        deadline = time.monotonic() + RECONNECT_S
        while True:
            try:
                self.conn = self._connect()
                return
            except self.psycopg.OperationalError as e:
                if time.monotonic() > deadline:
                    raise self.explain(e, f"lost the connection and could not reconnect for {RECONNECT_S:g} s") from None
                time.sleep(1.0)

    def explain(self, e: Exception, what: str | None = None) -> Exception:
        """A driver error about the server or the connection as a LedgerError; any other (an SQL error: a bug) as it is."""
        errors = self.psycopg.errors
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        first = scrub_url_secrets(first, self.url)
        where = redact(self.url)
        if isinstance(e, errors.LockNotAvailable):
            return LedgerError(f"the ledger at {where} is locked: another session held a lock for over {BUSY_TIMEOUT_S:g} s "
                               f"({first}); retry when it is done, or look for it in pg_stat_activity")
        if isinstance(e, errors.DiskFull):
            return LedgerError(f"the ledger at {where}: the server's disk is full ({first}); nothing of this write was saved: "
                               "free space on the server and retry")
        if isinstance(e, errors.InsufficientPrivilege):
            return LedgerError(f"the ledger at {where}: {first}; grant its user access to the ledger's schema and tables, "
                               "or use another user in --db / PRETRAINLAB_DB")
        if isinstance(e, errors.ReadOnlySqlTransaction):
            return LedgerError(f"the ledger at {where} is read-only ({first}): point --db / PRETRAINLAB_DB at the primary server")
        if isinstance(e, self.psycopg.OperationalError):
            lost = what or ("lost the connection in the middle of a write, which the server rolls back unless it had committed" if self.depth
                            else "the connection failed")
            return LedgerError(f"the ledger at {where}: {lost} ({first}); check the server and the URL (--db or PRETRAINLAB_DB)")
        return e

    @contextmanager
    def errors(self) -> Iterator[None]:
        try:
            yield
        except self.psycopg.Error as e:
            raise self.explain(e) from None

    def _call(self, fn, retry: bool):
        """fn() on a live connection. Outside a transaction, a connection found lost is opened again first, and a read
        (`retry`) that loses it is retried once: a write that loses it may or may not have been applied."""
        if self.depth == 0 and self._lost():
            self._reconnect()
        try:
            return fn()
        except self.psycopg.Error as e:
            if not (retry and self.depth == 0 and isinstance(e, self.psycopg.OperationalError) and self._lost()):
                raise self.explain(e) from None
        self._reconnect()
        with self.errors():
            return fn()

    def execute(self, sql, params=()):
        return self._call(lambda: self.conn.execute(_pg_sql(sql), _bind(params)).rowcount, retry=False)

    def executemany(self, sql, rows):
        def run():
            with self.conn.cursor() as cur:
                cur.executemany(_pg_sql(sql), [_bind(r) for r in rows])
        self._call(run, retry=False)

    def query(self, sql, params=()):
        return self._call(lambda: self.conn.execute(_pg_sql(sql), _bind(params)).fetchall(), retry=True)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        def begin():
            tx = self.conn.transaction()
            tx.__enter__()  # BEGIN (a savepoint when nested)
            return tx
        tx = self._call(begin, retry=True)  # nothing written yet: a connection found lost at BEGIN is opened again
        self.depth += 1
        try:
            with self.errors():
                try:
                    yield
                except BaseException as e:
                    if not tx.__exit__(type(e), e, e.__traceback__):  # ROLLBACK
                        raise
                else:
                    tx.__exit__(None, None, None)  # COMMIT
        finally:
            self.depth -= 1

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
        driver_errors: tuple[type[Exception], ...] = (psycopg.Error,)
        try:
            db: Database = PostgresDatabase(target.url)
        except psycopg.Error as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            parts = _split_userinfo(target.url)
            hint = " (a password with @, /, : or ? is written percent-encoded: %40, %2F, %3A, %3F)" \
                if parts and re.search(r"[@/:?]", parts[1]) else ""
            raise LedgerError(f"cannot connect to the ledger at {target}: {scrub_url_secrets(first, target.url)}; "
                              f"check the server and the URL (--db or PRETRAINLAB_DB){hint}") from None
    else:
        driver_errors = (sqlite3.DatabaseError,)
        path = target.path
        assert path is not None
        if path.exists() and not path.is_file():  # (a symlink is followed: one to /dev/null is a device)
            what = "a folder" if path.is_dir() else "a FIFO" if path.is_fifo() else "a device" if path.is_char_device() or \
                path.is_block_device() else "a socket" if path.is_socket() else "not a regular file"
            raise LedgerError(f"the ledger {path} is {what}, not a SQLite file: point --db / PRETRAINLAB_DB at a ledger file "
                              "or at the folder that holds pretrainlab.db")
        if not path.exists():
            if not create:
                raise UserError(f"no ledger at {path}: train a run or `pretrainlab runs import RUN_DIR` first, "
                                "or point --db / PRETRAINLAB_DB / PRETRAINLAB_WORKSPACE at your ledger")
            if path.parent.exists() and not path.parent.is_dir():
                raise UserError(f"ledger {path}: {path.parent} is a file, not a folder; choose another --db")
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
    except driver_errors as e:  # an SQL error while migrating: the tables are not what the recorded migrations made
        db.close()
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LedgerError(f"cannot use the ledger {target}: {first}; its tables do not match the migrations it records "
                          "(schema_migrations): is it a pretrainlab ledger? restore a backup or choose another --db") from None
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

