"""In-process synthesis benchmark: time to first audio, real-time factors (end to end, and the
acoustic model and the vocoder apart), peak memory."""

from __future__ import annotations

import gc
import resource
import sys
import time
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch

from addons.engine.voice import ThreadsPlan, Voice

__all__ = ["SENTENCES", "BenchResult", "bench_voice", "compare_plans", "long_text"]

SENTENCES = [
    "The morning train to the coast was late again.",
    "She packed three sandwiches, a flask of tea and an old paperback.",
    "Nobody on the platform seemed surprised.",
    "When it finally arrived, the carriages were almost empty.",
    "Outside, the fields turned from green to gold as the sun climbed.",
    "A conductor with a silver beard checked every ticket twice.",
    "He hummed a tune that none of the passengers could name.",
    "At the fourth stop, a family of five squeezed into the next row.",
    "The youngest child asked why the sea was salty.",
    "Her father said it was because the fish were crying.",
    "Everyone laughed, even the conductor.",
    "By noon the air smelled of salt and seaweed.",
    "The train slowed as it curved along the cliffs.",
    "Gulls wheeled above the harbour, shouting at the boats.",
    "She closed her book and watched the waves for a while.",
    "There were 42 fishing boats moored in neat rows.",
    "On the quay, a man sold oysters from a wooden cart.",
    "She bought a dozen and ate them standing in the wind.",
    "It was, she decided, the best day of the whole summer.",
    "Then she caught the last train home.",
]


@dataclass(frozen=True)
class BenchResult:
    addon: str
    context: str
    text: str  # "1 sentence" or "N sentences" (20 unless asked)
    first_chunk_s: float  # seconds from the call to the first audio chunk
    total_s: float  # seconds to synthesize everything
    audio_s: float  # seconds of audio produced
    rtf: float  # total_s / audio_s: below 1 is faster than real time
    peak_rss_mb: float  # the process's peak resident memory so far
    threads: int = 1  # torch intra-op threads
    acoustic_rtf: float = 0.0  # front-end, encoders and decoder alone (mel only), over audio_s
    vocoder_rtf: float = 0.0  # the audio stage alone on that mel, chunk by chunk as streamed, over audio_s

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def _run(voice: Voice, text: str, label: str) -> BenchResult:
    gc.collect()
    start = time.perf_counter()
    first = None
    samples = 0
    for chunk in voice.stream(text):
        if first is None:
            first = time.perf_counter() - start
        samples += chunk.samples.size
    total = time.perf_counter() - start
    audio_s = samples / voice.sample_rate
    return BenchResult(
        voice.name,
        voice.context.value,
        label,
        first or total,
        total,
        audio_s,
        total / max(audio_s, 1e-9),
        _peak_rss_mb(),
    )


def _acoustic(voice: Voice, text: str) -> tuple[float, list[np.ndarray]]:
    gc.collect()
    start = time.perf_counter()
    chunks = [chunk.frames for chunk in voice.stream_mel(text)]
    return time.perf_counter() - start, chunks


def _vocoder(voice: Voice, chunks: list[np.ndarray]) -> float:
    gc.collect()
    request = voice.request()
    start = time.perf_counter()
    state = voice.audio.start()
    for mel in chunks:
        voice.audio.process(state, mel, request)
    voice.audio.finish(state, request)
    return time.perf_counter() - start


def long_text(sentences: int = len(SENTENCES)) -> str:
    """The first ``sentences`` of :data:`SENTENCES` (2 to 20) as one text."""
    if not 2 <= sentences <= len(SENTENCES):
        raise ValueError(f"sentences must be 2 to {len(SENTENCES)}, not {sentences}")
    return " ".join(SENTENCES[:sentences])


def bench_voice(
    voice: Voice, repeats: int = 3, threads: int | None = None, sentences: int = len(SENTENCES)
) -> list[BenchResult]:
    """Best of ``repeats`` runs for one sentence and for the first ``sentences`` (all twenty
    unless asked), after a warm-up run: end to end as ``Voice.stream`` runs it, then the mel alone
    and the vocoder alone on that mel. ``threads``: torch's intra-op threads for the run (default:
    as they are)."""
    if threads is not None:
        torch.set_num_threads(threads)
    texts = {"1 sentence": SENTENCES[0], f"{sentences} sentences": long_text(sentences)}
    _run(voice, SENTENCES[1], "warm-up")
    results = []
    for label, text in texts.items():
        best = min((_run(voice, text, label) for _ in range(repeats)), key=lambda r: r.total_s)
        acoustic = [_acoustic(voice, text) for _ in range(repeats)]
        vocoder = min(_vocoder(voice, acoustic[0][1]) for _ in range(repeats))
        audio_s = max(best.audio_s, 1e-9)
        results.append(
            replace(
                best,
                threads=torch.get_num_threads(),
                acoustic_rtf=min(t for t, _ in acoustic) / audio_s,
                vocoder_rtf=vocoder / audio_s,
            )
        )
    return results


def compare_plans(
    voice: Voice, plans: list[ThreadsPlan], rounds: int = 4, sentences: int = len(SENTENCES)
) -> dict[ThreadsPlan, list[float]]:
    """End-to-end real-time factor of the first ``sentences`` (all twenty unless asked) under each
    plan (torch threads and decoder ``ahead``), the plans taking turns for ``rounds`` rounds in
    this one process, so that a noisy machine's drift falls on all of them alike; after a warm-up
    run. Leaves the voice's ``ahead`` and torch's threads as they were."""
    text = long_text(sentences)
    before = (voice.ahead, torch.get_num_threads())
    _run(voice, SENTENCES[1], "warm-up")
    rtf: dict[ThreadsPlan, list[float]] = {plan: [] for plan in plans}
    try:
        for _ in range(rounds):
            for plan in plans:
                torch.set_num_threads(plan.threads)
                voice.ahead = plan.ahead
                rtf[plan].append(_run(voice, text, f"{sentences} sentences").rtf)
    finally:
        voice.ahead = before[0]
        torch.set_num_threads(before[1])
    return rtf
