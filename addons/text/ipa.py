"""IPA to espeak-ng's English phoneme mnemonics, for SSML ``<phoneme>`` and lexicons that give IPA.

Chorus voices are trained on espeak-ng's phoneme events, so a pronunciation written in IPA is
mapped to the mnemonics espeak-ng reads in ``[[...]]`` phoneme input; espeak-ng then gives the
voice's own symbols, and a symbol outside the voice's inventory is refused by the front-end.
"""

from __future__ import annotations

import re
import unicodedata

__all__ = ["ESPEAK_MNEMONICS", "ipa_to_espeak"]

# IPA (as English dictionaries write it) -> espeak-ng's English mnemonics. Longest match first.
_IPA: dict[str, str] = {
    # diphthongs and r-coloured vowels
    "eɪ": "eI", "aɪ": "aI", "ɔɪ": "OI", "aʊ": "aU", "oʊ": "oU", "əʊ": "oU", "ɪə": "i@", "ɪɹ": "i@",
    "ɛə": "e@", "eə": "e@", "ɛɹ": "e@", "ʊə": "U@", "ʊɹ": "U@", "ɑɹ": "A@", "ɑːɹ": "A@", "ɔɹ": "O@",
    "ɔːɹ": "O@", "oɹ": "o@", "aɪə": "aI@", "ɝ": "3:", "ɜː": "3:", "ɜ": "3:", "ɚ": "3",
    # vowels
    "iː": "i:", "i": "i", "ɪ": "I", "e": "E", "ɛ": "E", "æ": "a", "a": "a", "ɑː": "A:", "ɑ": "A:",
    "ɒ": "0", "ɔː": "O:", "ɔ": "O:", "o": "oU", "ʊ": "U", "uː": "u:", "u": "u:", "ʌ": "V", "ə": "@",
    "ᵻ": "I2", "ɨ": "I2", "ɐ": "a#", "ɘ": "@",
    # consonants
    "tʃ": "tS", "t͡ʃ": "tS", "dʒ": "dZ", "d͡ʒ": "dZ", "p": "p", "b": "b", "t": "t", "d": "d", "k": "k",
    "ɡ": "g", "g": "g", "f": "f", "v": "v", "θ": "T", "ð": "D", "s": "s", "z": "z", "ʃ": "S", "ʒ": "Z",
    "h": "h", "m": "m", "n": "n", "ŋ": "N", "l": "l", "ɫ": "l", "ɹ": "r", "r": "r", "ɾ": "t", "w": "w",
    "ʍ": "w", "j": "j", "ʔ": "?", "x": "x", "m̩": "m", "n̩": "n", "l̩": "@L",
}  # fmt: skip
_IPA_VOWELS = frozenset("iɪeɛæaɑɒɔoʊuʌəɚɝɜᵻɨɐɘ")
_IPA_IGNORED = frozenset(".‿ ̃ˑ|‖-\u0329\u032f\u0361")  # syllable breaks, ties, diacritics read as none
_IPA_STRESS = {"ˈ": "'", "'": "'", "ˌ": ","}
ESPEAK_MNEMONICS = re.compile(r"^[\x20-\x5a\x5c\x5e-\x7e]+$")  # printable ASCII, no [ or ]


def ipa_to_espeak(ipa: str) -> str:
    """IPA (English) as espeak-ng mnemonics, stress moved onto its syllable's vowel.

    Raises ``ValueError`` naming the first symbol it cannot map."""
    text = unicodedata.normalize("NFC", ipa.strip().strip("/[]"))
    out: list[str] = []
    stress = ""
    i = 0
    longest = max(len(k) for k in _IPA)
    while i < len(text):
        ch = text[i]
        if ch in _IPA_STRESS:
            stress = _IPA_STRESS[ch]
            i += 1
            continue
        if ch in _IPA_IGNORED or ch.isspace():
            i += 1
            continue
        for n in range(min(longest, len(text) - i), 0, -1):
            piece = text[i : i + n]
            if piece in _IPA:
                mnemonic = _IPA[piece]
                if stress and piece[0] in _IPA_VOWELS:
                    mnemonic, stress = stress + mnemonic, ""
                out.append(mnemonic)
                i += n
                if i < len(text) and text[i] == "ː":
                    i += 1  # length: espeak's English vowels carry their own
                break
        else:
            raise ValueError(f"IPA symbol {ch!r} (U+{ord(ch):04X}) has no English espeak-ng phoneme")
    if not out:
        raise ValueError("no phonemes")
    return "".join(out)
