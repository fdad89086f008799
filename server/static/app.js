// @ts-check
// Bulk requests dashboard: plain JavaScript ES modules, no framework, no build step, no
// external resources (it must work on a machine with no internet access).
//
// Everything is rendered with DOM APIs and textContent, never with HTML strings: file
// names, descriptions and row-error messages come from users, and the page's CSP
// enforces Trusted Types, so an HTML sink would throw anyway.
//
// The API key lives in sessionStorage (this tab only) and travels in the X-API-KEY
// header; it is never put in a URL, a cookie or localStorage.
//
// This is the entry module (key handling and start-up); the README's Dashboard section
// lists the others. index.html maps every module's URL to its content-hashed one in an
// import map (server/api/dashboard.py), so a changed module is fetched afresh.

import { $, $input, ago, announce } from "./dom.js";
import { clearAlert, showProblem, whenKeyRejected } from "./api.js";
import { KEY_STORAGE, listItems, state } from "./state.js";
import { applyUpdate, fetchListPage, loadMore, refreshFirstPage, startListLive, updateListChrome } from "./list.js";
import { route, runAction } from "./detail.js";
import { downloadErrors, loadErrors } from "./row-errors.js";
import { loadStreams, submitStream, submitUpload, wireDropZone } from "./upload.js";
import { clearWebhooks, loadWebhooks, submitWebhook } from "./webhooks.js";

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
  loadWebhooks();
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
  state.upload?.abort();
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
  clearWebhooks();
  $("upload-progress-box").hidden = true;
  showKeyForm();
  $input("key-input").value = "";
  $input("key-input").focus();
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

// --- Start-up -----------------------------------------------------------------------

function tick() {
  for (const el of /** @type {NodeListOf<HTMLElement>} */ (document.querySelectorAll("[data-since]"))) {
    el.textContent = ago(el.dataset.since ?? "");
  }
}

function init() {
  whenKeyRejected(keyRejected);
  $("key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const key = $input("key-input").value.trim();
    if (!key) {
      showProblem({ title: "Enter an API key", detail: "Paste the key printed by the server or by `run.py keys create`." });
      $input("key-input").focus();
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
  $("upload-abort").addEventListener("click", () => state.upload?.abort());
  $("stream-form").addEventListener("submit", submitStream);
  $("webhook-form").addEventListener("submit", submitWebhook);
  $("refresh-webhooks").addEventListener("click", loadWebhooks);
  wireDropZone();
  window.addEventListener("hashchange", () => route());
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && state.openId !== null && $("detail").contains(/** @type {Node | null} */ (e.target))) location.hash = "#/";
  });
  setInterval(tick, 1000);

  const saved = sessionStorage.getItem(KEY_STORAGE);
  if (saved) useKey(saved);
  else showKeyForm();
}

init();
