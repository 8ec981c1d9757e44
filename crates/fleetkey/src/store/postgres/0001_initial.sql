-- fleetkey PostgreSQL store, schema version 1.
-- Applied by `PostgresStore` inside one transaction holding an advisory lock, with `search_path`
-- set to the store's schema (so the tables below land in it).
-- Integers: BIGINT for Unix milliseconds, generation and revision numbers (u32), audit sequence
-- numbers. Key material: only `devices.wrapped_root`, already wrapped under the key module's KEK.
-- Text that is compared or ordered uses the "C" collation (byte order, whatever the database's).

-- Small named values. Keys `store.*` belong to the store (schema version); keys `app.*` hold the
-- values of `Tx::meta` / `Tx::put_meta`.
CREATE TABLE meta (
    key   TEXT COLLATE "C" PRIMARY KEY,
    value TEXT NOT NULL
);

-- The fleet: one row.
CREATE TABLE fleet (
    id                 INTEGER PRIMARY KEY CHECK (id = 1),
    fleet_id           TEXT NOT NULL,
    scheme             TEXT NOT NULL,
    current_generation BIGINT CHECK (current_generation BETWEEN 0 AND 4294967295),
    created_at         BIGINT NOT NULL
);

CREATE TABLE generations (
    generation     BIGINT PRIMARY KEY CHECK (generation BETWEEN 0 AND 4294967295),
    state          TEXT NOT NULL,
    changed_at     BIGINT NOT NULL,
    changed_actor  TEXT NOT NULL,
    changed_reason TEXT NOT NULL,
    created_at     BIGINT NOT NULL
);

-- Ordered by serial bytes (BYTEA compares bytewise, then by length). `generation` is not a
-- foreign key: a stored-scheme fleet has no generation rows.
CREATE TABLE devices (
    serial         BYTEA PRIMARY KEY CHECK (length(serial) BETWEEN 1 AND 40),
    she_uid        BYTEA CHECK (she_uid IS NULL OR length(she_uid) = 15),
    labels         TEXT[] COLLATE "C" NOT NULL,    -- in order; filters use `@>`
    generation     BIGINT NOT NULL CHECK (generation BETWEEN 0 AND 4294967295),
    revision       BIGINT NOT NULL CHECK (revision BETWEEN 0 AND 4294967295),
    state          TEXT NOT NULL,
    changed_at     BIGINT NOT NULL,
    changed_actor  TEXT NOT NULL,
    changed_reason TEXT NOT NULL,
    wrapped_root   BYTEA,
    created_at     BIGINT NOT NULL
);

-- The audit chain, in chain order.
CREATE TABLE audit (
    seq        BIGINT PRIMARY KEY CHECK (seq >= 1),
    at         BIGINT NOT NULL,
    actor      TEXT NOT NULL,
    action     TEXT COLLATE "C" NOT NULL,
    generation BIGINT CHECK (generation BETWEEN 0 AND 4294967295),
    details    TEXT NOT NULL,                      -- JSON, exactly as hashed (not JSONB)
    prev_hash  BYTEA NOT NULL CHECK (length(prev_hash) = 32),
    hash       BYTEA NOT NULL CHECK (length(hash) = 32),
    -- Every subject serial, in hashed order, each as (length byte || bytes).
    subjects   BYTEA NOT NULL,
    n_subjects INTEGER NOT NULL
);

-- Bulk events (more than 16 subjects) are found by scanning their subject lists.
CREATE INDEX audit_bulk ON audit (seq) WHERE n_subjects > 16;

-- The devices an event with at most 16 subjects concerns, in the order they were hashed.
CREATE TABLE audit_subjects (
    seq    BIGINT NOT NULL REFERENCES audit (seq),
    pos    INTEGER NOT NULL,
    serial BYTEA NOT NULL,
    PRIMARY KEY (seq, pos)
);

-- `audit show --device`.
CREATE INDEX audit_subjects_by_serial ON audit_subjects (serial, seq);

-- The head of the chain: one row, updated by every append. `seq = 0` and no hash: empty chain.
-- Every append updates this row first, so two concurrent appends conflict on it (one of them
-- is retried) instead of both sealing against the same head.
CREATE TABLE audit_head (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    seq  BIGINT NOT NULL CHECK (seq >= 0),
    hash BYTEA CHECK (hash IS NULL OR length(hash) = 32),
    CHECK ((seq = 0) = (hash IS NULL))
);
INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, NULL);
