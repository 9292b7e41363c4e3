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

Request options reach every stage already resolved (:func:`addons.engine.options.resolve_options`).
:func:`addons.engine.driver.speak` is the one synthesis loop that drives them, in this process
or on remote replicas (through its ports). Their networks come through :mod:`addons.engine.networks`.
"""

from __future__ import annotations

import dataclasses
import importlib
from abc import ABC
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from addons.engine.networks import NetworkLoader, build_env, make_frontend
from addons.formats.manifest import AddonError, AddonManifest
from addons.text.config import PiperFrontendConfig
from addons.text.frontend import Sentence
from addons.text.ssml import pause_frames
from blocks import (
    ALIGNMENT,
    BuildEnv,
    ChunkwiseBlock,
    ExecutionContext,
    Features,
    MelSettings,
    NetworkError,
    NetworkRunner,
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
    "PAUSES",
    "STAGES",
    "AudioStage",
    "DecoderStage",
    "EncoderStage",
    "PlainFeatures",
    "Stage",
    "build_stages",
    "silent_mel",
    "with_pauses",
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
