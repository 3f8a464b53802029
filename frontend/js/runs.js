// The Runs tab's list: every run with its status, progress, start, duration and viewers; filters
// by workflow and status, find by id, paging through history (the API's `before` cursor), live
// updates from the shared feed, and a selection to compare. Rows open by click or keyboard.
import { getRun, getState, listRuns, workflows } from "./api.js";
import { $, h, setText } from "./dom.js";
import { onFeed } from "./feed.js";
import { buildRow, fillRow } from "./run-row.js";

const PAGE = 25;
const ACTIVE = new Set(["queued", "running", "paused"]);
const rows = new Map(); // run_id -> row
let order = []; // run ids on this page, newest first
let filters = { workflow: "", status: "" };
let cursors = [""];
let page = 0;
let next = null;
let loading = 0;
const picked = new Set();
let hooks;

export function initRuns(opts) {
  hooks = opts;
  workflows().then((list) => {
    for (const wf of list) $("runs-workflow").append(h("option", { value: wf.name }, wf.name));
  }).catch(() => {});
  $("runs-workflow").addEventListener("change", () => setFilters({ workflow: $("runs-workflow").value }));
  $("runs-status").addEventListener("change", () => setFilters({ status: $("runs-status").value }));
  $("runs-older").addEventListener("click", () => { if (next) { cursors[page + 1] = next; page++; load(); } });
  $("runs-newer").addEventListener("click", () => { if (page > 0) { page--; load(); } });
  $("runs-id").addEventListener("input", applyIdFilter);
  $("runs-find").addEventListener("submit", find);
  $("runs-compare").addEventListener("click", () => hooks.onCompare([...picked]));
  $("runs-body").addEventListener("click", (ev) => {
    const tr = ev.target.closest("tr[data-id]");
    if (!tr || ev.target.closest("a, input, button")) return;
    hooks.onOpen(tr.dataset.id);
  });
  $("runs-body").addEventListener("keydown", (ev) => {
    if (ev.key !== "ArrowDown" && ev.key !== "ArrowUp") return;
    const links = [...document.querySelectorAll("#runs-body tr:not([hidden]) .run-link")];
    const i = links.indexOf(document.activeElement);
    if (i < 0) return;
    ev.preventDefault();
    links[Math.max(0, Math.min(links.length - 1, i + (ev.key === "ArrowDown" ? 1 : -1)))].focus();
  });
  onFeed((kind, payload) => {
    if (kind === "summary") upsert(payload);
    if (kind === "snapshot") load({ quiet: true });
  });
  load();
  setInterval(tick, 1000);
  setInterval(refreshViewers, 5000);
}

function setFilters(change) {
  filters = { ...filters, ...change };
  cursors = [""];
  page = 0;
  load();
}

const matches = (run) => (!filters.workflow || run.workflow === filters.workflow) && (!filters.status || run.status === filters.status);

async function load({ quiet = false } = {}) {
  const ticket = ++loading;
  if (!quiet) setText($("runs-note"), "Loading…");
  try {
    const data = await listRuns({ ...filters, limit: PAGE, before: cursors[page] });
    if (ticket !== loading) return;
    next = data.next;
    order = [];
    for (const run of data.runs || []) {
      order.push(run.run_id);
      place(run);
    }
    setText($("runs-note"), "");
    render();
    fetchViewers(order);
  } catch (err) {
    if (ticket === loading) setText($("runs-note"), `Could not load runs: ${err.message}`);
  }
}

function place(run) {
  let row = rows.get(run.run_id);
  if (!row) {
    row = buildRow(run, { onToggle: toggle });
    rows.set(run.run_id, row);
  }
  const older = (row.run.seq || 0) > (run.seq || 0);
  row.run = older ? { ...run, ...row.run } : { ...row.run, ...run };
  fillRow(row);
  return row;
}

