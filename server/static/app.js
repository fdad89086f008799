// Bulk requests dashboard. Plain JavaScript module: no framework, no build step, no
// external resources (it must work on a machine with no internet access).
//
// Everything is rendered with DOM APIs and textContent, never with HTML strings: file
// names, descriptions and row-error messages come from users, and the page's CSP
// enforces Trusted Types, so an HTML sink would throw anyway.
//
// The API key lives in sessionStorage (this tab only) and travels in the X-API-KEY
// header; it is never put in a URL, a cookie or localStorage.

const KEY_STORAGE = "bulk-requests.api-key";
const LIST_PAGE_SIZE = 25;
const ERRORS_PAGE_SIZE = 50;
// Without the event stream the list is polled: often enough to look live, rarely
// enough that an open tab costs the server almost nothing.
const POLL_LIST_MS = 2000;
const POLL_DETAIL_MS = 1000;
const RECONNECT_MIN_MS = 1000;
const RECONNECT_MAX_MS = 30000;
// Bounded so a server that sends no newline cannot make the page hold unbounded text.
const SSE_MAX_LINE_CHARS = 8 * 1024 * 1024;
const TERMINAL = new Set(["completed", "failed", "cancelled"]);
const CANCELLABLE = new Set(["pending", "processing"]);
const RETRYABLE = new Set(["failed", "cancelled"]);
const NETWORK_PROBLEM = {
  title: "The server could not be reached",
  detail: "Check that the service is running and the network is up, then try again.",
};

const $ = (id) => document.getElementById(id);

// --- State ------------------------------------------------------------------------

const state = {
  key: null,
  abort: null, // AbortController for everything tied to the current key
  requests: new Map(), // id → latest full bulk-request payload seen
  nextCursor: null, // for "Load more"; null once the oldest request is listed
  openId: null, // the request shown in the detail panel (mirrors the URL hash)
  errors: null, // row-error paging of the open request
  listStream: null,
  listTimer: null,
  detailStream: null,
  detailTimer: null,
  listEventsMissing: false, // GET /v1/events answered 404: poll instead
  detailEventsMissing: false,
  busy: new Set(), // "cancel:12", "retry:12": actions in flight
};
const listItems = new Map(); // id → {li, refs}
let currentUpload = null; // the XMLHttpRequest of an upload in progress

// --- Small helpers ----------------------------------------------------------------

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") el.className = value;
    else if (name === "text") el.textContent = value;
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  el.append(...children.filter((c) => c !== null && c !== undefined && c !== false));
  return el;
}

const isAbort = (err) => err?.name === "AbortError";
const fmtInt = (n) => (typeof n === "number" ? n.toLocaleString("en-US") : "—");

function fmtBytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  if (n < 1024 ** 3) return `${(n / 1024 ** 2).toFixed(1)} MiB`;
  return `${(n / 1024 ** 3).toFixed(2)} GiB`;
}

function fmtTime(iso) {
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? iso : date.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "medium" });
}

function timeEl(iso) {
  if (!iso) return h("span", { class: "muted", text: "—" });
  return h("time", { datetime: iso, title: iso, text: fmtTime(iso) });
}

// --- Patching, not rebuilding ---------------------------------------------------------
// Live updates arrive many times a second. They change text and attributes of elements
// that stay in place: a rebuilt element would drop keyboard focus (a focused element that
// is removed, moved or disabled leaves focus on the page body), a screen reader's place
// and any text selection.

function setText(el, text) {
  if (el.textContent !== text) el.textContent = text;
}

// A timestamp shown in a `.time-slot` span: its <time> element is updated in place.
function timeSlot(iso) {
  const slot = h("span", { class: "time-slot" });
  setTime(slot, iso);
  return slot;
}

function setTime(slot, iso) {
  const value = iso ?? "";
  if (slot.dataset.iso === value) return;
  slot.dataset.iso = value;
  const time = slot.firstElementChild;
  if (value && time?.tagName === "TIME") {
    time.dateTime = value;
    time.title = value;
    time.textContent = fmtTime(value);
  } else {
    slot.replaceChildren(timeEl(value));
  }
}

// Buttons a live update can switch off are marked aria-disabled rather than disabled: a
// focused button that becomes disabled loses focus to the page body. aria-disabled keeps
// it focusable and announced as unavailable; what it does checks `isUsable` first.
function setUsable(button, usable) {
  if (usable) button.removeAttribute("aria-disabled");
  else button.setAttribute("aria-disabled", "true");
}

const isUsable = (button) => button.getAttribute("aria-disabled") !== "true";

