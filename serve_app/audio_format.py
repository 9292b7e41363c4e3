"""Streaming audio encoders for the HTTP edge.

One encoder per response: ``make_encoder(fmt, sample_rate)``, then ``header()`` once,
``encode(samples)`` per chunk, ``finish()`` once. The concatenation of everything they
return is one complete file of ``media_type``; every call may return ``b""``.

Samples are mono float32 in [-1, 1] (values outside are clipped). Converting them to
16-bit integers is encoding, so it belongs here. Codecs that cannot carry the voice's rate
(Opus) get it converted by FFmpeg's own resampler inside the encoder (PyAV), not by Chorus.

Format notes (wav, pcm, mp3, flac checked against libsndfile 1.2.2 through soundfile 0.14;
opus and aac against FFmpeg through PyAV):

* ``wav``: 44-byte PCM header whose RIFF and data sizes are ``0xFFFFFFFF``, the
  "unknown length" convention of streaming servers. libsndfile, Python's ``wave`` and
  ffmpeg read such a file to its end; sizes of 0 instead make libsndfile report 0 frames
  and ``wave`` refuse the file.
* ``pcm``: raw signed 16-bit little-endian mono, as OpenAI's ``pcm``. OpenAI's is at 24 kHz;
  ``make_encoder(..., output_rate=24000)`` converts a voice's rate to it (see ``Resampler``).
* ``mp3``: constant bit rate. With libsndfile's default VBR the stream has no Xing header
  (that is rewritten on close, which a stream cannot do), and mpg123 then estimates the
  length from the first frame and truncates the audio. A streamed MP3 starts with one
  silent frame (libsndfile's placeholder for that header) and carries no gapless info,
  so decoders return up to about four frames more than were encoded.
* ``opus``: Ogg Opus (libopus through FFmpeg). Opus carries only 8, 12, 16, 24 and 48 kHz,
  so other rates are resampled to the next one up (22,050 Hz -> 24 kHz); decoders get
  exactly the encoded duration back (the Ogg pre-skip and end trim are set). Pages are
  flushed every ``OGG_PAGE_MS`` instead of the muxer's default of one second.
* ``flac``: frames stream, but STREAMINFO cannot be rewritten on a stream, so it says
  "length unknown" (total samples 0), which the FLAC format allows and ffmpeg/libFLAC
  accept. soundfile cannot read such a file (its read path seeks, and libsndfile refuses
  to seek in a FLAC of unknown length). Pass ``buffered=True`` to get a complete header at
  the price of all output arriving from ``finish()``.
* ``aac``: AAC-LC in ADTS frames (FFmpeg's native encoder), streamable and what OpenAI's
  ``aac`` is. ADTS cannot say how much priming and padding the encoder added, so decoders
  return about 1,024 samples of it at the start and up to one frame (1,024 samples) at the end.
"""

from __future__ import annotations

import struct
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from typing import Any, ClassVar

import numpy as np
import soundfile as sf

__all__ = [
    "RESAMPLED_FORMATS",
    "SUPPORTED_FORMATS",
    "UNSUPPORTED_FORMATS",
    "AudioEncoder",
    "ResampledEncoder",
    "Resampler",
    "UnsupportedFormatError",
    "iter_encoded",
    "make_encoder",
]

OGG_PAGE_MS = 100
AAC_BIT_RATE = 64_000
OPUS_BIT_RATE = 32_000
# libsndfile maps compression level 0..1 onto its bit-rate range (MPEG-2: 160..8 kb/s,
# MPEG-1: 320..32 kb/s); 0.6 gave 64 kb/s at 16-24 kHz and 160 kb/s at 44.1-48 kHz.
MP3_COMPRESSION_LEVEL = 0.6
# "Unknown length": libsndfile, wave and ffmpeg then read the data chunk to end of file.
_UNKNOWN_SIZE = 0xFFFFFFFF

