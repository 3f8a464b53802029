// The Trace tab: one run, live. Header (id, status, attempt, started, elapsed, viewers), the
// progress bar (and an endless run's current iteration), the current task, seed 003's stats line,
// controls enabled only when their signal is possible, the result, and the Events / Tasks /
// Timeline / Input panels. Events arrive through live.js and are folded by trace-model.js; the
// page repaints at most once a frame. A viewer sees the controls disabled (read-only); Share
// makes a read-only link to the run. In a shared view (shared.js) the controls are gone and the
// record is read with the share token (api.js). A start answered with a warning (no live worker
// serves the workflow) leaves a note on that run's header while the run is still queued.
import { getRun, signal } from "./api.js";
import { $, h, setText } from "./dom.js";
import { createLog } from "./event-log.js";
import { noteRun } from "./feed.js";
import { dateTime, duration, num, shortId, span } from "./format.js";
import { followRun } from "./live.js";
import { renderInput, renderResult, resultTitle } from "./result-view.js";
import { canShare, READ_ONLY, readOnly } from "./session.js";
import { initShare, openShare } from "./share.js";
import { tablist } from "./tabs.js";
import { createTaskView } from "./task-view.js";
import { createTimeline } from "./timeline.js";
import { applyEvent, applyRecord, applyResync, createModel, isActive, isTerminal } from "./trace-model.js";

let model = null;
let follower = null;
let recordTimer = null;
let frame = 0;
let lastSlow = 0;
let shownResult = null;
let shownStatus = "";
let announce = () => {};
let onLiveState = () => {};
let log;
let tasks;
let timeline;
let sub;
const startNotes = new Map();

export function noteStart(runId, text) {
  startNotes.set(runId, text);
}

export function initTrace(opts) {
  announce = opts.announce;
  onLiveState = opts.onLiveState || onLiveState;
  log = createLog({
    viewport: $("log-viewport"), spacer: $("log-spacer"), list: $("t-events"), latest: $("log-latest"), detail: $("log-detail"),
    onOpenTask: openTask, taskText: (key) => model?.tasks.get(key)?.text || "",
  });
  tasks = createTaskView($("t-tasks"));
  timeline = createTimeline($("t-timeline"), { onOpen: openTask });
  sub = tablist(document.querySelector(".subtabs"), {
    onSelect(tab) {
      sessionStorage.setItem("tidings.subtab", tab.dataset.sub);
      refresh();
    },
  });
  const saved = sessionStorage.getItem("tidings.subtab");
  if (saved) sub.select(saved);
  for (const btn of document.querySelectorAll("[data-signal]")) btn.addEventListener("click", () => send(btn.dataset.signal, btn));
  $("t-share").hidden = !canShare();
  if (canShare()) {
    initShare();
    $("t-share").addEventListener("click", (ev) => model && openShare(model.runId, ev.currentTarget));
  }
  $("t-clear").addEventListener("click", () => log.clear());
  const filter = () => log.setFilter({ kind: $("log-kind").value, text: $("log-filter").value });
  $("log-kind").addEventListener("change", filter);
  $("log-filter").addEventListener("input", filter);
  setInterval(() => model && isActive(model) && schedule(), 1000);
}

function openTask(key) {
  sub.select("tasks");
  sessionStorage.setItem("tidings.subtab", "tasks");
  tasks.open(key);
}

async function send(name, btn) {
  if (!model) return;
  const runId = model.runId;
  btn.disabled = true;
  announce(`${name} requested for run ${shortId(runId)}`); // before its effect is announced
  try {
    await signal(runId, name);
    if (model.runId !== runId) return;
    if (name === "pause") model.pauseAsked = true;
    if (name === "resume") model.pauseAsked = false;
    if (name === "stop") model.stopAsked = true;
    if (name === "cancel") model.cancelAsked = true;
  } catch (err) {
    announce(`Could not ${name} the run: ${err.message}`);
    setText($("t-control-error"), `${name}: ${err.message}`);
  }
  schedule();
}

export const currentRun = () => model?.runId || null;

