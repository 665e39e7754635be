"""The `Ledger`: runs, campaigns, experiments, decisions and notes over one database.

    from pretrainlab.ledger import Ledger
    with Ledger() as lg:                                   # the workspace's SQLite file
        lg.register_run("runs/tiny-cpu-20261121-1200-ab12")
        exp = lg.add_experiment("muon lr 0.05 beats 0.035", kind="config", proposer="claude",
                                proposer_type="strategy", model_id="claude-opus-4-1", rationale="...")
        lg.record_decision("discard", decided_by="alice", experiment_id=exp, effect=0.004,
                           ci_low=-0.001, ci_high=0.009, rationale="within seed noise")

Every write is one short transaction, safe with many processes writing at once. Bad values
(an unknown verdict, a campaign that does not exist) raise UserError naming the fix.
"""

from __future__ import annotations

import difflib
import json
import uuid
from collections.abc import Iterable
from enum import StrEnum
from pathlib import Path
from typing import Any

from ..config import resolved_recipe
from ..errors import UserError
from .db import LedgerURL, connect, now, resolve_url
from .rundir import METRIC_COLUMNS, RUN_STATUSES, is_run_dir, read_run_dir, run_id_of

EXPERIMENT_KINDS = ("config", "code", "data")  # a recipe diff, a code patch, a data mixture
ACTOR_TYPES = ("person", "strategy")  # who proposed / decided: a person, or a strategy (optionally an LLM, model_id)
VERDICTS = ("keep", "discard", "inconclusive")


class Phase(StrEnum):
    """Where an experiment is in its campaign (experiments.status); `planned_seeds` says how
    many seeds a running one has (1 = a screen)."""
    PROPOSED = "proposed"  # recorded outside a campaign loop
    QUEUED = "queued"  # waiting for a slot
    AWAITING_APPROVAL = "awaiting-approval"  # a code patch waiting for a person
    RUNNING = "running"  # its planned seeds run (or wait for a slot)
    MEASURED = "measured"  # all its runs are in; its claim waits for the rest of its phase
    TRANSFER = "transfer"  # won at the campaign's scale; its transfer check runs
    DECIDED = "decided"  # final
    FAILED = "failed"  # final: nothing to decide on
    REJECTED = "rejected"  # final: refused before or while running (invalid, a failed probe, a person's reject)


class Role(StrEnum):
    """What an experiment is for in its campaign (experiments.role)."""
    BASELINE = "baseline"  # the starting recipe: the first incumbent and the seed noise floor
    PROPOSAL = "proposal"  # a strategy's (or a model's) proposal
    SUGGESTION = "suggestion"  # a person's
    SWEEP = "sweep"  # the screen policy's one-key sweep
    COMBINATION = "combination"  # the merge of two winners over one parent
    CONFIRMATION = "confirmation"  # the final recipe against the baseline on fresh seeds
    ABLATION = "ablation"  # the final recipe without one changed key group
    PRUNED = "pruned"  # the final recipe without the groups its ablations showed do not help
    TRANSFER = "transfer"  # one side of a transfer check at a larger rung
    PROXY = "proxy"  # mixture campaigns: a proxy run of the design
    REFERENCE = "reference"  # mixture campaigns: the natural or uniform mixture
    RECOMMENDED = "recommended"  # mixture campaigns: the fitted optimum


PHASES = tuple(Phase)
ROLES = tuple(Role)

# what `runs list` returns per run (the big JSON columns stay out of listings)
LIST_COLUMNS = ("run_id", "run_dir", "recipe_name", "recipe_hash", "seed", "status", *METRIC_COLUMNS, "device", "world_size",
                "git_commit", "campaign_id", "experiment_id", "created_at", "finished_at")
RUN_COLUMNS = ("run_id", "run_dir", "recipe_name", "recipe_hash", "recipe", "seed", "git_commit", "git_diff", "provenance", "device",
               "world_size", "status", *METRIC_COLUMNS, "summary", "campaign_id", "experiment_id", "created_at", "finished_at")
EXPERIMENT_COLUMNS = ("id", "campaign_id", "hypothesis", "kind", "proposer_type", "proposer", "model_id", "rationale", "parent_recipe",
                      "change", "status", "role", "planned_seeds", "created_at")
