// The Compare tab: 2 to 4 runs of one workflow side by side: status, duration, attempts and
// other metrics; each step's and task's time and tries (fastest and slowest marked, with bars
// to scale); and where their inputs and results differ.
import { listRuns, workflows } from "./api.js";
import { $, h, setText } from "./dom.js";
import { dateTime, duration, num, shortId } from "./format.js";
import { differences, loadRun, metrics, taskRows } from "./compare-data.js";

const MAX_TASK_ROWS = 200;
let hooks;
let shown = "";

export function initCompare(opts) {
  hooks = opts;
  workflows().then((list) => {
    for (const wf of list) $("cmp-workflow").append(h("option", { value: wf.name }, wf.name));
    if (!shown) candidates();
  }).catch(() => {});
  $("cmp-workflow").addEventListener("change", () => candidates());
  $("cmp-candidates").addEventListener("change", updateButton);
  $("cmp-go").addEventListener("click", () => hooks.onCompare(picked()));
}

const picked = () => [...document.querySelectorAll("#cmp-candidates input:checked")].map((b) => b.value);

function updateButton() {
  const n = picked().length;
  $("cmp-go").disabled = n < 2 || n > 4;
  setText($("cmp-note"), n > 4 ? "Pick at most 4 runs." : n === 1 ? "Pick at least one more." : "");
}

async function candidates(preselect = []) {
  const workflow = $("cmp-workflow").value;
  const box = $("cmp-candidates");
  if (!workflow) return;
  try {
    const data = await listRuns({ workflow, limit: 20 });
    const runs = data.runs || [];
    for (const id of preselect) if (!runs.some((r) => r.run_id === id)) runs.unshift({ run_id: id, workflow, status: "" });
    box.replaceChildren(...(runs.length ? runs.map((r) => h("label", { class: "candidate" },
      h("input", { type: "checkbox", value: r.run_id, checked: preselect.includes(r.run_id) }),
      h("code", {}, shortId(r.run_id)), " ", h("span", { class: `pill s-${r.status}` }, r.status || "?"),
      h("span", { class: "muted" }, ` ${dateTime(r.started_at || r.created_at)}`))) : [h("p", { class: "muted" }, `No ${workflow} runs yet.`)]));
  } catch (err) {
    box.replaceChildren(h("p", { class: "error" }, `Could not list runs: ${err.message}`));
  }
  updateButton();
}

export async function showCompare(ids) {
  const key = ids.join(",");
  if (key === shown) return;
  shown = key;
  const out = $("cmp-out");
  if (ids.length < 2) {
    out.replaceChildren();
    return candidates();
  }
  out.replaceChildren(h("p", { class: "panel muted" }, `Loading ${ids.length} runs…`));
  let runs;
  try {
    runs = await Promise.all(ids.slice(0, 4).map(loadRun));
  } catch (err) {
    out.replaceChildren(h("p", { class: "panel error" }, `Could not load the runs: ${err.message}`));
    return;
  }
  if (shown !== key) return;
  const workflow = runs[0].model.workflow;
  if ($("cmp-workflow").value !== workflow) $("cmp-workflow").value = workflow;
  candidates(ids);
  const mixed = runs.some((r) => r.model.workflow !== workflow);
  const partial = runs.filter((r) => !r.complete).map((r) => shortId(r.id));
  out.replaceChildren(...[
    mixed ? h("p", { class: "panel error" }, "These runs are of different workflows: only their metrics compare.") : null,
    partial.length ? h("p", { class: "panel muted" }, `Only the first 30,000 events of ${partial.join(", ")} were read.`) : null,
    summary(runs),
    mixed ? null : tasks(runs),
    diffPanel("Input differences", runs, runs.map((r) => r.model.input)),
    diffPanel("Result differences", runs, runs.map((r) => r.model.result ?? (r.model.error ? { error: r.model.error } : null))),
  ].filter(Boolean));
}

function heads(runs) {
  return runs.map((r) => h("th", { scope: "col" }, h("a", { href: `#/runs/${encodeURIComponent(r.id)}` }, h("code", {}, shortId(r.id)))));
}

function table(caption, head, rows) {
  return h("section", { class: "panel" }, h("h3", {}, caption),
    h("div", { class: "table-wrap" }, h("table", { class: "compare" }, h("thead", {}, h("tr", {}, ...head)), h("tbody", {}, ...rows))));
}