#: Formats clients may ask for that this build cannot encode, with the reason (none today).
UNSUPPORTED_FORMATS: dict[str, str] = {}


class UnsupportedFormatError(ValueError):
    """The format is unknown, or cannot be encoded at this sample rate."""

    def __init__(self, fmt: str, reason: str) -> None:
        super().__init__(f"response_format {fmt!r}: {reason}")
        self.fmt = fmt
        self.reason = reason


class AudioEncoder(ABC):
    """Encodes one mono stream incrementally.

    Contract: call ``header()`` once, then ``encode()`` any number of times, then
    ``finish()`` once; concatenated, their results form one complete file. Any call may
    return ``b""`` (codecs emit whole frames or pages only). ``encode`` takes a 1-D
    array of float samples in [-1, 1] at ``sample_rate`` Hz.
    """

    media_type: ClassVar[str]

    def __init__(self, sample_rate: int) -> None:
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {sample_rate}")
        self.sample_rate = sample_rate

    @property
    def output_rate(self) -> int:
        """The sample rate of the audio in the file (``sample_rate`` unless the codec converts it)."""
        return self.sample_rate

    @abstractmethod
    def header(self) -> bytes:
        """Bytes that precede any audio (may be empty when the codec writes its own)."""

    @abstractmethod
    def encode(self, samples: np.ndarray) -> bytes:
        """Encode one chunk; returns what is ready to send (possibly nothing)."""

    @abstractmethod
    def finish(self) -> bytes:
        """Flush the codec and end the stream; the encoder is unusable afterwards."""


def _as_mono_float32(samples: np.ndarray) -> np.ndarray:
    """Validate a chunk as 1-D and return it as contiguous float32."""
    arr = np.asarray(samples, dtype=np.float32)
    if arr.ndim != 1:
        raise ValueError(f"expected 1-D mono samples, got shape {arr.shape}")
    return np.ascontiguousarray(arr)


def _to_pcm16(samples: np.ndarray) -> bytes:
    """Float [-1, 1] to signed 16-bit little-endian bytes, rounding to nearest."""
    clipped = np.clip(_as_mono_float32(samples), -1.0, 1.0)
    pcm: np.ndarray = np.rint(clipped * 32767.0).astype("<i2")
    return pcm.tobytes()


class PcmEncoder(AudioEncoder):
    """Raw signed 16-bit little-endian mono, no header (OpenAI's ``pcm``)."""

    media_type = "audio/pcm"

    def header(self) -> bytes:
        return b""

    def encode(self, samples: np.ndarray) -> bytes:
        return _to_pcm16(samples)

    def finish(self) -> bytes:
        return b""


class WavEncoder(PcmEncoder):
    """16-bit PCM WAV whose header declares an unknown length (see module notes)."""

    media_type = "audio/wav"

    def header(self) -> bytes:
        channels, bits = 1, 16
        block_align = channels * bits // 8
        fmt_chunk = struct.pack(
            "<4sIHHIIHH",
            b"fmt ",
            16,  # size of the PCM fmt chunk body
            1,  # WAVE_FORMAT_PCM
            channels,
            self.sample_rate,
            self.sample_rate * block_align,
            block_align,
            bits,
        )
        riff = struct.pack("<4sI4s", b"RIFF", _UNKNOWN_SIZE, b"WAVE")
        data = struct.pack("<4sI", b"data", _UNKNOWN_SIZE)
        return riff + fmt_chunk + data


