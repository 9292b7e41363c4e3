"""ctypes binding to libespeak-ng: teacher audio plus time-aligned phoneme events.

The shared library and its data come from the ``espeakng-loader`` wheel; nothing is
installed system-wide and no ``espeak-ng`` process is started.

What libespeak-ng does, as observed with espeakng-loader 0.2.4 (espeak-ng 1.52.0, en-us):

- Output is 16-bit mono at 22050 Hz; we return float32 in ``[-1, 1)``.
- Each phoneme event carries ``sample``: the offset in samples from the start of the
  ``espeak_Synth`` call (not of the callback chunk, not of the sentence). A phoneme lasts
  until the next event's sample. The first event may start up to ~50 ms in; the audio
  before it is digital silence. The last event is always a zero-length ``_`` whose sample
  equals the length of the audio.
- One call covers any number of sentences; samples keep counting across them.
- Names are espeak mnemonics with the stress mark folded in (``'oU`` primary, ``,eI``
  secondary, ``oU`` unstressed), at most 4 bytes in practice.
- Pauses are phonemes too; their names start with ``_`` (see ``is_pause``). The text
  always ends in a 154-sample ``_:`` (we do not ask for espeakENDPAUSE) and the zero-length
  ``_``. Inside the text, punctuation gives ``_:`` whose length depends on the mark (at the
  default rate about 150 ms for ``,``, 225 ms for ``;`` ``:`` ``...``, 300 ms for ``.``
  ``?`` ``!``; brackets, quotes and dashes give a pair of ~55 ms ``_:``), mostly followed
  by a short ``_`` (0-50 ms). ``_!`` (~25 ms) shows up before some words.
- Other voices may report zero-length language-switch markers such as ``(en)`` as
  phonemes (seen with ``fr`` on English words); en-us did not produce any.
- Only phoneme events are kept: word and sentence events mark text positions and do not
  fall on phoneme boundaries, and the other kinds carry no timing. Each phoneme event carries
  the 1-based character position of the word it was read from (``"$3.50"`` gives phonemes for
  "dollar three point five zero", all at the position of ``$``... or of its digits: always
  inside that whitespace-separated word).
- Text normalisation is espeak's own: "3" -> three, "Dr." -> doctor, "etc." -> etcetera,
  "$4.99" -> "dollar four point nine nine", emoji -> their names ("grinning face").
  Text that yields nothing but pauses ("", "...", "?") raises ValueError.
- Without intervention the same text gives slightly different audio on every call; see
  ``_CarriedState`` for why and how we make calls bit-identical.
"""

from __future__ import annotations

import ctypes
import functools
import re
import struct
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import espeakng_loader
import numpy as np

__all__ = ["Espeak", "IpaClause", "PhonemeEvent", "TeacherUtterance", "get_espeak", "is_pause"]

# Constants from speak_lib.h.
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_PHONEME_EVENTS = 0x0001
_POS_CHARACTER = 1
_PHONEME_INPUT = 0x100  # speak_lib.h espeakPHONEMES: "[[...]]" in the text is phoneme mnemonics
_CHARS_UTF8 = 1
_EVENT_LIST_TERMINATED = 0
_EVENT_PHONEME = 7
_EE_OK = 0
_PARAM_RATE = 1
_PHONEMES_IPA = 0x02  # espeak_TextToPhonemes phonememode: IPA instead of mnemonics
# Written between the phonemes of a word (phonememode bits 8-23); a control character, so it
# never occurs in a phoneme name.
_SEPARATOR = "\x1f"
_RATE_MINIMUM = 80
_RATE_NORMAL = 175
# speak_lib.h allows 450, but from 450 wpm up espeak-ng speeds the audio up with libsonic
# after the events are timed, so event samples stop matching the audio (observed).
_RATE_MAXIMUM = 449

# Length of the chunks handed to the callback, in ms. Chunking does not change the audio;
# longer chunks only mean fewer Python callbacks.
_BUFLENGTH_MS = 500


class _EventId(ctypes.Union):
    _fields_ = [
        ("number", ctypes.c_int),
        ("name", ctypes.c_char_p),
        # Raw bytes, not c_char: ctypes would cut a c_char array at the first NUL for us,
        # but a name that fills all 8 bytes has no NUL at all.
        ("string", ctypes.c_ubyte * 8),
    ]


