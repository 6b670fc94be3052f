"""`services.refuse_a_bet_key`: a payment with a bet's key is refused, and a payment
never waits on the markets for that check (test_http_model.py has the HTTP flows)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from actors.errors import IdempotencyConflict, InvalidInput, Unavailable
from gateway import services


class Markets:
    """Stands in for the context's cluster client: answers `bet_id_taken` as told."""

    def __init__(self, answer: Any) -> None:
        self.answer = answer

    async def aio(self) -> Markets:
        return self

    async def bet_id_taken(self, bet_id: str) -> bool:
        if self.answer == "hang":
            await asyncio.sleep(3600)
        if isinstance(self.answer, BaseException):
            raise self.answer
        return self.answer


def check(answer: Any) -> None:
    asyncio.run(services.refuse_a_bet_key(Markets(answer), "a-key-id"))  # type: ignore[arg-type]


def test_the_key_of_a_bet_is_refused():
    with pytest.raises(IdempotencyConflict):
        check(True)
    check(False)


@pytest.mark.parametrize("answer", [Unavailable("restarting"), ConnectionResetError(), "hang"])
def test_the_markets_unavailable_let_the_payment_go_on(answer, monkeypatch):
    monkeypatch.setattr(services, "BET_KEY_CHECK_S", 0.05)
    check(answer)


def test_a_bug_is_not_taken_for_an_outage():
    with pytest.raises(InvalidInput):
        check(InvalidInput("bad id"))
