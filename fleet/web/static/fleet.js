// The fleet page updates without a reload: every POLL_MS it reads its JSON twin (same filters) and redraws the rows.
"use strict";
const POLL_MS = 10000;

function when(us) {
  return us == null ? "-" : new Date(us / 1000).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
}

function cell(row, text, className) {
  const td = row.insertCell();
  if (className) {
    const span = document.createElement("span");
    span.className = className;
    span.textContent = text;
    td.appendChild(span);
  } else {
    td.textContent = text;
  }
  return td;
}

function draw(data) {
  const body = document.getElementById("fleet-rows");
  body.replaceChildren();
  for (const m of data.machines) {
    const row = body.insertRow();
    row.dataset.testid = "machine-row";
    row.dataset.device = m.device_id;
    row.dataset.state = m.state;
    const link = document.createElement("a");
    link.href = "/machines/" + encodeURIComponent(m.device_id);
    link.textContent = m.device_id;
    link.dataset.testid = "machine-link";
    row.insertCell().appendChild(link);
    cell(row, m.state, "state " + m.state).firstChild.dataset.testid = "machine-state";
    cell(row, when(m.since_us));
    cell(row, m.score == null ? "-" : m.score.toFixed(3));
    cell(row, m.top_channel || "-");
    cell(row, m.defect || "-");
    cell(row, m.iso_zone || "-");
    cell(row, m.model_id || "-");
    cell(row, when(m.last_seen_us));
    if (m.health_problem) cell(row, m.health_faults.join(", ") || "problem", "problem");
    else cell(row, m.health_problem == null ? "-" : "ok");
    cell(row, m.unacknowledged ? String(m.unacknowledged) : "");
    cell(row, (m.site || "") + (m.tags.length ? " [" + m.tags.join(", ") + "]" : ""));
    cell(row, (data.phases || {})[m.device_id] || "-").dataset.testid = "machine-phase";
  }
  const shown = data.total > data.machines.length ? ", the first " + data.machines.length + " shown" : "";
  document.getElementById("fleet-count").textContent = data.total + " machines" + shown;
}

async function poll() {
  try {
    const response = await fetch("/fleet.json" + window.location.search, {headers: {Accept: "application/json"}});
    if (response.ok) draw(await response.json());
  } catch (error) {
    // the next poll tries again
  }
}

window.addEventListener("load", () => setInterval(poll, POLL_MS));
