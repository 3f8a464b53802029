// The hub: one event-stream connection for every follower of every tab that talks to it. It runs
// in the SharedWorker (one per browser), in the leader tab (no SharedWorker), or in a tab of its
// own (neither SharedWorker nor Web Locks). Tabs talk to it through "ports" (anything with
// postMessage), with these messages:
//
//   tab -> hub  {op: "hello", lock}                     the Web Lock this tab holds while it lives
//               {op: "follow", sub, run, cursor}        follow a run from after `cursor` ({id, seq})
//               {op: "follow-runs", sub}                follow the run list
//               {op: "unfollow", sub} · {op: "bye"}     stop one follower · all of this tab's (pagehide)
//   hub -> tab  {op: "state", state, sub?}              connection state (for one follower or all;
//                                                       "unauthorized": refused, see below)
//               {op: "event", sub, event} · {op: "resync", sub, data} · {op: "missing", sub}
//               {op: "snapshot", sub, data} · {op: "summary", sub, data}
//
// Decisions worth knowing:
// - The connection carries the union of what the followers want: every unfinished run with a
//   follower, and the feed if anyone follows the run list. A change of that set reopens it
//   (debounced), each run from the hub's cursor: the server keeps nothing between connections.
// - A follower that starts behind the hub (a late tab wants the run from seq 1) is served from a
//   bounded cache of the run's newest events when it reaches back far enough; otherwise the run is
//   rewound: the connection reopens with that run from the follower's cursor, and every follower
//   drops what it already has by seq. No gap, no duplicate, per follower.
// - A follower's state is its own: one joining an open hub hears "connecting" until a connection
//   carrying its run (or the feed) has opened; from then the gateway counts it as a viewer.
// - After a run's terminal event the server sends nothing more for it: it leaves the set without
//   a reconnect, and is forgotten (with its cache) when its last follower leaves.
// - A tab is gone when the hub is granted the lock the tab held for its lifetime (crash and kill
//   included). Its followers also go at once when it says "bye" on pagehide (the only signal
//   where Web Locks are missing); a page restored from the bfcache follows again.
// - On an error the hub closes the EventSource itself and reopens after a backoff with every run's
//   cursor (EventSource's own retry would send one run's Last-Event-ID only).
// - Unless the error was a refusal (a session that ended, a share token that expired; one request
//   tells): then it says "unauthorized" and stops, rather than knock again every few seconds. A
//   follower that comes (a tab signed in again) starts it over.
// - A hub made with a share token ({token}, a shared view's own hub) sends it with its requests;
//   the shared hubs never carry one.
import { Cursor, RUN_ID, SNAPSHOT_SIZE, TERMINAL } from "./live-cursor.js";
import { pollSource, refused, streamSource } from "./live-sources.js";

const DEBOUNCE_MS = 50;
// Runs per connection: the gateway's TIDINGS_STREAM_MAX_RUNS default. Past it (a browser
// following more runs than that at once) the set is split over more connections.
const RUNS_PER_STREAM = 64;
const BACKOFF_MS = [250, 1000, 2000, 5000];
const CACHE_EVENTS = 500; // per run

class Run {
  constructor(cursor) {
    this.cursor = cursor; // the last event relayed
    this.cache = []; // the newest events relayed, oldest first, contiguous up to `cursor`
    this.subs = new Set();
    this.done = false; // terminal event relayed: the connection carries the run no more
    this.fresh = true; // wants a connection opened from `cursor` (new, or rewound)
    this.resync = null; // a resync, held for the followers the next event leaves behind
  }

  // Can a follower at `cursor` be brought up to date without reopening the run?
  serves(cursor) {
    return cursor.seq >= this.cursor.seq || (this.cache.length > 0 && this.cache[0].seq <= cursor.seq + 1);
  }

  rewind(cursor) {
    this.cursor = Cursor.from(cursor);
    this.cache = [];
    this.done = false;
    this.fresh = true;
    this.resync = null;
  }

  remember(event) {
    this.cache.push(event);
    if (this.cache.length > CACHE_EVENTS) this.cache.shift();
  }
}

export class Hub {
  constructor({ onDrop = () => {}, token = null } = {}) {
    this.onDrop = onDrop; // a port was dropped: its owner may close it
    this.token = token; // a share token: this hub serves a shared view
    this.ports = new Map(); // port -> {subs: Map(sub id -> sub)}
    this.runs = new Map(); // run id -> Run
    this.feed = new Set(); // subs following the run list
    this.watching = new Set(); // the tabs' locks we wait for
    this.snapshot = null; // the run list as relayed: the last snapshot with the summaries since
    this.state = "connecting";
    this.open = typeof EventSource === "function" ? streamSource : pollSource;
    this.source = null;
    this.opened = false; // the source has opened (a change may reopen it)
    this.deferred = false; // a change came while it was connecting
    this.carried = null; // what the open source carries: {runs: Set of unfinished run ids, feed}
    this.generation = 0; // callbacks of a source closed since are ignored
    this.timer = null;
    this.failures = 0;
  }

