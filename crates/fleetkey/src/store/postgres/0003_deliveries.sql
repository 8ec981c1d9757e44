-- fleetkey PostgreSQL store, schema version 3: the delivery journal of bulk commands.
-- A bulk batch that hands key material or key updates to a caller commits one row here together
-- with its state changes; the row is deleted once the caller has taken the batch's lines (a file:
-- written and synced; a pipe: read from it). A row left by a crash makes the next run of the same
-- kind send its lines again. The payload names devices and revisions and holds stored-scheme
-- roots only wrapped under the key module's KEK: nothing secret in clear.

CREATE TABLE deliveries (
    id         BIGSERIAL PRIMARY KEY,
    kind       TEXT COLLATE "C" NOT NULL,
    payload    BYTEA NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE INDEX deliveries_by_kind ON deliveries (kind, id);
