"""Every timeout and limit, named once, with the reason it has the value it has."""

from __future__ import annotations

# --- Request-level limits (SPEC §6) -------------------------------------------------
# SPEC: at most 1000 records per POST; larger batches belong in a file upload.
MAX_RECORDS_PER_REQUEST = 1000
# 1000 rows x (16 KiB metadata + 1000-char description + the rest) fits in ~20 MiB;
# anything larger cannot be a valid request, so refuse it before parsing (413).
MAX_JSON_BODY_BYTES = 24 * 1024 * 1024
# A parsed body costs ~10× its size as Python objects (a 23 MB body of 1000 records ×
# 1350 metadata keys measured ~230 MB), so bodies larger than this (or of unknown
# length) are read, parsed and staged LARGE_JSON_BODY_SLOTS at a time: four at once
# would be ~1 GB. Smaller bodies (every usual POST) never wait.
LARGE_JSON_BODY_BYTES = 4 * 1024 * 1024
LARGE_JSON_BODY_SLOTS = 1
# JSON texts longer than this (a body, or a staged chunk the worker reads back) are
# parsed by the standard library's json instead of orjson. orjson builds its whole
# document tree before the Python objects: a 20 MB body of 1000 records x 1350 metadata
# keys peaked at 383 MB (tracemalloc) for 143 MB of objects, and four such bodies took
# the server to 447-502 MB. json peaked at 48 MB (it also shares repeated keys) and ran
# faster there (0.12 s against 0.18 s). Below this size orjson is the faster (a chunk of
# 2000 ordinary rows: 1.9 ms against 3.7 ms), and its tree is small.
ORJSON_MAX_TEXT_BYTES = 1024 * 1024
MAX_DESCRIPTION_CHARS = 1000
MAX_EXTERNAL_ID_CHARS = 255
MAX_METADATA_BYTES = 16 * 1024
# SPEC §11: a value inside a record (metadata, or any field) nests at most this many
# levels (the value itself is level 1). Ledgers and spreadsheets downstream flatten
# metadata; 32 is far beyond any real use and keeps every walk of a body short.
MAX_VALUE_DEPTH = 32
# Amounts are stored as integer minor units. 2**53 - 1 keeps every amount exact for
# clients that parse JSON numbers as IEEE doubles (JavaScript, many spreadsheets).
MAX_ABS_MINOR_UNITS = 2**53 - 1
MAX_DATA_STREAM_KEY_CHARS = 128
MAX_DATA_STREAM_NAME_CHARS = 255
MAX_IDEMPOTENCY_KEY_CHARS = 255
# An Idempotency-Key protects a client's retries for a day (as Stripe does); after that
# the same key may create a new request. Expired keys are pruned by the sweeper.
IDEMPOTENCY_KEY_TTL_SECONDS = 24 * 3600
# Outbox events (README, "After a commit") are kept three days, the window over which webhook
# senders commonly retry a delivery (Stripe retries for up to three days); the sweeper
# deletes older ones, at most OUTBOX_PRUNE_BATCH per transaction.
OUTBOX_RETENTION_SECONDS = 3 * 24 * 3600
OUTBOX_PRUNE_BATCH = 5000

# --- Pagination (SPEC §5) -------------------------------------------------------------
# A 422 lists at most this many misplaced items (non-object records, unknown fields):
# enough to fix a body, and a hostile body cannot make the answer as large as itself.
MAX_LISTED_FIELD_ERRORS = 50
MAX_LISTED_UNKNOWN_FIELDS = 20
# Ids, row positions and event-id parts are SQLite INTEGERs (signed 64-bit, at most
# 9223372036854775807): any 18-digit number fits, so longer text cannot name anything.
MAX_STORED_INT_DIGITS = 18
# The first page of a newest-first listing starts below this id: above every id SQLite
# assigns (its rowids stop at 2**63 - 1) and still exact in every integer type we use.
ABOVE_EVERY_ID = 2**62
DEFAULT_PAGE_LIMIT = 50
MAX_PAGE_LIMIT = 200
# The CSV error export reads (and holds) a page of rows at a time, each with its source
# row (up to 64 KiB from a CSV file; a JSON request's rows together are bounded by the
# body limit). Pages are sized from the rows seen so far to hold about this many bytes:
# 1000 small rows per query keeps a million-row export fast, and 25 wide ones keep
# memory flat (100 rows of 64 KiB per page measured +28 MB of peak RSS over 25).
ERROR_EXPORT_PAGE_BYTES = 2 * 1024 * 1024
ERROR_EXPORT_PAGE_ROWS = (25, 1000)  # the fewest and the most per query