function ago(iso) {
  const seconds = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
  if (seconds < 60) return `${seconds} s ago`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ${seconds % 60} s ago`;
  return `${Math.floor(seconds / 3600)} h ${Math.floor((seconds % 3600) / 60)} min ago`;
}

function sleep(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener(
      "abort",
      () => {
        clearTimeout(timer);
        resolve();
      },
      { once: true },
    );
  });
}

// Re-setting the same text would not be re-announced, so clear it first.
let announceTimer = null;
function announce(text) {
  const el = $("announcer");
  el.textContent = "";
  clearTimeout(announceTimer);
  announceTimer = setTimeout(() => {
    el.textContent = text;
  }, 60);
}

// --- Errors (problem+json) --------------------------------------------------------

class ApiError extends Error {
  constructor(status, problem) {
    super(problem.detail || problem.title || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

async function readProblem(resp) {
  const text = await resp.text().catch(() => "");
  try {
    const body = JSON.parse(text);
    if (body && typeof body === "object" && !Array.isArray(body)) return body;
  } catch {
    // not JSON: described below
  }
  return {
    title: `HTTP ${resp.status} ${resp.statusText}`.trim(),
    detail: text.slice(0, 300) || undefined,
    status: resp.status,
  };
}

function showProblem(err, context) {
  if (isAbort(err)) return;
  const problem =
    err instanceof ApiError
      ? err.problem
      : err && typeof err === "object" && "title" in err
        ? err
        : { title: "Something went wrong", detail: String(err?.message ?? err) };
  const title = problem.title || "Error";
  const body = h(
    "div",
    { class: "alert-body" },
    h("p", { class: "alert-title" }, h("strong", { text: context ? `${context}: ${title}` : title })),
  );
  if (problem.detail) body.append(h("p", { class: "alert-detail", text: problem.detail }));
  if (Array.isArray(problem.errors) && problem.errors.length) {
    const list = h("ul", { class: "alert-errors" });
    for (const e of problem.errors.slice(0, 10)) {
      const where = e?.pointer || e?.parameter || "";
      list.append(h("li", {}, where ? h("code", { text: where }) : null, ` ${e?.message ?? e?.code ?? ""}`));
    }
    if (problem.errors.length > 10) list.append(h("li", { text: `…and ${problem.errors.length - 10} more` }));
    body.append(list);
  }
  if (problem.request_id) body.append(h("p", { class: "hint", text: `Request id ${problem.request_id}` }));
  const dismiss = h("button", { type: "button", class: "button-secondary", text: "Dismiss" });
  dismiss.addEventListener("click", clearAlert);
  const box = $("alert");
  box.replaceChildren(body, dismiss);
  box.classList.add("is-visible");
}

function clearAlert() {
  const box = $("alert");
  box.replaceChildren();
  box.classList.remove("is-visible");
}

// --- HTTP -------------------------------------------------------------------------

async function request(path, { method = "GET", body, accept = "application/json" } = {}) {
  const init = {
    method,
    headers: { "X-API-KEY": state.key, Accept: accept },
    cache: "no-store",
    signal: state.abort?.signal,
  };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let resp;
  try {
    resp = await fetch(path, init);
  } catch (err) {
    if (isAbort(err)) throw err;
    throw new ApiError(0, NETWORK_PROBLEM);
  }
  if (!resp.ok) {
    const err = new ApiError(resp.status, await readProblem(resp));
    if (resp.status === 401) keyRejected(err);
    throw err;
  }
  return resp;
}

const getJson = async (path) => (await request(path)).json();

// --- Server-Sent Events over fetch() -----------------------------------------------
// EventSource cannot send the X-API-KEY header, so the stream is read with fetch and
// parsed here, following the WHATWG "event stream interpretation" rules.

export class SSEParser {
  constructor(onEvent) {
    this.onEvent = onEvent;
    this.buffer = "";
    this.pendingCR = false; // a chunk ended with "\r": a "\n" opening the next one is the same newline
    this.eventType = "";
    this.data = [];
    this.idBuffer = "";
    this.lastEventId = "";
    this.retry = null;
  }

  push(text) {
    if (this.pendingCR) {
      this.pendingCR = false;
      if (text.startsWith("\n")) text = text.slice(1);
    }
    const buffer = this.buffer + text;
    const newline = /\r\n|\r|\n/g;
    let start = 0;
    let match;
    while ((match = newline.exec(buffer)) !== null) {
      this.line(buffer.slice(start, match.index));
      start = newline.lastIndex;
      if (match[0] === "\r" && start === buffer.length) this.pendingCR = true;
    }
    this.buffer = buffer.slice(start);
    if (this.buffer.length > SSE_MAX_LINE_CHARS) throw new Error("event stream line too long");
  }

  line(line) {
    if (line === "") return this.dispatch();
    if (line.startsWith(":")) return undefined; // comment (keep-alive)
    const colon = line.indexOf(":");
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") this.eventType = value;
    else if (field === "data") this.data.push(value);
    else if (field === "id" && !value.includes("\0")) this.idBuffer = value;
    else if (field === "retry" && /^\d+$/.test(value)) this.retry = Number(value);
    return undefined;
  }

  dispatch() {
    this.lastEventId = this.idBuffer;
    if (this.data.length === 0) {
      this.eventType = "";
      return;
    }
    const event = { type: this.eventType || "message", data: this.data.join("\n"), lastEventId: this.lastEventId };
    this.eventType = "";
    this.data = [];
    this.onEvent(event);
  }
}

// One logical stream: reconnects with Last-Event-ID and exponential backoff (with
// jitter) until stopped, until the server sends `endEvent`, or until it answers 404
// (the endpoint does not exist on this server: the caller falls back to polling).
class EventStream {
  constructor(url, { onEvent, onOpen, onRetry, onNotFound, endEvent }) {
    this.url = url;
    this.handlers = { onEvent, onOpen, onRetry, onNotFound };
    this.endEvent = endEvent;
    this.lastEventId = "";
    this.retryMs = null;
    this.stopped = false;
    this.controller = new AbortController();
    state.abort.signal.addEventListener("abort", () => this.stop(), { once: true });
    this.run();
  }

  stop() {
    this.stopped = true;
    this.controller.abort();
  }

  async run() {
    let delay = RECONNECT_MIN_MS;
    while (!this.stopped) {
      try {
        const headers = { "X-API-KEY": state.key, Accept: "text/event-stream" };
        if (this.lastEventId) headers["Last-Event-ID"] = this.lastEventId;
        const resp = await fetch(this.url, { headers, cache: "no-store", signal: this.controller.signal });
        if (resp.status === 404) {
          this.stopped = true;
          this.handlers.onNotFound?.();
          return;
        }
        if (resp.status === 401) {
          this.stopped = true;
          keyRejected(new ApiError(401, await readProblem(resp)));
          return;
        }
        if (!resp.ok) throw new ApiError(resp.status, await readProblem(resp));
        const type = resp.headers.get("Content-Type") || "";
        if (!type.startsWith("text/event-stream")) throw new Error(`expected an event stream, got ${type}`);
        delay = this.retryMs ?? RECONNECT_MIN_MS; // connected: the backoff starts over
        this.handlers.onOpen?.();
        if (await this.consume(resp.body)) {
          this.stopped = true;
          return;
        }
      } catch (err) {
        if (this.stopped || isAbort(err)) return;
        console.warn(`event stream ${this.url}:`, err);
      }
      if (this.stopped) return;
      const wait = Math.round(delay * (0.8 + Math.random() * 0.4));
      this.handlers.onRetry?.(wait);
      await sleep(wait, this.controller.signal);
      delay = Math.min(delay * 2, RECONNECT_MAX_MS);
    }
  }

  // Reads until the server closes the stream; true when the end event was received.
  async consume(body) {
    const reader = body.getReader();
    const decoder = new TextDecoder();
    let ended = false;
    const parser = new SSEParser((event) => {
      if (this.stopped) return;
      this.lastEventId = event.lastEventId;
      try {
        this.handlers.onEvent(event);
      } catch (err) {
        console.warn("bad event", event, err);
      }
      if (event.type === this.endEvent) ended = true;
    });
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      parser.push(decoder.decode(value, { stream: true }));
      if (parser.retry !== null) this.retryMs = parser.retry;
      if (ended || this.stopped) {
        await reader.cancel().catch(() => {});
        break;
      }
    }
    return ended;
  }
}

function onProgressEvent(event) {
  if (event.type !== "progress" && event.type !== "done") return;
  applyUpdate(JSON.parse(event.data));
}

// --- Key handling -------------------------------------------------------------------

async function useKey(key) {
  stopSession();
  state.key = key;
  state.abort = new AbortController();
  let page;
  try {
    page = await fetchListPage(null);
  } catch (err) {
    if (err.status !== 401) {
      showProblem(err, "Could not load bulk requests");
      state.key = null;
      showKeyForm();
    }
    return;
  }
  sessionStorage.setItem(KEY_STORAGE, key);
  clearAlert();
  showApp();
  state.nextCursor = page.next_cursor;
  for (const req of page.data) applyUpdate(req, { toList: true });
  updateListChrome();
  loadStreams();
  startListLive();
  route({ focus: false });
}

function keyRejected(err) {
  forgetKey("The API key was rejected.");
  showProblem(err, "The API key was rejected");
}

function stopSession() {
  state.abort?.abort();
  clearTimeout(state.listTimer);
  clearTimeout(state.detailTimer);
  clearTimeout(state.errors?.timer);
  currentUpload?.abort();
  state.listStream = state.detailStream = null;
  state.listEventsMissing = state.detailEventsMissing = false;
}

function forgetKey(message) {
  stopSession();
  sessionStorage.removeItem(KEY_STORAGE);
  state.key = null;
  state.requests.clear();
  state.nextCursor = null;
  state.openId = null;
  state.errors = null;
  state.busy.clear();
  listItems.clear();
  $("request-list").replaceChildren();
  $("detail").hidden = true;
  $("content").classList.remove("has-detail");
  $("stream-options").replaceChildren();
  $("upload-result").textContent = "";
  $("stream-result").textContent = "";
  $("upload-progress-box").hidden = true;
  showKeyForm();
  $("key-input").value = "";
  $("key-input").focus();
  announce(message ?? "The API key was forgotten.");
}

function showKeyForm() {
  $("key-section").hidden = false;
  $("app").hidden = true;
  $("session").hidden = true;
}

// Only the public id of a generated `bk_<public id>_<secret>` key is shown, never any of
// the secret; a key of another shape (chosen with BULK_API_KEY, or made before public ids
// existed) may be secret throughout, so none of it is shown.
const GENERATED_KEY = /^(bk_[a-z0-9]{12}_)[A-Za-z0-9_-]{43}$/;

function keyLabel(key) {
  const generated = GENERATED_KEY.exec(key);
  return generated ? `${generated[1]}…` : "(chosen key)";
}

function showApp() {
  $("key-section").hidden = true;
  $("app").hidden = false;
  $("session").hidden = false;
  $("key-prefix").textContent = keyLabel(state.key);
}

function setLive(mode, ms) {
  const text = {
    live: "Live",
    polling: `Updating every ${POLL_LIST_MS / 1000} s`,
    reconnecting: `Reconnecting in ${Math.max(1, Math.round((ms ?? 0) / 1000))} s…`,
    offline: "Server unreachable; retrying",
  }[mode];
  const el = $("live-state");
  if (el.textContent !== text) el.textContent = text;
  el.dataset.mode = mode;
}

// --- The list -----------------------------------------------------------------------

async function fetchListPage(cursor) {
  const query = new URLSearchParams({ limit: String(LIST_PAGE_SIZE) });
  if (cursor) query.set("cursor", cursor);
  return getJson(`/v1/bulk_requests?${query}`);
}

// Newer data only: counters never go down and a terminal state is final, so an older
// response (a slow poll racing an event) must not overwrite a newer one.
function isNewer(current, next) {
  if (TERMINAL.has(current.status) && !TERMINAL.has(next.status)) return false;
  if (next.processed_items < current.processed_items) return false;
  const a = Date.parse(current.last_progress_at ?? "");
  const b = Date.parse(next.last_progress_at ?? "");
  return !(a && b && b < a);
}

// Requests older than the oldest one listed live on pages not loaded yet.
function belongsInList(id) {
  if (listItems.has(id) || state.nextCursor === null) return true;
  let lowest = Infinity;
  for (const listed of listItems.keys()) lowest = Math.min(lowest, listed);
  return id > lowest;
}

function applyUpdate(req, { toList = false } = {}) {
  if (!req || typeof req.id !== "number") return;
  const current = state.requests.get(req.id);
  if (current && !isNewer(current, req)) {
    if (toList && !listItems.has(req.id)) renderListItem(current);
    return;
  }
  state.requests.set(req.id, req);
  const shown = listItems.has(req.id) || req.id === state.openId;
  if (current && current.status !== req.status && shown) announce(statusSentence(req));
  if (toList || belongsInList(req.id)) renderListItem(req);
  if (req.id === state.openId) renderDetail(req);
  else if (state.openId !== null && req.parent_bulk_request_id === state.openId) {
    // A child changed: the open parent's links and its retry button depend on it.
    const open = state.requests.get(state.openId);
    if (open) renderDetail(open);
  }
}

function statusSentence(req) {
  const n = `Request #${req.id}`;
  switch (req.status) {
    case "completed":
      return `${n} completed: ${fmtInt(req.successful_items)} succeeded, ${fmtInt(req.failed_items)} failed, ${fmtInt(req.skipped_items)} skipped.`;
    case "failed":
      return `${n} failed${req.error_message ? `: ${req.error_message}` : "."}`;
    case "cancelled":
      return `${n} was cancelled after ${fmtInt(req.processed_items)} of ${fmtInt(req.total_items)} rows.`;
    case "processing":
      return `${n} is processing.`;
    default:
      return `${n} is ${req.status}.`;
  }
}

