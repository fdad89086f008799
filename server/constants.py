"""Every timeout and limit, named once, with the reason it has the value it has."""

from __future__ import annotations

# --- Request-level limits (SPEC §6) -------------------------------------------------
# SPEC: at most 1000 records per POST; larger batches belong in a file upload.
MAX_RECORDS_PER_REQUEST = 1000
# 1000 rows x (16 KiB metadata + 1000-char description + the rest) fits in ~20 MiB;
# anything larger cannot be a valid request, so refuse it before parsing (413).
MAX_JSON_BODY_BYTES = 24 * 1024 * 1024
MAX_DESCRIPTION_CHARS = 1000
MAX_EXTERNAL_ID_CHARS = 255
MAX_METADATA_BYTES = 16 * 1024
# Amounts are stored as integer minor units. 2**53 - 1 keeps every amount exact for
# clients that parse JSON numbers as IEEE doubles (JavaScript, many spreadsheets).
MAX_ABS_MINOR_UNITS = 2**53 - 1
MAX_DATA_STREAM_KEY_CHARS = 128
MAX_DATA_STREAM_NAME_CHARS = 255
MAX_IDEMPOTENCY_KEY_CHARS = 255
# An Idempotency-Key protects a client's retries for a day (as Stripe does); after that
# the same key may create a new request. Expired keys are pruned by the sweeper.
IDEMPOTENCY_KEY_TTL_SECONDS = 24 * 3600

# --- Pagination (SPEC §5) -------------------------------------------------------------
DEFAULT_PAGE_LIMIT = 50
MAX_PAGE_LIMIT = 200

# --- Workers (SPEC §9) ----------------------------------------------------------------
DEFAULT_WORKERS = 2
DEFAULT_BATCH_SIZE = 500
# A worker gives up its request after this long when other work is waiting, so a
# 10-row request never waits behind a million-row one for more than about this.
WORKER_TIME_SLICE_SECONDS = 0.25
# Idle workers sleep on an asyncio.Event; this is only the safety net for work that
# arrives without a wake-up (e.g. rows inserted by another tool).
WORKER_IDLE_POLL_SECONDS = 5.0
# Rows per staged chunk when an upload is parsed: large enough that a 1M-row file is
# ~1000 small writes, small enough that a worker holds only one chunk in memory.
PARSE_CHUNK_ROWS = 2000
# Read size for uploaded files; also the streaming unit when receiving them.
FILE_READ_BYTES = 256 * 1024

# --- Stuck detection and recovery (SPEC §7) ------------------------------------------
DEFAULT_STUCK_AFTER_SECONDS = 300
# How often the sweeper looks for orphaned requests and expired idempotency keys.
SWEEPER_INTERVAL_SECONDS = 5.0
# Graceful shutdown: a worker finishes its current batch; a batch that takes longer than
# this is abandoned (its transaction rolls back and the request resumes at restart).
SHUTDOWN_GRACE_SECONDS = 8.0

# --- SQLite ---------------------------------------------------------------------------
# Writers are serialized in-process, so the busy timeout only covers other processes
# (the `keys` CLI) touching the file; 5 s is long enough for any of our transactions.
SQLITE_BUSY_TIMEOUT_MS = 5000
# Readers are separate connections so API reads never wait behind a long write (WAL).
READER_CONNECTIONS = 3

# --- Uploads (SPEC §8) ----------------------------------------------------------------
DEFAULT_MAX_UPLOAD_MB = 256
MAX_FILENAME_CHARS = 255

# --- HTTP ------------------------------------------------------------------------------
# A client-supplied X-Request-ID is echoed only if it is this short and printable.
MAX_REQUEST_ID_CHARS = 128
