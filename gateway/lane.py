"""The bet lane: `POST /api/bets`, dispatched without FastAPI's router.

A bet is the request players send most, and FastAPI's per-request machinery (walking
the routes, the included routers' contexts, the exception-handling stack) cost more
of a replica's CPU than the bet's own work. The lane sends that one request straight
to its endpoint, `routes.betting.create_bet`, which is also the route OpenAPI
documents, and answers its errors with the app's own exception handlers. Every other
request goes on to the app. It sits inside the body limit and the request metrics,
so those see bets as before.
"""

from __future__ import annotations

import inspect

from fastapi import FastAPI, Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from .routes.betting import create_bet

PATH = "/api/bets"
# What the router would put in the scope: request metrics label a request by its route.
ROUTE = Route(PATH, create_bet, methods=["POST"])


def install(app: FastAPI) -> None:
    """The lane in front of `app`'s router, and its route first among the app's routes.
    Serve names each HTTP request's route, for its metrics, by trying them in order
    (`get_asgi_route_name`): behind all the others a bet cost ~35 µs of the replica's
    CPU there, one match with the lane's route first. The router never dispatches that
    route (the lane answers every bet first), and OpenAPI leaves out plain Starlette
    routes: `routes.betting` documents the bet."""
    app.router.routes.insert(0, ROUTE)
    app.add_middleware(BetLane, fastapi=app)


class BetLane:
    def __init__(self, app: ASGIApp, fastapi: FastAPI) -> None:
        self.app = app
        self.handlers = fastapi.exception_handlers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        scope["route"] = ROUTE
        request = Request(scope, receive)
        response: Response
        try:
            response = await create_bet(request)
        except Exception as exc:
            response = await self._handle(request, exc)
        await response(scope, receive, send)

    async def _handle(self, request: Request, exc: Exception) -> Response:
        """The answer the app's handler for `exc` gives, as the router would (most
        specific type first)."""
        for cls in type(exc).__mro__:
            handler = self.handlers.get(cls)
            if handler is not None:
                answer = handler(request, exc)
                return await answer if inspect.isawaitable(answer) else answer
        raise exc
