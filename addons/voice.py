"""A loaded addon: text in, typed mel and audio chunks out, streaming."""

from __future__ import annotations

import dataclasses
import importlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from addons.frontend import Frontend, Sentence, TextError
from addons.manifest import AddonError, AddonManifest, format_validation_error
from addons.netfile import NetworkFileError, load_program, max_length
from blocks import (
    BuildEnv,
    ChunkwiseBlock,
    ExecutionContext,
    Features,
    LazyModule,
    MelSettings,
    NetworkRunner,
    NetworkSpec,
    Request,
    StackError,
    StreamablePipeline,
    StreamableStack,
    Vocoder,
    parse_block,
    parse_stack,
)

__all__ = ["AudioChunk", "AudioStage", "MelChunk", "SynthesisOptions", "Voice", "resolve_options"]


@dataclass(frozen=True)
class AudioChunk:
    """A piece of the output: ``samples`` 1-D float32 in [-1, 1] at ``sample_rate`` Hz."""

    samples: np.ndarray
    sample_rate: int


@dataclass(frozen=True)
class MelChunk:
    """``frames`` ``[F, n_mels]`` float32 log-mel; ``sentence`` is the index of its sentence."""

    frames: np.ndarray
    sentence: int


class SynthesisOptions(BaseModel):
    """Per-request options; unset fields fall back to the voice preset, then the addon defaults."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    voice: str = Field("default", description="One of the addon's voices.")
    speed: float | None = Field(None, ge=0.25, le=4.0, description="Speaking rate multiplier.")


STATE_TYPE = "__state_type__"


def resolve_options(manifest: AddonManifest, **options: Any) -> tuple[SynthesisOptions, dict[str, Any]]:
    """Validate request options against an addon; return them and the values blocks see
    (request value, else the voice preset's, else the addon default). Needs no networks.
    """
    try:
        opts = SynthesisOptions(**options)
    except ValidationError as exc:
        raise TextError(format_validation_error(exc)) from None
    if opts.voice not in manifest.voices:
        raise TextError(f'unknown voice "{opts.voice}" (known: {", ".join(sorted(manifest.voices))})')
    preset = manifest.voices[opts.voice]
    speed = (
        opts.speed if opts.speed is not None else preset.speed if preset.speed is not None else manifest.defaults.speed
    )
    return opts, {"speed": speed, "voice": opts.voice, "gain_db": preset.gain_db}


class NetworkLoader:
    """Loads an addon's exported networks on first use, once per (network, device).

    Files are read by :func:`addons.netfile.load_program`, which runs nothing from them and
    checks each against its declared signature; a refused file is an :class:`AddonError`.
    """

    def __init__(self, manifest: AddonManifest, directory: Path, context: ExecutionContext, batching: int = 0) -> None:
        self.manifest, self.directory, self.context = manifest, directory, context
        self.batching = batching  # > 0: streams calling a network at once share a pass, at most this many
        self._programs: dict[tuple[str, str], NetworkRunner] = {}
        self._lock = threading.Lock()

    def __call__(self, name: str, device: torch.device) -> NetworkRunner:
        key = (name, str(device))
        with self._lock:
            if key not in self._programs:
                spec = self.manifest.networks[name]
                path = self.directory / spec.file
                try:  # checked now; its weights are read again when the network first runs
                    program = load_program(path, spec, self.directory)
                    self._check_static(name, spec, max_length(program, spec))
                except NetworkFileError as exc:
                    raise AddonError(f"{path}: {exc}") from None
                del program
                runner = NetworkRunner(name, spec, LazyModule(self._builder(path, spec, device)), self.context, device)
                if self.batching:
                    runner.batch_when_used(self.batching)
                self._programs[key] = runner
            return self._programs[key]

    def _builder(self, path: Path, spec: NetworkSpec, device: torch.device) -> Callable[[], torch.nn.Module]:
        def build() -> torch.nn.Module:
            try:
                return load_program(path, spec, self.directory).module().to(device)
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


def _universal_vocoders(directory: Path) -> Callable[[str, torch.device], tuple[NetworkRunner, MelSettings]]:
    """How the addon in ``directory`` finds universal vocoders (beside it, then where addons are)."""

    def find(name: str, device: torch.device) -> tuple[NetworkRunner, MelSettings]:
        from addons.vocoders import load_universal  # addons.vocoders finds packages through the loader

        return load_universal(name, device, directory)

    return find


class AudioStage:
    """Mel to final audio for one addon: its vocoder, its effects, then the voice's gain.

    Builds only what the vocoder needs (no acoustic networks), so a vocoder server can load it
    alone. Push-style: ``state = start()``, ``process(state, mel)``, ``finish(state)``; the state
    holds only tensors and ints.
    """

    def __init__(self, manifest: AddonManifest, env: BuildEnv) -> None:
        try:
            vocoder = env.build(parse_block(manifest.vocoder, Vocoder, "vocoder"))
        except StackError as exc:  # e.g. a universal vocoder trained for other mel settings
            raise AddonError(f"{manifest.name}: {exc}") from None
        assert isinstance(vocoder, Vocoder)
        self.vocoder = vocoder
        self.effects: list[ChunkwiseBlock] = []
        for i, spec in enumerate(manifest.effects):
            effect = env.build(parse_block(spec, ChunkwiseBlock, f"effects[{i}]"))
            assert isinstance(effect, ChunkwiseBlock)
            self.effects.append(effect)

    @classmethod
    def load(
        cls, directory: Path, manifest: AddonManifest, device: str | torch.device = "cpu", batching: int = 0
    ) -> AudioStage:
        loader = NetworkLoader(manifest, directory, ExecutionContext.DYNAMIC, batching)
        stage = cls(
            manifest,
            BuildEnv(
                loader,
                manifest.networks,
                manifest.mel,
                ExecutionContext.DYNAMIC,
                torch.device(device),
                _universal_vocoders(directory),
            ),
        )
        if batching:
            stage.vocoder.enable_batching(batching)
        return stage

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


class Voice:
    """A loaded addon. Thread-safe for concurrent ``stream`` calls (each has its own state)."""

    def __init__(
        self,
        manifest: AddonManifest,
        directory: Path,
        context: ExecutionContext | str = "dynamic",
        device: str | torch.device = "cpu",
        batching: int = 0,
    ) -> None:
        """``batching`` > 0 lets concurrent streams share forward passes, that many at most
        (see :mod:`blocks.batching`); results equal unbatched ones to float rounding."""
        self.manifest = manifest
        self.directory = directory
        self.context = ExecutionContext(context)
        self.device = torch.device(device)
        self.frontend = Frontend(manifest.frontend)
        self._load_network = NetworkLoader(manifest, directory, self.context, batching)
        self._batch_exact: bool | None = None  # padded encoder batches equal single passes (probed once)
        env = BuildEnv(
            self._load_network,
            manifest.networks,
            manifest.mel,
            self.context,
            self.device,
            _universal_vocoders(directory),
        )
        self.env = env  # what this voice's blocks were built with (tests build single blocks from it)
        stack = env.build(parse_stack(manifest.stack))
        assert isinstance(stack, StreamableStack)
        self.stack: StreamableStack = stack
        self.audio = AudioStage(manifest, env)
        self.vocoder = self.audio.vocoder
        if batching:
            self.vocoder.enable_batching(batching, when_used=True)

    def load_networks(self, roles: set[str]) -> list[str]:
        """Read the weights of this addon's networks with these roles now (a server process warming
        up its own stage); the others stay unread until they first run. Returns their names."""
        names = [n for n, spec in self.manifest.networks.items() if spec.role in roles]
        for name in names:
            self._load_network(name, self.device).load()
        if "vocoder" in roles and isinstance(getattr(self.vocoder, "runner", None), NetworkRunner):
            self.vocoder.runner.load()  # type: ignore[attr-defined]
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

    # -- whole pipeline -----------------------------------------------------------------------
    def options(self, **options: Any) -> tuple[SynthesisOptions, dict[str, Any]]:
        """Validate request options; return them and the resolved values blocks see."""
        return resolve_options(self.manifest, **options)

    def _request(self, request: Request | None, **options: Any) -> Request:
        """The caller's request, or a new one with ``options`` validated and resolved."""
        return request if request is not None else Request(options=self.options(**options)[1])

    def stream_mel(self, text: str, request: Request | None = None, **options: Any) -> Iterator[MelChunk]:
        """Mel chunks for ``text``, sentence after sentence; work is done as chunks are pulled."""
        request = self._request(request, **options)
        for index, sentence in enumerate(self.frontend.sentences(text)):
            for chunk in self.decode(self.encode(sentence.ids, request), request):
                yield MelChunk(chunk, index)

    def stream(self, text: str, request: Request | None = None, **options: Any) -> Iterator[AudioChunk]:
        """Audio chunks for ``text``; the first arrives after the first sentence's first chunk."""
        request = self._request(request, **options)
        state = self.audio_start()
        for mel in self.stream_mel(text, request):
            samples = self.audio_process(state, mel.frames, request)
            if samples.size:
                yield AudioChunk(samples, self.sample_rate)
        samples = self.audio_finish(state, request)
        if samples.size:
            yield AudioChunk(samples, self.sample_rate)

    def synthesize(self, text: str, **options: Any) -> tuple[np.ndarray, np.ndarray]:
        """Whole-utterance convenience: ``(audio [S], mel [F, n_mels])`` with ``S == F * hop``."""
        request = self._request(None, **options)
        state = self.audio_start()
        mels, audio = [], []
        for mel in self.stream_mel(text, request):
            mels.append(mel.frames)
            audio.append(self.audio_process(state, mel.frames, request))
        audio.append(self.audio_finish(state, request))
        return np.concatenate(audio), np.concatenate(mels)

    # -- stages (what a server splits across deployments; plain arrays in and out) --------------
    def sentences(self, text: str) -> Iterator[Sentence]:
        return self.frontend.sentences(text)

    def encode(self, ids: np.ndarray, request: Request | None = None) -> dict[str, np.ndarray]:
        """The SequenceBlock side of the stack's first pipeline: ``ids`` [T] -> features."""
        request = self._request(request)
        features: Features = {"phoneme_ids": torch.as_tensor(np.asarray(ids, dtype=np.int64))[None]}
        first = self.stack.stack[0]
        if isinstance(first, StreamablePipeline):
            features = first.encode(features, request)
        return {k: v[0].numpy() for k, v in features.items()}

    def encode_batch(self, batch: list[np.ndarray], request: Request | None = None) -> list[dict[str, np.ndarray]]:
        """:meth:`encode` for several sentences in one padded, masked pass (dynamic context).

        Each item's features equal encoding it alone, to the bit: where a padded pass would not
        (see :meth:`_padded_batches_exact`), and in the static context (compiled for batch 1),
        items run one by one.
        """
        request = self._request(request)
        first = self.stack.stack[0]
        if len(batch) < 2 or self.context is ExecutionContext.STATIC or not isinstance(first, StreamablePipeline):
            return [self.encode(ids, request) for ids in batch]
        if not self._padded_batches_exact(request):
            return [self.encode(ids, request) for ids in batch]
        return self._encode_padded(batch, request)

    def _padded_batches_exact(self, request: Request) -> bool:
        """Whether a padded batch gives each sentence the features it gets alone, to the bit, on
        this machine (kernels may sum in another order for another shape); probed once."""
        if self._batch_exact is None:
            gen = np.random.default_rng(0)
            symbols = max(2, len(self.manifest.frontend.phonemes))
            items = [gen.integers(1, symbols, n) for n in (7, 12, 5, 12)]
            alone = [self.encode(ids, request) for ids in items]
            together = self._encode_padded(items, request)
            self._batch_exact = all(
                a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
                for a, b in zip(alone, together, strict=True)
            )
        return self._batch_exact

    def _encode_padded(self, batch: list[np.ndarray], request: Request) -> list[dict[str, np.ndarray]]:
        first = self.stack.stack[0]
        assert isinstance(first, StreamablePipeline)
        lengths = [len(ids) for ids in batch]
        ids = torch.zeros(len(batch), max(lengths), dtype=torch.int64)
        mask = torch.zeros(len(batch), max(lengths))
        for i, item in enumerate(batch):
            ids[i, : lengths[i]] = torch.as_tensor(np.asarray(item, dtype=np.int64))
            mask[i, : lengths[i]] = 1.0
        features = first.encode({"phoneme_ids": ids, "mask": mask}, request)
        return [{k: v[i, : lengths[i]].numpy() for k, v in features.items() if k != "mask"} for i in range(len(batch))]

    def decode(self, features: dict[str, np.ndarray], request: Request | None = None) -> Iterator[np.ndarray]:
        """The StreamableBlock side: features from :meth:`encode` -> mel chunks ``[F, n_mels]``."""
        request = self._request(request)
        feats: Features = {k: torch.as_tensor(v)[None] for k, v in features.items()}
        first, rest = self.stack.stack[0], self.stack.stack[1:]
        stream = (first.streamable_block if isinstance(first, StreamablePipeline) else first).stream(
            None, feats, request
        )
        for block in rest:
            stream = block.stream(stream, feats, request)
        for chunk in stream:
            yield chunk[0].numpy()

    def audio_start(self) -> Any:
        """State for turning one mel stream into audio (vocoder, effects, voice gain)."""
        return self.audio.start()

    def audio_process(self, state: Any, mel: np.ndarray, request: Request | None = None) -> np.ndarray:
        """Mel ``[F, n_mels]`` -> the audio that is now final (1-D float32; may lag the mel)."""
        return self.audio.process(state, mel, self._request(request))

    def audio_finish(self, state: Any, request: Request | None = None) -> np.ndarray:
        """The audio still held back at the end of the mel stream."""
        return self.audio.finish(state, self._request(request))
