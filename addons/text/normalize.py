"""English text normalization where espeak-ng reads a word wrongly: money, times, dates, years
in context, units, and common abbreviations.

espeak-ng already reads plain numbers, ordinals ("22nd"), decimals and percentages well; it reads
"$3.50" as "dollar three point five zero", "10:00" as "ten zero zero", "5 km" as "five k m" and
"1999" as "nineteen hundred and ninety-nine". :func:`spoken` gives such a word the text to read
instead (as a lexicon alias would); the speech marks still name the word as written. A request
turns it off with ``normalize: false``.
"""

from __future__ import annotations

import re

__all__ = ["cardinal", "ordinal", "spoken"]

_ONES = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
]
_TENS = ["_", "_", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_SCALES = ((10**12, "trillion"), (10**9, "billion"), (10**6, "million"), (1000, "thousand"))
_ORDINAL_WORDS = {
    "one": "first",
    "two": "second",
    "three": "third",
    "five": "fifth",
    "eight": "eighth",
    "nine": "ninth",
    "twelve": "twelfth",
}
_MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]
_CURRENCY = {"$": ("dollar", "dollars", "cent", "cents"), "£": ("pound", "pounds", "penny", "pence"),
             "€": ("euro", "euros", "cent", "cents")}  # fmt: skip
_MAGNITUDE = {"k": "thousand", "m": "million", "bn": "billion", "b": "billion"}
_UNITS = {
    "km": ("kilometer", "kilometers"),
    "m": ("meter", "meters"),
    "cm": ("centimeter", "centimeters"),
    "mm": ("millimeter", "millimeters"),
    "kg": ("kilogram", "kilograms"),
    "g": ("gram", "grams"),
    "mg": ("milligram", "milligrams"),
    "lb": ("pound", "pounds"),
    "lbs": ("pound", "pounds"),
    "ft": ("foot", "feet"),
    "mi": ("mile", "miles"),
    "mph": ("mile per hour", "miles per hour"),
    "km/h": ("kilometer per hour", "kilometers per hour"),
    "kmh": ("kilometer per hour", "kilometers per hour"),
    "°c": ("degree Celsius", "degrees Celsius"),
    "°f": ("degree Fahrenheit", "degrees Fahrenheit"),
    "ml": ("milliliter", "milliliters"),
    "gb": ("gigabyte", "gigabytes"),
    "mb": ("megabyte", "megabytes"),
}
_ABBREVIATIONS = {
    "e.g.": "for example",
    "i.e.": "that is",
    "vs.": "versus",
    "approx.": "approximately",
    "dept.": "department",
    "jan.": "January",
    "feb.": "February",
    "mar.": "March",
    "apr.": "April",
    "aug.": "August",
    "sept.": "September",
    "sep.": "September",
    "oct.": "October",
    "nov.": "November",
    "dec.": "December",
    "mon.": "Monday",
    "tue.": "Tuesday",
    "tues.": "Tuesday",
    "wed.": "Wednesday",
    "thu.": "Thursday",
    "thurs.": "Thursday",
    "fri.": "Friday",
    "sat.": "Saturday",
    "sun.": "Sunday",
}
_YEAR_CUES = {"in", "since", "by", "from", "until", "till", "before", "after", "of", "year", "during", "circa"}
_MONEY = re.compile(r"^([$£€])(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d{1,2}))?(k|m|bn|b)?$", re.IGNORECASE)
_TIME = re.compile(r"^(\d{1,2}):(\d{2})(am|pm|a\.m\.|p\.m\.)?$", re.IGNORECASE)
_ISO_DATE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})$")
_US_DATE = re.compile(r"^(\d{1,2})/(\d{1,2})/(\d{4})$")
_NUMBER = re.compile(r"^\d+(?:\.\d+)?$")
_NUMBER_UNIT = re.compile(
    r"^(\d+(?:\.\d+)?)(km/h|kmh|mph|km|cm|mm|kg|mg|lbs|lb|ft|mi|ml|gb|mb|°c|°f|m|g)$", re.IGNORECASE
)
_YEAR = re.compile(r"^(1[1-9]\d\d|20\d\d)$")


