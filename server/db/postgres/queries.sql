-- The PostgreSQL dialect of every named statement of server/db/sqlite/queries.sql: the same names,
-- the same meaning, `$n` parameters. `-- params:` names each `$n` in order, with the
-- SQLite query's parameter names, so the adapter binds by name (queries.bind) and a test
-- checks both sides take the same ones. Parameters that are JSON arrays on SQLite
-- (`keys`, `ids`, `pairs`, `live_workers`) take the same JSON text here (cast to jsonb),
-- so both backends are given the same values. Timestamps are RFC 3339 text COLLATE "C"
-- (migrations.py says why): compared and ordered as on SQLite.
-- A few statements exist only here (tests/test_pg_schema.py lists them, with why).

-- name: ensure_environment
-- params: name, now
INSERT INTO environments (name, created_at) VALUES ($1, $2)
ON CONFLICT (name) DO NOTHING;

-- name: get_environment_by_name
-- params: name
SELECT id, name FROM environments WHERE name = $1;

-- name: insert_api_key
-- params: environment_id, key_hash, public_id, now
INSERT INTO api_keys (environment_id, key_hash, public_id, created_at)
VALUES ($1, $2, $3, $4)
RETURNING id;

-- name: find_api_key
-- params: key_hash
SELECT k.id, k.environment_id, e.name AS environment, k.key_hash, k.last_used_at
FROM api_keys k JOIN environments e ON e.id = k.environment_id
WHERE k.key_hash = $1 AND k.revoked_at IS NULL;

-- name: unrevoke_api_key
-- params: key_hash
UPDATE api_keys SET revoked_at = NULL WHERE key_hash = $1;

-- name: touch_api_key
-- params: now, id
UPDATE api_keys SET last_used_at = $1 WHERE id = $2;

-- name: list_api_keys
-- params:
SELECT k.id, k.public_id, e.name AS environment, k.created_at, k.last_used_at, k.revoked_at
FROM api_keys k JOIN environments e ON e.id = k.environment_id
ORDER BY k.id;

-- name: revoke_api_key
-- params: now, id
UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL;

-- name: count_api_keys
-- params:
SELECT count(*) FROM api_keys;

-- name: insert_data_stream
-- params: environment_id, key, name, currency, now
INSERT INTO data_streams (environment_id, key, name, currency, created_at)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (environment_id, key) DO NOTHING
RETURNING id, key, name, currency, created_at;

-- name: get_data_stream
-- params: environment_id, key
SELECT id, key, name, currency, created_at FROM data_streams
WHERE environment_id = $1 AND key = $2;

-- name: list_data_streams
-- params: environment_id, after_id, limit
SELECT id, key, name, currency, created_at FROM data_streams
WHERE environment_id = $1 AND id > $2
ORDER BY id LIMIT $3;

-- name: find_data_streams_by_keys
-- params: environment_id, keys
SELECT key, id, currency FROM data_streams
WHERE environment_id = $1 AND key IN (SELECT jsonb_array_elements_text($2::jsonb));

-- name: insert_record
-- Batches run as one multi-row statement (queries.multi_row) or COPY: see the adapter.
-- params: data_stream_id, date, amount_minor, currency, description, external_id, metadata, bulk_request_id, row_index, created_at
INSERT INTO records (data_stream_id, date, amount_minor, currency, description, external_id,
                     metadata, bulk_request_id, row_index, created_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10);

