// @ts-check
// The shapes the dashboard works with, for the type check only (scripts/jscheck): no
// module imports this file at run time (JSDoc `import("./types.js")` is erased), so the
// browser never loads it. `BulkRequest` mirrors server/openapi.json's BulkRequest
// property for property (tests/test_dashboard_modules.py checks the names).

/** @typedef {"pending" | "processing" | "completed" | "failed" | "cancelled"} Status */

/**
 * A CSV upload's options (SPEC §15), as the payload shows them.
 * @typedef {object} CsvOptions
 * @property {Record<string, string | null> | null} columns
 * @property {string | null} date_format
 * @property {"." | ","} decimal_separator
 * @property {"," | ";" | "tab" | "|" | null} delimiter
 */

/**
 * The full bulk-request payload (GET /v1/bulk_requests/{id}, the list, the events).
 * @typedef {object} BulkRequest
 * @property {number} id
 * @property {Status} status
 * @property {"bulk_api" | "csv" | "nacha" | "retry"} source
 * @property {number} total_items
 * @property {number} processed_items
 * @property {number} successful_items
 * @property {number} failed_items
 * @property {number} skipped_items
 * @property {number} progress
 * @property {string | null} filename
 * @property {string} created_at
 * @property {string | null} started_at
 * @property {string | null} completed_at
 * @property {string | null} last_progress_at
 * @property {string | null} cancellation_requested_at
 * @property {string | null} run_at
 * @property {boolean} scheduled
 * @property {boolean} parsing
 * @property {boolean} stuck
 * @property {string | null} error_message
 * @property {{ recoveries?: Recovery[], [key: string]: unknown }} error_details
 * @property {number} recoveries
 * @property {number | null} parent_bulk_request_id
 * @property {"skip" | "error"} on_conflict
 * @property {"partial" | "atomic"} mode
 * @property {string[] | null} nacha_options
 * @property {CsvOptions | null} csv_options
 * @property {number | null} data_stream_id
 * @property {string | null} data_stream_key
 * @property {boolean} can_cancel
 * @property {boolean} can_retry
 * @property {string} url
 * @property {string} errors_url
 */

/**
 * One entry of error_details.recoveries: a crash the request was resumed after.
 * @typedef {object} Recovery
 * @property {string} at
 * @property {string} [worker]
 * @property {string} [reason]
 * @property {number} [resumed_from_row]
 */

/**
 * @typedef {object} RowError
 * @property {number} row
 * @property {number | null} line
 * @property {string | null} external_id
 * @property {string} code
 * @property {string} message
 * @property {string} pointer
 */

/**
 * @typedef {object} DataStream
 * @property {number} id
 * @property {string} key
 * @property {string | null} name
 * @property {string} currency
 * @property {string} created_at
 */

/**
 * A page of a list endpoint.
 * @template T
 * @typedef {object} Page
 * @property {T[]} data
 * @property {string | null} next_cursor
 */

/**
 * An application/problem+json body, or what the page makes of a response that is not
 * one (a network error, an HTML error page).
 * @typedef {object} Problem
 * @property {string} [type]
 * @property {string} [title]
 * @property {number} [status]
 * @property {string} [detail]
 * @property {string} [request_id]
 * @property {{ pointer?: string, parameter?: string, code?: string, message?: string }[]} [errors]
 */

/**
 * One event as the SSE parser dispatches it.
 * @typedef {object} StreamEvent
 * @property {string} type
 * @property {string} data
 * @property {string} lastEventId
 */

/**
 * The elements of one list entry that live updates patch.
 * @typedef {object} ListItem
 * @property {HTMLLIElement} li
 * @property {{ link: HTMLAnchorElement, badge: HTMLElement, stuck: HTMLElement,
 *   scheduled: HTMLElement, what: HTMLElement, progress: HTMLProgressElement,
 *   percent: HTMLElement, counts: HTMLElement, createdAt: HTMLElement,
 *   runs: HTMLElement, runAt: HTMLElement, cancelling: HTMLElement }} refs
 */

/**
 * Row-error paging of the open request.
 * @typedef {object} ErrorsPaging
 * @property {number} id
 * @property {(string | null)[]} cursors
 * @property {number} index
 * @property {string | null} next
 * @property {number} count
 * @property {number} failedSeen
 * @property {ReturnType<typeof setTimeout> | null} timer
 */

export {};
