// eefetch serve: fetch the JSON every few seconds and show it. Text goes in with
// textContent only (file names and errors are data, never markup).
"use strict";

const REFRESH_MS = 2000;
const STATE_NAMES = { in_flight: "in flight" };
const SHOWN_STATES = ["done", "in_flight", "pending", "failed", "split"];
let selected = null;
let mapVersion = null;
let timer = null;

function $(id) { return document.getElementById(id); }

function setText(id, text) { $(id).textContent = text; }

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function bytes(value) {
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (Math.abs(value) >= 1000 && i < units.length - 1) { value /= 1000; i += 1; }
  return i === 0 ? `${value.toFixed(0)} B` : `${value.toFixed(1)} ${units[i]}`;
}

function duration(seconds) {
  seconds = Math.round(seconds);
  const h = Math.floor(seconds / 3600), m = Math.floor((seconds % 3600) / 60), s = seconds % 60;
  if (h) return `${h} h ${m} min`;
  if (m) return `${m} min ${s} s`;
  return `${s} s`;
}

function leaves(tiles) {
  return tiles.pending + tiles.in_flight + tiles.done + tiles.failed;
}

async function getJSON(url) {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), 15000);
  try {
    const response = await fetch(url, { cache: "no-store", signal: controller.signal });
    if (!response.ok) throw new Error(`${url}: ${response.status} ${await response.text()}`);
    return await response.json();
  } finally {
    clearTimeout(timer);
  }
}

function swatch(colour, outline) {
  const box = el("span", null, outline ? "swatch outline" : "swatch");
  box.style.background = colour;
  box.style.borderColor = outline ? colour : "#777";
  return box;
}

function renderJobs(list) {
  setText("root", list.root);
  $("jobs-section").hidden = !list.folder;
  const body = $("jobs").tBodies[0];
  body.replaceChildren();
  for (const job of list.jobs) {
    const row = el("tr");
    row.dataset.job = job.id;
    if (job.id === selected) row.className = "selected";
    if (job.error) {
      row.append(el("td", job.name), el("td", job.status), el("td", job.error));
    } else {
      row.append(
        el("td", job.name), el("td", job.state_label),
        el("td", `${job.tiles.done}/${leaves(job.tiles)}`, "number"),
        el("td", `${job.percent.toFixed(0)}%`, "number"),
        el("td", bytes(job.bytes_done), "number"), el("td", bytes(job.expected_bytes), "number"),
        el("td", job.tiles.failed, "number"));
    }
    row.addEventListener("click", () => { location.hash = `job=${encodeURIComponent(job.id)}`; });
    body.append(row);
  }
}

function renderCounts(job, colours) {
  const body = $("counts").tBodies[0];
  body.replaceChildren();
  for (const state of SHOWN_STATES) {
    const row = el("tr");
    row.dataset.state = state;
    const name = el("td");
    name.append(swatch(colours[state], state === "split"), STATE_NAMES[state] || state);
    const count = el("td", job.tiles[state].toLocaleString("en"), "number count");
    count.id = `count-${state}`;
    count.dataset.count = String(job.tiles[state]);
    row.append(name, count);
    body.append(row);
  }
}

function renderChart(flow) {
  const svg = $("chart");
  svg.replaceChildren();
  const values = flow.mb_per_s;
  if (!values.length) {
    setText("chart-caption", "no tile recorded done yet");
    return;
  }
  const top = Math.max(...values) || 1;
  const step = 600 / values.length;
  const ns = "http://www.w3.org/2000/svg";
  values.forEach((value, i) => {
    const bar = document.createElementNS(ns, "rect");
    const height = (value / top) * 150;
    bar.setAttribute("x", (i * step).toFixed(2));
    bar.setAttribute("y", (160 - height).toFixed(2));
    bar.setAttribute("width", Math.max(step - 1, 0.5).toFixed(2));
    bar.setAttribute("height", height.toFixed(2));
    bar.setAttribute("fill", "#009e73");
    svg.append(bar);
  });
  const span = flow.bin_seconds * values.length;
  setText("chart-caption",
    `last ${duration(span)} in ${flow.bin_seconds.toFixed(0)} s bars; peak ${bytes(top * 1e6)}/s ` +
    "(tile bytes by the time each tile was recorded done)");
}