-- name: insert_record_unless_duplicate
-- on_conflict=skip: the unique index decides; the caller counts skips from the row count.
-- Only the external_id conflict is absorbed: any other constraint still raises.
-- params: data_stream_id, date, amount_minor, currency, description, external_id, metadata, bulk_request_id, row_index, created_at
INSERT INTO records (data_stream_id, date, amount_minor, currency, description, external_id,
                     metadata, bulk_request_id, row_index, created_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
ON CONFLICT (data_stream_id, external_id) WHERE external_id IS NOT NULL DO NOTHING;

-- name: find_existing_external_ids
-- `pairs`: a JSON array of [data_stream_id, external_id]; each pair is one probe of
-- records_external_id.
-- params: pairs
SELECT r.data_stream_id, r.external_id
FROM jsonb_array_elements($1::jsonb) AS pair(value)
JOIN records AS r
  ON r.data_stream_id = (pair.value ->> 0)::bigint AND r.external_id = pair.value ->> 1
 AND r.external_id IS NOT NULL;

-- name: list_records
-- params: environment_id, after_id, limit
SELECT r.id, s.key AS data_stream_key, r.date, r.amount_minor, r.currency, r.description,
       r.external_id, r.metadata, r.bulk_request_id, r.created_at
FROM records r JOIN data_streams s ON s.id = r.data_stream_id
WHERE s.environment_id = $1 AND r.id > $2
  AND r.bulk_request_id NOT IN (SELECT id FROM bulk_requests WHERE unpublished = 1)
ORDER BY r.id LIMIT $3;

-- name: list_records_by_stream
-- params: environment_id, data_stream_key, after_id, bulk_request_id, limit
SELECT r.id, s.key AS data_stream_key, r.date, r.amount_minor, r.currency, r.description,
       r.external_id, r.metadata, r.bulk_request_id, r.created_at
FROM records r JOIN data_streams s ON s.id = r.data_stream_id
WHERE s.environment_id = $1 AND s.key = $2 AND r.id > $3
  AND ($4::bigint IS NULL OR r.bulk_request_id = $4)
  AND r.bulk_request_id NOT IN (SELECT id FROM bulk_requests WHERE unpublished = 1)
ORDER BY r.id LIMIT $5;

-- name: list_records_by_request
-- params: bulk_request_id, environment_id, after_id, limit
SELECT r.id, s.key AS data_stream_key, r.date, r.amount_minor, r.currency, r.description,
       r.external_id, r.metadata, r.bulk_request_id, r.created_at
FROM records r JOIN data_streams s ON s.id = r.data_stream_id
WHERE r.bulk_request_id = $1 AND s.environment_id = $2 AND r.id > $3
  AND r.bulk_request_id NOT IN (SELECT id FROM bulk_requests WHERE unpublished = 1)
ORDER BY r.id LIMIT $4;

-- name: insert_bulk_request
-- params: environment_id, source, on_conflict, total_items, parsing, upload_format, upload_path, filename, default_data_stream_key, nacha_options, csv_options, data_stream_id, parent_bulk_request_id, now, run_at, mode
-- A scheduled request joins the queue at its run_at (as on SQLite).
INSERT INTO bulk_requests (environment_id, status, source, on_conflict, total_items, parsing,
                           upload_format, upload_path, filename, default_data_stream_key,
                           nacha_options, csv_options, data_stream_id, parent_bulk_request_id,
                           created_at, run_at, queued_at, mode, unpublished)
VALUES ($1, 'pending', $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15,
        CASE WHEN $15::text > $14::text THEN $15 ELSE $14 END,
        $16, CASE WHEN $16::text = 'atomic' THEN 1 ELSE 0 END)
RETURNING *;

-- name: insert_chunk
-- params: bulk_request_id, first_row, row_count, body
INSERT INTO request_chunks (bulk_request_id, first_row, row_count, body)
VALUES ($1, $2, $3, $4);

-- name: get_chunk_at
-- params: bulk_request_id, row
SELECT first_row, row_count, body FROM request_chunks
WHERE bulk_request_id = $1 AND first_row <= $2
ORDER BY first_row DESC LIMIT 1;

-- name: next_chunk_from
-- The chunk holding `row`, or the first one after it.
-- params: bulk_request_id, row
SELECT first_row, row_count, body FROM request_chunks
WHERE bulk_request_id = $1 AND first_row + row_count > $2
ORDER BY first_row LIMIT 1;

-- name: set_total_items
-- params: total_items, id
UPDATE bulk_requests SET total_items = $1 WHERE id = $2;

-- name: delete_chunks
-- params: bulk_request_id
DELETE FROM request_chunks WHERE bulk_request_id = $1;

-- name: get_bulk_request
-- params: id, environment_id
SELECT b.*, s.key AS data_stream_key FROM bulk_requests b
LEFT JOIN data_streams s ON s.id = b.data_stream_id
WHERE b.id = $1 AND b.environment_id = $2;

-- name: get_bulk_request_any_environment
-- params: id
SELECT b.*, s.key AS data_stream_key FROM bulk_requests b
LEFT JOIN data_streams s ON s.id = b.data_stream_id
WHERE b.id = $1;

-- name: list_bulk_requests
-- params: environment_id, before_id, status, source, data_stream_key, limit, scheduled, now
SELECT b.*, s.key AS data_stream_key FROM bulk_requests b
LEFT JOIN data_streams s ON s.id = b.data_stream_id
WHERE b.environment_id = $1 AND b.id < $2
  AND ($3::text IS NULL OR b.status = $3)
  AND ($4::text IS NULL OR b.source = $4)
  AND ($5::text IS NULL OR s.key = $5)
  AND ($7::boolean IS NULL
       OR $7 = (b.status = 'pending' AND b.run_at IS NOT NULL AND b.run_at > $8::text))
ORDER BY b.id DESC LIMIT $6;

-- name: list_chain
-- Every request of the chain `id` belongs to (its root and all retries below it), oldest
-- first; none when `id` is not a request of `environment_id`.
-- params: id, environment_id
WITH RECURSIVE
  ancestors(id, parent_id) AS (
    SELECT id, parent_bulk_request_id FROM bulk_requests
    WHERE id = $1 AND environment_id = $2
    UNION ALL
    SELECT b.id, b.parent_bulk_request_id
    FROM bulk_requests b JOIN ancestors a ON b.id = a.parent_id
  ),
  members(id) AS (
    SELECT id FROM ancestors WHERE parent_id IS NULL
    UNION ALL
    SELECT b.id FROM bulk_requests b JOIN members m ON b.parent_bulk_request_id = m.id
  )
SELECT b.*, s.key AS data_stream_key
FROM members m JOIN bulk_requests b ON b.id = m.id
LEFT JOIN data_streams s ON s.id = b.data_stream_id
ORDER BY b.id;

-- name: list_chains_of
-- The chains of retries of the requests `ids` (a JSON array) of `environment_id`: every
-- member of each, tagged with its chain's root, oldest first.
-- params: ids, environment_id
WITH RECURSIVE
  ancestors(id, parent_id) AS (
    SELECT id, parent_bulk_request_id FROM bulk_requests
    WHERE id IN (SELECT value::bigint FROM jsonb_array_elements_text($1::jsonb) AS ids(value))
      AND environment_id = $2
    UNION
    SELECT b.id, b.parent_bulk_request_id
    FROM bulk_requests b JOIN ancestors a ON b.id = a.parent_id
  ),
  members(root, id) AS (
    SELECT id, id FROM ancestors WHERE parent_id IS NULL
    UNION ALL
    SELECT m.root, b.id FROM bulk_requests b JOIN members m ON b.parent_bulk_request_id = m.id
  )
SELECT m.root AS chain_root, b.id, b.status, b.parsing, b.upload_path, b.error_message,
       b.failed_items, b.next_row, b.total_items, b.parent_bulk_request_id, b.mode
FROM members m JOIN bulk_requests b ON b.id = m.id
ORDER BY m.root, b.id;

-- name: list_row_error_rows
-- params: bulk_request_id
SELECT "row" FROM row_errors WHERE bulk_request_id = $1 ORDER BY "row";

-- name: list_retry_row_runs
-- params: bulk_request_id
SELECT first_row, row_count, origin_row FROM retry_row_runs
WHERE bulk_request_id = $1 ORDER BY first_row;

-- name: insert_retry_row_run
-- Run as one multi-row statement per retry (queries.multi_row).
-- params: bulk_request_id, first_row, row_count, origin_row
INSERT INTO retry_row_runs (bulk_request_id, first_row, row_count, origin_row)
VALUES ($1, $2, $3, $4);

-- name: claim_next_request
-- As on SQLite (requests never started first, then round-robin by queued_at), and
-- SKIP LOCKED: processes claiming at once each take a different request instead of
-- queueing on the first one's lock. The locked row's WHERE is re-checked after the lock.
-- Unlike SQLite, the claim is a heartbeat: with several processes, a request that waited
-- in the queue longer than the rescue threshold would otherwise look dead to the other
-- processes' rescue the moment it is claimed (rescue_stale_requests).
-- params: now, worker
UPDATE bulk_requests AS b
SET status = 'processing',
    started_at = coalesce(b.started_at, $1),
    last_progress_at = $1,
    attempt = b.attempt + 1,
    claimed_by = $2
FROM (SELECT id FROM bulk_requests
      WHERE status IN ('pending', 'processing') AND claimed_by IS NULL
        AND (run_at IS NULL OR run_at <= $1)
        -- A retry waits until its parent's hidden records are purged (as on SQLite).
        AND (parent_bulk_request_id IS NULL OR parent_bulk_request_id NOT IN
             (SELECT id FROM bulk_requests WHERE unpublished = 1))
      ORDER BY started_at IS NOT NULL, queued_at, id
      LIMIT 1
      FOR UPDATE SKIP LOCKED) AS next
WHERE b.id = next.id
RETURNING b.*;

-- name: has_runnable_request
-- params: now
SELECT EXISTS (SELECT 1 FROM bulk_requests
               WHERE status IN ('pending', 'processing') AND claimed_by IS NULL
                 AND (run_at IS NULL OR run_at <= $1)
                 AND (parent_bulk_request_id IS NULL OR parent_bulk_request_id NOT IN
                      (SELECT id FROM bulk_requests WHERE unpublished = 1)));

-- name: count_runnable_requests
-- params: now
SELECT count(*) FROM bulk_requests WHERE status IN ('pending', 'processing')
  AND (run_at IS NULL OR run_at <= $1);

-- name: next_run_at
-- params: now
SELECT min(run_at) FROM bulk_requests
WHERE status = 'pending' AND run_at IS NOT NULL AND run_at > $1;

-- name: release_request
-- params: now, id, attempt, worker
UPDATE bulk_requests SET claimed_by = NULL, queued_at = $1
WHERE id = $2 AND attempt = $3 AND claimed_by = $4 AND status = 'processing'
RETURNING *;

-- name: record_batch
-- The heartbeat. Fenced by attempt and claimed_by: a zombie worker's batch matches
-- no row, and its transaction is rolled back by the caller.
-- params: processed, successful, failed, skipped, next_row, now, id, attempt, worker
UPDATE bulk_requests
SET processed_items = processed_items + $1,
    successful_items = successful_items + $2,
    failed_items = failed_items + $3,
    skipped_items = skipped_items + $4,
    next_row = $5,
    last_progress_at = $6,
    status = CASE WHEN next_row + $1 >= total_items THEN 'completed' ELSE status END,
    completed_at = CASE WHEN next_row + $1 >= total_items THEN $6 ELSE NULL END,
    claimed_by = CASE WHEN next_row + $1 >= total_items THEN NULL ELSE claimed_by END,
    -- An atomic request's records are published by the batch that completes it without a
    -- failed row; with a failed row the caller fails it in this transaction (as on SQLite).
    unpublished = CASE WHEN next_row + $1 >= total_items AND failed_items + $3 = 0
                       THEN 0 ELSE unpublished END
WHERE id = $7 AND attempt = $8 AND claimed_by = $9 AND status = 'processing'
  AND parsing = 0 AND next_row + $1 = $5
RETURNING *;

-- name: record_parse_progress
-- params: total_items, now, id, attempt, worker
UPDATE bulk_requests SET total_items = $1, last_progress_at = $2
WHERE id = $3 AND attempt = $4 AND claimed_by = $5 AND status = 'processing'
RETURNING *;

-- name: finish_parsing
-- params: total_items, data_stream_id, now, error_details, id, attempt, worker
UPDATE bulk_requests
SET parsing = 0, total_items = $1, data_stream_id = $2,
    upload_path = NULL, last_progress_at = $3,
    error_details = CASE WHEN $4::jsonb IS NULL THEN error_details
                         ELSE json_merge_patch(coalesce(error_details, '{}'), $4::jsonb) END,
    status = CASE WHEN $1::bigint = 0 THEN 'completed' ELSE status END,
    completed_at = CASE WHEN $1::bigint = 0 THEN $3 ELSE NULL END,
    -- An atomic upload without rows completes here: nothing to hide any more.
    unpublished = CASE WHEN $1::bigint = 0 THEN 0 ELSE unpublished END
WHERE id = $5 AND attempt = $6 AND claimed_by = $7 AND status = 'processing'
RETURNING *;

-- name: finish_request
-- Terminal transition by the worker holding the request (cancelled or failed).
-- params: status, now, keep_upload, error_message, error_details, id, attempt, worker
UPDATE bulk_requests
SET status = $1, completed_at = $2, claimed_by = NULL,
    upload_path = CASE WHEN $3::boolean THEN upload_path END,
    error_message = coalesce($4::text, error_message),
    error_details = CASE WHEN $5::jsonb IS NULL THEN error_details
                         ELSE json_merge_patch(coalesce(error_details, '{}'), $5::jsonb) END
WHERE id = $6 AND attempt = $7 AND claimed_by = $8 AND status = 'processing'
RETURNING *;

-- name: clear_upload_path
-- params: id
UPDATE bulk_requests SET upload_path = NULL WHERE id = $1;

-- name: cancel_pending_request
-- params: now, id, environment_id
UPDATE bulk_requests
SET status = 'cancelled', cancellation_requested_at = $1, completed_at = $1
WHERE id = $2 AND environment_id = $3 AND status = 'pending'
RETURNING id;

-- name: cancel_unclaimed_processing_request
-- A processing request that no worker holds right now (between time slices) has no
-- batch in flight, so it can be cancelled at once.
-- params: now, id, environment_id
UPDATE bulk_requests
SET status = 'cancelled', cancellation_requested_at = coalesce(cancellation_requested_at, $1),
    completed_at = $1
WHERE id = $2 AND environment_id = $3 AND status = 'processing'
  AND claimed_by IS NULL
RETURNING id;

-- name: request_cancellation
-- params: now, id, environment_id
UPDATE bulk_requests SET cancellation_requested_at = coalesce(cancellation_requested_at, $1)
WHERE id = $2 AND environment_id = $3 AND status = 'processing'
RETURNING id;

-- name: requeue_orphans
-- Claims held by workers of THIS process that no longer run (a crashed task): the
-- caller passes its own dead workers' complement, `live_workers`, and on PostgreSQL
-- restricts itself to its own worker names (`worker_prefix`, e.g. "<process id>:%"), as
-- other processes' claims are not its to judge; rescue_stale_requests handles those.
-- params: now, reason, live_workers, worker_prefix
UPDATE bulk_requests
SET claimed_by = NULL, queued_at = $1, recoveries = recoveries + 1,
    error_details = jsonb_set(coalesce(error_details, '{}'), '{recoveries}',
        coalesce(error_details -> 'recoveries', '[]') || jsonb_build_array(jsonb_build_object(
            'at', $1::text, 'worker', claimed_by, 'reason', $2::text,
            'resumed_from_row', next_row)))
WHERE claimed_by IS NOT NULL AND claimed_by LIKE $4
  AND claimed_by NOT IN (SELECT jsonb_array_elements_text($3::jsonb))
RETURNING id;

-- name: rescue_stale_requests
-- Requests held by any process whose heartbeat (last_progress_at) is older than
-- `stale_before` go back to the queue: their worker's process died (kill -9, power) or
-- hangs. Its late writes are fenced out (claimed_by no longer matches; the next claim
-- bumps attempt). Two processes rescuing at once: the second one's UPDATE waits for the
-- first row lock, re-checks `claimed_by IS NOT NULL`, and skips the row.
-- params: now, reason, stale_before
UPDATE bulk_requests
SET claimed_by = NULL, queued_at = $1, recoveries = recoveries + 1,
    error_details = jsonb_set(coalesce(error_details, '{}'), '{recoveries}',
        coalesce(error_details -> 'recoveries', '[]') || jsonb_build_array(jsonb_build_object(
            'at', $1::text, 'worker', claimed_by, 'reason', $2::text,
            'resumed_from_row', next_row)))
WHERE claimed_by IS NOT NULL AND status = 'processing' AND last_progress_at < $3
RETURNING id;

-- name: insert_row_error
-- Run as one multi-row statement per batch (queries.multi_row).
-- params: bulk_request_id, row, line, external_id, code, message, pointer, source
INSERT INTO row_errors (bulk_request_id, "row", line, external_id, code, message, pointer,
                        source)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8);

