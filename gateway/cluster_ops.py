"""`lootify scale` and `lootify status`: the coordinator, driven by hand; and how
every command that needs the cluster joins it."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from typing import Any

import ray
from rich.console import Console
from rich.table import Table

from actors import settings as config
from actors.client import AsyncLootify, Settings
from actors.runtime import coordinator_handle

POLL_S = 0.5


def join_cluster(settings: Settings) -> None:
    """Join the Ray cluster (`RAY_ADDRESS`, else the head `make up` started), once."""
    if not ray.is_initialized():
        config.use_ray_token_auth()
        ray.init(
            address=config.ray_address(),
            namespace=settings.namespace,
            logging_level=logging.WARNING,
            log_to_driver=False,
        )


def _connect() -> Any:
    """The coordinator, with every kind registered (a coordinator that restarted has
    forgotten them until a router registers them again)."""
    settings = Settings()
    join_cluster(settings)
    asyncio.run(AsyncLootify.create(settings=settings))
    return coordinator_handle(settings.runtime)


def scale(targets: dict[str, int], timeout: float) -> int:
    if not targets:
        print("lootify: say --wallet-hosts, --market-hosts or both", file=sys.stderr)
        return 1
    if any(n < 1 for n in targets.values()):
        print("lootify: a kind needs at least one host", file=sys.stderr)
        return 1
    coordinator = _connect()
    started = time.monotonic()
    ray.get([coordinator.scale.remote(kind, n) for kind, n in targets.items()], timeout=60)
    last = ""
    while True:
        kinds = ray.get(coordinator.status.remote(), timeout=60)["kinds"]
        line = "  ".join(
            f"{kind}: {kinds[kind]['hosts']}/{n} hosts, "
            f"{kinds[kind]['shards_moved']} shards moved"
            f"{'' if kinds[kind]['balanced'] else ', moving'}"
            for kind, n in targets.items()
        )
        if line != last:
            print(f"[{time.monotonic() - started:6.1f}s] {line}", flush=True)
            last = line
        if all(kinds[kind]["balanced"] for kind in targets):
            print(f"done in {time.monotonic() - started:.1f}s")
            return 0
        if time.monotonic() - started > timeout:
            print(f"lootify: not balanced after {timeout:.0f}s", file=sys.stderr)
            return 1
        time.sleep(POLL_S)


def status(as_json: bool) -> int:
    report = ray.get(_connect().status.remote(), timeout=60)
    if as_json:
        print(json.dumps(report, indent=2))
        return 0
    console = Console()
    nodes = Table("node", "address", "state", "CPUs", title="nodes", title_justify="left")
    for node in report["nodes"]:
        nodes.add_row(node["node"][:12], node["address"], "alive" if node["alive"] else "dead",
                      str(node["cpus"]))
    hosts = Table("host", "node", "shards", "entities", "mailbox", title="hosts",
                  title_justify="left")
    for host in report["hosts"]:
        hosts.add_row(
            f"{host['kind']}-{host['index']}", (host["node"] or "?")[:12], str(host["shards"]),
            str(host["entities"]) if host["up"] else "down", str(host.get("mailbox", "-")),
        )
    console.print(nodes, hosts)
    console.print("epochs: " + ", ".join(f"{k} {e}" for k, e in report["epoch"].items()))
    return 0
