-- fleetkey PostgreSQL store, schema version 2: the HTTP service's tokens and idempotency records.
-- Neither table holds a secret in clear: tokens only as SHA-256 hashes, responses (which can carry
-- key material) only wrapped under the key module's KEK.

CREATE TABLE api_tokens (
    id         TEXT COLLATE "C" PRIMARY KEY,
    hash       BYTEA NOT NULL UNIQUE CHECK (length(hash) = 32),
    principal  TEXT NOT NULL,
    role       TEXT NOT NULL,
    subject    TEXT,
    fleet      TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    expires_at BIGINT,
    revoked_at BIGINT
);

-- One row per (principal, key). `status` and `response` are NULL while the first request runs.
CREATE TABLE idempotency (
    principal   TEXT COLLATE "C" NOT NULL,
    key         TEXT COLLATE "C" NOT NULL,
    fingerprint BYTEA NOT NULL CHECK (length(fingerprint) = 32),
    created_at  BIGINT NOT NULL,
    status      INTEGER CHECK (status IS NULL OR status BETWEEN 100 AND 599),
    response    BYTEA,
    PRIMARY KEY (principal, key)
);