-- name: list_row_errors
-- params: bulk_request_id, after_row, limit
SELECT "row", line, external_id, code, message, pointer, source FROM row_errors
WHERE bulk_request_id = $1 AND "row" > $2
ORDER BY "row" LIMIT $3;

-- name: get_idempotency_key
-- params: environment_id, key, not_before
SELECT fingerprint, bulk_request_id FROM idempotency_keys
WHERE environment_id = $1 AND key = $2 AND created_at > $3;

-- name: upsert_idempotency_key
-- params: environment_id, key, fingerprint, bulk_request_id, now
INSERT INTO idempotency_keys (environment_id, key, fingerprint, bulk_request_id, created_at)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (environment_id, key) DO UPDATE
SET fingerprint = excluded.fingerprint, bulk_request_id = excluded.bulk_request_id,
    created_at = excluded.created_at;

-- name: delete_expired_idempotency_keys
-- params: not_before
DELETE FROM idempotency_keys WHERE created_at <= $1;

-- name: insert_outbox_event
-- The outbox_notify trigger NOTIFYs every process's listeners at commit.
-- params: bulk_request_id, environment_id, event_type, payload, now
INSERT INTO outbox (bulk_request_id, environment_id, event_type, payload, created_at)
VALUES ($1, $2, $3, $4, $5)
RETURNING id;

