// The run-list feed: one followRuns subscription per page, shared by every view that needs
// lifecycle summaries (the Runs list, the running indicator, the status bar, Compare).
import { listRuns } from "./api.js";
import { followRuns } from "./live.js";

const runs = new Map(); // run_id -> latest summary
const listeners = new Set();
let connection = "connecting";

function emit(kind, payload) {
  for (const fn of listeners) {
    try {
      fn(kind, payload);
    } catch (err) {
      console.warn("feed listener failed", err);
    }
  }
}

function merge(summary) {
  const old = runs.get(summary.run_id);
  // Summaries can arrive out of order across a reconnect: the higher seq wins.
  if (old && (old.seq || 0) > (summary.seq || 0)) return old;
  const next = { ...old, ...summary };
  runs.set(summary.run_id, next);
  return next;
}

// Running monty runs older than the snapshot's 50 newest still count for the indicator.
async function seedActive() {
  for (const status of ["running", "paused", "queued"]) {
    try {
      const page = await listRuns({ workflow: "monty", status, limit: 50 });
      for (const r of page.runs || []) emit("summary", merge(r));
    } catch {
      /* the feed itself reports connection problems */
    }
  }
}

export function startFeed() {
  followRuns({
    onSnapshot(data) {
      const list = Array.isArray(data) ? data : data.runs || [];
      for (const s of list) merge(s);
      emit("snapshot", list);
      seedActive();
    },
    onSummary(summary) {
      emit("summary", merge(summary));
    },
    onState(state) {
      connection = state;
      emit("state", state);
    },
  });
}

export function onFeed(fn) {
  listeners.add(fn);
  return () => listeners.delete(fn);
}

export const summaryOf = (id) => runs.get(id);
export const connectionState = () => connection;

// Record what a view learnt by other means (a fetched record) so everyone agrees.
export function noteRun(record) {
  if (record && record.run_id) emit("summary", merge(record));
}

export function activeMonty() {
  return [...runs.values()].filter((r) => r.workflow === "monty" && (r.status === "running" || r.status === "paused" || r.status === "queued"));
}
