"""Which address the per-IP limits count: the peer's, unless the peer is a trusted
proxy, and then the entry that proxy added to X-Forwarded-For, never the client's own."""

from __future__ import annotations

import ipaddress
from types import SimpleNamespace

import pytest
from starlette.requests import Request

from gateway.deps import client_ip
from gateway.settings import GatewaySettings

PROXY = "127.0.0.1"


def _request(peer: str, *forwarded_for: str, trusted: str = "127.0.0.1/32") -> Request:
    settings = GatewaySettings(trusted_proxies=tuple(
        ipaddress.ip_network(n) for n in trusted.split(",") if n))
    app = SimpleNamespace(state=SimpleNamespace(ctx=SimpleNamespace(settings=settings)))
    headers = [(b"x-forwarded-for", value.encode()) for value in forwarded_for]
    return Request({"type": "http", "method": "GET", "path": "/", "headers": headers,
                    "client": (peer, 40000), "app": app})


@pytest.mark.parametrize(("peer", "forwarded_for", "trusted", "counted"), [
    # The proxy's own entry is the last one, whatever the client sent before it.
    (PROXY, ["198.51.100.7"], "127.0.0.1/32", "198.51.100.7"),
    (PROXY, ["6.6.6.6, 198.51.100.7"], "127.0.0.1/32", "198.51.100.7"),
    # A proxy that adds its own header line leaves the client's line first.
    (PROXY, ["6.6.6.6", "198.51.100.7"], "127.0.0.1/32", "198.51.100.7"),
    # Not from the proxy: the header is the client's word, and does not count.
    ("198.51.100.9", ["6.6.6.6"], "127.0.0.1/32", "198.51.100.9"),
    # No proxy trusted (the default): never.
    (PROXY, ["6.6.6.6"], "", PROXY),
    (PROXY, [], "127.0.0.1/32", PROXY),
])
def test_the_counted_address(peer: str, forwarded_for: list[str], trusted: str,
                             counted: str) -> None:
    assert client_ip(_request(peer, *forwarded_for, trusted=trusted)) == counted