-- name: list_outbox_events_by_ids
-- What a LISTENing process reads when notified: the events named by the notifications
-- (delivered in commit order; ids are not, so no "after id N" cursor can be trusted).
-- params: ids
SELECT id, bulk_request_id, environment_id, event_type, payload FROM outbox
WHERE id = ANY($1::bigint[]) ORDER BY array_position($1::bigint[], id);

-- name: delete_old_outbox_events
-- At most `limit` rows per transaction, so pruning a backlog never holds locks long.
-- Never an event the webhook dispatcher has not passed yet, however old (README "Webhooks").
-- params: not_before, limit
DELETE FROM outbox WHERE id IN (
    SELECT id FROM outbox
    WHERE created_at < $1 AND id <= (SELECT outbox_id FROM webhook_cursor)
    ORDER BY created_at LIMIT $2
);

-- name: list_upload_paths
-- params:
SELECT upload_path FROM bulk_requests WHERE upload_path IS NOT NULL;

-- name: insert_upload
-- An upload being received, before its first chunk (uploads in the database, SPEC §16).
-- params: name, now
INSERT INTO uploads (name, created_at) VALUES ($1, $2);

-- name: insert_upload_chunk
-- params: name, seq, body
WITH chunk AS (
    INSERT INTO upload_chunks (upload_name, seq, body) VALUES ($1, $2, $3)
    RETURNING upload_name, length(body) AS size
)
UPDATE uploads SET byte_count = byte_count + chunk.size
FROM chunk WHERE uploads.name = chunk.upload_name;

