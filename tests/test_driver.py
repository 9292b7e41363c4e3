"""The one synthesis driver (``addons.engine.driver.speak``) over ports of its own: look-ahead, resume
after a lost stage, pauses and gain boundaries, the synchronous adapter. The bundled voices' paths
(in process, HTTP, WebSocket) are checked against each other elsewhere; here the rules themselves."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from addons.engine.driver import (
    MAX_RESUMES,
    NoSpeakableText,
    Ports,
    Resumes,
    Say,
    Spoken,
    StageLost,
    UtterancePlan,
    run_sync,
    speak,
)
from addons.text.frontend import LexiconError
from addons.text.ssml import Pause, SSMLError, pause_frames
from blocks import MelSettings

MEL = MelSettings(sample_rate=8000, n_fft=64, hop_length=4, win_length=64, n_mels=2, f_max=4000.0)
CHUNK = 3  # frames per decoded chunk


class Lost(Exception):
    """What a fake remote call raises when its replica is gone."""


@dataclass
class FakeEncode:
    """A sentence's words become its "phonemes"; a word "nothing" is unspeakable, "badword" a lexicon error."""

    calls: list[str] = field(default_factory=list)

    async def encode(self, sentence: str, options: Any) -> list[dict[str, np.ndarray]]:
        self.calls.append(sentence)
        if "badword" in sentence:
            raise LexiconError("badword: not in the inventory")
        if sentence.strip(" .").lower() == "nothing":
            return []
        await asyncio.sleep(0)
        words = sentence.strip(" .").split()
        return [{"ids": np.asarray([len(w) for w in words], dtype=np.int64)}]


@dataclass
class FakeDecode:
    """Two frames per id; ``lose_at``: the frame counts (in calls made) at which the stream is lost."""

    lose_at: list[int] = field(default_factory=list)
    fail_at: int | None = None  # frames after which the stream fails for good (not a loss)
    made: int = 0

    async def decode(
        self, features: dict[str, np.ndarray], options: Any, deadline: float | None, first_frames: int, aligned: bool
    ) -> AsyncIterator[tuple[np.ndarray, np.ndarray | None]]:
        ids = np.repeat(features["ids"], 2)
        mel = np.stack([ids * float(options.get("speed", 1.0)), np.arange(len(ids))], axis=1).astype(np.float32)
        for start in range(0, len(mel), CHUNK):
            self.made += 1
            if self.lose_at and self.made == self.lose_at[0]:
                self.lose_at.pop(0)
                raise StageLost("decoder", Lost("decoder replica gone"))
            if self.fail_at is not None and self.made == self.fail_at:
                raise RuntimeError("decoder broke")
            await asyncio.sleep(0)
            tokens = np.arange(start, min(start + CHUNK, len(mel))) // 2
            yield mel[start : start + CHUNK], tokens


@dataclass
class FakeWaveform:
    """Audio is each frame's values spread over the hop, held back one frame (a lookahead)."""

    streams: int = 0

    async def start(self) -> tuple[Any, int]:
        self.streams += 1
        return {"held": np.zeros((0, 2), np.float32)}, 1

    async def process(
        self, state: Any, mel: np.ndarray, options: Any, deadline: float | None
    ) -> tuple[np.ndarray, Any]:
        frames = np.concatenate([state["held"], mel])
        gain = 10 ** (float(options.get("gain_db", 0.0)) / 20)
        return self._audio(frames[:-1], gain), {"held": frames[-1:]}

    async def finish(self, state: Any, options: Any) -> np.ndarray:
        return self._audio(state["held"], 10 ** (float(options.get("gain_db", 0.0)) / 20))

    @staticmethod
    def _audio(frames: np.ndarray, gain: float) -> np.ndarray:
        return (np.repeat(frames.sum(axis=1), MEL.hop_length) * gain).astype(np.float32)


def ports(decode: FakeDecode | None = None, waveform: FakeWaveform | None = None) -> Ports:
    return Ports(FakeEncode(), decode or FakeDecode(), waveform or FakeWaveform(), MEL)


