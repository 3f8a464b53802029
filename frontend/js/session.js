// Who this page is signed in as, and the ways that changes.
//
// - Asked once at start: GET /api/session never answers 401; it says whether auth is on and,
//   when this browser holds a valid session cookie, its role. In open mode every caller is an
//   admin.
// - Signing in posts the token once; the gateway answers with an HttpOnly cookie, so the page
//   keeps no token anywhere, and reloads into the app. Signing out deletes the cookie.
// - A session can end by itself (it expires, its token is removed from the configuration): any
//   request answering 401, or the live stream being refused, reloads the page, which then shows
//   the sign-in view with a note saying why. Never a loop: a page that finds itself refused again
//   within seconds of such a reload shows the sign-in view in place instead of reloading.
// - The tabs of a browser share the cookie, so they hear of a sign-in or sign-out over a
//   BroadcastChannel and follow.
import { getSession } from "./api.js";

const CHANNEL = "tidings-session";
const NOTE = "tidings.signin-note"; // sessionStorage: why the sign-in view shows after a reload
const AGAIN_MS = 10_000;

export const READ_ONLY = "Read-only: signed in as a viewer";

let session = { auth: false, role: "admin", via: "open", expires_at: null };
let mode = "app"; // "app" | "signin" | "shared"
let ending = false;
let bootedAfterEnd = 0; // when this page was loaded by an ended session
let showInPlace = () => location.reload();
const channel = typeof BroadcastChannel === "function" ? new BroadcastChannel(CHANNEL) : null;

if (channel) {
  channel.onmessage = ({ data }) => {
    if (data === "signed-in" && mode === "signin") location.reload();
    if (data === "signed-out" && mode === "app" && session.auth) location.reload();
  };
}

// The note left by the page before this one (a session that ended), once.
export function takeNote() {
  const raw = sessionStorage.getItem(NOTE);
  sessionStorage.removeItem(NOTE);
  if (!raw) return "";
  try {
    const { text, at, ended } = JSON.parse(raw);
    if (ended && Date.now() - at < AGAIN_MS) bootedAfterEnd = Date.now();
    return text;
  } catch {
    return "";
  }
}

export async function loadSession() {
  try {
    session = await getSession();
  } catch {
    // Unreachable gateway: start as before; a refusal later still brings the sign-in view.
    session = { auth: false, role: "admin", via: "open", expires_at: null };
  }
  return session;
}

export const currentSession = () => session;
export const signedOut = () => session.auth && !session.role;
// A viewer may read every run and control none: controls show disabled, saying why.
export const readOnly = () => session.auth && session.role === "viewer";
// Share links are for sessions of an authenticated gateway (an open one needs none).
export const canShare = () => mode === "app" && session.auth && (session.role === "admin" || session.role === "viewer");

export function setMode(value, { onEnded } = {}) {
  mode = value;
  if (onEnded) showInPlace = onEnded;
}

// Mark a control as not for this session (a viewer): disabled, with the reason as its title.
export function lockIfReadOnly(el) {
  if (!readOnly()) return false;
  el.disabled = true;
  el.title = READ_ONLY;
  return true;
}

// The session ended while the app ran (a 401 from a request or a stream).
export function sessionEnded(text = "Your session has ended. Sign in again to continue.") {
  if (ending || mode !== "app") return;
  ending = true;
  if (bootedAfterEnd && Date.now() - bootedAfterEnd < AGAIN_MS) return showInPlace(text);
  reloadWith(text, { ended: true });
}

// Reload, and have the next page's sign-in view say `text`.
export function reloadWith(text, { ended = false } = {}) {
  sessionStorage.setItem(NOTE, JSON.stringify({ text, at: Date.now(), ended }));
  location.reload();
}

export function announceSignedIn() {
  channel?.postMessage("signed-in");
}

export function announceSignedOut() {
  channel?.postMessage("signed-out");
}
