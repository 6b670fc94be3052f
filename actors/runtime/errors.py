"""The runtime's errors, the root of the project's one small hierarchy.

Every error a caller can act on is a `LootifyError`; the gateway turns `status`
and `code` into the HTTP/WebSocket error shape, so no handler maps exceptions by
hand. Errors cross Ray process boundaries, so they pickle by their arguments.
The domains' errors (`actors.errors`) and the gateway's (`gateway.errors`) derive
from these.
"""

from __future__ import annotations

from typing import Any


class LootifyError(Exception):
    status = 400
    code = "bad_request"

    def __init__(self, message: str = "", **details: object) -> None:
        super().__init__(message or self.code.replace("_", " "))
        self.message = message or self.code.replace("_", " ")
        self.details = details

    def __reduce__(self) -> tuple[Any, ...]:  # Ray ships errors between processes
        return (_rebuild, (type(self), self.message, self.details))

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


def _rebuild(cls: type[LootifyError], message: str, details: dict[str, object]) -> LootifyError:
    return cls(message, **details)


class InvalidInput(LootifyError):
    """Malformed arguments: nothing was changed."""

    status = 422
    code = "invalid_input"


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


class WrongHost(LootifyError):
    """The shard moved: the caller refreshes its directory and resends."""

    status = 503
    code = "wrong_host"