function sourceText(req) {
  const source = { bulk_api: "API", csv: "CSV upload", nacha: "NACHA upload", retry: "Retry" }[req.source] ?? req.source;
  const parts = [source];
  if (req.parent_bulk_request_id) parts[0] = `Retry of #${req.parent_bulk_request_id}`;
  if (req.filename) parts.push(req.filename);
  if (req.data_stream_key) parts.push(req.data_stream_key);
  return parts.join(" · ");
}

// A terminal request parses nothing, whatever its payload says (a server before 15.7
// answered `parsing: true` for an upload cancelled before its file was parsed).
const isParsing = (req) => Boolean(req.parsing) && !TERMINAL.has(req.status);

function percentText(req) {
  return isParsing(req) ? "Parsing…" : `${req.progress} %`;
}

function setBadge(el, req) {
  const className = `badge badge-${req.status}`;
  if (el.className !== className) el.className = className;
  setText(el, req.status);
}

function setProgress(el, req) {
  // Unknown size (a file not parsed yet): an indeterminate bar, not a false 0 %.
  if (isParsing(req) || (req.total_items === 0 && !TERMINAL.has(req.status))) {
    el.removeAttribute("value");
    el.setAttribute("aria-valuetext", "Parsing the file");
  } else {
    if (!el.hasAttribute("value") || el.value !== req.progress) el.value = req.progress;
    el.setAttribute("aria-valuetext", `${req.progress} %`);
  }
}

