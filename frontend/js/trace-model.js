// The state of one run, folded from its record and its events. Trace renders it live; Compare
// folds whole logs through the same code, so both agree on what a task, a duration or an
// iteration is.
//
// - Tasks: every step (task_started without a worker: runs inside the run's own job) and every
//   fanned-out task (with a worker) is one row keyed by task_id; iterations (iteration_started /
//   _completed, e.g. monty's) are rows too.
// - Tokens: model output is gathered per task into the task's text, and the log holds one entry
//   per task's stream instead of one row per fragment. A token without a task_id belongs to the
//   step that is running (a step's `run.stream_llm`), or to its own task name.
// - Progress never decreases; `iter` is the current iteration's own progress (monty's bar).

const LIFECYCLE = {
  workflow_started: "running", workflow_resumed: "running", workflow_paused: "paused",
  workflow_completed: "completed", workflow_failed: "failed", workflow_cancelled: "cancelled",
  worker_lost: "queued",
};
const TERMINAL = new Set(["completed", "failed", "cancelled"]);
const MAX_LOG = 50_000; // entries kept in the page; the log itself lives in Redis

export function createModel(runId) {
  return {
    runId, workflow: "", input: null, record: null, status: "", progress: null,
    attempt: 0, worker: "", createdAt: "", startedAt: "", finishedAt: "", lastTs: "",
    result: undefined, error: "", viewers: null, seq: 0, count: 0, dropped: 0,
    log: [], tasks: new Map(), order: [], running: [], openSteps: [], tokenGroups: new Map(),
    iter: null, stats: null, quote: null, current: null,
    pauseAsked: false, stopAsked: false, cancelAsked: false, trimmedFrom: null, version: 0,
  };
}

export const isTerminal = (m) => TERMINAL.has(m.status);
export const isActive = (m) => ["queued", "running", "paused"].includes(m.status);

export function applyRecord(m, rec) {
  if (!rec) return;
  m.record = rec;
  m.workflow = rec.workflow || m.workflow;
  m.input = rec.input ?? m.input;
  m.createdAt = rec.created_at || m.createdAt;
  if (TERMINAL.has(rec.status) || (rec.seq || 0) >= m.seq) m.status = rec.status;
  if (Number.isFinite(rec.progress) && (rec.seq || 0) > 0) m.progress = Math.max(m.progress ?? 0, rec.progress);
  if (TERMINAL.has(rec.status)) m.progress = Math.max(m.progress ?? 0, rec.progress ?? 0);
  m.attempt = Math.max(m.attempt, rec.attempt || 0);
  m.startedAt = m.startedAt || rec.started_at || "";
  m.finishedAt = rec.finished_at || m.finishedAt;
  if (rec.result !== null && rec.result !== undefined) m.result = rec.result;
  if (rec.error) m.error = rec.error;
  m.worker = m.worker || rec.worker || "";
  if (rec.viewers !== undefined) m.viewers = rec.viewers;
  if (TERMINAL.has(m.status)) finish(m);
  m.version++;
}

// A resync: events before `from` are gone; start again from the run's record and state.
export function applyResync(m, { run, state, from, reason }) {
  const fresh = createModel(m.runId);
  Object.assign(m, fresh, { trimmedFrom: reason === "rolled_back" ? "" : from || "" });
  applyRecord(m, run);
  if (state && typeof state === "object") stateStats(m, state);
  const message = reason === "rolled_back"
    ? "Redis failed over and lost the newest events: the trace starts again from its log."
    : `The log was trimmed: events before ${from || "this point"} are gone.`;
  pushLog(m, { type: "resync", seq: 0, ts: new Date().toISOString(), message });
}

function stateStats(m, d) {
  if (d.iteration_count !== undefined || d.total_quotes_delivered !== undefined) {
    m.stats = {
      iterations: d.iteration_count ?? d.iteration ?? 0,
      quotes: d.total_quotes_delivered ?? d.quotes_delivered ?? 0,
      elapsed: Number(d.total_elapsed ?? d.elapsed ?? 0),
    };
  }
  if (d.current_quote) m.quote = d.current_quote;
}

function pushLog(m, entry) {
  m.log.push(entry);
  if (m.log.length > MAX_LOG) {
    const drop = m.log.length - MAX_LOG;
    m.log.splice(0, drop);
    m.dropped += drop;
  }
}

function task(m, key, name, kind) {
  let t = m.tasks.get(key);
  if (!t) {
    t = { key, name: name || key, kind, state: "pending", worker: "", tries: 0, start: "", firstStart: "",
      end: "", message: "", text: "", chunks: 0, result: undefined, error: "", attempt: 0, v: 0 };
    m.tasks.set(key, t);
    m.order.push(key);
  }
  return t;
}

function started(m, t, ev) {
  t.state = "running";
  t.start = ev.ts;
  t.firstStart = t.firstStart || ev.ts;
  t.end = "";
  t.attempt = ev.attempt;
  if (!m.running.includes(t.key)) m.running.push(t.key);
}

function ended(m, t, ev, state) {
  t.state = state;
  t.end = ev.ts;
  m.running = m.running.filter((k) => k !== t.key);
  m.openSteps = m.openSteps.filter((k) => k !== t.key);
  m.tokenGroups.delete(t.key);
  if (m.current && m.current.key === t.key) {
    const last = m.tasks.get(m.running[m.running.length - 1]);
    m.current = last ? { key: last.key, name: last.name, message: last.message } : null;
  }
}

function finish(m) {
  for (const key of m.running) {
    const t = m.tasks.get(key);
    if (t && t.state === "running") {
      t.state = m.status === "completed" ? "completed" : "unfinished";
      t.end = t.end || m.finishedAt || m.lastTs;
      t.v++;
    }
  }
  m.running = [];
  m.openSteps = [];
  m.tokenGroups.clear();
  m.current = null;
}

