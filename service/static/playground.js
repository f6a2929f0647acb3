// mmserve playground: the public API only (/caption streamed, /vqa, /embed), no dependencies.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { image: null, imageVector: null };

function headers() {
  const key = $("api-key").value.trim();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

function logRequest(route, status, startedAt, timings) {
  const row = document.createElement("tr");
  const cells = [
    route,
    String(status),
    `${(performance.now() - startedAt).toFixed(0)} ms`,
    timings ? `${timings.total_ms.toFixed(1)} ms` : "",
    timings ? String(timings.batch_size) : "",
  ];
  cells.forEach((text, i) => {
    const cell = document.createElement("td");
    cell.textContent = text;
    if (i >= 2) cell.className = "num";
    row.appendChild(cell);
  });
  $("log").querySelector("tbody").prepend(row);
}

function describeTimings(timings) {
  return `latency ${timings.total_ms.toFixed(1)} ms (queue ${timings.queue_ms.toFixed(1)} ms, ` +
    `inference ${timings.inference_ms.toFixed(1)} ms) · batch size ${timings.batch_size}`;
}

async function errorMessage(response) {
  try {
    const body = await response.json();
    if (body.error) return `${response.status}: ${body.error.message}`;
    if (Array.isArray(body.detail)) return `${response.status}: ${body.detail.map((d) => d.msg).join("; ")}`;
  } catch (_) { /* not JSON */ }
  return `${response.status} ${response.statusText}`;
}

async function call(route, init) {
  const startedAt = performance.now();
  const response = await fetch(route, { ...init, headers: { ...headers(), ...(init.headers || {}) } });
  if (!response.ok) {
    logRequest(route, response.status, startedAt, null);
    throw new Error(await errorMessage(response));
  }
  return { response, startedAt };
}

// Server-sent events from fetch's body: "event: NAME\ndata: JSON\n\n" blocks, handed over as they arrive.
async function readEvents(response, onEvent) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let event = "message";
      let data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event: ")) event = line.slice(7);
        else if (line.startsWith("data: ")) data += line.slice(6);
      }
      onEvent(event, JSON.parse(data));
    }
  }
}

function imageForm(extra) {
  const form = new FormData();
  form.append("image", state.image);
  for (const [name, value] of Object.entries(extra)) form.append(name, value);
  return form;
}

async function streamCaption() {
  const caption = $("caption");
  caption.textContent = "";
  caption.dataset.state = "streaming";
  $("caption-timings").textContent = "";
  const { response, startedAt } = await call("/caption", { method: "POST", body: imageForm({ stream: "true" }) });
  await readEvents(response, (event, data) => {
    if (event === "token") caption.textContent += data.text;
    else if (event === "done") {
      caption.textContent = data.caption;
      caption.dataset.state = "done";
      $("caption-timings").textContent = describeTimings(data.timings);
      logRequest("/caption (stream)", response.status, startedAt, data.timings);
    } else if (event === "error") {
      caption.dataset.state = "error";
      throw new Error(data.error.message);
    }
  });
}

async function ask(event) {
  event.preventDefault();
  if (!state.image) return showError("pick an image first");
  const { response, startedAt } = await call("/vqa", {
    method: "POST", body: imageForm({ question: $("question").value }),
  });
  const body = await response.json();
  $("answer").textContent = body.answer;
  $("answer-timings").textContent = describeTimings(body.timings);
  logRequest("/vqa", response.status, startedAt, body.timings);
}

async function embedImage() {
  const { response, startedAt } = await call("/embed", { method: "POST", body: imageForm({}) });
  const body = await response.json();
  logRequest("/embed (image)", response.status, startedAt, body.timings);
  return body.data[0].embedding;
}

const dot = (a, b) => a.reduce((sum, x, i) => sum + x * b[i], 0);

async function compare(event) {
  if (event) event.preventDefault();
  const texts = $("texts").value.split("\n").map((t) => t.trim()).filter(Boolean);
  if (!texts.length) return;
  const { response, startedAt } = await call("/embed", {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ input: texts }),
  });
  const body = await response.json();
  logRequest("/embed (texts)", response.status, startedAt, body.timings);
  $("embed-timings").textContent = describeTimings(body.timings);
  const vectors = body.data.map((d) => d.embedding);
  if (state.image && !state.imageVector) state.imageVector = await embedImage();
  renderSimilarity(texts, vectors, state.imageVector);
}

function renderSimilarity(texts, vectors, imageVector) {
  const table = document.createElement("table");
  const head = table.createTHead().insertRow();
  for (const title of ["", ...texts.map((_, i) => `#${i + 1}`), ...(imageVector ? ["image"] : [])]) {
    const th = document.createElement("th");
    th.textContent = title;
    head.appendChild(th);
  }
  const rows = table.createTBody();
  texts.forEach((text, i) => {
    const row = rows.insertRow();
    const label = row.insertCell();
    label.textContent = `#${i + 1} ${text}`;
    const scores = vectors.map((v) => dot(vectors[i], v));
    if (imageVector) scores.push(dot(vectors[i], imageVector));
    scores.forEach((score, j) => {
      const cell = row.insertCell();
      cell.className = "num";
      cell.textContent = score.toFixed(3);
      if (imageVector && j === scores.length - 1) cell.dataset.image = "true";
      cell.style.background = `rgba(47, 111, 222, ${Math.max(0, score) * 0.35})`;
    });
  });
  $("similarity").replaceChildren(table);
}

async function useImage(file) {
  if (!file) return;
  state.image = file;
  state.imageVector = null;
  const preview = $("preview");
  preview.src = URL.createObjectURL(file);
  preview.hidden = false;
  $("drop-hint").hidden = true;
  $("answer").textContent = "";
  showError("");
  await streamCaption();
}

async function checkServer() {
  try {
    const response = await fetch("/health", { headers: headers() });
    const body = await response.json();
    $("status").textContent = response.ok
      ? `${body.model} on ${body.device} (${body.dtype})`
      : `server ${body.status || body.error?.message || response.status}`;
  } catch (error) {
    $("status").textContent = `the server cannot be reached (${error.message})`;
  }
}

function guard(handler) {
  return (...args) => Promise.resolve(handler(...args)).catch((error) => showError(error.message));
}

function setUp() {
  const key = $("api-key");
  key.value = sessionStorage.getItem("mmserve-api-key") || "";
  key.addEventListener("change", () => sessionStorage.setItem("mmserve-api-key", key.value.trim()));
  $("file").addEventListener("change", guard((event) => {
    const file = event.target.files[0];
    event.target.value = ""; // picking the same file again (say, after typing a key) runs it again
    return useImage(file);
  }));
  const drop = $("drop");
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", guard((event) => {
    event.preventDefault();
    drop.classList.remove("over");
    return useImage(event.dataTransfer.files[0]);
  }));
  $("vqa-form").addEventListener("submit", guard(ask));
  $("embed-form").addEventListener("submit", guard(compare));
  checkServer();
}

setUp();
