/**
 * flask-tasks dashboard: keeps the state badges of unfinished tasks live, reloads a
 * task's page when the task ends, and sends Retry requests.
 *
 * The live parts are `<task-progress>` elements (flask-tasks.js, loaded by the page):
 * this script only listens to their events. Pages are readable without it.
 */

const LABELS = {
  queued: "Queued",
  running: "Running",
  retrying: "Retrying",
  succeeded: "Succeeded",
  failed: "Failed",
  cancelled: "Cancelled",
};

/** Headers that let a state-changing request through (and Flask-WTF's CSRF token). */
function scriptHeaders() {
  const headers = {
    "Content-Type": "application/json",
    "X-Requested-With": "XMLHttpRequest",
    Accept: "application/json",
  };
  const token = document.querySelector('meta[name="csrf-token"]')?.content;
  if (token) headers["X-CSRFToken"] = token;
  return headers;
}

function showState(badge, state) {
  if (!badge || !Object.hasOwn(LABELS, state) || badge.dataset.state === state) return;
  badge.dataset.state = state;
  badge.className = `state state-${state}`;
  badge.textContent = LABELS[state];
}

document.addEventListener("task-update", (event) => {
  const record = event.detail?.record;
  const host = event.target instanceof Element ? event.target.closest("[data-task-id]") : null;
  if (record && host) showState(host.querySelector("[data-state]"), record.state);
});

document.addEventListener("task-done", (event) => {
  // A task's page shows the final record as the server renders it (with the traceback).
  if (event.target instanceof Element && event.target.hasAttribute("data-reload-when-done")) {
    window.location.reload();
  }
});

// The element may have seen the end before this file ran (its first read can be answered
// while this file is still loading): then its task-done event went by unheard.
const FINAL = new Set(["succeeded", "failed", "cancelled"]);
for (const element of document.querySelectorAll("[data-reload-when-done]")) {
  if (FINAL.has(element.getAttribute("state"))) window.location.reload();
}

async function retry(button) {
  const problem = button.closest("section")?.querySelector(".action-error");
  const label = button.textContent;
  button.disabled = true;
  button.textContent = "Sending…";
  if (problem) {
    problem.hidden = true;
    problem.textContent = "";
  }
  try {
    const response = await fetch(button.dataset.retryUrl, {
      method: "POST",
      credentials: "same-origin",
      headers: scriptHeaders(),
      body: "{}",
    });
    let body = null;
    try {
      body = await response.json();
    } catch {
      // not JSON: a login page, a proxy's error page
    }
    if (response.ok && typeof body?.url === "string") {
      window.location.assign(body.url);
      return;
    }
    const message = body?.error?.message ?? `the server answered ${response.status}`;
    throw new Error(message);
  } catch (error) {
    if (problem) {
      problem.textContent = `Could not retry: ${error.message}`;
      problem.hidden = false;
    }
    button.disabled = false;
    button.textContent = label;
  }
}

for (const button of document.querySelectorAll("button[data-retry-url]")) {
  button.addEventListener("click", () => retry(button));
  button.disabled = false;
}
