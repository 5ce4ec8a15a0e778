/**
 * flask-tasks browser client: follow a task's record, cancel it, show it.
 *
 * One dependency-free ES module, served by the API blueprint at
 * `<prefix>/static/flask-tasks.js` (`{{ tasks_script_url() }}` in templates). Importing
 * it registers the `<task-progress>` element. See docs/javascript.md.
 *
 * @module flask-tasks
 */

/** The states after which a record never changes. */
export const FINAL_STATES = Object.freeze(["succeeded", "failed", "cancelled"]);

/**
 * Page-wide settings `watch()` starts from; change them before watching.
 * `maxStreams`: event streams open at once on this page, beyond which watches poll.
 * Browsers allow only 6 HTTP/1.1 connections per server and an event stream holds one:
 * raise it when the app is served over HTTP/2.
 */
export const defaults = { pollInterval: 1000, maxInterval: 30000, maxStreams: 4 };
let openStreams = 0;

const SSE_RETRY = 5000; // ms before trying a broken event stream again; doubles, up to:
const SSE_RETRY_MAX = 60000;
const MAX_RESULT_LENGTH = 500;

/**
 * @typedef {object} Progress
 * @property {number} current
 * @property {?number} total
 * @property {?number} percent
 * @property {?string} message
 * @property {?number} eta_seconds
 *
 * @typedef {object} TaskRecord The record `GET <prefix>/<id>` answers.
 * @property {string} id
 * @property {string} name
 * @property {string} state queued, running, retrying, succeeded, failed or cancelled
 * @property {?Progress} progress
 * @property {*} result
 * @property {?{type: string, message: string, traceback?: string}} error
 * @property {boolean} cancel_requested
 * @property {{self: string, cancel?: string, events?: string}} links
 *
 * @typedef {object} WatchError What `onError` receives.
 * @property {string} code `not_found`, `store_unavailable`, `network_error`, `http_<status>`...
 * @property {string} message
 * @property {number} status the HTTP status, 0 when the server could not be reached
 * @property {boolean} retrying true: the watch goes on; false: it has ended
 * @property {number} [retryIn] milliseconds until the next try, when retrying
 */

/** An error answered by the HTTP API, or a network failure (`status` 0). */
export class TaskApiError extends Error {
  /**
   * @param {string} code
   * @param {string} message
   * @param {number} [status]
   * @param {?TaskRecord} [task] the record a 409 carries
   */
  constructor(code, message, status = 0, task = null) {
    super(message);
    this.name = "TaskApiError";
    this.code = code;
    this.status = status;
    this.task = task;
  }
}

