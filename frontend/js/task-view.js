// The Tasks panel: each step, fanned-out task and iteration of a run as one row (state, worker,
// attempts, duration) that opens to show its streamed model output, gathered in one place.
import { h, setText } from "./dom.js";
import { duration, time } from "./format.js";
import { taskSeconds } from "./trace-model.js";

const STATE_ICON = { running: "⏳", completed: "✓", failed: "✗", retrying: "↻", unfinished: "⊘", pending: "…", stream: "✎" };
const LIMIT = 400; // rows rendered at once; older iterations of an endless run are a click away

// A task's result as text: strings as they are, lists as bullets, objects as "key: value" lines.
function readable(r) {
  if (r === undefined || r === null) return "";
  if (typeof r !== "object") return String(r);
  if (Array.isArray(r) && r.every((x) => typeof x === "string")) return r.map((x) => `• ${x}`).join("\n");
  if (!Array.isArray(r) && Object.values(r).every((x) => typeof x === "string")) return Object.entries(r).map(([k, v]) => `${k}: ${v}`).join("\n\n");
  return JSON.stringify(r, null, 2);
}

export function createTaskView(root) {
  const rows = new Map(); // key -> {el, v, parts}
  let model = null;
  let showAll = false;
  const more = h("button", { type: "button", class: "ghost show-more", onclick: () => { showAll = true; render(); } });
  const empty = h("p", { class: "muted empty-note" }, "No steps or tasks yet.");
  const head = h("div", { class: "task-head", "aria-hidden": "true" },
    h("span", {}, "State"), h("span", {}, "Step / task"), h("span", {}, "Worker"), h("span", {}, "Tries"), h("span", {}, "Duration"), h("span", {}, "Latest"));

  function build(t) {
    const parts = {
      state: h("span", { class: "t-state" }),
      name: h("span", { class: "t-name" }),
      worker: h("span", { class: "t-worker" }),
      tries: h("span", { class: "t-tries" }),
      dur: h("span", { class: "t-dur" }),
      msg: h("span", { class: "t-msg" }),
      body: h("div", { class: "t-body" }),
      text: h("pre", { class: "t-text" }),
      info: h("p", { class: "muted" }),
      error: h("p", { class: "error-text" }),
    };
    const el = h("details", { class: "task", "data-key": t.key },
      h("summary", {}, parts.state, parts.name, parts.worker, parts.tries, parts.dur, parts.msg), parts.body);
    parts.body.append(parts.info, parts.error, parts.text);
    el.addEventListener("toggle", () => fill(rows.get(t.key), t, true));
    return { el, v: -1, parts };
  }

  function fill(row, t, force = false) {
    const p = row.parts;
    const secs = taskSeconds(t);
    p.state.className = `t-state s-${t.state}`;
    setText(p.state, `${STATE_ICON[t.state] || "•"} ${t.state === "stream" ? "output" : t.state}`);
    setText(p.dur, Number.isFinite(secs) ? duration(secs) : "");
    if (row.v === t.v && !force) return;
    row.v = t.v;
    setText(p.name, t.name);
    p.name.title = t.kind === "iteration" ? "iteration" : t.kind === "task" ? "task on the worker pool" : "step in the run's own job";
    setText(p.worker, t.worker || "");
    setText(p.tries, t.tries > 1 ? `×${t.tries}` : t.tries ? "1" : "");
    const latest = t.error || t.message || (typeof t.result === "string" ? t.result : "");
    setText(p.msg, latest);
    row.el.classList.toggle("has-text", Boolean(t.text));
    if (!row.el.open) return;
    const started = t.firstStart ? `started ${time(t.firstStart)}` : "";
    const kind = t.kind === "task" ? "task" : t.kind === "iteration" ? "iteration" : "step";
    const model = t.model ? ` · model: ${t.model}${t.simulated ? " (simulated)" : ""}` : "";
    setText(p.info, [kind, started, t.chunks ? `${t.chunks} streamed chunks` : ""].filter(Boolean).join(" · ") + model);
    setText(p.error, t.error || "");
    p.error.hidden = !t.error;
    setText(p.text, t.text || readable(t.result) || "(no output)");
  }

  function render() {
    if (!model) return;
    const keys = model.order;
    const shown = showAll ? keys : keys.slice(-LIMIT);
    const els = [head];
    for (const key of shown) {
      const t = model.tasks.get(key);
      let row = rows.get(key);
      if (!row) {
        row = build(t);
        rows.set(key, row);
      }
      fill(row, t);
      els.push(row.el);
    }
    const hidden = keys.length - shown.length;
    more.hidden = hidden <= 0;
    setText(more, `Show ${hidden.toLocaleString()} earlier rows`);
    if (!keys.length) els.push(empty);
    const first = root.firstChild;
    if (root.childElementCount !== els.length + 1 || first !== more || root.children[1] !== els[0] || root.lastChild !== els[els.length - 1]) {
      root.replaceChildren(more, ...els);
    }
  }

  return {
    attach(m) {
      model = m;
      rows.clear();
      showAll = false;
      root.replaceChildren();
      render();
    },
    render,
    open(key) {
      render();
      const row = rows.get(key);
      if (!row) return;
      row.el.open = true;
      fill(row, model.tasks.get(key), true);
      row.el.scrollIntoView({ block: "nearest" });
      row.el.querySelector("summary").focus();
    },
  };
}