function renderRetries(retries) {
  setText("retries-total",
    `${retries.failed_attempts} failed attempts and ${retries.rate_limited} rate-limit (429) ` +
    `answers over ${retries.tiles_retried} tiles`);
  const body = $("retries").tBodies[0];
  body.replaceChildren();
  for (const item of retries.by_cause) {
    const row = el("tr");
    row.append(el("td", item.cause), el("td", item.tiles, "number"),
      el("td", item.failed_attempts, "number"), el("td", item.rate_limited, "number"));
    body.append(row);
  }
}

function renderErrors(errors) {
  const list = $("errors");
  list.replaceChildren();
  if (!errors.length) list.append(el("li", "none"));
  for (const item of errors) {
    const when = new Date(item.at * 1000).toLocaleTimeString();
    list.append(el("li", `${when} tile ${item.tile}: ${item.error}`));
  }
}

function renderJob(job, list) {
  $("job").hidden = false;
  document.title = `eefetch: ${job.name}`;
  setText("job-name", job.name);
  if (job.error) {
    setText("job-state", job.status);
    setText("job-output", job.error);
    return;
  }
  setText("job-state", job.state_label);
  setText("job-output", job.output);
  const total = leaves(job.tiles);
  $("progress-bar").style.width = `${job.percent.toFixed(1)}%`;
  setText("progress-text", `${job.tiles.done.toLocaleString("en")} of ${total.toLocaleString("en")} tiles done (${job.percent.toFixed(0)}%)`);
  renderCounts(job, list.colours);
  setText("fact-fetched", `${bytes(job.bytes_done)} of tile files; the image is about ${bytes(job.expected_bytes)} uncompressed`);
  setText("fact-speed", job.eta.mb_per_s === null ? "–" : `${bytes(job.eta.mb_per_s * 1e6)}/s, ${job.eta.tiles_per_s.toFixed(2)} tiles/s`);
  setText("fact-eta", job.eta.seconds === null ? job.eta.reason : job.eta.remaining_tiles ? `about ${duration(job.eta.seconds)}` : job.eta.reason);
  setText("fact-grid", `${job.grid.width.toLocaleString("en")} x ${job.grid.height.toLocaleString("en")} px, ${job.bands} band(s), ${job.grid.crs}`);
  if (job.map_version !== mapVersion) {
    mapVersion = job.map_version;
    $("map").src = `api/map.png?id=${encodeURIComponent(job.id)}&v=${job.map_version}`;
  }
  const legend = $("map-legend");
  legend.replaceChildren();
  for (const state of SHOWN_STATES) {
    legend.append(swatch(list.colours[state], state === "split"), `${STATE_NAMES[state] || state} `);
  }
  if (job.has_region) legend.append(swatch(list.region_colour, true), "region");
  renderChart(job.throughput);
  renderRetries(job.retries);
  renderErrors(job.recent_errors);
}

function chosenFromHash() {
  const found = /job=([^&]+)/.exec(location.hash);
  return found ? decodeURIComponent(found[1]) : null;
}

async function refresh() {
  try {
    const list = await getJSON("api/jobs");
    selected = chosenFromHash() || selected;
    if (!list.jobs.some((job) => job.id === selected)) {
      selected = list.jobs.length ? list.jobs[0].id : null;
    }
    renderJobs(list);
    if (selected) {
      renderJob(await getJSON(`api/job?id=${encodeURIComponent(selected)}`), list);
    } else {
      $("job").hidden = true;
      $("jobs-section").hidden = false;
      setText("root", `${list.root}: no eefetch jobs here yet (looking for *.eefetch.db)`);
    }
    $("problem").hidden = true;
    setText("updated", `updated ${new Date().toLocaleTimeString()}`);
    document.body.dataset.refreshes = String(Number(document.body.dataset.refreshes) + 1);
  } catch (error) {
    $("problem").hidden = false;
    setText("problem", `cannot read the jobs: ${error.message}; retrying`);
  } finally {
    clearTimeout(timer);
    timer = setTimeout(refresh, REFRESH_MS);
  }
}

window.addEventListener("hashchange", () => { mapVersion = null; refresh(); });
refresh();
