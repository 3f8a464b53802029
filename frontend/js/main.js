// The shell: ARIA tabs, hash routes, the status bar, the running indicator and Start Monty.
//
// Routes (reload restores the view): #/runs · #/runs/{id} (a run's trace) · #/trace · #/chat ·
// #/compare[/{id},{id}…]. The old #run={id} still opens a trace. #/shared/{token} is a shared
// view (shared.js): a page of its own, so moving to or from it reloads.
//
// Start: a shared view needs nothing else. Otherwise the page asks who it is (session.js) and
// shows the sign-in view (signin.js) when auth is on and it is not signed in, else the app, with
// the role and Sign out in the status bar when auth is on.
import { onUnauthorized, signOut, startRun } from "./api.js";
import { initChat } from "./chat.js";
import { initCompare, showCompare } from "./compare.js";
import { $, h, setText } from "./dom.js";
import { activeMonty, connectionState, onFeed, startFeed } from "./feed.js";
import { dateTime, shortId } from "./format.js";
import { initRuns } from "./runs.js";
import { announceSignedOut, loadSession, lockIfReadOnly, reloadWith, sessionEnded, setMode, signedOut, takeNote } from "./session.js";
import { sharedToken, showShared } from "./shared.js";
import { showSignIn } from "./signin.js";
import { initStartForm } from "./start-form.js";
import { tablist } from "./tabs.js";
import { currentRun, initTrace, noteStart, refresh as refreshTrace, showRun } from "./trace.js";

let compareIds = [];

function announce(text) {
  const el = $("announcer");
  el.textContent = "";
  requestAnimationFrame(() => { el.textContent = text; });
}

function hashFor(tab) {
  if (tab === "trace") return currentRun() ? `#/runs/${encodeURIComponent(currentRun())}` : "#/trace";
  if (tab === "compare") return compareIds.length ? `#/compare/${compareIds.map(encodeURIComponent).join(",")}` : "#/compare";
  return `#/${tab}`;
}

function go(hash) {
  if (location.hash === hash) route();
  else location.hash = hash;
}

// The hash a tab selection asked for: its route leaves focus where the keyboard put it, however
// late the hashchange event comes (a fast Tab press must not have focus yanked to the view).
let tabHash = null;
const tabs = tablist(document.querySelector(".tabs"), {
  onSelect: (tab) => {
    tabHash = hashFor(tab.dataset.tab);
    go(tabHash);
  },
});