class _Event(ctypes.Structure):
    """``espeak_EVENT``; natural alignment gives 40 bytes on 64-bit Linux, id at offset 32."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


@dataclass(frozen=True)
class PhonemeEvent:
    """One phoneme as espeak-ng reported it.

    ``name`` is the espeak mnemonic (stress mark included, e.g. ``'oU``); ``sample`` is the
    phoneme's start, in samples from the start of the synth call that produced it;
    ``text_position`` the 0-based character offset, in the text given, of the word it was read
    from (a pause: of the punctuation or word after it; -1 when espeak gave none).
    """

    name: str
    sample: int
    text_position: int = -1


@dataclass(frozen=True)
class TeacherUtterance:
    """Audio and phoneme timing from one synth call.

    ``audio`` is 1-D float32 in ``[-1, 1]`` at ``sample_rate`` Hz; every ``PhonemeEvent.sample``
    indexes into it (``0 <= sample <= len(audio)``, non-decreasing).
    """

    text: str
    audio: np.ndarray
    sample_rate: int
    phonemes: tuple[PhonemeEvent, ...]


@dataclass(frozen=True)
class IpaClause:
    """One clause of text as ``espeak_TextToPhonemes`` reads it.

    ``ipa`` is espeak's IPA for the clause, its words separated by single spaces (language
    switch flags such as ``(fr)`` included). ``terminator`` is the punctuation that ended the
    clause as Piper names it (one of ``. , ? ! : ;``, or ``""`` for none, an ellipsis or the
    end of the text); ``sentence_end`` whether espeak ends a sentence there. ``text[start:end]``
    is the part of the input the clause read (its terminator included, the whitespace after it
    not); consecutive clauses do not overlap.
    """

    ipa: str
    terminator: str
    sentence_end: bool
    start: int
    end: int


def is_pause(name: str) -> bool:
    """Whether a phoneme name is one of espeak's pauses (``_``, ``_:``, ``_!`` ...)."""
    return name.startswith("_")


def _decode_name(raw: bytes) -> str:
    # espeak copies the name into 8 bytes without clearing them: what follows the NUL is
    # left over from earlier names.
    return raw.split(b"\0", 1)[0].decode("utf-8")


# The clause type ReadClause gives to a clause-ending character, as Piper names it
# (espeakbridge keeps "." "?" "!" "," ":" ";" for the plain types and "" for any other):
# character -> (terminator, ends a sentence).
_CLAUSE_ENDS = {
    ".": (".", True),
    "?": ("?", True),
    "!": ("!", True),
    ",": (",", False),
    ":": (":", False),
    ";": (";", False),
    "\u061f": ("?", True),  # Arabic question mark
    "\u0964": ("", True),  # danda: a full stop that needs no space after it
    "\u3002": ("", True),  # ideographic full stop, likewise
    "\u3001": ("", False),  # ideographic comma
    # "Extended dashes" (en and em dash and kin) end a clause as a semicolon does.
    **dict.fromkeys("\u2013\u2014\u2e3a\u2e3b\ufe31\ufe32", (";", False)),
}
# An ellipsis ends a clause with a type Piper does not name, and no sentence.
_ELLIPSES = ("...", "\u2026", "\u22ee", "\u22ef", "\u22f0", "\u22f1")
# The IPA that espeak-ng 1.52.0 leaves out of espeak_TextToPhonemes, by mnemonic: ";" is the
# palatal off-glide that English appends to [i] and [I] before a vowel ("happy apples"); the
# espeak-ng that Piper's voices were trained with writes it as "ʲ".
_IPA_MISSING = {";": "\u02b2"}


def _clause_end(consumed: str, at_end: bool) -> tuple[str, bool]:
    """(terminator, sentence end) of a clause whose text is ``consumed``; ``at_end``: it reached the
    end of the text (a clause that ends without punctuation there still ends a sentence)."""
    text = consumed.rstrip()
    if text.endswith(_ELLIPSES):
        return "", False
    if text.endswith(("?", "!")):  # "?!" and "!!?" take the type of their first mark
        text = text.rstrip("?!") + text[len(text.rstrip("?!"))]
    if text and text[-1] in _CLAUSE_ENDS:
        return _CLAUSE_ENDS[text[-1]]
    return "", at_end


