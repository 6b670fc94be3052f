"""Money and odds at the boundary: integers of minor units inside, two-place
decimal strings outside."""

from __future__ import annotations

import re
from decimal import ROUND_DOWN, Decimal

from .errors import InvalidInput

MINOR_PER_UNIT = 100
# A sane ceiling for one amount: ten billion units; beyond it is a typo or an attack.
MAX_AMOUNT = 10_000_000_000 * MINOR_PER_UNIT
# ASCII digits only: `\d`, `str.strip` and `Decimal` all take other scripts' digits and
# spaces, which would read "５.００" (full-width) as 5.00.
_DECIMAL = re.compile(r"[0-9]{1,12}(\.[0-9]{1,2})?")
_ASCII_SPACE = " \t\r\n"


def parse_amount(text: object, *, field: str = "amount") -> int:
    """`"50.00"` -> 5000. Accepts strings (and ints for convenience); refuses floats,
    more than two places, zero and negatives."""
    if isinstance(text, bool) or not isinstance(text, (str, int)):
        raise InvalidInput(f'{field} must be a decimal string such as "50.00"', field=field)
    raw = str(text).strip(_ASCII_SPACE)
    if not _DECIMAL.fullmatch(raw):
        raise InvalidInput(
            f"{field} must be a positive decimal in ASCII digits with at most two places",
            field=field,
        )
    minor = int((Decimal(raw) * MINOR_PER_UNIT).to_integral_value())
    return check_amount(minor, field=field)


def check_amount(minor: object, *, field: str = "amount") -> int:
    if isinstance(minor, bool) or not isinstance(minor, int):
        raise InvalidInput(f"{field} must be an integer of minor units", field=field)
    if minor <= 0:
        raise InvalidInput(f"{field} must be positive", field=field)
    if minor > MAX_AMOUNT:
        raise InvalidInput(f"{field} is larger than allowed", field=field)
    return minor


def format_amount(minor: int) -> str:
    sign = "-" if minor < 0 else ""
    whole, cents = divmod(abs(minor), MINOR_PER_UNIT)
    return f"{sign}{whole}.{cents:02d}"


def parse_odds(text: object, *, field: str = "odds") -> Decimal:
    if isinstance(text, Decimal) and text.is_finite():
        text = str(text)
    if isinstance(text, bool) or not isinstance(text, (str, int)):
        raise InvalidInput(f'{field} must be a decimal string such as "2.10"', field=field)
    raw = str(text).strip(_ASCII_SPACE)
    if not _DECIMAL.fullmatch(raw):
        raise InvalidInput(
            f"{field} must be a decimal in ASCII digits with at most two places", field=field
        )
    odds = Decimal(raw).quantize(Decimal("0.01"))
    if odds < Decimal("1.01") or odds > Decimal("1000.00"):
        raise InvalidInput(f"{field} must lie between 1.01 and 1000.00", field=field)
    return odds


def format_odds(odds: Decimal) -> str:
    return str(odds.quantize(Decimal("0.01"), rounding=ROUND_DOWN))
