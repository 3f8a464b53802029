// The event log: a virtual list. Only the rows in view (plus a margin) exist in the DOM, so a run
// with 10,000 events scrolls like one with 10; every event stays a scroll or a filter away, and a
// click (or the arrow keys and Enter) shows one in full below the list. It follows the tail
// unless the user has scrolled up; "Latest" brings it back.
import { h, setText } from "./dom.js";
import { clock } from "./format.js";

const ICONS = {
  workflow_started: "▶", workflow_completed: "✓", workflow_failed: "✗", workflow_cancelled: "⊘",
  workflow_paused: "⏸", workflow_resumed: "⏵", task_started: "▸", task_progress: "•",
  task_completed: "✓", task_failed: "✗", task_retrying: "↻", iteration_started: "⟳",
  iteration_completed: "❝", token: "✎", signal_received: "⚑", worker_lost: "⚠", log: "ℹ", resync: "⇤",
};

export function kindOf(e) {
  const t = e.type;
  if (t === "token") return "tok";
  if (t.endsWith("_failed") || t === "worker_lost" || (t === "log" && /error|fail/i.test(e.message || ""))) return "bad";
  if (t.endsWith("_completed")) return "ok";
  if (t === "signal_received" || t === "task_retrying" || t === "resync" || t === "workflow_paused" || t === "workflow_resumed" || t === "workflow_cancelled") return "ctrl";
  if (t.startsWith("workflow_")) return "life";
  return "info";
}

const GROUPS = {
  lifecycle: (e) => e.type.startsWith("workflow_") || e.type === "worker_lost" || e.type === "resync",
  tasks: (e) => e.type.startsWith("task_") || e.type.startsWith("iteration_"),
  tokens: (e) => e.type === "token",
  control: (e) => ["ctrl", "bad"].includes(kindOf(e)),
};

export function describe(e) {
  const d = e.data || {};
  if (e.type === "token") {
    const tail = e.tail.length > 120 ? `…${e.tail.slice(-120)}` : e.tail;
    return `${e.chunks} chunk${e.chunks === 1 ? "" : "s"}, ${e.chars.toLocaleString()} chars: ${tail}`;
  }
  if (e.type === "signal_received") {
    const text = d.payload && (d.payload.text || d.payload.message);
    return text ? `signal ${d.signal}: ${text}` : `signal ${d.signal}`;
  }
  return e.message || d.finding || d.current_quote || e.task || "";
}

