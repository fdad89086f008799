// @ts-check
// The upload form (CSV / NACHA files, with progress) and the data-stream form.
import { $, $button, $input, $progress, $select, announce, fmtBytes, h, isAbort } from "./dom.js";
import { ApiError, NETWORK_PROBLEM, clearAlert, getJson, keyRejected, request, showProblem } from "./api.js";
import { state } from "./state.js";
import { applyUpdate } from "./list.js";
import { clearPreview, csvFields, showPreview } from "./csv-preview.js";

// --- Uploads ------------------------------------------------------------------------

function showChosenFile() {
  const file = $input("file-input").files[0];
  $("file-name").textContent = file ? `${file.name} (${fmtBytes(file.size)})` : "No file chosen";
  $("drop-zone").classList.toggle("has-file", Boolean(file));
  previewChosenFile();
}

function previewChosenFile() {
  showPreview($input("file-input").files[0]).catch((err) => showProblem({ title: "Could not read the file", detail: String(err) }));
}

/**
 * A datetime-local value ("2026-12-24T09:00" or with seconds) as RFC 3339 with this
 * browser's UTC offset at that date ("2026-12-24T09:00:00+01:00"), which the API needs
 * (SPEC §12: a time without an offset names no instant). "" for an empty field.
 * @param {string} value
 */
export function runAtFromLocal(value) {
  if (!value) return "";
  const withSeconds = value.length === 16 ? `${value}:00` : value;
  const local = new Date(withSeconds); // a date-time without offset is local time
  if (Number.isNaN(local.getTime())) return value; // the server names what is wrong
  const minutes = -local.getTimezoneOffset();
  const sign = minutes < 0 ? "-" : "+";
  const abs = Math.abs(minutes);
  const pad = (/** @type {number} */ n) => String(n).padStart(2, "0");
  return `${withSeconds}${sign}${pad(Math.floor(abs / 60))}:${pad(abs % 60)}`;
}

function uploadFile(file, fields, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    state.upload = xhr;
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
      if (state.upload === xhr) state.upload = null;
    });
    const form = new FormData();
    // Text fields first: the server reads parts in order and the file is the big one.
    for (const [name, value] of Object.entries(fields)) if (value) form.append(name, value);
    form.append("file", file, file.name);
    xhr.send(form);
  });
}

export async function submitUpload(event) {
  event.preventDefault();
  if (state.upload) return;
  const input = $input("file-input");
  const file = input.files[0];
  if (!file) {
    showProblem({ title: "Choose a file first", detail: "Drop a CSV or NACHA file on the drop zone, or use the file chooser." });
    input.focus();
    return;
  }
  clearAlert();
  const button = $button("upload-button");
  const bar = $progress("upload-progress");
  const text = $("upload-progress-text");
  const result = $("upload-result");
  button.disabled = true;
  $("upload-abort").hidden = false;
  $("upload-progress-box").hidden = false;
  bar.value = 0;
  text.textContent = `0 of ${fmtBytes(file.size)}`;
  result.textContent = `Uploading ${file.name}…`;
  const runAt = $input("upload-run-at").value;
  try {
    const summary = await uploadFile(
      file,
      {
        data_stream_key: $input("upload-stream").value.trim(),
        on_conflict: $select("upload-conflict").value,
        mode: $select("upload-mode").value,
        format: $select("upload-format").value,
        run_at: runAtFromLocal($input("upload-run-at").value),
        nacha_options: [...document.querySelectorAll(/** @type {"input"} */ ('input[name="nacha-option"]:checked'))].map((box) => box.value).join(","),
        ...csvFields(),
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
      summary.status === "pending" ? (runAt ? "; it is scheduled." : "; it is queued.") : ".",
    );
    input.value = "";
    clearPreview();
    $input("upload-run-at").value = "";
    // Relaxations are chosen per file: the next file starts strict again.
    for (const box of document.querySelectorAll(/** @type {"input"} */ ('input[name="nacha-option"]'))) box.checked = false;
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

export function wireDropZone() {
  const zone = $("drop-zone");
  const input = $input("file-input");
  /** @param {DragEvent} e */
  const hasFiles = (e) => [...(e.dataTransfer?.types ?? [])].includes("Files");
  for (const type of /** @type {const} */ (["dragenter", "dragover"])) {
    zone.addEventListener(type, (e) => {
      if (!hasFiles(e)) return;
      e.preventDefault();
      e.dataTransfer.dropEffect = "copy";
      zone.classList.add("is-dragover");
    });
  }
  zone.addEventListener("dragleave", (e) => {
    if (!zone.contains(/** @type {Node | null} */ (e.relatedTarget))) zone.classList.remove("is-dragover");
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
  for (const type of /** @type {const} */ (["dragover", "drop"])) {
    window.addEventListener(type, (e) => {
      if (hasFiles(e) && !zone.contains(/** @type {Node | null} */ (e.target))) e.preventDefault();
    });
  }
  input.addEventListener("change", showChosenFile);
  // A chosen delimiter or format changes how the file reads: read it again.
  $("csv-delimiter").addEventListener("change", previewChosenFile);
  $("upload-format").addEventListener("change", previewChosenFile);
}

// --- Data streams -------------------------------------------------------------------

export async function loadStreams() {
  try {
    const page = await getJson("/v1/data_streams?limit=200");
    $("stream-options").replaceChildren(
      ...page.data.map((s) => h("option", { value: s.key, text: s.name ? `${s.name} (${s.currency})` : s.currency })),
    );
  } catch (err) {
    if (!isAbort(err) && err.status !== 401) showProblem(err, "Could not load data streams");
  }
}

export async function submitStream(event) {
  event.preventDefault();
  const key = $input("stream-key").value.trim();
  const name = $input("stream-name").value.trim();
  const currency = $input("stream-currency").value.trim().toUpperCase();
  if (!key) {
    showProblem({ title: "A data stream needs a key", detail: "For example checking or payroll-2024." });
    $input("stream-key").focus();
    return;
  }
  const body = { key };
  if (name) body.name = name;
  if (currency) body.currency = currency;
  try {
    const stream = await (await request("/v1/data_streams", { method: "POST", body })).json();
    clearAlert();
    $("stream-result").textContent = `Created data stream ${stream.key} (${stream.currency}).`;
    $input("stream-key").value = "";
    $input("stream-name").value = "";
    if (!$input("upload-stream").value) $input("upload-stream").value = stream.key;
    loadStreams();
  } catch (err) {
    $("stream-result").textContent = "";
    showProblem(err, "Could not create the data stream");
  }
}