# --- Workers (SPEC §9) ----------------------------------------------------------------
DEFAULT_WORKERS = 2
DEFAULT_BATCH_SIZE = 500
# No pause between batches by default: a worker goes as fast as the database lets it.
# A pause (--batch-pause) throttles ingestion where the disk is shared with other work,
# and holds a request between heartbeats long enough to cancel it at a chosen row.
DEFAULT_BATCH_PAUSE_SECONDS = 0.0
# A worker gives up its request after this long when other work is waiting, so a
# 10-row request never waits behind a million-row one for more than about this.
WORKER_TIME_SLICE_SECONDS = 0.25
# Idle workers sleep on an asyncio.Event; this is only the safety net for work that
# arrives without a wake-up (e.g. rows inserted by another tool).
WORKER_IDLE_POLL_SECONDS = 5.0
# Rows per staged chunk when an upload is parsed: large enough that a 1M-row file is
# ~1000 small writes, small enough that a worker holds only one chunk in memory.
PARSE_CHUNK_ROWS = 2000
# ... and at most this many bytes of input per staged chunk: a chunk is held whole in
# memory while it is staged and again when a worker processes it, so 2000 rows of up to
# 64 KiB (~170 MB as Python objects) would break the RSS bound; 4 MiB of text is ~10 MB.
PARSE_CHUNK_BYTES = 4 * 1024 * 1024
# Staged chunks are zstd-compressed at this level (server/staging.py). A 1000-row bulk
# POST body (145 kB of JSON) at level 1: zstd 0.10 ms and 11.6 kB, decompressed in 0.04
# ms; zlib level 1, used before, 0.38 ms and 16.4 kB, 0.20 ms back. A raw body is
# compressed on the event loop, so the saving is accept latency (README, Performance).
# Higher levels shrink little more (level 3: 12.8 kB, slower); storing it uncompressed
# made the writer copy 145 kB per accept and measured far worse (accept p99 75-108 ms).
STAGING_ZSTD_LEVEL = 1
# Data streams the accept's fast path remembers (key → id, currency), all environments
# together: ~200 bytes each; past this the memory is dropped and refilled on demand.
MAX_CACHED_STREAMS = 10_000
# Read size for uploaded files; also the streaming unit when receiving them.
FILE_READ_BYTES = 256 * 1024

# The writer runs transactions that a client waits on (accepting a request) before
# worker batches, but at most this many in a row while a batch waits: accept latency
# stays low under load and processing still advances during a flood of submissions.
URGENT_BURST = 8
# The same rule on the event loop (server/jobs/accept_gate.py): a worker about to run a
# batch waits while bulk POSTs are being accepted, at most this long per batch, so accept
# latency does not include worker batches and draining still advances during a flood.
ACCEPT_PRIORITY_MAX_WAIT_SECONDS = 0.025
# Rows per multi-row INSERT statement: 500 x 10 columns stays far below SQLite's limit
# of 32766 bound parameters, and a larger --batch-size simply takes several statements.
MAX_ROWS_PER_INSERT = 500

# --- Atomic requests (SPEC §14) -------------------------------------------------------
# The sweeper deletes a failed or cancelled atomic request's hidden records at most this
# many per transaction (like OUTBOX_PRUNE_BATCH): purging a million rows never holds the
# writer for more than a few milliseconds at a time, so batches and client calls interleave.
ATOMIC_PURGE_BATCH = 5000