function summary(runs) {
  const ms = runs.map(metrics);
  const line = (label, f, best) => {
    const vals = ms.map(f);
    const nums = best ? vals.filter((v) => Number.isFinite(v)) : [];
    const lo = Math.min(...nums);
    const hi = Math.max(...nums);
    return h("tr", {}, h("th", { scope: "row" }, label), ...vals.map((v) => {
      const mark = best && nums.length > 1 && lo !== hi ? (v === lo ? " best" : v === hi ? " worst" : "") : "";
      return h("td", { class: `num${mark}` }, best === "time" ? duration(v) : typeof v === "number" ? num(v) : String(v ?? ""), mark ? h("span", { class: "sr-only" }, mark === " best" ? " (lowest)" : " (highest)") : null);
    }));
  };
  return table("Runs", [h("th", { scope: "col" }, "Metric"), ...heads(runs)], [
    h("tr", {}, h("th", { scope: "row" }, "Status"), ...ms.map((m) => h("td", {}, h("span", { class: `pill s-${m.status}` }, m.status)))),
    h("tr", {}, h("th", { scope: "row" }, "Started"), ...ms.map((m) => h("td", {}, dateTime(m.started)))),
    line("Duration", (m) => m.duration, "time"),
    line("Run attempts", (m) => m.attempts, "count"),
    line("Events", (m) => m.events),
    line("Steps and tasks", (m) => m.tasks),
    line("Iterations", (m) => m.iterations),
    line("Task retries", (m) => m.retries, "count"),
    line("Model output (chars)", (m) => m.chars),
    line("Workers used", (m) => m.workers),
  ]);
}

function tasks(runs) {
  const all = taskRows(runs);
  const rows = all.slice(0, MAX_TASK_ROWS);
  const max = Math.max(0.001, ...rows.flatMap((r) => r.cells.map((c) => (c && Number.isFinite(c.secs) ? c.secs : 0))));
  const body = rows.map((row) => {
    const secs = row.cells.map((c) => (c && Number.isFinite(c.secs) ? c.secs : NaN)).filter(Number.isFinite);
    const lo = Math.min(...secs);
    const hi = Math.max(...secs);
    return h("tr", {}, h("th", { scope: "row" }, row.name), ...row.cells.map((c) => {
      if (!c) return h("td", { class: "muted" }, "—");
      const mark = secs.length > 1 && hi - lo > 0.001 ? (c.secs === lo ? "best" : c.secs === hi ? "worst" : "") : "";
      const bar = h("span", { class: `cmp-bar s-${c.state}` });
      bar.style.width = `${Math.max(2, (100 * (c.secs || 0)) / max)}%`;
      return h("td", { class: mark },
        h("span", { class: "cmp-time" }, duration(c.secs), c.tries > 1 ? ` ×${c.tries}` : "", c.state !== "completed" ? ` ${c.state}` : "",
          mark ? h("span", { class: "sr-only" }, mark === "best" ? " (fastest)" : " (slowest)") : null),
        h("span", { class: "cmp-track", "aria-hidden": "true" }, bar));
    }));
  });
  const panel = table("Steps and tasks: time and tries", [h("th", { scope: "col" }, "Step / task"), ...heads(runs)], body);
  if (all.length > rows.length) panel.append(h("p", { class: "muted" }, `The first ${MAX_TASK_ROWS} of ${all.length} rows.`));
  return panel;
}

function clip(v) {
  if (v === undefined) return h("span", { class: "muted" }, "(absent)");
  const s = String(v);
  return s.length > 600 ? `${s.slice(0, 600)}…` : s;
}

function diffPanel(caption, runs, values) {
  const diffs = differences(values);
  const differing = diffs.filter((d) => !d.same);
  const same = diffs.filter((d) => d.same);
  const row = (d) => h("tr", { class: d.same ? "" : "differs" }, h("th", { scope: "row" }, h("code", {}, d.path)), ...d.values.map((v) => h("td", { class: "diff-cell" }, clip(v))));
  const head = [h("th", { scope: "col" }, "Field"), ...heads(runs)];
  const panel = table(`${caption} (${differing.length} of ${diffs.length} fields differ)`, head, differing.length ? differing.slice(0, 300).map(row) : [h("tr", {}, h("td", { colspan: String(runs.length + 1), class: "muted" }, "No differences."))]);
  if (same.length) {
    panel.append(h("details", { class: "same" }, h("summary", {}, `${same.length} identical field${same.length === 1 ? "" : "s"}`),
      h("div", { class: "table-wrap" }, h("table", { class: "compare" }, h("thead", {}, h("tr", {}, ...head.map((x) => x.cloneNode(true)))), h("tbody", {}, ...same.slice(0, 300).map(row))))));
  }
  return panel;
}
