"""The ledger's tables. Bump SCHEMA_VERSION (PRAGMA user_version) with every change."""

from __future__ import annotations

from htc_notebook.states import ACTIVE, TERMINAL, JobStatus


def sql_list(states: frozenset) -> str:
    """`'A','B'` for use inside an SQL IN (...) (values are enum constants, never user input)."""
    return ",".join(f"'{s.value}'" for s in sorted(states, key=lambda s: s.value))


SCHEMA_VERSION = 14
# Version 1 had no HELD state: its CHECK constraints list these (upgraded in place, see Ledger)
V1_STATUSES = "'CANCELLED','FAILED','LOST','RUNNABLE','RUNNING','STARTING','SUBMITTED','SUCCEEDED'"

_ALL = sql_list(frozenset(JobStatus))

# The write-ahead log is reset, not shrunk, after a checkpoint: a million jobs recorded at once left
# an 871 MB ledger.db-wal on the data root's file system for as long as the ledger stayed open.
WAL_LIMIT = 64 * 1024 * 1024  # bytes the -wal file is cut back to when it is reset
PRAGMAS = (
    "PRAGMA busy_timeout = 60000",
    "PRAGMA journal_mode = WAL",
    f"PRAGMA journal_size_limit = {WAL_LIMIT}",
    "PRAGMA synchronous = FULL",
    "PRAGMA foreign_keys = ON",
)

ACTIVE_SQL = sql_list(ACTIVE)
TERMINAL_SQL = sql_list(TERMINAL)

# Jobs whose retry is due (or to be decided) are found by this index, not by reading failed jobs
RETRY_INDEX = "CREATE INDEX jobs_retry_at ON jobs (retry_at) WHERE retry_at IS NOT NULL"
# v2 -> v3: retries live in the ledger (a kernel restart forgets none), attempts say why they failed
# and what they used
V3_UPGRADE = ("ALTER TABLE jobs ADD COLUMN retry_at REAL", RETRY_INDEX, "ALTER TABLE jobs ADD COLUMN cpu_s REAL",
              "ALTER TABLE jobs ADD COLUMN max_rss_mib REAL",
              "ALTER TABLE attempts ADD COLUMN cause TEXT", "ALTER TABLE attempts ADD COLUMN request TEXT",
              "ALTER TABLE attempts ADD COLUMN cpu_s REAL", "ALTER TABLE attempts ADD COLUMN max_rss_mib REAL")

# v3 -> v4: the reconcile loop counts active jobs per owner every few seconds (which owners are
# gone?): this index answers from the active jobs' owners alone, not by parsing every job's spec
OWNER_INDEX = f"CREATE INDEX jobs_active_owner ON jobs (json_extract(spec, '$.owner')) WHERE status IN ({ACTIVE_SQL})"
V4_UPGRADE = (OWNER_INDEX,)

# v4 -> v5: project vCPU limits (HTC `limits`). Jobs beyond a limit wait HELD with this native id
# (no attempt started); the vCPUs in use are summed over this index's few rows, not over held ones
HELD_FOR_ROOM = "held:vcpus"
LIMITS_DDL = """CREATE TABLE project_limits (
        id             INTEGER PRIMARY KEY,
        project        TEXT NOT NULL REFERENCES projects(name),
        modifier_role  TEXT NOT NULL,
        vcpus          INTEGER NOT NULL CHECK (vcpus >= 1),
        created        REAL NOT NULL
    )"""
IN_USE_WHERE = (f"(status IN ('RUNNABLE', 'STARTING', 'RUNNING') "
                f"OR (status = 'HELD' AND native_id IS NOT '{HELD_FOR_ROOM}'))")
IN_USE_INDEX = f"CREATE INDEX jobs_in_use ON jobs (task_id) WHERE {IN_USE_WHERE}"
HELD_INDEX = (f"CREATE INDEX jobs_held_for_room ON jobs (json_extract(spec, '$.owner'), priority, id) "
              f"WHERE status = 'HELD' AND native_id = '{HELD_FOR_ROOM}'")
# ... and task retention policies (hours; 0: never), with when each task was archived and its files deleted
RETENTION_DDL = """CREATE TABLE retention (
        project        TEXT PRIMARY KEY REFERENCES projects(name),
        archive_after  INTEGER NOT NULL CHECK (archive_after >= 0),
        delete_after   INTEGER NOT NULL CHECK (delete_after >= 0)
    )"""
