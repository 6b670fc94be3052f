"""The bet lane's route is the app's first: Serve names each HTTP request's route, for
its metrics, by trying the app's routes in order, and a bet is the request players
send most."""

from __future__ import annotations

from types import SimpleNamespace

from starlette.routing import Match

from gateway.app import create_app


def _scope(method: str, path: str) -> dict:
    return {"type": "http", "method": method, "path": path, "root_path": ""}


def test_the_first_route_takes_a_bet_and_nothing_else() -> None:
    # Building the app touches none of the context's services.
    settings = SimpleNamespace(currency="BRL", max_body_bytes=1024, request_deadline_s=1.0,
                               cors_origins=())
    app = create_app(SimpleNamespace(subscriber=None, metrics=None, on_drain=[],
                                     settings=settings))
    first = app.routes[0]
    assert first.matches(_scope("POST", "/api/bets"))[0] is Match.FULL
    assert first.matches(_scope("GET", "/api/bets"))[0] is Match.PARTIAL  # listing: the router's
    assert first.matches(_scope("DELETE", "/api/bets/b1"))[0] is Match.NONE
    assert app.openapi()["paths"]["/api/bets"]["post"]["parameters"][0]["name"] == "Idempotency-Key"