# --- Stuck detection and recovery (SPEC §7) ------------------------------------------
DEFAULT_STUCK_AFTER_SECONDS = 300
# How often the sweeper looks for orphaned requests and expired idempotency keys.
SWEEPER_INTERVAL_SECONDS = 5.0
# A claim that failed (the database busy or broken) is tried again after this pause, so
# a persistent fault logs once a second instead of spinning the worker.
CLAIM_RETRY_SECONDS = 1.0
# Request ids given back after a time slice, remembered to log their next claim at
# DEBUG. Ids cancelled while released are never claimed again, so the set is dropped
# whole past this size (the cost: a few INFO lines instead of DEBUG).
MAX_REMEMBERED_SLICED_IDS = 10_000
# An internal error's message is kept in error_details up to this many characters: enough
# to diagnose, and an exception holding a whole row or file stays out of every payload.
MAX_ERROR_MESSAGE_CHARS = 500
# Graceful shutdown: a worker finishes its current batch; a batch that takes longer than
# this is abandoned (its transaction rolls back and the request resumes at restart).
SHUTDOWN_GRACE_SECONDS = 8.0

# --- SQLite ---------------------------------------------------------------------------
# The `->>` JSON operator (the duplicate lookup of on_conflict=error) needs SQLite 3.38.
MIN_SQLITE_VERSION = (3, 38, 0)
# Writers are serialized in-process, so the busy timeout only covers other processes
# (the `keys` CLI) touching the file; 5 s is long enough for any of our transactions.
SQLITE_BUSY_TIMEOUT_MS = 5000
# Checkpoints (copying the WAL into the database file, with an fsync) run on their own
# connection every this often, off the writer's path: inline autocheckpoints made every
# ~15th write transaction pay for a 4 MB copy and an fsync, the accept latency spikes.
CHECKPOINT_INTERVAL_SECONDS = 0.5
# The writer still checkpoints by itself past this many WAL pages (~80 MB), in case the
# background checkpointer cannot keep up or fails: the WAL never grows without bound.
WRITER_AUTOCHECKPOINT_PAGES = 20_000
# Readers are separate connections so API reads never wait behind a long write (WAL).
READER_CONNECTIONS = 3
# SQLite page caches count toward the RSS bound (SPEC §11): 32 MB for the writer, whose
# index pages make batch inserts fast; 8 MB for each reader, which serve small indexed
# lookups. At 32 MB each, three readers streaming a 256 MB error export filled ~90 MB
# of cache between them.
WRITER_CACHE_KIB = 32_000
READER_CACHE_KIB = 8_000

# --- Uploads (SPEC §8) ----------------------------------------------------------------
DEFAULT_MAX_UPLOAD_MB = 256
MAX_FILENAME_CHARS = 255
# A rejected NACHA file lists every problem found, like the reference reader, so one
# correction round fixes them all; past this many the parser stops reading (a file that
# broken is not worth more CPU, and error_details must stay a readable size).
NACHA_MAX_REPORTED_ERRORS = 100
# Warnings that name lines (short lines padded, long lines trimmed) name at most this
# many and count the rest: a 500,000-line file of short lines keeps bounded memory.
NACHA_MAX_LISTED_WARNINGS = 100
# A NACHA line (its record and the blanks past column 94 that are trimmed, without the
# line break) is at most this many bytes. FORMAT.md sets no limit on those blanks; real
# tools pad to a few hundred columns at most, and a record of 94 UTF-8 characters is
# under 400 bytes. A longer line is rejected (record_length) as soon as this much is
# read without a line break, so one endless line costs neither memory nor time (a
# 128 MB one cost 400 MB and 32 s).
MAX_NACHA_LINE_BYTES = 4 * 1024

# --- API keys (SPEC §3, §11) -----------------------------------------------------------
# A generated key is `bk_<public id>_<secret>`. The public id only tells keys apart in
# `keys list` and the dashboard: 12 characters of [a-z0-9] (62 bits) never collide in
# practice, and the database's unique index catches it if they ever do.
API_KEY_PUBLIC_ID_CHARS = 12
# The secret is 256 random bits, so a fast hash (SHA-256) of the key is safe to store:
# there is nothing to brute-force.
API_KEY_SECRET_BYTES = 32

