// The shared view (#/shared/<share token>): one run's trace, live and read-only, for someone who
// has a link and no session. No tabs to other views, no controls; a banner says until when.
//
// The token is `r1.<run id>.<expiry>.<mac>`: the page reads the run and the expiry from it (a
// link already expired is said so without asking), and the gateway checks the mac. It lives in
// the URL fragment (never sent in a request line or a Referer) and in memory, and goes as
// `?token=` to the run's record, its JSON log pages and its stream only, over a connection of
// this tab's own: never to the browser-wide one, which carries a signed-in session's runs.
// Leaving for another route reloads the page, which forgets it.
import { onUnauthorized, useShareToken as apiToken } from "./api.js";
import { $, setText } from "./dom.js";
import { dateTime, shortId } from "./format.js";
import { RUN_ID } from "./live-cursor.js";
import { useShareToken as liveToken } from "./live.js";
import { setMode } from "./session.js";
import { until } from "./share.js";
import { initTrace, showRun } from "./trace.js";

const ROUTE = /^#\/shared\/([^/]+)$/;

// The share token in this address, or null when it is not a shared view.
export function sharedToken(hash = location.hash) {
  const m = ROUTE.exec(hash);
  if (!m) return null;
  try {
    return decodeURIComponent(m[1]);
  } catch {
    return "";
  }
}

function parse(token) {
  const parts = token.split(".");
  if (parts.length !== 4 || parts[0] !== "r1" || !RUN_ID.test(parts[1]) || !/^\d+$/.test(parts[2])) return null;
  return { runId: parts[1], expires: Number(parts[2]) };
}

let ended = false;

export function showShared(token, { announce }) {
  setMode("shared");
  const route = location.hash;
  addEventListener("hashchange", () => location.hash !== route && location.reload());
  for (const el of document.querySelectorAll(".tabs, #start-monty, #trace .controls")) el.hidden = true;
  const app = document.querySelector(".app");
  app.classList.add("shared");
  app.hidden = false;
  const banner = $("shared-banner");
  banner.hidden = false;
  $("view-trace").hidden = false;
  $("view-runs").hidden = true;

  const parsed = parse(token);
  if (!parsed) return problem("This share link is not valid: part of it is missing or changed. Check that you copied the whole link, or ask for a new one.");
  const { runId, expires } = parsed;
  if (expires * 1000 <= Date.now()) {
    return problem(`This share link expired at ${dateTime(new Date(expires * 1000).toISOString())}. Ask whoever shared it for a new link.`);
  }
  document.title = `Run ${shortId(runId)} (shared) · Tidings`;
  setText(banner, `Shared read-only view, expires ${until(expires)}.`);
  const left = expires * 1000 - Date.now();
  if (left < 2 ** 31) setTimeout(() => lapse("This share link has expired."), left);

  apiToken(runId, token);
  liveToken(token);
  onUnauthorized((err) => lapse(`This share link is no longer accepted (${err.message}).`));
  initTrace({
    announce,
    onLiveState(state) {
      if (state === "unauthorized") lapse("This share link is no longer accepted: the view is no longer updated.");
      setText($("status-conn"), { open: "Connected", connecting: "Connecting…", polling: "Live (polling)", reconnecting: "Disconnected: reconnecting…", closed: "Run ended: the view is complete.", unauthorized: "Link no longer accepted." }[state] ?? state);
      $("status-bar").classList.toggle("offline", state === "reconnecting" || state === "unauthorized");
    },
  });
  showRun(runId);
}

// The link stopped working while shown: what is on screen stays, marked as no longer live. Before
// anything came (a link refused at once), the trace gives way to the message.
function lapse(text) {
  if (ended) return;
  ended = true;
  const loaded = $("t-status").textContent && $("t-status").textContent !== "loading";
  if (!loaded) return problem(text);
  const banner = $("shared-banner");
  banner.classList.add("lapsed");
  setText(banner, text);
}

function problem(text) {
  ended = true;
  $("trace").hidden = true;
  $("trace-empty").hidden = true;
  const box = $("shared-problem");
  box.hidden = false;
  setText($("shared-problem-text"), text);
  const banner = $("shared-banner");
  banner.classList.add("lapsed");
  setText(banner, "Shared read-only view: this link does not work.");
  setText($("status-conn"), "Not connected.");
  $("shared-problem").focus();
}
