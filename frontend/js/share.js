// Share: a read-only link to one run (POST /api/runs/{id}/share), shown in a dialog as the full
// address to copy, with when it expires. Whoever opens it sees that run's trace live, and nothing
// else, until then; the link is made fresh each time and kept nowhere by this page.
import { shareRun } from "./api.js";
import { $, setText } from "./dom.js";
import { dateTime, duration } from "./format.js";

let opener = null;
let ticket = 0;

export function initShare() {
  const dialog = $("share-dialog");
  $("share-close").addEventListener("click", () => dialog.close());
  $("share-copy").addEventListener("click", copy);
  $("share-link").addEventListener("focus", (ev) => ev.target.select());
  dialog.addEventListener("close", () => {
    ticket++;
    opener?.focus();
  });
}

export async function openShare(runId, button) {
  const dialog = $("share-dialog");
  const mine = ++ticket;
  opener = button;
  setText($("share-run"), runId);
  $("share-link").value = "";
  setText($("share-expiry"), "Creating a link…");
  setText($("share-status"), "");
  setText($("share-error"), "");
  $("share-copy").disabled = true;
  if (!dialog.open) dialog.showModal();
  try {
    const made = await shareRun(runId);
    if (mine !== ticket) return;
    $("share-link").value = new URL(made.links.dashboard, location.origin).href;
    setText($("share-expiry"), `Expires ${until(made.expires_at)}.`);
    $("share-copy").disabled = false;
    $("share-link").focus();
  } catch (err) {
    if (mine !== ticket) return;
    setText($("share-expiry"), "");
    setText($("share-error"), `Could not make a link: ${err.message}`);
  }
}

// "14:05:03 (in 24 h 0 min)": a moment given in epoch seconds, and how far off it is.
export function until(seconds) {
  const at = new Date(seconds * 1000);
  const left = (at.getTime() - Date.now()) / 1000;
  return `${dateTime(at.toISOString())}${left > 0 ? ` (in ${duration(left)})` : ""}`;
}

async function copy() {
  const field = $("share-link");
  const status = $("share-status");
  try {
    await navigator.clipboard.writeText(field.value);
    setText(status, "Copied to the clipboard.");
  } catch {
    // No clipboard access (an insecure page, a denied permission): the text is selected instead.
    field.focus();
    field.select();
    setText(status, "Selected: press Ctrl+C (⌘C on a Mac) to copy.");
  }
}