def _merge_ipa(ipa: str, mnemonics: str) -> str:
    """Separated IPA of a clause with the phonemes it lost restored from the same clause's
    separated mnemonics (see ``_IPA_MISSING``), separators removed. A word whose phonemes do not
    pair up (an IPA name that starts with a modifier letter gets no separator) stays as it is."""
    ipa_words, mnemonic_words = ipa.split(" "), mnemonics.split(" ")
    if len(ipa_words) != len(mnemonic_words):
        return ipa.replace(_SEPARATOR, "")
    merged = []
    for word, names in zip(ipa_words, mnemonic_words, strict=True):
        ipas, mnems = word.split(_SEPARATOR), names.split(_SEPARATOR)
        if len(ipas) == len(mnems):
            ipas = [p or _IPA_MISSING.get(m, "") for p, m in zip(ipas, mnems, strict=True)]
        merged.append("".join(ipas))
    return " ".join(merged)


# libespeak-ng is one global synthesizer: every call into it happens under this lock.
_LOCK = threading.Lock()


@dataclass
class _Sink:
    """What the callback collects during one synth call."""

    keep_audio: bool
    chunks: list[bytes] = field(default_factory=list)
    events: list[PhonemeEvent] = field(default_factory=list)
    error: BaseException | None = None


class _CarriedState:
    """Resets the wavegen statics that leak from one synth call into the next.

    wavegen.c keeps the pitch-flutter phase (``Flutter_ix``), the glottal-cycle counter that
    paces roughness modulation (``cycle_count``) and the anti-clipping gain (``agc``) in
    function-local statics that nothing resets. Left alone, the same text comes out a few
    samples longer or shorter on every call. There is no API for them, so we find them in
    the library's ELF symbol table and write back their load-time values before each call,
    which makes every call sound like the first one in a fresh process.
    """

    _NAMES = ("Flutter_ix", "cycle_count", "agc")

    def __init__(self, lib: ctypes.CDLL, path: str) -> None:
        self._patches: list[tuple[int, bytes]] = []
        try:
            patches = _locate_statics(lib, Path(path).read_bytes(), self._NAMES)
        except (OSError, ValueError, struct.error) as exc:
            warnings.warn(
                f"espeak: cannot reset wavegen state ({exc}); repeated texts will give slightly different audio",
                RuntimeWarning,
                stacklevel=2,
            )
            return
        self._patches = patches

    def reset(self) -> None:
        for address, initial in self._patches:
            ctypes.memmove(address, initial, len(initial))


def _locate_statics(lib: ctypes.CDLL, image: bytes, names: tuple[str, ...]) -> list[tuple[int, bytes]]:
    """(runtime address, load-time bytes) of each named function-local static.

    Must run before the first synth call: it checks that each static still holds its
    load-time value, which guards against writing through a wrong address.
    """
    sections, symbols = _elf_tables(image)
    if "espeak_Synth" not in symbols:
        raise ValueError("library has no symbol table")
    address = ctypes.cast(lib.espeak_Synth, ctypes.c_void_p).value or 0
    base = address - symbols["espeak_Synth"][0]
    if base <= 0 or base % 4096:
        raise ValueError("library load base is not page aligned")
    patches = []
    for name in names:
        # The compiler names a function-local static "name.<number>".
        found = [sym for key, sym in symbols.items() if re.fullmatch(rf"{name}\.\d+", key)]
        if len(found) != 1:
            raise ValueError(f"expected one static named {name}, found {len(found)}")
        value, size, shndx = found[0]
        initial = _initial_bytes(image, sections[shndx], value, size)
        if ctypes.string_at(base + value, size) != initial:
            raise ValueError(f"{name} does not hold its load-time value")
        patches.append((base + value, initial))
    return patches


# ELF64 section header fields we use: (sh_type, sh_addr, sh_offset, sh_size, sh_link).
_Section = tuple[int, int, int, int, int]
_SHT_SYMTAB = 2
_SHT_NOBITS = 8


