"""The ledger schema as ordered migrations: a list of (version, SQL), applied in order.

One SQL text serves SQLite and PostgreSQL: TEXT ids (12 hex digits, like run ids), ISO-8601
UTC timestamps as TEXT (they sort and compare as strings), JSON as TEXT, DOUBLE PRECISION
and BIGINT for numbers. Applied versions are recorded in `schema_migrations`.

To change the schema, append a migration with the next version number; never edit one that
has shipped (ledgers in the wild have already applied it). Statements are separated by a
semicolon at the end of a line. A data migration that needs the lab's own code names a function
instead ("python:NAME", in PYTHON_MIGRATIONS); it runs in the same transaction.

A team's ledger is shared by labs of several versions, and the first newer one to open it applies
its migrations. OLDEST_LAB says which older labs may go on using the ledger after a migration: a
migration that only adds (a table, an index, a nullable column older labs never need to write)
names the version before it; one that changes what older labs read or write is absent (only labs
that know it may open the ledger). Each ledger records it per applied migration
(`schema_migrations.oldest_lab`), so a lab checks a migration it has never heard of.
"""

MIGRATIONS: list[tuple[int, str]] = [
    (1, """
CREATE TABLE campaigns (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    goal TEXT,
    config TEXT,
    status TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE experiments (
    id TEXT PRIMARY KEY,
    campaign_id TEXT REFERENCES campaigns (id),
    hypothesis TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('config', 'code', 'data')),
    proposer_type TEXT NOT NULL CHECK (proposer_type IN ('person', 'strategy')),
    proposer TEXT NOT NULL,
    model_id TEXT,
    rationale TEXT,
    parent_recipe TEXT,
    change TEXT,
    status TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX experiments_campaign ON experiments (campaign_id);
CREATE TABLE runs (
    run_id TEXT PRIMARY KEY,
    run_dir TEXT NOT NULL,
    recipe_name TEXT,
    recipe_hash TEXT,
    recipe TEXT,
    seed BIGINT,
    git_commit TEXT,
    git_diff TEXT,
    provenance TEXT,
    device TEXT,
    world_size INTEGER,
    status TEXT NOT NULL,
    val_bpb DOUBLE PRECISION,
    params BIGINT,
    tokens BIGINT,
    steps BIGINT,
    seconds DOUBLE PRECISION,
    tokens_per_s DOUBLE PRECISION,
    mfu DOUBLE PRECISION,
    peak_mem_mb DOUBLE PRECISION,
    summary TEXT,
    campaign_id TEXT REFERENCES campaigns (id),
    experiment_id TEXT REFERENCES experiments (id),
    created_at TEXT NOT NULL,
    finished_at TEXT,
    registered_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX runs_created_at ON runs (created_at);
CREATE INDEX runs_status ON runs (status, created_at);
CREATE INDEX runs_recipe_name ON runs (recipe_name, created_at);
CREATE INDEX runs_recipe_hash ON runs (recipe_hash);
CREATE INDEX runs_val_bpb ON runs (val_bpb);
CREATE INDEX runs_campaign ON runs (campaign_id);
CREATE INDEX runs_experiment ON runs (experiment_id);
CREATE INDEX runs_run_dir ON runs (run_dir);
CREATE TABLE decisions (
    id TEXT PRIMARY KEY,
    experiment_id TEXT REFERENCES experiments (id),
    campaign_id TEXT REFERENCES campaigns (id),
    verdict TEXT NOT NULL,
    effect DOUBLE PRECISION,
    ci_low DOUBLE PRECISION,
    ci_high DOUBLE PRECISION,
    decided_by TEXT NOT NULL,
    decider_type TEXT NOT NULL CHECK (decider_type IN ('person', 'strategy')),
    model_id TEXT,
    rationale TEXT,
    evidence TEXT,
    created_at TEXT NOT NULL
);
CREATE INDEX decisions_experiment ON decisions (experiment_id);
CREATE INDEX decisions_campaign ON decisions (campaign_id);
CREATE TABLE notes (
    id TEXT PRIMARY KEY,
    run_id TEXT REFERENCES runs (run_id),
    experiment_id TEXT REFERENCES experiments (id),
    campaign_id TEXT REFERENCES campaigns (id),
    author TEXT NOT NULL,
    text TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX notes_run ON notes (run_id);
CREATE INDEX notes_experiment ON notes (experiment_id);
CREATE INDEX notes_campaign ON notes (campaign_id);
CREATE TABLE evals (
    run_id TEXT NOT NULL REFERENCES runs (run_id),
    step BIGINT NOT NULL,
    tokens BIGINT,
    val_bpb DOUBLE PRECISION,
    domains TEXT,
    PRIMARY KEY (run_id, step)
);
CREATE TABLE run_series (
    run_id TEXT PRIMARY KEY REFERENCES runs (run_id),
    metrics_path TEXT NOT NULL,
    num_rows BIGINT NOT NULL,
    num_evals BIGINT NOT NULL,
    first_step BIGINT,
    last_step BIGINT,
    file_size BIGINT NOT NULL,
    sha256 TEXT NOT NULL
)
"""),
    # Typed campaign state: an experiment's phase (status) without the seeds it plans folded in
    # ("running:3" -> running, planned_seeds 3), and its role in the campaign as a column
    # (store.Role), filled in for ledgers written before from what the campaign recorded.
    (2, """
ALTER TABLE experiments ADD COLUMN planned_seeds INTEGER;
ALTER TABLE experiments ADD COLUMN role TEXT;
UPDATE experiments SET planned_seeds = CAST(SUBSTR(status, 9) AS INTEGER), status = 'running' WHERE status LIKE 'running:%';
UPDATE experiments SET role = CASE
    WHEN change LIKE '%"transfer_of": "%' THEN 'transfer'
    WHEN change LIKE '%"confirm": "final"%' THEN 'confirmation'
    WHEN change LIKE '%"confirm": "ablation"%' THEN 'ablation'
    WHEN change LIKE '%"pruned": [%' THEN 'pruned'
    WHEN change LIKE '%"combines": [%' THEN 'combination'
    WHEN change LIKE '%"role": "proxy"%' THEN 'proxy'
    WHEN change LIKE '%"role": "recommended"%' THEN 'recommended'
    WHEN change LIKE '%"role": "natural"%' OR change LIKE '%"role": "uniform"%' THEN 'reference'
    WHEN proposer = 'campaign' AND hypothesis LIKE 'baseline:%' THEN 'baseline'
    WHEN proposer = 'sweep' THEN 'sweep'
    WHEN campaign_id IS NOT NULL AND proposer_type = 'person' THEN 'suggestion'
    WHEN campaign_id IS NOT NULL THEN 'proposal'
END;
CREATE INDEX experiments_role ON experiments (campaign_id, role)
"""),
    # Where and how each campaign run ran, one row per attempt (a run lost with its node is tried
    # again): the evidence for the doctor's cluster findings (queue wait, restarts). Durations
    # are seconds on the runner's clock; run_key is the campaign's name for the run (its
    # directory's name), which exists before the run has a run_id.
    (3, """
CREATE TABLE run_attempts (
    id TEXT PRIMARY KEY,
    campaign_id TEXT NOT NULL REFERENCES campaigns (id),
    run_key TEXT NOT NULL,
    run_dir TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    node TEXT,
    queue_s DOUBLE PRECISION NOT NULL,
    place_s DOUBLE PRECISION NOT NULL,
    run_s DOUBLE PRECISION NOT NULL,
    outcome TEXT NOT NULL,
    reason TEXT,
    created_at TEXT NOT NULL
);
CREATE INDEX run_attempts_campaign ON run_attempts (campaign_id, run_key)
"""),
    # Which older labs may still use the ledger after each migration (OLDEST_LAB below)
    (4, """
ALTER TABLE schema_migrations ADD COLUMN oldest_lab INTEGER
"""),
    # Runs registered before recipes were read as this version reads them: each stored recipe with the fields
    # added since at their defaults, and its hash of the frozen-base kind (config.Recipe.hash), so that runs of
    # one recipe share a hash and filter alike whichever lab registered them. Values only: older labs go on.
    (5, "python:rehash_runs"),
]

# migration version -> the oldest lab (by the newest migration it knows) that may still use a ledger with it applied
OLDEST_LAB: dict[int, int] = {4: 3, 5: 4}


def rehash_runs(db) -> None:
    """Migration 5 (inside migrate's transaction): stored recipes resolved and hashed as this version does;
    a recipe it cannot read keeps its row as it was."""
    import json

    from ..config import recipe_hash, resolved_recipe

    for row in db.query("SELECT run_id, recipe, recipe_hash FROM runs WHERE recipe IS NOT NULL"):
        try:
            stored = json.loads(row["recipe"])
        except ValueError:
            continue
        resolved, new_hash = resolved_recipe(stored), recipe_hash(stored)
        if new_hash is None or (new_hash == row["recipe_hash"] and resolved is stored):
            continue
        db.execute("UPDATE runs SET recipe = ?, recipe_hash = ? WHERE run_id = ?", (json.dumps(resolved), new_hash, row["run_id"]))


PYTHON_MIGRATIONS = {"python:rehash_runs": rehash_runs}


def statements(sql: str) -> list[str]:
    """Split a migration into statements (a semicolon ends a line)."""
    return [s.strip() for s in sql.split(";\n") if s.strip()]
