"""Vocoders: ``mel`` stream in, ``audio`` stream out, exactly ``hop_length`` samples per frame.

Every vocoder can also be driven push-style, one chunk at a time, with a state object that
holds only tensors and ints (so a server can carry it between calls): ``state = start()``,
``audio = process(state, mel_chunk)``, ``audio = finish(state)``.
"""

from __future__ import annotations

import functools
from abc import abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic

import torch
from pydantic import Field
from typing_extensions import TypeVar

from blocks.audio import MelSettings, mel_filterbank, stft_window
from blocks.base import (
    MAX_FRAMES,
    Block,
    BlockConfig,
    BlockNode,
    BuildEnv,
    ConfigT,
    Features,
    PlanEnv,
    Request,
    StackError,
    StreamableBlock,
    StreamKind,
)
from blocks.batching import BatchQueue, default_lanes
from blocks.network import ExecutionContext, NetworkRunner, WindowedStream, WindowState

__all__ = ["GriffinLim", "NeuralVocoder", "UniversalVocoder", "Vocoder"]


#: A vocoder's stream state: tensors, ints and dataclasses of them only (a server carries it
#: between calls as plain data, see ``addons.engine.stages.AudioStage.pack``).
StateT = TypeVar("StateT", default=Any)


class Vocoder(StreamableBlock[ConfigT], Generic[ConfigT, StateT]):
    """Base of vocoders, the waveform stage. ``mel`` chunks ``[1, F, n_mels]`` in (or a model's own
    latent ``frames`` ``[1, F, D]``, for a vocoder that says it consumes them), ``audio`` chunks
    ``[1, S]`` out.

    Over a whole stream ``sum(S) == hop_length * sum(F)``; output may lag input by a few frames
    (the vocoder's look-ahead) and is flushed when the stream ends.
    """

    #: The stream kinds this vocoder turns into audio.
    consumes: ClassVar[tuple[StreamKind, ...]] = (StreamKind.MEL,)

    def __init__(self, config: ConfigT, env: BuildEnv, children: Sequence[Block] = ()) -> None:
        super().__init__(config, env, children)
        self.mel = env.mel

    @property
    def sample_rate(self) -> int:
        return self.mel.sample_rate

    @classmethod
    def plan(cls, config: ConfigT, env: PlanEnv, children: Sequence[BlockNode] = ()) -> PlanEnv:
        if env.kind not in cls.consumes:
            got = env.kind.value if env.kind else "nothing"
            wanted = " or ".join(f'"{k.value}"' for k in cls.consumes)
            raise env.error(f"{cls.type_name} consumes a {wanted} stream, upstream gives {got}")
        return PlanEnv(env.keys, StreamKind.AUDIO, env.networks, env.path)

    def enable_batching(self, max_batch: int = 32, when_used: bool = False) -> bool:
        """Share work between streams vocoding at once (see :mod:`blocks.batching`); whether on
        (``when_used``: decided at the first call, for a process that may never vocode: True)."""
        return False

    @property
    def first_frames(self) -> int:
        """Mel frames a new stream's first :meth:`process` call needs to return any audio (a
        caller sending mel in pieces makes the first piece at least this long: one round trip)."""
        return 1

    @abstractmethod
    def start(self) -> StateT:
        """A new stream's state."""

    @abstractmethod
    def process(self, state: StateT, mel: torch.Tensor) -> torch.Tensor:
        """Frames ``[1, F, C]`` in; the audio ``[1, S]`` that is now final out (may lag the frames)."""

    @abstractmethod
    def finish(self, state: StateT) -> torch.Tensor:
        """The audio ``[1, S]`` still held back when the stream ends."""

    def stream(
        self, source: Iterator[torch.Tensor] | None, features: Features, request: Request
    ) -> Iterator[torch.Tensor]:
        assert source is not None
        state = self.start()
        for mel in source:
            audio = self.process(state, mel)
            if audio.shape[1]:
                yield audio
        tail = self.finish(state)
        if tail.shape[1]:
            yield tail


class GriffinLimConfig(BlockConfig):
    n_iter: int = Field(32, ge=1, le=1000, description="Griffin-Lim iterations per window.")
    momentum: float = Field(0.99, ge=0, lt=1, description="Fast Griffin-Lim momentum.")
    power: float = Field(1.0, gt=0, description="Exponent applied to magnitudes before phase recovery.")
    chunk_frames: int = Field(32, ge=1, le=MAX_FRAMES, description="Frames committed per window.")
    context_frames: int = Field(8, ge=1, le=MAX_FRAMES, description="Frames of overlap on each side of a window.")
    seed: int = Field(0, description="Seed of the initial phase, so output is deterministic.")


