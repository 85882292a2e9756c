-- The schema of idem's PostgreSQL store, for teams that run their own migrations.
-- `PostgresStore::migrate()` runs the same statements (with your table name, if you chose one);
-- `PostgresStore::schema_sql()` prints them.

-- Fencing tokens: strictly increasing per key, even after a row is deleted and made again.
CREATE SEQUENCE IF NOT EXISTS idem_records_fence AS bigint;

CREATE TABLE IF NOT EXISTS idem_records (
    -- The store key (bytes: keys may hold any character, NUL included).
    key bytea PRIMARY KEY,
    -- 0: claimed (pending), 1: completed, 2: held with an unknown outcome (until `lease_until`).
    state smallint NOT NULL,
    -- The fencing token of the claim that holds or completed the key.
    fence bigint NOT NULL,
    -- The attempt holding a pending claim (16 bytes), so that a retried claim finds its own.
    attempt bytea,
    -- The request fingerprint (empty when the call has none).
    fingerprint bytea NOT NULL,
    -- The completed record (idem's versioned envelope).
    record bytea,
    -- Until when a pending claim holds the key, by the database's clock.
    lease_until timestamptz NOT NULL,
    -- When the row may be deleted (`PostgresStore::reap`).
    expires_at timestamptz NOT NULL
);

CREATE INDEX IF NOT EXISTS idem_records_expires_at ON idem_records (expires_at);