class _ForwardSink:
    """A file-like object that lets libsndfile write a file we stream as it grows.

    libsndfile needs seek/tell and, on close, seeks back to patch the header. Bytes
    already handed out cannot change, so writes before ``base`` are dropped: the header
    keeps the "unknown length" values the codec wrote first. With ``hold=True`` nothing
    is handed out before ``close()``, so those patches land.
    """

    def __init__(self, hold: bool = False) -> None:
        self._buf = bytearray()
        self._base = 0  # file offset of _buf[0]; everything before it was handed out
        self._pos = 0
        self._hold = hold

    def seek(self, offset: int, whence: int = 0) -> int:
        end = self._base + len(self._buf)
        self._pos = {0: offset, 1: self._pos + offset, 2: end + offset}[whence]
        return self._pos

    def tell(self) -> int:
        return self._pos

    def read(self, size: int = -1) -> bytes:
        # Writers never need to read back; emitted bytes are gone anyway.
        return b""

    def write(self, data: bytes) -> int:
        view = bytes(data)
        start, self._pos = self._pos, self._pos + len(view)
        if start < self._base:  # a header patch over bytes already sent
            view = view[self._base - start :]
            start = self._base
        offset = start - self._base
        if offset > len(self._buf):
            self._buf.extend(bytes(offset - len(self._buf)))
        self._buf[offset : offset + len(view)] = view
        return len(data)

    def take(self, final: bool = False) -> bytes:
        """Hand out every byte written so far (only at the end when holding)."""
        if self._hold and not final:
            return b""
        out = bytes(self._buf)
        self._base += len(self._buf)
        self._buf.clear()
        return out


class _SoundfileEncoder(AudioEncoder):
    """Base for codecs that libsndfile encodes incrementally.

    libsndfile writes the container header with the first non-empty chunk, so
    ``header()`` returns ``b""`` and the header comes out of the first ``encode``.
    """

    _format: ClassVar[str]
    _subtype: ClassVar[str]

    def __init__(self, sample_rate: int, buffered: bool = False) -> None:
        super().__init__(sample_rate)
        self._sink = _ForwardSink(hold=buffered)
        self._file = sf.SoundFile(
            self._sink,
            mode="w",
            samplerate=sample_rate,
            channels=1,
            format=self._format,
            subtype=self._subtype,
            **self._open_options(),
        )
        self._configure()

    def _open_options(self) -> dict[str, float | str]:
        """Extra keyword arguments for ``soundfile.SoundFile``."""
        return {}

    def _configure(self) -> None:
        """Codec settings that need an open file."""

    def header(self) -> bytes:
        return b""

    def encode(self, samples: np.ndarray) -> bytes:
        chunk = _as_mono_float32(samples)
        if chunk.size:
            self._file.write(chunk)
        return self._sink.take()

    def finish(self) -> bytes:
        self._file.close()
        return self._sink.take(final=True)


class FlacEncoder(_SoundfileEncoder):
    """FLAC, 16-bit. Streamed output declares an unknown length (see module notes)."""

    media_type = "audio/flac"
    _format, _subtype = "FLAC", "PCM_16"


class Mp3Encoder(_SoundfileEncoder):
    """MPEG-1/2 Layer III at a constant bit rate (VBR streams decode truncated)."""

    media_type = "audio/mpeg"
    _format, _subtype = "MP3", "MPEG_LAYER_III"

    def _open_options(self) -> dict[str, float | str]:
        # soundfile applies bitrate_mode only together with compression_level.
        return {"compression_level": MP3_COMPRESSION_LEVEL, "bitrate_mode": "CONSTANT"}


