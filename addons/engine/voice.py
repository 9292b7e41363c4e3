"""A loaded addon: text in, typed mel and audio chunks out, streaming."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from addons.engine.driver import UtterancePlan, local_ports, run_sync, speak
from addons.engine.marks import MarkTracker, SpeechMark
from addons.engine.marks import provides_marks as _provides_marks
from addons.engine.networks import NetworkLoader, build_env
from addons.engine.options import ResolvedOptions, SynthesisOptions, resolve_options
from addons.engine.stages import STAGES, AudioStage, DecoderStage, EncoderStage, PlainFeatures, build_stages
from addons.formats.manifest import AddonError, AddonManifest
from addons.text.frontend import Frontend, Sentence
from blocks import ExecutionContext, Request, Vocoder

__all__ = [
    "AHEAD",
    "PIPELINED_AHEAD",
    "AudioChunk",
    "AudioStage",
    "MelChunk",
    "ThreadsPlan",
    "Voice",
    "threads_plan",
]

#: Mel chunks the decoder may run ahead of the vocoder by default (see :meth:`Voice.__init__`):
#: none, one thread. A worker thread pays only with torch's intra-op threads set to match
#: (:func:`threads_plan`), which a library must not do for its caller's whole process.
AHEAD = 0

#: Mel chunks the decoder runs ahead of the vocoder in :func:`threads_plan`'s pipelined plan.
PIPELINED_AHEAD = 8


@dataclass(frozen=True)
class ThreadsPlan:
    """How one process synthesizing a stream at a time uses its cores: torch's intra-op
    ``threads`` (``torch.set_num_threads``) and ``ahead`` for :meth:`Voice.__init__`."""

    threads: int
    ahead: int


def threads_plan(cores: int | None = None) -> ThreadsPlan:
    """The plan for ``cores`` cores (default: those this process may run on).

    With two or more, a pipeline: the encoders and decoder in a worker thread up to
    :data:`PIPELINED_AHEAD` mel chunks ahead of the vocoder in the caller's thread, each side with
    half the cores as intra-op threads. An autoregressive decoder's small step network gains
    nothing from a second intra-op thread, but it can run while the vocoder runs; and two calling
    threads that each use every core's worth of intra-op threads contend (measured on 2 cores,
    docs/performance.md: 1 thread with the worker is the fastest for both bundled voices, 2 threads
    with it the slowest). With one core: one thread, no worker.
    """
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if cores < 2:
        return ThreadsPlan(threads=1, ahead=0)
    return ThreadsPlan(threads=cores // 2, ahead=PIPELINED_AHEAD)


@dataclass(frozen=True)
class AudioChunk:
    """A piece of the output: ``samples`` 1-D float32 in [-1, 1] at ``sample_rate`` Hz
    (``mel``: the frames it came from, when asked for; see :meth:`Voice.stream`)."""

    samples: np.ndarray
    sample_rate: int
    mel: np.ndarray | None = None
    #: speech marks that became known with this chunk (see :mod:`addons.engine.marks`), when asked for
    marks: tuple[SpeechMark, ...] = ()


@dataclass(frozen=True)
class MelChunk:
    """``frames`` ``[F, n_mels]`` float32 log-mel; ``sentence`` is the index of its sentence."""

    frames: np.ndarray
    sentence: int


class Voice:
    """A loaded addon: its stages (:mod:`addons.engine.stages`) and the one in-process loop that drives them.

    Thread-safe for concurrent ``stream`` calls (each has its own state). ``stages`` names the
    stages to build (default all three); a server process builds only its own, so it resolves,
    checks and holds only that stage's networks.
    """

    def __init__(
        self,
        manifest: AddonManifest,
        directory: Path,
        context: ExecutionContext | str = "dynamic",
        device: str | torch.device = "cpu",
        batching: int = 0,
        stages: Iterable[str] = STAGES,
        ahead: int = AHEAD,
        probes: dict[str, bool] | None = None,
    ) -> None:
        """``batching`` > 0 lets concurrent streams share forward passes, that many at most
        (see :mod:`blocks.batching`); results equal unbatched ones to float rounding. ``ahead``
        > 0: ``stream`` decodes in a worker thread up to that many mel chunks ahead of the
        vocoder (see :func:`addons.engine.driver.speak`); 0 runs both in the caller's thread.
        ``probes``: batching probes' answers shared with voices of the same shape (a family)."""
        if ahead < 0:
            raise ValueError(f"ahead must be >= 0, got {ahead}")
        self.ahead = ahead
        self.manifest = manifest
        self.directory = directory
        self.context = ExecutionContext(context)
        self.device = torch.device(device)
        self._load_network = NetworkLoader(manifest, directory, self.context, batching, probes)
        self.env = build_env(manifest, directory, self.context, self.device, self._load_network)
        self._stages = build_stages(manifest, self.env, stages)
        if batching and "audio" in self._stages:
            self.audio.vocoder.enable_batching(batching, when_used=True)

    def _stage(self, name: str) -> Any:
        if name not in self._stages:
            raise AddonError(f"{self.name}: the {name} stage was not built here (built: {', '.join(self._stages)})")
        return self._stages[name]

    @property
    def encoders(self) -> EncoderStage:
        stage: EncoderStage = self._stage("encoders")
        return stage

    @property
    def decoder(self) -> DecoderStage:
        stage: DecoderStage = self._stage("decoder")
        return stage

    @property
    def audio(self) -> AudioStage:
        stage: AudioStage = self._stage("audio")
        return stage

    @property
    def vocoder(self) -> Vocoder:
        return self.audio.vocoder

    @property
    def frontend(self) -> Frontend:
        return self.encoders.frontend

    def load_networks(self, stages: Iterable[str] | None = None) -> list[str]:
        """Read the weights of these built stages now (default: all built), not at their first
        run: a server process warming up its own stage. Returns the networks read."""
        names: list[str] = []
        for name in stages if stages is not None else list(self._stages):
            names += self._stage(name).load()
        return names

    # -- identity -----------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def sample_rate(self) -> int:
        return self.manifest.mel.sample_rate

    @property
    def hop_length(self) -> int:
        return self.manifest.mel.hop_length

    @property
    def voices(self) -> list[str]:
        return sorted(self.manifest.voices)

    # -- the in-process driver ------------------------------------------------------------------
    def options(self, **options: Any) -> tuple[SynthesisOptions, ResolvedOptions]:
        """Validate request options; return them and the resolved values blocks see."""
        return resolve_options(self.manifest, **options)

    def request(self, request: Request | None = None, **options: Any) -> Request:
        """The caller's request, or a new one with ``options`` validated and resolved."""
        return request if request is not None else Request(options=self.options(**options)[1])

    def stream_mel(self, text: str, request: Request | None = None, **options: Any) -> Iterator[MelChunk]:
        """Mel chunks for ``text``, sentence after sentence; work is done as chunks are pulled."""
        request = self.request(request, **options)
        ports = local_ports(self.encoders, self.decoder, None, request.report)
        plan = UtterancePlan.of(text, request.options)
        for step in run_sync(speak(plan, ports, request.options, with_mel=True)):
            if step.mel is not None:
                yield MelChunk(step.mel, step.sentence)

    def stream(
        self,
        text: str,
        request: Request | None = None,
        *,
        with_mel: bool = False,
        marks: Iterable[str] = (),
        **options: Any,
    ) -> Iterator[AudioChunk]:
        """Audio chunks for ``text``; the first arrives after the first sentence's first chunk.

        ``with_mel``: also yield chunks whose audio is still held back by the vocoder, each
        carrying the mel it was made from (every mel frame then arrives exactly once).
        ``marks``: any of ``"sentence"``, ``"word"``, ``"phoneme"``; each sentence's speech marks
        then come with a chunk (with no samples) right after its mel (see :mod:`addons.engine.marks`).
        An addon whose stack gives no alignment (``provides_marks`` False) yields none.
        """
        kinds = tuple(marks)
        tracker = MarkTracker(self.hop_length, self.sample_rate, kinds) if kinds else None
        request = self.request(request, **options)
        ports = local_ports(self.encoders, self.decoder, self.audio, request.report, self.ahead)
        plan = UtterancePlan.of(text, request.options)
        spoken = speak(plan, ports, request.options, marks=tracker, ahead=self.ahead, with_mel=with_mel)
        for step in run_sync(spoken):
            if step.audio.size or step.mel is not None or step.marks:
                yield AudioChunk(step.audio, self.sample_rate, step.mel, step.marks)

    @property
    def provides_marks(self) -> bool:
        """Whether this addon's stack aligns frames to phonemes, so speech marks can be given."""
        return _provides_marks(self.manifest)

    def synthesize(self, text: str, **options: Any) -> tuple[np.ndarray, np.ndarray]:
        """Whole-utterance convenience: ``(audio [S], mel [F, n_mels])`` with ``S == F * hop``."""
        chunks = list(self.stream(text, with_mel=True, **options))
        mel = [c.mel for c in chunks if c.mel is not None]
        return np.concatenate([c.samples for c in chunks]), np.concatenate(mel)

    # -- the stages' calls, in process (tests and benchmarks drive them one by one) -------------
    def sentences(self, text: str, lexicon: Sequence[Any] = (), normalize: bool = True) -> Iterator[Sentence]:
        return self.encoders.sentences(text, lexicon, normalize)

    def encode(self, ids: np.ndarray, request: Request | None = None) -> PlainFeatures:
        return self.encoders.encode(ids, self.request(request))

    def encode_batch(self, batch: list[np.ndarray], request: Request | None = None) -> list[PlainFeatures]:
        return self.encoders.encode_batch(batch, self.request(request))

    def decode(self, features: PlainFeatures, request: Request | None = None) -> Iterator[np.ndarray]:
        return self.decoder.decode(features, self.request(request))

    def audio_start(self) -> Any:
        return self.audio.start()

    def audio_process(self, state: Any, mel: np.ndarray, request: Request | None = None) -> np.ndarray:
        return self.audio.process(state, mel, self.request(request))

    def audio_finish(self, state: Any, request: Request | None = None) -> np.ndarray:
        return self.audio.finish(state, self.request(request))
