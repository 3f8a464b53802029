// The sign-in view, shown instead of the app when the gateway asks for credentials and this
// browser has no session. One labelled password field; Enter submits. The token is posted once
// (POST /api/session) and forgotten: the session lives in an HttpOnly cookie the page never sees.
import { signIn } from "./api.js";
import { $, setText } from "./dom.js";
import { announceSignedIn, setMode } from "./session.js";

let wired = false;

export function showSignIn(note = "") {
  setMode("signin");
  document.querySelector(".app").hidden = true;
  document.querySelector(".skip-link").hidden = true;
  $("signin").hidden = false;
  document.title = "Sign in · Tidings";
  setText($("signin-note"), note);
  $("signin-note").hidden = !note;
  if (!wired) wire();
  $("signin-token").focus();
}

function wire() {
  wired = true;
  const form = $("signin-form");
  const input = $("signin-token");
  const error = $("signin-error");
  const button = form.querySelector("button[type=submit]");
  input.addEventListener("input", () => {
    setText(error, "");
    input.removeAttribute("aria-invalid");
  });
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const token = input.value.trim();
    if (!token) return fail("Enter your access token.");
    button.disabled = true;
    setText(button, "Signing in…");
    try {
      await signIn(token);
    } catch (err) {
      button.disabled = false;
      setText(button, "Sign in");
      if (err.status === 401) return fail("That token was not accepted. Check it and try again.");
      return fail(`Could not sign in: ${err.message}`);
    }
    input.value = "";
    announceSignedIn();
    location.reload();
  });

  function fail(message) {
    setText(error, message);
    input.setAttribute("aria-invalid", "true");
    input.select();
    input.focus();
  }
}
