// The Chat tab: a long-lived `chat` run; each message is a signal, the reply streams as tokens.
import { api, followRun } from "./api.js";
import { clear, h } from "./dom.js";

const log = () => document.getElementById("chat-log");
let runId = null;
let source = null;
let bubble = null;

function add(role, text, label) {
  const el = h("div", { class: `msg ${role}` }, label ? h("span", { class: "label" }, label) : null, text);
  log().append(el);
  log().scrollTop = log().scrollHeight;
  return el;
}

async function ensureRun() {
  if (runId) return runId;
  const run = await api("/api/runs", { method: "POST", body: { workflow: "chat", input: {} } });
  runId = run.run_id;
  source = followRun(runId, onEvent);
  return runId;
}

function onEvent(type, ev) {
  const d = ev.data || {};
  if (type === "signal_received" && d.signal === "message") {
    add("user", (d.payload && d.payload.text) || "");
    bubble = null;
  } else if (type === "token") {
    if (!bubble) bubble = add("assistant", "", d.simulated === false ? "" : "simulated model");
    bubble.append(document.createTextNode(d.text || ""));
    log().scrollTop = log().scrollHeight;
  } else if (d.tool) {
    add("tool", `${d.tool}: ${typeof d.result === "string" ? d.result : JSON.stringify(d.result ?? ev.message)}`);
    bubble = null;
  } else if (type === "task_completed" || type === "iteration_completed") {
    bubble = null;
  } else if (type === "workflow_completed" || type === "workflow_failed" || type === "workflow_cancelled") {
    add("tool", `conversation ${type.slice(9)}`);
    runId = null;
  }
}

export function initChat() {
  const form = document.getElementById("chat-form");
  const input = document.getElementById("chat-input");
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const text = input.value.trim();
    if (!text) return;
    input.value = "";
    try {
      const id = await ensureRun();
      await api(`/api/runs/${encodeURIComponent(id)}/signals/message`, { method: "POST", body: { text } });
    } catch (err) {
      add("tool", `error: ${err.message}`);
    }
  });
  document.getElementById("chat-reset").addEventListener("click", async () => {
    if (runId) await api(`/api/runs/${encodeURIComponent(runId)}/signals/stop`, { method: "POST", body: {} }).catch(() => {});
    if (source) source.close();
    runId = null;
    bubble = null;
    clear(log());
  });
}
