-- fleetkey SQLite store, schema version 1.
-- Applied by `schema::migrate` inside one `BEGIN IMMEDIATE` transaction.
-- Integers: Unix milliseconds, generation and revision numbers (u32), audit sequence numbers.
-- Key material: only `devices.wrapped_root`, already wrapped under the key module's KEK.

-- Small named values. Keys `store.*` belong to the store (schema version, audit head);
-- keys `app.*` hold the values of `Tx::meta` / `Tx::put_meta`.
CREATE TABLE meta (
    key   TEXT PRIMARY KEY NOT NULL,
    value ANY NOT NULL
) WITHOUT ROWID, STRICT;

-- The fleet: one row.
CREATE TABLE fleet (
    id                 INTEGER PRIMARY KEY CHECK (id = 1),
    fleet_id           TEXT NOT NULL,
    scheme             TEXT NOT NULL,
    current_generation INTEGER,
    created_at         INTEGER NOT NULL
) STRICT;

CREATE TABLE generations (
    generation     INTEGER PRIMARY KEY CHECK (generation BETWEEN 0 AND 4294967295),
    state          TEXT NOT NULL,
    changed_at     INTEGER NOT NULL,
    changed_actor  TEXT NOT NULL,
    changed_reason TEXT NOT NULL,
    created_at     INTEGER NOT NULL
) STRICT;

-- Ordered by serial bytes (BLOB comparison is memcmp, then length). `generation` is not a
-- foreign key: a stored-scheme fleet has no generation rows.
CREATE TABLE devices (
    serial         BLOB PRIMARY KEY NOT NULL CHECK (length(serial) BETWEEN 1 AND 40),
    she_uid        BLOB CHECK (she_uid IS NULL OR length(she_uid) = 15),
    labels         TEXT NOT NULL,                  -- JSON array of strings, in order
    generation     INTEGER NOT NULL CHECK (generation BETWEEN 0 AND 4294967295),
    revision       INTEGER NOT NULL CHECK (revision BETWEEN 0 AND 4294967295),
    state          TEXT NOT NULL,
    changed_at     INTEGER NOT NULL,
    changed_actor  TEXT NOT NULL,
    changed_reason TEXT NOT NULL,
    wrapped_root   BLOB,
    created_at     INTEGER NOT NULL
) WITHOUT ROWID, STRICT;

-- The audit chain. `seq` is the rowid: events are stored and read in chain order.
CREATE TABLE audit (
    seq        INTEGER PRIMARY KEY,
    at         INTEGER NOT NULL,
    actor      TEXT NOT NULL,
    action     TEXT NOT NULL,
    generation INTEGER,
    details    TEXT NOT NULL,                      -- JSON, exactly as hashed
    prev_hash  BLOB NOT NULL CHECK (length(prev_hash) = 32),
    hash       BLOB NOT NULL CHECK (length(hash) = 32),
    -- Every subject serial, in hashed order, each as (length byte || bytes).
    subjects   BLOB NOT NULL,
    n_subjects INTEGER NOT NULL
) STRICT;

-- Bulk events (more than 16 subjects) are found by scanning their subject lists: there are few
-- of them (one per batch of 10,000 devices), and indexing each subject would cost a row per device.
CREATE INDEX audit_bulk ON audit (seq) WHERE n_subjects > 16;

-- The devices an event with at most 16 subjects concerns, in the order they were hashed.
CREATE TABLE audit_subjects (
    seq    INTEGER NOT NULL REFERENCES audit (seq),
    pos    INTEGER NOT NULL,
    serial BLOB NOT NULL,
    PRIMARY KEY (seq, pos)
) WITHOUT ROWID, STRICT;

-- `audit show --device`.
CREATE INDEX audit_subjects_by_serial ON audit_subjects (serial, seq);