class _ChunkSink:
    """A write-only, non-seekable file for FFmpeg's muxer: what it writes is handed out as it comes."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def write(self, data: bytes) -> int:
        self._buf += bytes(data)
        return len(data)

    def take(self) -> bytes:
        out = bytes(self._buf)
        self._buf.clear()
        return out


class _FfmpegEncoder(AudioEncoder):
    """Base for codecs FFmpeg encodes (through PyAV): resampled where the codec needs another
    rate, muxed into a streamable container. The header comes out of the first ``encode``."""

    _container: ClassVar[str]
    _codec: ClassVar[str]
    _bit_rate: ClassVar[int]
    _container_options: ClassVar[dict[str, str]] = {}

    def __init__(self, sample_rate: int, buffered: bool = False) -> None:
        import av

        super().__init__(sample_rate)
        self._sink = _ChunkSink()
        self._hold = buffered
        self._held = bytearray()
        self._out = av.open(self._sink, mode="w", format=self._container, options=dict(self._container_options))
        rates = av.codec.Codec(self._codec, "w").audio_rates or (sample_rate,)
        rate = sample_rate if sample_rate in rates else min((r for r in rates if r > sample_rate), default=max(rates))
        stream = self._out.add_stream(self._codec, rate=rate, layout="mono")
        assert isinstance(stream, av.AudioStream)
        stream.bit_rate = self._bit_rate
        self._stream = stream
        self._resampler = av.AudioResampler(format=stream.codec_context.format.name, layout="mono", rate=rate)
        self._pts = 0

    @property
    def codec_rate(self) -> int:
        """The sample rate inside the file (the voice's, or the next one the codec carries)."""
        return int(self._stream.codec_context.sample_rate)

    @property
    def output_rate(self) -> int:
        return self.codec_rate

    def header(self) -> bytes:
        return b""

    def encode(self, samples: np.ndarray) -> bytes:
        import av

        chunk = np.clip(_as_mono_float32(samples), -1.0, 1.0)
        if chunk.size:
            frame = av.AudioFrame.from_ndarray(chunk[None], format="flt", layout="mono")
            frame.sample_rate, frame.pts = self.sample_rate, self._pts
            self._pts += chunk.size
            self._mux(self._resampler.resample(frame))
        return self._take()

    def finish(self) -> bytes:
        self._mux(self._resampler.resample(None))
        for packet in self._stream.encode(None):
            self._out.mux(packet)
        self._out.close()
        return self._take(final=True)

    def _mux(self, frames: list[Any]) -> None:
        for frame in frames:
            for packet in self._stream.encode(frame):
                self._out.mux(packet)

    def _take(self, final: bool = False) -> bytes:
        self._held += self._sink.take()
        if self._hold and not final:
            return b""
        out = bytes(self._held)
        self._held.clear()
        return out


class OpusEncoder(_FfmpegEncoder):
    """Opus in Ogg, resampled to a rate Opus carries, pages flushed every ``OGG_PAGE_MS``."""

    media_type = "audio/ogg"
    _container, _codec, _bit_rate = "ogg", "libopus", OPUS_BIT_RATE
    _container_options: ClassVar[dict[str, str]] = {"page_duration": str(OGG_PAGE_MS * 1000)}


class AacEncoder(_FfmpegEncoder):
    """AAC-LC in ADTS frames (streamable; see the module notes on priming)."""

    media_type = "audio/aac"
    _container, _codec, _bit_rate = "adts", "aac", AAC_BIT_RATE


class Resampler:
    """A mono float stream from one rate to another through FFmpeg's resampler (libswresample,
    through PyAV). It keeps its filter state between calls, so the chunks it returns, joined,
    equal the whole signal resampled at once, to the bit; ``flush()`` returns the tail it holds.
    """

    def __init__(self, in_rate: int, out_rate: int) -> None:
        import av

        if in_rate <= 0 or out_rate <= 0:
            raise ValueError(f"sample rates must be positive, got {in_rate} -> {out_rate}")
        self.in_rate, self.out_rate = in_rate, out_rate
        self._resampler = av.AudioResampler(format="flt", layout="mono", rate=out_rate)
        self._pts = 0

    def resample(self, samples: np.ndarray) -> np.ndarray:
        """The output ready after this chunk (possibly none)."""
        import av

        chunk = _as_mono_float32(samples)
        if not chunk.size:
            return chunk
        frame = av.AudioFrame.from_ndarray(chunk[None], format="flt", layout="mono")
        frame.sample_rate, frame.pts = self.in_rate, self._pts
        self._pts += chunk.size
        return self._joined(self._resampler.resample(frame))

    def flush(self) -> np.ndarray:
        """What the filter still holds; the resampler is unusable afterwards."""
        return self._joined(self._resampler.resample(None))

    @staticmethod
    def _joined(frames: list[Any]) -> np.ndarray:
        parts = [np.asarray(f.to_ndarray(), dtype=np.float32).reshape(-1) for f in frames]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)


