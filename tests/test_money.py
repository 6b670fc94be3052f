"""Money and odds are read in ASCII digits only: every other script's digits, spaces
and decimal points are refused, never read as the number they look like."""

from __future__ import annotations

import sys
import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from actors.errors import InvalidInput
from actors.money import parse_amount, parse_odds

# Every decimal digit of Unicode outside ASCII, grouped by its zero (digits of one
# script are consecutive code points, zero first).
NON_ASCII_ZEROS = [
    chr(c) for c in range(sys.maxunicode + 1)
    if unicodedata.category(chr(c)) == "Nd" and unicodedata.digit(chr(c)) == 0 and c > 0x7F
]


def _spelled(text: str, zero: str) -> str:
    return "".join(chr(ord(zero) + int(ch)) if ch.isdigit() else ch for ch in text)


def test_every_script_has_its_digits_tried() -> None:
    assert "\uff10" in NON_ASCII_ZEROS and "\u0660" in NON_ASCII_ZEROS  # full-width, Arabic
    assert len(NON_ASCII_ZEROS) > 50


@pytest.mark.parametrize("zero", NON_ASCII_ZEROS, ids=lambda z: f"U+{ord(z):04X}")
def test_non_ascii_digits_are_refused(zero: str) -> None:
    for parse, text in ((parse_amount, "5.00"), (parse_amount, "5"), (parse_odds, "2.10")):
        assert parse(text) is not None  # the ASCII spelling is fine
        for spelled in (_spelled(text, zero), _spelled(text[0], zero) + text[1:]):
            with pytest.raises(InvalidInput):
                parse(spelled)


@pytest.mark.parametrize("text", [
    "５.00",           # the example: full-width five
    "5．00",           # full-width full stop
    "5\u066b00",       # Arabic decimal separator
    "\u00a05.00",      # no-break space
    "5.00\u3000",      # ideographic space
    "5.00\n\u2028",    # line separator
    "²",               # superscript two
    "5.0\u0660",       # one Arabic-Indic zero at the end
])
def test_non_ascii_spellings_are_refused(text: str) -> None:
    with pytest.raises(InvalidInput):
        parse_amount(text)
    with pytest.raises(InvalidInput):
        parse_odds(text)


def test_ascii_spaces_around_are_still_accepted() -> None:
    assert parse_amount(" 5.00\t") == 500
    assert str(parse_odds(" 2.1 ")) == "2.10"


@given(st.text(min_size=1, max_size=16).filter(lambda s: not s.isascii()))
def test_any_text_with_a_non_ascii_character_is_refused(text: str) -> None:
    with pytest.raises(InvalidInput):
        parse_amount(text)
    with pytest.raises(InvalidInput):
        parse_odds(text)