function upsert(summary) {
  const known = rows.has(summary.run_id) && order.includes(summary.run_id);
  if (!known && !(page === 0 && matches(summary))) {
    if (rows.has(summary.run_id)) place(summary);
    return;
  }
  place(summary);
  if (!known) {
    // Newest first by creation, not by arrival: runs started together report in any order.
    const created = summary.created_at || "";
    const at = order.findIndex((id) => (rows.get(id)?.run.created_at || "") < created);
    order.splice(at < 0 ? (created ? order.length : 0) : at, 0, summary.run_id);
    if (order.length > PAGE * 2) order.length = PAGE * 2;
    render();
    fetchViewers([summary.run_id]);
  }
}

function render() {
  const body = $("runs-body");
  const trs = order.map((id) => rows.get(id).tr);
  if (body.childElementCount !== trs.length || trs.some((tr, i) => body.children[i] !== tr)) body.replaceChildren(...trs);
  for (const [id, row] of rows) row.parts.check.checked = picked.has(id);
  const empty = $("runs-empty");
  empty.hidden = order.length > 0;
  if (!order.length) {
    const filtered = filters.workflow || filters.status;
    empty.replaceChildren(
      h("p", {}, filtered ? "No runs match these filters." : page > 0 ? "No older runs." : "No runs yet."),
      h("p", { class: "muted" }, filtered ? "Change the filters above." : "Start one with the form above, or click Start Monty."));
  }
  $("runs-newer").disabled = page === 0;
  $("runs-older").disabled = !next;
  setText($("runs-page"), page > 0 || next ? `Page ${page + 1}` : "");
  applyIdFilter();
  updateCompare();
}

function applyIdFilter() {
  const q = $("runs-id").value.trim().toLowerCase();
  for (const id of order) rows.get(id).tr.hidden = Boolean(q) && !id.toLowerCase().includes(q);
}

async function find(ev) {
  ev.preventDefault();
  const id = $("runs-id").value.trim();
  if (!id) return;
  try {
    await getRun(id);
    hooks.onOpen(id);
  } catch (err) {
    setText($("runs-note"), err.status === 404 ? `No run with id “${id}”.` : `Could not look it up: ${err.message}`);
  }
}

function toggle(id, on) {
  if (on) picked.add(id);
  else picked.delete(id);
  updateCompare();
}

function updateCompare() {
  const btn = $("runs-compare");
  const kinds = new Set([...picked].map((id) => rows.get(id)?.run.workflow));
  btn.disabled = picked.size < 2 || picked.size > 4 || kinds.size !== 1;
  setText(btn, picked.size ? `Compare selected (${picked.size})` : "Compare selected");
  btn.title = kinds.size > 1 ? "Pick runs of one workflow" : "Pick 2 to 4 runs of one workflow";
}

// Every second: durations of running rows, and monty's current iteration (its summaries only
// move when the run's own progress does, which an endless run's never does).
let polling = false;
async function tick() {
  if ($("view-runs").hidden) return;
  const live = order.map((id) => rows.get(id)).filter((r) => r && ACTIVE.has(r.run.status));
  for (const row of live) fillRow(row);
  if (polling) return;
  polling = true;
  try {
    await Promise.all(live.filter((r) => r.run.workflow === "monty" && r.run.status === "running").slice(0, 10).map(async (row) => {
      try {
        const { state } = await getState(row.run.run_id);
        if (state && Number.isFinite(state.iteration_count)) {
          row.iter = { n: state.iteration_count, pct: Number(state.progress) || 0 };
          fillRow(row);
        }
      } catch { /* the next tick tries again */ }
    }));
  } finally {
    polling = false;
  }
}

async function fetchViewers(ids) {
  const queue = [...ids];
  const worker = async () => {
    while (queue.length) {
      const row = rows.get(queue.shift());
      if (!row) continue;
      try {
        const rec = await getRun(row.run.run_id);
        row.viewers = rec.viewers;
        place(rec);
      } catch { /* leave the cell as it was */ }
    }
  };
  await Promise.all([worker(), worker(), worker()]);
}

function refreshViewers() {
  if ($("view-runs").hidden) return;
  fetchViewers(order.filter((id) => ACTIVE.has(rows.get(id)?.run.status)).slice(0, 10));
}