-- name: complete_upload
-- params: name, now
UPDATE uploads SET completed_at = $2 WHERE name = $1 AND completed_at IS NULL
RETURNING name, byte_count;

-- name: get_upload
-- params: name
SELECT name, byte_count, created_at, completed_at FROM uploads WHERE name = $1;

-- name: list_upload_chunks
-- An upload's bytes in order, a few chunks at a time (the parser streams them).
-- params: name, from_seq, limit
SELECT seq, body FROM upload_chunks
WHERE upload_name = $1 AND seq >= $2
ORDER BY seq LIMIT $3;

-- name: delete_upload
-- A refused, replayed or parsed upload; its chunks go with it (ON DELETE CASCADE).
-- params: name
DELETE FROM uploads WHERE name = $1;

-- name: delete_unreferenced_uploads
-- Uploads no request refers to any more (parsed, rejected, or abandoned mid-receive
-- before `not_before`); their chunks go with them (ON DELETE CASCADE).
-- params: not_before
DELETE FROM uploads u
WHERE NOT EXISTS (SELECT 1 FROM bulk_requests b WHERE b.upload_path = u.name)
  AND (u.completed_at IS NOT NULL OR u.created_at < $1)
RETURNING name;

-- name: get_data_stream_key
-- params: id
SELECT key FROM data_streams WHERE id = $1;

