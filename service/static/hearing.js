// mmserve playground, speech: the transcription panel (POST /transcribe, streamed) and spoken questions about
// the image (/vqa's `question_audio`), from the microphone or an audio file (audio.js).
// Uses playground.js's helpers ($, call, readEvents, logRequest, describeTimings, guard, fileDrop, askVqa).
"use strict";

const inSeconds = (s) => `${s.toFixed(2)} s`;

function addSegment(segment) {
  const item = document.createElement("li");
  const time = document.createElement("span");
  time.className = "time";
  time.textContent = `${inSeconds(segment.start)} – ${inSeconds(segment.end)}`;
  item.append(time, segment.text);
  $("segments").append(item);
  $("segments").hidden = false;
}

async function transcribe(blob, name) {
  const transcript = $("transcript");
  transcript.textContent = "";
  transcript.dataset.state = "streaming";
  $("segments").replaceChildren();
  $("segments").hidden = true;
  $("transcribe-timings").textContent = "";
  const form = new FormData();
  form.append("audio", blob, name);
  form.append("stream", "true");
  if ($("transcribe-segments").checked) form.append("segments", "true");
  const { response, startedAt } = await call("/transcribe", { method: "POST", body: form });
  await readEvents(response, (event, data) => {
    if (event === "token") transcript.textContent += data.text;
    else if (event === "segment") { // a long recording, cut at pauses: a piece at a time, in order of time
      transcript.textContent += (transcript.textContent ? " " : "") + data.text;
      addSegment(data);
    } else if (event === "done") {
      transcript.textContent = data.text;
      transcript.dataset.state = "done";
      $("segments").replaceChildren();
      (data.segments || []).forEach(addSegment);
      $("transcribe-timings").textContent = `${inSeconds(data.duration)} of audio · ${describeTimings(data.timings)}`;
      logRequest("/transcribe (stream)", response.status, startedAt, data.timings);
    } else if (event === "error") {
      transcript.dataset.state = "error";
      throw new Error(data.error.message);
    }
  });
}

function askAloud(blob, name) {
  return askVqa({ question_audio: new File([blob], name, { type: blob.type }) }, "/vqa (spoken)");
}

// A chosen file goes as audioUpload makes it (as it is, or converted to WAV here); `clock` names it.
const fromFile = (clock, send) => async (file) => {
  clock.hidden = false;
  clock.dataset.state = "file";
  clock.textContent = file.name;
  const { blob, name } = await audioUpload(file);
  return send(blob, name);
};

recordButton($("transcribe-record"), $("transcribe-clock"), transcribe);
fileDrop($("transcribe-drop"), $("transcribe-file"), fromFile($("transcribe-clock"), transcribe));
recordButton($("vqa-record"), $("vqa-clock"), askAloud, () => (state.image ? null : "pick an image first"));
fileDrop($("vqa-audio-drop"), $("vqa-audio"), fromFile($("vqa-clock"), askAloud));
