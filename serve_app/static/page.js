// Chorus listening page: plain script, no build step, nothing fetched from outside this server.
// Streams POST /v1/audio/speech as 16-bit PCM and plays each piece with Web Audio as it arrives.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { models: {}, ctx: null, controller: null, samples: [], rate: 0, nextTime: 0 };

function setState(name, message) {
  document.body.dataset.state = name;
  $("status").textContent = message;
}

function headers(extra) {
  const key = $("api-key").value.trim();
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

async function loadModels() {
  $("model").replaceChildren();
  try {
    const response = await fetch("/v1/models", { headers: headers({}) });
    if (!response.ok) throw new Error(await errorText(response));
    const list = await response.json();
    for (const card of list.data) {
      state.models[card.id] = card;
      $("model").add(new Option(card.id, card.id));
    }
    showVoices();
    setState("idle", "Ready.");
  } catch (err) {
    setState("error", `Could not load the models: ${err.message}`);
  }
}

function showVoices() {
  const card = state.models[$("model").value];
  const voice = $("voice");
  voice.replaceChildren(...(card ? card.voices : []).map((v) => new Option(v, v)));
  $("marks-note").textContent = card && card.speech_marks
    ? ""
    : "Word highlighting needs speech marks, which this model does not provide yet.";
}

async function errorText(response) {
  try {
    const body = await response.json();
    return body.error ? body.error.message : response.statusText;
  } catch (_) {
    return response.statusText;
  }
}

function showWords(text) {
  const words = $("words");
  words.replaceChildren();
  for (const word of text.split(/\s+/).filter(Boolean)) {
    const span = document.createElement("span");
    span.textContent = word + " ";
    words.appendChild(span);
  }
}

function play(floats) {
  const buffer = state.ctx.createBuffer(1, floats.length, state.rate);
  buffer.copyToChannel(floats, 0);
  const source = state.ctx.createBufferSource();
  source.buffer = buffer;
  source.connect(state.ctx.destination);
  state.nextTime = Math.max(state.nextTime, state.ctx.currentTime + 0.05);
  source.start(state.nextTime);
  state.nextTime += buffer.duration;
}

async function speak(event) {
  event.preventDefault();
  stop();
  const model = $("model").value;
  const card = state.models[model];
  const text = $("text").value;
  if (!card || !text.trim()) return;
  state.rate = card.sample_rate;
  state.samples = [];
  state.nextTime = 0;
  state.ctx = new AudioContext({ sampleRate: state.rate });
  await state.ctx.resume();
  state.controller = new AbortController();
  showWords(text);
  $("samples").textContent = "0";
  $("first-audio").textContent = "–";
  $("download").classList.add("disabled");
  $("stop").disabled = false;
  setState("loading", "Speaking…");
  const start = performance.now();
  try {
    const response = await fetch("/v1/audio/speech", {
      method: "POST",
      headers: headers({ "Content-Type": "application/json" }),
      body: JSON.stringify({
        model, input: text, voice: $("voice").value,
        speed: Number($("speed").value), response_format: "pcm",
      }),
      signal: state.controller.signal,
    });
    if (!response.ok) throw new Error(await errorText(response));
    const reader = response.body.getReader();
    let carry = null; // an odd byte waiting for its partner
    let decoded = 0;
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      let bytes = value;
      if (carry !== null) {
        bytes = new Uint8Array(value.length + 1);
        bytes[0] = carry;
        bytes.set(value, 1);
        carry = null;
      }
      if (bytes.length % 2) {
        carry = bytes[bytes.length - 1];
        bytes = bytes.subarray(0, bytes.length - 1);
      }
      if (!bytes.length) continue;
      const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
      const floats = new Float32Array(bytes.length / 2);
      for (let i = 0; i < floats.length; i++) floats[i] = view.getInt16(2 * i, true) / 32768;
      if (decoded === 0) {
        $("first-audio").textContent = Math.round(performance.now() - start);
        setState("playing", "Playing while the rest is spoken…");
      }
      decoded += floats.length;
      state.samples.push(floats);
      $("samples").textContent = String(decoded);
      play(floats);
    }
    offerDownload();
    setState("done", `Done: ${(decoded / state.rate).toFixed(2)} s of audio.`);
  } catch (err) {
    if (err.name === "AbortError") setState("idle", "Stopped.");
    else setState("error", `Failed: ${err.message}`);
  } finally {
    $("stop").disabled = true;
  }
}

function stop() {
  if (state.controller) state.controller.abort();
  if (state.ctx) state.ctx.close();
  state.controller = null;
  state.ctx = null;
}

function offerDownload() {
  const total = state.samples.reduce((n, s) => n + s.length, 0);
  const out = new DataView(new ArrayBuffer(44 + 2 * total));
  const text = (offset, s) => [...s].forEach((c, i) => out.setUint8(offset + i, c.charCodeAt(0)));
  text(0, "RIFF"); out.setUint32(4, 36 + 2 * total, true); text(8, "WAVE");
  text(12, "fmt "); out.setUint32(16, 16, true); out.setUint16(20, 1, true); out.setUint16(22, 1, true);
  out.setUint32(24, state.rate, true); out.setUint32(28, 2 * state.rate, true);
  out.setUint16(32, 2, true); out.setUint16(34, 16, true);
  text(36, "data"); out.setUint32(40, 2 * total, true);
  let offset = 44;
  for (const chunk of state.samples) {
    for (const x of chunk) {
      out.setInt16(offset, Math.max(-32768, Math.min(32767, Math.round(x * 32768))), true);
      offset += 2;
    }
  }
  const link = $("download");
  if (link.href) URL.revokeObjectURL(link.href);
  link.href = URL.createObjectURL(new Blob([out.buffer], { type: "audio/wav" }));
  link.classList.remove("disabled");
}

$("form").addEventListener("submit", speak);
$("stop").addEventListener("click", () => { stop(); setState("idle", "Stopped."); });
$("model").addEventListener("change", showVoices);
$("api-key").addEventListener("change", loadModels);
$("speed").addEventListener("input", () => { $("speed-value").textContent = Number($("speed").value).toFixed(2); });
loadModels();
