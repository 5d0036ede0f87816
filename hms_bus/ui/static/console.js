// hms-bus console: live updates (Server-Sent Events), the "why" panel, actions.
"use strict";
(function () {
  const TOKEN = "hms-bus-token";
  const token = document.getElementById("token");
  if (token) {
    token.value = sessionStorage.getItem(TOKEN) || "";
    token.addEventListener("input", () => sessionStorage.setItem(TOKEN, token.value));
  }

  function toast(text, bad) {
    const t = document.getElementById("toast");
    t.textContent = text;
    t.className = "show" + (bad ? " bad" : "");
    clearTimeout(toast.timer);
    toast.timer = setTimeout(() => (t.className = ""), 4000);
  }

  // -- live: fetch the part of the page that changed --------------------------------------
  const live = document.getElementById("live");
  async function refresh() {
    const url = new URL(location.href);
    url.searchParams.set("fragment", "1");
    const r = await fetch(url, { headers: { Accept: "text/html" } });
    if (r.ok) live.innerHTML = await r.text();
    suggestSignal();
    applicable();
  }
  // Only the actions that apply to the workflow's status now are offered.
  function applicable() {
    const badge = document.querySelector("#live [data-status]");
    const actions = document.querySelector("section.actions");
    if (!badge || !actions) return;
    const status = badge.dataset.status;
    let shown = 0;
    for (const form of actions.querySelectorAll("form[data-when]")) {
      form.hidden = !form.dataset.when.split(" ").includes(status);
      if (!form.hidden) shown += 1;
    }
    const none = actions.querySelector(".none");
    none.hidden = shown > 0;
    none.textContent = "No action applies to a " + status + " workflow.";
  }
  applicable();
  // The signal form names the signal the workflow waits for, once it waits.
  function suggestSignal() {
    const name = document.querySelector("form[data-action=signal] input[name=name]");
    const waits = document.querySelector(".badge.wait[data-signal]");
    if (name && waits && !name.value) name.value = waits.dataset.signal;
  }
  if (live && window.EventSource) {
    const source = new EventSource("/events");
    let pending = false;
    source.addEventListener("changed", (e) => {
      const ids = JSON.parse(e.data).changed;
      if (live.dataset.live === "workflow" && !ids.includes("*") && !ids.includes(live.dataset.id)) return;
      if (pending) return;
      pending = true;
      refresh().finally(() => { pending = false; if (live.dataset.live === "workflow") why(); });
    });
  }

  // -- why ---------------------------------------------------------------------------------
  const panel = document.getElementById("why");
  async function why() {
    if (!panel) return;
    const list = panel.querySelector("ul");
    const r = await fetch("/api/why/" + encodeURI(panel.dataset.id));
    if (!r.ok) { list.innerHTML = ""; return; }
    const reasons = await r.json();
    list.replaceChildren(...reasons.map((reason) => {
      const li = document.createElement("li");
      li.textContent = reason.text;
      const fix = document.createElement("span");
      fix.className = "fix";
      fix.append("→ ");
      const code = document.createElement("code");
      code.textContent = reason.action;
      fix.append(code);
      li.append(fix);
      return li;
    }));
  }
  why();

  // -- actions -----------------------------------------------------------------------------
  document.addEventListener("submit", async (e) => {
    const form = e.target.closest("form[data-action]");
    if (!form) return;
    e.preventDefault();
    const body = Object.fromEntries(new FormData(form).entries());
    const button = form.querySelector("button");
    button.disabled = true;
    try {
      const r = await fetch("/api/actions/" + form.dataset.action, {
        method: "POST",
        headers: { "Content-Type": "application/json", "X-HMS-Token": sessionStorage.getItem(TOKEN) || "" },
        body: JSON.stringify(body),
      });
      const answer = await r.json();
      toast(answer.message || answer.error, !r.ok || !answer.ok);
      if (r.ok && live) await refresh();
      if (r.ok) why();
    } catch (err) {
      toast(String(err), true);
    } finally {
      button.disabled = false;
    }
  });

  // -- diagrams ----------------------------------------------------------------------------
  if (window.mermaid) {
    window.mermaid.initialize({ startOnLoad: false, securityLevel: "strict", theme: "neutral" });
    window.mermaid.run({ querySelector: "pre.mermaid" });
  }
})();
