// @ts-check
// DOM and formatting helpers: building elements, patching them in place, numbers,
// sizes and times as people read them. Nothing here knows about bulk requests.

/**
 * The element of index.html with this id (a missing one is a bug of the page).
 * @param {string} id
 * @returns {HTMLElement}
 */
export function $(id) {
  const el = document.getElementById(id);
  if (!el) throw new Error(`#${id} is missing from index.html`);
  return el;
}

/** @param {string} id */
export const $input = (id) => /** @type {HTMLInputElement} */ ($(id));
/** @param {string} id */
export const $select = (id) => /** @type {HTMLSelectElement} */ ($(id));
/** @param {string} id */
export const $button = (id) => /** @type {HTMLButtonElement} */ ($(id));
/** @param {string} id */
export const $progress = (id) => /** @type {HTMLProgressElement} */ ($(id));

// --- Small helpers ----------------------------------------------------------------

export function h(tag, attrs = {}, ...children) {
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

export const isAbort = (err) => err?.name === "AbortError";
export const fmtInt = (n) => (typeof n === "number" ? n.toLocaleString("en-US") : "—");

export function fmtBytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  if (n < 1024 ** 3) return `${(n / 1024 ** 2).toFixed(1)} MiB`;
  return `${(n / 1024 ** 3).toFixed(2)} GiB`;
}

export function fmtTime(iso) {
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? iso : date.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "medium" });
}

export function timeEl(iso) {
  if (!iso) return h("span", { class: "muted", text: "—" });
  return h("time", { datetime: iso, title: iso, text: fmtTime(iso) });
}

// --- Patching, not rebuilding ---------------------------------------------------------
// Live updates arrive many times a second. They change text and attributes of elements
// that stay in place: a rebuilt element would drop keyboard focus (a focused element that
// is removed, moved or disabled leaves focus on the page body), a screen reader's place
// and any text selection.

export function setText(el, text) {
  if (el.textContent !== text) el.textContent = text;
}

// A timestamp shown in a `.time-slot` span: its <time> element is updated in place.
export function timeSlot(iso) {
  const slot = h("span", { class: "time-slot" });
  setTime(slot, iso);
  return slot;
}

export function setTime(slot, iso) {
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
export function setUsable(button, usable) {
  if (usable) button.removeAttribute("aria-disabled");
  else button.setAttribute("aria-disabled", "true");
}

export const isUsable = (button) => button.getAttribute("aria-disabled") !== "true";

export function ago(iso) {
  const seconds = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
  if (seconds < 60) return `${seconds} s ago`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ${seconds % 60} s ago`;
  return `${Math.floor(seconds / 3600)} h ${Math.floor((seconds % 3600) / 60)} min ago`;
}

export function sleep(ms, signal) {
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
export function announce(text) {
  const el = $("announcer");
  el.textContent = "";
  clearTimeout(announceTimer);
  announceTimer = setTimeout(() => {
    el.textContent = text;
  }, 60);
}
