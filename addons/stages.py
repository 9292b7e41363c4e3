"""An addon's stages: the objects every driver runs (``Voice`` in process, ``chorus synth``, the server).

Planning splits the stack (:func:`blocks.stages.split_stack`); each stage builds only its own
blocks, so it resolves, checks and holds only its own networks. Between stages only plain data
travels, so a stage can sit in another process:

========== ================================== ====================================== ==============
stage      in                                 out                                    honours
========== ================================== ====================================== ==============
encoders   sentence ids ``[T]`` (int64)       :data:`PlainFeatures`                  —
decoder    :data:`PlainFeatures`              mel chunks ``[F, n_mels]`` float32     ``speed``
audio      mel chunks + a plain stream state  audio ``[S]`` float32 (final samples)  ``gain_db``
========== ================================== ====================================== ==============

Request options reach every stage already resolved (:func:`addons.voice.resolve_options`).
:func:`run_stages` is the one synthesis loop in process; ``serve_app.streams`` runs the same
calls on remote replicas.
"""

from __future__ import annotations

import dataclasses
import importlib
import queue
import threading
from abc import ABC
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from addons.frontend import Frontend, LexiconError, Sentence, TextError
from addons.manifest import AddonError, AddonManifest, FrontendConfig, PiperFrontendConfig
from addons.marks import MarkTracker, SpeechMark
from addons.netfile import NetworkFileError
from addons.runtimes import check_network, open_network
from addons.ssml import Part, Pause, pause_frames, script_of
from blocks import (
    ALIGNMENT,
    BuildEnv,
    ChunkwiseBlock,
    ExecutionContext,
    Features,
    LazyModule,
    MelSettings,
    NetworkError,
    NetworkRunner,
    NetworkSpec,
    Request,
    SequenceBlock,
    StackError,
    StreamableBlock,
    Vocoder,
    parse_block,
    parse_stack,
)
from blocks.audio import LOG_FLOOR
from blocks.base import BlockNode
from blocks.stages import split_stack
from blocks.tempo import MelTempo, honours

__all__ = [
    "STAGES",
    "AudioStage",
    "DecoderStage",
    "EncoderStage",
    "NetworkLoader",
    "PlainFeatures",
    "Stage",
    "prefetched",
    "run_stages",
]

#: One sentence's features, without the batch axis: ``phoneme_ids`` [T] and what the encoders add
#: (``encoding`` [T, D], ``durations`` [T] frames, ``memory`` [T, D], ...), all numpy arrays.
PlainFeatures = dict[str, np.ndarray]

STAGES = ("encoders", "decoder", "audio")
#: The feature that carries a sentence's inner pauses to the decoder stage: int64 ``[n, 2]``, each
#: (index of the phoneme it follows, -1 before the first; milliseconds).
PAUSES = "pauses"


def silent_mel(ms: float, mel: MelSettings) -> np.ndarray:
    """Silence as the voices' mel (the log floor): the whole number of frames closest to ``ms``."""
    frames = pause_frames(ms, mel.sample_rate, mel.hop_length)
    return np.full((frames, mel.n_mels), np.log(LOG_FLOOR), dtype=np.float32)


def with_pauses(features: PlainFeatures, sentence: Sentence) -> PlainFeatures:
    """``features`` and, if the sentence has pauses inside it (SSML breaks), :data:`PAUSES`."""
    if not sentence.pauses:
        return features
    return {**features, PAUSES: np.asarray(sentence.pauses, dtype=np.int64).reshape(-1, 2)}


STATE_TYPE = "__state_type__"


