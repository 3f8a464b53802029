// Live data for this tab: the only module that opens event streams. Views call followRun and
// followRuns and never see how the events arrive.
//
// Contract (what the views rely on):
// - followRun(runId, {onEvent, onResync, onState}) -> {close()}
//   onEvent(event) gets every event of the run in log order, from its first (seq 1) unless a
//   resync came first, with no gap and no duplicate, across reconnects. onResync({run, state,
//   from}) when the log was trimmed past what this tab had: events before `from` are gone.
//   Following ends by itself after the run's terminal event (onState("closed")), or at once for
//   a run that does not exist (onState("closed") without events).
// - followRuns({onSnapshot, onSummary, onState}) -> {close()}
//   onSnapshot({runs: [summary, ...]}) first, newest first (and again if the transport had to
//   start over); then onSummary(summary) for every lifecycle change of any run, including the
//   changes a reconnect catches up on.
// - onState(state): "connecting" | "open" | "reconnecting" | "polling" | "closed" |
//   "unauthorized" (the gateway refused the stream: the session ended, or the share token
//   expired; nothing more comes until this page follows again after signing in).
// - close() stops the callbacks; it does not call onState.
//
// Transport: the whole browser shares ONE event-stream connection (GET /api/streams carrying
// every followed run of every tab, and the run-list feed), held by a hub (live-hub.js) that runs
// - in a SharedWorker (live-worker.js): the usual case;
// - without SharedWorker, in one tab elected with a Web Lock, relaying over BroadcastChannel
//   (live-leader.js); another tab takes over when it closes;
// - without Web Locks either (plain http on a non-local host), in this tab: one connection per tab.
// The hub polls the JSON page API instead where EventSource is missing ("polling").
// A shared view (useShareToken) always has a hub of its own in its tab, which sends the share
// token: the browser-wide connection carries the signed-in session's runs and feed, and a share
// token may read one run only.
// Requests (start, signals, pages) are plain fetch and never queue behind streams.
import { Cursor, EVENT_TYPES, PROTOCOL, TERMINAL } from "./live-cursor.js";
import { Hub } from "./live-hub.js";
import { leaderLink } from "./live-leader.js";

export { EVENT_TYPES, TERMINAL };

const newTabId = () => `${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 10)}`;
let tab = newTabId();
const followers = new Map(); // sub id -> follower
let nextSub = 1;
let link = null; // {mode, post(msg)}, opened by the first follower
let held = null; // resolves to the lock this tab holds while it lives (null without Web Locks)
let shareToken = null; // a shared view's token: kept in memory only

// Before the first follow: this page is a shared view, its streams carry `token`.
export function useShareToken(token) {
  shareToken = token;
}

export function followRun(runId, { onEvent, onResync = () => {}, onState = () => {} }) {
  return follow({ run: runId, cursor: new Cursor(), onEvent, onResync, onState });
}

export function followRuns({ onSnapshot = () => {}, onSummary = () => {}, onState = () => {} }) {
  return follow({ run: null, onSnapshot, onSummary, onState });
}

// How this tab gets its events: "shared-worker", "leader" or "tab" (null before the first follow).
export function transportMode() {
  return link && link.mode;
}

function follow(f) {
  f.id = nextSub++;
  f.state = null;
  followers.set(f.id, f);
  setState(f, "connecting");
  send(followMessage(f));
  return {
    close() {
      if (followers.delete(f.id)) send({ op: "unfollow", sub: f.id });
    },
  };
}

function followMessage(f) {
  if (f.run === null) return { op: "follow-runs", sub: f.id };
  return { op: "follow", sub: f.id, run: f.run, cursor: f.cursor.toJSON() };
}