def cardinal(n: int) -> str:
    """``n`` (0 or more) in words: 1234 -> "one thousand two hundred thirty-four"."""
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("-" + _ONES[n % 10] if n % 10 else "")
    if n < 1000:
        return _ONES[n // 100] + " hundred" + (" " + cardinal(n % 100) if n % 100 else "")
    for size, name in _SCALES:
        if n >= size:
            return cardinal(n // size) + " " + name + (" " + cardinal(n % size) if n % size else "")
    raise AssertionError("unreachable")


def ordinal(n: int) -> str:
    """``n`` as an ordinal: 3 -> "third", 22 -> "twenty-second"."""
    words = cardinal(n)
    head, sep, last = words.rpartition("-") if "-" in words.split(" ")[-1] else words.rpartition(" ")
    if last in _ORDINAL_WORDS:
        last = _ORDINAL_WORDS[last]
    elif last.endswith("y"):
        last = last[:-1] + "ieth"
    else:
        last += "th"
    return head + sep + last


def year(n: int) -> str:
    """A year as spoken: 1999 -> "nineteen ninety-nine", 2005 -> "two thousand five", 2026 -> "twenty twenty-six"."""
    if 2000 <= n < 2010:
        return cardinal(n)
    high, low = divmod(n, 100)
    if low == 0:
        return cardinal(high) + " hundred"
    return cardinal(high) + " " + ("oh " + cardinal(low) if low < 10 else cardinal(low))


def _number(text: str) -> str:
    whole, _, frac = text.replace(",", "").partition(".")
    words = cardinal(int(whole))
    return words + (" point " + " ".join(_ONES[int(d)] for d in frac) if frac else "")


def _money(match: re.Match[str]) -> str:
    symbol, whole, cents, magnitude = match.groups()
    one, many, cent, cents_name = _CURRENCY[symbol]
    amount = int(whole.replace(",", ""))
    if magnitude:
        number = _number(whole + ("." + cents if cents else ""))
        return f"{number} {_MAGNITUDE[magnitude.lower()]} {many}"
    out = f"{cardinal(amount)} {one if amount == 1 else many}"
    if cents and int(cents.ljust(2, "0")):
        c = int(cents.ljust(2, "0"))
        out += f" and {cardinal(c)} {cent if c == 1 else cents_name}"
    return out


def _time(match: re.Match[str]) -> str | None:
    hours, minutes, meridiem = int(match.group(1)), int(match.group(2)), match.group(3)
    if hours > 24 or minutes > 59:
        return None
    said = cardinal(hours)
    if minutes == 0:
        said += "" if meridiem else " o'clock"
    else:
        said += " " + ("oh " + cardinal(minutes) if minutes < 10 else cardinal(minutes))
    if meridiem:
        said += " a m" if meridiem.lower().startswith("a") else " p m"
    return said


def _date(y: int, m: int, d: int) -> str | None:
    if not (1 <= m <= 12 and 1 <= d <= 31):
        return None
    return f"{_MONTHS[m - 1]} {ordinal(d)}, {year(y)}"


def spoken(word: str, previous: str | None = None, following: str | None = None) -> str | None:
    """What to read for ``word`` (edge punctuation already stripped, except an abbreviation's
    full stop), given its neighbours; None when espeak-ng reads it well as it is."""
    low = word.lower()
    if low in _ABBREVIATIONS:
        return _ABBREVIATIONS[low]
    if match := _MONEY.match(word):
        return _money(match)
    if match := _TIME.match(word):
        return _time(match)
    if match := _ISO_DATE.match(word):
        return _date(int(match.group(1)), int(match.group(2)), int(match.group(3)))
    if match := _US_DATE.match(word):
        return _date(int(match.group(3)), int(match.group(1)), int(match.group(2)))
    if match := _NUMBER_UNIT.match(word):
        one, many = _UNITS[match.group(2).lower()]
        return f"{_number(match.group(1))} {one if match.group(1) == '1' else many}"
    if low in _UNITS and previous is not None and _NUMBER.match(previous.replace(",", "")):
        one, many = _UNITS[low]
        return one if previous == "1" else many
    if _YEAR.match(word) and previous is not None and (previous.lower() in _YEAR_CUES or previous in _MONTHS):
        return year(int(word))
    return None
