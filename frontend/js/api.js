// JSON over fetch, with the gateway's error shape {"error": {"code", "message"}} turned into Error.
export class ApiError extends Error {
  constructor(status, code, message, details) {
    super(message);
    this.status = status;
    this.code = code;
    this.details = details;
  }
}

export async function api(path, { method = "GET", body } = {}) {
  const init = { method, headers: { Accept: "application/json" } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const res = await fetch(path, init);
  const text = await res.text();
  const data = text ? JSON.parse(text) : null;
  if (!res.ok) {
    const err = (data && data.error) || {};
    throw new ApiError(res.status, err.code || "error", err.message || res.statusText, err.details);
  }
  return data;
}

export const EVENT_TYPES = [
  "workflow_started", "workflow_completed", "workflow_failed", "workflow_cancelled",
  "workflow_paused", "workflow_resumed", "task_started", "task_progress", "task_completed",
  "task_failed", "task_retrying", "iteration_started", "iteration_completed", "token",
  "signal_received", "worker_lost", "log", "resync",
];

export const TERMINAL = new Set(["workflow_completed", "workflow_failed", "workflow_cancelled"]);

// Follow one run's events. EventSource resumes with Last-Event-ID by itself after a drop; we close
// it after the terminal event so it does not reconnect to a finished stream.
export function followRun(runId, onEvent, onState) {
  const source = new EventSource(`/api/runs/${encodeURIComponent(runId)}/events`);
  for (const type of EVENT_TYPES) {
    source.addEventListener(type, (msg) => {
      const event = JSON.parse(msg.data);
      onEvent(type, event);
      if (TERMINAL.has(type)) {
        source.close();
        onState && onState("closed");
      }
    });
  }
  source.onopen = () => onState && onState("open");
  source.onerror = () => onState && onState(source.readyState === EventSource.CLOSED ? "closed" : "reconnecting");
  return source;
}
