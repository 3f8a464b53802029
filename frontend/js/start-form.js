// "Start a run": pick a workflow, fill the form generated from its input schema (an example is
// filled in), start it and open its trace. Also the one-click Start Monty of seed 003.
// A workflow no live worker serves (the catalog's `served` is false) is marked in words, in its
// option and in a note under the picker: a run of it is accepted but waits in its queue. The
// catalog is read once per page load, so the mark is as fresh as the page.
import { startRun, workflows } from "./api.js";
import { $, h, setText } from "./dom.js";
import { schemaForm } from "./schema-form.js";
import { lockIfReadOnly } from "./session.js";

export const EXAMPLES = {
  research: { topic: "AI in healthcare", breadth: 3, depth: 1 },
  monty: { min_sleep_s: 2, max_sleep_s: 6 },
  prompt_chain: {
    tasks: [
      { name: "idea", prompt: "Suggest one surprising topic for a short post about the sea.", depends_on: [] },
      { name: "outline", prompt: "Write a three-point outline for a post on: {idea}", depends_on: ["idea"] },
      { name: "title", prompt: "Suggest a catchy title for a post on: {idea}", depends_on: ["idea"] },
      { name: "post", prompt: "Write the post titled {title}, following this outline:\n{outline}", depends_on: ["outline", "title"] },
    ],
  },
  chat: { message: "Hello! What can you do?" },
};

let catalog = [];
let form = null;

export function initStartForm({ onStarted }) {
  const select = $("wf-select");
  const panel = $("start-panel");
  panel.open = localStorage.getItem("tidings.startOpen") !== "0";
  panel.addEventListener("toggle", () => localStorage.setItem("tidings.startOpen", panel.open ? "1" : "0"));
  workflows().then((list) => {
    catalog = list;
    for (const wf of list) select.append(h("option", { value: wf.name }, wf.served === false ? `${wf.name} (no worker)` : wf.name));
    const preferred = sessionStorage.getItem("tidings.workflow");
    if (preferred && list.some((w) => w.name === preferred)) select.value = preferred;
    else if (list.some((w) => w.name === "research")) select.value = "research";
    render();
  }).catch((err) => setText($("start-error"), `Could not load workflows: ${err.message}`));
  select.addEventListener("change", () => {
    sessionStorage.setItem("tidings.workflow", select.value);
    render();
  });
  $("wf-example").addEventListener("click", render);
  const submit = $("start-form").querySelector("button[type=submit]");
  if (lockIfReadOnly(submit)) $("start-readonly").hidden = false;
  $("start-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    setText($("start-error"), "");
    const button = ev.submitter || $("start-form").querySelector("button[type=submit]");
    let input;
    try {
      input = form.collect();
    } catch (err) {
      setText($("start-error"), err.message);
      return;
    }
    button.disabled = true;
    try {
      const run = await startRun(select.value, input);
      form.showErrors([]);
      onStarted(run);
    } catch (err) {
      const general = form.showErrors(err.details || []);
      setText($("start-error"), [err.message, ...general].join(" · "));
    } finally {
      button.disabled = false;
      lockIfReadOnly(button);
    }
  });
}

function render() {
  const wf = catalog.find((w) => w.name === $("wf-select").value);
  if (!wf) return;
  setText($("wf-description"), wf.description || "");
  const unserved = $("wf-unserved");
  unserved.hidden = wf.served !== false;
  unserved.replaceChildren(...(unserved.hidden ? [] : [
    h("strong", {}, "No worker:"),
    `no live worker serves ${wf.name}${wf.version ? ` version ${wf.version}` : ""} now. A run you start waits in its queue until one starts.`,
  ]));
  form = schemaForm(wf.input_schema || {}, structuredClone(EXAMPLES[wf.name] || {}));
  $("wf-fields").replaceChildren(...form.els);
  setText($("start-error"), "");
}
