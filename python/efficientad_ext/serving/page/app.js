// The service's page: sends one image to POST /v1/score?heatmap=png and shows the answer.
// No framework, no external resource (the page's Content-Security-Policy forbids both).
"use strict";

const $ = (id) => document.getElementById(id);
let originalUrl = null;

function showError(text) {
  const box = $("error");
  box.textContent = text;
  box.hidden = false;
}

function fmt(value, digits = 4) {  // significant digits: thresholds are often far below 1
  return value === null || value === undefined ? "\u2014" : Number(value).toPrecision(digits);
}

async function loadCard() {
  const response = await fetch("/v1/model");
  if (!response.ok) {
    showError(`model card: HTTP ${response.status}`);
    return;
  }
  const card = await response.json();
  const t = card.threshold;
  $("model-line").textContent = `${card.architecture}, ${card.image_size.join("\u00d7")} px, ` +
    `${card.training_steps} training steps, on ${card.device} (${card.dtype})` +
    (t ? `, threshold ${fmt(t.value)} (${t.method})` : ", no decision threshold");
  const rows = [
    ["file", card.file], ["digest", card.digest], ["architecture", card.architecture],
    ["image size", card.image_size.join(" \u00d7 ")], ["teacher", card.teacher],
    ["training steps", card.training_steps], ["penalty images", card.penalty_images],
    ["calibrated quantiles", card.calibrated ? "yes" : "no"],
    ["threshold", t ? `${fmt(t.value)} (${t.method})` : "none"],
    ["device / dtype", `${card.device} / ${card.dtype}`],
    ["batching", `at most ${card.max_batch} images, ${card.max_wait_ms} ms wait`],
    ["efficientad_ext", card.efficientad_ext],
  ];
  const table = $("card");
  table.replaceChildren();
  for (const [name, value] of rows) {
    const tr = table.insertRow();
    const th = document.createElement("th");
    th.textContent = name;
    tr.appendChild(th);
    tr.insertCell().textContent = String(value ?? "\u2014");
  }
}

async function score(file) {
  $("error").hidden = true;
  const body = new FormData();
  body.append("image", file, file.name);
  let response;
  try {
    response = await fetch("/v1/score?heatmap=png", { method: "POST", body });
  } catch (e) {
    showError(`the service did not answer: ${e}`);
    return;
  }
  const answer = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
  if (!response.ok) {
    showError(answer.error || `HTTP ${response.status}`);
    return;
  }
  const r = answer.results[0];
  if (originalUrl) URL.revokeObjectURL(originalUrl);
  originalUrl = URL.createObjectURL(file);
  $("original").src = originalUrl;
  $("heatmap").src = `data:image/png;base64,${r.heatmap_png}`;
  $("score").textContent = r.score === null ? "NaN (broken image)" : fmt(r.score, 6);
  $("threshold").textContent = fmt(r.threshold);
  $("normalized").textContent = fmt(r.normalized_score);
  $("time").textContent = `${Number(r.time_ms).toFixed(1)} ms (batch of ${r.batch_size})`;
  const verdict = $("verdict");
  verdict.className = "verdict " + (r.is_anomalous === null ? "unknown" : r.is_anomalous ? "anomalous" : "normal");
  verdict.textContent = r.is_anomalous === null ? "no decision (the model has no threshold)"
    : r.is_anomalous ? "ANOMALOUS" : "normal";
  $("result").hidden = false;
}

function setUp() {
  $("file").addEventListener("change", (e) => e.target.files.length && score(e.target.files[0]));
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files.length) score(e.dataTransfer.files[0]);
  });
  loadCard().catch((e) => showError(`model card: ${e}`));
}

document.addEventListener("DOMContentLoaded", setUp);
