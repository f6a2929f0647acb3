// mmserve playground, text to image: POST /generate streamed (progress and previews while it denoises).
// Uses playground.js's helpers ($, call, readEvents, logRequest, describeTimings, guard).
"use strict";

const PREVIEW_EVERY = 2; // a preview of the image every this many steps

function showImage(png, stateName) {
  const image = $("generated");
  image.src = `data:image/png;base64,${png}`;
  image.dataset.state = stateName;
  image.hidden = false;
}

async function makeImage(event) {
  event.preventDefault();
  const body = { prompt: $("prompt").value, stream: true, preview_every: PREVIEW_EVERY };
  if ($("seed").value !== "") body.seed = Number($("seed").value);
  if ($("steps").value !== "") body.steps = Number($("steps").value);
  const progress = $("generate-progress");
  const status = $("generate-status");
  const image = $("generated");
  progress.value = 0;
  status.textContent = "waiting…";
  image.dataset.state = "waiting";
  image.dataset.previews = "0";
  $("generate-timings").textContent = "";
  const { response, startedAt } = await call("/generate", {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  });
  await readEvents(response, (name, data) => {
    if (name === "progress") {
      progress.max = data.steps;
      progress.value = data.step;
      status.textContent = `step ${data.step} of ${data.steps}`;
      if (data.preview) {
        showImage(data.preview, "preview");
        image.dataset.previews = String(Number(image.dataset.previews) + 1);
      }
    } else if (name === "done") {
      const made = data.images[0];
      showImage(made.png, "done");
      progress.max = data.steps;
      progress.value = data.steps;
      status.textContent = `done: ${data.steps} steps, seed ${made.seed}, ${data.size}`;
      $("generate-timings").textContent = describeTimings(data.timings);
      logRequest("/generate (stream)", response.status, startedAt, data.timings);
    } else if (name === "error") {
      image.dataset.state = "error";
      throw new Error(data.error.message);
    }
  });
}

$("generate-form").addEventListener("submit", guard(makeImage));
