// @ts-check
// The CSV preview of the upload form (SPEC §15): the chosen file's first rows, read in
// the browser, with a target per column (guessed from its name), the date format, the
// decimal separator and the delimiter. `csvFields()` turns the choices into the
// upload's form fields; the server checks them again.
import { $, $select, h } from "./dom.js";

// The first bytes are enough for a header and a few rows; a row cut at the end is dropped.
const PREVIEW_BYTES = 16 * 1024;
const PREVIEW_ROWS = 5;
const DELIMITERS = { ",": ",", ";": ";", tab: "\t", "|": "|" };
const RECORD_TARGETS = ["date", "amount", "currency", "description", "external_id", "data_stream_key"];

// Header words → target, tried in this order; the first column matching a target gets it.
/** @type {[string, RegExp][]} */
const GUESSES = [
  ["debit", /^(debit|debits|withdrawals?|soll|lastschrift|outflow|paid out)$/],
  ["credit", /^(credit|credits|deposits?|haben|gutschrift|inflow|paid in)$/],
  ["date", /(^date$|posting date|booking date|transaction date|^datum$|buchungstag|buchungsdatum|^fecha|^data$)/],
  ["amount", /^(amount|value|betrag|montant|importe|sum|amount \(.*\))$/],
  ["description", /(description|memo|details|narrative|verwendungszweck|payee|^text$|libell)/],
  ["currency", /^(currency|ccy|währung|waehrung|devise|moneda)$/],
  ["external_id", /^(external[ _]?id|ref|reference|referenz|transaction id|id|fitid|check or slip #)$/],
];

/** @type {{ header: string[], rows: string[][] } | null} */
let preview = null;

/** The delimiter of a header line, as the server detects it: the most frequent outside quotes. */
export function detectDelimiter(line) {
  const unquoted = line.split('"').filter((_, i) => i % 2 === 0).join("");
  let best = ",";
  let most = 0;
  for (const char of [",", ";", "\t", "|"]) {
    const count = unquoted.split(char).length - 1;
    if (count > most) [best, most] = [char, count];
  }
  return best;
}

/** CSV text → rows of cells (quotes, doubled quotes and newlines inside quotes). */
export function parseCsv(text, delimiter) {
  const rows = [];
  let row = [];
  let cell = "";
  let quoted = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (quoted) {
      if (c === '"' && text[i + 1] === '"') {
        cell += '"';
        i++;
      } else if (c === '"') quoted = false;
      else cell += c;
    } else if (c === '"') quoted = true;
    else if (c === delimiter) {
      row.push(cell);
      cell = "";
    } else if (c === "\n") {
      row.push(cell.replace(/\r$/, ""));
      rows.push(row);
      row = [];
      cell = "";
    } else cell += c;
  }
  if (cell || row.length) rows.push([...row, cell]);
  return rows.filter((r) => r.some((value) => value.trim()));
}

/** A target per header cell, guessed from the names (our own names mean themselves). */
export function guessTargets(header) {
  const targets = header.map((name) => {
    const lowered = name.trim().toLowerCase();
    if (RECORD_TARGETS.includes(lowered)) return lowered;
    if (lowered.startsWith("metadata.")) return `metadata.${name.trim().slice(9)}`;
    return "";
  });
  for (const [target, pattern] of GUESSES) {
    if (targets.includes(target)) continue;
    const index = header.findIndex((name, i) => !targets[i] && pattern.test(name.trim().toLowerCase()));
    if (index >= 0) targets[index] = target;
  }
  // debit and credit come as a pair: one alone is not a mapping the server accepts.
  if (targets.includes("debit") !== targets.includes("credit")) {
    const lone = targets.indexOf(targets.includes("debit") ? "debit" : "credit");
    targets[lone] = targets.includes("amount") ? "" : "amount";
  }
  return targets;
}

/** The date format the cells of a date column are written in ("" for ISO). */
export function guessDateFormat(values) {
  const cells = values.map((v) => v.trim()).filter(Boolean);
  if (!cells.length || cells.every((v) => /^\d{4}-\d{2}-\d{2}$/.test(v))) return "";
  if (cells.every((v) => /^\d{1,2}\.\d{1,2}\.\d{4}$/.test(v))) return "%d.%m.%Y";
  if (cells.every((v) => /^\d{1,2}\/\d{1,2}\/\d{4}$/.test(v))) {
    return cells.some((v) => Number(v.split("/")[0]) > 12) ? "%d/%m/%Y" : "%m/%d/%Y";
  }
  if (cells.every((v) => /^\d{1,2}-\d{1,2}-\d{4}$/.test(v))) return "%d-%m-%Y";
  return "";
}

/** "," when the amounts write their decimals with a comma (`-84,50`, `1.234,56`). */
export function guessDecimalSeparator(values) {
  return values.some((v) => /\d,\d{1,2}\D*$/.test(v.trim())) && !values.some((v) => /\d\.\d{1,2}\D*$/.test(v.trim())) ? "," : ".";
}

function targetSelect(name, index, chosen) {
  const label = name.trim() || `column ${index + 1}`;
  const options = [["", "Ignore"], ...RECORD_TARGETS.map((t) => [t, t]), ["debit", "debit (money out)"], ["credit", "credit (money in)"]];
  const metadata = `metadata.${name.trim()}`;
  if (name.trim()) options.push([metadata, metadata]);
  if (chosen.startsWith("metadata.") && chosen !== metadata) options.push([chosen, chosen]);
  const select = h(
    "select",
    { class: "csv-target", "data-column": name, "aria-label": `Target of column ${label}` },
    ...options.map(([value, text]) => h("option", { value, text })),
  );
  /** @type {HTMLSelectElement} */ (select).value = chosen;
  return select;
}

function render() {
  const box = $("csv-preview");
  if (!preview) {
    box.hidden = true;
    $("csv-preview-table").replaceChildren();
    return;
  }
  const { header, rows } = preview;
  const targets = guessTargets(header);
  const head = h("thead", {}, h("tr", {}, ...header.map((name) => h("th", { scope: "col", text: name }))), h("tr", {}, ...header.map((name, i) => h("td", {}, targetSelect(name, i, targets[i])))));
  const body = h("tbody", {}, ...rows.map((cells) => h("tr", {}, ...header.map((_, i) => h("td", { text: cells[i] ?? "" })))));
  $("csv-preview-table").replaceChildren(head, body);
  const dateIndex = targets.indexOf("date");
  $select("csv-date-format").value = dateIndex >= 0 ? guessDateFormat(rows.map((r) => r[dateIndex] ?? "")) : "";
  const amountCells = targets.flatMap((t, i) => (t === "amount" || t === "debit" || t === "credit" ? rows.map((r) => r[i] ?? "") : []));
  $select("csv-decimal").value = guessDecimalSeparator(amountCells);
  $("csv-preview-summary").textContent = `${header.length} columns; the first ${rows.length} rows:`;
  box.hidden = false;
}

/** Read the start of `file` and show its preview (nothing for a NACHA file). */
export async function showPreview(file) {
  preview = null;
  render();
  if (!file || $select("upload-format").value === "nacha") return;
  const text = (await file.slice(0, PREVIEW_BYTES).text()).replace(/^\ufeff/, "");
  const first = text.split("\n").find((line) => line.trim()) ?? "";
  // A NACHA file header: record type 1 and record size 094 at positions 35-37.
  if (/^1\d\d/.test(first) && first.slice(34, 37) === "094") return;
  const chosen = $select("csv-delimiter").value;
  const delimiter = chosen ? DELIMITERS[chosen] : detectDelimiter(first);
  // The last line may be cut by the slice; it is left out unless the file ended there.
  const complete = file.size <= PREVIEW_BYTES ? text : text.slice(0, text.lastIndexOf("\n") + 1);
  const [header, ...rows] = parseCsv(complete, delimiter);
  if (!header) return;
  preview = { header, rows: rows.slice(0, PREVIEW_ROWS) };
  render();
}

/** The CSV option fields for the upload, from the preview's choices ({} without one). */
export function csvFields() {
  if (!preview || $("csv-preview").hidden) return {};
  /** @type {Record<string, string | null>} */
  const columns = {};
  for (const select of document.querySelectorAll(/** @type {"select"} */ ("select.csv-target"))) {
    const name = select.dataset.column ?? "";
    if (!name.trim() || Object.keys(columns).some((k) => k.trim().toLowerCase() === name.trim().toLowerCase())) continue;
    columns[name] = select.value || null;
  }
  return {
    columns: JSON.stringify(columns),
    date_format: $select("csv-date-format").value,
    decimal_separator: $select("csv-decimal").value,
    delimiter: $select("csv-delimiter").value,
  };
}

export function clearPreview() {
  preview = null;
  render();
}
