// The live page of `converge run`: renders each snapshot the daemon streams (server-sent
// events, /events); the browser reconnects by itself. Data is only ever set as text.
"use strict";
let es = null;
let last = null;

function h(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== undefined && v !== null) e.setAttribute(k, v);
  }
  for (const k of kids.flat()) {
    if (k !== null && k !== undefined) e.append(k instanceof Node ? k : String(k));
  }
  return e;
}
const $ = (id) => document.getElementById(id);
const short = (c) => (c || "").slice(0, 7);
const secs = (ms) => (ms / 1000).toFixed(1) + "s";
const clock = (ms) => new Date(ms).toLocaleTimeString();

function ago(ms) {
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  return s < 60 ? s + "s" : s < 3600 ? Math.floor(s / 60) + "m" : Math.floor(s / 3600) + "h";
}

function setConn(text, cls) {
  const c = $("conn");
  c.textContent = text;
  c.className = "badge " + cls;
}

function render(s) {
  last = s;
  const d = s.daemon || {};
  $("where").textContent = `${d.checkout || ""} · ${d.tracked || ""} · pid ${d.pid || "?"}`;
  const cl = s.cluster || {};
  const banner = $("cluster");
  if (cl.reachable === false) {
    banner.hidden = false;
    banner.textContent = `Cluster unreachable since ${clock(cl.sinceMs)}: ${cl.error} (retrying by itself)`;
    document.body.dataset.cluster = "unreachable";
  } else {
    banner.hidden = true;
    document.body.dataset.cluster = cl.reachable ? "reachable" : "unknown";
  }
  renderRunning(s.running);
  renderDrift(s.drift || []);
  const stacks = (s.stacks || []).map(renderStack);
  $("stacks").replaceChildren(...(stacks.length ? stacks : [h("p", { class: "muted" },
    cl.reachable === false ? "No stack can be read while the cluster is unreachable." : "No stack recorded yet.")]));
  $("activity").replaceChildren(...(s.activity || []).map((a) =>
    h("li", { "data-kind": a.kind }, h("span", { class: "muted" }, clock(a.atMs) + " "), a.text)));
  tick();
}

function renderRunning(r) {
  const sec = $("running");
  if (!r) {
    sec.hidden = true;
    sec.removeAttribute("data-commit");
    sec.replaceChildren();
    return;
  }
  sec.hidden = false;
  sec.dataset.commit = r.commit;
  sec.replaceChildren(
    h("h2", {}, "Reconciling ", h("code", {}, short(r.commit)), ` (${r.trigger}) `,
      h("span", { class: "elapsed", "data-since": r.startedMs })),
    h("ul", {}, r.steps.map((st) => h("li", { class: "step " + st.state, "data-key": st.key },
      st.text || st.key, " ",
      st.elapsedMs != null ? h("span", { class: "muted" }, secs(st.elapsedMs))
        : h("span", { class: "elapsed muted", "data-since": st.startedMs })))));
}

function renderDrift(list) {
  const sec = $("drift");
  sec.hidden = list.length === 0;
  sec.replaceChildren(...(list.length ? [h("h2", {}, "Drift being corrected"),
    h("ul", {}, list.map((x) => h("li", { class: "drift-item", "data-object": x.object },
      `${x.object} (stack ${x.stack}) ${x.what} by ${x.manager} `, h("span", { class: "elapsed muted", "data-since": x.atMs }))))] : []));
}

function renderStack(st) {
  return h("section", { class: "stack", "data-stack": st.stack, "data-state": st.state, "data-commit": st.commit },
    h("h2", {}, `${st.stack} `, h("span", { class: "muted" }, `(namespace ${st.namespace}) `),
      h("span", { class: "badge state " + st.state }, st.state)),
    h("p", {}, "commit ", h("code", { class: "commit" }, short(st.commit)), " · ", h("span", { class: "reason" }, st.reason),
      st.message ? h("span", { class: "muted" }, " — " + st.message) : null),
    h("table", { class: "components" },
      h("tr", {}, h("th", {}, "component"), h("th", {}, "ready"), h("th", {}, "image tag"), h("th", {}, "health")),
      st.components.map((c) => h("tr", { class: "component", "data-name": c.name, "data-health": c.health },
        h("td", {}, c.name), h("td", {}, `${c.ready}/${c.desired}`),
        h("td", { title: c.image }, h("code", {}, c.tag)),
        h("td", {}, h("span", { class: c.health }, c.health),
          c.health !== "Healthy" && c.reason ? h("div", { class: "muted" }, c.reason) : null,
          c.finding ? h("div", { class: "finding", "data-rule": c.finding.rule },
            h("b", {}, c.finding.rule + ": "), c.finding.summary,
            h("div", { class: "next" }, "next: " + c.finding.nextStep)) : null)))),
    h("h2", {}, "History"),
    h("table", { class: "history" },
      h("tr", {}, h("th", {}, "commit"), h("th", {}, "outcome"), h("th", {}, "took"), h("th", {}, "builds"), h("th", {}, "when")),
      st.history.map((x) => h("tr", {},
        h("td", {}, h("code", {}, short(x.commit))), h("td", { class: /Succeeded/.test(x.result) ? "ok" : "bad" }, x.result),
        h("td", {}, secs(x.durationMs)), h("td", {}, x.builds.join(", ") || "—"),
        h("td", { class: "muted" }, x.time ? ago(Date.parse(x.time)) + " ago" : "")))));
}

function tick() {
  for (const e of document.querySelectorAll("[data-since]")) {
    e.textContent = secs(Math.max(0, Date.now() - Number(e.dataset.since)));
  }
}
setInterval(() => { if (last && (last.running || (last.drift || []).length)) tick(); }, 1000);

function connect() {
  es = new EventSource("/events");
  es.addEventListener("snapshot", (e) => {
    setConn("live", "ok");
    document.body.dataset.daemon = "connected";
    render(JSON.parse(e.data));
  });
  es.onopen = () => setConn("live", "ok");
  es.onerror = () => {
    setConn("daemon disconnected — reconnecting…", "bad");
    document.body.dataset.daemon = "disconnected";
    // A refused stream (503: too many pages) is not retried by the browser: retry here.
    if (es.readyState === EventSource.CLOSED) setTimeout(connect, 3000);
  };
  es.onmessage = null;
}

$("sync").addEventListener("click", async () => {
  const out = $("sync-result");
  out.textContent = "…";
  try {
    const r = await fetch("/sync", { method: "POST" });
    out.textContent = (await r.text()).trim();
  } catch (e) {
    out.textContent = "the daemon did not answer";
  }
});

connect();
