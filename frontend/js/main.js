// Tabs, the status bar and the wiring between the three views.
import { initChat } from "./chat.js";
import { initRuns } from "./runs.js";
import { initTrace, showRun } from "./trace.js";

function showTab(name) {
  for (const tab of document.querySelectorAll(".tab")) tab.classList.toggle("active", tab.dataset.tab === name);
  for (const view of document.querySelectorAll(".view")) view.hidden = view.id !== `view-${name}`;
  if (name === "trace" || name === "runs") history.replaceState(null, "", name === "trace" && location.hash.startsWith("#run=") ? location.hash : "#");
}

function setStatus(state) {
  const bar = document.getElementById("status-bar");
  bar.classList.toggle("offline", state === "offline");
  bar.textContent = state === "offline" ? "Disconnected from the gateway: reconnecting…" : "Connected: live updates on.";
}

for (const tab of document.querySelectorAll(".tab")) tab.addEventListener("click", () => showTab(tab.dataset.tab));
initRuns({ onSelect: select, onStatus: setStatus });
initTrace({ onRunning: (on) => { document.querySelector(".running-indicator").hidden = !on; } });
initChat();
// `#run=ID` links open that run's trace, on load and when the hash changes.
let shown = null;
function route() {
  if (!location.hash.startsWith("#run=")) return;
  const id = decodeURIComponent(location.hash.slice(5));
  if (id !== shown) select(id);
}
function select(runId) {
  shown = runId;
  history.replaceState(null, "", `#run=${encodeURIComponent(runId)}`);
  showRun(runId);
  showTab("trace");
}
window.addEventListener("hashchange", route);
route();
