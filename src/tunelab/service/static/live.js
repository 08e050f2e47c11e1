// A page's changing part, kept current without reloading: every few seconds it fetches that part
// (`data-live`: /jobs/{id}/live for a job's page, /models/live for the exports on the Models page, the same
// template the server rendered the page with) and swaps it in. A part with nothing left to change (an
// ended job, exports all done or failed) has no data-live, so polling stops there. Without JavaScript the
// page is the same, reloaded by hand; served by tunelab itself, as the CSP allows scripts from this server only.
"use strict";

const EVERY_MS = 2000;

function poll() {
  const live = document.querySelector("#live[data-live]");
  if (!live) return;
  fetch(live.dataset.live, { credentials: "same-origin", headers: { Accept: "text/html" } })
    .then((response) => {
      if (response.status === 401 || response.status === 404) return null; // signed out, or gone: stop
      return response.ok ? response.text() : "";
    })
    .then((html) => {
      if (html === null) return;
      if (html) {
        const parsed = document.createElement("template");
        parsed.innerHTML = html;
        const fresh = parsed.content.querySelector("#live");
        if (fresh) live.replaceWith(fresh);
      }
      setTimeout(poll, EVERY_MS);
    })
    .catch(() => setTimeout(poll, EVERY_MS)); // the server restarting, say: try again
}

setTimeout(poll, EVERY_MS);