function receive(msg) {
  if (msg.op === "leader") return resubscribe();
  if (msg.op === "state" && msg.sub === undefined) {
    for (const f of [...followers.values()]) setState(f, msg.state);
    return;
  }
  const f = followers.get(msg.sub);
  if (!f) return;
  if (msg.op === "state") setState(f, msg.state);
  else if (msg.op === "event") take(f, msg.event);
  else if (msg.op === "resync") {
    // A log that went back in time: the events that follow reuse seqs this follower has seen.
    if (msg.data.reason === "rolled_back") f.cursor = new Cursor(null, msg.data.after_seq || 0);
    call(f.onResync, msg.data);
  }
  else if (msg.op === "snapshot") call(f.onSnapshot, msg.data);
  else if (msg.op === "summary") call(f.onSummary, msg.data);
  else if (msg.op === "missing") {
    followers.delete(f.id); // the hub has forgotten it already
    setState(f, "closed");
  }
}

function take(f, event) {
  if (!f.cursor.isNew(event)) return;
  f.cursor.take(event);
  call(f.onEvent, event);
  if (TERMINAL.has(event.type) && followers.delete(f.id)) {
    send({ op: "unfollow", sub: f.id });
    setState(f, "closed");
  }
}

function setState(f, state) {
  if (f.state === state || f.state === "closed") return;
  f.state = state;
  call(f.onState, state);
}

// A view's exception is reported as uncaught, and does not stop the other followers' callbacks.
function call(fn, arg) {
  try {
    fn(arg);
  } catch (err) {
    if (typeof reportError === "function") reportError(err);
    else console.error(err);
  }
}

// -- the link to the hub -----------------------------------------------------------------------

function send(msg) {
  if (!link) open();
  held.then(() => link.post(msg)); // in order: every message waits on the same promise
}

function open() {
  held = holdTabLock();
  if (shareToken) link = tabLink({ token: shareToken });
  else if (typeof SharedWorker === "function") link = workerLink();
  else if (globalThis.navigator?.locks && typeof BroadcastChannel === "function") link = leaderLink(tab, receive);
  else link = tabLink();
  hello();
}

// The hub's first message from this tab: the lock it may wait on to hear that the tab is gone.
function hello() {
  held.then((lock) => link.post({ op: "hello", lock }));
}

// Everything again, from each follower's cursor: a new leader, a hub of our own, or a page back
// from the bfcache (on a fresh link: the hub may have let the old one go).
function resubscribe() {
  if (link) hello();
  for (const f of followers.values()) send(followMessage(f));
}

function workerLink() {
  const worker = new SharedWorker(`/js/live-worker.js?v=${PROTOCOL}`, { type: "module", name: "tidings-live" });
  worker.port.onmessage = (msg) => receive(msg.data);
  worker.onerror = () => {
    // The worker could not start (module workers unsupported, blocked): a hub of our own.
    link = tabLink();
    resubscribe();
  };
  return { mode: "shared-worker", post: (msg) => worker.port.postMessage(msg) };
}

function tabLink(options) {
  const hub = new Hub(options);
  const { port1, port2 } = new MessageChannel();
  port1.onmessage = (msg) => hub.receive(port1, msg.data);
  port2.onmessage = (msg) => receive(msg.data);
  return { mode: "tab", post: (msg) => port2.postMessage(msg) };
}

// Held until the tab is gone, crash included: the hub asks for the same lock and is granted it
// then. Resolves to its name, or null where Web Locks are missing (insecure context): then only
// the pagehide "bye" tells the hub.
function holdTabLock() {
  if (!globalThis.navigator?.locks) return Promise.resolve(null);
  const name = `tidings-live-tab:${tab}`;
  return new Promise((resolve) => {
    navigator.locks.request(name, () => {
      resolve(name);
      return new Promise(() => {});
    }).catch(() => resolve(null));
  });
}

addEventListener("pagehide", () => link && held.then(() => link.post({ op: "bye" })));
addEventListener("pageshow", (event) => {
  if (!event.persisted || !link) return;
  link = null;
  tab = newTabId();
  resubscribe();
});
