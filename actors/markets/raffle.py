"""Raffles (rifa1122): a market `type: "raffle"` selling numbered tickets, each number
once; a lottery draw's last digits name the winning number, whose holder is paid the
prize. A ticket is a bet whose selection is its zero-padded number and whose amount is
the ticket price; the rest of the market's machinery (stakes, saga, refunds on void)
is the same as for any bet."""

from __future__ import annotations

from typing import Any

from actors.errors import InvalidInput, TicketTaken
from actors.money import check_amount

from .messages import CreateMarket, PlaceBet, RaffleTerms, check_name_and_closing

WIDTHS = {100: 2, 1000: 3, 10000: 4}  # ticket count -> digits of a number
DEFAULT_RESULT_GRACE_S = 3 * 86_400


class Raffle:
    """A raffle's terms and who holds which number (the accepted tickets)."""

    __slots__ = ("terms", "holders")

    def __init__(self, terms: RaffleTerms) -> None:
        self.terms = terms
        self.holders: dict[str, str] = {}  # number -> bet id

    @property
    def width(self) -> int:
        return WIDTHS[self.terms.tickets]

    def check(self, msg: PlaceBet) -> None:
        """Refuse a ticket of the wrong shape (422) or a number sold already (409)."""
        number = msg.selection
        if len(number) != self.width or not number.isascii() or not number.isdigit():
            raise InvalidInput(
                f"a ticket is a number of {self.width} digits, such as {'7'.zfill(self.width)}",
                field="selection",
            )
        if msg.amount != self.terms.ticket_price:
            raise InvalidInput(
                f"a ticket costs {self.terms.ticket_price}", field="amount"
            )
        if number in self.holders:
            raise TicketTaken(f"number {number} is sold")

    def winning_number(self, draw: str) -> str:
        if not draw.isascii() or not draw.isdigit() or len(draw) < self.width:
            raise InvalidInput(
                f"a draw is a number of at least {self.width} digits", field="draw"
            )
        return draw[-self.width :]

    def to_json(self) -> dict[str, Any]:
        return {"model": "raffle", **self.terms._asdict()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Raffle:
        return cls(RaffleTerms(*(data[f] for f in RaffleTerms._fields)))

    def view(self, status: str, winner: str | None) -> dict[str, Any]:
        return {
            **self.terms._asdict(),
            "sold": len(self.holders),
            # Settled on a number nobody bought: the sales stay with the house.
            "house_keeps_sales": status == "settled" and winner not in self.holders,
        }


def new_raffle_message(
    event_id: str,
    name: object,
    tickets: object,
    ticket_price: int,
    prize: int,
    lottery: object,
    result_grace_s: object,
    *,
    closes_at: float | None,
    in_play: bool = False,
    now: float | None = None,
) -> CreateMarket:
    """Validate an operator's raffle into the entity's create message."""
    check_name_and_closing(name, closes_at, now)
    assert isinstance(name, str)
    if tickets not in WIDTHS:
        raise InvalidInput("tickets must be 100, 1000 or 10000", field="tickets")
    price = check_amount(ticket_price, field="ticket_price")
    award = check_amount(prize, field="prize")
    if lottery is not None and (not isinstance(lottery, str) or not 0 < len(lottery) <= 64):
        raise InvalidInput("lottery must be a name of 1-64 characters", field="lottery")
    grace = DEFAULT_RESULT_GRACE_S if result_grace_s is None else result_grace_s
    if not isinstance(grace, int) or not 0 <= grace <= 30 * 86_400:
        raise InvalidInput("result_grace_s must lie in [0, 30 days]", field="result_grace_s")
    return CreateMarket(
        event_id, name.strip(), "raffle", (), 0, price, price, award, None, closes_at,
        bool(in_play), RaffleTerms(int(tickets), price, award, lottery, grace),
    )
