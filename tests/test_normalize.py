"""English normalization where espeak-ng misreads: money, times, dates, years, units, abbreviations."""

from __future__ import annotations

import pytest

import addons
from addons.text.normalize import cardinal, ordinal, spoken, year


@pytest.mark.parametrize(
    ("word", "previous", "said"),
    [
        ("$3.50", None, "three dollars and fifty cents"),
        ("$1", None, "one dollar"),
        ("$1,000", None, "one thousand dollars"),
        ("£5", None, "five pounds"),
        ("€20.01", None, "twenty euros and one cent"),
        ("$2.5m", None, "two point five million dollars"),
        ("10:00", None, "ten o'clock"),
        ("3:05pm", None, "three oh five p m"),
        ("25:00", None, None),
        ("2026-12-03", None, "December third, twenty twenty-six"),
        ("12/03/2026", None, "December third, twenty twenty-six"),
        ("5km", None, "five kilometers"),
        ("1kg", None, "one kilogram"),
        ("km", "5", "kilometers"),
        ("km", "the", None),
        ("20°C", None, "twenty degrees Celsius"),
        ("1999", "in", "nineteen ninety-nine"),
        ("1999", "sold", None),  # a count, not a year: espeak-ng's own reading
        ("2005", "since", "two thousand five"),
        ("e.g.", None, "for example"),
        ("Jan.", None, "January"),
        ("hello", None, None),
        ("42", None, None),  # espeak-ng reads plain numbers well
    ],
)
def test_spoken_forms(word: str, previous: str | None, said: str | None) -> None:
    assert spoken(word, previous) == said


def test_number_words() -> None:
    assert (
        cardinal(0) == "zero"
        and cardinal(1234567) == "one million two hundred thirty-four thousand five hundred sixty-seven"
    )
    assert [ordinal(n) for n in (1, 2, 3, 12, 22, 30, 103)] == [
        "first", "second", "third", "twelfth", "twenty-second", "thirtieth", "one hundred third"
    ]  # fmt: skip
    assert [year(n) for n in (1900, 1999, 2000, 2007, 2026)] == [
        "nineteen hundred", "nineteen ninety-nine", "two thousand", "two thousand seven", "twenty twenty-six"
    ]  # fmt: skip


@pytest.fixture(scope="module")
def voice() -> addons.Voice:
    return addons.load("chorus-fast")


@pytest.mark.slow
def test_a_voice_reads_the_spoken_form_and_marks_keep_the_written_word(voice: addons.Voice) -> None:
    def phonemes(text: str, **kw: bool) -> list[str]:
        return [p for s in voice.sentences(text, **kw) for p in s.phonemes]

    assert phonemes("It costs $3.50 at 10:00.") == phonemes("It costs three dollars and fifty cents at ten o'clock.")
    assert phonemes("It costs $3.50.", normalize=False) != phonemes("It costs three dollars and fifty cents.")
    words = [m.value for c in voice.stream("It costs $3.50, e.g. today.", marks=["word"]) for m in c.marks]
    assert words == ["It", "costs", "$3.50", "e.g", "today"]


def test_normalization_can_be_turned_off(voice: addons.Voice) -> None:
    plain = [p for s in voice.sentences("Run 5 km.", normalize=False) for p in s.phonemes]
    assert plain == [p for s in voice.frontend.sentences("Run 5 km.", normalize=False) for p in s.phonemes]
    assert plain != [p for s in voice.sentences("Run 5 km.") for p in s.phonemes]
