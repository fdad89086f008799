"""Versioned schema: migration N brings `PRAGMA user_version` from N-1 to N.

Append new migrations; never edit one that has shipped. Each runs in one transaction
with the version bump, so a crash mid-migration leaves the previous version intact.
"""

from __future__ import annotations

import sqlite3

MIGRATIONS: list[str] = [
    # 1: the initial schema.
    """
    CREATE TABLE environments (
        id          INTEGER PRIMARY KEY,
        name        TEXT NOT NULL UNIQUE,
        created_at  TEXT NOT NULL
    );

    CREATE TABLE api_keys (
        id              INTEGER PRIMARY KEY,
        environment_id  INTEGER NOT NULL REFERENCES environments(id),
        key_hash        TEXT NOT NULL UNIQUE,   -- sha256 hex; the key itself is never stored
        prefix          TEXT NOT NULL,          -- first characters, to recognise a key in lists
        created_at      TEXT NOT NULL,
        last_used_at    TEXT,
        revoked_at      TEXT
    );

    CREATE TABLE data_streams (
        id              INTEGER PRIMARY KEY,
        environment_id  INTEGER NOT NULL REFERENCES environments(id),
        key             TEXT NOT NULL,
        name            TEXT,
        currency        TEXT NOT NULL,
        created_at      TEXT NOT NULL,
        UNIQUE (environment_id, key)
    );

    CREATE TABLE bulk_requests (
        id                        INTEGER PRIMARY KEY,
        environment_id            INTEGER NOT NULL REFERENCES environments(id),
        status                    TEXT NOT NULL,
        source                    TEXT NOT NULL,
        on_conflict               TEXT NOT NULL,
        total_items               INTEGER NOT NULL DEFAULT 0,
        processed_items           INTEGER NOT NULL DEFAULT 0,
        successful_items          INTEGER NOT NULL DEFAULT 0,
        failed_items              INTEGER NOT NULL DEFAULT 0,
        skipped_items             INTEGER NOT NULL DEFAULT 0,
        next_row                  INTEGER NOT NULL DEFAULT 0,  -- checkpoint: first unprocessed row
        parsing                   INTEGER NOT NULL DEFAULT 0,
        upload_format             TEXT,           -- csv | nacha, for uploads
        upload_path               TEXT,           -- staged file, until parsed
        filename                  TEXT,
        default_data_stream_key   TEXT,           -- upload form field
        data_stream_id            INTEGER REFERENCES data_streams(id),
        parent_bulk_request_id    INTEGER REFERENCES bulk_requests(id),
        created_at                TEXT NOT NULL,
        queued_at                 TEXT NOT NULL,  -- queue order; reset when a worker yields
        started_at                TEXT,
        completed_at              TEXT,
        last_progress_at          TEXT,
        cancellation_requested_at TEXT,
        error_message             TEXT,
        error_details             TEXT,           -- JSON object
        recoveries                INTEGER NOT NULL DEFAULT 0,
        attempt                   INTEGER NOT NULL DEFAULT 0,  -- fences writes of an older claim
        claimed_by                TEXT,           -- worker holding it now; NULL = runnable
        CHECK (processed_items = successful_items + failed_items + skipped_items),
        CHECK (processed_items <= total_items OR parsing = 1)
    );
    CREATE INDEX bulk_requests_runnable ON bulk_requests (queued_at, id)
        WHERE status IN ('pending', 'processing') AND claimed_by IS NULL;
    CREATE INDEX bulk_requests_claimed ON bulk_requests (claimed_by)
        WHERE claimed_by IS NOT NULL;
    CREATE INDEX bulk_requests_environment ON bulk_requests (environment_id, id);
    CREATE INDEX bulk_requests_parent ON bulk_requests (parent_bulk_request_id)
        WHERE parent_bulk_request_id IS NOT NULL;

    -- The input rows of a request, as JSON arrays of [line, fields, problem], staged
    -- durably before 202 (API) or while parsing (uploads). Deleted when completed.
    CREATE TABLE request_chunks (
        bulk_request_id  INTEGER NOT NULL REFERENCES bulk_requests(id),
        first_row        INTEGER NOT NULL,
        row_count        INTEGER NOT NULL,
        body             BLOB NOT NULL,
        PRIMARY KEY (bulk_request_id, first_row)
    ) WITHOUT ROWID;

    CREATE TABLE row_errors (
        bulk_request_id  INTEGER NOT NULL REFERENCES bulk_requests(id),
        row              INTEGER NOT NULL,
        line             INTEGER,
        external_id      TEXT,
        code             TEXT NOT NULL,
        message          TEXT NOT NULL,
        pointer          TEXT NOT NULL,
        source           TEXT NOT NULL,  -- the original row (JSON), for the CSV export and retry
        PRIMARY KEY (bulk_request_id, row)
    ) WITHOUT ROWID;

    CREATE TABLE records (
        id               INTEGER PRIMARY KEY,
        data_stream_id   INTEGER NOT NULL REFERENCES data_streams(id),
        bulk_request_id  INTEGER NOT NULL REFERENCES bulk_requests(id),
        row_index        INTEGER NOT NULL,
        date             TEXT NOT NULL,
        amount_minor     INTEGER NOT NULL,
        currency         TEXT NOT NULL,
        description      TEXT,
        external_id      TEXT,
        metadata         TEXT,
        created_at       TEXT NOT NULL
    );
    CREATE UNIQUE INDEX records_external_id ON records (data_stream_id, external_id)
        WHERE external_id IS NOT NULL;
    -- Unique: a row of a request can never be stored twice, whatever happens.
    CREATE UNIQUE INDEX records_request_row ON records (bulk_request_id, row_index);
    CREATE INDEX records_stream ON records (data_stream_id, id);

    CREATE TABLE idempotency_keys (
        environment_id   INTEGER NOT NULL REFERENCES environments(id),
        key              TEXT NOT NULL,
        fingerprint      TEXT NOT NULL,   -- sha256 of operation + canonical request
        bulk_request_id  INTEGER NOT NULL REFERENCES bulk_requests(id),
        created_at       TEXT NOT NULL,
        PRIMARY KEY (environment_id, key)
    ) WITHOUT ROWID;
    """,
    # 2: API keys become `bk_<public id>_<secret>` (SPEC §11): the public id tells keys apart,
    # and the stored `prefix` (the key's first 9 characters, most of a chosen key) goes.
    # Existing keys keep working: their hash is unchanged and they get no public id, as
    # nothing but the secret could be derived from them. secure_delete (this migration's
    # connection only) zeroes the freed bytes, so the prefixes do not linger in the file.
    """
    PRAGMA secure_delete = ON;
    ALTER TABLE api_keys ADD COLUMN public_id TEXT;
    ALTER TABLE api_keys DROP COLUMN prefix;
    CREATE UNIQUE INDEX api_keys_public_id ON api_keys (public_id) WHERE public_id IS NOT NULL;
    """,
    # 3: chains of retries (SPEC §7). A retry's rows are runs of the rows of its chain's
    # origin (the first member that staged rows), so a retry of any member can tell which
    # original rows the chain already stored or skipped. Retries made before this table
    # have no runs: their rows are re-derived from their parent (server/chains.py).
    """
    CREATE TABLE retry_row_runs (
        bulk_request_id  INTEGER NOT NULL REFERENCES bulk_requests(id),
        first_row        INTEGER NOT NULL,  -- the retry's own row index where the run starts
        row_count        INTEGER NOT NULL,
        origin_row       INTEGER NOT NULL,  -- the chain origin's index of first_row
        PRIMARY KEY (bulk_request_id, first_row)
    ) WITHOUT ROWID;
    """,
    # 4: the NACHA relaxations (FORMAT.md's `nacha_options`) a NACHA upload is parsed with,
    # as a JSON array of names ("[]" for none); NULL for every other request. Records are
    # not touched: the ones stored before keep their external ids (README, NACHA uploads).
    """
    ALTER TABLE bulk_requests ADD COLUMN nacha_options TEXT;
    """,
    # 5: the outbox (README, "After a commit"): every state change of a bulk request, written in
    # the transaction that made it, for webhooks and multi-process event streams to read.
    # AUTOINCREMENT: an id is never reused after pruning, so "events after id N" stays a
    # valid cursor for a reader. Pruned by age (constants.OUTBOX_RETENTION_SECONDS).
    """
    CREATE TABLE outbox (
        id               INTEGER PRIMARY KEY AUTOINCREMENT,
        bulk_request_id  INTEGER NOT NULL REFERENCES bulk_requests(id),
        environment_id   INTEGER NOT NULL REFERENCES environments(id),
        event_type       TEXT NOT NULL,   -- server/outcomes.py Transition
        payload          TEXT NOT NULL,   -- the request row after the change, as JSON
        created_at       TEXT NOT NULL
    );
    CREATE INDEX outbox_created_at ON outbox (created_at);
    """,
    # 6: the CSV options (SPEC §15) a CSV upload is parsed with, and its retries,
    # as the JSON object the payload shows as `csv_options`; NULL for every other request
    # and for CSV requests made before (they were parsed with the defaults).
    """
    ALTER TABLE bulk_requests ADD COLUMN csv_options TEXT;
    """,
    # 7: webhooks (SPEC §13, README "Webhooks"). An endpoint's secret is stored as issued:
    # it must sign, so it cannot be hashed. A delivery is one event for one endpoint, its
    # body frozen when it was made, so every attempt sends the same bytes. The cursor is
    # the last outbox id the dispatcher turned into deliveries (in the same transaction as
    # the deliveries), and the sweeper never prunes an outbox event past it. It starts
    # at the newest event: no endpoint existed before this migration.
    """
    CREATE TABLE webhook_endpoints (
        id                    INTEGER PRIMARY KEY,
        environment_id        INTEGER NOT NULL REFERENCES environments(id),
        url                   TEXT NOT NULL,
        events                TEXT NOT NULL,  -- JSON array of event types
        description           TEXT,
        enabled               INTEGER NOT NULL DEFAULT 1,
        secret                TEXT NOT NULL,  -- whsec_…, returned only when created
        created_at            TEXT NOT NULL,
        consecutive_failures  INTEGER NOT NULL DEFAULT 0,  -- the circuit
        circuit_open_until    TEXT
    );
    CREATE INDEX webhook_endpoints_environment ON webhook_endpoints (environment_id, id);

    CREATE TABLE webhook_deliveries (
        id               INTEGER PRIMARY KEY,
        endpoint_id      INTEGER NOT NULL REFERENCES webhook_endpoints(id),
        outbox_id        INTEGER NOT NULL,  -- the event (not a foreign key: pruned)
        event_id         TEXT NOT NULL,     -- evt_…, the webhook-id header
        event_type       TEXT NOT NULL,     -- bulk_request.completed | failed | cancelled
        bulk_request_id  INTEGER NOT NULL,
        body             TEXT NOT NULL,     -- exactly the bytes sent and signed
        status           TEXT NOT NULL,     -- pending | succeeded | failed
        next_attempt_at  TEXT,              -- when pending
        attempt_count    INTEGER NOT NULL DEFAULT 0,
        created_at       TEXT NOT NULL,
        UNIQUE (endpoint_id, outbox_id)
    );
    CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at)
        WHERE status = 'pending';
    CREATE INDEX webhook_deliveries_endpoint ON webhook_deliveries (endpoint_id, id);

    CREATE TABLE webhook_attempts (
        delivery_id  INTEGER NOT NULL REFERENCES webhook_deliveries(id),
        number       INTEGER NOT NULL,   -- 1, 2, …
        at           TEXT NOT NULL,
        http_status  INTEGER,            -- NULL when no answer came
        error        TEXT,               -- NULL on success
        duration_ms  INTEGER NOT NULL,
        PRIMARY KEY (delivery_id, number)
    ) WITHOUT ROWID;

    CREATE TABLE webhook_cursor (
        id         INTEGER PRIMARY KEY CHECK (id = 1),
        outbox_id  INTEGER NOT NULL
    );
    INSERT INTO webhook_cursor (id, outbox_id) SELECT 1, COALESCE(MAX(id), 0) FROM outbox;
    """,
    # 8: scheduled requests (SPEC §12). `run_at`: RFC 3339 UTC text like every timestamp
    # (sortable as text), NULL when not scheduled. The partial index holds only pending
    # scheduled requests, so the pool's "when is the next one due" is one short probe
    # however many requests have ever been scheduled.
    """
    ALTER TABLE bulk_requests ADD COLUMN run_at TEXT;
    CREATE INDEX bulk_requests_scheduled ON bulk_requests (run_at)
        WHERE status = 'pending' AND run_at IS NOT NULL;
    """,
    # 9: atomic requests (SPEC §14; README, "Atomic requests"). `mode` is 'partial' (every
    # request so far) or 'atomic'. `unpublished` is 1 while an atomic request's records must
    # stay hidden: from its creation until the batch that completes it, or, if it fails or
    # is cancelled, until the sweeper has purged its records. Every records read excludes
    # the records of unpublished requests; the partial index keeps that set a few entries
    # long, however many requests the table holds.
    """
    ALTER TABLE bulk_requests ADD COLUMN mode TEXT NOT NULL DEFAULT 'partial';
    ALTER TABLE bulk_requests ADD COLUMN unpublished INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX bulk_requests_unpublished ON bulk_requests (id) WHERE unpublished = 1;
    """,
    # 10: the send lease of a webhook delivery (README "Webhooks"): while a dispatcher is
    # sending it, no other round (PostgreSQL: no other process) picks it. NULL when no
    # send is in flight; one process owns a SQLite file, so it clears them at open.
    """
    ALTER TABLE webhook_deliveries ADD COLUMN leased_until TEXT;
    """,
]


def migrate(conn: sqlite3.Connection, up_to: int | None = None) -> int:
    """Apply pending migrations on a plain sqlite3 connection; return the schema version.

    `up_to` stops at an older version: tests build a database as an older server left it.
    """
    target = len(MIGRATIONS) if up_to is None else up_to
    version: int = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > len(MIGRATIONS):
        raise RuntimeError(
            f"database schema version {version} is newer than this server "
            f"({len(MIGRATIONS)}); upgrade the server"
        )
    for number, script in enumerate(MIGRATIONS[version:target], start=version + 1):
        # executescript() commits first and runs outside our transaction control, so
        # wrap the script and the version bump in one explicit transaction.
        conn.executescript(f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version = {number};\nCOMMIT;")
    return max(version, target)
