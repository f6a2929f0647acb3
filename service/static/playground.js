// mmserve playground: the public API only (/caption streamed, /vqa, /embed), no dependencies.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { image: null, imageVector: null };
const DROP_HINT = "Drop an image here, or click to pick one";

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
    throw Object.assign(new Error(await errorMessage(response)), { status: response.status });
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

// /vqa with the question typed (`{question}`) or spoken (`{question_audio}`): the answer, what was heard, and
// the questions to try when there is no answer (a blank one, or a 422: a question the model did not understand).
async function askVqa(fields, route) {
  if (!state.image) throw new Error("pick an image first");
  clearAnswer();
  let reply;
  try {
    reply = await call("/vqa", { method: "POST", body: imageForm(fields) });
  } catch (error) {
    if (error.status === 422) showQuestionHint();
    throw error;
  }
  const { response, startedAt } = reply;
  const body = await response.json();
  if (body.heard !== null && body.heard !== undefined) {
    $("question").value = body.heard;
    $("heard").textContent = `heard: “${body.heard}”`;
  }
  $("answer").textContent = body.answer;
  if (!body.answer.trim()) showQuestionHint();
  $("answer-timings").textContent = describeTimings(body.timings);
  logRequest(route, response.status, startedAt, body.timings);
}

async function ask(event) {
  event.preventDefault();
  return askVqa({ question: $("question").value }, "/vqa");
}

function clearAnswer() {
  $("answer").textContent = "";
  $("heard").textContent = "";
  $("answer-timings").textContent = "";
  $("question-hint").hidden = true;
}

function showQuestionHint() {
  $("question-hint").hidden = false;
}

async function embedImage() {
  const image = state.image;
  const { response, startedAt } = await call("/embed", { method: "POST", body: imageForm({}) });
  const body = await response.json();
  logRequest("/embed (image)", response.status, startedAt, body.timings);
  if (state.image === image) state.imageVector = body.data[0].embedding;
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
  const image = state.image;
  const imageVector = image && (state.imageVector || (await embedImage()));
  if (state.image !== image) return; // another image came meanwhile: its own comparison shows
  renderSimilarity(texts, vectors, imageVector);
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
  if (file.type && !file.type.startsWith("image/")) { // the image shown (or the hint) stays
    if (!state.image) $("drop-hint").textContent = `${file.name} is not an image: ${DROP_HINT.toLowerCase()}`;
    throw new Error(`${file.name} is not an image (${file.type}): pick a PNG, JPEG or WebP`);
  }
  state.image = file;
  state.imageVector = null;
  showPreview(file);
  clearAnswer();
  const compared = $("similarity").childElementCount > 0;
  $("similarity").replaceChildren(); // its image column was the previous image's
  $("embed-timings").textContent = "";
  await Promise.all([streamCaption(), compared ? compare() : null]);
}

// The picked image in the drop zone; one the browser cannot show (a TIFF) says so, where the old page went blank.
function showPreview(file) {
  const preview = $("preview");
  const hint = $("drop-hint");
  preview.onload = () => { preview.hidden = false; hint.hidden = true; };
  preview.onerror = () => {
    preview.hidden = true;
    hint.textContent = `${file.name}: no preview here (the server may still read it); ${DROP_HINT.toLowerCase()}`;
    hint.hidden = false;
  };
  preview.src = URL.createObjectURL(file);
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

// Runs a user's action (at once: a handler's preventDefault must come before the event's default action): an
// earlier error is cleared as it starts, a new one shown.
function guard(handler) {
  return (...args) => {
    showError("");
    return Promise.resolve(handler(...args)).catch((error) => showError(error.message));
  };
}

// A drop zone (a label holding a file input): a picked or dropped file goes to `onFile(file)`.
function fileDrop(zone, input, onFile) {
  input.addEventListener("change", guard((event) => {
    const file = event.target.files[0];
    event.target.value = ""; // picking the same file again (say, after typing a key) runs it again
    return file ? onFile(file) : undefined;
  }));
  zone.addEventListener("dragover", (event) => { event.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", guard((event) => {
    event.preventDefault();
    zone.classList.remove("over");
    const file = event.dataTransfer.files[0];
    return file ? onFile(file) : undefined;
  }));
}

function setUp() {
  const key = $("api-key");
  key.value = sessionStorage.getItem("mmserve-api-key") || "";
  key.addEventListener("change", () => sessionStorage.setItem("mmserve-api-key", key.value.trim()));
  fileDrop($("drop"), $("file"), useImage);
  $("vqa-form").addEventListener("submit", guard(ask));
  for (const example of $("question-hint").querySelectorAll("button")) {
    example.addEventListener("click", () => { $("question").value = example.textContent; $("question").focus(); });
  }
  $("embed-form").addEventListener("submit", guard(compare));
  checkServer();
}

setUp();