class ResampledEncoder(AudioEncoder):
    """Another encoder fed at ``output_rate``: chunks are resampled on the way in, and the
    resampler's tail is encoded before the encoder finishes, so no sample is lost at the end."""

    def __init__(self, inner: AudioEncoder, sample_rate: int) -> None:
        super().__init__(sample_rate)
        self.inner = inner
        self.media_type = inner.media_type  # type: ignore[misc]
        self._resampler = Resampler(sample_rate, inner.sample_rate)
        self.samples_out = 0  # samples handed to the inner encoder, at its rate

    @property
    def output_rate(self) -> int:
        return self.inner.output_rate

    def header(self) -> bytes:
        return self.inner.header()

    def encode(self, samples: np.ndarray) -> bytes:
        return self._pass(self._resampler.resample(samples))

    def finish(self) -> bytes:
        return self._pass(self._resampler.flush()) + self.inner.finish()

    def _pass(self, samples: np.ndarray) -> bytes:
        self.samples_out += samples.size
        return self.inner.encode(samples) if samples.size else b""


_ENCODERS: dict[str, type[AudioEncoder]] = {
    "wav": WavEncoder,
    "pcm": PcmEncoder,
    "flac": FlacEncoder,
    "mp3": Mp3Encoder,
    "opus": OpusEncoder,
    "aac": AacEncoder,
}
SUPPORTED_FORMATS: tuple[str, ...] = tuple(_ENCODERS)
#: Formats that take an ``output_rate`` of their own.
RESAMPLED_FORMATS: tuple[str, ...] = ("pcm", "wav")


def make_encoder(fmt: str, sample_rate: int, *, buffered: bool = False, output_rate: int | None = None) -> AudioEncoder:
    """Return a fresh encoder for ``fmt`` taking samples at ``sample_rate`` Hz.

    ``output_rate`` (pcm and wav): the rate in the file, converted by :class:`Resampler`;
    None or ``sample_rate`` keeps the samples as they are.
    ``buffered=True`` holds a codec's whole output until ``finish()`` so that headers
    recording the length are complete (FLAC total samples, MP3 gapless tag); wav and pcm
    ignore it because their streamed form already decodes everywhere.
    Raises ``UnsupportedFormatError`` for unknown formats, or a rate the format cannot take.
    """
    if output_rate is not None and output_rate != sample_rate:
        if fmt not in RESAMPLED_FORMATS:
            raise UnsupportedFormatError(fmt, f"a sample rate of its own is for {' and '.join(RESAMPLED_FORMATS)}")
        return ResampledEncoder(make_encoder(fmt, output_rate), sample_rate)
    if fmt in UNSUPPORTED_FORMATS:
        raise UnsupportedFormatError(fmt, UNSUPPORTED_FORMATS[fmt])
    encoder_cls = _ENCODERS.get(fmt)
    if encoder_cls is None:
        raise UnsupportedFormatError(fmt, f"unknown format; supported: {', '.join(_ENCODERS)}")
    if issubclass(encoder_cls, (_SoundfileEncoder, _FfmpegEncoder)):
        return encoder_cls(sample_rate, buffered=buffered)
    return encoder_cls(sample_rate)


def iter_encoded(encoder: AudioEncoder, chunks: Iterable[np.ndarray]) -> Iterator[bytes]:
    """Yield the non-empty byte strings of a whole stream: header, chunks, finish."""
    head = encoder.header()
    if head:
        yield head
    for chunk in chunks:
        data = encoder.encode(chunk)
        if data:
            yield data
    tail = encoder.finish()
    if tail:
        yield tail
