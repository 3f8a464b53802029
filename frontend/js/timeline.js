// The Timeline panel: the run's steps, tasks and iterations as bars over time, one lane per
// worker (iterations in their own lane), overlapping bars stacked. A bar opens its task.
import { h } from "./dom.js";
import { duration } from "./format.js";
import { taskSeconds } from "./trace-model.js";

const MAX_BARS = 300;
const BAR_H = 26; // px per stacked row; kept in step with .tl-bar's height in style.css

export function createTimeline(root, { onOpen }) {
  let model = null;

  function lanes(tasks) {
    const byLane = new Map();
    for (const t of tasks) {
      const lane = t.kind === "iteration" ? "iterations" : t.worker || "run";
      if (!byLane.has(lane)) byLane.set(lane, []);
      byLane.get(lane).push(t);
    }
    const order = [...byLane.keys()].sort((a, b) => (a === "iterations" ? -1 : b === "iterations" ? 1 : a.localeCompare(b)));
    return order.map((name) => {
      const rows = [];
      const placed = byLane.get(name).map((t) => {
        const start = Date.parse(t.firstStart || t.start);
        const end = t.end ? Date.parse(t.end) : Date.now();
        let r = rows.findIndex((last) => last <= start);
        if (r < 0) { rows.push(end); r = rows.length - 1; } else rows[r] = end;
        return { t, start, end, row: r };
      });
      return { name, rows: Math.max(1, rows.length), placed };
    });
  }

  function render(force = false) {
    if (!model || root.offsetParent === null) return;
    if (!force && root.contains(document.activeElement)) return; // keep a keyboard user's place
    const all = model.order.map((k) => model.tasks.get(k)).filter((t) => t.firstStart || t.start);
    const tasks = all.slice(-MAX_BARS);
    if (!tasks.length) {
      root.replaceChildren(h("p", { class: "muted empty-note" }, "Nothing has run yet."));
      return;
    }
    const t0 = Math.min(...tasks.map((t) => Date.parse(t.firstStart || t.start)));
    const ends = tasks.map((t) => (t.end ? Date.parse(t.end) : Date.now()));
    const t1 = Math.max(t0 + 1, ...ends, model.finishedAt ? Date.parse(model.finishedAt) : 0);
    const total = (t1 - t0) / 1000;
    const pct = (ms) => `${(100 * (ms - t0)) / (t1 - t0)}%`;
    const axis = h("div", { class: "tl-axis", "aria-hidden": "true" });
    for (const f of [0, 0.25, 0.5, 0.75, 1]) {
      const tick = h("span", { class: "tl-tick" }, duration(total * f) || "0 ms");
      tick.style.left = `${f * 100}%`;
      axis.append(tick);
    }
    const out = [
      all.length > tasks.length ? h("p", { class: "muted" }, `The latest ${MAX_BARS} of ${all.length.toLocaleString()} bars.`) : null,
      h("div", { class: "tl-row tl-head" }, h("span", { class: "tl-label muted" }, "Worker"), axis),
    ];
    for (const lane of lanes(tasks)) {
      const track = h("div", { class: "tl-track" });
      track.style.height = `${lane.rows * BAR_H + 4}px`;
      for (const { t, start, end, row } of lane.placed) {
        const secs = taskSeconds(t);
        const label = `${t.name}: ${t.state}, ${duration(secs)}${t.worker ? ` on ${t.worker}` : ""}${t.tries > 1 ? `, ${t.tries} tries` : ""}`;
        const bar = h("button", { type: "button", class: `tl-bar s-${t.state}`, title: label, "aria-label": label, onclick: () => onOpen(t.key) }, t.name);
        bar.style.left = pct(start);
        bar.style.width = `max(4px, ${(100 * (end - start)) / (t1 - t0)}%)`;
        bar.style.top = `${row * BAR_H + 2}px`;
        track.append(bar);
      }
      out.push(h("div", { class: "tl-row" }, h("span", { class: "tl-label", title: lane.name }, lane.name), track));
    }
    root.replaceChildren(...out.filter(Boolean));
  }

  return {
    attach(m) { model = m; root.replaceChildren(); },
    render,
  };
}