function buildListItem(id) {
  const refs = {
    link: h("a", { href: `#/requests/${id}`, class: "req-link", text: `Request #${id}` }),
    badge: h("span", { class: "badge" }),
    stuck: h("span", { class: "badge badge-stuck", text: "stuck", hidden: true }),
    what: h("p", { class: "req-what" }),
    progress: h("progress", { max: "100", "aria-label": `Progress of request #${id}` }),
    percent: h("span", { class: "progress-text" }),
    counts: h("p", { class: "req-counts" }),
    createdAt: timeSlot(null),
    cancelling: h("span"),
  };
  const li = h(
    "li",
    { class: "req", "data-id": id },
    h("div", { class: "req-head" }, refs.link, h("span", { class: "badges" }, refs.stuck, refs.badge)),
    refs.what,
    h("div", { class: "progress-line" }, refs.progress, refs.percent),
    refs.counts,
    h("p", { class: "req-meta" }, "Created ", refs.createdAt, refs.cancelling),
  );
  return { li, refs };
}

function renderListItem(req) {
  let item = listItems.get(req.id);
  if (!item) {
    item = buildListItem(req.id);
    listItems.set(req.id, item);
    const list = $("request-list");
    let before = null;
    for (const child of list.children) {
      if (Number(child.dataset.id) < req.id) {
        before = child;
        break;
      }
    }
    list.insertBefore(item.li, before);
    updateListChrome();
  }
  const { refs } = item;
  setBadge(refs.badge, req);
  refs.stuck.hidden = !req.stuck;
  setText(refs.what, sourceText(req));
  setProgress(refs.progress, req);
  setText(refs.percent, percentText(req));
  setText(
    refs.counts,
    `${fmtInt(req.processed_items)} of ${fmtInt(req.total_items)} processed · ` +
      `${fmtInt(req.failed_items)} failed · ${fmtInt(req.skipped_items)} skipped`,
  );
  setTime(refs.createdAt, req.created_at);
  setText(refs.cancelling, req.cancellation_requested_at && !TERMINAL.has(req.status) ? " · cancelling…" : "");
  markCurrent(item, req.id === state.openId);
}

function markCurrent(item, current) {
  item.li.classList.toggle("is-open", current);
  if (current) item.refs.link.setAttribute("aria-current", "true");
  else item.refs.link.removeAttribute("aria-current");
}

function updateListChrome() {
  $("list-empty").hidden = listItems.size > 0;
  $("load-more").hidden = state.nextCursor === null;
}

async function loadMore() {
  const button = $("load-more");
  if (!state.nextCursor || !isUsable(button)) return;
  setUsable(button, false);
  const before = listItems.size;
  try {
    const page = await fetchListPage(state.nextCursor);
    for (const req of page.data) applyUpdate(req, { toList: true });
    state.nextCursor = page.next_cursor;
    announce(`Loaded ${page.data.length} more requests.`);
  } catch (err) {
    showProblem(err, "Could not load more requests");
  } finally {
    setUsable(button, true);
    updateListChrome();
    // The button disappears after the last page: keep focus somewhere sensible.
    if (button.hidden && document.activeElement === document.body) {
      const items = [...$("request-list").children];
      items[Math.min(before, items.length - 1)]?.querySelector("a")?.focus();
    }
  }
}

async function refreshFirstPage({ quiet = false } = {}) {
  try {
    const page = await fetchListPage(null);
    let highest = 0;
    for (const id of listItems.keys()) highest = Math.max(highest, id);
    for (const req of page.data) applyUpdate(req, { toList: true });
    // More requests arrived than one page holds: the ones in between are not listed yet.
    const lowestOnPage = page.data.length ? page.data[page.data.length - 1].id : 0;
    if (page.next_cursor && state.nextCursor === null && lowestOnPage > highest + 1) {
      state.nextCursor = page.next_cursor;
    }
    updateListChrome();
    if (state.listEventsMissing) setLive("polling");
    // Polling only refreshes the first page; running requests further down are
    // refreshed one by one (a few: they are rare that far down).
    if (state.listEventsMissing) {
      const onPage = new Set(page.data.map((r) => r.id));
      const running = [...listItems.keys()].filter((id) => !onPage.has(id) && !TERMINAL.has(state.requests.get(id)?.status));
      await Promise.all(running.slice(0, 10).map(async (id) => applyUpdate(await getJson(`/v1/bulk_requests/${id}`))));
    }
  } catch (err) {
    if (isAbort(err) || err.status === 401) return;
    if (quiet && err.status === 0) setLive("offline");
    else if (!quiet) showProblem(err, "Could not refresh the list");
  }
}

function startListLive() {
  if (state.listEventsMissing) return startListPolling();
  state.listStream = new EventStream("/v1/events", {
    onEvent: onProgressEvent,
    onOpen: () => {
      setLive("live");
      // The stream sends changes only, so reload what changed while disconnected, or
      // between the first list load and this subscription (the server subscribes before
      // it answers, so nothing falls between this reload and the events that follow).
      refreshFirstPage({ quiet: true });
    },
    onRetry: (ms) => setLive("reconnecting", ms),
    onNotFound: () => {
      state.listEventsMissing = true;
      startListPolling();
    },
  });
  return undefined;
}

function startListPolling() {
  setLive("polling");
  const signal = state.abort.signal;
  const run = async () => {
    if (signal.aborted) return;
    if (document.visibilityState !== "hidden") await refreshFirstPage({ quiet: true });
    if (!signal.aborted) state.listTimer = setTimeout(run, POLL_LIST_MS);
  };
  state.listTimer = setTimeout(run, POLL_LIST_MS);
}

// --- Detail panel -------------------------------------------------------------------

function route({ focus = true } = {}) {
  const match = /^#\/requests\/([1-9]\d{0,15})$/.exec(location.hash);
  const id = match ? Number(match[1]) : null;
  if (!state.key || id === state.openId) return; // applied once a key is accepted
  const previous = state.openId;
  closeDetail();
  if (id !== null) {
    openDetail(id, { focus });
  } else if (previous !== null && focus) {
    (listItems.get(previous)?.refs.link ?? $("requests-title")).focus();
  }
}

