"""Nodes joining and leaving under load, in a `ray.cluster_utils.Cluster` of its own.

Run by `tests/test_nodes.py` in a process of its own (a test session's Ray is already
initialised): `python -m tests.node_scenario DSN` prints one JSON line of findings.
The coordinator follows the nodes (`LOOTIFY_HOSTS_PER_NODE=1`): hosts start on nodes
as they join and shards move to them; a node removed takes its hosts along, Ray
restarts them on the survivors and the coordinator retires the surplus.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import uuid
from typing import Any

# Before any import reads the settings: every process of the cluster inherits them.
os.environ.update(
    LOOTIFY_HOSTS_PER_NODE="1",
    LOOTIFY_WATCH_INTERVAL_S="1",
    LOOTIFY_HANDOFF_TIMEOUT_S="2",
    LOOTIFY_SHARDS="32",
    LOOTIFY_WALLET_HOSTS="1",
    LOOTIFY_MARKET_HOSTS="1",
    LOOTIFY_NAMESPACE=f"lootify-nodes-{os.getpid()}",
)

import ray  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from actors.client import AsyncLootify, LoopThread, Settings  # noqa: E402
from actors.errors import LootifyError  # noqa: E402
from actors.runtime import coordinator_handle  # noqa: E402

# Ray notices a dead node after health_check_period_ms x failure_threshold (defaults
# 3000 ms x 5, ~15 s, plus the restart of its actors elsewhere).
HEALTH_CHECKS = {"health_check_period_ms": 1000, "health_check_failure_threshold": 3}
USERS = 20


def wait_for(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}: {LAST_STATUS}")


LAST_STATUS: list[dict] = []


def settled(coordinator: Any, hosts: int, distinct_nodes: bool = False) -> dict | None:
    """The status once each kind keeps `hosts` hosts, all up, with balanced shards (and,
    with `distinct_nodes`, each on a node of its own)."""
    status = ray.get(coordinator.status.remote(), timeout=30)
    LAST_STATUS[:] = [status]
    for kind in ("wallets", "markets"):
        state = status["kinds"][kind]
        rows = [h for h in status["hosts"] if h["kind"] == kind]
        if state["target"] != hosts or not state["balanced"] or len(rows) != hosts:
            return None
        if not all(h["up"] for h in rows):
            return None
        if distinct_nodes and len({h["node"] for h in rows}) != hosts:
            return None
    return status


def main(dsn: str) -> dict[str, Any]:
    os.environ["DATABASE_URL"] = dsn
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "_system_config": HEALTH_CHECKS},
    )
    first = cluster.add_node(num_cpus=1)
    ray.init(
        address=cluster.address,
        namespace=os.environ["LOOTIFY_NAMESPACE"],
        log_to_driver=False,
        runtime_env={"env_vars": {k: v for k, v in os.environ.items()
                                  if k.startswith("LOOTIFY_") or k == "DATABASE_URL"}},
    )
    loop = LoopThread()
    settings = Settings()
    aio = loop.run(AsyncLootify.create(settings=settings))
    coordinator = coordinator_handle(settings.runtime)
    findings: dict[str, Any] = {}
    try:
        findings.update(run_scenario(cluster, first, aio, loop, coordinator))
    finally:
        ray.shutdown()
        cluster.shutdown()
    return findings


def run_scenario(cluster: Cluster, first: Any, aio: AsyncLootify, loop: LoopThread,
                 coordinator: Any) -> dict[str, Any]:
    from datetime import UTC, datetime, timedelta

    tomorrow = datetime.now(UTC) + timedelta(days=1)
    event = loop.run(aio.create_event("Home x Away", "football", tomorrow))
    market = loop.run(aio.create_market(
        event["id"], "Winner", "fixed_odds",
        [{"key": "home", "name": "Home", "odds": "2.00"},
         {"key": "away", "name": "Away", "odds": "2.00"}]))["id"]
    users = [str(uuid.uuid4()) for _ in range(USERS)]
    for user in users:
        loop.run(aio.wallet(user).deposit(1_000_000, "seed"))

    acked: dict[str, str] = {}  # reference or bet id -> "deposit" | "bet"
    failed: dict[str, tuple[str, str]] = {}
    stop = False

    async def worker(n: int) -> None:
        i = 0
        while not stop:
            i += 1
            user = users[(n + i) % USERS]
            try:
                if i % 2:
                    ref = f"dep-{n}-{i}"
                    await asyncio.wait_for(aio.wallet(user).deposit(10, ref), 60)
                    acked[ref] = "deposit"
                else:
                    bet_id = str(uuid.uuid4())
                    await asyncio.wait_for(aio.place_bet(
                        user, market, "home", 100, accept_odds="any", bet_id=bet_id), 60)
                    acked[bet_id] = "bet"
            except LootifyError as exc:
                failed[f"{n}-{i}"] = (type(exc).__name__, exc.message[:100])
            await asyncio.sleep(0.01)

    async def load() -> None:
        await asyncio.gather(*(worker(n) for n in range(6)))

    running = asyncio.run_coroutine_threadsafe(load(), loop.loop)
    findings: dict[str, Any] = {}
    wait_for(lambda: settled(coordinator, 1), 60, "one host of each kind")
    # Two nodes join: a host of each kind starts on each, shards move to them.
    started = time.monotonic()
    added = [cluster.add_node(num_cpus=1) for _ in range(2)]
    status = wait_for(
        lambda: settled(coordinator, 3, distinct_nodes=True), 120, "hosts on the new nodes"
    )
    findings["join_s"] = time.monotonic() - started
    findings["after_join"] = sorted((h["kind"], h["shards"]) for h in status["hosts"])
    # One leaves gracefully, another is killed.
    started = time.monotonic()
    cluster.remove_node(added[0], allow_graceful=True)
    wait_for(lambda: settled(coordinator, 2), 120, "the hosts after a graceful leave")
    findings["leave_s"] = time.monotonic() - started
    started = time.monotonic()
    cluster.remove_node(added[1], allow_graceful=False)
    # Serving again: a deposit to every user answers (their shards are all somewhere).
    probe = 0

    def serving() -> bool:
        nonlocal probe
        probe += 1
        futures = [asyncio.run_coroutine_threadsafe(
            aio.wallet(u).deposit(1, f"probe-{probe}-{u}"), loop.loop) for u in users]
        try:
            for future in futures:
                future.result(timeout=30)
        except (LootifyError, TimeoutError):
            return False
        for u in users:
            acked[f"probe-{probe}-{u}"] = "deposit"
        return True

    wait_for(serving, 120, "every wallet to answer after the kill")
    findings["kill_to_serving_s"] = time.monotonic() - started
    wait_for(lambda: settled(coordinator, 1), 120, "the hosts after the kill")
    findings["kill_to_settled_s"] = time.monotonic() - started
    stop = True
    running.result(timeout=120)
    findings["acked"] = acked
    findings["failed"] = failed
    findings["first_node_alive"] = first.node_id in {
        n["NodeID"] for n in ray.nodes() if n["Alive"]}
    return findings


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])))