V5_UPGRADE = (LIMITS_DDL, "CREATE INDEX project_limits_project ON project_limits (project)", IN_USE_INDEX,
              HELD_INDEX, RETENTION_DDL, "ALTER TABLE tasks ADD COLUMN archived REAL",
              "ALTER TABLE tasks ADD COLUMN deleted REAL")

# v5 -> v6: the compute environments (HTC `dimensions`) a project may use, as their JSON list;
# no row: every one the site offers
# ... and the workspace's task retention policy, for projects without one of their own (one row)
V6_UPGRADE = ("""CREATE TABLE project_dimensions (
        project     TEXT PRIMARY KEY REFERENCES projects(name),
        dimensions  TEXT NOT NULL
    )""", """CREATE TABLE workspace_retention (
        id             INTEGER PRIMARY KEY CHECK (id = 1),
        archive_after  INTEGER NOT NULL CHECK (archive_after >= 0),
        delete_after   INTEGER NOT NULL CHECK (delete_after >= 0)
    )""")

# v6 -> v7: how each attempt's memory limit was held (states.MEMORY_HELD: a memory cgroup, the
# watchdog on its process tree, not at all; NULL: it asked for none), and the last attempt's on the job
V7_UPGRADE = ("ALTER TABLE attempts ADD COLUMN memory_held TEXT", "ALTER TABLE jobs ADD COLUMN memory_held TEXT")

# v7 -> v8: the sandbox each attempt ran in (states.SANDBOXES: "bwrap", or "none": unconfined), set
# when it starts, and the last attempt's on the job
V8_UPGRADE = ("ALTER TABLE attempts ADD COLUMN sandbox TEXT", "ALTER TABLE jobs ADD COLUMN sandbox TEXT")

# v8 -> v9: each session's heartbeat lease (runtime/owner.py). A process on another host cannot be
# looked at by its pid: an owner whose lease has lapsed is dead wherever it ran
OWNERS_DDL = """CREATE TABLE owners (
        owner    TEXT PRIMARY KEY,  -- host:pid, as jobs' specs name it
        expires  REAL NOT NULL      -- renewed by its heartbeats; once past, it counts as exited
    )"""
V9_UPGRADE = (OWNERS_DDL,)

# v9 -> v10: dependencies between jobs (a job WAITING until the jobs it depends on succeed). The
# WAITING state joins the status CHECKs (migrations.widen_statuses); a partial index finds them
V9_STATUSES = "'CANCELLED','FAILED','HELD','LOST','RUNNABLE','RUNNING','STARTING','SUBMITTED','SUCCEEDED'"
DEPS_DDL = """CREATE TABLE deps (
        child   INTEGER NOT NULL REFERENCES jobs(id),
        parent  INTEGER NOT NULL REFERENCES jobs(id),
        PRIMARY KEY (child, parent)
    ) WITHOUT ROWID"""
V10_UPGRADE = (DEPS_DDL, "CREATE INDEX deps_parent ON deps (parent, child)",
               "CREATE INDEX jobs_waiting ON jobs (id) WHERE status = 'WAITING'")

# v10 -> v11: small pickled calls kept in the ledger, written in the transaction that adds their
# jobs (no file and its two fsyncs per `task.submit`); larger ones stay files under the task's .htc/
PAYLOADS_DDL = """CREATE TABLE payloads (
        task_id  INTEGER NOT NULL REFERENCES tasks(id),
        digest   TEXT NOT NULL,
        data     BLOB NOT NULL,
        PRIMARY KEY (task_id, digest)
    ) WITHOUT ROWID"""
V11_UPGRADE = (PAYLOADS_DDL,)

# v11 -> v12: summary-statistics counts a task's RUNNABLE jobs a scheduler holds (its own native id,
# not the local backend's) from this index's rows alone, not by reading every RUNNABLE row (300 ms at
# 1,000,000 local jobs); a job the local backend runs has no entry
QUEUED_WHERE = "status = 'RUNNABLE' AND native_id <> '' AND substr(native_id, 1, 6) <> 'local:'"
QUEUED_INDEX = f"CREATE INDEX jobs_queued ON jobs (task_id, status, native_id) WHERE {QUEUED_WHERE}"  # covering
V12_UPGRADE = (QUEUED_INDEX,)

