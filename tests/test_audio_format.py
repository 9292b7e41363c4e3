"""Streaming encoders: each format decodes back to the samples it was given, and
bytes leave the encoder before ``finish()`` (that is what makes a response stream)."""

from __future__ import annotations

import io
import struct
import wave

import numpy as np
import pytest
import soundfile as sf

from serve_app.audio_format import (
    SUPPORTED_FORMATS,
    UnsupportedFormatError,
    iter_encoded,
    make_encoder,
)

SR = 24000
MP3_FRAME = 1152  # the largest MPEG Layer III frame, in samples


def tone(seconds: float, sr: int = SR) -> np.ndarray:
    """A 220 Hz tone at half scale: easy to compare after lossless coding."""
    t = np.arange(int(seconds * sr)) / sr
    return (0.5 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def encode_chunked(fmt: str, x: np.ndarray, chunk: int = 2400, sr: int = SR, **kw: bool) -> tuple[bytes, int]:
    """Encode ``x`` in chunks; return all bytes and how many came before ``finish()``."""
    enc = make_encoder(fmt, sr, **kw)
    before = enc.header()
    for i in range(0, len(x), chunk):
        before += enc.encode(x[i : i + chunk])
    return before + enc.finish(), len(before)


def set_flac_total_samples(data: bytes, n: int) -> bytes:
    """Write ``n`` into STREAMINFO's 36-bit total-samples field (file bytes 18..25)."""
    (packed,) = struct.unpack(">Q", data[18:26])
    packed = (packed & ~((1 << 36) - 1)) | n
    return data[:18] + struct.pack(">Q", packed) + data[26:]


def test_wav_header_comes_first_and_declares_unknown_length() -> None:
    enc = make_encoder("wav", SR)
    head = enc.header()
    assert len(head) == 44 and head[:4] == b"RIFF" and head[8:16] == b"WAVEfmt "
    assert head[36:40] == b"data"
    assert struct.unpack("<I", head[4:8])[0] == 0xFFFFFFFF
    assert struct.unpack("<I", head[40:44])[0] == 0xFFFFFFFF
    assert enc.media_type == "audio/wav"


def test_wav_decodes_with_soundfile_and_wave() -> None:
    x = tone(1.0)
    data, _ = encode_chunked("wav", x)
    y, sr = sf.read(io.BytesIO(data), dtype="float32")
    assert sr == SR and len(y) == len(x)
    np.testing.assert_allclose(y, x, atol=1 / 32767)
    with wave.open(io.BytesIO(data)) as w:
        assert (w.getframerate(), w.getsampwidth(), w.getnchannels()) == (SR, 2, 1)
        # getnframes() reports the placeholder size; reading to EOF is what works.
        assert len(w.readframes(1 << 30)) == 2 * len(x)


def test_pcm_is_headerless_int16_little_endian() -> None:
    x = tone(0.5)
    data, _ = encode_chunked("pcm", x)
    y = np.frombuffer(data, dtype="<i2")
    assert len(y) == len(x)
    np.testing.assert_allclose(y / 32767.0, x, atol=1 / 32767)


def test_pcm_clips_out_of_range_samples() -> None:
    enc = make_encoder("pcm", SR)
    y = np.frombuffer(enc.encode(np.array([2.0, -2.0, 0.0], np.float32)), "<i2")
    assert y.tolist() == [32767, -32767, 0]


@pytest.mark.parametrize("fmt", ["flac", "mp3", "opus", "aac"])
def test_codecs_stream_before_finish(fmt: str) -> None:
    data, before = encode_chunked(fmt, tone(2.0))
    assert before > len(data) // 2, f"{fmt}: only {before} of {len(data)} bytes before finish"


def _decode(data: bytes) -> tuple[np.ndarray, int]:
    import av

    with av.open(io.BytesIO(data)) as f:
        frames = [fr.to_ndarray().reshape(-1) for fr in f.decode(audio=0)]
        rate = f.streams.audio[0].codec_context.sample_rate
    return np.concatenate(frames), rate


@pytest.mark.parametrize("sr", [24000, 22050, 16000, 44100])
def test_opus_round_trips_to_exact_duration(sr: int) -> None:
    x = tone(1.5, sr)
    data, _ = encode_chunked("opus", x, sr=sr)
    assert data[:4] == b"OggS" and b"OpusHead" in data[:64]
    y, rate = _decode(data)
    assert rate in (8000, 12000, 16000, 24000, 48000) and rate >= min(sr, 48000)
    assert len(y) == round(len(x) * rate / sr)  # pre-skip and end trim: the exact duration
    if sr == rate:  # the same rate: the tone comes back (lossy codec: loosely)
        assert abs(np.abs(y).max() - np.abs(x).max()) < 0.1


@pytest.mark.parametrize("sr", [24000, 22050])
def test_aac_is_adts_and_carries_the_audio(sr: int) -> None:
    x = tone(1.5, sr)
    data, _ = encode_chunked("aac", x, sr=sr)
    assert data[0] == 0xFF and data[1] & 0xF0 == 0xF0  # an ADTS sync word
    y, rate = _decode(data)
    assert rate == sr
    # ADTS cannot signal priming: up to two frames more than was encoded, never less.
    assert len(x) <= len(y) <= len(x) + 2 * 1024
    lag = int(np.argmax(np.correlate(y[: len(x)], x[:2048], "valid")[:2048]))
    assert np.corrcoef(y[lag : lag + len(x) - 2048], x[: len(x) - 2048])[0, 1] > 0.9


def test_mp3_streamed_length_is_close() -> None:
    x = tone(1.5)
    data, _ = encode_chunked("mp3", x)
    y, sr = sf.read(io.BytesIO(data))
    # No gapless tag on a stream: a silent first frame plus encoder delay and padding.
    assert sr == SR and len(x) <= len(y) <= len(x) + 4 * MP3_FRAME


def test_mp3_buffered_has_exact_length() -> None:
    x = tone(1.5)
    data, before = encode_chunked("mp3", x, buffered=True)
    assert before == 0
    assert len(sf.read(io.BytesIO(data))[0]) == len(x)


def test_flac_stream_is_complete_but_length_unknown() -> None:
    x = tone(1.5)
    data, _ = encode_chunked("flac", x)
    assert data[:4] == b"fLaC"
    assert sf.info(io.BytesIO(data)).frames > 2**62  # libsndfile's "unknown" length
    # Every frame is there: with the length filled in, soundfile reads it exactly.
    y, _ = sf.read(io.BytesIO(set_flac_total_samples(data, len(x))), dtype="float32")
    assert len(y) == len(x)
    np.testing.assert_allclose(y, x, atol=1 / 32767)


def test_flac_buffered_reads_with_soundfile() -> None:
    x = tone(1.5)
    data, before = encode_chunked("flac", x, buffered=True)
    assert before == 0
    y, _ = sf.read(io.BytesIO(data), dtype="float32")
    assert len(y) == len(x)


def test_iter_encoded_yields_only_non_empty_parts() -> None:
    chunks = [tone(0.1), np.zeros(0, np.float32), tone(0.1)]
    parts = list(iter_encoded(make_encoder("wav", SR), chunks))
    assert all(parts) and len(parts) == 3 and parts[0][:4] == b"RIFF"


@pytest.mark.parametrize(
    ("fmt", "sr", "match"),
    [("ogg", SR, "unknown format"), ("m4a", SR, "supported: wav, pcm, flac, mp3, opus, aac")],
)
def test_unsupported_formats_say_why(fmt: str, sr: int, match: str) -> None:
    with pytest.raises(UnsupportedFormatError, match=match):
        make_encoder(fmt, sr)


@pytest.mark.parametrize("fmt", SUPPORTED_FORMATS)
def test_rejects_multichannel_input(fmt: str) -> None:
    with pytest.raises(ValueError, match="1-D"):
        make_encoder(fmt, SR).encode(np.zeros((2, 10), np.float32))


def _resampled(x: np.ndarray, cuts: np.ndarray, fmt: str = "pcm", out: int = SR) -> tuple[bytes, int]:
    """``x`` at 22,050 Hz encoded as ``fmt`` at ``out`` Hz, fed in the pieces ``cuts`` makes."""
    enc = make_encoder(fmt, 22050, output_rate=out)
    data = enc.header() + b"".join(enc.encode(piece) for piece in np.split(x, cuts)) + enc.finish()
    return data, enc.output_rate


def test_resampled_pcm_in_chunks_equals_the_whole_and_keeps_the_duration() -> None:
    """OpenAI's pcm (24 kHz) from a 22,050 Hz voice: FFmpeg's resampler keeps its state across
    chunks, so any chunking gives the bytes of resampling the whole, and the tail is not lost."""
    x = tone(1.3, 22050)
    whole, rate = _resampled(x, np.array([], dtype=int))
    rng = np.random.default_rng(0)
    for cuts in (np.arange(1, x.size, 441), np.sort(rng.choice(x.size, 40, replace=False))):
        assert _resampled(x, cuts)[0] == whole
    assert rate == SR
    assert abs(len(whole) / 2 / SR - x.size / 22050) < 1 / SR  # played at 24 kHz, as long as the voice's
    got = np.frombuffer(whole, "<i2") / 32767
    want = tone(1.3, SR)[: got.size]
    assert np.abs(got[100:-100] - want[100:-100]).max() < 0.01  # the same tone, not a sped-up one


def test_resampled_wav_states_its_rate_and_other_formats_refuse_one() -> None:
    data, rate = _resampled(tone(0.5, 22050), np.array([1000]), "wav", 16000)
    with wave.open(io.BytesIO(data)) as w:
        assert w.getframerate() == rate == 16000
    assert make_encoder("pcm", 22050).output_rate == 22050
    assert make_encoder("opus", 22050).output_rate == 24000  # Opus's own resampling
    with pytest.raises(UnsupportedFormatError, match="pcm and wav"):
        make_encoder("mp3", 22050, output_rate=24000)
