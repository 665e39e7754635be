"""The ledger as infrastructure that fails: a path that is not a SQLite file, a damaged file, a
lock held by another process, a read-only file, a full disk, a half-applied schema, a
PostgreSQL server that is down or drops the connection. Each is one line naming the ledger and
the fix (LedgerError, exit 2 on the command line), loses nothing already written, never leaves
a half-written row or a held lock behind, and never waits forever."""

import hashlib
import os
import shutil
import sqlite3
import subprocess
import threading
import time

import pytest
from conftest import PG_URL, pg_schema

from pretrainlab import api, cli
from pretrainlab.errors import LedgerError, UserError
from pretrainlab.ledger import MIGRATIONS, Ledger
from pretrainlab.ledger import db as ledger_db
from pretrainlab.ledger.db import redact, scrub_url_secrets


def a_ledger(path, num_notes=0) -> str:
    with Ledger(str(path)) as lg:
        campaign = lg.create_campaign("c", goal="val_bpb")
        for i in range(num_notes):
            lg.add_note(f"note {i} " * 50, author="ana", campaign_id=campaign)
    return campaign


def one_line_exit_2(capsys, *args) -> str:
    assert cli.main(list(args)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err
    return err


def test_a_path_that_is_not_a_sqlite_file_is_refused_untouched(tmp_path, capsys):
    fifo = tmp_path / "fifo.db"
    os.mkfifo(fifo)
    err = one_line_exit_2(capsys, "runs", "list", "--db", str(fifo))  # (never blocks opening the FIFO)
    assert "is a FIFO, not a SQLite file" in err
    null = tmp_path / "null.db"
    null.symlink_to(os.devnull)
    journal_before = os.path.exists(os.devnull + "-journal")
    with pytest.raises(LedgerError, match="null.db is a device, not a SQLite file"):
        Ledger(str(null))  # a write as well: nothing opened, no journal written beside /dev/null
    assert os.path.exists(os.devnull + "-journal") == journal_before
    (tmp_path / "folder" / "pretrainlab.db").mkdir(parents=True)
    with pytest.raises(LedgerError, match="pretrainlab.db is a folder"):
        Ledger(str(tmp_path / "folder"))
    (tmp_path / "afile").write_text("x")
    with pytest.raises(UserError, match="afile is a file, not a folder"):
        Ledger(str(tmp_path / "afile" / "lab.db"))


def test_a_damaged_ledger_is_one_line_naming_the_recovery(tmp_path, capsys):
    text = tmp_path / "text.db"
    text.write_text("not a database\n" * 100)
    err = one_line_exit_2(capsys, "runs", "list", "--db", str(text))
    assert "is damaged or not a SQLite database" in err and ".recover" in err
    assert text.read_text() == "not a database\n" * 100

    good = tmp_path / "good.db"
    campaign = a_ledger(good, num_notes=100)
    truncated = tmp_path / "truncated.db"
    truncated.write_bytes(good.read_bytes()[:8192])
    assert "is damaged" in one_line_exit_2(capsys, "research", "status", "--db", str(truncated))

    # the notes table's pages overwritten: opening works, the query that reads them fails in one line
    with sqlite3.connect(good) as conn:
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'notes'").fetchone()[0]
    conn.close()
    corrupt = tmp_path / "corrupt.db"
    data = bytearray(good.read_bytes())
    data[(root - 1) * page_size:root * page_size] = b"\xff" * page_size
    corrupt.write_bytes(bytes(data))
    with pytest.raises(LedgerError, match="corrupt.db is damaged"):
        with Ledger(str(corrupt)) as lg:
            lg.list_notes(campaign_id=campaign)


def test_a_ledger_of_a_newer_lab_is_refused_and_left_as_it_was(tmp_path, capsys):
    path = tmp_path / "newer.db"
    a_ledger(path)
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO schema_migrations (version, applied_at) VALUES (?, 'x')", (MIGRATIONS[-1][0] + 10,))
    conn.close()
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    assert "upgrade pretrainlab" in one_line_exit_2(capsys, "runs", "list", "--db", str(path))
    with pytest.raises(UserError, match="upgrade pretrainlab"):
        Ledger(str(path))  # as a writer opens it: never migrated down, never overwritten
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before


def test_a_half_applied_schema_is_refused_and_an_interrupted_migration_leaves_nothing(ledger_url, monkeypatch):
    """Migrations are one transaction: one that fails midway (killed, a bug) leaves the ledger at its old version and
    the next open applies it. Tables that disagree with schema_migrations (edited by hand) are a one-line refusal."""
    from pretrainlab.ledger import schema

    latest = MIGRATIONS[-1][0]
    with Ledger(ledger_url) as lg:
        lg.create_campaign("c", goal="g")
        with lg.db.transaction():
            lg.db.execute("DELETE FROM schema_migrations WHERE version = ?", (latest,))

    def interrupted(db):
        db.execute("UPDATE runs SET recipe_hash = 'half'")
        raise KeyboardInterrupt  # as a Ctrl-C (or a kill) in the middle of the data migration

    monkeypatch.setitem(schema.PYTHON_MIGRATIONS, "python:rehash_runs", interrupted)
    with pytest.raises(KeyboardInterrupt):
        Ledger(ledger_url)
    monkeypatch.undo()
    with Ledger(ledger_url) as lg:  # the next open finds the old version and applies the migration whole
        assert [r["version"] for r in lg.db.query("SELECT version FROM schema_migrations ORDER BY version")] == \
            [v for v, _ in MIGRATIONS]
        with lg.db.transaction():  # a ledger whose tables are ahead of what it records
            lg.db.execute("DELETE FROM schema_migrations WHERE version >= 3")
    with pytest.raises(LedgerError, match="its tables do not match the migrations it records"):
        Ledger(ledger_url)
    target = ledger_db.resolve_url(ledger_url)  # refused without changing anything
    db = ledger_db.SQLiteDatabase(target.path) if target.kind == "sqlite" else ledger_db.PostgresDatabase(target.url)
    assert [r["version"] for r in db.query("SELECT version FROM schema_migrations ORDER BY version")] == [1, 2]
    db.close()


def test_a_locked_ledger_waits_a_bounded_time_then_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(ledger_db, "BUSY_TIMEOUT_S", 0.3)
    path = tmp_path / "lab.db"
    campaign = a_ledger(path)
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")  # another process in the middle of a long write
    holder.execute("INSERT INTO notes (id, author, text, created_at, campaign_id) VALUES ('h', 'bo', 't', 'x', ?)", (campaign,))
    with Ledger(str(path)) as lg:
        assert lg.get_campaign(campaign)["name"] == "c"  # WAL: reads go on
        started = time.monotonic()
        with pytest.raises(LedgerError, match=r"lab.db is locked: another process held it for over 0.3 s .*fuser"):
            lg.add_note("mine", author="ana", campaign_id=campaign)
        assert time.monotonic() - started < 5 and not lg.db.conn.in_transaction
        holder.execute("COMMIT")
        lg.add_note("mine", author="ana", campaign_id=campaign)  # the same connection writes once the lock is gone

        monkeypatch.setattr(ledger_db, "BUSY_TIMEOUT_S", 5.0)
        lg.db.conn.execute("PRAGMA busy_timeout = 5000")
        holder.execute("BEGIN EXCLUSIVE")
        threading.Timer(0.3, holder.execute, ("COMMIT",)).start()  # a transient lock is waited out
        lg.add_note("after a wait", author="ana", campaign_id=campaign)
        assert sorted(n["text"] for n in lg.list_notes(campaign_id=campaign)) == ["after a wait", "mine", "t"]
    holder.close()


def test_a_full_disk_rolls_the_write_back_and_the_ledger_goes_on(tmp_path):
    path = tmp_path / "lab.db"
    campaign = a_ledger(path)
    with Ledger(str(path)) as lg:
        lg.add_note("kept", author="ana", campaign_id=campaign)
        pages = lg.db.query("PRAGMA page_count")[0]["page_count"]
        lg.db.conn.execute(f"PRAGMA max_page_count = {pages + 2}")  # SQLite's own SQLITE_FULL, as a full disk gives
        with pytest.raises(LedgerError, match="the disk is full .*nothing of this write was saved"):
            lg.add_note("x" * 15_000, author="ana", campaign_id=campaign)
        assert not lg.db.conn.in_transaction  # no write lock kept: other processes still write
        other = sqlite3.connect(path, timeout=0.5, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        other.execute("ROLLBACK")
        other.close()
        lg.db.conn.execute("PRAGMA max_page_count = 1073741823")  # space freed: the same connection writes again
        lg.add_note("after", author="ana", campaign_id=campaign)
        assert [n["text"] for n in lg.list_notes(campaign_id=campaign)] == ["kept", "after"]
        assert lg.db.query("PRAGMA integrity_check")[0]["integrity_check"] == "ok"


def test_a_read_only_ledger_reads_and_refuses_writes_in_one_line(tmp_path):
    path = tmp_path / "lab.db"
    campaign = a_ledger(path)
    path.chmod(0o444)
    immutable = False
    if os.access(path, os.W_OK):  # root: permissions do not bind; the immutable attribute does
        if not shutil.which("chattr") or subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode:
            pytest.skip("cannot make a file read-only here (root, no chattr +i on this file system)")
        immutable = True
    try:
        with Ledger(str(path)) as lg:
            assert lg.get_campaign(campaign)["name"] == "c"
            with pytest.raises(LedgerError, match="lab.db is read-only .*make the file and its folder .* writable"):
                lg.add_note("x", author="ana", campaign_id=campaign)
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(path)], check=True)
        path.chmod(0o644)