-- name: metrics_bulk_requests
-- Scrape-time aggregates for /metrics: one pass over bulk_requests.
-- params:
SELECT status, source, count(*) AS requests,
       coalesce(sum(successful_items), 0)::bigint AS successful,
       coalesce(sum(failed_items), 0)::bigint AS failed,
       coalesce(sum(skipped_items), 0)::bigint AS skipped
FROM bulk_requests GROUP BY status, source;

-- name: metrics_heartbeats
-- Timestamps are fixed-width RFC 3339 text COLLATE "C", so min() is the oldest heartbeat
-- and a text comparison with `stuck_before` counts the stuck requests.
-- params: stuck_before
SELECT min(last_progress_at) AS oldest,
       count(*) FILTER (WHERE last_progress_at < $1) AS stuck
FROM bulk_requests WHERE status = 'processing';

-- Atomic requests (SPEC §14): as on SQLite.

-- name: fail_atomic_request
-- params: error_message, id
UPDATE bulk_requests SET status = 'failed', error_message = $1
WHERE id = $2 AND status = 'completed' AND mode = 'atomic' AND unpublished = 1
RETURNING *;

-- name: any_other_unpublished
-- params: id
SELECT EXISTS (SELECT 1 FROM bulk_requests WHERE unpublished = 1 AND id <> $1);

-- name: find_reserved_external_ids
-- params: pairs, bulk_request_id
SELECT r.data_stream_id, r.external_id
FROM jsonb_array_elements($1::jsonb) AS pair(value)
JOIN records AS r
  ON r.data_stream_id = (pair.value ->> 0)::bigint AND r.external_id = pair.value ->> 1
 AND r.external_id IS NOT NULL
WHERE r.bulk_request_id <> $2
  AND r.bulk_request_id IN (SELECT id FROM bulk_requests WHERE unpublished = 1);

-- name: next_request_to_purge
-- params:
SELECT id FROM bulk_requests
WHERE unpublished = 1 AND status IN ('failed', 'cancelled') ORDER BY id LIMIT 1;

-- name: purge_request_records
-- params: bulk_request_id, limit
DELETE FROM records WHERE id IN (
    SELECT id FROM records WHERE bulk_request_id = $1 LIMIT $2
);

-- name: mark_purged
-- params: id
UPDATE bulk_requests SET unpublished = 0 WHERE id = $1 AND unpublished = 1;

-- --- webhooks (server/db/webhook_transactions.py) ---------------------------------------
-- `events` is jsonb (the queries look into it) and is given and returned as JSON text;
-- `in_flight`, `ids` and `delivery_ids` are JSON arrays of ids, as on SQLite.

-- name: insert_webhook_endpoint
-- params: environment_id, url, events, description, secret, now
INSERT INTO webhook_endpoints (environment_id, url, events, description, enabled, secret,
                               created_at)
