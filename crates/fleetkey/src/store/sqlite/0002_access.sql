-- fleetkey SQLite store, schema version 2: the HTTP service's tokens and idempotency records.
-- Neither table holds a secret in clear: tokens only as SHA-256 hashes, responses (which can carry
-- key material) only wrapped under the key module's KEK.

CREATE TABLE api_tokens (
    id         TEXT PRIMARY KEY NOT NULL,
    hash       BLOB NOT NULL UNIQUE CHECK (length(hash) = 32),
    principal  TEXT NOT NULL,
    role       TEXT NOT NULL,
    subject    TEXT,
    fleet      TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    created_by TEXT NOT NULL,
    expires_at INTEGER,
    revoked_at INTEGER
) WITHOUT ROWID, STRICT;

-- One row per (principal, key). `status` and `response` are NULL while the first request runs.
CREATE TABLE idempotency (
    principal   TEXT NOT NULL,
    key         TEXT NOT NULL,
    fingerprint BLOB NOT NULL CHECK (length(fingerprint) = 32),
    created_at  INTEGER NOT NULL,
    status      INTEGER CHECK (status IS NULL OR status BETWEEN 100 AND 599),
    response    BLOB,
    PRIMARY KEY (principal, key)
) WITHOUT ROWID, STRICT;
