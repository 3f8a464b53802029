// A run's input and result, rendered for what they are: a research report, monty's totals, the
// outputs of a prompt chain, a chat's turns; anything else as readable key/value pairs.
import { h, linkified } from "./dom.js";
import { duration } from "./format.js";

function kv(obj) {
  const entries = Object.entries(obj || {}).filter(([, v]) => v !== null && v !== undefined);
  if (!entries.length) return h("p", { class: "muted" }, "(empty)");
  return h("dl", { class: "kv" }, entries.map(([k, v]) =>
    h("div", {}, h("dt", {}, k), h("dd", {}, typeof v === "object" ? h("pre", {}, JSON.stringify(v, null, 2)) : String(v)))));
}

function modelNote(r) {
  if (!r || !r.model) return null;
  return h("p", { class: "muted model-note" }, `Model: ${r.model}${r.simulated ? " (simulated: offline, deterministic)" : ""}`);
}

function research(r) {
  const findings = Array.isArray(r.findings) ? r.findings : [];
  return h("article", { class: "report" },
    h("h4", {}, `Report: ${r.topic || ""}`),
    h("div", { class: "report-summary" }, String(r.summary || "").split(/\n{2,}/).map((p) => h("p", {}, p))),
    findings.length ? h("h5", {}, `Findings (${findings.length})`) : null,
    h("ol", { class: "findings" }, findings.map((f) =>
      h("li", {},
        h("p", { class: "question" }, f.question || ""),
        h("p", {}, f.finding || ""),
        Array.isArray(f.queries) && f.queries.length ? h("p", { class: "muted queries" }, `Searched: ${f.queries.join(" · ")}`) : null))),
    modelNote(r));
}

function montyTotals(r) {
  const stat = (label, value) => h("div", { class: "stat" }, h("span", { class: "stat-value" }, value), h("span", { class: "stat-label" }, label));
  return h("div", { class: "stat-row" },
    stat("iterations", String(r.total_iterations ?? 0)),
    stat("quotes delivered", String(r.total_quotes_delivered ?? 0)),
    stat("total runtime", duration(Number(r.total_elapsed) || 0)));
}

function outputs(r) {
  return h("div", { class: "outputs" }, Object.entries(r).map(([name, text]) =>
    h("section", { class: "output" }, h("h5", {}, name), h("p", { class: "output-text" }, typeof text === "string" ? text : JSON.stringify(text, null, 2)))));
}

const isResearch = (m, r) => m.workflow === "research" && r && typeof r === "object" && "summary" in r;

export function resultTitle(m) {
  const r = m.result;
  if (m.status === "failed" && !r) return "Error";
  if (isResearch(m, r)) return "Research report";
  if (m.workflow === "monty" && r && "total_iterations" in r) return "Totals";
  if (m.workflow === "prompt_chain" && r && typeof r === "object") return "Outputs";
  return "Result";
}

export function renderResult(m) {
  const parts = [];
  if (m.error) parts.push(h("p", { class: "error-box", role: "alert" }, m.error));
  const r = m.result;
  if (r !== undefined && r !== null) {
    if (isResearch(m, r)) parts.push(research(r));
    else if (m.workflow === "monty" && typeof r === "object" && "total_iterations" in r) parts.push(montyTotals(r));
    else if (m.workflow === "prompt_chain" && typeof r === "object") parts.push(outputs(r));
    else if (m.workflow === "chat" && typeof r === "object") parts.push(h("p", {}, `${r.turns ?? 0} turns, ${r.messages ?? 0} messages.`));
    else if (typeof r === "object") parts.push(kv(r));
    else parts.push(h("p", {}, ...linkified(String(r))));
  }
  return parts;
}

export function renderInput(m) {
  const input = m.input || {};
  if (m.workflow === "prompt_chain" && Array.isArray(input.tasks)) {
    return [
      input.system ? h("p", {}, h("strong", {}, "System: "), input.system) : null,
      h("ol", { class: "chain-input" }, input.tasks.map((t) =>
        h("li", {}, h("strong", {}, t.name), (t.depends_on || []).length ? h("span", { class: "muted" }, ` after ${t.depends_on.join(", ")}`) : null,
          h("p", { class: "output-text" }, t.prompt)))),
    ];
  }
  if (m.workflow === "monty" && Array.isArray(input.quotes)) {
    const { quotes, ...rest } = input;
    return [kv(rest), h("h5", {}, `Custom quotes (${quotes.length})`), h("ul", { class: "quotes" }, quotes.map((q) => h("li", {}, q)))];
  }
  return [kv(input)];
}