def _elf_tables(image: bytes) -> tuple[list[_Section], dict[str, tuple[int, int, int]]]:
    """Sections and ``.symtab`` symbols (name -> value, size, section index) of an ELF64 image."""
    if image[:6] != b"\x7fELF\x02\x01":
        raise ValueError("not a little-endian ELF64 file")
    shoff = struct.unpack_from("<Q", image, 0x28)[0]
    shentsize, shnum = struct.unpack_from("<HH", image, 0x3A)
    sections: list[_Section] = []
    for i in range(shnum):
        sh = struct.unpack_from("<IIQQQQI", image, shoff + i * shentsize)
        sections.append((sh[1], sh[3], sh[4], sh[5], sh[6]))
    symbols: dict[str, tuple[int, int, int]] = {}
    for sh_type, _, offset, size, link in sections:
        if sh_type != _SHT_SYMTAB:  # stripped libraries have no .symtab
            continue
        strtab = sections[link][2]
        for pos in range(offset, offset + size, 24):
            st_name, _, _, shndx, value, st_size = struct.unpack_from("<IBBHQQ", image, pos)
            if 0 < shndx < len(sections):  # skip undefined and absolute symbols
                start = strtab + st_name
                name = image[start : image.index(b"\0", start)].decode()
                symbols[name] = (value, st_size, shndx)
    return sections, symbols


def _initial_bytes(image: bytes, section: _Section, value: int, size: int) -> bytes:
    sh_type, sh_addr, sh_offset, _, _ = section
    if sh_type == _SHT_NOBITS:  # .bss starts out zeroed
        return bytes(size)
    start = sh_offset + value - sh_addr
    return image[start : start + size]


class _Runtime:
    """The process's one initialized libespeak-ng. Every method expects ``_LOCK`` held."""

    def __init__(self) -> None:
        path = espeakng_loader.get_library_path()
        self.lib = ctypes.CDLL(path)
        _declare(self.lib)
        rate = self.lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS,
            _BUFLENGTH_MS,
            espeakng_loader.get_data_path().encode(),
            _INITIALIZE_PHONEME_EVENTS,
        )
        if rate <= 0:
            raise RuntimeError(f"espeak_Initialize failed ({rate})")
        self.sample_rate: int = rate
        # C keeps only the raw function pointer; this reference keeps the thunk alive.
        self._callback = _SynthCallback(self._on_synth)
        self.lib.espeak_SetSynthCallback(self._callback)
        self._carried = _CarriedState(self.lib, path)
        self._selected: tuple[str, int] | None = None
        self._sink: _Sink | None = None

    def select(self, voice: str, rate: int) -> None:
        """Make ``voice`` at ``rate`` words per minute current, if it is not already."""
        if self._selected == (voice, rate):
            return
        self._selected = None
        if self.lib.espeak_SetVoiceByName(voice.encode()) != _EE_OK:
            raise ValueError(f"espeak-ng has no voice named {voice!r}")
        if self.lib.espeak_SetParameter(_PARAM_RATE, rate, 0) != _EE_OK:
            raise ValueError(f"espeak-ng rejected rate {rate}")
        self._selected = (voice, rate)

    def synth(self, data: bytes, keep_audio: bool, phoneme_input: bool = False) -> _Sink:
        """Run one synchronous synth call on NUL-free UTF-8 ``data`` (``phoneme_input``: ``[[...]]``
        in it is read as espeak phoneme mnemonics)."""
        self._carried.reset()
        sink = self._sink = _Sink(keep_audio)
        flags = _CHARS_UTF8 | (_PHONEME_INPUT if phoneme_input else 0)
        try:
            status = self.lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, flags, None, None)
        finally:
            self._sink = None
        if sink.error is not None:
            self.lib.espeak_Cancel()
            raise sink.error
        if status != _EE_OK:
            raise RuntimeError(f"espeak_Synth failed ({status})")
        return sink

    def text_to_phonemes(self, data: bytes, mode: int) -> list[tuple[str, int]]:
        """(phonemes, byte offset in ``data`` where espeak's pointer stopped) per clause of NUL-free
        UTF-8 ``data``, read to its end; the offset is ``len(data)`` after the last clause.

        Reading to the end matters: ReadClause keeps the character it looked ahead at in a static
        (``ungot_char``), and only the end of the text leaves that static empty for the next call.
        """
        buf = ctypes.create_string_buffer(data)
        base = ctypes.addressof(buf)
        pointer = ctypes.c_void_p(base)
        clauses: list[tuple[str, int]] = []
        while pointer.value and len(clauses) <= len(data):  # each clause reads at least one byte
            result = self.lib.espeak_TextToPhonemes(ctypes.byref(pointer), _CHARS_UTF8, mode)
            if result is None:  # the text could not be decoded
                break
            clauses.append((result.decode("utf-8", "replace"), pointer.value - base if pointer.value else len(data)))
        return clauses

    def _on_synth(self, wav: ctypes._Pointer, numsamples: int, events: ctypes._Pointer) -> int:
        # ctypes prints and swallows exceptions raised in callbacks, so hand them over to
        # synth() and ask espeak to abort (return 1).
        sink = self._sink
        if sink is None or not events:  # neither happens in synchronous mode
            return 1
        try:
            if sink.keep_audio and wav and numsamples > 0:
                sink.chunks.append(ctypes.string_at(wav, numsamples * 2))
            i = 0
            while events[i].type != _EVENT_LIST_TERMINATED:
                event = events[i]
                if event.type == _EVENT_PHONEME:
                    name = _decode_name(bytes(event.id.string))
                    sink.events.append(PhonemeEvent(name, event.sample, event.text_position - 1))
                i += 1
        except BaseException as exc:  # re-raised by synth()
            sink.error = exc
            return 1
        return 0