def said(plan: Any, ports: Ports, options: Any = None, **kwargs: Any) -> list[Spoken]:
    return list(run_sync(speak(plan, ports, options or {}, **kwargs)))


def audio(steps: list[Spoken]) -> np.ndarray:
    return np.concatenate([s.audio for s in steps])


TEXT = "One two three four. Five six seven. Eight nine ten eleven twelve."


def test_the_audio_is_every_frame_once_in_order() -> None:
    steps = said(UtterancePlan.of(TEXT, {}), ports(), with_mel=True)
    mel = np.concatenate([s.mel for s in steps if s.mel is not None])
    lengths = [len(w) for w in TEXT.replace(".", "").split()]
    assert np.array_equal(mel[:, 0], np.repeat(lengths, 2))
    assert audio(steps).size == len(mel) * MEL.hop_length
    assert [s.sentence for s in steps if s.mel is not None][-1] == 2


@pytest.mark.parametrize("ahead", [1, 2, 8])
def test_decoding_ahead_gives_the_same_steps(ahead: int) -> None:
    here = said(UtterancePlan.of(TEXT, {}), ports(), with_mel=True)
    there = said(UtterancePlan.of(TEXT, {}), ports(), with_mel=True, ahead=ahead)
    assert len(here) == len(there)
    for a, b in zip(here, there, strict=True):
        assert np.array_equal(a.audio, b.audio) and a.sentence == b.sentence
        assert (a.mel is not None and b.mel is not None and np.array_equal(a.mel, b.mel)) or a.mel is b.mel is None


@pytest.mark.parametrize("ahead", [0, 2])
def test_an_error_comes_after_the_audio_before_it(ahead: int) -> None:
    whole = audio(said(UtterancePlan.of(TEXT, {}), ports()))
    got: list[np.ndarray] = []
    with pytest.raises(RuntimeError, match="decoder broke"):
        for step in run_sync(speak(UtterancePlan.of(TEXT, {}), ports(FakeDecode(fail_at=4)), {}, ahead=ahead)):
            got.append(step.audio)
    heard = np.concatenate(got)
    # the first sentence's 8 frames were decoded (the waveform holds one back), then the decoder broke
    assert heard.size == (8 - 1) * MEL.hop_length
    assert np.array_equal(heard, whole[: heard.size])


@pytest.mark.parametrize("lose_at", [[1], [2], [5], [2, 6, 7]])
def test_a_lost_decoder_is_resumed_and_the_audio_is_undisturbed(lose_at: list[int]) -> None:
    whole = said(UtterancePlan.of(TEXT, {}), ports(), with_mel=True)
    reported: list[str] = []
    resumes = Resumes(on_resume=reported.append)
    steps = said(UtterancePlan.of(TEXT, {}), ports(FakeDecode(lose_at=list(lose_at))), resumes=resumes, with_mel=True)
    assert np.array_equal(audio(steps), audio(whole))
    mel = [s.mel for s in steps if s.mel is not None]
    assert np.array_equal(np.concatenate(mel), np.concatenate([s.mel for s in whole if s.mel is not None]))
    assert reported == ["decoder"] * len(lose_at)


def test_past_the_budget_the_loss_is_raised() -> None:
    decode = FakeDecode(lose_at=list(range(1, 2 * MAX_RESUMES + 3, 2)))
    with pytest.raises(Lost):
        said(UtterancePlan.of(TEXT, {}), ports(decode))


def test_retry_repeats_a_stateless_call_until_the_budget_is_spent() -> None:
    tries = []

    async def flaky() -> str:
        tries.append(1)
        if len(tries) < 3:
            raise Lost("gone")
        return "done"

    resumes = Resumes()
    assert asyncio.run(resumes.retry("vocoder", (Lost,), flaky)) == "done"
    assert resumes.used == 2

    async def gone() -> str:
        raise Lost("gone for good")

    with pytest.raises(Lost, match="for good"):
        asyncio.run(Resumes().retry("vocoder", (Lost,), gone))