class NetworkLoader:
    """Loads an addon's exported networks on first use, once per (network, device).

    Files are read by :mod:`addons.runtimes` (the format's checked reader: ``.pt2`` or ONNX), which
    runs nothing from them and checks each against its declared signature; a refused file is an
    :class:`AddonError`.
    """

    def __init__(
        self,
        manifest: AddonManifest,
        directory: Path,
        context: ExecutionContext,
        batching: int = 0,
        probes: dict[str, bool] | None = None,
    ) -> None:
        self.manifest, self.directory, self.context = manifest, directory, context
        self.batching = batching  # > 0: streams calling a network at once share a pass, at most this many
        self.probes = probes  # batching probes' answers shared with addons of the same shape
        self._programs: dict[tuple[str, str], NetworkRunner] = {}
        self._lock = threading.Lock()

    def __call__(self, name: str, device: torch.device) -> NetworkRunner:
        key = (name, str(device))
        with self._lock:
            if key not in self._programs:
                spec = self.manifest.networks[name]
                path = self.directory / spec.file
                try:  # checked now; its weights are read again when the network first runs
                    self._check_static(name, spec, check_network(path, spec, self.directory))
                except NetworkFileError as exc:
                    raise AddonError(f"{path}: {exc}") from None
                module = LazyModule(self._builder(path, spec, device))
                runner = NetworkRunner(name, spec, module, self.context, device, probes=self.probes)
                if self.batching:
                    runner.batch_when_used(self.batching)
                self._programs[key] = runner
            return self._programs[key]

    def _builder(self, path: Path, spec: NetworkSpec, device: torch.device) -> Callable[[], Callable[..., Any]]:
        def build() -> Callable[..., Any]:
            try:
                return open_network(path, spec, self.directory, device)
            except NetworkFileError as exc:  # changed on disk since it was checked
                raise AddonError(f"{path}: {exc}") from None

        return build

    def _check_static(self, name: str, spec: NetworkSpec, longest: int | None) -> None:
        length = spec.static_length if self.context is ExecutionContext.STATIC else None
        if length is not None and longest is not None and length > longest:
            raise NetworkFileError(
                f"networks.{name}.static_length {spec.static_length} exceeds the {longest} frames "
                "the network was exported for"
            )


def make_frontend(config: FrontendConfig | PiperFrontendConfig) -> Frontend:
    """The text front end an addon's config names: Chorus's espeak phoneme events, or Piper's IPA."""
    if isinstance(config, PiperFrontendConfig):
        from addons.piper_text import PiperFrontend

        return PiperFrontend(config)
    return Frontend(config)


def universal_vocoders(directory: Path) -> Callable[[str, torch.device], tuple[NetworkRunner, MelSettings]]:
    """How the addon in ``directory`` finds universal vocoders (beside it, then where addons are)."""

    def find(name: str, device: torch.device) -> tuple[NetworkRunner, MelSettings]:
        from addons.vocoders import load_universal  # addons.vocoders finds packages through the loader

        return load_universal(name, device, directory)

    return find


def build_env(
    manifest: AddonManifest,
    directory: Path,
    context: ExecutionContext,
    device: torch.device,
    loader: NetworkLoader | None = None,
) -> BuildEnv:
    """What an addon's blocks are built with (networks through ``loader``, shared by its stages)."""
    return BuildEnv(
        loader or NetworkLoader(manifest, directory, context),
        manifest.networks,
        manifest.mel,
        context,
        device,
        universal_vocoders(directory),
    )


class Stage(ABC):
    """One part of an addon's synthesis, built alone: only its blocks, only their networks.

    ``networks`` are the runners its blocks asked for while being built (a universal vocoder's
    too), so :meth:`load` reads exactly this stage's weights and nothing else.
    """

    name: ClassVar[str]
    #: Resolved request options this stage reads (the others pass it by).
    honours: ClassVar[tuple[str, ...]] = ()

    def __init__(self, env: BuildEnv) -> None:
        self.networks: dict[str, NetworkRunner] = {}
        self.env = dataclasses.replace(env, loader=self._record(env.loader), vocoders=self._record_vocoder(env))

    def load(self) -> list[str]:
        """Read this stage's weights now (a server warming up), not at the first request."""
        for runner in self.networks.values():
            runner.load()
        return sorted(self.networks)

    def _record(self, loader: Callable[[str, torch.device], NetworkRunner]) -> Callable[..., NetworkRunner]:
        def load(name: str, device: torch.device) -> NetworkRunner:
            runner = loader(name, device)
            self.networks[name] = runner
            return runner

        return load

    def _record_vocoder(self, env: BuildEnv) -> Callable[[str, torch.device], tuple[NetworkRunner, MelSettings]] | None:
        find = env.vocoders
        if find is None:
            return None

        def load(name: str, device: torch.device) -> tuple[NetworkRunner, MelSettings]:
            runner, mel = find(name, device)
            self.networks[f"{name} (universal vocoder)"] = runner
            return runner, mel

        return load