# --- CSV bounds (SPEC §11): memory follows these limits, not the file ------------------
# A header wider than this fails the request. Our own error export stays within it.
MAX_CSV_COLUMNS = 256
# One row (its raw text, line breaks inside quotes included, in UTF-8 bytes). The reader
# holds at most one row while csv parses it; a longer row fails the request, because
# where it ends cannot be known without reading it whole (it is usually an unclosed
# quote swallowing the rest of the file). Every record field fits with room to spare:
# 16 KiB of metadata + 1000 characters of description + the rest.
MAX_CSV_ROW_BYTES = 64 * 1024
# The upload form's `columns` (SPEC §15): a mapping of all MAX_CSV_COLUMNS columns with
# names of ~200 bytes fits; the other text fields keep their 1 KiB.
MAX_COLUMNS_FIELD_BYTES = 64 * 1024
# `date_format`: the longest real pattern ("%A, %d %B %Y %H:%M:%S %z") is ~25 characters;
# the bound keeps the per-row strptime cheap whatever a client sends.
MAX_DATE_FORMAT_CHARS = 64

# A multipart part's header lines (its Content-Disposition holds the file name) may be
# this long: a 10,000-character name, percent-encoded, fits, and is then cut to
# MAX_FILENAME_CHARS. aiohttp's default is the request's own header limit (8 KiB).
MAX_PART_HEADER_BYTES = 128 * 1024

# --- HTTP ------------------------------------------------------------------------------
# A client-supplied X-Request-ID is echoed only if it is this short and printable.
MAX_REQUEST_ID_CHARS = 128
# SPEC §11. An idle keep-alive connection is closed after this long (nginx's default,
# longer than the 60 s idle time of most client pools, so the client closes first and
# never sends a request on a connection we are closing).
KEEPALIVE_TIMEOUT_SECONDS = 75.0
# A client must finish sending a request head within this long (from connecting, or
# from its first byte on a reused connection): otherwise it is holding a connection
# and its buffer open for nothing (slowloris). Bodies are not covered: a large upload
# over a slow link may take minutes.
REQUEST_HEAD_TIMEOUT_SECONDS = 30.0
# SPEC §11: the request line and headers together. Ours need well under 1 KiB; browsers
# allow ~8 KiB of cookies, and this service sets none. Also each line's limit in aiohttp's
# parser, so no single line can make it buffer more than this.
MAX_REQUEST_HEAD_BYTES = 16 * 1024
# After answering a head we refused (too large, too slow), what the client still sends
# is read and dropped for this long before closing, so that its unread bytes do not
# make the close a reset that loses the answer; long enough for a head in flight.
LINGER_AFTER_REFUSAL_SECONDS = 2.0
# Malformed requests and client disconnects are logged at WARNING, at most this many
# lines per window; the next line after a suppressed run says how many were dropped.
# A scanner sending thousands of bad requests then costs 10 log lines a minute.
PROTOCOL_WARNING_BURST = 10
PROTOCOL_WARNING_WINDOW_SECONDS = 60.0
# Graceful shutdown (SPEC §9: exit within a few seconds): requests in flight get this
# long to finish before their connections are closed.
HTTP_SHUTDOWN_TIMEOUT_SECONDS = 3.0

# --- Live progress (Server-Sent Events) --------------------------------------------
# A worker heartbeats after every batch (hundreds per second with small batches); a
# person watching a progress bar cannot see more than ~10 updates a second, so each
# stream sends at most one burst per this interval, always with the latest state.
SSE_MIN_EVENT_INTERVAL_SECONDS = 0.1
# Proxies and load balancers commonly drop connections idle for 30-60 s; a comment
# line every 15 s keeps an idle stream open and lets us notice a vanished client.
SSE_KEEPALIVE_SECONDS = 15.0
# The reconnect delay we ask EventSource-style clients to use after a drop: long
# enough not to hammer a restarting server, short enough to look live.
SSE_RETRY_MS = 3000
# aiohttp (outside tests) does not cancel a handler when its client disconnects, so an
# idle stream checks its connection this often and frees its subscription quickly.
SSE_DISCONNECT_CHECK_SECONDS = 1.0
# The environment-wide stream remembers the last version sent per request (to never
# send an older state after a newer one); it forgets the least recently changed beyond
# this many, so a stream open for weeks does not grow without bound.
SSE_TRACKED_REQUESTS = 4096

