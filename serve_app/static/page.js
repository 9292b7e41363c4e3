// Chorus listening page: plain script, no build step, nothing fetched from outside this server.
// Streams POST /v1/audio/speech as 16-bit PCM and plays each piece with Web Audio as it arrives.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  models: {}, ctx: null, controller: null, samples: [], rate: 0, nextTime: 0, playStart: null,
  marks: [], spans: [], decoded: 0, highlighted: 0, carry: null, litAt: [],
};

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
    ? "Words light up as they are heard (speech marks from the model's own alignment)."
    : "This model gives no speech marks, so words are not highlighted.";
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
  // One span per whitespace-separated word, knowing where it sits in the text (marks point there).
  const words = $("words");
  words.replaceChildren();
  state.spans = [];
  for (const match of text.matchAll(/\S+/g)) {
    const span = document.createElement("span");
    span.textContent = match[0] + " ";
    span.dataset.start = String(match.index);
    span.dataset.end = String(match.index + match[0].length);
    words.appendChild(span);
    state.spans.push(span);
  }
}

function play(floats) {
  const buffer = state.ctx.createBuffer(1, floats.length, state.rate);
  buffer.copyToChannel(floats, 0);
  const source = state.ctx.createBufferSource();
  source.buffer = buffer;
  source.connect(state.ctx.destination);
  if (state.playStart === null) state.playStart = state.ctx.currentTime + 0.05;
  state.nextTime = Math.max(state.nextTime, state.ctx.currentTime + 0.05, state.playStart);
  source.start(state.nextTime);
  state.nextTime += buffer.duration;
}

// Highlight the word being heard: marks give each word's start and end in the audio (ms).
function highlight() {
  if (!state.ctx || state.playStart === null) return;
  const now = 1000 * (state.ctx.currentTime - state.playStart);
  let current = null;
  for (const mark of state.marks) {
    if (mark.start_ms <= now) current = mark;
    else break;
  }
  for (const span of state.spans) {
    const start = Number(span.dataset.start);
    const isNow = current !== null && start <= current.text_start && current.text_start < Number(span.dataset.end);
    const heard = current !== null && start <= current.text_start;
    span.classList.toggle("now", isNow);
    span.classList.toggle("spoken", heard && !isNow);
    if (heard && span.dataset.lit !== "1") {  // reached (a word shorter than a poll counts too)
      span.dataset.lit = "1";
      state.highlighted += 1;
      state.litAt.push(state.ctx.currentTime);  // when, on the audio clock, each word was reached
      $("highlighted").textContent = String(state.highlighted);
    }
  }
}

function pcmToFloats(bytes) {
  let data = bytes;
  if (state.carry !== null) {  // an odd byte waiting for its partner
    data = new Uint8Array(bytes.length + 1);
    data[0] = state.carry;
    data.set(bytes, 1);
    state.carry = null;
  }
  if (data.length % 2) {
    state.carry = data[data.length - 1];
    data = data.subarray(0, data.length - 1);
  }
  const view = new DataView(data.buffer, data.byteOffset, data.length);
  const floats = new Float32Array(data.length / 2);
  for (let i = 0; i < floats.length; i++) floats[i] = view.getInt16(2 * i, true) / 32768;
  return floats;
}

function heard(floats, start) {
  if (!floats.length) return;
  if (state.decoded === 0) {
    $("first-audio").textContent = Math.round(performance.now() - start);
    setState("playing", "Playing while the rest is spoken…");
  }
  state.decoded += floats.length;
  state.samples.push(floats);
  $("samples").textContent = String(state.decoded);
  play(floats);
}

function base64Bytes(text) {
  const raw = atob(text);
  const bytes = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
  return bytes;
}

async function readEvents(reader, start) {
  // Server-sent events: audio deltas (base64 PCM) and, for models with speech marks, word marks.
  const decoder = new TextDecoder();
  let text = "";
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    text += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = text.indexOf("\n\n")) >= 0) {
      const block = text.slice(0, cut);
      text = text.slice(cut + 2);
      if (!block.startsWith("data: ")) continue;
      const event = JSON.parse(block.slice(6));
      if (event.type === "speech.audio.delta") heard(pcmToFloats(base64Bytes(event.audio)), start);
      else if (event.type === "speech.marks") state.marks.push(...event.marks.filter((m) => m.type === "word"));
      else if (event.type === "error") throw new Error(event.error.message);
    }
  }
}

async function readPcm(reader, start) {
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    heard(pcmToFloats(value), start);
  }
}

async function speak(event) {
  event.preventDefault();
  stop();
  const model = $("model").value;
  const card = state.models[model];
  const text = $("text").value;
  if (!card || !text.trim()) return;
  Object.assign(state, {
    rate: card.sample_rate, samples: [], nextTime: 0, playStart: null, marks: [], decoded: 0,
    highlighted: 0, carry: null, litAt: [],
  });
  state.ctx = new AudioContext({ sampleRate: state.rate });
  await state.ctx.resume();
  state.controller = new AbortController();
  showWords(text);
  $("samples").textContent = "0";
  $("highlighted").textContent = "0";
  $("first-audio").textContent = "–";
  $("download").classList.add("disabled");
  $("stop").disabled = false;
  setState("loading", "Speaking…");
  const withMarks = Boolean(card.speech_marks);
  const timer = setInterval(highlight, 30);
  const start = performance.now();
  try {
    const response = await fetch("/v1/audio/speech", {
      method: "POST",
      headers: headers({ "Content-Type": "application/json" }),
      body: JSON.stringify({
        model, input: text, voice: $("voice").value, speed: Number($("speed").value), response_format: "pcm",
        sample_rate: "native",  // the card's rate, which the AudioContext was opened at
        ...(withMarks ? { stream_format: "sse", timestamps: ["word"] } : {}),
      }),
      signal: state.controller.signal,
    });
    if (!response.ok) throw new Error(await errorText(response));
    const reader = response.body.getReader();
    if (withMarks) await readEvents(reader, start);
    else await readPcm(reader, start);
    offerDownload();
    setState("done", `Done: ${(state.decoded / state.rate).toFixed(2)} s of audio.`);
    // Keep highlighting until the last word has been heard.
    // Stop stays enabled while the audio plays: a long text has arrived long before it is heard.
    const ctx = state.ctx;
    const left = ctx ? 1000 * (state.nextTime - ctx.currentTime) : 0;
    setTimeout(() => {
      highlight();
      clearInterval(timer);
      if (state.ctx === ctx) $("stop").disabled = true;
    }, Math.max(0, left) + 100);
  } catch (err) {
    clearInterval(timer);
    $("stop").disabled = true;
    if (err.name === "AbortError") setState("idle", "Stopped.");
    else setState("error", `Failed: ${err.message}`);
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
$("stop").addEventListener("click", () => { stop(); $("stop").disabled = true; setState("idle", "Stopped."); });
$("model").addEventListener("change", showVoices);
$("api-key").addEventListener("change", loadModels);
$("speed").addEventListener("input", () => { $("speed-value").textContent = Number($("speed").value).toFixed(2); });
loadModels();
