// Where the hub's events come from: one /api/streams EventSource for the whole set of runs (and
// the run-list feed), or, where EventSource is missing, the JSON page API polled every second.
//
// Both take a plan {runs: [[runId, Cursor], ...], feed: bool, token: string|null} and report to
// a sink:
//   event(runId, event), resync(runId, {run, state, from}), missing(runId),
//   snapshot({runs}), summary(summary), open(state), error()
// and return {close()}. They never reconnect by themselves: the hub decides when and from where.
//
// `token` is a share token (a shared view: one run, no feed). It goes as `?token=` to exactly the
// routes that take one: /api/streams naming that run, and the run's JSON log pages. Without it the
// browser's session cookie (or open mode) is what lets the requests in.
import { Cursor, EVENT_TYPES, SNAPSHOT_SIZE, TERMINAL } from "./live-cursor.js";

const enc = encodeURIComponent;

const PAGE = 500;
const POLL_MS = 1000;

export function streamSource(plan, sink) {
  const query = new URLSearchParams();
  for (const [runId, cursor] of plan.runs) query.append("run", cursor.param(runId));
  if (plan.feed) query.append("feed", "runs");
  if (plan.token) query.append("token", plan.token);
  const source = new EventSource(`/api/streams?${query}`);
  const on = (name, fn) => source.addEventListener(name, (msg) => fn(JSON.parse(msg.data)));
  for (const type of EVENT_TYPES) on(type, (event) => sink.event(event.run_id, event));
  on("resync", (data) => sink.resync(data.run.run_id, data));
  on("missing", (data) => sink.missing(data.run_id));
  on("snapshot", (data) => sink.snapshot(data));
  on("run", (summary) => sink.summary(summary));
  source.onopen = () => sink.open("open");
  // Closed at once: left alone, EventSource would resume with Last-Event-ID, which names one run
  // only; the hub reopens with every run's cursor instead.
  source.onerror = () => {
    source.close();
    sink.error();
  };
  return { close: () => source.close() };
}

export function pollSource(plan, sink) {
  const runs = new Map(plan.runs.map(([runId, cursor]) => [runId, Cursor.from(cursor)]));
  let stopped = false;
  let timer = null;

  async function pollRun(runId, cursor) {
    for (;;) {
      const after = cursor.id ? `after=${enc(cursor.id)}&` : "";
      const token = plan.token ? `&token=${enc(plan.token)}` : "";
      const page = await getJSON(`/api/runs/${enc(runId)}/events?${after}limit=${PAGE}${token}`);
      if (stopped) return;
      if (page === null) {
        runs.delete(runId);
        sink.missing(runId);
        return;
      }
      if (page.gap && page.events.length) {
        // A share token may not read the state route: the resync then carries none.
        const state = plan.token ? null : await getJSON(`/api/runs/${enc(runId)}/state`).catch(() => null);
        if (stopped) return;
        sink.resync(runId, { run: page.run, state, from: page.events[0].id });
      }
      for (const event of page.events) {
        cursor.take(event);
        sink.event(runId, event);
        if (TERMINAL.has(event.type)) {
          runs.delete(runId);
          return;
        }
      }
      if (page.events.length < PAGE) return;
    }
  }

  async function tick() {
    try {
      for (const [runId, cursor] of runs) await pollRun(runId, cursor);
      if (plan.feed && !stopped) {
        const list = await getJSON(`/api/runs?limit=${SNAPSHOT_SIZE}`);
        if (!stopped) sink.snapshot({ runs: list.runs });
      }
    } catch {
      if (!stopped) sink.error();
      return;
    }
    if (stopped) return;
    sink.open("polling");
    timer = setTimeout(tick, POLL_MS);
  }

  tick();
  return {
    close() {
      stopped = true;
      clearTimeout(timer);
    },
  };
}

async function getJSON(path) {
  const res = await fetch(path, { headers: { Accept: "application/json" } });
  if (res.status === 404) return null;
  if (!res.ok) throw new Error(`${path}: HTTP ${res.status}`);
  return res.json();
}

// After a connection failed: was it refused for want of credentials? EventSource does not say
// (an error is an error), so one small request asks: with a share token, the run's record (the
// only other route the token may read); otherwise the session route, which never answers 401
// and says whether auth is on and this browser is signed in. A failure to ask is not a refusal.
export async function refused({ token, run }) {
  try {
    if (token) {
      if (!run) return false;
      const res = await fetch(`/api/runs/${enc(run)}?token=${enc(token)}`, { headers: { Accept: "application/json" } });
      return res.status === 401 || res.status === 403;
    }
    const res = await fetch("/api/session", { headers: { Accept: "application/json" } });
    if (!res.ok) return false;
    const session = await res.json();
    return Boolean(session.auth) && !session.role;
  } catch {
    return false;
  }
}