EXPERIMENT_BRIEF = ("id", "campaign_id", "hypothesis", "kind", "proposer_type", "proposer", "model_id", "status", "role", "planned_seeds",
                    "created_at")  # an experiment without its rationale and its recipes' JSON: what lists show
JSON_COLUMNS = {"recipe", "provenance", "summary", "config", "parent_recipe", "change", "evidence", "domains"}


def new_id() -> str:
    return uuid.uuid4().hex[:12]


class Ledger:
    """One connection to the ledger at `url` (see db.resolve_url); use as a context manager."""

    def __init__(self, url: str | LedgerURL | None = None, create: bool = True):
        self.target = url if isinstance(url, LedgerURL) else resolve_url(url)
        self.db = connect(self.target, create=create)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- runs ---------------------------------------------------------------------------------

    def register_run(self, run_dir: Path | str, campaign_id: str | None = None, experiment_id: str | None = None) -> dict:
        """Insert or update a run from its directory; idempotent (a resumed run updates its row). A run moved elsewhere
        has its row moved with it; a copy of a run still in place (the same run_id, read from its files) is refused: it
        would silently take over the original's row."""
        record = read_run_dir(Path(run_dir))
        row = self.db.query_one("SELECT run_dir FROM runs WHERE run_id = ?", (record["run"]["run_id"],))
        if row and row["run_dir"] and row["run_dir"] != record["run"]["run_dir"]:
            old, new = Path(row["run_dir"]), Path(record["run"]["run_dir"])
            try:
                same = old.resolve() == new.resolve()
                still_there = not same and is_run_dir(old) and run_id_of(old) == record["run"]["run_id"]
            except (OSError, ValueError, UserError):
                still_there = False
            if still_there:
                raise UserError(f"{new} has run_id {record['run']['run_id']!r}, which the ledger has for {old}: a copied run "
                                "directory keeps its run_id; give the copy a new one (the run_id in its provenance.json) or "
                                "import the original")
        return self.upsert_run(record, campaign_id, experiment_id)

    def upsert_run(self, record: dict, campaign_id: str | None = None, experiment_id: str | None = None) -> dict:
        """Write a `read_run_dir` record: the run row, its eval rows and its metrics index."""
        run = dict(record["run"], campaign_id=campaign_id, experiment_id=experiment_id)
        stamp = now()
        values = [_to_db(c, run[c]) for c in RUN_COLUMNS] + [stamp, stamp]
        cols = (*RUN_COLUMNS, "registered_at", "updated_at")
        keep = {"run_id", "created_at", "registered_at", "campaign_id", "experiment_id"}
        updates = [f"{c} = excluded.{c}" for c in cols if c not in keep]
        updates += [f"{c} = COALESCE(excluded.{c}, runs.{c})" for c in ("campaign_id", "experiment_id")]
        with self.db.transaction():
            self._check_refs(campaign_id=campaign_id, experiment_id=experiment_id)
            existed = self.db.query_one("SELECT 1 AS x FROM runs WHERE run_id = ?", (run["run_id"],)) is not None
            self.db.execute(f"INSERT INTO runs ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))}) "
                            f"ON CONFLICT (run_id) DO UPDATE SET {', '.join(updates)}", values)
            self.db.execute("DELETE FROM evals WHERE run_id = ?", (run["run_id"],))
            if record["evals"]:
                self.db.executemany("INSERT INTO evals (run_id, step, tokens, val_bpb, domains) VALUES (?, ?, ?, ?, ?)",
                                    [(run["run_id"], e["step"], e["tokens"], e["val_bpb"], _json(e["domains"])) for e in record["evals"]])
            self.db.execute("DELETE FROM run_series WHERE run_id = ?", (run["run_id"],))
            s = record["series"]
            if s:
                self.db.execute("INSERT INTO run_series (run_id, metrics_path, num_rows, num_evals, first_step, last_step, file_size, "
                                "sha256) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                                (run["run_id"], s["metrics_path"], s["num_rows"], s["num_evals"], s["first_step"], s["last_step"],
                                 s["file_size"], s["sha256"]))
        return {"run_id": run["run_id"], "run_dir": run["run_dir"], "status": run["status"], "val_bpb": run["val_bpb"],
                "action": "updated" if existed else "added"}

    def link_run(self, run_id: str, campaign_id: str | None = None, experiment_id: str | None = None) -> None:
        """Attach a registered run to a campaign and/or an experiment."""
        with self.db.transaction():
            self._check_refs(campaign_id=campaign_id, experiment_id=experiment_id)
            n = self.db.execute("UPDATE runs SET campaign_id = COALESCE(?, campaign_id), experiment_id = COALESCE(?, experiment_id) "
                                "WHERE run_id = ?", (campaign_id, experiment_id, run_id))
        if not n:
            raise UserError(f"run {run_id!r} is not in the ledger {self.target}; register it first (`pretrainlab runs import RUN_DIR`)")

    def list_runs(self, *, status: Iterable[str] | None = None, recipe: list[tuple[str, str]] | None = None, campaign: str | None = None,
                  experiment: str | None = None, since: str | None = None, until: str | None = None, limit: int | None = None,
                  sort: str = "created", columns: Iterable[str] = LIST_COLUMNS) -> list[dict]:
        """Runs matching every filter, newest first (or by val_bpb, best first, unfinished last).

        recipe: (dotted key, value) pairs matched against the resolved recipe JSON, e.g.
        ("model.n_layer", "4") or ("name", "tiny-cpu"); values compare by type (4 == 4.0).
        since/until: ISO timestamps in the ledger's UTC format, on created_at (until exclusive).
        """
        where, params = [], []
        statuses = list(status or [])
        for s in statuses:
            if s not in RUN_STATUSES:
                close = difflib.get_close_matches(s, RUN_STATUSES, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise UserError(f"unknown run status {s!r}{hint}; one of {', '.join(RUN_STATUSES)}")
        if statuses:
            where.append(f"status IN ({', '.join('?' * len(statuses))})")
            params += statuses
        json_filters = []
        for key, value in recipe or []:
            if key == "name":
                where.append("recipe_name = ?")
                params.append(value)
            else:
                json_filters.append((key, value))
        if campaign:
            where.append("campaign_id IN (SELECT id FROM campaigns WHERE id = ? OR name = ?)")
            params += [campaign, campaign]
        if experiment:
            where.append("experiment_id = ?")
            params.append(experiment)
        if since:
            where.append("created_at >= ?")
            params.append(since)
        if until:
            where.append("created_at < ?")
            params.append(until)
        if sort not in ("created", "val_bpb"):
            raise UserError(f"--sort {sort!r}: use created or val_bpb")
        order = "val_bpb IS NULL, val_bpb, created_at DESC, run_id" if sort == "val_bpb" else "created_at DESC, run_id"
        cols = list(columns) + (["recipe"] if json_filters and "recipe" not in columns else [])
        sql = f"SELECT {', '.join(cols)} FROM runs{' WHERE ' + ' AND '.join(where) if where else ''} ORDER BY {order}"
        if limit and not json_filters:
            sql += " LIMIT ?"
            params.append(int(limit))
        rows = self.db.query(sql, params)
        if json_filters:
            # recipe keys are matched here rather than in SQL: the same semantics on both backends
            kept = []
            for row in rows:
                r = resolved_recipe(json.loads(row["recipe"])) if row["recipe"] else {}
                if all(recipe_value_matches(get_path(r, k), v) for k, v in json_filters):
                    if "recipe" not in columns:
                        row.pop("recipe")
                    kept.append(row)
                    if limit and len(kept) >= limit:
                        break
            rows = kept
        return [_from_db(r) for r in rows]

    def count_runs(self) -> int:
        return self.db.query_one("SELECT count(*) AS n FROM runs")["n"]

    def get_run(self, run_id: str) -> dict | None:
        """Everything the ledger has on one run: the row, its evals, metrics index and notes."""
        row = self.db.query_one(f"SELECT {', '.join(RUN_COLUMNS)}, registered_at, updated_at FROM runs WHERE run_id = ?", (run_id,))
        if row is None:
            return None
        run = _from_db(row)
        evals = self.db.query("SELECT step, tokens, val_bpb, domains FROM evals WHERE run_id = ? ORDER BY step", (run_id,))
        run["evals"] = [_from_db(e) for e in evals]
        run["series"] = self.db.query_one("SELECT metrics_path, num_rows, num_evals, first_step, last_step, file_size, sha256 "
                                          "FROM run_series WHERE run_id = ?", (run_id,))
        run["notes"] = self.list_notes(run_id=run_id)
        return run

    def resolve_run(self, ref: str) -> str:
        """A run id from a run id, a unique id prefix, or a run directory."""
        ref = str(ref).strip()
        if not ref:  # Path("") is the current directory
            raise UserError("an empty run: give a run id, a unique prefix of one, or a run directory (see `pretrainlab runs list`)")
        path = Path(ref)
        try:
            is_dir = path.is_dir()
        except OSError:  # a name too long to be a path (ENAMETOOLONG): an id, or nothing
            is_dir = False
        if is_dir:
            if is_run_dir(path):
                rid = run_id_of(path)
                if self.db.query_one("SELECT 1 AS x FROM runs WHERE run_id = ?", (rid,)):
                    return rid
            row = self.db.query_one("SELECT run_id FROM runs WHERE run_dir = ? ORDER BY updated_at DESC", (str(path.absolute()),))
            if row:
                return row["run_id"]
            raise UserError(f"run directory {ref} is not in the ledger {self.target}: add it with `pretrainlab runs import {ref}`")
        if not ref:
            raise UserError("empty run reference: pass a run id, a unique prefix of one, or a run directory")
        if self.db.query_one("SELECT 1 AS x FROM runs WHERE run_id = ?", (ref,)):
            return ref
        rows = self.db.query("SELECT run_id FROM runs WHERE substr(run_id, 1, ?) = ? ORDER BY run_id LIMIT 6", (len(ref), ref))
        if len(rows) == 1:
            return rows[0]["run_id"]
        if rows:
            ids = ", ".join(r["run_id"] for r in rows[:5])
            raise UserError(f"run prefix {ref!r} is ambiguous ({ids}{', ...' if len(rows) > 5 else ''}); type more characters of the id")
        raise UserError(f"no run {ref[:200]!r} in the ledger {self.target}: pass a run id, a unique prefix of one, or a run directory "
                        "(see `pretrainlab runs list`)")

    # ---- campaigns, experiments, decisions, notes ----------------------------------------------

    def create_campaign(self, name: str, goal: str | None = None, config: dict | None = None, status: str = "running") -> str:
        _require("campaign name", name)
        cid = new_id()
        with self.db.transaction():
            self.db.execute("INSERT INTO campaigns (id, name, goal, config, status, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                            (cid, name, goal, _json(config), status, now()))
        return cid

    def set_campaign_status(self, campaign_id: str, status: str) -> None:
        with self.db.transaction():
            if not self.db.execute("UPDATE campaigns SET status = ? WHERE id = ?", (status, campaign_id)):
                raise UserError(f"campaign {campaign_id!r} is not in the ledger {self.target}")

    def set_campaign_config(self, campaign_id: str, config: dict) -> None:
        with self.db.transaction():
            if not self.db.execute("UPDATE campaigns SET config = ? WHERE id = ?", (_json(config), campaign_id)):
                raise UserError(f"campaign {campaign_id!r} is not in the ledger {self.target}")

    def get_campaign(self, campaign_id: str) -> dict | None:
        row = self.db.query_one("SELECT * FROM campaigns WHERE id = ?", (campaign_id,))
        return _from_db(row) if row else None

    def list_campaigns(self) -> list[dict]:
        return [_from_db(r) for r in self.db.query("SELECT * FROM campaigns ORDER BY created_at DESC, id")]

    def add_experiment(self, hypothesis: str, *, kind: str, proposer: str, proposer_type: str = "person", model_id: str | None = None,
                       rationale: str | None = None, campaign_id: str | None = None, parent_recipe: dict | None = None,
                       change: Any = None, status: str = Phase.PROPOSED, role: str | None = None,
                       planned_seeds: int | None = None) -> str:
        """Record a proposed experiment and who proposed it (a person, or a strategy and its model);
        `status` is its Phase, `role` what it is for in its campaign."""
        _require("hypothesis", hypothesis)
        _choice("experiment kind", kind, EXPERIMENT_KINDS)
        _choice("proposer_type", proposer_type, ACTOR_TYPES)
        _choice("experiment phase", status, PHASES)
        if role is not None:
            _choice("experiment role", role, ROLES)
        _planned(status, planned_seeds)
        _require("proposer (a person's name or a strategy's)", proposer)
        if proposer_type == "person" and model_id:
            raise UserError(f"model_id {model_id!r} given for a person's proposal: set proposer_type='strategy' for a model's proposal")
        eid = new_id()
        with self.db.transaction():
            self._check_refs(campaign_id=campaign_id)
            self.db.execute("INSERT INTO experiments (id, campaign_id, hypothesis, kind, proposer_type, proposer, model_id, rationale, "
                            "parent_recipe, change, status, role, planned_seeds, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                            (eid, campaign_id, hypothesis, kind, proposer_type, proposer, model_id, rationale, _json(parent_recipe),
                             _json(change), str(status), None if role is None else str(role), planned_seeds, now()))
        return eid

    def set_experiment_status(self, experiment_id: str, status: str, planned_seeds: int | None = None) -> None:
        """Move an experiment to Phase `status`; a running one says how many seeds it plans
        (kept afterwards, as the record of how many it ran)."""
        _choice("experiment phase", status, PHASES)
        _planned(status, planned_seeds)
        sql, params = "UPDATE experiments SET status = ?", [str(status)]
        if planned_seeds is not None:
            sql, params = sql + ", planned_seeds = ?", params + [planned_seeds]
        with self.db.transaction():
            if not self.db.execute(sql + " WHERE id = ?", (*params, experiment_id)):
                raise UserError(f"experiment {experiment_id!r} is not in the ledger {self.target}")

    def get_experiment(self, experiment_id: str) -> dict | None:
        row = self.db.query_one("SELECT * FROM experiments WHERE id = ?", (experiment_id,))
        return _from_db(row) if row else None

    def list_experiments(self, campaign_id: str | None = None, reuse: dict[str, dict] | None = None, status: str | None = None,
                         columns: Iterable[str] | None = None) -> list[dict]:
        """Experiments in creation order, of one campaign and in one Phase if given. `columns`:
        only these (e.g. EXPERIMENT_BRIEF: no recipe JSON to parse). `reuse`: rows an earlier
        call returned, by id; an experiment's JSON columns never change once recorded (only its
        status and planned seeds do), so a reused row's parsed ones are taken from there instead
        of parsed again: a campaign loop reloads its state after every write, and parsing
        dominated that."""
        where, params = [], []
        if campaign_id:
            where.append("campaign_id = ?")
            params.append(campaign_id)
        if status is not None:
            _choice("experiment phase", status, PHASES)
            where.append("status = ?")
            params.append(str(status))
        cols = "*" if columns is None else ", ".join(c for c in columns if c in EXPERIMENT_COLUMNS) or "id"
        sql = f"SELECT {cols} FROM experiments{' WHERE ' + ' AND '.join(where) if where else ''} ORDER BY created_at, id"
        return [_reuse_or_parse(r, reuse) for r in self.db.query(sql, params)]

    def record_decision(self, verdict: str, *, decided_by: str, decider_type: str = "person", experiment_id: str | None = None,
                        campaign_id: str | None = None, effect: float | None = None, ci_low: float | None = None,
                        ci_high: float | None = None, model_id: str | None = None, rationale: str | None = None,
                        evidence: dict | None = None) -> str:
        """Record what was decided about an experiment (or a campaign), by whom, and why.

        effect and its confidence interval are in val_bpb (treatment - baseline: negative helps);
        evidence holds what was measured (run ids, seeds, test statistics).
        """
        _choice("verdict", verdict, VERDICTS)
        _choice("decider_type", decider_type, ACTOR_TYPES)
        _require("decided_by (a person's name or a strategy's: the CLI's --author)", decided_by)
        if decider_type == "person" and rationale is not None and len(str(rationale)) > MAX_TEXT:  # typed (or pasted) by a person
            raise UserError(f"a decision's reason of {len(str(rationale)):,} characters: keep it under {MAX_TEXT:,} (link a longer write-up)")
        if experiment_id is None and campaign_id is None:
            raise UserError("a decision needs experiment_id or campaign_id: say what it decides about")
        if decider_type == "person" and model_id:
            raise UserError(f"model_id {model_id!r} given for a person's decision: set decider_type='strategy' for a model's decision")
        for name, v in (("effect", effect), ("ci_low", ci_low), ("ci_high", ci_high)):
            if v is not None and not isinstance(v, (int, float)):
                raise UserError(f"decision {name} must be a number (val_bpb), got {v!r}")
        if ci_low is not None and ci_high is not None and ci_low > ci_high:
            raise UserError(f"decision ci_low={ci_low} is above ci_high={ci_high}: swap them")
        did = new_id()
        with self.db.transaction():
            self._check_refs(campaign_id=campaign_id, experiment_id=experiment_id)
            if campaign_id is None and experiment_id is not None:
                campaign_id = self.db.query_one("SELECT campaign_id FROM experiments WHERE id = ?", (experiment_id,))["campaign_id"]
            self.db.execute("INSERT INTO decisions (id, experiment_id, campaign_id, verdict, effect, ci_low, ci_high, decided_by, "
                            "decider_type, model_id, rationale, evidence, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                            (did, experiment_id, campaign_id, verdict, effect, ci_low, ci_high, decided_by, decider_type, model_id,
                             rationale, _json(evidence), now()))
        return did

    def list_decisions(self, experiment_id: str | None = None, campaign_id: str | None = None,
                       reuse: dict[str, dict] | None = None) -> list[dict]:
        """Decisions in the order they were made. `reuse`: as for list_experiments (a decision
        is never changed once recorded)."""
        where, params = _targets(experiment_id=experiment_id, campaign_id=campaign_id)
        return [_reuse_or_parse(r, reuse) for r in self.db.query(f"SELECT * FROM decisions{where} ORDER BY created_at, id", params)]

    def add_note(self, text: str, author: str, run_id: str | None = None, experiment_id: str | None = None,
                 campaign_id: str | None = None) -> str:
        _require("note text", text)
        _require("note author (the CLI's --author)", author)
        if len(text) > MAX_TEXT:
            raise UserError(f"a note of {len(text):,} characters: keep it under {MAX_TEXT:,} (link a longer write-up)")
        if not (run_id or experiment_id or campaign_id):
            raise UserError("a note needs a run, an experiment or a campaign to attach to")
        nid = new_id()
        with self.db.transaction():
            self._check_refs(run_id=run_id, campaign_id=campaign_id, experiment_id=experiment_id)
            self.db.execute("INSERT INTO notes (id, run_id, experiment_id, campaign_id, author, text, created_at) "
                            "VALUES (?, ?, ?, ?, ?, ?, ?)",
                            (nid, run_id, experiment_id, campaign_id, author, text, now()))
        return nid

    def list_notes(self, run_id: str | None = None, experiment_id: str | None = None, campaign_id: str | None = None) -> list[dict]:
        where, params = _targets(run_id=run_id, experiment_id=experiment_id, campaign_id=campaign_id)
        return [_from_db(r) for r in self.db.query(f"SELECT * FROM notes{where} ORDER BY created_at, id", params)]

    # ---- run attempts (the doctor's cluster evidence) ------------------------------------------

    def record_attempts(self, campaign_id: str, run_key: str, run_dir: Path | str, outcome: str, attempts: list[dict]) -> None:
        """A campaign run's attempts, from runners.base.Attempt.to_row: {attempt, node, queue_s,
        place_s, run_s, lost}. The last one ended with `outcome` (the run's status); the others
        were lost, and `lost` says why."""
        _require("run key", run_key)
        with self.db.transaction():
            self._check_refs(campaign_id=campaign_id)
            if not attempts:  # a runner that reports none (a test's fake)
                return
            self.db.executemany(
                "INSERT INTO run_attempts (id, campaign_id, run_key, run_dir, attempt, node, queue_s, place_s, run_s, outcome, reason, "
                "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(new_id(), campaign_id, run_key, str(run_dir), a["attempt"], a["node"], float(a["queue_s"]), float(a["place_s"]),
                  float(a["run_s"]), "lost" if a["lost"] else outcome, a["lost"], now()) for a in attempts])

    def list_attempts(self, campaign_id: str) -> list[dict]:
        """Every recorded attempt of a campaign's runs, in the order they were recorded."""
        return self.db.query("SELECT * FROM run_attempts WHERE campaign_id = ? ORDER BY created_at, run_key, attempt", (campaign_id,))

    def _check_refs(self, run_id: str | None = None, campaign_id: str | None = None, experiment_id: str | None = None) -> None:
        for what, table, key, value in (("run", "runs", "run_id", run_id), ("campaign", "campaigns", "id", campaign_id),
                                        ("experiment", "experiments", "id", experiment_id)):
            if value is not None and self.db.query_one(f"SELECT 1 AS x FROM {table} WHERE {key} = ?", (value,)) is None:
                raise UserError(f"{what} {value!r} is not in the ledger {self.target}; create it first or check the id")