# ---- PostgreSQL -----------------------------------------------------------------------------------


@pytest.mark.parametrize("url, secret", [
    ("postgresql://lab:hunter2@db:5432/lab", "hunter2"),
    ("postgresql://lab:hun@ter2@db/lab", "ter2"),  # an unescaped @ in the password: libpq takes "ter2@db" for the host
    ("postgresql://lab:hun/ter:2@db/lab", "hun/ter"),  # an unescaped / and :
    ("postgresql://db/lab?user=lab&password=hunter2&sslmode=disable", "hunter2"),
    ("postgresql://lab:p%40ssw0rd@db/lab", "p@ssw0rd"),
])
def test_a_ledger_url_never_shows_its_password(url, secret):
    shown = redact(url)
    assert secret not in shown and secret.replace("@", "%40") not in shown and "db" in shown
    assert secret not in scrub_url_secrets(f"failed to resolve host '{secret}@db': password {secret}", url)


def test_a_postgres_server_that_is_down_is_one_line_without_the_password(capsys):
    pytest.importorskip("psycopg")
    err = one_line_exit_2(capsys, "runs", "list", "--db", "postgresql://lab:hunter2@127.0.0.1:1/lab")
    assert "cannot connect to the ledger at postgresql://lab:***@127.0.0.1:1/lab" in err and "hunter2" not in err
    err = one_line_exit_2(capsys, "runs", "list", "--db", "postgresql://lab:hun%2Gter@127.0.0.1:1/lab")  # bad % escape
    assert "hun%2Gter" not in err and "check the server and the URL" in err
    err = one_line_exit_2(capsys, "runs", "list", "--db", "postgresql://127.0.0.1:1/lab?password=hunter2")
    assert "hunter2" not in err


