// The Runs tab: a live list of all runs and a form that starts any workflow from its input schema.
import { api } from "./api.js";
import { clear, h, setText, time } from "./dom.js";

const rows = new Map(); // run_id -> {summary, tr}
let workflows = [];

export function initRuns({ onSelect, onStatus }) {
  const body = document.getElementById("runs-body");
  const select = document.getElementById("wf-select");
  const form = document.getElementById("start-form");
  const errorEl = document.getElementById("start-error");

  api("/api/workflows").then((data) => {
    workflows = Array.isArray(data) ? data : data.workflows || [];
    for (const wf of workflows) select.append(h("option", { value: wf.name }, wf.name));
    renderFields();
  }).catch((err) => setText(errorEl, `Could not load workflows: ${err.message}`));
  select.addEventListener("change", renderFields);

  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    setText(errorEl, "");
    try {
      const input = collectInput();
      const run = await api("/api/runs", { method: "POST", body: { workflow: select.value, input } });
      onSelect(run.run_id || run.id);
    } catch (err) {
      const fields = (err.details || []).map((d) => `${(d.loc || []).join(".")}: ${d.msg}`);
      setText(errorEl, [err.message, ...fields].join(" · "));
    }
  });

  const source = new EventSource("/api/runs/events");
  source.addEventListener("snapshot", (msg) => {
    const data = JSON.parse(msg.data);
    const list = Array.isArray(data) ? data : data.runs || [];
    for (const summary of list.slice().reverse()) upsert(summary);
  });
  source.addEventListener("run", (msg) => upsert(JSON.parse(msg.data)));
  source.onopen = () => onStatus("online");
  source.onerror = () => onStatus("offline");

  function upsert(summary) {
    let row = rows.get(summary.run_id);
    if (!row) {
      const tr = h("tr", { onclick: () => onSelect(summary.run_id) });
      row = { tr };
      rows.set(summary.run_id, row);
      body.prepend(tr);
    }
    row.summary = { ...row.summary, ...summary };
    const s = row.summary;
    const pct = Math.round(Number(s.progress) || 0);
    row.tr.replaceChildren(
      h("td", {}, s.workflow),
      h("td", { class: `status-${s.status}` }, s.status),
      h("td", {}, h("span", { class: "mini" }, h("div", { style: { width: `${pct}%` } })), ` ${pct}%`),
      h("td", {}, s.message || ""),
      h("td", {}, time(s.created_at)),
    );
  }

  function current() {
    return workflows.find((w) => w.name === select.value);
  }

  function renderFields() {
    const wf = current();
    const box = document.getElementById("wf-fields");
    clear(box);
    if (!wf) return;
    setText(document.getElementById("wf-description"), wf.description || "");
    const schema = wf.input_schema || wf.schema || {};
    for (const [name, prop] of Object.entries(schema.properties || {})) {
      const type = prop.type || (prop.anyOf && prop.anyOf.map((p) => p.type).find((t) => t !== "null")) || "string";
      const value = prop.default === undefined || prop.default === null ? "" : prop.default;
      const input = type === "array" || type === "object"
        ? h("textarea", { name, "data-type": "json" }, value === "" ? "" : JSON.stringify(value, null, 1))
        : h("input", {
            name, "data-type": type, value,
            type: type === "integer" || type === "number" ? "number" : "text",
            step: type === "number" ? "any" : undefined,
          });
      box.append(h("label", { title: prop.description || "" }, prop.title || name, input));
    }
  }

  function collectInput() {
    const input = {};
    for (const el of document.querySelectorAll("#wf-fields [name]")) {
      const raw = el.value.trim();
      if (raw === "") continue;
      const type = el.dataset.type;
      if (type === "json") input[el.name] = JSON.parse(raw);
      else if (type === "integer" || type === "number") input[el.name] = Number(raw);
      else if (type === "boolean") input[el.name] = raw === "true";
      else input[el.name] = raw;
    }
    return input;
  }
}

export function runSummary(runId) {
  return rows.get(runId)?.summary;
}