def get_path(d: dict, dotted: str) -> Any:
    """d["model"]["n_layer"] for "model.n_layer"; a missing key gives _MISSING."""
    node: Any = d
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def recipe_value_matches(value: Any, raw: str) -> bool:
    """Does a recipe value equal a command-line string? Parsed by the value's type, as --set does."""
    raw = raw.strip()
    if value is _MISSING:
        return False
    if isinstance(value, bool):
        return raw.lower() in (("1", "true", "yes", "on") if value else ("0", "false", "no", "off"))
    if value is None:
        return raw.lower() in ("none", "null", "")
    if isinstance(value, (int, float)):
        try:
            return float(raw) == float(value)
        except ValueError:
            return False
    if isinstance(value, dict):
        try:
            parsed = json.loads(raw) if raw.startswith("{") else dict(p.split(":") for p in raw.split(","))
            return {str(k).strip(): float(v) for k, v in parsed.items()} == {k: float(v) for k, v in value.items()}
        except (ValueError, TypeError):
            return False
    if isinstance(value, list):
        return json.dumps(value) == raw or ",".join(map(str, value)) == raw
    return str(value) == raw


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


_MISSING = _Missing()


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, default=str)


def _to_db(column: str, value: Any) -> Any:
    return _json(value) if column in JSON_COLUMNS else value