VALUES ($1, $2, $3::jsonb, $4, 1, $5, $6)
RETURNING *;

-- name: get_webhook_endpoint
-- params: id, environment_id
SELECT * FROM webhook_endpoints WHERE id = $1 AND environment_id = $2;

-- name: list_webhook_endpoints
-- params: environment_id, after_id, limit
SELECT * FROM webhook_endpoints
WHERE environment_id = $1 AND id > $2
ORDER BY id LIMIT $3;

-- name: update_webhook_endpoint
-- NULL keeps a field; enabling again closes the circuit (the operator says it is back).
-- params: id, environment_id, url, events, set_description, description, enabled
UPDATE webhook_endpoints SET
    url = COALESCE($3::text, url),
    events = COALESCE($4::jsonb, events),
    description = CASE WHEN $5::boolean THEN $6::text ELSE description END,
    enabled = COALESCE($7::integer, enabled),
    consecutive_failures = CASE WHEN $7::integer = 1 THEN 0 ELSE consecutive_failures END,
    circuit_open_until = CASE WHEN $7::integer = 1 THEN NULL ELSE circuit_open_until END
WHERE id = $1 AND environment_id = $2
RETURNING *;

-- name: delete_webhook_attempts_of_endpoint
-- params: endpoint_id
DELETE FROM webhook_attempts WHERE delivery_id IN (
    SELECT id FROM webhook_deliveries WHERE endpoint_id = $1
);

-- name: delete_webhook_deliveries_of_endpoint
-- params: endpoint_id
DELETE FROM webhook_deliveries WHERE endpoint_id = $1;

-- name: delete_webhook_endpoint
-- params: id, environment_id
DELETE FROM webhook_endpoints WHERE id = $1 AND environment_id = $2;

-- name: get_webhook_cursor
-- FOR UPDATE: in the dispatch transaction, the lock that makes every other process's
-- dispatch wait, then find the cursor moved and write nothing (a read alone takes and
-- drops it at once).
-- params:
SELECT outbox_id FROM webhook_cursor WHERE id = 1 FOR UPDATE;

-- name: set_webhook_cursor
-- params: outbox_id
UPDATE webhook_cursor SET outbox_id = $1 WHERE id = 1;

-- name: newest_outbox_id
-- params:
SELECT COALESCE(MAX(id), 0) FROM outbox;

-- name: lock_outbox_until_committed
-- Outbox ids are taken at insert, not at commit: a transaction still open may hold an
-- id below the newest committed one. SHARE waits for every transaction that has
-- inserted into the outbox to end (and holds new inserts for as long as the read after
-- it takes), so the newest id read next has no uncommitted id below it.
-- params:
LOCK TABLE outbox IN SHARE MODE;

-- name: list_terminal_outbox_events
-- params: after_id, up_to, limit
SELECT id, bulk_request_id, environment_id, event_type, payload, created_at FROM outbox
WHERE id > $1 AND id <= $2
  AND event_type IN ('completed', 'failed', 'cancelled')
ORDER BY id LIMIT $3;

-- name: insert_webhook_deliveries_for_event
-- One per enabled endpoint of the event's environment that subscribes to its type and
-- existed when it happened.
-- params: outbox_id, event_id, event_type, bulk_request_id, body, now, environment_id, event_created_at
INSERT INTO webhook_deliveries (endpoint_id, outbox_id, event_id, event_type,
                                bulk_request_id, body, status, next_attempt_at, created_at)
SELECT e.id, $1, $2, $3, $4, $5, 'pending', $6, $6
FROM webhook_endpoints e
WHERE e.environment_id = $7 AND e.enabled = 1
  AND e.created_at <= $8::text
  AND e.events ? $3::text
ON CONFLICT (endpoint_id, outbox_id) DO NOTHING;

-- name: list_environments_with_webhooks
-- params:
SELECT DISTINCT environment_id FROM webhook_endpoints WHERE enabled = 1;

-- name: event_has_webhook_endpoint
-- Whether insert_webhook_deliveries_for_event would insert anything (same conditions).
-- params: environment_id, event_created_at, event_type
SELECT CASE WHEN EXISTS (
    SELECT 1 FROM webhook_endpoints e
    WHERE e.environment_id = $1 AND e.enabled = 1
      AND e.created_at <= $2::text
      AND e.events ? $3::text
) THEN 1 ELSE 0 END AS found;