function closeDetail() {
  state.detailStream?.stop();
  state.detailStream = null;
  clearTimeout(state.detailTimer);
  clearTimeout(state.errors?.timer);
  const previous = listItems.get(state.openId);
  if (previous) markCurrent(previous, false);
  state.openId = null;
  state.errors = null;
  $("detail").hidden = true;
  $("content").classList.remove("has-detail");
}

async function openDetail(id, { focus }) {
  state.openId = id;
  state.errors = { id, cursors: [null], index: 0, next: null, count: 0, failedSeen: -1, timer: null };
  $("detail").hidden = false;
  $("content").classList.add("has-detail");
  $("detail-title").textContent = `Bulk request #${id}`;
  resetFamily(id);
  $("row-errors-body").replaceChildren();
  $("row-errors-scroll").hidden = true;
  $("row-errors-empty").hidden = false;
  $("errors-page").textContent = "";
  $("errors-prev").hidden = $("errors-next").hidden = true;
  const item = listItems.get(id);
  if (item) markCurrent(item, true);
  const cached = state.requests.get(id);
  $("detail-loading").hidden = Boolean(cached);
  $("detail-body").hidden = !cached;
  if (cached) renderDetail(cached);
  if (focus) $("detail-title").focus();
  try {
    applyUpdate(await getJson(`/v1/bulk_requests/${id}`));
  } catch (err) {
    if (state.openId !== id || isAbort(err)) return;
    $("detail-loading").hidden = false;
    $("detail-loading").textContent =
      err.status === 404 ? `Bulk request #${id} does not exist (or belongs to another environment).` : "Could not load this request.";
    $("detail-body").hidden = true;
    showProblem(err, `Could not load request #${id}`);
    return;
  }
  if (state.openId !== id) return;
  renderDetail(state.requests.get(id));
  startDetailLive(id);
}

function startDetailLive(id) {
  const req = state.requests.get(id);
  if (!req || TERMINAL.has(req.status)) return;
  if (state.detailEventsMissing) {
    pollDetail(id);
    return;
  }
  state.detailStream = new EventStream(`/v1/bulk_requests/${id}/events`, {
    onEvent: onProgressEvent,
    endEvent: "done",
    onNotFound: () => {
      // The request exists (it was just loaded), so the endpoint is what is missing.
      state.detailEventsMissing = true;
      if (state.openId === id) pollDetail(id);
    },
  });
}

function pollDetail(id) {
  const run = async () => {
    if (state.openId !== id) return;
    try {
      applyUpdate(await getJson(`/v1/bulk_requests/${id}`));
    } catch (err) {
      if (isAbort(err) || err.status === 401) return;
      if (err.status !== 0) {
        showProblem(err, `Could not refresh request #${id}`);
        return;
      }
    }
    const current = state.requests.get(id);
    if (state.openId === id && current && !TERMINAL.has(current.status)) {
      state.detailTimer = setTimeout(run, POLL_DETAIL_MS);
    }
  };
  clearTimeout(state.detailTimer);
  state.detailTimer = setTimeout(run, POLL_DETAIL_MS);
}

