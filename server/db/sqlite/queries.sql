-- Every SQL statement the SQLite adapter runs, by name. queries.py loads this file; only
-- server/db/sqlite/ executes these (store.py reads, tx.py writes; the benchmark's
-- seeding borrows a few). Parameters are named.

-- name: ensure_environment
INSERT INTO environments (name, created_at) VALUES (:name, :now)
ON CONFLICT (name) DO NOTHING;

-- name: get_environment_by_name
SELECT id, name FROM environments WHERE name = :name;

-- name: insert_api_key
INSERT INTO api_keys (environment_id, key_hash, public_id, created_at)
VALUES (:environment_id, :key_hash, :public_id, :now)
RETURNING id;

-- name: find_api_key
SELECT k.id, k.environment_id, e.name AS environment, k.key_hash, k.last_used_at
FROM api_keys k JOIN environments e ON e.id = k.environment_id
WHERE k.key_hash = :key_hash AND k.revoked_at IS NULL;

-- name: unrevoke_api_key
UPDATE api_keys SET revoked_at = NULL WHERE key_hash = :key_hash;

-- name: touch_api_key
UPDATE api_keys SET last_used_at = :now WHERE id = :id;

-- name: list_api_keys
SELECT k.id, k.public_id, e.name AS environment, k.created_at, k.last_used_at, k.revoked_at
FROM api_keys k JOIN environments e ON e.id = k.environment_id
ORDER BY k.id;

-- name: revoke_api_key
UPDATE api_keys SET revoked_at = :now WHERE id = :id AND revoked_at IS NULL;

-- name: count_api_keys
SELECT count(*) FROM api_keys;

-- name: insert_data_stream
INSERT INTO data_streams (environment_id, key, name, currency, created_at)
VALUES (:environment_id, :key, :name, :currency, :now)
ON CONFLICT (environment_id, key) DO NOTHING
RETURNING id, key, name, currency, created_at;

-- name: get_data_stream
SELECT id, key, name, currency, created_at FROM data_streams
WHERE environment_id = :environment_id AND key = :key;

-- name: list_data_streams
SELECT id, key, name, currency, created_at FROM data_streams
WHERE environment_id = :environment_id AND id > :after_id
ORDER BY id LIMIT :limit;

-- name: find_data_streams_by_keys
SELECT key, id, currency FROM data_streams
WHERE environment_id = :environment_id AND key IN (SELECT value FROM json_each(:keys));

-- name: insert_record
-- The batch inserts below run as ONE multi-row statement (queries.multi_row says why).
INSERT INTO records (data_stream_id, date, amount_minor, currency, description, external_id,
                     metadata, bulk_request_id, row_index, created_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?);