class EncoderStage(Stage):
    """Text -> features: the front-end (sentences, phoneme ids), then the stack's encoders.

    Out: :data:`PlainFeatures` per sentence. Concurrent sentences may share one padded pass
    (:meth:`encode_batch`), equal to encoding each alone to the bit.
    """

    name = "encoders"

    def __init__(self, manifest: AddonManifest, env: BuildEnv, node: BlockNode | None) -> None:
        super().__init__(env)
        self.manifest = manifest
        self.context = env.context
        self.frontend = make_frontend(manifest.frontend)
        block = self.env.build(node) if node is not None else None
        assert block is None or isinstance(block, SequenceBlock)
        self.block: SequenceBlock | None = block
        #: The request options its blocks read (a VITS front part: rate, noise seed, speaker);
        #: sentences said with different values of these are never encoded in one pass.
        self.option_keys: tuple[str, ...] = ("speed", "seed", "speaker") if honours(node, "speed") else ()
        self._batch_exact: bool | None = None  # padded batches equal single passes (probed once)

    def sentences(self, text: str, lexicon: Sequence[Any] = (), normalize: bool = True) -> Iterator[Sentence]:
        """The speakable sentences of ``text``, prepared lazily (raises ``TextError`` if none);
        ``lexicon``: a request's pronunciation overrides, before the addon's own; ``normalize``:
        money, times, dates, units read as words."""
        return self.frontend.sentences(text, lexicon, normalize)

    def encode(self, ids: np.ndarray, request: Request | None = None) -> PlainFeatures:
        """One sentence's phoneme ``ids`` [T] -> its features."""
        features: Features = {"phoneme_ids": torch.as_tensor(np.asarray(ids, dtype=np.int64))[None]}
        if self.block is not None:
            features = {**features, **self.block(features, request or Request())}
        return {k: v[0].numpy() for k, v in features.items()}

    def encode_batch(self, batch: list[np.ndarray], request: Request | None = None) -> list[PlainFeatures]:
        """:meth:`encode` for several sentences in one padded, masked pass (dynamic context).

        Each item's features equal encoding it alone, to the bit: where a padded pass would not
        (see :meth:`padded_batches_exact`), and in the static context (compiled for batch 1),
        items run one by one.
        """
        request = request or Request()
        if len(batch) < 2 or self.block is None or self.context is ExecutionContext.STATIC:
            return [self.encode(ids, request) for ids in batch]
        if not self.padded_batches_exact(request):
            return [self.encode(ids, request) for ids in batch]
        return self._encode_padded(batch, request)

    def padded_batches_exact(self, request: Request) -> bool:
        """Whether a padded batch gives each sentence the features it gets alone, to the bit, on
        this machine (kernels may sum in another order for another shape); probed once."""
        if self._batch_exact is None:
            gen = np.random.default_rng(0)
            config = self.manifest.frontend
            symbols = max(2, config.symbols - 1 if isinstance(config, PiperFrontendConfig) else len(config.phonemes))
            items = [gen.integers(1, symbols, n) for n in (7, 12, 5, 12)]
            alone = [self.encode(ids, request) for ids in items]
            try:
                together = self._encode_padded(items, request)
            except NetworkError:  # a graph that takes no padded batch: one by one it is
                together = []
            self._batch_exact = len(together) == len(alone) and all(
                a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
                for a, b in zip(alone, together, strict=True)
            )
        return self._batch_exact

    def _encode_padded(self, batch: list[np.ndarray], request: Request) -> list[PlainFeatures]:
        assert self.block is not None
        lengths = [len(ids) for ids in batch]
        ids = torch.zeros(len(batch), max(lengths), dtype=torch.int64)
        mask = torch.zeros(len(batch), max(lengths))
        for i, item in enumerate(batch):
            ids[i, : lengths[i]] = torch.as_tensor(np.asarray(item, dtype=np.int64))
            mask[i, : lengths[i]] = 1.0
        features = {"phoneme_ids": ids, **self.block({"phoneme_ids": ids, "mask": mask}, request)}
        return [{k: v[i, : lengths[i]].numpy() for k, v in features.items() if k != "mask"} for i in range(len(batch))]