def _declare(lib: ctypes.CDLL) -> None:
    """Argument and result types of the functions we call (defaults would truncate pointers)."""
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_Initialize.restype = ctypes.c_int
    lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
    lib.espeak_SetSynthCallback.restype = None
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetVoiceByName.restype = ctypes.c_int
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_SetParameter.restype = ctypes.c_int
    lib.espeak_Cancel.argtypes = []
    lib.espeak_Cancel.restype = ctypes.c_int
    lib.espeak_Synth.argtypes = [
        ctypes.c_char_p,  # text
        ctypes.c_size_t,  # size in bytes, NUL included
        ctypes.c_uint,  # position
        ctypes.c_int,  # position_type
        ctypes.c_uint,  # end_position
        ctypes.c_uint,  # flags
        ctypes.POINTER(ctypes.c_uint),  # unique_identifier
        ctypes.c_void_p,  # user_data
    ]
    lib.espeak_Synth.restype = ctypes.c_int
    lib.espeak_TextToPhonemes.argtypes = [
        ctypes.POINTER(ctypes.c_void_p),  # const void **textptr: advanced past the clause read, NULL at the end
        ctypes.c_int,  # textmode (espeakCHARS_*)
        ctypes.c_int,  # phonememode: bit 1 IPA, bits 8-23 a separator between phonemes
    ]
    lib.espeak_TextToPhonemes.restype = ctypes.c_char_p


@functools.cache
def _runtime() -> _Runtime:
    """The initialized library; espeak_Initialize may run only once per process.

    Always called with ``_LOCK`` held, so two threads cannot both initialize.
    """
    return _Runtime()


def _encode(text: str) -> bytes:
    if "\0" in text:
        raise ValueError("text must not contain NUL characters")
    return text.encode("utf-8")