@dataclass
class GriffinLimState:
    left: torch.Tensor | None = None  # mel frames already emitted, kept as left context [L, n_mels]
    ahead: torch.Tensor | None = None  # mel frames not yet emitted [A, n_mels]
    angles: torch.Tensor | None = None  # phase of the last window's tail frames, complex [n_freq, L+R]
    tail: torch.Tensor | None = None  # samples past the last emitted one, for the crossfade
    windows: int = 0


class GriffinLim(Vocoder[GriffinLimConfig, GriffinLimState]):
    """The universal default vocoder: needs no weights, works for any addon's mel settings.

    Streams in windows of ``chunk_frames`` committed frames with ``context_frames`` of overlap
    on each side. Each window's phase estimate starts from the previous window's estimate on
    the frames they share, and the first ``hop_length`` samples of each window are crossfaded
    with the previous window's continuation, so chunk seams carry no clicks.
    """

    type_name = "GriffinLim"
    Config = GriffinLimConfig

    def __init__(self, config: GriffinLimConfig, env: BuildEnv, children: Sequence[Block] = ()) -> None:
        super().__init__(config, env, children)
        self.inverse_fb = _inverse_filterbank(self.mel)
        self._queue: BatchQueue[_Window, tuple[torch.Tensor, torch.Tensor]] | None = None

    @property
    def first_frames(self) -> int:
        cfg = self.config
        return cfg.chunk_frames + cfg.context_frames

    def enable_batching(self, max_batch: int = 32, when_used: bool = False) -> bool:
        """Batch concurrent streams' windows only where a batch gives each window exactly what it
        gives alone (probed once per mel setting: batched FFTs need not sum in the same order)."""
        cfg = self.config
        if not _batches_exact(self.mel, cfg.n_iter, cfg.momentum, cfg.power, cfg.chunk_frames + 2 * cfg.context_frames):
            self._queue = None
            return False
        self._queue = BatchQueue(
            self._griffin_lim_batch, lambda w: (tuple(w[0].shape), w[2]), max_batch, default_lanes("cpu")
        )
        return True

    def start(self) -> GriffinLimState:
        return GriffinLimState()

    def process(self, state: GriffinLimState, mel: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        frames = mel[0].to(torch.float32)
        state.ahead = frames if state.ahead is None else torch.cat([state.ahead, frames])
        out = []
        while state.ahead.shape[0] >= cfg.chunk_frames + cfg.context_frames:
            out.append(self._window(state, cfg.chunk_frames))
        return _cat_audio(out)

    def finish(self, state: GriffinLimState) -> torch.Tensor:
        cfg = self.config
        out = []
        while state.ahead is not None and state.ahead.shape[0]:
            out.append(self._window(state, min(cfg.chunk_frames, state.ahead.shape[0])))
        return _cat_audio(out)

    def _window(self, state: GriffinLimState, block: int) -> torch.Tensor:
        cfg, hop = self.config, self.mel.hop_length
        assert state.ahead is not None
        left = state.left if state.left is not None else state.ahead[:0]
        right = min(cfg.context_frames, state.ahead.shape[0] - block)
        mel = torch.cat([left, state.ahead[: block + right]])
        n_left, n_frames = left.shape[0], mel.shape[0]
        magnitude = torch.clamp(self.inverse_fb @ torch.exp(mel.T), min=1e-8) ** cfg.power
        gen = torch.Generator().manual_seed(cfg.seed + state.windows)
        angles = torch.polar(torch.ones_like(magnitude), 2 * torch.pi * torch.rand(magnitude.shape, generator=gen))
        if state.angles is not None:
            shared = min(state.angles.shape[1], n_frames)
            angles[:, :shared] = state.angles[:, :shared]
        window = (magnitude, angles, n_frames * hop)
        audio, angles = self._queue(window) if self._queue is not None else self._griffin_lim_batch([window])[0]
        emitted = audio[n_left * hop : (n_left + block) * hop].clone()
        if state.tail is not None:
            fade = torch.linspace(0.0, 1.0, state.tail.numel() + 2)[1:-1]
            n = min(state.tail.numel(), emitted.numel())
            emitted[:n] = state.tail[:n] * (1 - fade[:n]) + emitted[:n] * fade[:n]
        committed = n_left + block
        state.tail = audio[committed * hop : committed * hop + hop].clone() if right else None
        keep = min(cfg.context_frames, committed)
        state.left = mel[committed - keep : committed]
        state.angles = angles[:, committed - keep :]
        state.ahead = state.ahead[block:]
        state.windows += 1
        return emitted

    def _griffin_lim_batch(self, windows: list[_Window]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Windows of equal shape, run as one batch (the FFTs treat each item alone)."""
        magnitude = torch.stack([w[0] for w in windows])
        audio, angles = self._griffin_lim(magnitude, torch.stack([w[1] for w in windows]), windows[0][2])
        return [(audio[i], angles[i]) for i in range(len(windows))]

    def _griffin_lim(
        self, magnitude: torch.Tensor, angles: torch.Tensor, length: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``magnitude`` and ``angles`` ``[B, n_freq, frames]`` -> audio ``[B, length]`` and angles."""
        cfg, mel = self.config, self.mel
        window = stft_window(mel.win_length)
        kw = dict(n_fft=mel.n_fft, hop_length=mel.hop_length, win_length=mel.win_length, window=window, center=True)
        previous = torch.zeros_like(angles)
        alpha = cfg.momentum / (1 + cfg.momentum)
        for _ in range(cfg.n_iter):
            audio = torch.istft(magnitude * angles, length=length, **kw)  # type: ignore[arg-type]
            rebuilt = torch.stft(audio, return_complex=True, **kw)[..., : magnitude.shape[-1]]  # type: ignore[arg-type]
            angles = rebuilt - alpha * previous
            angles = angles / (angles.abs() + 1e-16)
            previous = rebuilt
        audio = torch.istft(magnitude * angles, length=length, **kw)  # type: ignore[arg-type]
        return torch.clamp(audio, -1.0, 1.0), angles


@functools.lru_cache(maxsize=8)
def _batches_exact(mel: MelSettings, n_iter: int, momentum: float, power: float, frames: int) -> bool:
    """Whether Griffin-Lim over a batch of windows equals each window run alone, to the bit, here."""
    config = GriffinLimConfig(n_iter=n_iter, momentum=momentum, power=power)
    probe = GriffinLim(config, BuildEnv(loader=_no_network, specs={}, mel=mel))
    gen = torch.Generator().manual_seed(0)
    n_freq = mel.n_fft // 2 + 1
    windows = []
    for _ in range(3):
        magnitude = torch.rand(n_freq, frames, generator=gen) + 0.1
        angles = torch.polar(torch.ones(n_freq, frames), 2 * torch.pi * torch.rand(n_freq, frames, generator=gen))
        windows.append((magnitude, angles, frames * mel.hop_length))
    alone = [probe._griffin_lim_batch([w])[0] for w in windows]
    for size in (2, 3):
        together = probe._griffin_lim_batch(windows[:size])
        if not all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(alone, together, strict=False)):
            return False
    return True


def _no_network(name: str, device: torch.device) -> Any:
    raise KeyError(name)


@functools.lru_cache(maxsize=8)
def _inverse_filterbank(mel: MelSettings) -> torch.Tensor:
    return torch.linalg.pinv(mel_filterbank(mel))


_Window = tuple[torch.Tensor, torch.Tensor, int]  # magnitude, initial angles [n_freq, frames], samples


def _cat_audio(parts: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat(parts)[None] if parts else torch.zeros(1, 0)


class NeuralVocoderConfig(BlockConfig):
    network: str = Field("vocoder", description="Exported vocoder: mel [1, T, n_mels] -> audio [1, T*hop].")
    chunk_frames: int = Field(32, ge=1, le=MAX_FRAMES, description="Mel frames of the first call (dynamic context).")
    max_chunk_frames: int | None = Field(
        None, ge=1, le=MAX_FRAMES, description="Calls double in size up to this many frames; null: all chunk_frames."
    )


@dataclass
class NeuralVocoderState:
    window: WindowState = field(default_factory=WindowState)


NeuralVocoderConfigT = TypeVar("NeuralVocoderConfigT", bound=NeuralVocoderConfig, default=NeuralVocoderConfig)


class NeuralVocoder(Vocoder[NeuralVocoderConfigT, NeuralVocoderState]):
    """Runs an addon's exported vocoder chunk by chunk with its receptive-field context.

    The network must declare a finite ``receptive_field`` (in frames) and an output of shape
    ``[1, "T*hop_length"]``; chunked audio then equals whole-utterance audio to float rounding.
    Its input is mel, or a model's own latent frames (a VITS decoder, imported from a Piper voice).
    """

    type_name = "NeuralVocoder"
    Config = NeuralVocoderConfig
    consumes: ClassVar[tuple[StreamKind, ...]] = (StreamKind.MEL, StreamKind.FRAMES)

    @classmethod
    def plan(cls, config: NeuralVocoderConfigT, env: PlanEnv, children: Sequence[BlockNode] = ()) -> PlanEnv:
        out = super().plan(config, env)
        cls._plan_network(config, env)
        return out

    @classmethod
    def _plan_network(cls, config: NeuralVocoderConfig, env: PlanEnv) -> None:
        spec = env.require_network(config.network, "vocoder", cls.type_name)
        if spec.receptive_field is None:
            raise env.error(f'network "{config.network}" declares no receptive_field, so it cannot run in chunks')

    def __init__(self, config: NeuralVocoderConfigT, env: BuildEnv, children: Sequence[Block] = ()) -> None:
        super().__init__(config, env, children)
        self.runner = self._runner(config, env)
        spec = self.runner.spec
        self.mel_input = next(t.name for t in spec.inputs if t.time_scale is not None and t.name != "mask")
        audio = next(t for t in spec.outputs if t.time_scale is not None)
        if audio.time_scale != self.mel.hop_length:
            raise ValueError(
                f'network "{config.network}" makes {audio.time_scale} samples per frame, the addon\'s hop_length is {self.mel.hop_length}'
            )
        self.audio_output = audio.name

    def _runner(self, config: NeuralVocoderConfigT, env: BuildEnv) -> NetworkRunner:
        return env.networks(config.network)

    def _windows(self, state: NeuralVocoderState) -> WindowedStream:
        return self.runner.windowed(self.config.chunk_frames, state.window, self.config.max_chunk_frames)

    @property
    def first_frames(self) -> int:
        context = self.runner.spec.receptive_field or 0
        if self.runner.context is ExecutionContext.STATIC and self.runner.spec.static_length is not None:
            return self.runner.spec.static_length - context
        return self.config.chunk_frames + context

    def enable_batching(self, max_batch: int = 32, when_used: bool = False) -> bool:
        if when_used:
            self.runner.batch_when_used(max_batch)
            return True
        return self.runner.enable_batching(max_batch)

    def start(self) -> NeuralVocoderState:
        return NeuralVocoderState()

    def process(self, state: NeuralVocoderState, mel: torch.Tensor) -> torch.Tensor:
        return _cat_audio([o[self.audio_output][0] for o in self._windows(state).push({self.mel_input: mel})])

    def finish(self, state: NeuralVocoderState) -> torch.Tensor:
        return _cat_audio([o[self.audio_output][0] for o in self._windows(state).finish()])


class UniversalVocoderConfig(NeuralVocoderConfig):
    name: str = Field(
        "chorus-vocoder",
        pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$",
        description="The universal vocoder to use (a package installed beside the addons, not in this addon).",
    )
    chunk_frames: int = Field(32, ge=1, le=MAX_FRAMES, description="Mel frames of the first call.")
    max_chunk_frames: int | None = Field(256, ge=1, le=MAX_FRAMES, description="Calls double up to this many.")


class UniversalVocoder(NeuralVocoder[UniversalVocoderConfig]):
    """A neural vocoder shared by every addon whose mel settings it was trained for.

    The network comes from the named universal vocoder package, not from the addon, so one
    server process (one deployment) serves many models with it. An addon whose mel settings
    differ from the vocoder's is refused when built, naming the settings that differ; such an
    addon names ``GriffinLim`` (which fits any settings) or brings its own ``NeuralVocoder``.
    """

    type_name = "UniversalVocoder"
    Config = UniversalVocoderConfig
    consumes: ClassVar[tuple[StreamKind, ...]] = (StreamKind.MEL,)

    @classmethod
    def _plan_network(cls, config: NeuralVocoderConfig, env: PlanEnv) -> None:
        """The network is not the addon's: it is found, and its mel settings checked, when built."""

    def _runner(self, config: UniversalVocoderConfig, env: BuildEnv) -> NetworkRunner:
        runner, trained_for = env.universal_vocoder(config.name)
        if trained_for != env.mel:
            differ = [
                f"{k} {getattr(env.mel, k)} (vocoder: {v})"
                for k, v in trained_for.model_dump().items()
                if getattr(env.mel, k) != v
            ]
            raise StackError(
                "vocoder",
                f'universal vocoder "{config.name}" was trained for other mel settings; this addon has '
                f"{', '.join(differ)}. Name GriffinLim, or bring a NeuralVocoder of its own",
            )
        return runner
