// One row of the Runs table (a card on narrow screens): built once, updated in place.
import { h, setText } from "./dom.js";
import { dateTime, duration, shortId, span } from "./format.js";

const ACTIVE = new Set(["queued", "running", "paused"]);

export function buildRow(run, { onToggle }) {
  const id = run.run_id;
  const p = {
    check: h("input", { type: "checkbox", "aria-label": `Select run ${shortId(id)} to compare`, onchange: (ev) => onToggle(id, ev.target.checked) }),
    link: h("a", { href: `#/runs/${encodeURIComponent(id)}`, class: "run-link", title: id }, h("code", {}, shortId(id))),
    workflow: h("td", { "data-label": "Workflow" }),
    pill: h("span", { class: "pill" }),
    bar: h("div", { class: "mini-bar" }),
    meter: null,
    pct: h("span", { class: "mini-text" }),
    started: h("td", { "data-label": "Started" }),
    dur: h("td", { "data-label": "Duration", class: "num" }),
    viewers: h("td", { "data-label": "Viewers", class: "num" }),
  };
  p.meter = h("div", { class: "mini", role: "progressbar", "aria-valuemin": "0", "aria-valuemax": "100", "aria-label": `Progress of run ${shortId(id)}` }, p.bar);
  const progress = h("td", { "data-label": "Progress", class: "c-progress" }, p.meter, p.pct);
  const tr = h("tr", { "data-id": id },
    h("td", { class: "c-sel" }, p.check),
    h("td", { class: "c-id", "data-label": "Run" }, p.link),
    p.workflow,
    h("td", { "data-label": "Status" }, p.pill),
    progress, p.started, p.dur, p.viewers);
  p.progress = progress;
  return { tr, parts: p, run: { ...run }, iter: null };
}

// monty without max_iterations never moves its run progress: show the current iteration instead.
export function endless(run) {
  return run.workflow === "monty" && !(run.input && run.input.max_iterations);
}

export function fillRow(row) {
  const { run, parts: p, iter } = row;
  setText(p.workflow, run.workflow);
  setText(p.pill, run.status);
  p.pill.className = `pill s-${run.status}`;
  const active = ACTIVE.has(run.status);
  const pct = Math.max(0, Math.min(100, Number(run.progress) || 0));
  let shown = pct;
  let text = `${Math.round(pct)}%`;
  if (active && iter && endless(run)) {
    shown = iter.pct;
    text = `iteration ${iter.n} · ${Math.round(iter.pct)}%`;
  } else if (active && iter) {
    text += ` · iteration ${iter.n}`;
  } else if (run.status === "queued") {
    text = "queued";
  } else if (active && run.workflow === "chat") {
    text = "conversation open";
  }
  p.meter.hidden = active && run.workflow === "chat";
  p.bar.style.width = `${shown}%`;
  p.bar.className = `mini-bar s-${run.status}`;
  p.meter.setAttribute("aria-valuenow", String(Math.round(shown)));
  p.meter.setAttribute("aria-valuetext", text);
  setText(p.pct, text);
  p.progress.title = run.message || "";
  setText(p.started, run.started_at ? dateTime(run.started_at) : run.created_at ? `created ${dateTime(run.created_at)}` : "");
  const secs = run.started_at ? span(run.started_at, run.finished_at) : NaN;
  setText(p.dur, Number.isFinite(secs) ? duration(secs) : "—");
  setText(p.viewers, row.viewers ?? "—");
}