  receive(port, msg) {
    if (msg.op === "hello") this.hello(port, msg.lock);
    else if (msg.op === "follow") this.follow(port, msg.sub, msg.run, Cursor.from(msg.cursor));
    else if (msg.op === "follow-runs") this.followRuns(port, msg.sub);
    else if (msg.op === "unfollow") this.unfollow(port, msg.sub);
    else if (msg.op === "bye") this.release(port); // the page may come back from the bfcache
  }

  // -- ports and followers ---------------------------------------------------------------------

  entry(port) {
    let entry = this.ports.get(port);
    if (!entry) this.ports.set(port, (entry = { subs: new Map() }));
    return entry;
  }

  hello(port, lock) {
    this.entry(port);
    // The tab holds this lock until it is gone; asking for it is how we hear of that.
    if (!lock || !globalThis.navigator?.locks || this.watching.has(lock)) return;
    this.watching.add(lock);
    navigator.locks.request(lock, () => {
      this.watching.delete(lock);
      this.drop(port);
    });
  }

  follow(port, id, runId, cursor) {
    this.unfollow(port, id); // a tab re-following (new leader, page restored) replaces its follower
    if (!RUN_ID.test(runId)) return port.postMessage({ op: "missing", sub: id }); // would fail the whole stream
    this.retry();
    const sub = { port, id, run: runId, cursor };
    let run = this.runs.get(runId);
    const cached = run && run.serves(cursor) ? run.cache : [];
    if (!run) this.runs.set(runId, (run = new Run(Cursor.from(cursor))));
    else if (!run.serves(cursor)) run.rewind(cursor);
    run.subs.add(sub);
    this.entry(port).subs.set(id, sub);
    port.postMessage({ op: "state", sub: id, state: this.carries(sub) ? this.state : this.pending() });
    for (const event of cached) this.deliver(run, sub, event);
    this.schedule();
  }

  followRuns(port, id) {
    this.unfollow(port, id);
    this.retry();
    const sub = { port, id, run: null };
    this.feed.add(sub);
    this.entry(port).subs.set(id, sub);
    port.postMessage({ op: "state", sub: id, state: this.carries(sub) ? this.state : this.pending() });
    if (this.snapshot) port.postMessage({ op: "snapshot", sub: id, data: { runs: this.snapshot } });
    this.schedule();
  }

  unfollow(port, id) {
    const sub = this.ports.get(port)?.subs.get(id);
    if (!sub) return;
    this.ports.get(port).subs.delete(id);
    if (sub.run === null) {
      this.feed.delete(sub);
    } else {
      const run = this.runs.get(sub.run);
      run.subs.delete(sub);
      if (!run.subs.size) this.runs.delete(sub.run);
    }
    this.schedule();
  }

  // The tab is gone for good (its lock was granted to us).
  drop(port) {
    this.release(port);
    this.onDrop(port);
  }

  release(port) {
    const entry = this.ports.get(port);
    if (!entry) return;
    for (const id of [...entry.subs.keys()]) this.unfollow(port, id);
    this.ports.delete(port);
  }

  deliver(run, sub, event) {
    if (!sub.cursor.isNew(event)) return;
    if (run.resync && sub.cursor.skipsTo(event)) sub.port.postMessage({ op: "resync", sub: sub.id, data: run.resync });
    sub.cursor.take(event);
    sub.port.postMessage({ op: "event", sub: sub.id, event });
  }

  // Refused earlier: a new follower is worth one more try (its tab may have signed in again).
  retry() {
    if (this.state === "unauthorized") this.setState("connecting");
  }

  setState(state) {
    if (state === this.state) return;
    this.state = state;
    for (const port of this.ports.keys()) port.postMessage({ op: "state", state });
  }

  // Is `sub` on the open connection? A run's follower is live once a connection carrying its run
  // has opened (the gateway counts it as a viewer from then), not when it joins an open hub.
  carries(sub) {
    if (!this.opened || !this.carried) return false;
    if (sub.run === null) return this.carried.feed;
    const run = this.runs.get(sub.run);
    return run.done || (!run.fresh && this.carried.runs.has(sub.run));
  }

  // What a follower not yet carried is told: the hub's state, unless that is a live one.
  pending() {
    return this.state === "open" || this.state === "polling" ? "connecting" : this.state;
  }

  // -- the connection --------------------------------------------------------------------------

  schedule() {
    if (!this.timer) this.timer = setTimeout(() => this.apply(), DEBOUNCE_MS);
  }