# v12 -> v13: jobs whose logs are to be packed (storage/log_packs.py), queued by the database itself
# when a job with logs reaches a terminal state (whatever code ends it), with when it did; the
# packer (runtime/log_packer.py) takes them a while later. Ended jobs of older ledgers are queued too.
LOG_QUEUE_DDL = """CREATE TABLE log_queue (
        job_id  INTEGER PRIMARY KEY REFERENCES jobs(id),
        ended   REAL NOT NULL
    )"""
LOG_QUEUE_TRIGGER = f"""CREATE TRIGGER jobs_ended_pack_logs
        AFTER UPDATE OF status ON jobs
        WHEN NEW.status IN ({TERMINAL_SQL}) AND NEW.log_out IS NOT NULL
        BEGIN INSERT OR REPLACE INTO log_queue (job_id, ended) VALUES (NEW.id, NEW.updated); END"""
V13_UPGRADE = (LOG_QUEUE_DDL, "CREATE INDEX log_queue_ended ON log_queue (ended)", LOG_QUEUE_TRIGGER)
V13_BACKFILL = (f"INSERT INTO log_queue (job_id, ended) SELECT id, updated FROM jobs "
                f"WHERE status IN ({TERMINAL_SQL}) AND log_out IS NOT NULL",)

# v13 -> v14: a success is queued by the statement that records it (ledger/attempts.py), and only
# if its call wrote a log: most calls print nothing, and queueing each such success to take it off
# again at once cost a third of the recorder's time at a million calls. Every other end still
# queues itself.
LOG_QUEUE_TRIGGER_V14 = f"""CREATE TRIGGER jobs_ended_pack_logs
        AFTER UPDATE OF status ON jobs
        WHEN NEW.status IN ({sql_list(TERMINAL - {JobStatus.SUCCEEDED})}) AND NEW.log_out IS NOT NULL
        BEGIN INSERT OR REPLACE INTO log_queue (job_id, ended) VALUES (NEW.id, NEW.updated); END"""
V14_UPGRADE = ("DROP TRIGGER jobs_ended_pack_logs", LOG_QUEUE_TRIGGER_V14)

# Named leases: which process does a job for the whole data root (e.g. the one SLURM status poll)
LEASES_DDL = """CREATE TABLE leases (
        name     TEXT PRIMARY KEY,
        owner    TEXT NOT NULL,
        expires  REAL NOT NULL
    )"""