@pytest.fixture
def pg_url():
    with pg_schema() as url:
        yield url


def kill_connection(lg: Ledger) -> None:
    """What a server restart (or an idle connection dropped by a proxy) does to a long-lived connection."""
    import psycopg

    with psycopg.connect(PG_URL, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (lg.db.conn.info.backend_pid,))


def test_a_long_lived_postgres_connection_survives_losing_its_server(pg_url):
    with Ledger(pg_url) as lg:  # a campaign loop's connection
        campaign = lg.create_campaign("c", goal="g")
        kill_connection(lg)
        assert lg.get_campaign(campaign)["name"] == "c"  # a read reconnects and retries
        kill_connection(lg)
        lg.add_note("after a restart", author="ana", campaign_id=campaign)  # a write reconnects before BEGIN

        with pytest.raises(LedgerError, match=r"lost the connection in the middle of a write.*\(--db or PRETRAINLAB_DB\)") as err:
            with lg.db.transaction():  # lost mid-write: rolled back whole by the server, and said so
                lg.db.execute("INSERT INTO notes (id, author, text, created_at, campaign_id) VALUES ('half', 'ana', 't', 'x', ?)",
                              (campaign,))
                kill_connection(lg)
                lg.db.execute("INSERT INTO notes (id, author, text, created_at, campaign_id) VALUES ('half2', 'ana', 't', 'x', ?)",
                              (campaign,))
        assert "Traceback" not in str(err.value) and "\n" not in str(err.value)
        lg.add_note("next", author="ana", campaign_id=campaign)  # and the connection goes on
        assert [n["text"] for n in lg.list_notes(campaign_id=campaign)] == ["after a restart", "next"]


def test_a_postgres_lock_held_by_another_session_is_a_bounded_wait(pg_url, monkeypatch):
    import psycopg

    monkeypatch.setattr(ledger_db, "BUSY_TIMEOUT_S", 0.3)
    with Ledger(pg_url) as lg:
        campaign = lg.create_campaign("c", goal="g")
        with psycopg.connect(pg_url) as other:  # another session in a long transaction
            other.execute("LOCK TABLE notes IN ACCESS EXCLUSIVE MODE")
            started = time.monotonic()
            with pytest.raises(LedgerError, match="is locked: another session held a lock for over 0.3 s"):
                lg.add_note("x", author="ana", campaign_id=campaign)
            assert time.monotonic() - started < 5
        lg.add_note("x", author="ana", campaign_id=campaign)
        assert len(lg.list_notes(campaign_id=campaign)) == 1


def test_the_dashboard_says_the_ledger_is_unavailable(tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from pretrainlab.ui import create_app

    path = tmp_path / "lab.db"
    campaign = a_ledger(path)
    path.write_bytes(b"\0" * 4096)  # damaged under the running dashboard
    page = TestClient(create_app(db=str(path)), base_url="http://127.0.0.1").get(f"/campaigns/{campaign}")
    assert page.status_code == 503 and "is damaged or not a SQLite database" in page.text
    with pytest.raises(LedgerError):
        api.research_status(campaign, db=str(path))
