// The prompt_chain task editor: one card per task (name, prompt, dependencies) instead of a JSON
// box. `{name}` in a prompt inserts that task's output; the gateway checks names, dependencies
// and cycles and its field errors land on the card they concern.
import { h, setText } from "./dom.js";

let uid = 0;

export function chainEditor(initial = []) {
  const list = h("ol", { class: "chain-tasks" });
  const error = h("p", { class: "error", role: "alert" });
  let cards = [];

  function card(task) {
    const id = `chain-${++uid}`;
    const c = {
      name: h("input", { id: `${id}-name`, value: task.name || "", autocomplete: "off", spellcheck: "false", "aria-describedby": `${id}-err`, pattern: "[A-Za-z_][A-Za-z0-9_-]{0,63}" }),
      prompt: h("textarea", { id: `${id}-prompt`, rows: "3", "aria-describedby": `${id}-err` }, task.prompt || ""),
      deps: h("div", { class: "deps", role: "group", "aria-label": "Runs after" }),
      err: h("p", { id: `${id}-err`, class: "error" }),
      wanted: new Set(task.depends_on || []),
    };
    c.name.addEventListener("input", renderDeps);
    const move = (d) => {
      const i = cards.indexOf(c);
      const j = i + d;
      if (j < 0 || j >= cards.length) return;
      [cards[i], cards[j]] = [cards[j], cards[i]];
      redraw();
      c.el.querySelector(d < 0 ? ".up" : ".down")?.focus();
    };
    c.el = h("li", { class: "chain-task" },
      h("div", { class: "chain-row" },
        h("label", { class: "field", for: `${id}-name` }, "Name"), c.name,
        h("span", { class: "chain-actions" },
          h("button", { type: "button", class: "ghost up", "aria-label": "Move task up", onclick: () => move(-1) }, "↑"),
          h("button", { type: "button", class: "ghost down", "aria-label": "Move task down", onclick: () => move(1) }, "↓"),
          h("button", { type: "button", class: "ghost", "aria-label": "Remove task", onclick: () => { cards = cards.filter((x) => x !== c); redraw(); } }, "Remove"))),
      h("label", { class: "field", for: `${id}-prompt` }, "Prompt"), c.prompt,
      c.deps, c.err);
    return c;
  }

  function renderDeps() {
    for (const c of cards) {
      for (const box of c.deps.querySelectorAll("input")) {
        if (box.checked) c.wanted.add(box.value);
        else c.wanted.delete(box.value);
      }
      const others = cards.filter((o) => o !== c).map((o) => o.name.value.trim()).filter(Boolean);
      const boxes = others.map((name) => h("label", { class: "dep" },
        h("input", { type: "checkbox", value: name, checked: c.wanted.has(name) }), ` ${name}`));
      c.deps.replaceChildren(h("span", { class: "muted" }, others.length ? "Runs after:" : "No other tasks to wait for."), ...boxes);
    }
  }

  function redraw() {
    list.replaceChildren(...cards.map((c) => c.el));
    renderDeps();
  }

  const root = h("div", { class: "chain-editor" },
    h("p", { class: "muted" }, "Tasks run as a graph: independent tasks in parallel. Write {name} in a prompt to insert that task's output (it then runs after it)."),
    list,
    h("button", { type: "button", onclick: () => { cards.push(card({ name: `task${cards.length + 1}`, prompt: "" })); redraw(); cards[cards.length - 1].name.focus(); } }, "+ Add task"),
    error);

  function set(tasks) {
    cards = (tasks || []).map(card);
    redraw();
  }
  set(initial);

  return {
    el: root,
    set,
    value() {
      renderDeps();
      return cards.map((c) => ({
        name: c.name.value.trim(),
        prompt: c.prompt.value,
        depends_on: [...c.wanted].filter((d) => cards.some((o) => o !== c && o.name.value.trim() === d)),
      }));
    },
    showErrors(details) {
      for (const c of cards) setText(c.err, "");
      setText(error, "");
      for (const d of details) {
        const [, index, field] = d.loc || [];
        const c = Number.isInteger(index) ? cards[index] : null;
        if (c) setText(c.err, `${field || "task"}: ${d.msg}`);
        else setText(error, d.msg);
      }
    },
  };
}
