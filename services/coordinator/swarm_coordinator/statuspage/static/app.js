// The status page: fetches /api/status every few seconds and updates the page in place (no reload).
// Everything from the document goes in through textContent (peer names are whatever a volunteer typed).
"use strict";

const state = {refreshMs: 5000, timer: null, last: null, generatedAt: null};

function get(object, path) {
  return path.split(".").reduce((value, key) => (value == null ? undefined : value[key]), object);
}

function formatNumber(value) {
  return typeof value === "number" ? value.toLocaleString("en-US") : String(value);
}

function formatDuration(seconds) {
  if (seconds < 90) return `${Math.round(seconds)} s`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
  if (seconds < 172800) return `${(seconds / 3600).toFixed(1)} h`;
  return `${(seconds / 86400).toFixed(1)} days`;
}

function formatDate(unixSeconds) {
  return new Date(unixSeconds * 1000).toLocaleString(undefined, {dateStyle: "medium", timeStyle: "short"});
}

// How each field is shown; the raw value also goes in data-value, so tools (and tests) can read it exactly.
const FORMATS = {
  "run.mode": (v, doc) => v ?? `unknown (${doc.unknown.mode || "not reported"})`,
  "run.started": v => (v == null ? "unknown" : formatDate(v)),
  "run.eta_s": (v, doc) => (doc.run.complete ? "done" : v == null ? `unknown: ${doc.unknown.eta}` : formatDuration(v)),
  "run.progress": v => `${(v * 100).toFixed(1)}%`,
  "swarm.lr": v => (v == null ? "–" : v.toExponential(2)),
  "swarm.samples_per_s": v => v.toFixed(2),
  "swarm.loss": v => (v == null ? "no report yet" : v.toFixed(4)),
  "artifacts.sample_grid_url": (v, doc) => v ?? `unknown: ${doc.unknown.sample_grid}`,
  "artifacts.checkpoint": (v, doc) => v ?? `unknown: ${doc.unknown.checkpoint}`,
  "artifacts.export": (v, doc) => v ?? `unknown: ${doc.unknown.export}`,
};

function fillFields(doc) {
  for (const element of document.querySelectorAll("[data-field]")) {
    const path = element.dataset.field;
    const value = get(doc, path);
    const format = FORMATS[path];
    element.textContent = format ? format(value, doc) : value == null ? "–" : formatNumber(value);
    element.dataset.value = value == null ? "" : String(value);
  }
}

function cell(row, text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  row.appendChild(td);
  return td;
}

function fillLeaderboard(doc) {
  const rows = doc.leaderboard.peers.map((peer, index) => {
    const row = document.createElement("tr");
    row.className = peer.online ? "online" : "offline";
    row.dataset.samples = String(peer.samples);
    cell(row, String(index + 1));
    const name = cell(row, peer.name);
    name.title = `peer ${peer.peer}`;
    cell(row, formatNumber(peer.samples), "num");
    cell(row, peer.hours_online.toFixed(2), "num");
    cell(row, peer.online ? (peer.finished ? "now (finished)" : "now") : `${formatDuration(peer.last_seen_ago_s)} ago`);
    cell(row, peer.reachable ? "reachable" : "client mode");
    return row;
  });
  if (rows.length === 0) {
    const row = document.createElement("tr");
    const td = cell(row, "No peer has joined yet: be the first.");
    td.colSpan = 6;
    rows.push(row);
  }
  document.getElementById("leaderboard").replaceChildren(...rows);
}

function fillHealth(doc) {
  const services = doc.health.services.map(service => {
    const item = document.createElement("li");
    const status = service.up == null ? "unknown" : service.up ? "up" : "down";
    item.className = `service ${status}`;
    item.dataset.service = service.name;
    item.textContent = `${service.name}: ${status}${service.detail ? ` (${service.detail})` : ""}`;
    return item;
  });
  document.getElementById("services").replaceChildren(...services);
  const addresses = doc.health.bootstrap.map(address => {
    const item = document.createElement("li");
    const code = document.createElement("code");
    code.textContent = address;
    item.appendChild(code);
    return item;
  });
  if (addresses.length === 0) {
    const item = document.createElement("li");
    item.textContent = "unknown: the coordinator has not fetched the bootstrap DHT's addresses yet";
    addresses.push(item);
  }
  document.getElementById("bootstrap").replaceChildren(...addresses);
}

function fillSampleGrid(doc) {
  const holder = document.getElementById("sample-grid");
  const url = doc.artifacts.sample_grid_url;
  if (url && !holder.querySelector("img")) {
    const image = document.createElement("img");
    image.alt = "latest sample grid";
    holder.prepend(image);
  }
  const image = holder.querySelector("img");
  if (image && url && image.getAttribute("src") !== url) image.src = url;
}

function render(doc) {
  state.last = doc;
  state.generatedAt = doc.generated_at;
  document.body.dataset.generatedAt = String(doc.generated_at);  // which document is shown (tools, tests)
  document.title = `${doc.run.name}: swarm status`;
  fillFields(doc);
  const percent = Math.round(doc.run.progress * 1000) / 10;
  document.getElementById("progress-bar").style.width = `${percent}%`;
  document.getElementById("progress").setAttribute("aria-valuenow", String(percent));
  const badge = document.getElementById("state");
  badge.textContent = doc.run.complete ? "complete" : doc.swarm.peers_online ? "training" : "waiting for peers";
  badge.className = `badge ${doc.run.complete ? "complete" : doc.swarm.peers_online ? "live" : "idle"}`;
  for (const container of document.querySelectorAll("[data-chart]")) {
    window.SwarmCharts.drawLineChart(container, doc.history.t, doc.history[container.dataset.chart]);
  }
  fillLeaderboard(doc);
  fillHealth(doc);
  fillSampleGrid(doc);
  showUpdated();
}

function showUpdated() {
  if (state.generatedAt == null) return;
  const age = Math.max(0, Date.now() / 1000 - state.generatedAt);
  document.getElementById("updated").textContent = `Updated ${formatDuration(age)} ago.`;
}

async function refresh() {
  const error = document.getElementById("error");
  try {
    const response = await fetch("api/status", {cache: "no-cache"});
    if (!response.ok) throw new Error(`the coordinator answered ${response.status}`);
    const doc = await response.json();
    render(doc);
    state.refreshMs = Math.max(1000, (doc.refresh_s || 5) * 1000);
    error.hidden = true;
  } catch (e) {
    error.textContent = `Cannot reach the coordinator right now (${e.message}); retrying.`;
    error.hidden = false;
  }
  state.timer = setTimeout(refresh, state.refreshMs);
}

async function copyJoinLine() {
  const text = document.getElementById("join-command").textContent;
  const done = document.getElementById("copy-state");
  try {
    if (navigator.clipboard && window.isSecureContext) {
      await navigator.clipboard.writeText(text);
    } else {  // plain http on a public host is no secure context: the older way still works there
      const area = document.createElement("textarea");
      area.value = text;
      area.setAttribute("readonly", "");
      area.className = "offscreen";
      document.body.appendChild(area);
      area.select();
      const ok = document.execCommand("copy");
      area.remove();
      if (!ok) throw new Error("the browser refused");
    }
    done.textContent = "Copied.";
  } catch (e) {
    done.textContent = `Could not copy (${e.message}): select the line and copy it by hand.`;
  }
}

document.getElementById("copy-join").addEventListener("click", copyJoinLine);
setInterval(showUpdated, 1000);
refresh();