class Espeak:
    """An espeak-ng voice. Instances are cheap; they share the process's one synthesizer.

    ``rate`` is the speaking rate in words per minute (80-449; None means espeak's 175).
    ``voice`` is an espeak-ng voice name such as ``en-us``, ``en`` (British) or ``en-us+m3``.
    """

    def __init__(self, voice: str = "en-us", rate: int | None = None) -> None:
        if rate is not None and not _RATE_MINIMUM <= rate <= _RATE_MAXIMUM:
            raise ValueError(f"rate must be {_RATE_MINIMUM}-{_RATE_MAXIMUM} wpm, got {rate}")
        self.voice = voice
        self.rate = _RATE_NORMAL if rate is None else rate
        with _LOCK:
            _runtime().select(self.voice, self.rate)  # fail here on an unknown voice

    def __repr__(self) -> str:
        return f"Espeak(voice={self.voice!r}, rate={self.rate})"

    @property
    def sample_rate(self) -> int:
        """Output sample rate in Hz (22050 for espeak-ng)."""
        with _LOCK:
            return _runtime().sample_rate

    def synthesize(self, text: str) -> TeacherUtterance:
        """Audio and phoneme events of ``text`` from one synth call.

        Raises ValueError when ``text`` yields no phonemes besides pauses.
        """
        sink = self._run(text, keep_audio=True)
        pcm = np.frombuffer(b"".join(sink.chunks), dtype="<i2")
        audio = pcm.astype(np.float32) / np.float32(32768.0)
        return TeacherUtterance(text, audio, self.sample_rate, tuple(sink.events))

    def phonemize(self, text: str) -> list[str]:
        """Phoneme names of ``text``, in order: ``synthesize(text)``'s events, audio dropped.

        Raises ValueError when ``text`` yields no phonemes besides pauses.
        """
        return [event.name for event in self._run(text, keep_audio=False).events]

    def phonemize_aligned(self, text: str, phoneme_input: bool = False) -> list[PhonemeEvent]:
        """``phonemize`` with each phoneme's ``text_position`` (its word's offset in ``text``);
        ``phoneme_input``: ``[[...]]`` in ``text`` gives those phoneme mnemonics as they are."""
        return list(self._run(text, keep_audio=False, phoneme_input=phoneme_input).events)

    def clauses_ipa(self, text: str) -> list[IpaClause]:
        """``text`` as espeak-ng's IPA, clause by clause, the way Piper reads it
        (``espeak_TextToPhonemes`` in IPA mode), with each clause's punctuation and span.

        The whole of ``text`` is read in one go under the library lock, so calls never disturb
        each other. ``[[`` is read as two brackets, never as phoneme input. Raises ValueError on
        NUL characters.
        """
        data = _encode(text.replace("[[", "[ "))  # same length; brackets are silent
        separator = ord(_SEPARATOR) << 8
        with _LOCK:
            runtime = _runtime()
            runtime.select(self.voice, self.rate)
            ipa = runtime.text_to_phonemes(data, _PHONEMES_IPA | separator)
            mnemonics = runtime.text_to_phonemes(data, separator)
        if len(ipa) != len(mnemonics):  # cannot happen: the same text read the same way
            raise RuntimeError("espeak-ng read the text into different clauses in IPA and mnemonic modes")
        return _clauses(text, data, ipa, mnemonics)

    def _run(self, text: str, keep_audio: bool, phoneme_input: bool = False) -> _Sink:
        data = _encode(text)
        with _LOCK:
            runtime = _runtime()
            runtime.select(self.voice, self.rate)
            sink = runtime.synth(data, keep_audio, phoneme_input)
        if all(is_pause(event.name) for event in sink.events):
            # espeak still emits pause events ("_:", "_") for empty or punctuation-only text.
            raise ValueError(f"espeak-ng produced no phonemes (only pauses) for {text!r}")
        return sink


def _clauses(text: str, data: bytes, ipa: list[tuple[str, int]], mnemonics: list[tuple[str, int]]) -> list[IpaClause]:
    """``IpaClause``s from the two readings of ``data`` (``text`` encoded)."""
    char_at = [0] * (len(data) + 1)  # byte offset -> index of the character it belongs to
    at = 0
    for i, ch in enumerate(text):
        size = len(ch.encode("utf-8"))
        char_at[at : at + size] = [i] * size
        at += size
    char_at[len(data)] = len(text)
    clauses = []
    start = 0
    for index, ((phonemes, stop), (names, _)) in enumerate(zip(ipa, mnemonics, strict=True)):
        at_end = index == len(ipa) - 1
        # Where a clause ends, ReadClause has already read the next character and kept it
        # for the next clause (the first letter of the next word, or a closing quote), even
        # when that character was the text's last.
        end = len(text) if at_end else max(start, char_at[stop] - 1)
        consumed = text[start:end]
        end = start + len(consumed.rstrip())
        terminator, sentence_end = _clause_end(consumed, at_end)
        clauses.append(IpaClause(_merge_ipa(phonemes, names), terminator, sentence_end, start, end))
        start = end
        while start < len(text) and text[start].isspace():
            start += 1
    return clauses


_instances: dict[str, Espeak] = {}
_instances_lock = threading.Lock()


def get_espeak(voice: str = "en-us") -> Espeak:
    """The process-wide ``Espeak`` for ``voice`` at the default rate."""
    with _instances_lock:
        if voice not in _instances:
            _instances[voice] = Espeak(voice)
        return _instances[voice]
