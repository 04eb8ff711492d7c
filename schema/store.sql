-- svdllmd's SQLite schema, embedded into the daemon at build time.
--
-- Migrations: each line reading -- version N starts the statements that take a
-- database from user_version N-1 to N. On open, svdllmd runs, in one
-- transaction per step, every section whose N is above the database's
-- PRAGMA user_version and then sets user_version = N. Never edit a released
-- section; append a new one. A database newer than the binary is refused.
-- (This file is embedded as C strings at build time; quotes and backslashes
-- are escaped.)
--
-- Delivery semantics of the job queue: a job is a row in jobs; queued rows
-- run one at a time in id order (FIFO). A row leaves 'queued' only through an
-- UPDATE ... WHERE state = 'queued', so a cancel and the runner's claim can
-- never both win. 'running' rows found at start-up were interrupted (crash,
-- kill, shutdown) and are put back to 'queued'; their layers rows make the
-- rerun resume. done/failed/cancelled are final.

-- version 1
CREATE TABLE jobs (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    state           TEXT NOT NULL
                    CHECK (state IN ('queued', 'running', 'done', 'failed', 'cancelled')),
    -- parameters, as in schema/job.schema.json (paths already resolved)
    model           TEXT NOT NULL,
    out             TEXT NOT NULL,
    method          TEXT NOT NULL,
    ratio           REAL NOT NULL,
    calib           TEXT NOT NULL,           -- '' when the method needs none
    nsamples        INTEGER NOT NULL,
    seqlen          INTEGER NOT NULL,
    seed            INTEGER NOT NULL,
    calib_first     INTEGER NOT NULL,        -- 0 random windows, 1 first windows
    dense           INTEGER NOT NULL,
    overwrite       INTEGER NOT NULL,
    eval_text       TEXT NOT NULL,           -- '' = no perplexity
    eval_seqlen     INTEGER NOT NULL,
    eval_max_windows INTEGER NOT NULL,
    -- bookkeeping
    job_key         TEXT NOT NULL,           -- params_job_key() at submit time
    owner_uid       INTEGER NOT NULL,        -- SO_PEERCRED of the submitter
    work_dir        TEXT NOT NULL,           -- STATE/jobs/<id>
    created_at      INTEGER NOT NULL,        -- unix seconds
    started_at      INTEGER,                 -- first claim by the runner
    finished_at     INTEGER,
    error           TEXT,                    -- failed: why; cancelled: by whom
    n_layers        INTEGER NOT NULL DEFAULT 0,
    -- results, set when done
    ppl_before      REAL,
    ppl_after       REAL,
    params_before   INTEGER,
    params_after    INTEGER,
    bytes_before    INTEGER,
    bytes_after     INTEGER,
    seconds         REAL,
    layers_resumed  INTEGER,
    peak_rss        INTEGER                  -- bytes, daemon-wide maximum at the end
);

CREATE INDEX jobs_by_state ON jobs (state, id);

-- One row per checkpointed layer: committed only after the file is durable
-- (see the protocol in daemon/store.c).
CREATE TABLE layers (
    job_id          INTEGER NOT NULL REFERENCES jobs (id),
    layer           INTEGER NOT NULL,
    file            TEXT NOT NULL,           -- relative to the job's work_dir
    size            INTEGER NOT NULL,
    sha256          TEXT NOT NULL,
    done_at         INTEGER NOT NULL,
    PRIMARY KEY (job_id, layer)
);

-- version 2
-- asvd's exponent (struct compress_params.alpha; 0 = the default 0.5). It is
-- part of the job key of asvd jobs, so a resumed job must get it back.
ALTER TABLE jobs ADD COLUMN alpha REAL NOT NULL DEFAULT 0;

-- version 3
-- The rank rule and its knobs (struct compress_params.ranks, layers,
-- attn_split, centered; see daemon/engine/compress.h). Rows from version 2
-- get what those jobs ran with: rule 'default' (uniform for the four methods
-- version 2 knew), layers 0 (all), attn_split 0 (lorap's default 3) and
-- centered 0 (rom's uncentred covariance). A resumed job must get them back,
-- like alpha.
ALTER TABLE jobs ADD COLUMN ranks TEXT NOT NULL DEFAULT 'default';
ALTER TABLE jobs ADD COLUMN layers INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN attn_split REAL NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN centered INTEGER NOT NULL DEFAULT 0;

-- version 4
-- CPU inference speed of the evaluation before and after (tokens/s; struct
-- compress_result.tok_s_before/after). NULL for jobs finished before.
ALTER TABLE jobs ADD COLUMN tok_s_before REAL;
ALTER TABLE jobs ADD COLUMN tok_s_after REAL;

-- version 5
-- The submitter's gid (SO_PEERCRED), for a job whose uid has no passwd
-- entry when it runs: the runner then acts with this gid alone (see
-- daemon/cred.h). -1 for jobs submitted before.
ALTER TABLE jobs ADD COLUMN owner_gid INTEGER NOT NULL DEFAULT -1;

-- version 6
-- Whether the job's checkpoints stay in its work directory once it is done
-- (svdllmctl submit --keep-checkpoints); by default a done job's work
-- directory is emptied. Jobs from before were emptied: 0.
ALTER TABLE jobs ADD COLUMN keep_checkpoints INTEGER NOT NULL DEFAULT 0;
