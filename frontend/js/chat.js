// The Chat tab: seed 003's agent. A conversation is a `chat` run; each message is a `message`
// signal and the reply streams as tokens. The run id is kept in localStorage, so a reload
// reopens the conversation: its messages come back from GET /workflow/{id}/history, and live
// events continue it (turns already shown are not shown twice: a turn's key is its signal's id).
import { api, getRun, signal, startRun } from "./api.js";
import { $, h, linkified } from "./dom.js";
import { shortId } from "./format.js";
import { followRun } from "./live.js";
import { lockIfReadOnly } from "./session.js";

const KEY = "tidings.chat";
const TERMINAL = new Set(["completed", "failed", "cancelled"]);
let runId = null;
let follower = null;
let ended = false;
let turns = new Map(); // signal id -> {user, reply, done}
let current = null; // the turn being answered

const logEl = () => $("chat-log");

function stick(fn) {
  const el = logEl();
  const atEnd = el.scrollTop + el.clientHeight >= el.scrollHeight - 40;
  const out = fn();
  if (atEnd) el.scrollTop = el.scrollHeight;
  return out;
}

function add(el) {
  return stick(() => { logEl().append(el); return el; });
}

function bubble(role, label, text = "") {
  const body = h("span", { class: "body" }, ...linkified(text));
  const el = add(h("div", { class: `msg ${role}` }, label ? h("span", { class: "label" }, label) : null, body));
  return { el, body };
}

function turn(key) {
  if (!turns.has(key)) turns.set(key, { user: null, reply: null, card: false, done: false });
  return turns.get(key);
}

function thinking() {
  const waiting = [...turns.values()].some((t) => t.user && !t.done && !t.reply && !t.card);
  $("chat-thinking").hidden = !waiting || ended;
}

function replyLabel(m) {
  if (m.tool) return `tool: ${m.tool}`;
  return m.simulated === false ? m.model || "" : "simulated model";
}

function toolCard(d, message) {
  const r = d.result || {};
  const args = Object.entries(d.args || {}).map(([k, v]) => `${k}: ${typeof v === "string" ? v : JSON.stringify(v)}`).join(", ");
  let outcome;
  if (d.ok === false) outcome = h("p", {}, message.replace(/^tool \w+: /, ""));
  else if (r.run_id) outcome = h("p", {}, `→ ${r.workflow || "run"} `, h("a", { href: `#/runs/${encodeURIComponent(r.run_id)}` }, shortId(r.run_id)), r.signal ? ` (${r.signal} sent)` : r.status ? ` is ${r.status}` : " started: open its trace");
  else if (Array.isArray(r.runs)) outcome = r.runs.length
    ? h("ul", {}, r.runs.map((x) => h("li", {}, h("a", { href: `#/runs/${encodeURIComponent(x.run_id)}` }, shortId(x.run_id)), ` ${x.workflow} · ${x.status}`)))
    : h("p", {}, "no matching runs");
  else if (r.value !== undefined) outcome = h("p", {}, `= ${r.value}`);
  else outcome = h("p", {}, message.replace(/^tool \w+: /, ""));
  add(h("div", { class: `msg tool${d.ok === false ? " failed" : ""}` },
    h("span", { class: "label" }, d.ok === false ? "tool call failed" : "tool call"),
    h("code", { class: "call" }, `${d.tool}(${args})`), outcome));
}

