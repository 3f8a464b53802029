// WAI-ARIA tabs: roving tabindex, aria-selected, arrow keys / Home / End move and activate.
export function tablist(list, { onSelect }) {
  const tabs = () => [...list.querySelectorAll('[role="tab"]')];
  function select(tab, { focus = false, silent = false } = {}) {
    for (const t of tabs()) {
      const on = t === tab;
      t.setAttribute("aria-selected", String(on));
      t.tabIndex = on ? 0 : -1;
      t.classList.toggle("active", on);
      const panel = document.getElementById(t.getAttribute("aria-controls"));
      if (panel) panel.hidden = !on;
    }
    if (focus) tab.focus();
    if (!silent) onSelect(tab);
  }
  list.addEventListener("click", (ev) => {
    const tab = ev.target.closest('[role="tab"]');
    if (tab && list.contains(tab)) select(tab);
  });
  list.addEventListener("keydown", (ev) => {
    const all = tabs();
    const i = all.indexOf(document.activeElement);
    if (i < 0) return;
    const next = { ArrowRight: i + 1, ArrowLeft: i - 1, Home: 0, End: all.length - 1 }[ev.key];
    if (next === undefined) return;
    ev.preventDefault();
    select(all[(next + all.length) % all.length], { focus: true });
  });
  return {
    select: (name, opts) => {
      const tab = tabs().find((t) => t.dataset.tab === name || t.dataset.sub === name);
      if (tab) select(tab, { silent: true, ...opts });
    },
    current: () => tabs().find((t) => t.getAttribute("aria-selected") === "true"),
  };
}