function parse() {
  const hash = decodeURIComponent(location.hash || "");
  if (hash.startsWith("#run=")) return { tab: "trace", id: hash.slice(5) };
  const parts = hash.replace(/^#\/?/, "").split("/");
  if (parts[0] === "runs" && parts[1]) return { tab: "trace", id: parts.slice(1).join("/") };
  if (parts[0] === "trace") return { tab: "trace", id: sessionStorage.getItem("tidings.run") || "" };
  if (parts[0] === "chat") return { tab: "chat" };
  if (parts[0] === "compare") return { tab: "compare", ids: (parts[1] || "").split(",").filter(Boolean) };
  if (parts[0] === "shared") return { tab: "shared" };
  return { tab: "runs" };
}

function route() {
  const r = parse();
  if (r.tab === "shared") return location.reload();
  const fromTabs = tabHash === location.hash || document.activeElement?.getAttribute("role") === "tab";
  tabHash = null;
  if (location.hash.startsWith("#run=")) history.replaceState(null, "", `#/runs/${encodeURIComponent(r.id)}`);
  tabs.select(r.tab);
  if (r.tab === "trace" && r.id) {
    sessionStorage.setItem("tidings.run", r.id);
    showRun(r.id);
    if (location.hash === "#/trace") history.replaceState(null, "", `#/runs/${encodeURIComponent(r.id)}`);
  }
  if (r.tab === "trace") refreshTrace();
  if (r.tab === "compare") {
    compareIds = r.ids;
    showCompare(r.ids);
  }
  if (!fromTabs) $(`view-${r.tab}`).focus({ preventScroll: true });
}

function statusBar() {
  const state = connectionState();
  const conn = $("status-conn");
  const bar = $("status-bar");
  bar.classList.toggle("offline", state === "reconnecting" || state === "closed");
  setText(conn, {
    open: "Connected", connecting: "Connecting…", polling: "Live (polling)",
    reconnecting: "Disconnected: reconnecting…", closed: "Disconnected.", unauthorized: "Signed out.",
  }[state] || state);
  const monty = activeMonty();
  const link = $("status-monty");
  link.hidden = monty.length === 0;
  if (monty.length) {
    const running = monty.filter((r) => r.status === "running");
    const first = running[0] || monty[0];
    link.href = `#/runs/${encodeURIComponent(first.run_id)}`;
    setText(link, monty.length === 1
      ? `Status: Monty workflow is ${first.status} (${shortId(first.run_id)}) · view trace`
      : `Status: ${monty.length} Monty workflows are running · view ${shortId(first.run_id)}`);
  }
  document.querySelector(".running-indicator").hidden = !monty.some((r) => r.status === "running" || r.status === "queued");
  if (monty.length) $("tab-trace").setAttribute("aria-description", "a Monty workflow is running");
  else $("tab-trace").removeAttribute("aria-description");
}

function startMonty() {
  $("start-monty").addEventListener("click", async (ev) => {
    const btn = ev.currentTarget;
    btn.disabled = true;
    try {
      const run = await startRun("monty", {});
      announce(`Monty started: run ${shortId(run.run_id)}${run.warning ? `. ${run.warning}` : ""}`);
      if (run.warning) noteStart(run.run_id, run.warning);
      go(`#/runs/${encodeURIComponent(run.run_id)}`);
    } catch (err) {
      announce(`Could not start Monty: ${err.message}`);
      setText($("status-conn"), `Could not start Monty: ${err.message}`);
    } finally {
      btn.disabled = false;
      lockIfReadOnly(btn);
    }
  });
  lockIfReadOnly($("start-monty"));
}

// Who is signed in, and Sign out (auth on only).
function signedIn(session) {
  if (!session.auth) return;
  $("status-who").hidden = false;
  $("status-role").replaceChildren(h("span", { class: "role-prefix" }, "Signed in: "), session.role === "viewer" ? "viewer (read-only)" : session.role);
  if (session.expires_at) $("status-role").title = `Session expires ${dateTime(new Date(session.expires_at * 1000).toISOString())}`;
  $("sign-out").addEventListener("click", async (ev) => {
    const btn = ev.currentTarget;
    btn.disabled = true;
    try {
      await signOut();
    } catch (err) {
      btn.disabled = false;
      setText($("status-conn"), `Could not sign out: ${err.message}`);
      return;
    }
    setMode("signin");
    announceSignedOut();
    reloadWith("You have signed out.");
  });
}

// The skip link moves focus to the open view without touching the route in the hash.
document.querySelector(".skip-link").addEventListener("click", (ev) => {
  ev.preventDefault();
  document.querySelector("main > .view:not([hidden])")?.focus();
});

function startApp(session) {
  setMode("app", { onEnded: showSignIn });
  document.querySelector(".app").hidden = false;
  onUnauthorized(() => sessionEnded());
  signedIn(session);
  startMonty();
  initTrace({ announce });
  initStartForm({
    onStarted: (run) => {
      if (run.warning) {
        noteStart(run.run_id, run.warning);
        announce(`Run ${shortId(run.run_id)} started. ${run.warning}`);
      }
      go(`#/runs/${encodeURIComponent(run.run_id)}`);
    },
  });
  initRuns({
    onOpen: (id) => go(`#/runs/${encodeURIComponent(id)}`),
    onCompare: (ids) => go(`#/compare/${ids.map(encodeURIComponent).join(",")}`),
  });
  initCompare({ onCompare: (ids) => go(`#/compare/${ids.map(encodeURIComponent).join(",")}`) });
  initChat();
  onFeed((kind, state) => {
    if (kind === "state" && state === "unauthorized") sessionEnded();
    statusBar();
  });
  startFeed();
  window.addEventListener("hashchange", route);
  route();
  statusBar();
}

const token = sharedToken();
if (token !== null) {
  showShared(token, { announce });
} else {
  const note = takeNote();
  const session = await loadSession();
  if (signedOut()) showSignIn(note || (/sign in again/.test(session.problem || "") ? "Your session has ended. Sign in again to continue." : ""));
  else startApp(session);
}
document.body.append(h("span", { hidden: true, id: "app-ready" }));