def _from_db(row: dict) -> dict:
    row = {k: (json.loads(v) if k in JSON_COLUMNS and isinstance(v, str) else v) for k, v in row.items()}
    if isinstance(row.get("recipe"), dict):  # a run registered before a field was added reads with it at its default
        row["recipe"] = resolved_recipe(row["recipe"])
    return row


def _reuse_or_parse(row: dict, reuse: dict[str, dict] | None) -> dict:
    """_from_db, with the JSON columns of a row of an append-only kind (experiments' and
    decisions') taken from `reuse[id]` when an earlier read parsed them."""
    known = reuse.get(row["id"]) if reuse else None
    if known is None:
        return _from_db(row)
    return {k: (known[k] if k in JSON_COLUMNS and isinstance(v, str) else v) for k, v in row.items()}


def _targets(**ids) -> tuple[str, list]:
    given = [(k, v) for k, v in ids.items() if v is not None]
    return (" WHERE " + " AND ".join(f"{k} = ?" for k, _ in given) if given else ""), [v for _, v in given]


def _choice(what: str, value: Any, allowed: tuple[str, ...]) -> None:
    allowed = tuple(str(a) for a in allowed)  # an enum's members by their values
    if value not in allowed:
        close = difflib.get_close_matches(str(value), allowed, n=1)
        raise UserError(f"{what} {value!r} is not one of {', '.join(allowed)}{f' (did you mean {close[0]!r}?)' if close else ''}")


def _planned(status: str, planned_seeds: int | None) -> None:
    if status == Phase.RUNNING and not (isinstance(planned_seeds, int) and planned_seeds >= 1):
        raise UserError(f"a running experiment needs planned_seeds >= 1, got {planned_seeds!r}")


MAX_TEXT = 20_000  # characters of a note or a decision's reason: the ledger, the dashboard and the strategies' prompts show them


def _require(what: str, value: Any) -> None:
    if not isinstance(value, str) or not value.strip():
        raise UserError(f"{what} must be a non-empty string, got {value!r}")
