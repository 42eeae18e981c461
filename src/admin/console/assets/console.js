// spgate console: refreshes the overview's live section every 5 seconds (same origin only).
// No inline script anywhere: the Content-Security-Policy allows only this file.
// A refresh the server refuses or fails is shown as such (#live-status), never as fresh data:
// the stale figures are dimmed and the status says what the server answered.
"use strict";
(function () {
  const live = document.getElementById("live");
  const status = document.getElementById("live-status");
  if (!live) {
    return;
  }
  const url = live.getAttribute("data-live");
  const quiet = status ? status.textContent : "";
  let shown = Date.now();
  function failed(message) {
    live.setAttribute("data-stale", "true");
    if (status) {
      status.textContent = message + " The figures below are from " + new Date(shown).toLocaleTimeString() + " and are not current.";
      status.className = "notice bad";
      status.setAttribute("role", "alert");
    }
  }
  async function refresh() {
    let resp;
    try {
      resp = await fetch(url, { credentials: "same-origin", cache: "no-store" });
    } catch (e) {
      failed("Live update failed: the gateway did not answer.");
      return;
    }
    if (resp.redirected) {
      failed("Live update stopped: the session has ended (sign in again).");
      clearInterval(timer);
      return;
    }
    if (!resp.ok) {
      failed("Live update failed: the gateway answered " + resp.status + " " + resp.statusText + ".");
      return;
    }
    const doc = new DOMParser().parseFromString(await resp.text(), "text/html");
    live.replaceChildren(...doc.body.childNodes);
    shown = Date.now();
    live.setAttribute("data-updated", String(shown));
    live.removeAttribute("data-stale");
    if (status) {
      status.textContent = quiet;
      status.className = "hint";
      status.setAttribute("role", "status");
    }
  }
  const timer = setInterval(refresh, 5000);
})();