-- name: list_due_webhook_deliveries
-- params: now, in_flight, limit
SELECT d.id, d.endpoint_id, d.event_id, d.body, e.url, e.secret
FROM webhook_deliveries d JOIN webhook_endpoints e ON e.id = d.endpoint_id
WHERE d.status = 'pending' AND d.next_attempt_at <= $1::text AND e.enabled = 1
  AND (e.circuit_open_until IS NULL OR e.circuit_open_until <= $1::text)
  AND (d.leased_until IS NULL OR d.leased_until <= $1::text)
  AND d.id NOT IN (SELECT value::bigint FROM jsonb_array_elements_text($2::jsonb) AS ids(value))
ORDER BY d.next_attempt_at, d.id LIMIT $3;

-- name: lease_webhook_deliveries
-- The chosen due deliveries this process is about to send, leased until `lease_until`:
-- no other process's dispatcher sends one meanwhile. SKIP LOCKED: one another process is
-- leasing now is left to it; the recheck of the conditions on the locked row is what
-- makes a lease taken (and committed) a moment earlier win.
-- params: lease_until, ids, now
UPDATE webhook_deliveries SET leased_until = $1
WHERE id IN (
    SELECT id FROM webhook_deliveries
    WHERE id IN (SELECT value::bigint FROM jsonb_array_elements_text($2::jsonb) AS ids(value))
      AND status = 'pending' AND next_attempt_at <= $3::text
      AND (leased_until IS NULL OR leased_until <= $3::text)
    FOR UPDATE SKIP LOCKED
)
RETURNING id;

-- name: next_webhook_due_at
-- When the next pending delivery may be sent: its own time, its endpoint's circuit, or
-- the end of another send's lease (GREATEST ignores NULLs).
-- params: in_flight
SELECT MIN(GREATEST(d.next_attempt_at, e.circuit_open_until, d.leased_until))
FROM webhook_deliveries d JOIN webhook_endpoints e ON e.id = d.endpoint_id
WHERE d.status = 'pending' AND e.enabled = 1
  AND d.id NOT IN (SELECT value::bigint FROM jsonb_array_elements_text($1::jsonb) AS ids(value));

-- name: get_webhook_delivery_state
-- FOR UPDATE OF d: two processes' outcomes for one delivery number their attempts in
-- turn (a lease that ran out while the first was still recording). And OF e: outcomes
-- of two deliveries to one endpoint (sends overlap) count its failures in turn; reading
-- consecutive_failures unlocked, both wrote the same count and failures were lost, so
-- the circuit opened late. These lock d, then e; deleting an endpoint locks e, then its
-- deliveries: the rare deadlock between the two is run again (POSTGRES_TRANSACTION_ATTEMPTS).
-- params: id
SELECT d.id, d.endpoint_id, d.attempt_count, e.consecutive_failures
FROM webhook_deliveries d JOIN webhook_endpoints e ON e.id = d.endpoint_id
WHERE d.id = $1
FOR UPDATE OF d, e;

-- name: insert_webhook_attempt
-- params: delivery_id, number, at, http_status, error, duration_ms
INSERT INTO webhook_attempts (delivery_id, number, at, http_status, error, duration_ms)
VALUES ($1, $2, $3, $4, $5, $6);

-- name: finish_webhook_attempt
-- params: id, status, next_attempt_at, attempt_count
UPDATE webhook_deliveries
SET status = $2, next_attempt_at = $3, attempt_count = $4, leased_until = NULL
WHERE id = $1;

-- name: set_webhook_circuit
-- params: id, consecutive_failures, circuit_open_until
UPDATE webhook_endpoints
SET consecutive_failures = $2, circuit_open_until = $3
WHERE id = $1;

-- name: list_webhook_deliveries
-- params: endpoint_id, before_id, status, limit
SELECT * FROM webhook_deliveries
WHERE endpoint_id = $1 AND id < $2
  AND ($3::text IS NULL OR status = $3)
ORDER BY id DESC LIMIT $4;

-- name: list_webhook_attempts
-- params: delivery_ids
SELECT delivery_id, number, at, http_status, error, duration_ms FROM webhook_attempts
WHERE delivery_id IN (
    SELECT value::bigint FROM jsonb_array_elements_text($1::jsonb) AS ids(value))
ORDER BY delivery_id, number;

-- name: get_webhook_delivery
-- params: id, endpoint_id
SELECT * FROM webhook_deliveries WHERE id = $1 AND endpoint_id = $2;

-- name: redeliver_webhook
-- Due now, whatever its status; the attempts so far stay in its log.
-- params: id, endpoint_id, now
UPDATE webhook_deliveries SET status = 'pending', next_attempt_at = $3
WHERE id = $1 AND endpoint_id = $2
RETURNING *;

-- name: close_webhook_circuit
-- params: id
UPDATE webhook_endpoints SET circuit_open_until = NULL WHERE id = $1;
