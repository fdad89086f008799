// @ts-check
// The list of bulk requests: pages, live updates (events or polling) and how one
// request is summed up, which the detail panel shares.
import { $, announce, fmtInt, h, isAbort, isUsable, setText, setTime, setUsable, timeSlot } from "./dom.js";
import { getJson, showProblem } from "./api.js";
import { EventStream } from "./sse.js";
import { LIST_PAGE_SIZE, POLL_LIST_MS, TERMINAL, listItems, state } from "./state.js";
import { renderDetail, refreshIfFamily } from "./detail.js";

/** @typedef {import("./types.js").BulkRequest} BulkRequest */

export function onProgressEvent(event) {
  if (event.type !== "progress" && event.type !== "done") return;
  applyUpdate(JSON.parse(event.data));
}

export function setLive(mode, ms) {
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

export async function fetchListPage(cursor) {
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

/**
 * @param {BulkRequest} req
 * @param {{ toList?: boolean }} [options]
 */
export function applyUpdate(req, { toList = false } = {}) {
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
  else if (state.openId !== null) refreshIfFamily(req, current);
}

/** @param {BulkRequest} req */
export function statusSentence(req) {
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

/** @param {BulkRequest} req */
export function sourceText(req) {
  const source = { bulk_api: "API", csv: "CSV upload", nacha: "NACHA upload", retry: "Retry" }[req.source] ?? req.source;
  const parts = [source];
  if (req.parent_bulk_request_id) parts[0] = `Retry of #${req.parent_bulk_request_id}`;
  if (req.filename) parts.push(req.filename);
  if (req.data_stream_key) parts.push(req.data_stream_key);
  return parts.join(" · ");
}

// A terminal request parses nothing, whatever its payload says (a server before 15.7
// answered `parsing: true` for an upload cancelled before its file was parsed).
/** @param {BulkRequest} req */
export const isParsing = (req) => Boolean(req.parsing) && !TERMINAL.has(req.status);

/** @param {BulkRequest} req */
export function percentText(req) {
  return isParsing(req) ? "Parsing…" : `${req.progress} %`;
}

export function setBadge(el, req) {
  // badge-status: the status badge, beside the stuck and scheduled ones.
  const className = `badge badge-status badge-${req.status}`;
  if (el.className !== className) el.className = className;
  setText(el, req.status);
}

export function setProgress(el, req) {
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
    scheduled: h("span", { class: "badge badge-scheduled", text: "scheduled", hidden: true }),
    what: h("p", { class: "req-what" }),
    progress: h("progress", { max: "100", "aria-label": `Progress of request #${id}` }),
    percent: h("span", { class: "progress-text" }),
    counts: h("p", { class: "req-counts" }),
    createdAt: timeSlot(null),
    runs: h("span", { hidden: true }),
    runAt: timeSlot(null),
    cancelling: h("span"),
  };
  refs.runs.append(" · runs ", refs.runAt);
  const li = h(
    "li",
    { class: "req", "data-id": id },
    h("div", { class: "req-head" }, refs.link, h("span", { class: "badges" }, refs.stuck, refs.scheduled, refs.badge)),
    refs.what,
    h("div", { class: "progress-line" }, refs.progress, refs.percent),
    refs.counts,
    h("p", { class: "req-meta" }, "Created ", refs.createdAt, refs.runs, refs.cancelling),
  );
  return { li, refs };
}

/** @param {BulkRequest} req */
function renderListItem(req) {
  let item = listItems.get(req.id);
  if (!item) {
    item = buildListItem(req.id);
    listItems.set(req.id, item);
    const list = $("request-list");
    let before = null;
    for (const child of /** @type {HTMLCollectionOf<HTMLElement>} */ (list.children)) {
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
  // The schedule (SPEC §12): the badge while it waits, its time while it has not started.
  refs.scheduled.hidden = !req.scheduled;
  refs.runs.hidden = !req.run_at || Boolean(req.started_at) || TERMINAL.has(req.status);
  setTime(refs.runAt, req.run_at);
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

export function markCurrent(item, current) {
  item.li.classList.toggle("is-open", current);
  if (current) item.refs.link.setAttribute("aria-current", "true");
  else item.refs.link.removeAttribute("aria-current");
}

export function updateListChrome() {
  $("list-empty").hidden = listItems.size > 0;
  $("load-more").hidden = state.nextCursor === null;
}

export async function loadMore() {
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

export async function refreshFirstPage({ quiet = false } = {}) {
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

export function startListLive() {
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
