// What Compare compares: each run's record and whole log folded by trace-model.js (the same
// fold the Trace tab uses), reduced to metrics, per-task times and flattened inputs/results.
import { allEvents, getRun } from "./api.js";
import { span } from "./format.js";
import { fold, taskSeconds } from "./trace-model.js";

export async function loadRun(id) {
  const [record, log] = await Promise.all([getRun(id), allEvents(id)]);
  const model = fold(id, record, log.events);
  return { id, record, model, complete: log.complete };
}

export function metrics(run) {
  const m = run.model;
  const tasks = m.order.map((k) => m.tasks.get(k));
  const work = tasks.filter((t) => t.kind !== "iteration");
  return {
    status: m.status,
    started: m.startedAt,
    duration: m.startedAt ? span(m.startedAt, m.finishedAt || null) : NaN,
    attempts: m.attempt || 1,
    events: m.count,
    tasks: work.length,
    iterations: tasks.filter((t) => t.kind === "iteration").length,
    retries: work.reduce((n, t) => n + Math.max(0, t.tries - 1), 0),
    chars: tasks.reduce((n, t) => n + t.text.length, 0),
    workers: new Set(work.map((t) => t.worker).filter(Boolean)).size,
  };
}

// Rows keyed by task name, in order of first appearance across the runs.
export function taskRows(runs) {
  const names = [];
  const seen = new Set();
  const byRun = runs.map((r) => {
    const map = new Map();
    for (const key of r.model.order) {
      const t = r.model.tasks.get(key);
      if (!seen.has(t.name)) { seen.add(t.name); names.push(t.name); }
      map.set(t.name, t);
    }
    return map;
  });
  return names.map((name) => ({
    name,
    cells: byRun.map((map) => {
      const t = map.get(name);
      return t ? { secs: taskSeconds(t), tries: t.tries, state: t.state, kind: t.kind, worker: t.worker } : null;
    }),
  }));
}

export function flatten(value, prefix = "", out = new Map()) {
  if (value === null || value === undefined || typeof value !== "object") {
    out.set(prefix || "(value)", value === undefined ? "" : typeof value === "string" ? value : JSON.stringify(value));
  } else if (Array.isArray(value)) {
    if (!value.length) out.set(prefix, "[]");
    value.forEach((v, i) => flatten(v, `${prefix}[${i}]`, out));
  } else {
    const keys = Object.keys(value);
    if (!keys.length) out.set(prefix, "{}");
    for (const k of keys) flatten(value[k], prefix ? `${prefix}.${k}` : k, out);
  }
  return out;
}

// [{path, values, same}] over the union of paths of each run's value.
export function differences(values) {
  const flat = values.map((v) => flatten(v ?? null));
  const paths = [];
  const seen = new Set();
  for (const f of flat) for (const p of f.keys()) if (!seen.has(p)) { seen.add(p); paths.push(p); }
  return paths.map((path) => {
    const vals = flat.map((f) => (f.has(path) ? f.get(path) : undefined));
    return { path, values: vals, same: vals.every((v) => v === vals[0]) };
  });
}