function summaryText(req) {
  // Spoken by screen readers (role=status): changes on status and every 10 %, not
  // on every heartbeat.
  switch (req.status) {
    case "pending":
      return isParsing(req) ? "Waiting for a worker to parse the file." : "Waiting for a worker.";
    case "processing":
      if (isParsing(req)) return "Parsing the file.";
      if (req.cancellation_requested_at) return "Cancelling after the current batch.";
      if (req.progress < 10) return "Processing: under 10 % done.";
      return `Processing: at least ${Math.floor(req.progress / 10) * 10} % done.`;
    default:
      return statusSentence(req).replace(/^Request #\d+ /, "").replace(/^./, (c) => c.toUpperCase());
  }
}

const listEntries = new WeakMap(); // <dl> → Map(term → {item, dd})

// Entries are [term, value]: value is text, or {time, age} for a timestamp (with its
// age while the request runs). Patched by term; an entry appears or goes away alone.
function patchList(dl, entries) {
  let byTerm = listEntries.get(dl);
  if (!byTerm) listEntries.set(dl, (byTerm = new Map()));
  const wanted = new Set(entries.map(([term]) => term));
  for (const [term, entry] of byTerm) {
    if (wanted.has(term)) continue;
    entry.item.remove();
    byTerm.delete(term);
  }
  let previous = null;
  for (const [term, value] of entries) {
    let entry = byTerm.get(term);
    if (!entry) {
      const dd = h("dd");
      entry = { item: h("div", { class: "dl-item" }, h("dt", { text: term }), dd), dd };
      dl.insertBefore(entry.item, previous ? previous.nextSibling : dl.firstChild);
      byTerm.set(term, entry);
    }
    setValue(entry.dd, value);
    previous = entry.item;
  }
}

function setValue(dd, value) {
  if (typeof value === "string") {
    setText(dd, value);
    return;
  }
  let slot = dd.querySelector(":scope > .time-slot");
  if (!slot) dd.replaceChildren((slot = timeSlot(null)));
  setTime(slot, value.time);
  let age = dd.querySelector(":scope > .age");
  if (!value.age || !value.time) {
    age?.remove();
    return;
  }
  if (!age) dd.append((age = h("span", { class: "age" }, " (", h("span", { class: "heartbeat-age" }), ")")));
  const since = age.querySelector(".heartbeat-age");
  if (since.dataset.since !== value.time) {
    since.dataset.since = value.time;
    since.textContent = ago(value.time);
  }
}

function renderDetail(req) {
  $("detail-loading").hidden = true;
  $("detail-body").hidden = false;
  setBadge($("detail-badge"), req);
  setText($("detail-summary"), summaryText(req));
  const bar = $("detail-progress");
  setProgress(bar, req);
  bar.setAttribute("aria-label", `Progress of request #${req.id}`);
  setText(
    $("detail-percent"),
    isParsing(req) ? "Parsing…" : `${req.progress} % (${fmtInt(req.processed_items)} of ${fmtInt(req.total_items)} rows)`,
  );

  const stuck = $("detail-stuck");
  stuck.hidden = !req.stuck;
  if (req.stuck) {
    if (!stuck.firstChild) {
      stuck.append(
        h("strong", { text: "Stuck: " }),
        "no heartbeat since ",
        timeSlot(null),
        ". The server requeues a request whose worker has gone and resumes it from its checkpoint.",
      );
    }
    setTime(stuck.querySelector(".time-slot"), req.last_progress_at);
  }

  const cancel = $("cancel-button");
  const cancelling = Boolean(req.cancellation_requested_at) && !TERMINAL.has(req.status);
  setUsable(cancel, CANCELLABLE.has(req.status) && !cancelling && !state.busy.has(`cancel:${req.id}`));
  setText(cancel, cancelling ? "Cancelling…" : "Cancel request");
  // The API refuses a retry while any request of the chain runs or once one completed
  // (SPEC §7 "Chains"); otherwise any member may be retried, the new one continues the chain.
  const retriedAs = chainOf(req).find((r) => r.id !== req.id && (!TERMINAL.has(r.status) || r.status === "completed"));
  setUsable($("retry-button"), RETRYABLE.has(req.status) && !retriedAs && !state.busy.has(`retry:${req.id}`));
  setText(
    $("action-help"),
    retriedAs
      ? `Already retried as request #${retriedAs.id} (${retriedAs.status}); ` +
          (retriedAs.status === "completed" ? "nothing is left to retry." : "retry again once it ends.")
      : "Cancel works while pending or processing; retry once failed or cancelled.",
  );

  patchList($("detail-counters"), [
    ["Total", fmtInt(req.total_items)],
    ["Processed", fmtInt(req.processed_items)],
    ["Successful", fmtInt(req.successful_items)],
    ["Failed", fmtInt(req.failed_items)],
    ["Skipped", fmtInt(req.skipped_items)],
  ]);

  const info = [
    ["Source", sourceText(req)],
    ["On conflict", req.on_conflict ?? "—"],
    ...(req.nacha_options ? [["NACHA relaxations", req.nacha_options.join(", ") || "none"]] : []),
    ["Created", { time: req.created_at }],
    ["Started", { time: req.started_at }],
    ["Completed", { time: req.completed_at }],
    ["Last heartbeat", { time: req.last_progress_at, age: !TERMINAL.has(req.status) }],
  ];
  if (req.cancellation_requested_at) info.push(["Cancellation requested", { time: req.cancellation_requested_at }]);
  if (req.recoveries) info.push(["Recovered after a crash", recoveryText(req)]);
  patchList($("detail-info"), info);

  renderFamily(req);

  const details = req.error_details && typeof req.error_details === "object" ? req.error_details : {};
  const hasDetails = Object.keys(details).length > 0;
  // The recovery log alone is not an error: a resumed request is healthy (shown above).
  const onlyRecoveries = Object.keys(details).every((k) => k === "recoveries");
  $("detail-error").hidden = !req.error_message && onlyRecoveries;
  setText($("detail-error-message"), req.error_message ?? "");
  $("detail-error-details-box").hidden = !hasDetails;
  setText($("detail-error-details"), hasDetails ? JSON.stringify(details, null, 2) : "");

  setUsable($("download-errors"), req.failed_items > 0 || state.errors?.count !== 0);
  scheduleErrorsReload(req);
}

// The retries of a request that this page has seen, oldest first.
function childrenOf(id) {
  return [...state.requests.values()].filter((r) => r.parent_bulk_request_id === id).sort((a, b) => a.id - b.id);
}

// The known members of req's chain of retries: its root and every retry below it.
function chainOf(req) {
  let root = req;
  while (root.parent_bulk_request_id !== null && state.requests.has(root.parent_bulk_request_id)) {
    root = state.requests.get(root.parent_bulk_request_id);
  }
  const members = [];
  const pending = [root];
  while (pending.length) {
    const member = pending.pop();
    members.push(member);
    pending.push(...childrenOf(member.id));
  }
  return members;
}

function recoveryText(req) {
  const times = `${req.recoveries} ${req.recoveries === 1 ? "time" : "times"}`;
  const log = req.error_details?.recoveries;
  const last = Array.isArray(log) ? log[log.length - 1] : null;
  if (!last || typeof last.resumed_from_row !== "number") return times;
  return `${times}; last resumed from row ${fmtInt(last.resumed_from_row)}${last.reason ? ` (${last.reason})` : ""}`;
}

// "Retry of request #4. Retried as request #6 (processing), request #7 (pending)." The
// links stay in place while the children change status (a keyboard user may be on one):
// only the text around them changes, and a new child is inserted without moving the rest.
const family = { id: null, parent: null, retried: null, end: null, children: new Map() };

function resetFamily(id) {
  const p = $("detail-family");
  family.id = id;
  family.parent = h("span");
  family.retried = document.createTextNode("");
  family.end = document.createTextNode("");
  family.children.clear();
  p.replaceChildren(family.parent, family.retried, family.end);
  p.hidden = true;
}

const familyLink = (id) => h("a", { href: `#/requests/${id}`, text: `request #${id}` });

function renderFamily(req) {
  if (family.id !== req.id) resetFamily(req.id);
  const parentId = req.parent_bulk_request_id;
  if (parentId && !family.parent.firstChild) family.parent.append("Retry of ", familyLink(parentId), ". ");
  const children = childrenOf(req.id); // oldest first
  for (const child of children) {
    let entry = family.children.get(child.id);
    if (!entry) {
      entry = { separator: document.createTextNode(""), status: document.createTextNode("") };
      entry.el = h("span", { class: "family-child" }, entry.separator, familyLink(child.id), entry.status);
      const later = [...family.children.keys()].filter((id) => id > child.id);
      const next = later.length ? family.children.get(Math.min(...later)).el : family.end;
      family.end.parentNode.insertBefore(entry.el, next);
      family.children.set(child.id, entry);
    }
    const status = ` (${child.status})`;
    if (entry.status.data !== status) entry.status.data = status;
  }
  children.forEach((child, i) => {
    const separator = i === 0 ? "" : ", ";
    const entry = family.children.get(child.id);
    if (entry.separator.data !== separator) entry.separator.data = separator;
  });
  const retried = children.length ? "Retried as " : "";
  if (family.retried.data !== retried) family.retried.data = retried;
  const end = children.length ? "." : "";
  if (family.end.data !== end) family.end.data = end;
  $("detail-family").hidden = !parentId && children.length === 0;
}

// --- Row errors ---------------------------------------------------------------------

function scheduleErrorsReload(req) {
  const errors = state.errors;
  if (!errors || errors.id !== req.id || errors.failedSeen === req.failed_items) return;
  // New failures only show up on the first page while it is not full yet.
  if (errors.failedSeen !== -1 && (errors.index !== 0 || errors.count >= ERRORS_PAGE_SIZE)) return;
  const first = errors.failedSeen === -1;
  errors.failedSeen = req.failed_items;
  if (errors.timer !== null) return;
  errors.timer = setTimeout(
    () => {
      errors.timer = null;
      if (state.errors === errors && errors.index === 0) loadErrors(0);
    },
    first ? 0 : 1000,
  );
}

async function loadErrors(index) {
  const errors = state.errors;
  if (!errors) return;
  const query = new URLSearchParams({ limit: String(ERRORS_PAGE_SIZE) });
  if (errors.cursors[index]) query.set("cursor", errors.cursors[index]);
  let page;
  try {
    page = await getJson(`/v1/bulk_requests/${errors.id}/errors?${query}`);
  } catch (err) {
    if (state.errors === errors) showProblem(err, "Could not load row errors");
    return;
  }
  if (state.errors !== errors) return;
  errors.index = index;
  errors.next = page.next_cursor;
  errors.count = page.data.length;
  errors.cursors.length = index + 1;
  errors.cursors.push(page.next_cursor);
  patchErrorRows($("row-errors-body"), page.data);
  const any = page.data.length > 0;
  $("row-errors-scroll").hidden = !any;
  $("row-errors-empty").hidden = any || index > 0;
  $("errors-prev").hidden = index === 0;
  $("errors-next").hidden = !page.next_cursor;
  const first = index * ERRORS_PAGE_SIZE + 1;
  setText($("errors-page"), any ? `Errors ${fmtInt(first)}–${fmtInt(first + page.data.length - 1)}` : "");
  const req = state.requests.get(errors.id);
  setUsable($("download-errors"), any || index > 0 || (req?.failed_items ?? 0) > 0);
}

function errorRow(e) {
  return h(
    "tr",
    { "data-row": e.row },
    h("td", { class: "num", text: String(e.row ?? "") }),
    h("td", { class: "num", text: e.line == null ? "" : String(e.line) }),
    h("td", { text: e.external_id ?? "" }),
    h("td", {}, h("code", { text: e.code ?? "" })),
    h("td", { text: e.message ?? "" }),
    h("td", {}, e.pointer ? h("code", { text: e.pointer }) : ""),
  );
}

// A row error never changes once recorded, so a reloaded page keeps the rows it already
// shows (both lists are in row order) and only inserts the new ones, or drops the ones
// no longer on the page.
function patchErrorRows(tbody, errors) {
  const shown = new Map([...tbody.children].map((tr) => [tr.dataset.row, tr]));
  const wanted = new Set(errors.map((e) => String(e.row)));
  for (const [row, tr] of shown) if (!wanted.has(row)) tr.remove();
  let next = tbody.firstElementChild;
  for (const e of errors) {
    const tr = shown.get(String(e.row));
    if (tr && tr === next) next = tr.nextElementSibling;
    else if (!tr) tbody.insertBefore(errorRow(e), next);
  }
}

async function downloadErrors() {
  const id = state.openId;
  if (id === null) return;
  const button = $("download-errors");
  if (!isUsable(button)) return;
  setUsable(button, false);
  try {
    // The endpoint needs the X-API-KEY header, so a plain link cannot download it (and
    // the key must never go into a URL): fetch it, then save the blob under its name.
    const resp = await request(`/v1/bulk_requests/${id}/errors?format=csv`, { accept: "text/csv" });
    const blob = await resp.blob();
    const disposition = resp.headers.get("Content-Disposition") ?? "";
    const name = /filename="?([^";]+)"?/.exec(disposition)?.[1] ?? `bulk-request-${id}-errors.csv`;
    const url = URL.createObjectURL(blob);
    const a = h("a", { href: url, download: name, hidden: true });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 30000);
    announce(`Downloaded ${name}.`);
  } catch (err) {
    showProblem(err, "Could not download the row errors");
  } finally {
    setUsable(button, true);
  }
}