# --- Interpreter ----------------------------------------------------------------------
# The event loop and the SQLite threads share the GIL. A thread that finished its C work
# (a SQLite statement) waits up to the switch interval for the loop to hand the GIL
# back. With per-row executemany that wait (CPython's default is 5 ms) bounded ingest;
# batches are now one statement, and 0.5 ms still measured ~2 % faster than 5 ms, for
# the few hand-overs left in each transaction (see README, Performance).
GIL_SWITCH_INTERVAL_SECONDS = 0.0005
# The event-loop lag probe (server/http/loop_lag.py) wakes this often: 20 wake-ups a
# second cost nothing measurable (~20 µs each) and leave an idle laptop idle, and over a
# busy second they sample the loop's lag 20 times. A stall this long is always seen.
LOOP_LAG_PROBE_SECONDS = 0.05
# Finer than the HTTP buckets at the low end, where an accept's tail lives (a 1000-row
# bulk POST takes ~10 ms in the bench; issue 14's accept p99 target is 20 ms).
LOOP_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

# PostgreSQL: the LISTEN/NOTIFY channel every outbox insert notifies (a trigger, migration
# 1 of server/db/postgres/migrations.py), so each process's event streams see every
# process's changes (SPEC §16).
POSTGRES_OUTBOX_CHANNEL = "bulk_outbox"

# PostgreSQL connections per server process: one per worker (each holds one for the length
# of a batch transaction), plus POSTGRES_API_CONNECTIONS for API reads and client writes
# so requests never queue behind the workers, plus the sweeper's. The LISTEN connection
# is separate (server/db/postgres/storage.py). 3 processes x (2 + 4 + 1) stays far below
# PostgreSQL's default max_connections of 100.
POSTGRES_API_CONNECTIONS = 4
POSTGRES_SWEEPER_CONNECTIONS = 1


def postgres_pool_size(workers: int) -> int:
    """The pool's maximum size for a process running `workers` workers."""
    return workers + POSTGRES_API_CONNECTIONS + POSTGRES_SWEEPER_CONNECTIONS


