// Live data for this tab: the only module that opens event streams. Views call followRun and
// followRuns and never see how the events arrive.
//
// Contract (what the views rely on):
// - followRun(runId, {onEvent, onResync, onState}) -> {close()}
//   onEvent(event) gets every event of the run in log order, from its first (seq 1) unless a
//   resync came first, with no gap and no duplicate, across reconnects. onResync({run, state,
//   from}) when the log was trimmed past what this tab had: events before `from` are gone.
//   Following ends by itself after the run's terminal event (onState("closed")).
// - followRuns({onSnapshot, onSummary, onState}) -> {close()}
//   onSnapshot({runs: [summary, ...]}) on every (re)connect, newest first; then onSummary(summary)
//   for every lifecycle change of any run.
// - onState(state): "connecting" | "open" | "reconnecting" | "polling" | "closed".
//
// This version gives each follower its own EventSource; the shared one-connection-per-browser
// transport replaces it behind the same contract.

export const EVENT_TYPES = [
  "workflow_started", "workflow_completed", "workflow_failed", "workflow_cancelled",
  "workflow_paused", "workflow_resumed", "task_started", "task_progress", "task_completed",
  "task_failed", "task_retrying", "iteration_started", "iteration_completed", "token",
  "signal_received", "worker_lost", "log",
];

export const TERMINAL = new Set(["workflow_completed", "workflow_failed", "workflow_cancelled"]);

export function followRun(runId, { onEvent, onResync = () => {}, onState = () => {} }) {
  const source = new EventSource(`/api/runs/${encodeURIComponent(runId)}/events`);
  let lastSeq = 0;
  onState("connecting");
  for (const type of EVENT_TYPES) {
    source.addEventListener(type, (msg) => {
      const event = JSON.parse(msg.data);
      if (event.seq <= lastSeq) return;
      lastSeq = event.seq;
      onEvent(event);
      if (TERMINAL.has(type)) {
        source.close();
        onState("closed");
      }
    });
  }
  source.addEventListener("resync", (msg) => {
    lastSeq = 0;
    onResync(JSON.parse(msg.data));
  });
  source.onopen = () => onState("open");
  source.onerror = () => onState(source.readyState === EventSource.CLOSED ? "closed" : "reconnecting");
  return { close: () => source.close() };
}

export function followRuns({ onSnapshot, onSummary, onState = () => {} }) {
  const source = new EventSource("/api/runs/events");
  onState("connecting");
  source.addEventListener("snapshot", (msg) => onSnapshot(JSON.parse(msg.data)));
  source.addEventListener("run", (msg) => onSummary(JSON.parse(msg.data)));
  source.onopen = () => onState("open");
  source.onerror = () => onState(source.readyState === EventSource.CLOSED ? "closed" : "reconnecting");
  return { close: () => source.close() };
}
