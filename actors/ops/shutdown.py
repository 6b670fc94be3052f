"""A graceful stop of the cluster (`make down`): the gateway, then the hosts.

First every Serve replica is told to drain (`DRAIN_TOPIC`, through PubSub): it tells
its WebSockets to reconnect (close code 1012, "service restart", on which phoenix.js
reconnects) and takes no new ones, so that sockets do not hold Serve's graceful
shutdown, which then lets the HTTP requests in flight finish (up to the deployment's
`graceful_shutdown_timeout_s`). Then each host is asked to `drain`: it admits nothing
more, commits what it has queued and in flight, and lets the money its sagas are
moving settle. Market hosts go first: a bet's saga moves money in the wallets, so the
wallets must still be there for it. Only then are the processes stopped, and nothing
acknowledged, or even admitted, is left half-way.
"""

from __future__ import annotations

import logging
from typing import Any

import ray
from ray import serve

from actors.pubsub.broker import NAME as PUBSUB_NAME
from actors.runtime.directory import host_name

log = logging.getLogger(__name__)

DRAIN_TOPIC = "gateway:drain"

# The order of the drain: callers before those they call.
KINDS = ("markets", "wallets")


def host_handles(namespace: str, kind: str) -> list[Any]:
    """The host actors of `kind` alive in `namespace` (by their names)."""
    prefix = host_name(kind, 0)[: -len("0")]
    names = sorted(
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["namespace"] == namespace and a["name"].startswith(prefix)
    )
    return [ray.get_actor(name, namespace=namespace) for name in names]


def drain_hosts(namespace: str, timeout_s: float) -> dict[str, int]:
    """Drain every host, kind by kind; `{kind: messages left unanswered}` (all 0 when
    every host finished within `timeout_s`). A host that does not answer in time is
    counted as one message left."""
    left: dict[str, int] = {}
    for kind in KINDS:
        refs = [h.drain.remote() for h in host_handles(namespace, kind)]
        if not refs:
            continue
        ready, pending = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
        left[kind] = len(pending)
        for ref in ready:
            try:
                left[kind] += ray.get(ref)
            except ray.exceptions.RayError:  # a host that died meanwhile drains no more
                left[kind] += 1
    return left


def tell_replicas_to_drain(namespace: str, timeout_s: float = 10.0) -> bool:
    """Publish `DRAIN_TOPIC` to every replica; False when PubSub is not there."""
    try:
        broker = ray.get_actor(PUBSUB_NAME, namespace=namespace)
        ray.get(broker.publish.remote([(DRAIN_TOPIC, "drain", {})]), timeout=timeout_s)
    except (ValueError, ray.exceptions.RayError) as exc:  # ValueError: no such actor
        log.warning("could not tell the replicas to drain: %r", exc)
        return False
    return True


def stop_gracefully(namespace: str, drain_timeout_s: float | None) -> dict[str, int]:
    """Inside `ray.init`: drain the replicas' sockets, shut Serve down (it waits for
    the requests in flight), then drain the hosts, unless `drain_timeout_s` is None
    (they keep running: Ray is not being stopped); returns `drain_hosts`'s answer."""
    tell_replicas_to_drain(namespace)
    serve.shutdown()
    return {} if drain_timeout_s is None else drain_hosts(namespace, drain_timeout_s)
