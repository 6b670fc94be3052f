"""The project's exceptions: one small hierarchy, each carrying its wire code.

Every error a caller can act on is a `LootifyError`; the gateway turns `status`
and `code` into the HTTP/WebSocket error shape, so no handler maps exceptions by
hand. Errors cross Ray process boundaries, so they pickle by their arguments.
"""

from __future__ import annotations


class LootifyError(Exception):
    status = 400
    code = "bad_request"

    def __init__(self, message: str = "", **details: object) -> None:
        super().__init__(message or self.code.replace("_", " "))
        self.message = message or self.code.replace("_", " ")
        self.details = details

    def __reduce__(self):  # keep details across pickling (Ray ships errors between processes)
        return (_rebuild, (type(self), self.message, self.details))

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


def _rebuild(cls: type[LootifyError], message: str, details: dict) -> LootifyError:
    return cls(message, **details)


class InvalidInput(LootifyError):
    """Malformed arguments: nothing was changed."""

    status = 422
    code = "invalid_input"


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


class Unauthenticated(LootifyError):
    status = 401
    code = "unauthenticated"


class Forbidden(LootifyError):
    status = 403
    code = "forbidden"


class RateLimited(LootifyError):
    status = 429
    code = "rate_limited"


class Unavailable(LootifyError):
    """A dependency (a host actor, PostgreSQL) did not answer in time. The operation
    may or may not have happened: retry it with the same reference id."""

    status = 503
    code = "unavailable"


class EntityCrashed(LootifyError):
    """The entity's handler raised; the entity is rebuilt from PostgreSQL and the
    operation did not happen."""

    status = 500
    code = "entity_crashed"


class EmailTaken(Conflict):
    """Registration with an email that already has an account."""

    code = "email_taken"


# The socket's own errors (Phoenix channel replies).


class UnmatchedTopic(LootifyError):
    status = 404
    code = "unmatched_topic"


class TooManyTopics(LootifyError):
    status = 429
    code = "too_many_topics"


class InternalError(LootifyError):
    status = 500
    code = "internal_error"