DDL = (
    # One row: the global change counter. Each write transaction that changes jobs takes the
    # next value and stamps it on every job row it changes.
    """CREATE TABLE counter (
        id    INTEGER PRIMARY KEY CHECK (id = 1),
        seq   INTEGER NOT NULL
    )""",
    "INSERT INTO counter (id, seq) VALUES (1, 0)",

    """CREATE TABLE projects (
        name     TEXT PRIMARY KEY,
        created  REAL NOT NULL
    )""",

    """CREATE TABLE tasks (
        id         INTEGER PRIMARY KEY,
        project    TEXT NOT NULL REFERENCES projects(name),
        name       TEXT NOT NULL,
        lifecycle  TEXT NOT NULL DEFAULT 'ACTIVE' CHECK (lifecycle IN ('ACTIVE', 'ARCHIVED')),
        created    REAL NOT NULL,
        UNIQUE (project, name)
    )""",

    """CREATE TABLE batches (
        id          INTEGER PRIMARY KEY,
        task_id     INTEGER NOT NULL REFERENCES tasks(id),
        name        TEXT NOT NULL,
        size        INTEGER NOT NULL,
        definition  TEXT NOT NULL,   -- JSON
        tags        TEXT NOT NULL,   -- JSON list
        created     REAL NOT NULL
    )""",
    "CREATE INDEX batches_task ON batches (task_id)",

    f"""CREATE TABLE jobs (
        id         INTEGER PRIMARY KEY,
        task_id    INTEGER NOT NULL REFERENCES tasks(id),
        batch_id   INTEGER REFERENCES batches(id),
        idx        INTEGER NOT NULL,
        key        TEXT,
        name       TEXT NOT NULL,
        kind       TEXT NOT NULL CHECK (kind IN ('python', 'command')),
        profile    TEXT NOT NULL,
        priority   INTEGER NOT NULL,
        params     TEXT NOT NULL,    -- JSON
        spec       TEXT NOT NULL,    -- JSON
        status     TEXT NOT NULL CHECK (status IN ({_ALL})),
        reason     TEXT,
        exit_code  INTEGER,
        attempts   INTEGER NOT NULL DEFAULT 0,
        host       TEXT,
        native_id  TEXT,
        log_out    TEXT,
        log_err    TEXT,
        created    REAL NOT NULL,
        updated    REAL NOT NULL,
        started    REAL,
        ended      REAL,
        seq        INTEGER NOT NULL,
        retry_at   REAL,             -- a failed attempt waits for its retry decision (due then)
        cpu_s      REAL,             -- what its last attempt used (CPU time, peak memory), where measured
        max_rss_mib REAL
    )""",  # V7_UPGRADE adds memory_held (how its last attempt's memory limit was held), V8 sandbox
    "CREATE UNIQUE INDEX jobs_task_key ON jobs (task_id, key) WHERE key IS NOT NULL",
    "CREATE INDEX jobs_task_status ON jobs (task_id, status)",
    "CREATE INDEX jobs_task_seq ON jobs (task_id, seq)",
    "CREATE INDEX jobs_batch ON jobs (batch_id)",
    RETRY_INDEX,
    OWNER_INDEX,
    # G3 in the database itself: whatever SQL runs, a SUCCEEDED job stays SUCCEEDED.
    """CREATE TRIGGER jobs_succeeded_is_final
        BEFORE UPDATE OF status ON jobs
        WHEN OLD.status = 'SUCCEEDED' AND NEW.status <> 'SUCCEEDED'
        BEGIN SELECT RAISE(ABORT, 'a SUCCEEDED job is final'); END""",

    f"""CREATE TABLE attempts (
        job_id     INTEGER NOT NULL REFERENCES jobs(id),
        number     INTEGER NOT NULL,
        status     TEXT NOT NULL CHECK (status IN ({_ALL})),
        reason     TEXT,
        host       TEXT,
        native_id  TEXT,
        exit_code  INTEGER,
        started    REAL,
        ended      REAL,
        log_out    TEXT,
        log_err    TEXT,
        cause      TEXT,             -- why it failed (htc_notebook.states.Cause)
        request    TEXT,             -- JSON: the memory (MiB) and time limit (s) it asked for
        cpu_s      REAL,             -- CPU time it used (user + system), where measured
        max_rss_mib REAL,            -- its peak memory, where measured
        PRIMARY KEY (job_id, number)
    ) WITHOUT ROWID""",

    """CREATE TABLE events (
        id       INTEGER PRIMARY KEY,
        task_id  INTEGER NOT NULL REFERENCES tasks(id),
        job_id   INTEGER REFERENCES jobs(id),
        ts       REAL NOT NULL,
        kind     TEXT NOT NULL,
        message  TEXT NOT NULL
    )""",
    "CREATE INDEX events_task ON events (task_id, id)",
    "CREATE INDEX events_job ON events (job_id, id)",

    LEASES_DDL,
    *V5_UPGRADE,
    *V6_UPGRADE,
    *V7_UPGRADE,
    *V8_UPGRADE,
    *V9_UPGRADE,
    *V10_UPGRADE,
    *V11_UPGRADE,
    *V12_UPGRADE,
    *V13_UPGRADE,
    *V14_UPGRADE,

    # PRIMARY KEY job_id: a job's result is committed exactly once (G2).
    """CREATE TABLE results (
        job_id   INTEGER PRIMARY KEY REFERENCES jobs(id),
        attempt  INTEGER NOT NULL,
        inline   BLOB,
        path     TEXT,
        size     INTEGER NOT NULL,
        created  REAL NOT NULL,
        CHECK ((inline IS NULL) <> (path IS NULL))
    )""",
)


JOB_COLUMNS = ("id, task_id, batch_id, idx, key, name, kind, profile, priority, params, spec, status, "
               "reason, exit_code, attempts, host, native_id, log_out, log_err, created, updated, "
               "started, ended, seq, retry_at, cpu_s, max_rss_mib, memory_held, sandbox")
ATTEMPT_COLUMNS = "job_id, number, status, reason, host, native_id, exit_code, started, ended, log_out, log_err"
ATTEMPT_READ = ATTEMPT_COLUMNS + ", cause, cpu_s, max_rss_mib, memory_held, sandbox, request"
# what an attempt asks for, from its job's spec when it starts
REQUEST_SQL = "json_object('memory', json_extract(spec, '$.memory'), 'timeout', json_extract(spec, '$.timeout'))"