class DecoderStage(Stage):
    """Features -> mel: the stack's streamable blocks (upsampler, decoders, nested pipelines,
    effects on mel). Chunks are ``[F, n_mels]`` float32 natural-log mel, pulled lazily."""

    name = "decoder"
    honours = ("speed",)

    def __init__(self, env: BuildEnv, node: BlockNode, rate_set: bool = False) -> None:
        """``rate_set``: the encoders already set the speaking rate (a VITS front part's length_scale)."""
        super().__init__(env)
        self.block: StreamableBlock = self.env.build_as(node, StreamableBlock)
        self.stretches = not (rate_set or honours(node, "speed"))  # no block sets the rate: the mel is stretched

    def decode(self, features: PlainFeatures, request: Request | None = None) -> Iterator[np.ndarray]:
        """One sentence's mel chunks; work is done as they are pulled."""
        for mel, _ in self.decode_aligned(features, request):
            yield mel

    def decode_aligned(
        self, features: PlainFeatures, request: Request | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        """:meth:`decode`, each chunk with the phoneme index of each of its frames (int64 ``[F]``),
        or None where the stack's blocks give no alignment (see ``Request.align``).

        Where no block of the stack sets the speaking rate (an attention decoder), the mel is
        stretched in time to ``speed`` here (:class:`blocks.tempo.MelTempo`), as it streams."""
        request = request or Request()
        features = dict(features)
        pauses = features.pop(PAUSES, None)
        speed = float(request.options.get("speed", 1.0))
        chunks = self._aligned(features, request)
        if self.stretches and speed != 1.0:
            chunks = _stretched(chunks, speed)
        if pauses is not None and len(pauses):
            chunks = self._paused(chunks, pauses)
        yield from chunks

    def _paused(
        self, chunks: Iterator[tuple[np.ndarray, np.ndarray | None]], pauses: np.ndarray
    ) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        """Silent frames for each pause, before the first frame aligned past the phoneme it follows
        (their tokens -1: no phoneme); without an alignment, at the end of the sentence."""
        pending = sorted((int(after), int(ms)) for after, ms in pauses)
        width = self.env.mel.n_mels

        def silence(ms: int, aligned: bool) -> tuple[np.ndarray, np.ndarray | None]:
            mel = silent_mel(ms, self.env.mel)
            if width != mel.shape[1]:  # a model's own latent frames, not mel: zeros are its silence
                mel = np.zeros((len(mel), width), dtype=np.float32)
            return mel, np.full(len(mel), -1, dtype=np.int64) if aligned else None

        aligned = True
        for mel, tokens in chunks:
            width = mel.shape[1]
            if tokens is None:
                aligned = False
                yield mel, tokens
                continue
            start = 0
            while pending:
                later = np.nonzero(tokens[start:] > pending[0][0])[0]
                if not later.size:
                    break
                cut = start + int(later[0])
                if cut > start:
                    yield mel[start:cut], tokens[start:cut]
                yield silence(pending.pop(0)[1], True)
                start = cut
            if start < len(mel):
                yield mel[start:], tokens[start:]
        for _, ms in pending:
            yield silence(ms, aligned)

    def _aligned(self, features: PlainFeatures, request: Request) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        log: list[torch.Tensor] = request.report.setdefault(ALIGNMENT, [])
        base = taken = len(log)
        pending = np.zeros(0, np.int64)
        feats: Features = {k: torch.as_tensor(v)[None] for k, v in features.items()}
        try:
            for chunk in self.block.stream(None, feats, request):
                mel = chunk[0].numpy()
                while len(pending) < len(mel) and taken < len(log):
                    pending = np.concatenate([pending, log[taken].numpy()])
                    taken += 1
                tokens, pending = (
                    (pending[: len(mel)], pending[len(mel) :]) if len(pending) >= len(mel) else (None, pending)
                )
                yield mel, tokens
        finally:
            del log[base:]  # this sentence's, taken (a long text does not pile them up)


def _stretched(
    chunks: Iterator[tuple[np.ndarray, np.ndarray | None]], speed: float
) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    """Mel chunks resampled in time to ``speed`` as they stream (:class:`blocks.tempo.MelTempo`)."""
    tempo = MelTempo(speed)
    for mel, tokens in chunks:
        out, out_tokens = tempo.push(mel, tokens)
        if len(out):
            yield out, out_tokens
    out, out_tokens = tempo.finish()
    if len(out):
        yield out, out_tokens


class AudioStage(Stage):
    """Mel to final audio for one addon: its vocoder, its effects, then the voice's gain.

    Push-style, so the mel may arrive from another process: ``state = start()``,
    ``process(state, mel)``, ``finish(state)``; the state holds only tensors and ints and
    crosses processes as :meth:`pack`/:meth:`unpack` plain data.
    """

    name = "audio"
    honours = ("gain_db",)

    def __init__(self, manifest: AddonManifest, env: BuildEnv) -> None:
        super().__init__(env)
        try:
            vocoder = self.env.build_as(parse_block(manifest.vocoder, Vocoder, "vocoder"), Vocoder)
        except StackError as exc:  # e.g. a universal vocoder trained for other mel settings
            raise AddonError(f"{manifest.name}: {exc}") from None
        self.vocoder: Vocoder = vocoder
        self.effects: list[ChunkwiseBlock] = []
        for i, spec in enumerate(manifest.effects):
            self.effects.append(self.env.build_as(parse_block(spec, ChunkwiseBlock, f"effects[{i}]"), ChunkwiseBlock))

    @classmethod
    def load_from(
        cls,
        directory: Path,
        manifest: AddonManifest,
        device: str | torch.device = "cpu",
        batching: int = 0,
        probes: dict[str, bool] | None = None,
    ) -> AudioStage:
        """The audio stage alone (a vocoder server), batching concurrent streams up to ``batching``;
        ``probes``: batching probes' answers shared with stages of the same shape."""
        loader = NetworkLoader(manifest, directory, ExecutionContext.DYNAMIC, batching, probes)
        stage = cls(manifest, build_env(manifest, directory, ExecutionContext.DYNAMIC, torch.device(device), loader))
        if batching:
            stage.vocoder.enable_batching(batching)
        return stage

    @property
    def first_frames(self) -> int:
        """Mel frames the first :meth:`process` call needs to return audio (see ``Vocoder.first_frames``)."""
        return self.vocoder.first_frames

    def start(self) -> Any:
        return self.vocoder.start()

    def process(self, state: Any, mel: np.ndarray, request: Request) -> np.ndarray:
        """Mel ``[F, n_mels]`` -> the audio that is now final (1-D float32; may lag the mel)."""
        return self._post(self.vocoder.process(state, torch.as_tensor(mel)[None]), request)

    def finish(self, state: Any, request: Request) -> np.ndarray:
        """The audio still held back at the end of the mel stream."""
        return self._post(self.vocoder.finish(state), request)

    @staticmethod
    def pack(state: Any) -> Any:
        """A stream state as plain data (dicts, numpy arrays, numbers) to carry between servers."""
        if isinstance(state, torch.Tensor):
            return state.numpy()
        if dataclasses.is_dataclass(state) and not isinstance(state, type):
            kind = f"{type(state).__module__}:{type(state).__qualname__}"
            return {
                STATE_TYPE: kind,
                **{f.name: AudioStage.pack(getattr(state, f.name)) for f in dataclasses.fields(state)},
            }
        if isinstance(state, dict):
            return {k: AudioStage.pack(v) for k, v in state.items()}
        return state

    @staticmethod
    def unpack(plain: Any) -> Any:
        """The inverse of :meth:`pack`; only state classes of :mod:`blocks` are rebuilt."""
        if isinstance(plain, np.ndarray):
            return torch.from_numpy(plain)
        if isinstance(plain, dict) and STATE_TYPE in plain:
            module, _, name = str(plain[STATE_TYPE]).partition(":")
            if module.split(".")[0] != "blocks":
                raise ValueError(f"refusing to rebuild state of type {plain[STATE_TYPE]!r}")
            cls = getattr(importlib.import_module(module), name)
            return cls(**{k: AudioStage.unpack(v) for k, v in plain.items() if k != STATE_TYPE})
        if isinstance(plain, dict):
            return {k: AudioStage.unpack(v) for k, v in plain.items()}
        return plain

    def _post(self, audio: torch.Tensor, request: Request) -> np.ndarray:
        for effect in self.effects:
            audio = effect.apply(audio, request)
        gain_db = float(request.options.get("gain_db", 0.0))
        if gain_db:
            audio = torch.clamp(audio * 10.0 ** (gain_db / 20.0), -1.0, 1.0)
        return audio[0].numpy().astype(np.float32, copy=False)


def build_stages(
    manifest: AddonManifest, env: BuildEnv, which: Iterable[str] = STAGES
) -> dict[str, EncoderStage | DecoderStage | AudioStage]:
    """Plan the addon's stack and build the named stages (each only its own blocks)."""
    which = list(which)
    unknown = sorted(set(which) - set(STAGES))
    if unknown:
        raise ValueError(f"unknown stage {unknown[0]!r} (known: {', '.join(STAGES)})")
    plan = split_stack(parse_stack(manifest.stack))
    built: dict[str, EncoderStage | DecoderStage | AudioStage] = {}
    for name in STAGES:
        if name not in which:
            continue
        if name == "encoders":
            built[name] = EncoderStage(manifest, env, plan.encoders)
        elif name == "decoder":
            built[name] = DecoderStage(env, plan.decoder, plan.encoders is not None and honours(plan.encoders, "speed"))
        else:
            built[name] = AudioStage(manifest, env)
    return built


@dataclasses.dataclass(frozen=True)
class StageOutput:
    """One step of :func:`run_stages`: the mel just decoded and the audio now final (may be empty).

    The last step (``mel`` None) carries the audio the vocoder held back at the end. With marks
    asked for, a step with ``mel`` None and empty audio after each sentence carries its ``marks``.
    """

    sentence: int
    mel: np.ndarray | None
    audio: np.ndarray
    marks: tuple[SpeechMark, ...] = ()


def run_stages(
    encoders: EncoderStage,
    decoder: DecoderStage,
    audio: AudioStage | None,
    text: str,
    request: Request,
    marks: MarkTracker | None = None,
    ahead: int = 0,
) -> Iterator[StageOutput]:
    """The synthesis loop: sentence by sentence, encode, decode chunk by chunk, vocode each chunk.

    Work is done as steps are pulled. Without ``audio`` only mel is produced (every ``audio``
    empty). ``marks`` follows the decoder's alignment and adds each sentence's speech marks.
    An SSML document is said part by part (:mod:`addons.ssml`): a break is silent mel and exact
    zeros, with the vocoder's stream finished before it and started after it, as at a change of
    volume. Raises ``TextError`` when ``text`` has nothing speakable.

    ``ahead`` > 0: the encoders and decoder run in a worker thread, up to ``ahead`` mel chunks
    ahead of the vocoder, so the two share a machine's cores (an autoregressive decoder cannot
    use a second core itself). The steps are the same, in the same order, to the bit.
    """
    events = _mel_events(encoders, decoder, text, request, marks)
    if ahead > 0 and audio is not None:
        events = prefetched(events, ahead)
    return _vocoded(events, audio, encoders.env.mel.hop_length)


@dataclasses.dataclass(frozen=True)
class _Event:
    """What the mel side of :func:`run_stages` hands the audio side: a ``part`` starts (said with
    ``request``), a sentence's ``mel`` chunk, ``silence`` (a break's mel) or speech ``marks``."""

    kind: str
    index: int = -1
    mel: np.ndarray | None = None
    request: Request | None = None
    marks: tuple[SpeechMark, ...] = ()


def _mel_events(
    encoders: EncoderStage, decoder: DecoderStage, text: str, request: Request, marks: MarkTracker | None
) -> Iterator[_Event]:
    script = script_of(text, str(request.options.get("input_format", "text")))
    # each part with its options, resolved before anything is said (a rate out of range is refused here)
    planned = [(item, item.options(dict(request.options)) if isinstance(item, Part) else {}) for item in script]
    index = 0
    for item, options in planned:
        if isinstance(item, Pause):
            silence = silent_mel(item.ms, encoders.env.mel)
            if marks is not None and (heard := marks.pause(len(silence), item.marks)):
                yield _Event("marks", marks=tuple(heard))
            if len(silence):
                yield _Event("silence", mel=silence)
            continue
        said = request if options == request.options else Request(options=options, report=request.report)
        yield _Event("part", request=said)
        if marks is not None:
            marks.part(item.text, item.spans, item.written, item.marks)
        for sentence in _sentences(encoders, item, options, len(script) > 1):
            if marks is not None:
                marks.sentence(sentence)
            features = with_pauses(encoders.encode(sentence.ids, said), sentence)
            for mel, tokens in decoder.decode_aligned(features, said):
                if marks is not None:
                    marks.frames(tokens, len(mel))
                yield _Event("mel", index, mel, said)
            if marks is not None:
                yield _Event("marks", index, marks=tuple(marks.end()))
            index += 1
        if marks is not None and (heard := marks.part_end()):
            yield _Event("marks", marks=tuple(heard))
    if index == 0:
        raise TextError("the document has no speakable text")


def _vocoded(events: Iterator[_Event], audio: AudioStage | None, hop_length: int) -> Iterator[StageOutput]:
    empty = np.zeros(0, dtype=np.float32)
    state = audio.start() if audio is not None else None
    fresh = True  # nothing has gone through the vocoder's stream yet
    segment: Request | None = None  # the request the vocoder's stream is said with (its gain)
    for event in events:
        if event.kind == "marks":
            yield StageOutput(event.index, None, empty, event.marks)
        elif event.kind == "silence":
            assert event.mel is not None
            if audio is not None and not fresh:
                yield StageOutput(-1, None, audio.finish(state, segment))  # type: ignore[arg-type]
                state, fresh = audio.start(), True
            samples = np.zeros(len(event.mel) * hop_length if audio is not None else 0, dtype=np.float32)
            yield StageOutput(-1, event.mel, samples)
        elif event.kind == "part":
            assert event.request is not None
            gain = event.request.options.get("gain_db")
            if audio is not None and not fresh and segment is not None and gain != segment.options.get("gain_db"):
                yield StageOutput(-1, None, audio.finish(state, segment))
                state, fresh = audio.start(), True
            if fresh:
                segment = event.request
        else:
            assert event.mel is not None and event.request is not None
            out = audio.process(state, event.mel, event.request) if audio is not None else empty
            fresh = False
            yield StageOutput(event.index, event.mel, out)
    if audio is not None and segment is not None:
        yield StageOutput(-1, None, audio.finish(state, segment))


_DONE = object()


def prefetched(items: Iterator[Any], ahead: int) -> Iterator[Any]:
    """``items``, pulled by a worker thread up to ``ahead`` items before they are asked for.

    An exception in the worker is raised here, in order, after the items before it. Closing this
    iterator early stops the worker at its next item and waits for it, so no work outlives the
    stream; the worker closes ``items`` itself (a generator must be closed by the thread running it).
    """
    slots: queue.Queue[tuple[Any, BaseException | None]] = queue.Queue(maxsize=ahead)
    stop = threading.Event()

    def put(entry: tuple[Any, BaseException | None]) -> bool:
        while not stop.is_set():
            try:
                slots.put(entry, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in items:
                if not put((item, None)):
                    return
            put((_DONE, None))
        except BaseException as exc:  # handed to the consumer, raised there
            put((_DONE, exc))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    worker = threading.Thread(target=work, name="chorus-stages-ahead", daemon=True)
    worker.start()
    try:
        while True:
            item, error = slots.get()
            if item is _DONE:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()
        worker.join()


def _sentences(encoders: EncoderStage, part: Part, options: Mapping[str, Any], skip_empty: bool) -> Iterator[Sentence]:
    """The sentences of one part; with ``skip_empty`` (one part of several), a part with nothing
    speakable in it is passed over rather than refused."""
    lexicon, normalize = options.get("lexicon", ()), bool(options.get("normalize", True))
    try:
        yield from encoders.sentences(part.text, lexicon, normalize)
    except TextError as exc:
        if not skip_empty or isinstance(exc, LexiconError):
            raise
