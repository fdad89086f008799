// @ts-check
// The HTTP side: requests with the API key, problem+json errors and how they are shown.
import { $, h, isAbort } from "./dom.js";
import { state } from "./state.js";

export const NETWORK_PROBLEM = {
  title: "The server could not be reached",
  detail: "Check that the service is running and the network is up, then try again.",
};

// --- Errors (problem+json) --------------------------------------------------------

export class ApiError extends Error {
  constructor(status, problem) {
    super(problem.detail || problem.title || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

export async function readProblem(resp) {
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

export function showProblem(err, context) {
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

export function clearAlert() {
  const box = $("alert");
  box.replaceChildren();
  box.classList.remove("is-visible");
}

// --- HTTP -------------------------------------------------------------------------

/**
 * A request to the API with the key; a problem+json answer is thrown as an ApiError.
 * @param {string} path
 * @param {{ method?: string, body?: unknown, accept?: string }} [options]
 * @returns {Promise<Response>}
 */
export async function request(path, { method = "GET", body, accept = "application/json" } = {}) {
  /** @type {RequestInit & { headers: Record<string, string> }} */
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

export const getJson = async (path) => (await request(path)).json();

// What to do when the server rejects the key (the key form lives in app.js, which
// registers it): a hook rather than an import, so this module depends on no page part.
let onKeyRejected = (/** @type {ApiError} */ _err) => {};

/** @param {(err: ApiError) => void} handler */
export function whenKeyRejected(handler) {
  onKeyRejected = handler;
}

/** @param {ApiError} err */
export function keyRejected(err) {
  onKeyRejected(err);
}
