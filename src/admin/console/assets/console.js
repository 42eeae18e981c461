// spgate console: refreshes the overview's live section every 5 seconds (same origin only).
// No inline script anywhere: the Content-Security-Policy allows only this file.
"use strict";
(function () {
  const live = document.getElementById("live");
  if (!live) {
    return;
  }
  const url = live.getAttribute("data-live");
  async function refresh() {
    try {
      const resp = await fetch(url, { credentials: "same-origin", cache: "no-store" });
      if (resp.redirected || !resp.ok) {
        live.setAttribute("data-stale", "true");
        return;
      }
      const doc = new DOMParser().parseFromString(await resp.text(), "text/html");
      live.replaceChildren(...doc.body.childNodes);
      live.setAttribute("data-updated", String(Date.now()));
      live.removeAttribute("data-stale");
    } catch (e) {
      live.setAttribute("data-stale", "true");
    }
  }
  setInterval(refresh, 5000);
})();