function onEvent(ev) {
  const d = ev.data || {};
  if (ev.type === "signal_received" && d.signal === "message") {
    const t = turn(ev.id);
    if (!t.user) t.user = bubble("user", "", (d.payload && d.payload.text) || "");
  } else if (ev.type === "task_started" && String(ev.task_id).startsWith("turn-")) {
    current = ev.task_id.slice(5);
  } else if (ev.type === "log" && d.tool) {
    const t = turn(current);
    if (!t.done) {
      toolCard(d, ev.message || "");
      t.card = true; // the card shows the tool's answer: no second bubble saying the same
    }
  } else if (ev.type === "log" && /^model error/i.test(ev.message || "")) {
    // Shown even after its turn ended; a turn reloaded from history already says so in its text.
    if (!turn(current).history) add(h("div", { class: "msg error", role: "alert" }, h("span", { class: "label" }, "model error"), ev.message.replace(/^model error:\s*/i, "")));
  } else if (ev.type === "token") {
    const t = turn(current);
    if (t.done || (t.card && d.tool)) return thinking();
    if (!t.reply) t.reply = bubble("assistant", replyLabel(d));
    stick(() => t.reply.body.append(document.createTextNode(d.text || "")));
  } else if (ev.type === "task_completed" && String(ev.task_id).startsWith("turn-")) {
    const t = turn(ev.task_id.slice(5));
    if (!t.done) {
      const content = (d.result && d.result.content) || "";
      if (!t.reply && !t.card) t.reply = bubble("assistant", replyLabel({ tool: d.result && d.result.tool }), content);
      else if (content && t.reply) t.reply.body.replaceChildren(...linkified(content));
      t.done = true;
    }
  } else if (ev.type.startsWith("workflow_") && TERMINAL.has(ev.type.slice(9))) {
    end(ev.type.slice(9));
  }
  thinking();
}

function end(status) {
  ended = true;
  add(h("p", { class: "chat-note" }, `This conversation ${status === "completed" ? "has ended" : `was ${status}`}. Your next message starts a new one.`));
  thinking();
}

function title() {
  const el = $("chat-title");
  if (!runId) return el.replaceChildren("New conversation");
  el.replaceChildren("Conversation ", h("a", { href: `#/runs/${encodeURIComponent(runId)}` }, shortId(runId)), ended ? " (ended)" : "");
}

function follow() {
  if (follower) follower.close();
  follower = followRun(runId, { onEvent, onResync: () => {} });
}

function reset() {
  if (follower) follower.close();
  follower = null;
  runId = null;
  ended = false;
  turns = new Map();
  current = null;
  logEl().replaceChildren();
  thinking();
  title();
}

async function resume() {
  const id = localStorage.getItem(KEY);
  if (!id) return title();
  try {
    const rec = await getRun(id);
    if (rec.workflow !== "chat") throw new Error("not a chat");
    runId = id;
    const hist = await api(`/workflow/${encodeURIComponent(id)}/history`);
    for (const m of hist.messages || []) {
      const t = turn(m.id);
      if (m.role === "user" && !t.user) t.user = bubble("user", "", m.content);
      if (m.role === "assistant" && !t.done) {
        t.reply = bubble("assistant", replyLabel(m), m.content);
        t.done = true;
        t.history = true;
      }
    }
    if (TERMINAL.has(rec.status)) end(rec.status);
    else follow();
  } catch (err) {
    if (err.status === 404 || err.message === "not a chat") localStorage.removeItem(KEY);
    else add(h("div", { class: "msg error", role: "alert" }, `Could not reopen the conversation: ${err.message}`));
  }
  title();
  thinking();
  logEl().scrollTop = logEl().scrollHeight;
}

async function send(text) {
  if (!runId || ended) {
    if (ended) reset();
    const run = await startRun("chat", {});
    runId = run.run_id;
    localStorage.setItem(KEY, runId);
    title();
    follow();
  }
  const res = await signal(runId, "message", { text });
  const t = turn(res.event.id);
  if (!t.user) t.user = bubble("user", "", text);
  thinking();
}

export function initChat() {
  const input = $("chat-input");
  // A viewer reads conversations and sends nothing (each message is a signal, a control).
  for (const el of [input, $("chat-form").querySelector("button[type=submit]"), $("chat-reset")]) lockIfReadOnly(el);
  if (input.disabled) input.placeholder = "Read-only: a viewer cannot send messages";
  $("chat-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const text = input.value.trim();
    if (!text) return;
    input.value = "";
    try {
      await send(text);
    } catch (err) {
      add(h("div", { class: "msg error", role: "alert" }, h("span", { class: "label" }, "not sent"), err.message));
      input.value = text;
    }
  });
  $("chat-reset").addEventListener("click", async () => {
    const old = runId;
    localStorage.removeItem(KEY);
    reset();
    if (old) await signal(old, "stop").catch(() => {});
    input.focus();
  });
  resume();
}

export const chatRunId = () => runId;
