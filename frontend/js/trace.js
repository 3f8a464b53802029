// The Trace tab: one run, live. Header, progress bar, current task, event log, controls, stats.
import { api, followRun } from "./api.js";
import { clear, duration, h, setText, time } from "./dom.js";

const $ = (id) => document.getElementById(id);
const CONTROL = new Set(["signal_received", "workflow_paused", "workflow_resumed", "worker_lost", "resync"]);
const MAX_ROWS = 2000; // the log lives in Redis; the page keeps only the newest rows

let source = null;
let runId = null;
let run = null;
let stats = {};
let pollTimer = null;
let tokenRow = null;

export function initTrace({ onRunning }) {
  for (const btn of document.querySelectorAll("[data-signal]")) {
    btn.addEventListener("click", async () => {
      if (!runId) return;
      try {
        await api(`/api/runs/${encodeURIComponent(runId)}/signals/${btn.dataset.signal}`, { method: "POST", body: {} });
      } catch (err) {
        addRow("error", { ts: new Date().toISOString(), message: err.message });
      }
    });
  }
  $("t-clear").addEventListener("click", () => { clear($("t-events")); tokenRow = null; });
  setInterval(() => run && renderHeader(), 1000);
  initTrace.onRunning = onRunning;
}

export function showRun(id) {
  if (source) source.close();
  clearInterval(pollTimer);
  runId = id;
  run = null;
  stats = {};
  tokenRow = null;
  clear($("t-events"));
  $("trace-empty").hidden = true;
  $("trace").hidden = false;
  setText($("t-id"), id);
  refresh();
  pollTimer = setInterval(refresh, 2000);
  source = followRun(id, onEvent, (state) => {
    if (state === "closed") clearInterval(pollTimer), refresh();
  });
}

async function refresh() {
  if (!runId) return;
  try {
    run = await api(`/api/runs/${encodeURIComponent(runId)}`);
    renderHeader();
  } catch (err) {
    setText($("t-status"), err.status === 404 ? "not found" : "unreachable");
  }
}

function renderHeader() {
  setText($("t-workflow"), run.workflow);
  const status = $("t-status");
  setText(status, run.status);
  status.className = `status-${run.status}`;
  setText($("t-started"), time(run.started_at) || "not yet");
  const end = run.finished_at ? new Date(run.finished_at) : new Date();
  setText($("t-elapsed"), run.started_at ? duration((end - new Date(run.started_at)) / 1000) : "");
  setText($("t-viewers"), run.viewers ?? "");
  setText($("t-task"), run.task || "");
  setProgress(run.progress);
  const active = ["queued", "running", "paused"].includes(run.status);
  for (const btn of document.querySelectorAll("[data-signal]")) btn.disabled = !active;
  initTrace.onRunning && initTrace.onRunning(active);
}

function setProgress(p) {
  const pct = Math.max(0, Math.min(100, Number(p) || 0));
  $("t-bar").style.width = `${pct}%`;
  setText($("t-pct"), `${Math.round(pct)}%`);
}

function onEvent(type, ev) {
  if (run) {
    run.progress = Math.max(run.progress || 0, ev.progress || 0);
    if (ev.task) run.task = ev.task;
    if (type === "workflow_started") run.status = "running", run.started_at = run.started_at || ev.ts;
    if (type === "workflow_paused") run.status = "paused";
    if (type === "workflow_resumed") run.status = "running";
    if (type.startsWith("workflow_") && ["completed", "failed", "cancelled"].includes(type.slice(9))) {
      run.status = type.slice(9);
      run.finished_at = ev.ts;
    }
    renderHeader();
  }
  const d = ev.data || {};
  for (const key of ["iteration", "iteration_count", "quotes_delivered", "total_quotes_delivered", "elapsed", "total_elapsed"]) {
    if (d[key] !== undefined) stats[key] = d[key];
  }
  renderStats();
  if (type === "token") {
    // Tokens join one growing row per task instead of one row each.
    if (!tokenRow || tokenRow.task !== ev.task) tokenRow = { task: ev.task, el: addRow(type, ev, "") };
    tokenRow.el.lastChild.append(document.createTextNode(d.text || ""));
    return;
  }
  tokenRow = null;
  addRow(type, ev, describe(type, ev));
}

function describe(type, ev) {
  const d = ev.data || {};
  if (ev.message) return ev.message;
  if (type === "signal_received") return `signal ${d.signal}`;
  if (type === "resync") return "the log was trimmed: state resynchronised";
  return d.finding || d.current_quote || (ev.task ? `${ev.task}` : "");
}

function addRow(type, ev, text) {
  const cls = type.endsWith("completed") ? "completed" : type.endsWith("failed") || type === "error" ? "failed" : CONTROL.has(type) ? "control" : "";
  const li = h("li", { class: cls }, h("span", { class: "time" }, time(ev.ts)), h("span", { class: "type" }, type), h("span", { class: "msg" }, text ?? ev.message ?? ""));
  const list = $("t-events");
  const stick = list.scrollTop + list.clientHeight >= list.scrollHeight - 20;
  list.append(li);
  while (list.childElementCount > MAX_ROWS) list.firstElementChild.remove();
  if (stick) list.scrollTop = list.scrollHeight;
  return li;
}

function renderStats() {
  const el = $("t-stats");
  const iterations = stats.iteration_count ?? stats.iteration;
  if (iterations === undefined) { el.hidden = true; return; }
  el.hidden = false;
  const quotes = stats.total_quotes_delivered ?? stats.quotes_delivered ?? 0;
  const elapsed = Number(stats.total_elapsed ?? stats.elapsed ?? 0);
  setText(el, `Iterations: ${iterations} | Quotes Delivered: ${quotes} | Total Runtime: ${elapsed.toFixed(1)} seconds`);
}