// The API prefix this module was served from (`<prefix>/static/flask-tasks.js`).
const SERVED_FROM = /^(.*)\/static\/flask-tasks\.js(?:[?#].*)?$/.exec(import.meta.url);
/** The API URL prefix used when none is given: the one this module was served from. */
export const DEFAULT_BASE = SERVED_FROM ? SERVED_FROM[1] : "/tasks";

const finite = (value) => (typeof value === "number" && Number.isFinite(value) ? value : null);
const isRecord = (body) =>
  body !== null && typeof body === "object" && typeof body.state === "string";

/**
 * True for a record (or a state name) that is final: succeeded, failed or cancelled.
 * @param {TaskRecord|string|null|undefined} recordOrState
 */
export function isFinal(recordOrState) {
  const state = typeof recordOrState === "string" ? recordOrState : recordOrState?.state;
  return FINAL_STATES.includes(state);
}

function absolute(url) {
  const here = globalThis.location?.href;
  return here ? new URL(url, here).href : url;
}

/**
 * The URL of a task's record. Anything with a slash is a URL (`/tasks/ID`, or a record's
 * `links.self`); anything else is a task id, appended to `base`.
 * @param {string} idOrUrl
 * @param {string} [base] the API prefix, by default the one this module was served from
 */
export function taskUrl(idOrUrl, base = DEFAULT_BASE) {
  const text = idOrUrl == null ? "" : String(idOrUrl).trim();
  if (!text) throw new TypeError("flask-tasks: a task id or URL is required.");
  if (text.includes("/")) return absolute(text);
  return absolute(`${String(base).replace(/\/+$/, "")}/${encodeURIComponent(text)}`);
}

function subUrl(recordUrl, name) {
  const here = globalThis.location?.href;
  if (!here) return `${recordUrl.replace(/\/+$/, "")}/${name}`;
  const url = new URL(recordUrl, here);
  url.pathname = `${url.pathname.replace(/\/+$/, "")}/${name}`;
  return url.href;
}

/** The page's CSRF token: `<meta name="csrf-token" content="...">`, or null. */
function pageCsrfToken() {
  const meta = globalThis.document?.querySelector('meta[name="csrf-token"]');
  return meta?.getAttribute("content") || null;
}

async function request(url, init, withCredentials) {
  let response;
  try {
    response = await fetch(url, {
      cache: "no-store",
      credentials: withCredentials ? "include" : "same-origin",
      ...init,
      headers: { Accept: "application/json", ...init.headers },
    });
  } catch (error) {
    if (error?.name === "AbortError") throw error;
    const reason = error?.message || String(error);
    throw new TaskApiError("network_error", `The server could not be reached (${reason}).`);
  }
  let body = null;
  try {
    body = await response.json();
  } catch (error) {
    if (error?.name === "AbortError") throw error; // otherwise: not JSON, body stays null
  }
  return { response, body };
}

function apiError(response, body) {
  const error = body !== null && typeof body === "object" ? body.error : null;
  const { status } = response;
  const codes = { 404: "not_found", 503: "store_unavailable" };
  const fallback = codes[status] ?? `http_${status}`;
  return new TaskApiError(
    typeof error?.code === "string" ? error.code : fallback,
    typeof error?.message === "string" ? error.message : `The server answered HTTP ${status}.`,
    status,
    isRecord(body?.task) ? body.task : null,
  );
}

/**
 * Read a task's record once.
 * @param {string} idOrUrl a task id or its record URL
 * @param {{base?: string, signal?: AbortSignal, withCredentials?: boolean}} [options]
 * @returns {Promise<TaskRecord>} rejects with a {@link TaskApiError} (404: `not_found`)
 */
export async function fetchTask(idOrUrl, { base, signal, withCredentials = false } = {}) {
  const { response, body } = await request(taskUrl(idOrUrl, base), { signal }, withCredentials);
  if (response.ok && isRecord(body)) return body;
  if (response.ok) {
    throw new TaskApiError("bad_response", "The answer is not a task record.", response.status);
  }
  throw apiError(response, body);
}

/**
 * Ask a task to stop: a queued task is cancelled at once, a running one at its next
 * progress report. Sends the page's `<meta name="csrf-token">` as `X-CSRFToken`.
 * @param {string} idOrUrl a task id or its record URL
 * @param {{base?: string, signal?: AbortSignal, withCredentials?: boolean,
 *   csrfToken?: ?string}} [options] `csrfToken` defaults to the page's
 * @returns {Promise<TaskRecord>} the record as it is now (also when the task had already
 *   ended: then it is final); rejects with a {@link TaskApiError}
 */
export async function cancel(idOrUrl, options = {}) {
  const { base, signal, withCredentials = false, csrfToken = pageCsrfToken() } = options;
  const headers = { "Content-Type": "application/json" };
  if (csrfToken) headers["X-CSRFToken"] = csrfToken;
  const url = subUrl(taskUrl(idOrUrl, base), "cancel");
  const init = { method: "POST", headers, body: "{}", signal };
  const { response, body } = await request(url, init, withCredentials);
  if (response.ok && isRecord(body)) return body;
  if (response.status === 409 && isRecord(body?.task)) return body.task;
  throw apiError(response, body);
}

// Worth trying again: the network, the server or the store, not the request itself.
const retryable = ({ status }) => status === 0 || status >= 500 || status === 408 || status === 429;

function backoff(interval, failures, max) {
  const delay = Math.min(interval * 2 ** failures, max);
  return Math.round(Math.min(delay * (0.8 + Math.random() * 0.4), max));
}

function report(error) {
  // A callback's own error must not break the watch, nor vanish.
  if (typeof globalThis.reportError === "function") globalThis.reportError(error);
  else setTimeout(() => { throw error; });
}

/**
 * Follow a task's record until it is final: Server-Sent Events first, polling when the
 * browser has no EventSource, when the stream cannot be opened or when it breaks.
 *
 * @param {string} idOrUrl a task id or its record URL (`/tasks/ID`, `record.links.self`)
 * @param {object} [options]
 * @param {(record: TaskRecord) => void} [options.onUpdate] each new version of the record
 * @param {(record: TaskRecord) => void} [options.onDone] once, with the final record
 * @param {(error: WatchError) => void} [options.onError] each failure; `retrying: false`
 *   (an unknown id, another 4xx) means the watch has ended
 * @param {string} [options.base] the API prefix for a bare id
 * @param {number} [options.pollInterval] ms between two polls (`defaults.pollInterval`)
 * @param {number} [options.maxInterval] the longest wait between retries after errors
 *   (`defaults.maxInterval`)
 * @param {boolean} [options.sse] false: poll only
 * @param {boolean} [options.withCredentials] send cookies to another origin
 * @returns {{stop(): void, readonly record: ?TaskRecord, readonly transport: ?string,
 *   readonly active: boolean}} `transport` is "sse", "polling" or null (ended)
 */
export function watch(idOrUrl, options = {}) {
  const { onUpdate, onDone, onError, base, sse = true, withCredentials = false } = options;
  const pollInterval = Math.max(50, finite(options.pollInterval) ?? defaults.pollInterval);
  const maxInterval = Math.max(pollInterval, finite(options.maxInterval) ?? defaults.maxInterval);
  const url = taskUrl(idOrUrl, base);
  let stopped = false;
  let ended = false;
  let record = null;
  let lastJson = null;
  let lastTime = -Infinity;
  let transport = null;
  let source = null;
  let timer = null;
  let controller = null;
  let pollFailures = 0;
  let sseFailures = 0;
  let sseRetryAt = 0;

  const canStream = () =>
    sse !== false &&
    typeof globalThis.EventSource === "function" &&
    openStreams < defaults.maxStreams;

  function closeStream() {
    if (source === null) return;
    source.close();
    source = null;
    openStreams -= 1;
  }

  function call(callback, value) {
    if (stopped || typeof callback !== "function") return;
    try {
      callback(value);
    } catch (error) {
      report(error);
    }
  }

  function close() {
    clearTimeout(timer);
    timer = null;
    controller?.abort();
    controller = null;
    closeStream();
    transport = null;
  }

  function accept(next) {
    if (stopped || ended) return;
    const time = Date.parse(next.updated_at);
    // A copy older than one already seen (another web process's cache): skip it.
    if (time < lastTime && !isFinal(next)) return;
    const json = JSON.stringify(next);
    if (json !== lastJson) {
      lastJson = json;
      record = next;
      if (!Number.isNaN(time)) lastTime = Math.max(lastTime, time);
      call(onUpdate, next);
    }
    if (isFinal(next) && !ended) {
      ended = true;
      close();
      call(onDone, next);
    }
  }

  function fail(error) {
    if (stopped || ended) return;
    const { code, message, status } = error;
    if (!retryable(error)) {
      ended = true;
      close();
      call(onError, { code, message, status, retrying: false });
      return;
    }
    pollFailures += 1;
    const retryIn = backoff(pollInterval, pollFailures, maxInterval);
    timer = setTimeout(poll, retryIn);
    call(onError, { code, message, status, retrying: true, retryIn });
  }

  async function poll() {
    timer = null;
    if (stopped || ended) return;
    transport = "polling";
    const current = new AbortController();
    controller = current;
    let next;
    try {
      next = await fetchTask(url, { signal: current.signal, withCredentials });
    } catch (error) {
      if (current.signal.aborted) return;
      controller = null;
      fail(error instanceof TaskApiError ? error : new TaskApiError("failed", String(error)));
      return;
    }
    if (current.signal.aborted) return;
    controller = null;
    pollFailures = 0;
    accept(next);
    if (stopped || ended) return;
    if (canStream() && Date.now() >= sseRetryAt) stream();
    else timer = setTimeout(poll, pollInterval);
  }

  function stream() {
    if (stopped || ended) return;
    transport = "sse";
    let events;
    try {
      events = new EventSource(subUrl(url, "events"), { withCredentials });
    } catch {
      sseRetryAt = Infinity; // refused here (a Content Security Policy, say): poll for good
      poll();
      return;
    }
    source = events;
    openStreams += 1;
    const broken = () => {
      if (source !== events) return;
      // Not EventSource's own reconnection: poll now, which also tells a 404 from a
      // 503, and try the stream again later, a little later each time.
      closeStream();
      sseFailures += 1;
      sseRetryAt = Date.now() + Math.min(SSE_RETRY * 2 ** (sseFailures - 1), SSE_RETRY_MAX);
      poll();
    };
    events.addEventListener("record", (event) => {
      if (source !== events) return;
      let next = null;
      try {
        next = JSON.parse(event.data);
      } catch {
        // handled below
      }
      if (!isRecord(next)) {
        broken();
        return;
      }
      sseFailures = 0;
      pollFailures = 0;
      accept(next);
    });
    events.addEventListener("error", broken);
  }

  if (canStream()) stream();
  else poll();

  return {
    /** Stop watching: no callback is called after this. */
    stop() {
      stopped = true;
      close();
    },
    /** The latest record seen, or null. */
    get record() {
      return record;
    },
    /** How the record is followed now: "sse", "polling", or null once ended or stopped. */
    get transport() {
      return transport;
    },
    /** True until the watch is stopped or has ended (final record, or a final error). */
    get active() {
      return !stopped && !ended;
    },
  };
}

/**
 * A rough time left, for people: "about 12 s left", "about 3 min left".
 * @param {?number} seconds
 * @returns {string} empty when unknown
 */
export function formatEta(seconds) {
  const s = finite(seconds);
  if (s === null || s < 0) return "";
  if (s < 1.5) return "almost done";
  if (s < 90) return `about ${Math.round(s)} s left`;
  if (s < 5400) return `about ${Math.round(s / 60)} min left`;
  return `about ${Math.round(s / 3600)} h left`;
}

/**
 * A result as compact text: strings as they are, anything else as JSON (shortened).
 * @param {*} result
 */
export function formatResult(result) {
  if (result === null || result === undefined) return "";
  const text = typeof result === "string" ? result : JSON.stringify(result);
  return text.length > MAX_RESULT_LENGTH ? `${text.slice(0, MAX_RESULT_LENGTH - 1)}…` : text;
}

/** The texts `<task-progress>` shows; set `element.strings = {...}` to change some. */
export const STRINGS = Object.freeze({
  label: "Task progress",
  loading: "Loading…",
  queued: "Queued",
  running: "Running",
  retrying: "Retrying",
  succeeded: "Done",
  failed: "Failed",
  cancelled: "Cancelled",
  cancelling: "Cancelling…",
  cancel: "Cancel",
  notFound: "Task not found",
  error: "Error",
  attempt: "attempt",
  reconnecting: "Reconnecting…",
  cancelFailed: "Could not cancel",
});

const STYLE = `
:host { display: block; }
:host([hidden]), [hidden] { display: none !important; }
[part~="bar"] {
  position: relative; overflow: hidden;
  height: var(--task-progress-height, 0.75rem);
  background: var(--task-progress-track-color, #e5e7eb);
  border-radius: var(--task-progress-radius, 999px);
}
[part~="fill"] {
  position: absolute; inset: 0 auto 0 0; width: 0;
  background: var(--task-progress-bar-color, #2563eb);
  border-radius: inherit;
  transition: width var(--task-progress-transition, 0.3s) ease;
}
:host([state="succeeded"]) [part~="fill"] {
  background: var(--task-progress-success-color, #16a34a);
}
:host([state="failed"]) [part~="fill"] { background: var(--task-progress-error-color, #dc2626); }
:host([state="cancelled"]) [part~="fill"] {
  background: var(--task-progress-cancelled-color, #9ca3af);
}
.indeterminate [part~="fill"] { width: 30%; transition: none; animation: slide 1.4s infinite; }
@keyframes slide { from { left: -30%; } to { left: 100%; } }
@media (prefers-reduced-motion: reduce) {
  [part~="fill"] { transition: none; }
  .indeterminate [part~="fill"] { animation: none; width: 100%; opacity: 0.35; }
}
[part~="info"] {
  display: flex; flex-wrap: wrap; align-items: baseline; gap: 0.25rem 0.75rem;
  margin-top: var(--task-progress-gap, 0.375rem);
  font-size: var(--task-progress-font-size, 0.875em);
}
[part~="status"] { font-weight: 600; }
[part~="message"], [part~="eta"] { color: var(--task-progress-muted-color, inherit); opacity: 0.8; }
[part~="percent"] { font-variant-numeric: tabular-nums; }
[part~="cancel-button"] { margin-left: auto; font: inherit; cursor: pointer; }
[part~="outcome"] { font-size: var(--task-progress-font-size, 0.875em); }
[part~="result"], [part~="error"] {
  margin-top: var(--task-progress-gap, 0.375rem);
  overflow-wrap: anywhere;
}
[part~="result"] code {
  font-family: var(--task-progress-code-font, ui-monospace, monospace);
  white-space: pre-wrap;
}
[part~="error"] { color: var(--task-progress-error-color, #dc2626); }
`;

const TEMPLATE = `<style>${STYLE}</style>
<div part="bar" role="progressbar" aria-valuemin="0" aria-valuemax="100">
  <div part="fill"></div>
</div>
<div part="info">
  <span part="status" role="status" aria-live="polite"></span>
  <span part="percent"></span>
  <span part="message"></span>
  <span part="eta"></span>
  <button part="cancel-button" type="button" hidden></button>
</div>
<div part="outcome" aria-live="polite">
  <div part="result" hidden><slot name="result"><code></code></slot></div>
  <div part="error" hidden></div>
</div>`;

const PARTS = ["bar", "fill", "status", "percent", "message", "eta"];
const MORE_PARTS = ["cancel-button", "result", "error"];
const ACTIVE_STATES = ["loading", "queued", "running", "retrying"];
const SHOWN_STATES = [...ACTIVE_STATES, ...FINAL_STATES];

// Importable where there is no DOM (a server-side test of watch(), say).
const Base = typeof HTMLElement === "undefined" ? class {} : HTMLElement;

/**
 * `<task-progress src="/tasks/ID" cancelable>`: a live progress bar for one task.
 * Attributes: src, cancelable, label, result-text, poll-interval. Reflects the state it
 * shows in its `state` attribute. Events: task-update, task-done, task-error.
 */
export class TaskProgressElement extends Base {
  static get observedAttributes() {
    return ["src", "cancelable", "label", "result-text", "poll-interval"];
  }

  constructor() {
    super();
    const root = this.attachShadow({ mode: "open" });
    root.innerHTML = TEMPLATE;
    const part = (name) => root.querySelector(`[part~="${name}"]`);
    this._parts = {};
    for (const name of [...PARTS, ...MORE_PARTS]) this._parts[name] = part(name);
    this._resultText = root.querySelector("code");
    this._parts["cancel-button"].addEventListener("click", () => this.cancel().catch(() => {}));
    root.querySelector("slot").addEventListener("slotchange", () => this._render());
    this._connected = false;
    this._handle = null;
    this._strings = STRINGS;
    this._formatResult = null;
    this._reset();
  }

  /** The record URL (or task id) watched; setting it watches another task. */
  get src() {
    return this.getAttribute("src") ?? "";
  }

  set src(value) {
    this.setAttribute("src", value);
  }

  /** Whether the cancel button is offered while the task runs. */
  get cancelable() {
    return this.hasAttribute("cancelable");
  }

  set cancelable(value) {
    this.toggleAttribute("cancelable", Boolean(value));
  }

  /** The latest record, or null. */
  get record() {
    return this._record;
  }

  /** The shown state: a record state, or "loading", "not-found", "error", "" (no src). */
  get state() {
    return this.getAttribute("state") ?? "";
  }

  /** `(result, record) => string`: how a result is shown (default: {@link formatResult}). */
  get formatResult() {
    return this._formatResult;
  }

  set formatResult(fn) {
    this._formatResult = typeof fn === "function" ? fn : null;
    this._render();
  }

  /** The texts shown (see {@link STRINGS}); set an object to change some of them. */
  get strings() {
    return this._strings;
  }

  set strings(value) {
    this._strings = { ...STRINGS, ...value };
    this._render();
  }

  connectedCallback() {
    // Properties set before the element was defined shadow the accessors: apply them.
    for (const name of ["src", "cancelable", "formatResult", "strings"]) {
      if (Object.prototype.hasOwnProperty.call(this, name)) {
        const value = this[name];
        delete this[name];
        this[name] = value;
      }
    }
    this._connected = true;
    this._watch();
  }

  disconnectedCallback() {
    this._connected = false;
    this._handle?.stop();
    this._handle = null;
  }

  attributeChangedCallback(name, old, value) {
    if (old === value) return;
    if (name === "src" || name === "poll-interval") {
      if (this._connected) this._watch();
    } else {
      this._render();
    }
  }

  /**
   * Cancel the task (what the cancel button does).
   * @returns {Promise<?TaskRecord>} the record the API answered
   */
  async cancel() {
    const src = this.src;
    if (!src || isFinal(this._record) || this._cancelling) return this._record;
    this._cancelling = true;
    this._cancelError = null;
    this._render();
    try {
      const record = await cancel(src);
      if (this.src === src) {
        this._cancelRequested = true;
        if (isFinal(record) || !isFinal(this._record)) this._record = record;
      }
      return record;
    } catch (error) {
      if (this.src === src) {
        this._cancelError = error;
        const { code, message, status } = error;
        const detail = { code, message, status: status ?? 0, retrying: false };
        this._emit("task-error", { error: detail, action: "cancel" });
      }
      throw error;
    } finally {
      if (this.src === src) {
        this._cancelling = false;
        this._render();
      }
    }
  }

  _reset() {
    this._record = null;
    this._problem = null;
    this._cancelling = false;
    this._cancelRequested = false;
    this._cancelError = null;
  }

  _watch() {
    this._handle?.stop();
    this._handle = null;
    this._reset();
    const src = this.src;
    if (src) {
      this._handle = watch(src, {
        pollInterval: finite(Number.parseFloat(this.getAttribute("poll-interval"))) ?? undefined,
        onUpdate: (record) => {
          this._record = record;
          this._problem = null;
          this._render();
          this._emit("task-update", { record });
        },
        onDone: (record) => this._emit("task-done", { record }),
        onError: (error) => {
          this._problem = error;
          this._render();
          this._emit("task-error", { error });
        },
      });
    }
    this._render();
  }

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail, bubbles: true, composed: true }));
  }

  _render() {
    const p = this._parts;
    const s = this._strings;
    const record = this._record;
    const problem = this._problem;
    const fatal = problem !== null && !problem.retrying;
    let state = record ? record.state : "loading";
    if (fatal) state = problem.code === "not_found" ? "not-found" : "error";
    if (!this.src) state = "";
    if (!state) this.removeAttribute("state");
    else if (this.getAttribute("state") !== state) this.setAttribute("state", state);

    const final = !fatal && isFinal(record);
    const progress = typeof record?.progress === "object" ? record.progress : null;
    let percent = finite(progress?.percent);
    const current = finite(progress?.current);
    const total = finite(progress?.total);
    if (percent === null && current !== null && total) percent = (current / total) * 100;
    if (state === "succeeded") percent = 100;
    if (percent !== null) percent = Math.min(100, Math.max(0, percent));
    if (fatal || !this.src) percent = null;

    // The bar: determinate when a percent is known, indeterminate while waiting.
    p.bar.setAttribute("aria-label", this.getAttribute("label") || s.label);
    if (percent === null) p.bar.removeAttribute("aria-valuenow");
    else p.bar.setAttribute("aria-valuenow", String(Math.floor(percent)));
    const waiting = percent === null && ACTIVE_STATES.includes(state);
    p.bar.classList.toggle("indeterminate", waiting);
    const shown = percent === null && state === "failed" ? 100 : percent; // a red bar
    p.fill.style.width = shown === null ? "" : `${shown}%`;
    p.percent.textContent = percent === null ? "" : `${Math.floor(percent)}%`;

    // The status line: the state, then how far and what now.
    let status = SHOWN_STATES.includes(state) ? s[state] : state;
    if (state === "not-found") status = s.notFound;
    if (state === "error") status = s.error;
    if (state === "retrying" && finite(record.attempt)) {
      status = `${s.retrying} (${s.attempt} ${record.attempt})`;
    }
    const stopping = record?.cancel_requested === true || this._cancelRequested;
    if (!final && !fatal && record && stopping) status = s.cancelling;
    if (p.status.textContent !== status) p.status.textContent = status;
    let message = typeof progress?.message === "string" ? progress.message : "";
    if (problem?.retrying) message = `${s.reconnecting} ${problem.message}`;
    if (this._cancelError) message = `${s.cancelFailed}: ${this._cancelError.message}`;
    p.message.textContent = message;
    p.eta.textContent = final || fatal ? "" : formatEta(progress?.eta_seconds);

    // The outcome: the result, or the error.
    let resultText = "";
    if (state === "succeeded") {
      const custom = this.getAttribute("result-text");
      const format = this._formatResult ?? formatResult;
      resultText = custom ?? String(format(record.result, record) ?? "");
    }
    const slotted = this.querySelector(':scope > [slot="result"]') !== null;
    this._resultText.textContent = resultText;
    p.result.hidden = state !== "succeeded" || (!resultText && !slotted);
    let error = "";
    if (fatal) error = problem.message;
    else if (state === "failed" || (state === "retrying" && record.error)) {
      const type = typeof record.error?.type === "string" ? record.error.type : s.error;
      const text = typeof record.error?.message === "string" ? record.error.message : "";
      error = text ? `${type}: ${text}` : type;
    }
    p.error.textContent = error;
    p.error.hidden = !error;

    const button = p["cancel-button"];
    button.hidden = !(this.cancelable && record && !final && !fatal && !stopping);
    button.disabled = this._cancelling;
    button.textContent = this._cancelling ? s.cancelling : s.cancel;
  }
}

if (typeof customElements !== "undefined" && !customElements.get("task-progress")) {
  customElements.define("task-progress", TaskProgressElement);
}