// --- Cancel and retry ---------------------------------------------------------------

async function runAction(kind) {
  const id = state.openId;
  if (id === null || !isUsable($(`${kind}-button`))) return;
  const busyKey = `${kind}:${id}`;
  if (state.busy.has(busyKey)) return;
  state.busy.add(busyKey);
  const before = state.requests.get(id);
  if (before) renderDetail(before);
  try {
    const resp = await request(`/v1/bulk_requests/${id}/${kind}`, { method: "POST" });
    const body = await resp.json();
    if (kind === "cancel") {
      applyUpdate(body);
      announce(
        resp.status === 202
          ? `Cancellation of request #${id} requested; it stops after the current batch.`
          : `Request #${id} is cancelled.`,
      );
    } else {
      applyUpdate(body, { toList: true });
      announce(`Retry created as request #${body.id}.`);
    }
  } catch (err) {
    showProblem(err, `Could not ${kind} request #${id}`);
  } finally {
    state.busy.delete(busyKey);
    const now = state.requests.get(id);
    if (now && state.openId === id) renderDetail(now);
  }
}

// --- Uploads ------------------------------------------------------------------------

function showChosenFile() {
  const file = $("file-input").files[0];
  $("file-name").textContent = file ? `${file.name} (${fmtBytes(file.size)})` : "No file chosen";
  $("drop-zone").classList.toggle("has-file", Boolean(file));
}

function uploadFile(file, fields, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    currentUpload = xhr;
    xhr.open("POST", "/v1/uploads");
    xhr.setRequestHeader("X-API-KEY", state.key);
    xhr.setRequestHeader("Accept", "application/json");
    xhr.upload.addEventListener("progress", (e) => onProgress(e.loaded, e.lengthComputable ? e.total : file.size));
    xhr.addEventListener("load", () => {
      let body = null;
      try {
        body = JSON.parse(xhr.responseText);
      } catch {
        body = null;
      }
      if (xhr.status >= 200 && xhr.status < 300 && body) resolve(body);
      else {
        const problem = body && typeof body === "object" ? body : { title: `HTTP ${xhr.status}`, detail: xhr.responseText.slice(0, 300) };
        const err = new ApiError(xhr.status, problem);
        if (xhr.status === 401) keyRejected(err);
        reject(err);
      }
    });
    xhr.addEventListener("error", () => reject(new ApiError(0, NETWORK_PROBLEM)));
    xhr.addEventListener("abort", () => reject(new DOMException("upload stopped", "AbortError")));
    xhr.addEventListener("loadend", () => {
      if (currentUpload === xhr) currentUpload = null;
    });
    const form = new FormData();
    // Text fields first: the server reads parts in order and the file is the big one.
    for (const [name, value] of Object.entries(fields)) if (value) form.append(name, value);
    form.append("file", file, file.name);
    xhr.send(form);
  });
}

