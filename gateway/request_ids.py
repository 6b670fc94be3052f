"""Every HTTP request's id, for its work: its log lines, and the messages routers send
for it, which the hosts log with their calls.

Serve gives every request an id before the app sees it: the client's `X-Request-ID`,
else a new one, put in the request's headers and returned in the response's (its
proxy and its direct ingress both do). This middleware only takes it from there.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from actors.runtime.logs import REQUEST_ID

HEADER = b"x-request-id"
# A client chooses it: keep log lines bounded.
MAX_LENGTH = 128


class RequestIds:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        given = next((v for k, v in scope.get("headers", ()) if k == HEADER), None)
        if given is None:
            await self.app(scope, receive, send)
            return
        token = REQUEST_ID.set(given[:MAX_LENGTH].decode(errors="replace"))
        try:
            await self.app(scope, receive, send)
        finally:
            REQUEST_ID.reset(token)