  apply() {
    clearTimeout(this.timer);
    this.timer = null;
    if (this.state === "unauthorized") return; // until a follower asks again (retry)
    const runs = [...this.runs].filter(([, run]) => !run.done);
    const feed = this.feed.size > 0;
    if (this.source && !this.changed(runs, feed)) return;
    // One connect at a time: a change while connecting waits for the open (an aborted connect
    // costs the gateway a replay and leaves the browser an idle socket).
    if (this.source && !this.opened) return void (this.deferred = true);
    this.close();
    if (!feed) this.snapshot = null; // nobody keeps it up to date any more
    if (!runs.length && !feed) {
      this.state = "connecting"; // idle: the next follower waits for a connection again
      return;
    }
    for (const [, run] of runs) run.fresh = false;
    this.carried = { runs: new Set(runs.map(([id]) => id)), feed };
    const generation = this.generation;
    const live = (fn) => (...args) => generation === this.generation && fn.apply(this, args);
    const sink = {
      event: live(this.onEvent), resync: live(this.onResync), missing: live(this.onMissing),
      snapshot: live(this.onSnapshot), summary: live(this.onSummary),
      open: live(this.onOpen), error: live(this.onError),
    };
    const plans = [];
    for (let i = 0; i === 0 || i < runs.length; i += RUNS_PER_STREAM) {
      const part = runs.slice(i, i + RUNS_PER_STREAM).map(([id, run]) => [id, run.cursor]);
      plans.push({ runs: part, feed: feed && i === 0, token: this.token });
    }
    const sources = plans.map((plan) => this.open(plan, sink));
    this.source = { close: () => sources.forEach((source) => source.close()) };
  }

  changed(runs, feed) {
    const { carried } = this;
    return feed !== carried.feed || runs.length !== carried.runs.size || runs.some(([id, run]) => run.fresh || !carried.runs.has(id));
  }

  close() {
    this.source?.close();
    this.source = this.carried = null;
    this.opened = this.deferred = false;
    this.generation += 1;
  }

  onOpen(state) {
    this.failures = 0;
    this.opened = true;
    this.state = state;
    // Per follower: one that joined while the hub was open heard "connecting" until now.
    for (const [port, { subs }] of this.ports) {
      for (const sub of subs.values()) {
        if (this.carries(sub)) port.postMessage({ op: "state", sub: sub.id, state });
      }
    }
    if (this.deferred) this.apply();
  }

  onError() {
    // A stream whose runs all ended, without the feed, is over: the server closed it.
    const over = !this.carried.feed && this.carried.runs.size === 0;
    const probe = { token: this.token, run: this.carried.runs.values().next().value };
    this.close();
    if (over) return this.apply();
    this.setState("reconnecting");
    clearTimeout(this.timer);
    this.timer = null;
    const generation = this.generation;
    refused(probe).then((no) => {
      if (generation !== this.generation || this.timer) return; // reopened or scheduled meanwhile
      if (no) return this.setState("unauthorized");
      const delay = BACKOFF_MS[Math.min(this.failures++, BACKOFF_MS.length - 1)];
      this.timer = setTimeout(() => this.apply(), delay);
    });
  }

  onEvent(runId, event) {
    const run = this.runs.get(runId);
    if (!run || run.fresh || !run.cursor.isNew(event)) return; // fresh: the next connection has it
    run.cursor.take(event);
    run.remember(event);
    for (const sub of run.subs) this.deliver(run, sub, event);
    run.resync = null;
    if (TERMINAL.has(event.type)) {
      run.done = true;
      this.carried.runs.delete(runId);
    }
  }

  onResync(runId, data) {
    const run = this.runs.get(runId);
    if (!run || run.fresh) return;
    run.cache = []; // the events before it are gone: nobody may be served across the hole
    if (data.reason !== "rolled_back") {
      run.resync = data;
      return;
    }
    // The log went back past what was relayed (a promoted replica lacked the last events): the
    // events that follow reuse those seqs, so every follower starts again from here, at once.
    const back = data.after_seq || 0;
    run.cursor = new Cursor(null, back);
    run.resync = null;
    for (const sub of run.subs) {
      sub.cursor = new Cursor(null, back);
      sub.port.postMessage({ op: "resync", sub: sub.id, data });
    }
  }

  onMissing(runId) {
    const run = this.runs.get(runId);
    if (!run || run.fresh) return;
    this.runs.delete(runId);
    this.carried.runs.delete(runId);
    for (const sub of run.subs) {
      this.ports.get(sub.port)?.subs.delete(sub.id);
      sub.port.postMessage({ op: "missing", sub: sub.id });
    }
  }

  onSnapshot({ runs }) {
    const before = this.snapshot;
    this.snapshot = runs;
    if (!before) {
      for (const sub of this.feed) sub.port.postMessage({ op: "snapshot", sub: sub.id, data: { runs } });
      return;
    }
    // A reopened connection's snapshot: the followers already have a list, tell them what changed.
    const known = new Map(before.map((s) => [s.run_id, s]));
    for (const summary of runs.slice().reverse()) {
      const old = known.get(summary.run_id);
      const same = old && old.seq === summary.seq && old.status === summary.status && old.progress === summary.progress;
      if (!same) this.relaySummary(summary);
    }
  }

  onSummary(summary) {
    const list = this.snapshot;
    if (list) {
      const i = list.findIndex((s) => s.run_id === summary.run_id);
      if (i >= 0) list[i] = { ...list[i], ...summary };
      else list.unshift(summary);
      if (list.length > SNAPSHOT_SIZE) list.length = SNAPSHOT_SIZE;
    }
    this.relaySummary(summary);
  }

  relaySummary(summary) {
    for (const sub of this.feed) sub.port.postMessage({ op: "summary", sub: sub.id, data: summary });
  }
}