-- name: insert_record_unless_duplicate
-- on_conflict=skip: the unique index decides; the caller counts skips from rowcount.
-- Only the external_id conflict is absorbed: any other constraint still raises.
INSERT INTO records (data_stream_id, date, amount_minor, currency, description, external_id,
                     metadata, bulk_request_id, row_index, created_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (data_stream_id, external_id) WHERE external_id IS NOT NULL DO NOTHING;

-- name: find_existing_external_ids
-- :pairs is a JSON array of [data_stream_id, external_id]. CROSS JOIN fixes the join
-- order so each pair is one probe of records_external_id; the row-value IN form made
-- SQLite scan the whole stream for every batch.
SELECT r.data_stream_id, r.external_id
FROM json_each(:pairs) AS pair
CROSS JOIN records AS r
  ON r.data_stream_id = pair.value ->> 0 AND r.external_id = pair.value ->> 1
 AND r.external_id IS NOT NULL;

-- name: list_records
-- Every records read hides the records of unpublished (atomic, not completed) requests:
-- SPEC §14, no client sees part of an atomic request. The subquery reads the partial
-- index bulk_requests_unpublished once per statement (a handful of ids).
SELECT r.id, s.key AS data_stream_key, r.date, r.amount_minor, r.currency, r.description,
       r.external_id, r.metadata, r.bulk_request_id, r.created_at
FROM records r JOIN data_streams s ON s.id = r.data_stream_id
WHERE s.environment_id = :environment_id AND r.id > :after_id
  AND r.bulk_request_id NOT IN (SELECT id FROM bulk_requests WHERE unpublished = 1)
ORDER BY r.id LIMIT :limit;

-- name: list_records_by_stream
SELECT r.id, s.key AS data_stream_key, r.date, r.amount_minor, r.currency, r.description,
       r.external_id, r.metadata, r.bulk_request_id, r.created_at
FROM records r JOIN data_streams s ON s.id = r.data_stream_id
WHERE s.environment_id = :environment_id AND s.key = :data_stream_key AND r.id > :after_id
  AND (:bulk_request_id IS NULL OR r.bulk_request_id = :bulk_request_id)
  AND r.bulk_request_id NOT IN (SELECT id FROM bulk_requests WHERE unpublished = 1)
ORDER BY r.id LIMIT :limit;

-- name: list_records_by_request
SELECT r.id, s.key AS data_stream_key, r.date, r.amount_minor, r.currency, r.description,
       r.external_id, r.metadata, r.bulk_request_id, r.created_at
FROM records r JOIN data_streams s ON s.id = r.data_stream_id
WHERE r.bulk_request_id = :bulk_request_id AND s.environment_id = :environment_id
  AND r.id > :after_id
  AND r.bulk_request_id NOT IN (SELECT id FROM bulk_requests WHERE unpublished = 1)
ORDER BY r.id LIMIT :limit;

-- name: insert_bulk_request
INSERT INTO bulk_requests (environment_id, status, source, on_conflict, total_items, parsing,
                           upload_format, upload_path, filename, default_data_stream_key,
                           nacha_options, csv_options, data_stream_id, parent_bulk_request_id,
                           created_at, run_at, queued_at, mode, unpublished)
-- A scheduled request joins the queue at its run_at: once due it lines up behind what
-- was submitted before that instant, not before everything submitted since it was made.
VALUES (:environment_id, 'pending', :source, :on_conflict, :total_items, :parsing,
        :upload_format, :upload_path, :filename, :default_data_stream_key,
        :nacha_options, :csv_options, :data_stream_id, :parent_bulk_request_id, :now,
        :run_at, CASE WHEN :run_at > :now THEN :run_at ELSE :now END,
        :mode, CASE WHEN :mode = 'atomic' THEN 1 ELSE 0 END)
RETURNING *;

-- name: insert_chunk
INSERT INTO request_chunks (bulk_request_id, first_row, row_count, body)
VALUES (:bulk_request_id, :first_row, :row_count, :body);

-- name: get_chunk_at
SELECT first_row, row_count, body FROM request_chunks
WHERE bulk_request_id = :bulk_request_id AND first_row <= :row
ORDER BY first_row DESC LIMIT 1;

-- name: next_chunk_from
-- The chunk holding :row, or the first one after it.
SELECT first_row, row_count, body FROM request_chunks
WHERE bulk_request_id = :bulk_request_id AND first_row + row_count > :row
ORDER BY first_row LIMIT 1;

-- name: set_total_items
UPDATE bulk_requests SET total_items = :total_items WHERE id = :id;

-- name: delete_chunks
DELETE FROM request_chunks WHERE bulk_request_id = :bulk_request_id;

-- name: get_bulk_request
SELECT b.*, s.key AS data_stream_key FROM bulk_requests b
LEFT JOIN data_streams s ON s.id = b.data_stream_id
WHERE b.id = :id AND b.environment_id = :environment_id;

-- name: get_bulk_request_any_environment
SELECT b.*, s.key AS data_stream_key FROM bulk_requests b
LEFT JOIN data_streams s ON s.id = b.data_stream_id
WHERE b.id = :id;

-- name: list_bulk_requests
SELECT b.*, s.key AS data_stream_key FROM bulk_requests b
LEFT JOIN data_streams s ON s.id = b.data_stream_id
WHERE b.environment_id = :environment_id AND b.id < :before_id
  AND (:status IS NULL OR b.status = :status)
  AND (:source IS NULL OR b.source = :source)
  AND (:data_stream_key IS NULL OR s.key = :data_stream_key)
  -- `scheduled` as the payload defines it (server/scheduling.py is_scheduled); never NULL.
  AND (:scheduled IS NULL
       OR :scheduled = (b.status = 'pending' AND b.run_at IS NOT NULL AND b.run_at > :now))
ORDER BY b.id DESC LIMIT :limit;

-- name: list_chain
-- Every request of the chain :id belongs to (its root and all retries below it), oldest
-- first; none when :id is not a request of :environment_id. Chains are short, and each
-- step is one probe of the primary key or of bulk_requests_parent.
WITH RECURSIVE
  ancestors(id, parent_id) AS (
    SELECT id, parent_bulk_request_id FROM bulk_requests
    WHERE id = :id AND environment_id = :environment_id
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
-- The chains of retries of the requests :ids (a JSON array) of :environment_id: every
-- member of each, tagged with its chain's root, oldest first. One statement for a page
-- of the list (the payload's can_retry); the same walk as list_chain.
WITH RECURSIVE
  ancestors(id, parent_id) AS (
    SELECT id, parent_bulk_request_id FROM bulk_requests
    WHERE id IN (SELECT value FROM json_each(:ids)) AND environment_id = :environment_id
    UNION
    SELECT b.id, b.parent_bulk_request_id
    FROM bulk_requests b JOIN ancestors a ON b.id = a.parent_id
  ),
  members(root, id) AS (
    SELECT id, id FROM ancestors WHERE parent_id IS NULL
    UNION ALL
    SELECT m.root, b.id FROM bulk_requests b JOIN members m ON b.parent_bulk_request_id = m.id
  )
-- Only the columns the retry rule reads (server/models.py ChainMember).
SELECT m.root AS chain_root, b.id, b.status, b.parsing, b.upload_path, b.error_message,
       b.failed_items, b.next_row, b.total_items, b.parent_bulk_request_id, b.mode
FROM members m JOIN bulk_requests b ON b.id = m.id
ORDER BY m.root, b.id;

-- name: list_row_error_rows
SELECT row FROM row_errors WHERE bulk_request_id = :bulk_request_id ORDER BY row;

-- name: list_retry_row_runs
SELECT first_row, row_count, origin_row FROM retry_row_runs
WHERE bulk_request_id = :bulk_request_id ORDER BY first_row;

-- name: insert_retry_row_run
-- Run as one multi-row statement per retry (see insert_record).
INSERT INTO retry_row_runs (bulk_request_id, first_row, row_count, origin_row)
VALUES (?, ?, ?, ?);

-- name: claim_next_request
-- Requests never started come first, oldest first; then the ones a worker gave back
-- after a time slice, in the order they were given back (round-robin). So a small new
-- request waits for at most one time slice, however many large ones are running.
-- A scheduled request is not claimable before its run_at.
-- A retry waits until its parent's hidden records are purged (an unpublished parent):
-- they hold the very external_ids the retry is about to store.
UPDATE bulk_requests
SET status = 'processing',
    started_at = coalesce(started_at, :now),
    last_progress_at = coalesce(last_progress_at, :now),
    attempt = attempt + 1,
    claimed_by = :worker
WHERE id = (SELECT id FROM bulk_requests
            WHERE status IN ('pending', 'processing') AND claimed_by IS NULL
              AND (run_at IS NULL OR run_at <= :now)
              AND (parent_bulk_request_id IS NULL OR parent_bulk_request_id NOT IN
                   (SELECT id FROM bulk_requests WHERE unpublished = 1))
            ORDER BY started_at IS NOT NULL, queued_at, id LIMIT 1)
RETURNING *;

-- name: has_runnable_request
SELECT EXISTS (SELECT 1 FROM bulk_requests
               WHERE status IN ('pending', 'processing') AND claimed_by IS NULL
                 AND (run_at IS NULL OR run_at <= :now)
                 AND (parent_bulk_request_id IS NULL OR parent_bulk_request_id NOT IN
                      (SELECT id FROM bulk_requests WHERE unpublished = 1)));

-- name: count_runnable_requests
-- The queue: requests waiting for their run_at are not a backlog yet.
SELECT count(*) FROM bulk_requests WHERE status IN ('pending', 'processing')
  AND (run_at IS NULL OR run_at <= :now);

-- name: next_run_at
-- When the earliest waiting scheduled request is due (NULL: none waits). One probe of
-- the partial index bulk_requests_scheduled: the pool asks it each time it goes idle.
SELECT min(run_at) FROM bulk_requests
WHERE status = 'pending' AND run_at IS NOT NULL AND run_at > :now;

-- name: release_request
UPDATE bulk_requests SET claimed_by = NULL, queued_at = :now
WHERE id = :id AND attempt = :attempt AND claimed_by = :worker AND status = 'processing'
RETURNING *;

-- name: record_batch
-- The heartbeat. Fenced by attempt and claimed_by: a zombie worker's batch matches
-- no row, and its transaction is rolled back by the caller.
UPDATE bulk_requests
SET processed_items = processed_items + :processed,
    successful_items = successful_items + :successful,
    failed_items = failed_items + :failed,
    skipped_items = skipped_items + :skipped,
    next_row = :next_row,
    last_progress_at = :now,
    status = CASE WHEN next_row + :processed >= total_items THEN 'completed' ELSE status END,
    completed_at = CASE WHEN next_row + :processed >= total_items THEN :now ELSE NULL END,
    claimed_by = CASE WHEN next_row + :processed >= total_items THEN NULL ELSE claimed_by END,
    -- An atomic request's records are published by the batch that completes it without a
    -- failed row (one small transaction, however many rows it holds); with a failed row
    -- the caller fails it in this same transaction (fail_atomic_request).
    unpublished = CASE WHEN next_row + :processed >= total_items AND failed_items + :failed = 0
                       THEN 0 ELSE unpublished END
WHERE id = :id AND attempt = :attempt AND claimed_by = :worker AND status = 'processing'
  AND parsing = 0 AND next_row + :processed = :next_row
RETURNING *;

-- name: fail_atomic_request
-- The last batch of an atomic request that has failed rows: it ends failed and its
-- records stay hidden until the sweeper purges them (purge_unpublished_records).
UPDATE bulk_requests SET status = 'failed', error_message = :error_message
WHERE id = :id AND status = 'completed' AND mode = 'atomic' AND unpublished = 1
RETURNING *;

-- name: any_other_unpublished
-- Whether some other request's records are hidden now: only then can a batch's
-- external_ids collide with hidden records (find_reserved_external_ids).
SELECT EXISTS (SELECT 1 FROM bulk_requests WHERE unpublished = 1 AND id <> :id);

-- name: find_reserved_external_ids
-- The pairs of :pairs (as find_existing_external_ids) held by hidden records of another
-- unpublished request: a running atomic request, or a failed one not yet purged.
SELECT r.data_stream_id, r.external_id
FROM json_each(:pairs) AS pair
CROSS JOIN records AS r
  ON r.data_stream_id = pair.value ->> 0 AND r.external_id = pair.value ->> 1
 AND r.external_id IS NOT NULL
WHERE r.bulk_request_id <> :bulk_request_id
  AND r.bulk_request_id IN (SELECT id FROM bulk_requests WHERE unpublished = 1);

-- name: next_request_to_purge
-- A failed or cancelled atomic request whose hidden records are still stored.
SELECT id FROM bulk_requests
WHERE unpublished = 1 AND status IN ('failed', 'cancelled') ORDER BY id LIMIT 1;

-- name: purge_request_records
-- At most :limit records per transaction (records_request_row finds them).
DELETE FROM records WHERE id IN (
    SELECT id FROM records WHERE bulk_request_id = :bulk_request_id LIMIT :limit
);

-- name: mark_purged
-- The request's last hidden record is gone: nothing is left to hide.
UPDATE bulk_requests SET unpublished = 0 WHERE id = :id AND unpublished = 1;

-- name: record_parse_progress
-- Returns the whole row: it is published to live event streams as the parse heartbeat.
UPDATE bulk_requests SET total_items = :total_items, last_progress_at = :now
WHERE id = :id AND attempt = :attempt AND claimed_by = :worker AND status = 'processing'
RETURNING *;

-- name: finish_parsing
UPDATE bulk_requests
SET parsing = 0, total_items = :total_items, data_stream_id = :data_stream_id,
    upload_path = NULL, last_progress_at = :now,
    error_details = CASE WHEN :error_details IS NULL THEN error_details
                         ELSE json_patch(coalesce(error_details, '{}'), :error_details) END,
    status = CASE WHEN :total_items = 0 THEN 'completed' ELSE status END,
    completed_at = CASE WHEN :total_items = 0 THEN :now ELSE NULL END,
    -- An atomic upload without rows completes here: nothing to hide any more.
    unpublished = CASE WHEN :total_items = 0 THEN 0 ELSE unpublished END
WHERE id = :id AND attempt = :attempt AND claimed_by = :worker AND status = 'processing'
RETURNING *;

-- name: finish_request
-- Terminal transition by the worker holding the request (cancelled or failed).
UPDATE bulk_requests
SET status = :status, completed_at = :now, claimed_by = NULL,
    upload_path = CASE WHEN :keep_upload THEN upload_path END,
    error_message = coalesce(:error_message, error_message),
    error_details = CASE WHEN :error_details IS NULL THEN error_details
                         ELSE json_patch(coalesce(error_details, '{}'), :error_details) END
WHERE id = :id AND attempt = :attempt AND claimed_by = :worker AND status = 'processing'
RETURNING *;

-- name: clear_upload_path
UPDATE bulk_requests SET upload_path = NULL WHERE id = :id;

-- name: cancel_pending_request
UPDATE bulk_requests
SET status = 'cancelled', cancellation_requested_at = :now, completed_at = :now
WHERE id = :id AND environment_id = :environment_id AND status = 'pending'
RETURNING id;

-- name: cancel_unclaimed_processing_request
-- A processing request that no worker holds right now (between time slices) has no
-- batch in flight, so it can be cancelled at once.
UPDATE bulk_requests
SET status = 'cancelled', cancellation_requested_at = coalesce(cancellation_requested_at, :now),
    completed_at = :now
WHERE id = :id AND environment_id = :environment_id AND status = 'processing'
  AND claimed_by IS NULL
RETURNING id;

-- name: request_cancellation
UPDATE bulk_requests SET cancellation_requested_at = coalesce(cancellation_requested_at, :now)
WHERE id = :id AND environment_id = :environment_id AND status = 'processing'
RETURNING id;

-- name: requeue_orphans
-- Claims held by workers that no longer exist (a crashed task, or a previous process)
-- go back to the queue; the request resumes from its checkpoint `next_row`.
UPDATE bulk_requests
SET claimed_by = NULL, queued_at = :now, recoveries = recoveries + 1,
    error_details = json_set(coalesce(error_details, '{}'), '$.recoveries',
        json_insert(coalesce(error_details ->> '$.recoveries', '[]'), '$[#]',
                    json_object('at', :now, 'worker', claimed_by, 'reason', :reason,
                                'resumed_from_row', next_row)))
WHERE claimed_by IS NOT NULL AND claimed_by NOT IN (SELECT value FROM json_each(:live_workers))
RETURNING id;

-- name: insert_row_error
-- Run as one multi-row statement per batch (see insert_record).
INSERT INTO row_errors (bulk_request_id, row, line, external_id, code, message, pointer, source)
VALUES (?, ?, ?, ?, ?, ?, ?, ?);

-- name: list_row_errors
SELECT row, line, external_id, code, message, pointer, source FROM row_errors
WHERE bulk_request_id = :bulk_request_id AND row > :after_row
ORDER BY row LIMIT :limit;

-- name: get_idempotency_key
SELECT fingerprint, bulk_request_id FROM idempotency_keys
WHERE environment_id = :environment_id AND key = :key AND created_at > :not_before;

-- name: upsert_idempotency_key
INSERT INTO idempotency_keys (environment_id, key, fingerprint, bulk_request_id, created_at)
VALUES (:environment_id, :key, :fingerprint, :bulk_request_id, :now)
ON CONFLICT (environment_id, key) DO UPDATE
SET fingerprint = excluded.fingerprint, bulk_request_id = excluded.bulk_request_id,
    created_at = excluded.created_at;

-- name: delete_expired_idempotency_keys
DELETE FROM idempotency_keys WHERE created_at <= :not_before;

-- name: insert_outbox_event
INSERT INTO outbox (bulk_request_id, environment_id, event_type, payload, created_at)
VALUES (:bulk_request_id, :environment_id, :event_type, :payload, :now);

-- name: delete_old_outbox_events
-- At most :limit rows per transaction, so pruning a backlog never holds the writer long.
-- Never an event the webhook dispatcher has not passed yet, however old (README "Webhooks").
DELETE FROM outbox WHERE id IN (
    SELECT id FROM outbox
    WHERE created_at < :not_before AND id <= (SELECT outbox_id FROM webhook_cursor)
    ORDER BY created_at LIMIT :limit
);

-- name: list_upload_paths
SELECT upload_path FROM bulk_requests WHERE upload_path IS NOT NULL;

-- name: get_data_stream_key
SELECT key FROM data_streams WHERE id = :id;

-- name: metrics_bulk_requests
-- Scrape-time aggregates for /metrics. One pass over bulk_requests (a row per request,
-- not per record), so a scrape stays cheap however many records are stored.
SELECT status, source, count(*) AS requests,
       coalesce(sum(successful_items), 0) AS successful,
       coalesce(sum(failed_items), 0) AS failed,
       coalesce(sum(skipped_items), 0) AS skipped
FROM bulk_requests GROUP BY status, source;

-- name: metrics_heartbeats
-- Timestamps are fixed-width RFC 3339 text, so min() is the oldest heartbeat and a
-- text comparison with :stuck_before counts the stuck requests (as `stuck` defines it).
SELECT min(last_progress_at) AS oldest,
       coalesce(sum(last_progress_at < :stuck_before), 0) AS stuck
FROM bulk_requests WHERE status = 'processing';

-- --- webhooks (server/db/webhooks.py) ---------------------------------------------------

-- name: insert_webhook_endpoint
INSERT INTO webhook_endpoints (environment_id, url, events, description, enabled, secret,
                               created_at)
VALUES (:environment_id, :url, :events, :description, 1, :secret, :now)
RETURNING *;

-- name: get_webhook_endpoint
SELECT * FROM webhook_endpoints WHERE id = :id AND environment_id = :environment_id;

-- name: list_webhook_endpoints
SELECT * FROM webhook_endpoints
WHERE environment_id = :environment_id AND id > :after_id
ORDER BY id LIMIT :limit;

-- name: update_webhook_endpoint
-- NULL keeps a field; enabling again closes the circuit (the operator says it is back).
UPDATE webhook_endpoints SET
    url = COALESCE(:url, url),
    events = COALESCE(:events, events),
    description = CASE WHEN :set_description THEN :description ELSE description END,
    enabled = COALESCE(:enabled, enabled),
    consecutive_failures = CASE WHEN :enabled THEN 0 ELSE consecutive_failures END,
    circuit_open_until = CASE WHEN :enabled THEN NULL ELSE circuit_open_until END
WHERE id = :id AND environment_id = :environment_id
RETURNING *;

-- name: delete_webhook_attempts_of_endpoint
DELETE FROM webhook_attempts WHERE delivery_id IN (
    SELECT id FROM webhook_deliveries WHERE endpoint_id = :endpoint_id
);

-- name: delete_webhook_deliveries_of_endpoint
DELETE FROM webhook_deliveries WHERE endpoint_id = :endpoint_id;

-- name: delete_webhook_endpoint
DELETE FROM webhook_endpoints WHERE id = :id AND environment_id = :environment_id;

-- name: get_webhook_cursor
SELECT outbox_id FROM webhook_cursor WHERE id = 1;

-- name: set_webhook_cursor
UPDATE webhook_cursor SET outbox_id = :outbox_id WHERE id = 1;

-- name: newest_outbox_id
SELECT COALESCE(MAX(id), 0) FROM outbox;

-- name: list_terminal_outbox_events
SELECT id, bulk_request_id, environment_id, event_type, payload, created_at FROM outbox
WHERE id > :after_id AND id <= :up_to
  AND event_type IN ('completed', 'failed', 'cancelled')
ORDER BY id LIMIT :limit;

-- name: insert_webhook_deliveries_for_event
-- One per enabled endpoint of the event's environment that subscribes to its type and
-- existed when it happened.
INSERT INTO webhook_deliveries (endpoint_id, outbox_id, event_id, event_type,
                                bulk_request_id, body, status, next_attempt_at, created_at)
SELECT e.id, :outbox_id, :event_id, :event_type, :bulk_request_id, :body, 'pending', :now, :now
FROM webhook_endpoints e
WHERE e.environment_id = :environment_id AND e.enabled = 1
  AND e.created_at <= :event_created_at
  AND EXISTS (SELECT 1 FROM json_each(e.events) WHERE value = :event_type)
ON CONFLICT (endpoint_id, outbox_id) DO NOTHING;

-- name: list_environments_with_webhooks
SELECT DISTINCT environment_id FROM webhook_endpoints WHERE enabled = 1;

-- name: event_has_webhook_endpoint
-- Whether insert_webhook_deliveries_for_event would insert anything (same conditions).
SELECT EXISTS (
    SELECT 1 FROM webhook_endpoints e
    WHERE e.environment_id = :environment_id AND e.enabled = 1
      AND e.created_at <= :event_created_at
      AND EXISTS (SELECT 1 FROM json_each(e.events) WHERE value = :event_type)
) AS found;

-- name: list_due_webhook_deliveries
SELECT d.id, d.endpoint_id, d.event_id, d.body, e.url, e.secret
FROM webhook_deliveries d JOIN webhook_endpoints e ON e.id = d.endpoint_id
WHERE d.status = 'pending' AND d.next_attempt_at <= :now AND e.enabled = 1
  AND (e.circuit_open_until IS NULL OR e.circuit_open_until <= :now)
  AND (d.leased_until IS NULL OR d.leased_until <= :now)
  AND d.id NOT IN (SELECT value FROM json_each(:in_flight))
ORDER BY d.next_attempt_at, d.id LIMIT :limit;

-- name: lease_webhook_deliveries
-- The chosen due deliveries this dispatcher is about to send, leased until :lease_until:
-- no other round picks one meanwhile (a send never runs twice at once). Only those
-- still due and unleased are taken, so the caller sends exactly the ids returned.
UPDATE webhook_deliveries SET leased_until = :lease_until
WHERE id IN (SELECT value FROM json_each(:ids))
  AND status = 'pending' AND next_attempt_at <= :now
  AND (leased_until IS NULL OR leased_until <= :now)
RETURNING id;

-- name: release_webhook_leases
-- At open: one process owns a SQLite file (the flock), so every lease left is a dead
-- process's send, unanswered; its delivery is due again at once.
UPDATE webhook_deliveries SET leased_until = NULL WHERE leased_until IS NOT NULL;

-- name: next_webhook_due_at
-- When the next pending delivery may be sent: its own time, its endpoint's circuit, or
-- the end of another send's lease.
SELECT MIN(MAX(d.next_attempt_at, COALESCE(e.circuit_open_until, ''),
               COALESCE(d.leased_until, '')))
FROM webhook_deliveries d JOIN webhook_endpoints e ON e.id = d.endpoint_id
WHERE d.status = 'pending' AND e.enabled = 1
  AND d.id NOT IN (SELECT value FROM json_each(:in_flight));

-- name: get_webhook_delivery_state
SELECT d.id, d.endpoint_id, d.attempt_count, e.consecutive_failures
FROM webhook_deliveries d JOIN webhook_endpoints e ON e.id = d.endpoint_id
WHERE d.id = :id;

-- name: insert_webhook_attempt
INSERT INTO webhook_attempts (delivery_id, number, at, http_status, error, duration_ms)
VALUES (:delivery_id, :number, :at, :http_status, :error, :duration_ms);

-- name: finish_webhook_attempt
UPDATE webhook_deliveries
SET status = :status, next_attempt_at = :next_attempt_at, attempt_count = :attempt_count,
    leased_until = NULL
WHERE id = :id;

-- name: set_webhook_circuit
UPDATE webhook_endpoints
SET consecutive_failures = :consecutive_failures, circuit_open_until = :circuit_open_until
WHERE id = :id;

-- name: list_webhook_deliveries
SELECT * FROM webhook_deliveries
WHERE endpoint_id = :endpoint_id AND id < :before_id
  AND (:status IS NULL OR status = :status)
ORDER BY id DESC LIMIT :limit;

-- name: list_webhook_attempts
SELECT delivery_id, number, at, http_status, error, duration_ms FROM webhook_attempts
WHERE delivery_id IN (SELECT value FROM json_each(:delivery_ids))
ORDER BY delivery_id, number;

-- name: get_webhook_delivery
SELECT * FROM webhook_deliveries WHERE id = :id AND endpoint_id = :endpoint_id;

-- name: redeliver_webhook
-- Due now, whatever its status; the attempts so far stay in its log.
UPDATE webhook_deliveries SET status = 'pending', next_attempt_at = :now
WHERE id = :id AND endpoint_id = :endpoint_id
RETURNING *;

-- name: close_webhook_circuit
UPDATE webhook_endpoints SET circuit_open_until = NULL WHERE id = :id;