function tokenKey(m, ev) {
  if (ev.task_id) return ev.task_id;
  if (m.openSteps.length) return m.openSteps[m.openSteps.length - 1];
  return ev.task || "output";
}

function onToken(m, ev) {
  const d = ev.data || {};
  const text = typeof d.text === "string" ? d.text : "";
  const key = tokenKey(m, ev);
  const t = task(m, key, ev.task || key, m.tasks.has(key) ? undefined : "stream");
  if (t.gap && t.text) t.text += "\n\n"; // a new model call after a progress step
  t.gap = false;
  t.text += text;
  t.chunks++;
  t.v++;
  if (d.model) t.model = d.model;
  if (d.simulated !== undefined) t.simulated = d.simulated;
  let group = m.tokenGroups.get(key);
  if (!group) {
    group = { type: "token", seq: ev.seq, id: ev.id, ts: ev.ts, key, task: t.name, chunks: 0, chars: 0, tail: "", attempt: ev.attempt, simulated: d.simulated };
    m.tokenGroups.set(key, group);
    pushLog(m, group);
  }
  group.chunks++;
  group.chars += text.length;
  group.tail = (group.tail + text).slice(-240);
  group.lastTs = ev.ts;
}

export function applyEvent(m, ev) {
  m.count++;
  m.seq = Math.max(m.seq, ev.seq || 0);
  m.version++;
  if (ev.ts) m.lastTs = ev.ts;
  if (Number.isFinite(ev.progress)) m.progress = Math.max(m.progress ?? 0, ev.progress);
  if (ev.attempt > m.attempt) m.attempt = ev.attempt;
  const status = LIFECYCLE[ev.type];
  if (status && !TERMINAL.has(m.status)) m.status = status;
  const d = ev.data || {};
  if (ev.type === "token") return onToken(m, ev);
  pushLog(m, ev);
  const key = ev.task_id || ev.task;
  switch (ev.type) {
    case "workflow_started":
      m.startedAt = m.startedAt || ev.ts;
      if (d.worker) m.worker = d.worker;
      break;
    case "workflow_completed": case "workflow_failed": case "workflow_cancelled":
      m.finishedAt = ev.ts;
      if (d.result !== undefined) m.result = d.result;
      if (ev.type === "workflow_failed") m.error = d.error || ev.message;
      finish(m);
      return;
    case "signal_received":
      if (d.signal === "pause") m.pauseAsked = true;
      if (d.signal === "resume") m.pauseAsked = false;
      if (d.signal === "stop") m.stopAsked = true;
      if (d.signal === "cancel") m.cancelAsked = true;
      return;
    case "workflow_resumed":
      m.pauseAsked = false;
      return;
    case "worker_lost":
      m.worker = "";
      return;
    case "task_started": {
      const t = task(m, key, ev.task, d.worker ? "task" : "step");
      if (t.kind === "stream") t.kind = d.worker ? "task" : "step";
      started(m, t, ev);
      t.worker = d.worker || m.worker;
      t.tries = Math.max(t.tries, (d.try ?? 0) + 1);
      t.message = "";
      t.v++;
      if (t.kind === "step") m.openSteps.push(t.key);
      m.current = { key: t.key, name: t.name, message: "" };
      return;
    }
    case "task_completed": case "task_failed": {
      const t = task(m, key, ev.task, "step");
      if (ev.type === "task_completed") t.result = d.result;
      else t.error = d.error || ev.message;
      if (d.worker) t.worker = d.worker;
      ended(m, t, ev, ev.type === "task_completed" ? "completed" : "failed");
      t.v++;
      return;
    }
    case "task_retrying": {
      const t = task(m, key, ev.task, "task");
      t.tries = Math.max(t.tries, (d.try ?? t.tries) + 1);
      t.error = d.error || d.reason || ev.message;
      ended(m, t, ev, "retrying");
      t.v++;
      return;
    }
    case "iteration_started": case "iteration_completed": {
      const n = d.iteration;
      if (!Number.isFinite(n)) break;
      const t = task(m, `iter:${n}`, (ev.message || "").split(":")[0] || `Iteration ${n}`, "iteration");
      if (ev.type === "iteration_started") {
        started(m, t, ev);
        t.worker = m.worker;
        t.tries = 1;
        t.message = ev.message;
      } else {
        t.result = d.current_quote ?? d.outputs ?? d.findings;
        t.message = ev.message;
        ended(m, t, ev, "completed");
      }
      t.v++;
      break;
    }
    default:
      break;
  }
  if (Number.isFinite(d.iteration) && Number.isFinite(d.progress)) {
    m.iter = { n: d.iteration, pct: Math.max(0, Math.min(100, d.progress)), sleep: d.sleep_s ?? m.iter?.sleep };
  }
  stateStats(m, d);
  if (ev.type === "task_progress" && ev.task_id && m.tasks.has(ev.task_id)) {
    const t = m.tasks.get(ev.task_id);
    t.message = ev.message;
    t.gap = true;
    t.v++;
  }
  if (ev.task && ev.type !== "iteration_completed") {
    const k = m.tasks.has(key) ? key : ev.task;
    m.current = { key: k, name: ev.task, message: ev.message || "" };
  }
}

// Seconds a task took (or has taken so far).
export function taskSeconds(t, now = Date.now()) {
  const a = Date.parse(t.start || t.firstStart);
  if (Number.isNaN(a)) return NaN;
  const b = t.end ? Date.parse(t.end) : now;
  return Math.max(0, (b - a) / 1000);
}

export function fold(runId, record, events) {
  const m = createModel(runId);
  for (const ev of events) applyEvent(m, ev);
  applyRecord(m, record);
  return m;
}
