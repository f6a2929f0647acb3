// mmserve playground, audio in: the microphone through MediaRecorder, or a chosen file, as what the server decodes.
// Chromium's MediaRecorder writes WebM/Opus, which the server does not decode (it takes WAV, FLAC, Ogg and MP3),
// so a recording is decoded here with the Web Audio API and sent as a 16 kHz mono 16-bit WAV; so is a chosen
// file of another format, when the browser can decode it. Uses playground.js's helpers ($, guard).
"use strict";

const WAV_RATE = 16_000; // the built-in model's rate (Whisper's too): the server resamples nothing
const SERVER_DECODES = /^audio\/(wav|x-wav|wave|vnd\.wave|flac|x-flac|ogg|mpeg|mp3)$/; // sent as they are

// `samples` (floats in [-1, 1]) at `rate` as a WAV file of 16-bit PCM, mono.
function wavBlob(samples, rate) {
  const view = new DataView(new ArrayBuffer(44 + 2 * samples.length));
  const ascii = (offset, text) => [...text].forEach((c, i) => view.setUint8(offset + i, c.charCodeAt(0)));
  ascii(0, "RIFF");
  view.setUint32(4, 36 + 2 * samples.length, true);
  ascii(8, "WAVE");
  ascii(12, "fmt ");
  view.setUint32(16, 16, true); // the fmt chunk's size
  view.setUint16(20, 1, true); // PCM
  view.setUint16(22, 1, true); // one channel
  view.setUint32(24, rate, true);
  view.setUint32(28, 2 * rate, true); // bytes a second
  view.setUint16(32, 2, true); // bytes a frame
  view.setUint16(34, 16, true); // bits a sample
  ascii(36, "data");
  view.setUint32(40, 2 * samples.length, true);
  samples.forEach((x, i) => view.setInt16(44 + 2 * i, Math.round(Math.max(-1, Math.min(1, x)) * 0x7fff), true));
  return new Blob([view.buffer], { type: "audio/wav" });
}

// Any audio the browser decodes, as a 16 kHz mono WAV (decodeAudioData resamples to its context's rate).
async function toWav(blob) {
  const context = new OfflineAudioContext(1, 1, WAV_RATE);
  const decoded = await context.decodeAudioData(await blob.arrayBuffer());
  const mono = new Float32Array(decoded.length);
  for (let channel = 0; channel < decoded.numberOfChannels; channel++) {
    decoded.getChannelData(channel).forEach((x, i) => { mono[i] += x / decoded.numberOfChannels; });
  }
  return wavBlob(mono, WAV_RATE);
}

// A chosen file as the server will take it: as it is when the server decodes its format, else converted here
// (an M4A, a WebM); a file the browser cannot decode either goes as it is, for the server's own answer.
async function audioUpload(file) {
  if (SERVER_DECODES.test(file.type)) return { blob: file, name: file.name };
  try {
    return { blob: await toWav(file), name: `${file.name.replace(/\.[^.]*$/, "")}.wav` };
  } catch (_) {
    return { blob: file, name: file.name };
  }
}

// A record button: a click starts the microphone (MediaRecorder), the next stops it and hands the recording,
// as a WAV, to `onRecorded(blob, name)`; `clock` shows how long it has been recording (and `data-seconds`).
// `unready()` says why not to record yet (nothing to ask about), or nothing.
function recordButton(button, clock, onRecorded, unready = () => null) {
  const idleLabel = button.textContent;
  if (!navigator.mediaDevices || !window.MediaRecorder) {
    button.disabled = true;
    button.title = "the microphone needs a secure page: https, or http on localhost";
    return;
  }
  let recording = null;

  async function start() {
    const reason = unready();
    if (reason) throw new Error(reason);
    const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    const recorder = new MediaRecorder(stream);
    const chunks = [];
    recorder.addEventListener("dataavailable", (event) => chunks.push(event.data));
    const stopped = new Promise((resolve) => recorder.addEventListener("stop", resolve));
    recorder.start();
    const startedAt = performance.now();
    const tick = () => {
      const seconds = (performance.now() - startedAt) / 1000;
      clock.textContent = `● recording ${seconds.toFixed(1)} s`;
      clock.dataset.seconds = seconds.toFixed(2);
    };
    tick();
    recording = { recorder, stream, chunks, stopped, timer: setInterval(tick, 100), startedAt };
    clock.hidden = false;
    clock.dataset.state = "recording";
    button.textContent = "Stop";
    button.dataset.state = "recording";
  }

  async function stop() {
    const { recorder, stream, chunks, stopped, timer, startedAt } = recording;
    recording = null;
    clearInterval(timer);
    recorder.stop();
    await stopped;
    stream.getTracks().forEach((track) => track.stop()); // the microphone is let go (its indicator goes out)
    button.textContent = idleLabel;
    button.dataset.state = "idle";
    clock.dataset.state = "recorded";
    clock.textContent = `recorded ${((performance.now() - startedAt) / 1000).toFixed(1)} s`;
    const wav = await toWav(new Blob(chunks, { type: recorder.mimeType }));
    await onRecorded(wav, "recording.wav");
  }

  button.addEventListener("click", guard(() => (recording ? stop() : start())));
}