export function createLog({ viewport, spacer, list, latest, detail, onOpenTask, taskText }) {
  let model = null;
  let base = 0; // entries hidden by "Clear log"
  let dropped = 0;
  let view = null; // indices of entries that pass the filter, or null
  let filter = { kind: "", text: "" };
  let follow = true;
  let selected = null; // the selected entry object
  let rowH = 30;
  let pending = false;
  let scrolled = false; // a scroll event since the last flush
  let shownHeight = 0; // the spacer's height as last set
  const pool = [];

  const count = () => (view ? view.length : model ? model.log.length - base : 0);
  const at = (i) => (view ? model.log[view[i]] : model.log[base + i]);
  const matches = (e) =>
    (!filter.kind || GROUPS[filter.kind](e)) &&
    (!filter.text || `${e.type} ${e.task || ""} ${describe(e)}`.toLowerCase().includes(filter.text));

  function rebuild() {
    if (!model) return;
    if (!filter.kind && !filter.text) { view = null; return; }
    view = [];
    for (let i = base; i < model.log.length; i++) if (matches(model.log[i])) view.push(i);
  }

  function measure() {
    const v = parseFloat(getComputedStyle(viewport).getPropertyValue("--row-h"));
    if (v > 0 && v !== rowH) rowH = v;
  }

  // Scrolling only marks the frame; the next flush reads the geometry once, before it writes.
  viewport.addEventListener("scroll", () => { scrolled = true; schedule(); }, { passive: true });
  latest.addEventListener("click", () => { follow = true; scrolled = false; latest.hidden = true; schedule(); viewport.focus(); });
  window.addEventListener("resize", () => { measure(); schedule(); });

  list.addEventListener("click", (ev) => {
    const li = ev.target.closest("li");
    if (li && li._entry) select(li._entry, false);
  });
  viewport.addEventListener("keydown", (ev) => {
    const n = count();
    if (!n) return;
    let i = selected ? indexOf(selected) : -1;
    const page = Math.max(1, Math.floor(viewport.clientHeight / rowH) - 1);
    const moves = { ArrowDown: i + 1, ArrowUp: i < 0 ? n - 1 : i - 1, PageDown: i + page, PageUp: i - page, Home: 0, End: n - 1 };
    if (ev.key in moves) {
      ev.preventDefault();
      i = Math.max(0, Math.min(n - 1, moves[ev.key]));
      select(at(i), true);
    } else if (ev.key === "Enter" && selected && selected.type === "token") {
      onOpenTask(selected.key);
    } else if (ev.key === "Escape") {
      selected = null;
      detail.hidden = true;
      schedule();
    }
  });

  function indexOf(entry) {
    if (view) {
      const raw = model.log.indexOf(entry);
      return view.indexOf(raw);
    }
    const raw = model.log.lastIndexOf(entry);
    return raw < 0 ? -1 : raw - base;
  }

  function select(entry, scrollIntoView) {
    selected = entry;
    if (scrollIntoView) {
      const i = indexOf(entry);
      const top = i * rowH;
      if (top < viewport.scrollTop) viewport.scrollTop = top;
      else if (top + rowH > viewport.scrollTop + viewport.clientHeight) viewport.scrollTop = top + rowH - viewport.clientHeight;
    }
    showDetail();
    schedule();
  }

  function showDetail() {
    const e = selected;
    detail.hidden = !e;
    if (!e) return;
    const d = e.data;
    const rows = [["type", e.type], ["seq", e.seq], ["time", e.ts], ["task", e.task], ["task id", e.task_id || e.key], ["attempt", e.attempt], ["event id", e.id]];
    const text = e.type === "token" ? taskText(e.key) : e.message;
    detail.replaceChildren(
      h("div", { class: "detail-head" },
        h("strong", {}, `${ICONS[e.type] || "•"} ${e.type}`),
        e.type === "token" ? h("button", { type: "button", class: "ghost", onclick: () => onOpenTask(e.key) }, "Open in Tasks") : null,
        h("button", { type: "button", class: "ghost", "aria-label": "Close event details", onclick: () => { selected = null; detail.hidden = true; schedule(); } }, "×")),
      h("dl", { class: "kv" }, rows.filter(([, v]) => v !== undefined && v !== null && v !== "").map(([k, v]) => h("div", {}, h("dt", {}, k), h("dd", {}, String(v))))),
      text ? h("pre", { class: "detail-text" }, text) : null,
      d ? h("pre", { class: "detail-json" }, JSON.stringify(d, null, 2)) : null,
    );
  }

  function fill(li, e, i) {
    if (li._entry !== e || li._v !== (e.chunks || 0)) {
      li._entry = e;
      li._v = e.chunks || 0;
      li.className = `ev k-${kindOf(e)}`;
      setText(li.children[0], clock(e.ts));
      setText(li.children[1], ICONS[e.type] || "•");
      setText(li.children[2], e.type);
      setText(li.children[3], e.task || "");
      setText(li.children[4], describe(e));
      li.title = e.type === "token" ? "Model output gathered per task: click for the whole text" : "";
    }
    li.id = `ev-row-${i}`;
    li.classList.toggle("selected", e === selected);
    li.setAttribute("aria-selected", String(e === selected));
  }

  function row() {
    return h("li", { class: "ev", role: "option" },
      h("span", { class: "time" }), h("span", { class: "icon", "aria-hidden": "true" }), h("span", { class: "type" }),
      h("span", { class: "ev-task" }), h("span", { class: "ev-msg" }));
  }

  function flush() {
    pending = false;
    if (!model) return;
    if (model.dropped !== dropped) {
      base = Math.max(0, base - (model.dropped - dropped));
      dropped = model.dropped;
      rebuild();
    } else if (view) {
      const last = view.length ? view[view.length - 1] : base - 1;
      for (let i = last + 1; i < model.log.length; i++) if (matches(model.log[i])) view.push(i);
    }
    const n = count();
    const height = viewport.clientHeight; // reads first: the layout is still clean here
    const readTop = viewport.scrollTop;
    let top = readTop;
    if (scrolled && height) {
      follow = top + height >= shownHeight - rowH * 1.5;
      latest.hidden = follow;
    }
    scrolled = false;
    if (shownHeight !== n * rowH) {
      shownHeight = n * rowH;
      spacer.style.height = `${shownHeight}px`;
    }
    if (follow && height) {
      top = Math.max(0, shownHeight - height);
      if (readTop !== top) viewport.scrollTop = top;
    }
    if (!height) return; // hidden: render when shown
    const first = Math.max(0, Math.floor(top / rowH) - 8);
    const last = Math.min(n, first + Math.ceil(height / rowH) + 16);
    while (pool.length < last - first) pool.push(row());
    const want = pool.slice(0, Math.max(0, last - first));
    for (let i = first; i < last; i++) fill(want[i - first], at(i), i);
    if (list.childElementCount !== want.length || list.firstChild !== want[0]) list.replaceChildren(...want);
    list.style.transform = `translateY(${first * rowH}px)`;
    const sel = selected ? list.querySelector("li.selected") : null;
    if (sel) viewport.setAttribute("aria-activedescendant", sel.id);
    else viewport.removeAttribute("aria-activedescendant");
    if (selected && selected.type === "token") showDetail();
  }

  function schedule() {
    if (!pending) {
      pending = true;
      requestAnimationFrame(flush);
    }
  }

  viewport.setAttribute("role", "listbox");
  list.setAttribute("role", "none");
  spacer.setAttribute("aria-hidden", "true");

  return {
    attach(m) {
      model = m;
      base = 0;
      dropped = m.dropped;
      selected = null;
      detail.hidden = true;
      follow = true;
      latest.hidden = true;
      rebuild();
      measure();
      schedule();
    },
    changed: schedule,
    refresh() { measure(); schedule(); },
    clear() {
      if (!model) return;
      base = model.log.length;
      selected = null;
      detail.hidden = true;
      rebuild();
      schedule();
    },
    setFilter(next) {
      filter = { kind: next.kind || "", text: (next.text || "").trim().toLowerCase() };
      rebuild();
      follow = true;
      schedule();
    },
    shown: () => count(),
  };
}
