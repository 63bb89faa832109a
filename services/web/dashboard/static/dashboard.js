// sensor-hub dashboard: live rows over Server-Sent Events, filters, charts, the command form.
// No framework and no build step; the only library is uPlot, on the device page.
"use strict";
const hub = (() => {
  const $ = (s, el = document) => el.querySelector(s);
  const $$ = (s, el = document) => [...el.querySelectorAll(s)];
  const csrf = () => document.body.dataset.csrf;

  function fmt(v) { return typeof v === "number" ? (Number.isInteger(v) ? String(v) : v.toFixed(2)) : JSON.stringify(v); }
  function ago(ts) {
    if (!ts) return "never";
    const s = Math.max(0, Date.now() / 1000 - ts);
    return s < 60 ? `${Math.round(s)} s ago` : s < 3600 ? `${Math.round(s / 60)} min ago` : new Date(ts * 1000).toLocaleString();
  }
  function renderValues(td, values, units, old) {
    td.replaceChildren(...Object.entries(values).map(([k, v]) => {
      const span = document.createElement("span");
      span.dataset.prop = k;
      span.textContent = `${k} ${fmt(v)}${units[k] ? " " + units[k] : ""}`;
      if (old && JSON.stringify(old[k]) !== JSON.stringify(v)) span.className = "changed";
      return span;
    }));
    td.dataset.values = JSON.stringify(values);
  }
  const rows = new Map(); // device id -> <tr>: one lookup per update, not a document query
  function initRows() {
    for (const tr of $$("tr[data-id]")) {
      rows.set(tr.dataset.id, tr);
      const td = $(".values", tr);
      if (td) renderValues(td, JSON.parse(td.dataset.values || "{}"), JSON.parse(tr.dataset.units || "{}"));
    }
    tick();
    setInterval(tick, 5000);
  }
  function tick() { for (const td of $$("td.seen[data-ts]")) td.textContent = ago(parseFloat(td.dataset.ts)); }

  function updateRow(d) {
    const tr = rows.get(d.device_id);
    if (!tr) return false;
    const td = $(".values", tr), old = JSON.parse(td.dataset.values || "{}");
    renderValues(td, d.values, d.units || {}, old);
    const av = $(".avail", tr);
    av.className = `avail ${d.online ? "on" : "off"}`; av.textContent = d.online ? "online" : "offline";
    const seen = $(".seen", tr); seen.dataset.ts = d.last_seen || ""; seen.textContent = ago(d.last_seen);
    $(".err", tr).textContent = d.error ? `${d.error.error_code}: ${d.error.message}` : "";
    return true;
  }

  // One EventSource; the browser resends Last-Event-ID on its own reconnects. A 503 (too many
  // live views) closes it for good, so that case is retried here, later.
  function live(params, onDevices) {
    const dot = $("#live");
    let es;
    const open = () => {
      es = new EventSource(`/ui/events?${new URLSearchParams(params)}`);
      es.onopen = () => { dot.className = "live on"; };
      es.addEventListener("devices", (e) => {
        params.since = e.lastEventId;
        const devices = JSON.parse(e.data).devices;
        onDevices(devices);
        // For whatever else watches the page (the browser tests count updates per device).
        document.dispatchEvent(new CustomEvent("hub:devices", { detail: devices }));
      });
      es.addEventListener("reset", () => location.reload());
      es.onerror = () => {
        dot.className = "live off";
        if (es.readyState === EventSource.CLOSED) setTimeout(open, 10000);
      };
    };
    open();
  }

  function devicesPage() {
    initRows();
    const table = $("#devices");
    const search = $("#search"), src = $("#f-source"), onl = $("#f-online");
    live({ since: table.dataset.since }, (devices) => {
      if (devices.some((d) => !updateRow(d))) location.reload(); // a new device: render it
      if (search.value || src.value || onl.value) filter(); // a full pass only when filtering
    });
    function filter() {
      const q = search.value.trim().toLowerCase();
      let shown = 0;
      for (const tr of $$("tbody tr[data-id]", table)) {
        const ok = (!q || tr.textContent.toLowerCase().includes(q))
          && (!src.value || tr.dataset.source === src.value)
          && (!onl.value || $(".avail", tr).textContent === onl.value);
        tr.hidden = !ok; if (ok) shown++;
      }
      $("#count").textContent = shown;
    }
    for (const el of [search, src, onl]) el.addEventListener("input", filter);
  }

  function devicePage() {
    initRows();
    const table = $("#devices"), id = table.dataset.device;
    const charts = {};
    const series = JSON.parse($("#series").textContent); // [[ts, {prop: number}], ...]
    const props = [...new Set(series.flatMap(([, v]) => Object.keys(v)))];
    const data = {};
    const units = JSON.parse($("tr[data-id]").dataset.units || "{}");
    function chart(p) {
      const div = document.createElement("div"); div.className = "chart"; div.dataset.prop = p;
      $("#charts").append(div);
      const opts = { title: `${p}${units[p] ? " (" + units[p] + ")" : ""}`, width: Math.min(900, $("main").clientWidth - 20), height: 180,
        series: [{}, { label: p, stroke: "#1a56db", width: 1.5 }], scales: { x: { time: true } } };
      charts[p] = new uPlot(opts, data[p], div);
    }
    for (const p of props) {
      data[p] = [[], []];
      for (const [ts, v] of series) if (p in v) { data[p][0].push(ts); data[p][1].push(v[p]); }
      chart(p);
    }
    // The range's min/max/mean go on rolling with each live reading.
    function stats(p, ys) {
      let tr = $(`#stats tr[data-prop="${CSS.escape(p)}"]`);
      if (!tr) {
        tr = document.createElement("tr"); tr.dataset.prop = p;
        tr.append(...[0, 1, 2, 3, 4].map(() => document.createElement("td")));
        $("#stats tbody").append(tr);
      }
      const sum = ys.reduce((a, b) => a + b, 0);
      const cells = [p, Math.min(...ys).toFixed(2), Math.max(...ys).toFixed(2), (sum / ys.length).toFixed(2), String(ys.length)];
      [...tr.children].forEach((td, i) => { td.textContent = cells[i]; });
    }
    let lastTs = series.length ? series[series.length - 1][0] : 0;
    live({ since: table.dataset.since, device: id }, (devices) => {
      for (const d of devices) {
        updateRow(d);
        if (d.ts && d.ts > lastTs) {
          lastTs = d.ts;
          for (const [p, v] of Object.entries(d.values)) {
            const n = typeof v === "boolean" ? Number(v) : v;
            if (typeof n !== "number") continue;
            if (!data[p]) { data[p] = [[], []]; chart(p); }
            data[p][0].push(d.ts); data[p][1].push(n);
            if (data[p][0].length > 3600) { data[p][0].shift(); data[p][1].shift(); }
            charts[p].setData(data[p]);
            stats(p, data[p][1]);
          }
        }
        const ul = $("#recent");
        ul.replaceChildren(...(d.recent || []).slice().reverse().map((e) => {
          const li = document.createElement("li"); li.className = e.kind;
          if (e.kind === "command") {
            li.dataset.cmd = e.cmd_id; li.dataset.status = e.status;
            li.textContent = `command ${e.cmd_id}: ${JSON.stringify(e.values)} → ${e.status}${e.error ? " " + e.error : ""}${e.result ? " " + JSON.stringify(e.result) : ""}`;
          } else {
            li.textContent = `${e.kind}: ${e.event || e.error_code} ${e.message || (e.data ? JSON.stringify(e.data) : "")}`;
          }
          return li;
        }), ...$$("li.past", ul));
      }
    });
    const form = $("#command"), out = $("#response");
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      out.textContent = "sending…";
      const body = new FormData(form);
      let values;
      try { values = JSON.parse(body.get("values")); } catch (e) { out.textContent = `values: ${e.message}`; return; }
      const timeout = parseInt(body.get("timeout"), 10) || undefined;
      const r = await fetch(form.action, { method: "POST", credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf() },
        body: JSON.stringify({ values, timeout }) });
      const answer = await r.json();
      out.textContent = JSON.stringify(answer, null, 2);
      out.dataset.status = answer.status || answer.error || "";
      if (r.status === 401) out.insertAdjacentHTML("beforeend", `\n<a href="/ui/login?next=${encodeURIComponent(location.pathname)}">Enter the management key</a>`);
    });
  }
  // Master control: the template editor checks its JSON as it is typed (the form is not sent
  // while it is invalid), previews what a save would change, and loads a template to edit.
  function masterPage() {
    const form = $("#template-form form");
    if (!form) return;
    const area = $("textarea[name=config_data]", form), problem = $("#json-problem");
    const check = () => {
      let why = "";
      try { const v = JSON.parse(area.value); if (v === null || typeof v !== "object" || Array.isArray(v)) why = "the config must be a JSON object"; }
      catch (e) { why = `not valid JSON: ${e.message}`; }
      area.setCustomValidity(why); problem.textContent = why; problem.hidden = !why;
      return !why;
    };
    area.addEventListener("input", check);
    const button = $("#preview-button"), out = $("#preview");
    button.addEventListener("click", async () => {
      if (!check()) return;
      $("#outcome")?.remove(); // the last save's outcome is not about this template
      out.textContent = "computing…";
      const r = await fetch(button.dataset.action, { method: "POST", credentials: "same-origin",
        headers: { "X-CSRF-Token": csrf() }, body: new FormData(form) });
      const type = r.headers.get("Content-Type") || "";
      if (type.startsWith("text/html")) out.innerHTML = await r.text();
      else out.textContent = (await r.json()).message || `the hub answered ${r.status}`;
    });
    for (const b of $$("#templates button.edit")) {
      b.addEventListener("click", () => {
        const t = JSON.parse(b.closest("tr").dataset.template);
        $("#template-form").open = true;
        form.elements.template_id.value = t.id;
        form.elements.config_name.value = t.config_name;
        form.elements.applies_to.value = { sensor: "sensor_id", group: "group", type: "sensor_type" }[t.applies_to];
        form.elements.target.value = t.sensor_id || t.group || t.sensor_type;
        form.elements.priority.value = t.priority;
        form.elements.is_active.checked = t.is_active;
        area.value = JSON.stringify(t.config_data, null, 2);
        check(); out.replaceChildren();
        form.scrollIntoView();
      });
    }
  }
  return { devicesPage, devicePage, masterPage };
})();
