// @ts-check
// The detail panel of the open request: its fields, its chain of retries, cancel and
// retry (offered as the API's can_cancel / can_retry say), live while it runs.
import { $, ago, announce, fmtInt, h, isAbort, setText, setTime, setUsable, isUsable, timeSlot } from "./dom.js";
import { getJson, request, showProblem } from "./api.js";
import { EventStream } from "./sse.js";
import { FAMILY_REFRESH_MS, POLL_DETAIL_MS, TERMINAL, listItems, state } from "./state.js";
import { applyUpdate, isParsing, markCurrent, onProgressEvent, setBadge, setProgress, sourceText, statusSentence } from "./list.js";
import { scheduleErrorsReload } from "./row-errors.js";

/** @typedef {import("./types.js").BulkRequest} BulkRequest */

// --- Detail panel -------------------------------------------------------------------

export function route({ focus = true } = {}) {
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

/** @param {BulkRequest} req */
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

/** @param {BulkRequest} req */
export function renderDetail(req) {
  $("detail-loading").hidden = true;
  $("detail-body").hidden = false;
  setBadge($("detail-badge"), req);
  $("detail-scheduled").hidden = !req.scheduled;
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

  // What the API would accept now is the API's to say (can_cancel / can_retry, SPEC §7):
  // the page only explains why a button is off.
  const cancel = $("cancel-button");
  const cancelling = Boolean(req.cancellation_requested_at) && !TERMINAL.has(req.status);
  setUsable(cancel, req.can_cancel && !state.busy.has(`cancel:${req.id}`));
  setText(cancel, cancelling ? "Cancelling…" : "Cancel request");
  setUsable($("retry-button"), req.can_retry && !state.busy.has(`retry:${req.id}`));
  const retriedAs = req.can_retry ? null : latestRetryOf(req);
  setText(
    $("action-help"),
    retriedAs
      ? `Already retried as request #${retriedAs.id} (${retriedAs.status}); ` +
          (TERMINAL.has(retriedAs.status) ? "nothing is left to retry." : "retry again once it ends.")
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
    ["Mode", req.mode === "atomic" ? "atomic (all rows or none)" : "partial"],
    ...(req.nacha_options ? [["NACHA relaxations", req.nacha_options.join(", ") || "none"]] : []),
    ["Created", { time: req.created_at }],
    ...(req.run_at ? [["Scheduled for", { time: req.run_at }]] : []),
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

/**
 * The newest retry below req that this page has seen (retries of a chain hang off its
 * latest member, so the descendants form a line), or null.
 * @param {BulkRequest} req
 * @returns {BulkRequest | null}
 */
function latestRetryOf(req) {
  let latest = null;
  for (let children = childrenOf(req.id); children.length; children = childrenOf(latest.id)) {
    latest = children[children.length - 1];
  }
  return latest;
}

/**
 * The id of the oldest known member of req's chain (or of the parent not loaded yet).
 * @param {BulkRequest} req
 */
function rootIdOf(req) {
  let member = req;
  while (member.parent_bulk_request_id !== null) {
    const parent = state.requests.get(member.parent_bulk_request_id);
    if (!parent) return member.parent_bulk_request_id;
    member = parent;
  }
  return member.id;
}

let familyTimer = null;

/**
 * Another member of the open request's chain changed. Its family links are redrawn; and
 * when a member appeared or changed status, the open request is read again: its
 * can_retry depends on the whole chain, but the server sends an event only for the
 * member that changed (server/openapi.json, `can_retry`).
 * @param {BulkRequest} req the member as just received
 * @param {BulkRequest | undefined} previous what the page had of it before
 */
export function refreshIfFamily(req, previous) {
  const open = state.requests.get(state.openId);
  if (!open || rootIdOf(req) !== rootIdOf(open)) return;
  renderDetail(open);
  if (previous && previous.status === req.status) return;
  const id = open.id;
  clearTimeout(familyTimer);
  familyTimer = setTimeout(async () => {
    if (state.openId !== id) return;
    try {
      applyUpdate(await getJson(`/v1/bulk_requests/${id}`));
    } catch (err) {
      if (!isAbort(err) && err.status !== 401 && state.openId === id) showProblem(err, `Could not refresh request #${id}`);
    }
  }, FAMILY_REFRESH_MS);
}

/** @param {BulkRequest} req */
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

/** @param {BulkRequest} req */
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

// --- Cancel and retry ---------------------------------------------------------------

export async function runAction(kind) {
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
      // The retried request may not be retried again now (its chain has a live member):
      // read its can_retry before the button is offered again (a failure here is
      // repaired by refreshIfFamily's read).
      const fresh = await getJson(`/v1/bulk_requests/${id}`).catch(() => null);
      if (fresh) applyUpdate(fresh);
    }
  } catch (err) {
    showProblem(err, `Could not ${kind} request #${id}`);
  } finally {
    state.busy.delete(busyKey);
    const now = state.requests.get(id);
    if (now && state.openId === id) renderDetail(now);
  }
}