async function submitUpload(event) {
  event.preventDefault();
  if (currentUpload) return;
  const input = $("file-input");
  const file = input.files[0];
  if (!file) {
    showProblem({ title: "Choose a file first", detail: "Drop a CSV or NACHA file on the drop zone, or use the file chooser." });
    input.focus();
    return;
  }
  clearAlert();
  const button = $("upload-button");
  const bar = $("upload-progress");
  const text = $("upload-progress-text");
  const result = $("upload-result");
  button.disabled = true;
  $("upload-abort").hidden = false;
  $("upload-progress-box").hidden = false;
  bar.value = 0;
  text.textContent = `0 of ${fmtBytes(file.size)}`;
  result.textContent = `Uploading ${file.name}…`;
  try {
    const summary = await uploadFile(
      file,
      {
        data_stream_key: $("upload-stream").value.trim(),
        on_conflict: $("upload-conflict").value,
        format: $("upload-format").value,
        nacha_options: [...document.querySelectorAll('input[name="nacha-option"]:checked')].map((box) => box.value).join(","),
      },
      (loaded, total) => {
        const pct = total ? Math.floor((loaded * 100) / total) : 0;
        bar.value = pct;
        text.textContent = loaded >= total ? "Sent; waiting for the server…" : `${fmtBytes(loaded)} of ${fmtBytes(total)} (${pct} %)`;
      },
    );
    bar.value = 100;
    text.textContent = `${fmtBytes(file.size)} sent`;
    result.replaceChildren(
      `Uploaded ${file.name} as `,
      h("a", { href: `#/requests/${summary.id}`, text: `request #${summary.id}` }),
      summary.status === "pending" ? "; it is queued." : ".",
    );
    input.value = "";
    // Relaxations are chosen per file: the next file starts strict again.
    for (const box of document.querySelectorAll('input[name="nacha-option"]')) box.checked = false;
    showChosenFile();
    try {
      applyUpdate(await getJson(`/v1/bulk_requests/${summary.id}`), { toList: true });
    } catch (err) {
      if (!isAbort(err)) showProblem(err, `Could not load request #${summary.id}`);
    }
  } catch (err) {
    if (isAbort(err)) {
      result.textContent = "Upload stopped.";
      $("upload-progress-box").hidden = true;
    } else {
      result.textContent = "";
      showProblem(err, `Upload of ${file.name} failed`);
    }
  } finally {
    button.disabled = false;
    $("upload-abort").hidden = true;
  }
}

function wireDropZone() {
  const zone = $("drop-zone");
  const input = $("file-input");
  const hasFiles = (e) => [...(e.dataTransfer?.types ?? [])].includes("Files");
  for (const type of ["dragenter", "dragover"]) {
    zone.addEventListener(type, (e) => {
      if (!hasFiles(e)) return;
      e.preventDefault();
      e.dataTransfer.dropEffect = "copy";
      zone.classList.add("is-dragover");
    });
  }
  zone.addEventListener("dragleave", (e) => {
    if (!zone.contains(e.relatedTarget)) zone.classList.remove("is-dragover");
  });
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("is-dragover");
    const file = e.dataTransfer?.files?.[0];
    if (!file) return;
    const transfer = new DataTransfer();
    transfer.items.add(file);
    input.files = transfer.files;
    showChosenFile();
    announce(`Chosen file ${file.name}.`);
  });
  // A file dropped beside the zone must not make the browser navigate away to it.
  for (const type of ["dragover", "drop"]) {
    window.addEventListener(type, (e) => {
      if (hasFiles(e) && !zone.contains(e.target)) e.preventDefault();
    });
  }
  input.addEventListener("change", showChosenFile);
}

// --- Data streams -------------------------------------------------------------------

async function loadStreams() {
  try {
    const page = await getJson("/v1/data_streams?limit=200");
    $("stream-options").replaceChildren(
      ...page.data.map((s) => h("option", { value: s.key, text: s.name ? `${s.name} (${s.currency})` : s.currency })),
    );
  } catch (err) {
    if (!isAbort(err) && err.status !== 401) showProblem(err, "Could not load data streams");
  }
}

async function submitStream(event) {
  event.preventDefault();
  const key = $("stream-key").value.trim();
  const name = $("stream-name").value.trim();
  const currency = $("stream-currency").value.trim().toUpperCase();
  if (!key) {
    showProblem({ title: "A data stream needs a key", detail: "For example checking or payroll-2024." });
    $("stream-key").focus();
    return;
  }
  const body = { key };
  if (name) body.name = name;
  if (currency) body.currency = currency;
  try {
    const stream = await (await request("/v1/data_streams", { method: "POST", body })).json();
    clearAlert();
    $("stream-result").textContent = `Created data stream ${stream.key} (${stream.currency}).`;
    $("stream-key").value = "";
    $("stream-name").value = "";
    if (!$("upload-stream").value) $("upload-stream").value = stream.key;
    loadStreams();
  } catch (err) {
    $("stream-result").textContent = "";
    showProblem(err, "Could not create the data stream");
  }
}

// --- Start-up -----------------------------------------------------------------------

function tick() {
  for (const el of document.querySelectorAll("[data-since]")) el.textContent = ago(el.dataset.since);
}

function init() {
  $("key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const key = $("key-input").value.trim();
    if (!key) {
      showProblem({ title: "Enter an API key", detail: "Paste the key printed by the server or by `run.py keys create`." });
      $("key-input").focus();
      return;
    }
    useKey(key);
  });
  $("forget-key").addEventListener("click", () => forgetKey());
  $("load-more").addEventListener("click", loadMore);
  $("refresh-list").addEventListener("click", () => {
    refreshFirstPage();
    loadStreams();
  });
  $("cancel-button").addEventListener("click", () => runAction("cancel"));
  $("retry-button").addEventListener("click", () => runAction("retry"));
  $("download-errors").addEventListener("click", downloadErrors);
  $("errors-next").addEventListener("click", () => state.errors && loadErrors(state.errors.index + 1));
  $("errors-prev").addEventListener("click", () => state.errors && loadErrors(Math.max(0, state.errors.index - 1)));
  $("upload-form").addEventListener("submit", submitUpload);
  $("upload-abort").addEventListener("click", () => currentUpload?.abort());
  $("stream-form").addEventListener("submit", submitStream);
  wireDropZone();
  window.addEventListener("hashchange", () => route());
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && state.openId !== null && $("detail").contains(e.target)) location.hash = "#/";
  });
  setInterval(tick, 1000);

  const saved = sessionStorage.getItem(KEY_STORAGE);
  if (saved) useKey(saved);
  else showKeyForm();
}

init();
