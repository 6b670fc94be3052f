"""The runtime's settings, read from the environment once, when a process builds them.

Every process of the cluster (driver, host actors, Serve replicas) reads the same
variables, so a setting changed before `make up` reaches all of them; hosts get the
settings of the process that created them as arguments.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def env_float(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


@dataclass(frozen=True)
class BreakerSettings:
    """The circuit breaker in front of PostgreSQL (`actors.runtime.breaker`)."""

    # Failures in a row that open the circuit.
    failures: int = 3
    # A statement in flight longer than this opens the circuit while it hangs.
    slow_s: float = 2.0
    # How long the circuit stays open before the first probe, and at most.
    open_s: float = 0.5
    max_open_s: float = 2.0

    @classmethod
    def from_env(cls) -> BreakerSettings:
        return cls(
            failures=env_int("LOOTIFY_BREAKER_FAILURES", cls.failures),
            slow_s=env_float("LOOTIFY_BREAKER_SLOW_S", cls.slow_s),
            open_s=env_float("LOOTIFY_BREAKER_OPEN_S", cls.open_s),
            max_open_s=env_float("LOOTIFY_BREAKER_MAX_OPEN_S", cls.max_open_s),
        )


@dataclass(frozen=True)
class RuntimeSettings:
    namespace: str = field(default_factory=lambda: os.environ.get("LOOTIFY_NAMESPACE", "lootify"))
    # Logical shards outnumber hosts so that hosts can be added by moving shards.
    shards: int = field(default_factory=lambda: env_int("LOOTIFY_SHARDS", 256))
    idle_seconds: float = field(default_factory=lambda: env_float("LOOTIFY_IDLE_SECONDS", 600.0))
    # Calls a router keeps under way to one host; messages beyond them wait and
    # travel together in the next call.
    calls_in_flight: int = field(default_factory=lambda: env_int("LOOTIFY_CALLS_IN_FLIGHT", 1))
    batch_max: int = field(default_factory=lambda: env_int("LOOTIFY_BATCH_MAX", 1000))
    # Servers' routers send their batches over direct links to the hosts (`link`),
    # and through Ray only while no link is up; "off": always through Ray.
    direct_calls: bool = field(
        default_factory=lambda: os.environ.get("LOOTIFY_DIRECT_CALLS", "on") != "off"
    )
    call_deadline_s: float = field(
        default_factory=lambda: env_float("LOOTIFY_CALL_DEADLINE_S", 15.0)
    )
    # Placement (the coordinator). A hand-off waits this long for the owner to let go
    # (Akka's handoff-timeout); past it the move goes on, and fencing refuses whatever
    # the old owner still tries to commit.
    handoff_timeout_s: float = field(
        default_factory=lambda: env_float("LOOTIFY_HANDOFF_TIMEOUT_S", 10.0)
    )
    # A rebalance round moves at most this many shards, and at most this share of them
    # (Akka's absolute and relative limits).
    rebalance_max_shards: int = field(
        default_factory=lambda: env_int("LOOTIFY_REBALANCE_MAX_SHARDS", 20)
    )
    rebalance_max_share: float = field(
        default_factory=lambda: env_float("LOOTIFY_REBALANCE_MAX_SHARE", 0.1)
    )
    # How often the coordinator looks at the nodes of the cluster.
    watch_interval_s: float = field(
        default_factory=lambda: env_float("LOOTIFY_WATCH_INTERVAL_S", 5.0)
    )
    # Hosts of each kind per node with CPUs: 0 keeps the host counts of the settings
    # and of `lootify scale`; above 0 the coordinator follows the nodes as they come
    # and go.
    hosts_per_node: int = field(default_factory=lambda: env_int("LOOTIFY_HOSTS_PER_NODE", 0))
    # Hosts log every call with its request ids at DEBUG, and at WARNING a call slower
    # than `slow_call_s`.
    log_level: str = field(default_factory=lambda: os.environ.get("LOOTIFY_LOG_LEVEL", "INFO"))
    slow_call_s: float = field(default_factory=lambda: env_float("LOOTIFY_SLOW_CALL_S", 1.0))
    breaker: BreakerSettings = field(default_factory=lambda: BreakerSettings.from_env())
    # A shutting-down host waits this long for its queue and cycle in flight to commit.
    drain_timeout_s: float = field(
        default_factory=lambda: env_float("LOOTIFY_DRAIN_TIMEOUT_S", 10.0)
    )


@dataclass(frozen=True)
class KindSettings:
    """What the runtime needs of every kind's own settings: how many hosts it runs."""

    hosts: int = 1
