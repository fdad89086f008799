// @ts-check
// What the page knows: the settings it runs with and the one mutable state object.
// Every module reads and changes the same `state` (a module binding, not a global).

export const KEY_STORAGE = "bulk-requests.api-key";
export const LIST_PAGE_SIZE = 25;
export const ERRORS_PAGE_SIZE = 50;
// Without the event stream the list is polled: often enough to look live, rarely
// enough that an open tab costs the server almost nothing.
export const POLL_LIST_MS = 2000;
export const POLL_DETAIL_MS = 1000;
export const RECONNECT_MIN_MS = 1000;
export const RECONNECT_MAX_MS = 30000;
// Bounded so a server that sends no newline cannot make the page hold unbounded text.
export const SSE_MAX_LINE_CHARS = 8 * 1024 * 1024;
// A burst of changes in the open request's chain (a retry created, then claimed) is
// answered with one read of the open request.
export const FAMILY_REFRESH_MS = 100;
/** @type {ReadonlySet<string>} */
export const TERMINAL = new Set(["completed", "failed", "cancelled"]);

// --- State ------------------------------------------------------------------------

/** @typedef {import("./types.js").BulkRequest} BulkRequest */
/** @typedef {import("./types.js").ErrorsPaging} ErrorsPaging */
/** @typedef {import("./types.js").ListItem} ListItem */
/** @typedef {import("./sse.js").EventStream} EventStream */

/**
 * @typedef {object} State
 * @property {string | null} key the API key in use
 * @property {AbortController | null} abort for everything tied to the current key
 * @property {Map<number, BulkRequest>} requests id → latest full payload seen
 * @property {string | null} nextCursor for "Load more"; null once the oldest is listed
 * @property {number | null} openId the request in the detail panel (mirrors the URL hash)
 * @property {ErrorsPaging | null} errors row-error paging of the open request
 * @property {EventStream | null} listStream
 * @property {ReturnType<typeof setTimeout> | undefined} listTimer
 * @property {EventStream | null} detailStream
 * @property {ReturnType<typeof setTimeout> | undefined} detailTimer
 * @property {boolean} listEventsMissing GET /v1/events answered 404: poll instead
 * @property {boolean} detailEventsMissing
 * @property {Set<string>} busy "cancel:12", "retry:12": actions in flight
 * @property {XMLHttpRequest | null} upload the upload in progress
 */

/** @type {State} */
export const state = {
  key: null,
  abort: null, // AbortController for everything tied to the current key
  requests: new Map(), // id → latest full bulk-request payload seen
  nextCursor: null, // for "Load more"; null once the oldest request is listed
  openId: null, // the request shown in the detail panel (mirrors the URL hash)
  errors: null, // row-error paging of the open request
  listStream: null,
  listTimer: undefined,
  detailStream: null,
  detailTimer: undefined,
  listEventsMissing: false, // GET /v1/events answered 404: poll instead
  detailEventsMissing: false,
  busy: new Set(), // "cancel:12", "retry:12": actions in flight
  upload: null, // the XMLHttpRequest of an upload in progress
};
/** @type {Map<number, ListItem>} id → the list entry's elements */
export const listItems = new Map();