def test_a_pause_is_exact_silence_between_two_streams() -> None:
    waveform = FakeWaveform()
    plan = UtterancePlan(
        (*tuple(UtterancePlan.of("One two.", {}).items), Pause(100.0), *tuple(UtterancePlan.of("Three.", {}).items))
    )
    steps = said(plan, ports(waveform=waveform), with_mel=True)
    first = audio(said(UtterancePlan.of("One two.", {}), ports()))
    second = audio(said(UtterancePlan.of("Three.", {}), ports()))
    silence = pause_frames(100.0, MEL.sample_rate, MEL.hop_length) * MEL.hop_length
    assert np.array_equal(audio(steps), np.concatenate([first, np.zeros(silence, np.float32), second]))
    assert waveform.streams == 2  # finished before the pause, started after it


def test_a_change_of_gain_starts_a_new_stream_and_applies_to_its_part_only() -> None:
    waveform = FakeWaveform()
    plan = UtterancePlan.of('<speak>One two. <prosody volume="+6dB">Three four.</prosody> Five.</speak>', {})
    steps = said(plan, ports(waveform=waveform))
    parts = [audio(said(UtterancePlan.of(t, {}), ports())) for t in ("One two.", "Three four.", "Five.")]
    loud = parts[1] * np.float32(10 ** (6 / 20))
    np.testing.assert_allclose(audio(steps), np.concatenate([parts[0], loud, parts[2]]), rtol=1e-6)
    assert waveform.streams == 3


def test_nothing_speakable_and_bad_lexicon_are_text_errors() -> None:
    with pytest.raises(NoSpeakableText):
        said(UtterancePlan.of("Nothing.", {}), ports())
    with pytest.raises(NoSpeakableText):
        said([], ports())
    steps = said(UtterancePlan.of("Nothing. One two.", {}), ports())  # an empty sentence is passed over
    assert np.array_equal(audio(steps), audio(said(UtterancePlan.of("One two.", {}), ports())))
    with pytest.raises(LexiconError, match="badword"):
        said(UtterancePlan.of("One badword.", {}), ports())
    with pytest.raises(SSMLError, match="rate"):
        UtterancePlan.of('<speak><prosody rate="x-fast">One.</prosody></speak>', {"speed": 3.0})


def test_sentences_still_arriving_are_said_as_one_stream() -> None:
    async def written() -> AsyncIterator[str]:
        for sentence in ("One two three four.", "Five six seven.", "Eight nine ten eleven twelve."):
            await asyncio.sleep(0.001)
            yield sentence

    waveform = FakeWaveform()
    assert np.array_equal(
        audio(said(written(), ports(waveform=waveform))), audio(said(UtterancePlan.of(TEXT, {}), ports()))
    )
    assert waveform.streams == 1


def test_the_plan_keeps_each_parts_options_and_anchors() -> None:
    plan = UtterancePlan.of(
        '<speak>One. Two.<mark name="m"/><prosody rate="2">Three.</prosody></speak>', {"speed": 1.5}
    )
    one, two, three = plan.items
    assert isinstance(one, Say) and isinstance(two, Say) and isinstance(three, Say)
    assert [one.text, two.text, three.text] == ["One.", "Two.", "Three."]
    assert one.part is not None and two.part is None
    assert not one.ends_part and two.ends_part and three.part is not None and three.ends_part
    assert one.options == {"speed": 1.5} and three.options == {"speed": 3.0}
    assert [name for name, _, _ in one.part.marks] == ["m"]


def test_closing_early_stops_the_work_and_its_threads() -> None:
    before = set(threading.enumerate())

    def long_plan() -> Iterator[str]:
        while True:
            yield "One two three four five six."

    stream = run_sync(speak(long_plan(), ports(), {}, ahead=4))
    next(stream)
    stream.close()
    assert not set(threading.enumerate()) - before


def test_the_adapter_runs_inside_a_running_loop() -> None:
    async def inside() -> np.ndarray:
        return audio(said(UtterancePlan.of(TEXT, {}), ports()))

    assert np.array_equal(asyncio.run(inside()), audio(said(UtterancePlan.of(TEXT, {}), ports())))
