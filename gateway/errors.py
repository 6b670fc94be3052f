"""The gateway's own errors: authentication, roles, rate limits, accounts and the
socket's channel replies. Like every error a caller can act on, they are
`LootifyError`s, so the HTTP and WebSocket error shapes come from `status` and `code`."""

from __future__ import annotations

from actors.errors import Conflict, LootifyError


class Unauthenticated(LootifyError):
    status = 401
    code = "unauthenticated"


class Forbidden(LootifyError):
    status = 403
    code = "forbidden"


class RateLimited(LootifyError):
    status = 429
    code = "rate_limited"


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
