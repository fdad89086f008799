// @ts-check
// The row-errors table of the open request: paged, patched in place, downloadable as CSV.
import { $, announce, fmtInt, h, isUsable, setText, setUsable } from "./dom.js";
import { getJson, request, showProblem } from "./api.js";
import { ERRORS_PAGE_SIZE, state } from "./state.js";

// --- Row errors ---------------------------------------------------------------------

export function scheduleErrorsReload(req) {
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

export async function loadErrors(index) {
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

export async function downloadErrors() {
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
