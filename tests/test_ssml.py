"""The SSML subset (addons/text/ssml.py): what each tag does to the audio and the marks, and what is refused."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

import addons
from addons.text.frontend import pause_mark
from addons.text.ipa import ipa_to_espeak
from addons.text.ssml import MAX_BREAK_MS, Part, Pause, SSMLError, parse, say_as
from blocks.tempo import MelTempo

MODELS = ["tiny-fast", "tiny-taco"]


@pytest.fixture(scope="module", params=MODELS)
def voice(request: pytest.FixtureRequest, fixture_dir: Path) -> addons.Voice:
    return addons.load(fixture_dir / request.param)


def _audio(voice: addons.Voice, text: str, **options: object) -> np.ndarray:
    return np.concatenate([c.samples for c in voice.stream(text, **options)])


def _words(voice: addons.Voice, text: str, **options: object) -> list[dict[str, object]]:
    return [m.as_dict() for c in voice.stream(text, marks=["word", "ssml"], **options) for m in c.marks]


# -- the audio ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_speak_root_alone_changes_nothing(voice: addons.Voice) -> None:
    text = "Plain words. Said the same way!"
    assert np.array_equal(_audio(voice, f"<speak>{text}</speak>"), _audio(voice, text))
    assert np.array_equal(_audio(voice, f"<speak>{text}</speak>", input_format="ssml"), _audio(voice, text))
    with pytest.raises(SSMLError, match="wrap it in <speak>"):
        next(voice.stream(text, input_format="ssml"))


@pytest.mark.parametrize("ms", [500.0, 1234.0])
@pytest.mark.parametrize(
    ("marked", "plain"),
    [
        ("Wait for it <break time='{ms}ms'/> now.", "Wait for it now."),  # inside a sentence
        ("First part.<break time='{ms}ms'/>Second part.", "First part. Second part."),  # between two
        ("Trailing words.<break time='{ms}ms'/>", "Trailing words."),  # after the last
    ],
)
@pytest.mark.slow
def test_a_break_adds_its_silence_within_a_frame(voice: addons.Voice, ms: float, marked: str, plain: str) -> None:
    """The words around a break are said as without it; its silence is the only audio added."""
    frame = voice.hop_length / voice.sample_rate
    doc = "<speak>" + marked.format(ms=f"{ms:g}") + "</speak>"
    chunks = list(voice.stream(doc, marks=["word"]))
    got = np.concatenate([c.samples for c in chunks])
    added = (got.size - _audio(voice, plain).size) / voice.sample_rate
    assert abs(added - ms / 1000) <= frame / 2
    words = [m for c in chunks for m in c.marks]
    gaps = [b.start_ms - a.end_ms for a, b in itertools.pairwise(words)]
    if len(words) > 2 and "Trailing" not in marked:
        assert max(gaps) >= ms - 1000 * frame  # the silence sits between two words
    quiet = np.abs(got) < 0.02
    longest = max(len(run) for run in "".join("q" if q else "." for q in quiet).split("."))
    window = voice.manifest.mel.n_fft / voice.sample_rate  # the vocoder blends its edges with the words
    assert longest / voice.sample_rate >= ms / 1000 - window


@pytest.mark.parametrize("ms", [500.0, 1234.0])
def test_a_break_between_parts_is_exact_zeros(voice: addons.Voice, ms: float) -> None:
    """Between sentences of their own (<s>), the vocoder's stream ends before the break and starts
    after it: the audio is each sentence said alone, and exact zeros between."""
    got = _audio(voice, f'<speak><s>First part.</s><break time="{ms:g}ms"/><s>Second part.</s></speak>')
    first, second = _audio(voice, "First part."), _audio(voice, "Second part.")
    silence = got.size - first.size - second.size
    assert abs(silence / voice.sample_rate * 1000 - ms) <= 1000 * voice.hop_length / voice.sample_rate / 2
    assert silence % voice.hop_length == 0
    assert np.array_equal(got, np.concatenate([first, np.zeros(silence, np.float32), second]))
    weak = _audio(voice, '<speak><s>First part.</s><break strength="weak"/><s>Second part.</s></speak>')
    strong = _audio(voice, '<speak><s>First part.</s><break strength="x-strong"/><s>Second part.</s></speak>')
    assert first.size + second.size < weak.size < strong.size


def test_mel_and_audio_stay_aligned_through_breaks(voice: addons.Voice) -> None:
    audio, mel = voice.synthesize('<speak>One.<break time="300ms"/>Two <break time="200ms"/> three.</speak>')
    assert audio.size == mel.shape[0] * voice.hop_length


def test_prosody_rate_shortens_the_words(voice: addons.Voice) -> None:
    text = "Speaking at another rate changes how long the words last."
    normal = _words(voice, f"<speak>{text}</speak>")
    fast = _words(voice, f'<speak><prosody rate="150%">{text}</prosody></speak>')
    slow = _words(voice, f'<speak><prosody rate="x-slow">{text}</prosody></speak>')
    assert [w["value"] for w in fast] == [w["value"] for w in normal] == [w["value"] for w in slow]

    def spoken(marks: list[dict[str, object]]) -> float:
        return float(sum(float(m["end_ms"]) - float(m["start_ms"]) for m in marks))  # type: ignore[arg-type]

    assert spoken(fast) < 0.8 * spoken(normal) and spoken(slow) > 1.5 * spoken(normal)
    # as a request's speed would: the rate multiplies it
    assert np.array_equal(
        _audio(voice, f'<speak><prosody rate="150%">{text}</prosody></speak>'), _audio(voice, text, speed=1.5)
    )


def test_prosody_volume_scales_only_its_part(voice: addons.Voice) -> None:
    quiet = "<speak>Quiet words here.</speak>"
    softer = '<speak><prosody volume="-6dB">Quiet words here.</prosody></speak>'
    a, b = _audio(voice, quiet), _audio(voice, softer)
    assert a.size == b.size
    ratio = float(np.sqrt(np.mean(b**2) / np.mean(a**2)))
    assert abs(ratio - 10 ** (-6 / 20)) < 1e-3
    mixed = _audio(voice, '<speak>Normal first.<prosody volume="x-soft">Then soft.</prosody></speak>')
    first, then = _audio(voice, "Normal first."), _audio(voice, "Then soft.") * 10 ** (-12 / 20)
    assert np.array_equal(mixed[: first.size], first)
    assert np.allclose(mixed[first.size :], then, atol=1e-6)


@pytest.mark.slow
def test_sub_say_as_and_phoneme_change_only_their_word(voice: addons.Voice) -> None:
    """Each says exactly what the same override in a lexicon says."""
    cases = [
        ('<sub alias="World Wide Web">WWW</sub>', {"alias": "World Wide Web"}),
        ('<say-as interpret-as="characters">NASA</say-as>', {"alias": "en ay ess ay"}),
        ('<say-as interpret-as="cardinal">1,234</say-as>', {"alias": "one thousand two hundred thirty-four"}),
        ('<phoneme alphabet="ipa" ph="ˈbɪɡ">tomato</phoneme>', {"phonemes": "b'Ig"}),
        ('<phoneme alphabet="x-espeak" ph="b\'Ig">tomato</phoneme>', {"phonemes": "b'Ig"}),
    ]
    for markup, entry in cases:
        lexicon = [{"grapheme": "Zorblax", "case_sensitive": True, **entry}]
        want = _audio(voice, "Before Zorblax after.", lexicon=lexicon)
        assert np.array_equal(_audio(voice, f"<speak>Before {markup} after.</speak>"), want), markup


def test_say_as_reads_numbers_dates_and_phones() -> None:
    assert say_as("ordinal", "23rd") == "twenty-third"
    assert say_as("digits", "2024") == "two zero two four"
    assert say_as("cardinal", "-12.5") == "minus twelve point five"
    assert say_as("telephone", "+1 (555) 123-4567") == "plus one, five five five, one two three, four five six seven"
    assert say_as("date", "2024-01-05", "ymd") == "January fifth, twenty twenty-four"
    assert say_as("date", "5/1/1999", "dmy") == "the fifth of January, nineteen ninety-nine"
    assert say_as("date", "March 3", "md") == "March third"
    assert say_as("characters", "A1") == "ay one"
    for kind, text, fmt in [
        ("cardinal", "ten", None),
        ("date", "13/45/2020", "mdy"),
        ("date", "2020", "mdy"),
        ("digits", "12a", None),
        ("unit", "5kg", None),
    ]:
        with pytest.raises(SSMLError):
            say_as(kind, text, fmt)


def test_ipa_maps_to_the_voice_inventory() -> None:
    assert ipa_to_espeak("/həˈloʊ/") == "h@l'oU"
    assert ipa_to_espeak("ˈθɪŋk") == "T'INk"
    assert ipa_to_espeak("dʒʌdʒ") == "dZVdZ"
    with pytest.raises(ValueError, match="U\\+0298"):
        ipa_to_espeak("ʘa")


# -- the marks ----------------------------------------------------------------------------------


def test_marks_name_written_words_at_their_place_in_the_document(voice: addons.Voice) -> None:
    doc = (
        '<speak><s>Call <sub alias="the World Wide Web">WWW</sub> &amp; '
        '<say-as interpret-as="date" format="mdy">1/5/2024</say-as>.</s>'
        '<break time="400ms"/><mark name="here"/>Then <phoneme ph="ˈbɪɡ">tomato</phoneme> '
        '<mark name="last"/>soup.<mark name="end"/></speak>'
    )
    marks = _words(voice, doc)
    words = [m for m in marks if m["type"] == "word"]
    written = ["Call", "WWW", "&", "1/5/2024", "Then", "tomato", "soup"]
    values = [w["value"] for w in words]
    assert values == [w for w in written if w in values]  # in order, once each (an untrained
    assert values[:5] == written[:5]  # attention model may skip the last word)
    for w in words:  # offsets into the document itself
        assert doc[w["text_start"] : w["text_end"]] == ("&amp;" if w["value"] == "&" else w["value"])  # type: ignore[misc]
    ssml = {m["value"]: m for m in marks if m["type"] == "ssml"}
    assert list(ssml) == ["here", "last", "end"]
    then = words[4]
    assert ssml["here"]["start_sample"] == then["start_sample"]
    if "soup" in values:
        assert ssml["last"]["start_sample"] == words[values.index("soup")]["start_sample"]
    total = sum(c.samples.size for c in voice.stream(doc))
    assert ssml["end"]["start_sample"] == total  # after the last word: where the stream ends
    assert doc[ssml["here"]["text_start"] :].startswith('<mark name="here"/>')  # type: ignore[misc]
    # the break's silence is in the marks' clock too
    assert then["start_ms"] - words[3]["end_ms"] >= 400 - 1000 * voice.hop_length / voice.sample_rate  # type: ignore[operator]


def test_a_mark_before_a_break_is_heard_where_the_break_starts(voice: addons.Voice) -> None:
    doc = '<speak>Hello.<mark name="gap"/><break time="1s"/>Again.</speak>'
    marks = [m.as_dict() for c in voice.stream(doc, marks=["ssml"]) for m in c.marks]
    assert [m["value"] for m in marks] == ["gap"]
    assert marks[0]["start_sample"] == _audio(voice, "Hello.").size


# -- what is refused ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("doc", "fragments"),
    [
        ("<speak>Hello <break time='1s'></speak>", ["malformed", "line 1"]),
        ("<speak>Hello", ["malformed"]),
        ("Hello <break/>", ["malformed"]),
        ("<speak>Hi <audio src='x.mp3'/></speak>", ["<audio>", "not supported", "column 11"]),
        ("<speak>\n<emphasis>Hi</emphasis></speak>", ["<emphasis>", "line 2, column 1"]),
        ("<speak><prosody pitch='high'>Hi</prosody></speak>", ["pitch", "<prosody>"]),
        ("<speak><prosody rate='quick'>Hi</prosody></speak>", ["quick", "rate"]),
        ("<speak><prosody rate='900%'>Hi</prosody></speak>", ["rate", "outside"]),
        ("<speak><break time='11s'/>Hi</speak>", ["<break", "longer than 10 s"]),
        ("<speak><break time='soon'/>Hi</speak>", ["<break time='soon'>"]),
        ("<speak><sub>Hi</sub></speak>", ["<sub>", "alias"]),
        ("<speak><say-as interpret-as='expletive'>darn</say-as></speak>", ["expletive", "not supported"]),
        ("<speak><phoneme alphabet='x-sampa' ph='h@loU'>hello</phoneme></speak>", ["x-sampa"]),
        ("<speak><phoneme ph='ʘ'>click</phoneme></speak>", ["ʘ", "<phoneme>"]),
        ("<speak><sub alias='x'><s>nested</s></sub></speak>", ["<sub> takes only text"]),
        ("<speak><mark/>Hi</speak>", ["<mark>", "name"]),
        ("<speak><break/></speak>", ["nothing to say"]),
        ("<speak>Hi &nbsp; there</speak>", ["undefined entity"]),
        ("<p>Hi</p>", ["root element must be <speak>"]),
        ("<?xml version='1.0'?><p>Hi</p>", ["root element must be <speak>"]),
    ],
)
def test_bad_markup_names_the_problem_and_where(doc: str, fragments: list[str]) -> None:
    with pytest.raises(SSMLError) as caught:
        parse(doc)
    for fragment in fragments:
        assert fragment in str(caught.value), str(caught.value)


ATTACKS = [
    # billion laughs: nested entity expansion
    '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;">'
    '<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;">]><speak>&lol3;</speak>',
    # an external entity (a local file)
    '<!DOCTYPE speak [<!ENTITY xxe SYSTEM "file:///etc/passwd">]><speak>&xxe;</speak>',
    # an external DTD
    '<!DOCTYPE speak SYSTEM "http://example.com/evil.dtd"><speak>Hi</speak>',
    # a parameter entity
    '<!DOCTYPE speak [<!ENTITY % p SYSTEM "file:///etc/hostname"> %p;]><speak>Hi</speak>',
]


@pytest.mark.parametrize("doc", ATTACKS)
def test_dtds_and_entities_are_refused_before_they_are_read(doc: str, voice: addons.Voice) -> None:
    with pytest.raises(SSMLError, match=r"DTD|document type"):
        parse(doc)
    with pytest.raises(addons.TextError):
        next(voice.stream(doc))


def test_a_rate_past_the_speed_range_is_refused_before_any_audio(voice: addons.Voice) -> None:
    with pytest.raises(SSMLError, match=r"outside 0\.25 to 4"):
        next(voice.stream('<speak><prosody rate="300%">Too fast.</prosody></speak>', speed=2.0))


def test_the_script_keeps_settings_and_boundaries() -> None:
    script = parse(
        '<speak><p><s>One</s><s>two <prosody rate="slow" volume="loud">three</prosody></s></p>'
        '<break strength="none"/>four<break time="2s"/></speak>'
    )
    parts = [(item.text.strip(), item.rate, item.volume_db) for item in script if isinstance(item, Part)]
    assert parts[:3] == [("One", 1.0, 0.0), ("two", 1.0, 0.0), ("three", 0.75, 6.0)]
    assert parts[3][0].split() == ["four", pause_mark(2000)]  # a break after words: a pause mark in them
    assert not any(isinstance(item, Pause) for item in script)
    opening = parse('<speak><break time="300ms"/>Hi</speak>')  # before any words: a pause of its own
    assert isinstance(opening[0], Pause) and opening[0].ms == 300.0
    assert MAX_BREAK_MS == 10_000.0


# -- the time stretch behind an attention decoder's speed -----------------------------------------


@pytest.mark.parametrize("speed", [0.5, 0.8, 1.5, 2.7])
def test_mel_tempo_chunked_equals_whole(speed: float) -> None:
    gen = np.random.default_rng(1)
    mel = gen.standard_normal((57, 6)).astype(np.float32)
    tokens = np.arange(57)
    whole = MelTempo(speed)
    a, ta = whole.push(mel, tokens)
    b, tb = whole.finish()
    want, want_tokens = np.concatenate([a, b]), np.concatenate([ta, tb])  # type: ignore[list-item]
    assert len(want) == int(np.ceil(57 / speed))
    for _ in range(4):
        cuts = sorted(gen.choice(np.arange(1, 57), size=5, replace=False))
        tempo, outs, toks = MelTempo(speed), [], []
        for x, y in zip([0, *cuts], [*cuts, 57], strict=True):
            out, tok = tempo.push(mel[x:y], tokens[x:y])
            outs.append(out)
            toks.append(tok)
        out, tok = tempo.finish()
        assert np.array_equal(np.concatenate([*outs, out]), want)
        assert np.array_equal(np.concatenate([*toks, tok]), want_tokens)
