// JSON over fetch, with the gateway's error shape {"error": {"code", "message"}} turned into Error.
// Live data never comes from here: event streams are live.js's alone.
//
// Credentials: the browser sends the session cookie by itself (HttpOnly: this page never sees
// it). A 401 means the session is gone: it is thrown as usual and reported to the one handler
// set with onUnauthorized, unless the call says a 401 is an answer (`auth: false`, signing in).
// In a shared view the share token goes to the shared run's record only (live.js sends it with
// that run's stream); no other route ever gets it.
export class ApiError extends Error {
  constructor(status, code, message, details) {
    super(message);
    this.status = status;
    this.code = code;
    this.details = details;
  }
}

let unauthorized = null;
export function onUnauthorized(fn) {
  unauthorized = fn;
}

let share = null; // {runId, token} in a shared view
export function useShareToken(runId, token) {
  share = { runId, token };
}

export async function api(path, { method = "GET", body, auth = true } = {}) {
  const init = { method, headers: { Accept: "application/json" } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(path, init);
  } catch (err) {
    throw new ApiError(0, "network", "the gateway is unreachable", null);
  }
  const text = await res.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!res.ok) {
    const err = (data && data.error) || {};
    const error = new ApiError(res.status, err.code || "error", err.message || res.statusText, err.details);
    if (res.status === 401 && auth && unauthorized) unauthorized(error);
    throw error;
  }
  return data;
}

const enc = encodeURIComponent;

export const getRun = (id) =>
  api(`/api/runs/${enc(id)}${share && share.runId === id ? `?token=${enc(share.token)}` : ""}`);
export const getState = (id) => api(`/api/runs/${enc(id)}/state`);
export const startRun = (workflow, input) => api("/api/runs", { method: "POST", body: { workflow, input } });
export const signal = (id, name, payload = {}) =>
  api(`/api/runs/${enc(id)}/signals/${enc(name)}`, { method: "POST", body: payload });

export function listRuns({ workflow = "", status = "", limit = 25, before = "" } = {}) {
  const q = new URLSearchParams();
  if (workflow) q.set("workflow", workflow);
  if (status) q.set("status", status);
  if (before) q.set("before", before);
  q.set("limit", String(limit));
  return api(`/api/runs?${q}`);
}

let catalog = null;
export function workflows() {
  catalog = catalog || api("/api/workflows").then((d) => (Array.isArray(d) ? d : d.workflows || []));
  catalog.catch(() => { catalog = null; });
  return catalog;
}

// The whole log of a run as JSON pages (for Compare), at most `maxPages` pages of 1000.
export async function allEvents(id, maxPages = 30) {
  const out = [];
  let after = "";
  for (let page = 0; page < maxPages; page++) {
    const q = new URLSearchParams({ limit: "1000" });
    if (after) q.set("after", after);
    const data = await api(`/api/runs/${enc(id)}/events?${q}`);
    out.push(...data.events);
    if (!data.next || data.events.length < 1000) return { events: out, complete: true };
    after = data.next;
  }
  return { events: out, complete: false };
}

// Signing in and out: a 401 here is an answer (a wrong token), not a session that ended.
export const getSession = () => api("/api/session", { auth: false });
export const signIn = (token) => api("/api/session", { method: "POST", body: { token }, auth: false });
export const signOut = () => api("/api/session", { method: "DELETE", auth: false });
export const shareRun = (id) => api(`/api/runs/${enc(id)}/share`, { method: "POST", body: {} });
