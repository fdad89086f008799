// @ts-check
// Server-Sent Events read with fetch() (EventSource cannot send the API key header).
import { sleep, isAbort } from "./dom.js";
import { ApiError, keyRejected, readProblem } from "./api.js";
/** @typedef {import("./types.js").StreamEvent} StreamEvent */
import { RECONNECT_MAX_MS, RECONNECT_MIN_MS, SSE_MAX_LINE_CHARS, state } from "./state.js";

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
export class EventStream {
  /**
   * @param {string} url
   * @param {{ onEvent: (event: StreamEvent) => void, onOpen?: () => void,
   *   onRetry?: (ms: number) => void, onNotFound?: () => void, endEvent?: string }} handlers
   */
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