# Row errors and retry runs are inserted with multi-row statements: 1000 rows x 8 columns
# stays far below PostgreSQL's 65535 parameters per statement (records use COPY).
POSTGRES_MAX_ROWS_PER_INSERT = 1000
# Several processes: a claim whose heartbeat (last_progress_at; every batch and parsed
# chunk writes it, and so does the claim) is older than this is taken to belong to a
# dead or hung process and goes back to the queue. A batch or chunk never takes
# anywhere near this long; a live holder that did is fenced out, nothing is lost.
DEFAULT_HEARTBEAT_TIMEOUT_SECONDS = 60.0
# A transaction that lost a deadlock or a serialization conflict to another process's is
# run again this many times before the error propagates.
POSTGRES_TRANSACTION_ATTEMPTS = 5
# The LISTEN connection, when lost, is opened again after this pause.
POSTGRES_LISTEN_RETRY_SECONDS = 1.0
# Own outbox ids remembered so the listener skips events this process already applied;
# a rolled-back transaction's ids are never notified, so the set is dropped past this.
POSTGRES_MAX_REMEMBERED_OUTBOX_IDS = 100_000
# The parser reads an upload's chunks back this many at a time (4 x 256 KiB per query).
POSTGRES_UPLOAD_READ_AHEAD_CHUNKS = 4
# An upload never completed (its receiving process died mid-stream) is deleted by a
# start-up sweep once this old: long enough that no live process is still receiving it.
POSTGRES_ABANDONED_UPLOAD_SECONDS = 24 * 3600
# --- Webhooks (SPEC §13, README "Webhooks") ------------------------------------------
# A receiver has this long to answer (SPEC §13: a 2xx within 10 s is success).
WEBHOOK_TIMEOUT_SECONDS = 10.0
# A dispatcher leases a delivery for this long before sending it: no other round or
# process picks it meanwhile. Well past a send (the timeout) and its recording, so a
# live sender always records before its lease ends; a dead one's (PostgreSQL, another
# process) is sent again by another dispatcher once it has run out.
WEBHOOK_SEND_LEASE_SECONDS = 60.0
# Attempts per delivery before it is `failed` (SPEC §13); a manual retry adds one.
WEBHOOK_MAX_ATTEMPTS = 8
# First retry after --webhook-retry-base seconds, doubling after each failure.
DEFAULT_WEBHOOK_RETRY_BASE_SECONDS = 5.0
# Each retry waits up to this fraction longer than its doubling step, never less: a
# receiver that came back is not hit by every sender's retries in the same second.
WEBHOOK_RETRY_JITTER = 0.25
# Sends in flight at once, over all endpoints: webhooks never take more sockets than this.
WEBHOOK_MAX_CONCURRENT_SENDS = 8
# ... and per endpoint, so one slow receiver cannot take every slot from the others.
WEBHOOK_MAX_SENDS_PER_ENDPOINT = 2
# The per-endpoint circuit: after this many consecutive failed attempts, nothing is sent
# to the endpoint for the cooldown; the next attempt after it closes the circuit on a
# success or opens it again on a failure. A dead receiver then costs one attempt a minute.
WEBHOOK_CIRCUIT_FAILURES = 5
WEBHOOK_CIRCUIT_COOLDOWN_SECONDS = 60.0  # the default of --webhook-circuit-cooldown
# Outbox events turned into deliveries per dispatch transaction: a backlog after a long
# outage is worked off in short transactions that never hold the writer long.
WEBHOOK_DISPATCH_BATCH = 200
# With nothing due, the dispatcher still looks this often (a safety net: commits and
# retries wake it sooner), which also moves its outbox cursor past non-terminal events
# so the sweeper can prune them.
WEBHOOK_IDLE_POLL_SECONDS = 5.0
# Dispatch rounds start at least this far apart. Every commit with a terminal transition
# nudges the dispatcher, and a bulk ingest finishes hundreds of requests a second: one
# round each (four reads and a write transaction, even with no endpoint anywhere) took
# ~370 writer transactions and 5 % of the event loop from 500 requests' processing. A
# round every 0.1 s takes a burst's events in batches (ingest +6-11 %, server CPU -8 %;
# README, Performance); the first event after a quiet spell is still dispatched at once.
WEBHOOK_MIN_ROUND_INTERVAL_SECONDS = 0.1
MAX_WEBHOOK_URL_CHARS = 2048
MAX_WEBHOOK_DESCRIPTION_CHARS = 500
# Secrets: `whsec_` + base64 of this many random bytes (SPEC §13: 24 or more).
WEBHOOK_SECRET_BYTES = 24
# Failed-attempt errors are stored and listed; a receiver's words are cut to this.
MAX_WEBHOOK_ERROR_CHARS = 300
# A deny-private check at create time resolves the host; it waits at most this long.
WEBHOOK_CREATE_RESOLVE_SECONDS = 2.0
# Scheduled requests (SPEC §12). A schedule further ahead than this is more likely a typo
# (a year off) than a plan; the spec's bound.
MAX_SCHEDULE_AHEAD_DAYS = 366
# Earliest accepted `run_at`: every later instant formats as fixed-width RFC 3339 text
# (four-digit years), which is what keeps stored timestamps sortable as text. Anything
# before it is just "in the past" anyway.
MIN_RUN_AT_YEAR = 1970
# An idle worker wakes this long after the earliest `run_at`, not at it: a timer may
# fire a little early, and a claim a microsecond before `run_at` would find nothing and
# sleep again.
SCHEDULE_WAKE_MARGIN_SECONDS = 0.005
# The lean CSV path (server/ingest/lean_csv.py) remembers per file the calendar dates and
# currencies it has checked (a file's rows share few): at most this many of each, ~100
# bytes apiece, so a file of all-distinct dates costs a bounded ~1 MB.
MAX_REMEMBERED_DATES = 10_000

# --- The interpreter ------------------------------------------------------------------
# Allocations between two collections of the cyclic GC's youngest generation (CPython's
# default is 700). A batch or a parsed chunk allocates tens of thousands of short-lived
# objects that reference counting frees; collecting every 700 walked them ~100 times per
# chunk for no garbage. Cyclic garbage is rare here, so it waits a little longer.
GC_YOUNG_THRESHOLD = 20_000
