"""The domains' errors, on the runtime's root (`actors.runtime.errors`), re-exported
with it so that callers import every error they can act on from one place.
The gateway's own errors are in `gateway.errors`."""

from __future__ import annotations

from actors.runtime.errors import (
    EntityCrashed,
    InvalidInput,
    LootifyError,
    Unavailable,
    WrongHost,
)

__all__ = [
    "AlreadySettled",
    "Conflict",
    "EntityCrashed",
    "IdempotencyConflict",
    "IdempotencyInProgress",
    "InsufficientFunds",
    "InvalidInput",
    "InvalidTransition",
    "LootifyError",
    "MarketNotOpen",
    "NotFound",
    "OddsChanged",
    "PayoutTooHigh",
    "ReservationResolved",
    "StakeTooHigh",
    "StakeTooLow",
    "TicketTaken",
    "Unavailable",
    "WrongHost",
]


class StakeTooLow(InvalidInput):
    code = "stake_too_low"


class StakeTooHigh(InvalidInput):
    code = "stake_too_high"


class PayoutTooHigh(InvalidInput):
    code = "payout_too_high"


class NotFound(LootifyError):
    status = 404
    code = "not_found"


class Conflict(LootifyError):
    status = 409
    code = "conflict"


class InsufficientFunds(Conflict):
    code = "insufficient_funds"


class IdempotencyConflict(Conflict):
    """The reference id was used before with other arguments."""

    code = "idempotency_conflict"


class IdempotencyInProgress(Conflict):
    """The first request with this idempotency key or reference id is still running."""

    code = "idempotency_in_progress"


class ReservationResolved(Conflict):
    """The reservation was already committed, released or expired."""

    code = "reservation_resolved"


class MarketNotOpen(Conflict):
    code = "market_not_open"


class OddsChanged(Conflict):
    code = "odds_changed"


class AlreadySettled(Conflict):
    code = "already_settled"


class InvalidTransition(Conflict):
    code = "invalid_transition"


class TicketTaken(Conflict):
    """A raffle's number is sold once."""

    code = "ticket_taken"
