// Formatting of times, durations and numbers for display.
export function parseTs(iso) {
  if (!iso) return NaN;
  return Date.parse(iso);
}

export function time(iso) {
  const t = parseTs(iso);
  return Number.isNaN(t) ? "" : new Date(t).toLocaleTimeString();
}

export function dateTime(iso) {
  const t = parseTs(iso);
  if (Number.isNaN(t)) return "";
  const d = new Date(t);
  const today = new Date();
  const sameDay = d.toDateString() === today.toDateString();
  return sameDay ? d.toLocaleTimeString() : `${d.toLocaleDateString()} ${d.toLocaleTimeString()}`;
}

// Milliseconds-precise clock time for the event log: 12:04:05.123
export function clock(iso) {
  const t = parseTs(iso);
  if (Number.isNaN(t)) return "";
  const d = new Date(t);
  const pad = (n, w = 2) => String(n).padStart(w, "0");
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

export function duration(seconds) {
  if (!Number.isFinite(seconds) || seconds < 0) return "";
  if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
  if (seconds < 60) return `${seconds.toFixed(1)} s`;
  if (seconds < 3600) {
    const m = Math.floor(seconds / 60);
    return `${m} min ${Math.floor(seconds - m * 60)} s`;
  }
  const hours = Math.floor(seconds / 3600);
  return `${hours} h ${Math.floor((seconds - hours * 3600) / 60)} min`;
}

// Seconds between two ISO stamps; the end defaults to now.
export function span(startIso, endIso) {
  const a = parseTs(startIso);
  if (Number.isNaN(a)) return NaN;
  const b = endIso ? parseTs(endIso) : Date.now();
  return Number.isNaN(b) ? NaN : Math.max(0, (b - a) / 1000);
}

export function num(n) {
  return Number.isFinite(n) ? n.toLocaleString() : "";
}

export function shortId(id) {
  return String(id || "").slice(0, 8);
}

export const ACTIVE = new Set(["queued", "running", "paused"]);
export const TERMINAL_STATUS = new Set(["completed", "failed", "cancelled"]);
