"""The generic entity runtime: virtual actors (Orleans grains, Akka sharded
entities) hosted many to a Ray actor, persisted to PostgreSQL.

It knows no domain: kinds of entity subclass `EntityKind` and `register_kind`
themselves; callers reach them through a `Router`.
"""

from .breaker import Breaker, CircuitOpen, GuardedPool
from .commit import (
    HOLD_EPOCHS_SQL,
    Fence,
    Fenced,
    RetryCycle,
    StaleActivation,
    check_versioned_update,
    commit_checks,
    hold_epochs,
    retry_carefully_on_duplicate,
)
from .coordinator import Coordinator, Registration, coordinator_handle
from .directory import Placement, host_name
from .errors import EntityCrashed, InvalidInput, LootifyError, Unavailable, WrongHost
from .host import EntityHost, ignore_outcome, start_host
from .ids import canonical_id, new_id, random_uuids, shard_of
from .kind import Cycle, EntityKind, Op, kind_named, register_kind
from .liveness import is_actor_down
from .router import Router, connect_router
from .settings import BreakerSettings, KindSettings, RuntimeSettings
from .wire import wire_type

__all__ = [
    "HOLD_EPOCHS_SQL",
    "Breaker",
    "BreakerSettings",
    "CircuitOpen",
    "GuardedPool",
    "Fence",
    "Fenced",
    "commit_checks",
    "hold_epochs",
    "Coordinator",
    "Cycle",
    "EntityCrashed",
    "EntityHost",
    "EntityKind",
    "InvalidInput",
    "KindSettings",
    "LootifyError",
    "Op",
    "Placement",
    "Registration",
    "RetryCycle",
    "Router",
    "RuntimeSettings",
    "StaleActivation",
    "Unavailable",
    "WrongHost",
    "canonical_id",
    "check_versioned_update",
    "connect_router",
    "coordinator_handle",
    "host_name",
    "ignore_outcome",
    "is_actor_down",
    "kind_named",
    "new_id",
    "random_uuids",
    "register_kind",
    "retry_carefully_on_duplicate",
    "shard_of",
    "start_host",
    "wire_type",
]