export function showRun(id) {
  if (model && model.runId === id) return refresh();
  if (follower) follower.close();
  clearTimeout(recordTimer);
  model = createModel(id);
  shownResult = null;
  shownStatus = "";
  $("trace-empty").hidden = true;
  $("trace").hidden = false;
  setText($("t-control-error"), "");
  $("t-input").replaceChildren();
  log.attach(model);
  tasks.attach(model);
  timeline.attach(model);
  const m = model;
  follower = followRun(id, {
    onEvent(ev) {
      applyEvent(m, ev);
      if (isTerminal(m)) fetchRecord(m);
      schedule();
    },
    onResync(info) {
      applyResync(m, info);
      log.attach(m);
      tasks.attach(m);
      timeline.attach(m);
      schedule();
    },
    onState(state) {
      setText($("t-live"), { open: "live", connecting: "connecting…", reconnecting: "reconnecting…", polling: "live (polling)", closed: isTerminal(m) ? "" : "disconnected", unauthorized: "not live: access refused" }[state] ?? state);
      onLiveState(state);
      if (state === "open") fetchRecord(m); // the record read before the stream counted no viewer
    },
  });
  fetchRecord(m);
  schedule();
}

async function fetchRecord(m) {
  clearTimeout(recordTimer);
  try {
    const rec = await getRun(m.runId);
    if (m !== model) return;
    applyRecord(m, rec);
    noteRun(rec);
  } catch (err) {
    if (m !== model) return;
    if (err.status === 404) {
      setText($("t-status"), "not found");
      $("t-status").className = "pill s-failed";
      setText($("t-progress-label"), `No run with id ${m.runId}.`);
      return;
    }
    if (err.status === 401 || err.status === 403) return; // refused: asking again changes nothing
  }
  schedule();
  if (m === model && !isTerminal(m)) recordTimer = setTimeout(() => fetchRecord(m), 5000);
}

export function refresh() {
  log.refresh();
  schedule(true);
}

function schedule(force = false) {
  if (force) lastSlow = 0;
  if (!frame) frame = requestAnimationFrame(render);
}

function render() {
  frame = 0;
  const m = model;
  if (!m || $("view-trace").hidden) return;
  header(m);
  progress(m);
  controls(m);
  log.changed();
  setText($("t-count"), m.count ? `(${num(m.count)})` : "");
  setText($("t-task-count"), m.order.length ? `(${num(m.order.length)})` : "");
  const now = performance.now();
  if (now - lastSlow > 400) {
    lastSlow = now;
    if (!$("sp-tasks").hidden) tasks.render();
    if (!$("sp-timeline").hidden) timeline.render();
    if (!$("sp-input").hidden && !$("t-input").childElementCount && m.input) $("t-input").replaceChildren(...renderInput(m));
  } else if (!$("sp-tasks").hidden || !$("sp-timeline").hidden || (!$("sp-input").hidden && !$("t-input").childElementCount)) {
    setTimeout(() => schedule(), 420); // a slow panel left out of this frame: its turn comes
  }
  if (m.result !== shownResult?.result || m.error !== shownResult?.error) {
    shownResult = { result: m.result, error: m.error };
    const parts = renderResult(m);
    $("t-result-panel").hidden = !parts.length;
    setText($("t-result-title"), resultTitle(m));
    $("t-result").replaceChildren(...parts);
  }
}

function header(m) {
  setText($("t-id"), m.runId);
  setText($("t-workflow"), m.workflow || "…");
  const status = $("t-status");
  setText(status, m.status || "loading");
  status.className = `pill s-${m.status || "unknown"}`;
  if (m.status && m.status !== shownStatus) {
    if (shownStatus) announce(`Run ${shortId(m.runId)} is ${m.status}`);
    shownStatus = m.status;
  }
  setText($("t-attempt"), m.attempt ? (m.attempt > 1 ? `${m.attempt} (recovered)` : "1") : "");
  setText($("t-started"), m.startedAt ? dateTime(m.startedAt) : "not yet");
  setText($("t-elapsed"), m.startedAt ? duration(span(m.startedAt, m.finishedAt || (isTerminal(m) ? m.lastTs : ""))) : "");
  setText($("t-viewers"), m.viewers ?? "");
  setText($("t-worker"), m.worker || "");
  const note = !m.status || m.status === "queued" ? startNotes.get(m.runId) || "" : "";
  if (!note) startNotes.delete(m.runId);
  const notice = $("t-notice");
  if (notice.dataset.note !== note) {
    notice.dataset.note = note;
    notice.replaceChildren(...(note ? [h("strong", {}, "Warning:"), note] : []));
  }
  notice.hidden = !note;
}

function setBar(bar, wrap, pct, text) {
  const old = Number(bar.dataset.pct || 0);
  bar.classList.toggle("no-anim", pct < old);
  bar.dataset.pct = String(pct);
  bar.style.width = `${pct}%`;
  if (pct === null) wrap.removeAttribute("aria-valuenow");
  else wrap.setAttribute("aria-valuenow", String(Math.round(pct)));
  wrap.setAttribute("aria-valuetext", text);
}

