// Per-run bookkeeping shared by every part of the live transport (the tab's followers, the hub
// that holds the connection, the polling fallback): where a reader is in a run's log, and the one
// rule for repeats; and the protocol's constants. Nothing here touches the DOM, so the
// SharedWorker can import it.

export const EVENT_TYPES = [
  "workflow_started", "workflow_completed", "workflow_failed", "workflow_cancelled",
  "workflow_paused", "workflow_resumed", "task_started", "task_progress", "task_completed",
  "task_failed", "task_retrying", "iteration_started", "iteration_completed", "token",
  "signal_received", "worker_lost", "log",
];

export const TERMINAL = new Set(["workflow_completed", "workflow_failed", "workflow_cancelled"]);

// What the gateway accepts as a run id (shared/keys.py `check_run_id`). One malformed id would
// fail a whole /api/streams request, and with it every tab's runs: the hub refuses it alone.
export const RUN_ID = /^[A-Za-z0-9_-]{1,64}$/;

// Runs in the run list's snapshot (services/gateway/cursors.py SNAPSHOT_SIZE); the polling
// fallback asks for as many, the hub keeps its merged copy to that length.
export const SNAPSHOT_SIZE = 50;

// Bumped when the messages between tabs and the hub change, so a tab loaded from a newer
// dashboard never talks to an older SharedWorker still serving other tabs.
export const PROTOCOL = 2;

// A position in one run's log: the last event taken (its stream id and its seq). seq is gapless
// from 1 within a run, so "have I seen it" is one comparison, whatever path the event came by.
export class Cursor {
  constructor(id = null, seq = 0) {
    this.id = id;
    this.seq = seq;
  }

  static from({ id = null, seq = 0 } = {}) {
    return new Cursor(id, seq);
  }

  // A repeat (replayed again after a reconnect, or served both from a cache and live) is not new.
  isNew(event) {
    return event.seq > this.seq;
  }

  // Taking `event` now would skip events: only allowed right after a resync.
  skipsTo(event) {
    return event.seq > this.seq + 1;
  }

  take(event) {
    this.id = event.id;
    this.seq = event.seq;
  }

  // `run=ID` or `run=ID/CURSOR` of /api/streams; `after=` of the JSON page API.
  param(runId) {
    return this.id ? `${runId}/${this.id}` : runId;
  }

  toJSON() {
    return { id: this.id, seq: this.seq };
  }
}