function progress(m) {
  const endless = m.workflow === "monty" && !(m.input && m.input.max_iterations);
  const bar = $("t-bar");
  const wrap = $("t-progress");
  const active = isActive(m);
  let label;
  if (m.progress === null && !m.iter) {
    bar.style.width = "0%";
    bar.dataset.pct = "0";
    wrap.removeAttribute("aria-valuenow");
    wrap.setAttribute("aria-valuetext", "waiting for the first event");
    setText($("t-pct"), "");
    label = m.status === "queued" ? "Queued: waiting for a worker…" : "Waiting for data…";
  } else if (endless && active) {
    const pct = m.iter ? m.iter.pct : 0;
    label = m.iter ? `Iteration ${m.iter.n}${m.iter.sleep ? ` (${duration(m.iter.sleep)} sleep)` : ""}: endless until stopped` : "Starting…";
    if (m.status === "paused") label = `Paused after iteration ${m.iter?.n ?? 0}`;
    else if (m.pauseAsked) label = `Pausing after iteration ${m.iter?.n ?? 0}…`;
    else if (m.stopAsked) label = `Stopping after iteration ${m.iter?.n ?? 0}…`;
    setBar(bar, wrap, pct, `iteration ${m.iter?.n ?? 0}: ${Math.round(pct)}%`);
    setText($("t-pct"), `${Math.round(pct)}%`);
  } else {
    const pct = Math.max(0, Math.min(100, m.progress ?? 0));
    setBar(bar, wrap, pct, `${Math.round(pct)}%`);
    setText($("t-pct"), `${Math.round(pct)}%`);
    label = isTerminal(m) ? `Run ${m.status}` : m.status === "paused" ? "Paused" : m.pauseAsked ? "Pausing at the next step…" : "Running";
  }
  // A conversation has no percentage: its turns and whether it is answering say how it goes.
  const talk = m.workflow === "chat" && active;
  wrap.hidden = talk;
  $("t-pct").hidden = talk;
  if (talk) {
    const turns = [...m.tasks.values()].filter((t) => t.key.startsWith("turn-") && t.state === "completed").length;
    label = `Conversation: ${turns} turn${turns === 1 ? "" : "s"}, ${m.running.length ? "replying…" : "waiting for a message"}`;
  }
  wrap.setAttribute("aria-label", endless && active ? "Current iteration progress" : "Run progress");
  bar.classList.toggle("endless", endless && active);
  bar.className = `bar s-${m.status || "unknown"}${endless && active ? " endless" : ""}${bar.classList.contains("no-anim") ? " no-anim" : ""}`;
  setText($("t-progress-label"), label);
  const showSub = !endless && active && m.iter;
  $("t-sub").hidden = !showSub;
  if (showSub) {
    setText($("t-sub-label"), `Iteration ${m.iter.n}: ${Math.round(m.iter.pct)}%`);
    setBar($("t-sub-bar"), $("t-sub-bar-wrap"), m.iter.pct, `iteration ${m.iter.n}: ${Math.round(m.iter.pct)}%`);
  }
  const cur = active ? m.current : null;
  const more = active && m.running.length > 1 ? ` (+${m.running.length - 1} more running)` : "";
  setText($("t-task"), cur ? `${cur.name}${cur.message ? ` — ${cur.message}` : ""}${more}` : isTerminal(m) ? "none (run ended)" : "—");
  $("t-spinner").hidden = !cur;
  const stats = $("t-stats");
  stats.hidden = !m.stats;
  if (m.stats) {
    setText(stats, `Iterations: ${m.stats.iterations} | Quotes Delivered: ${m.stats.quotes} | Total Runtime: ${Number(m.stats.elapsed).toFixed(1)} seconds`);
  }
  $("t-quote").hidden = !m.quote;
  if (m.quote) setText($("t-quote"), `“${m.quote}”`);
}

function controls(m) {
  const active = isActive(m);
  const can = {
    pause: m.status === "running" && !m.pauseAsked && !m.cancelAsked,
    resume: active && (m.status === "paused" || m.pauseAsked) && !m.cancelAsked,
    stop: active && !m.stopAsked && !m.cancelAsked,
    cancel: active && !m.cancelAsked,
  };
  const locked = readOnly();
  for (const btn of document.querySelectorAll("[data-signal]")) {
    btn.disabled = locked || !can[btn.dataset.signal];
    if (locked) btn.title = READ_ONLY;
  }
  setText(document.querySelector("[data-signal=stop]"), m.stopAsked && active ? "Stopping…" : "Stop");
}
