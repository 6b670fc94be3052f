"""The chaos run's faults and how long the stack takes to get over each.

Kinds (`KINDS`): SIGKILL a wallet host, a market host (the one holding the most
entities), the PubSub broker, the shard coordinator or a Serve replica; remove a
worker node without warning and, once money flows again, add a new one; restart
PostgreSQL (fast and immediate shutdowns in turn); hang PostgreSQL (SIGSTOP of the
postmaster and its children for `HANG_S`, then SIGCONT).

Recovery is timed from the kill (or from PostgreSQL's return, for the two PostgreSQL
faults) until both the killed thing answers again and a probe round succeeds over
the gateway: a deposit for each probe player, a bet on every open market answered
(accepted or refused with a code), and a socket joined to a player's topic that is
pushed the balance of a deposit.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import psutil
import ray
from chaos_client import Phx
from chaos_load import Player, World, key
from chaos_stack import REPLICAS, Stack

KINDS = ("wallet_host", "market_host", "pubsub", "coordinator", "serve_replica", "node",
         "pg_restart", "pg_hang")
HANG_S = 5.0
RECOVERY_LIMIT_S = 120.0
PROBE_TIMEOUT_S = 5.0
PROBE_PLAYERS = 8


@dataclass
class Fault:
    kind: str
    at_s: float  # since the load started
    detail: str
    clock: str = field(default_factory=lambda: time.strftime("%H:%M:%S"))  # to match logs
    outage_s: float = 0.0
    recovery_s: float | None = None  # None: not serving again within RECOVERY_LIMIT_S


def _pid_of(handle: Any) -> Awaitable[int]:
    return handle.__ray_call__.remote(lambda _self: os.getpid())


class Injector:
    def __init__(self, stack: Stack, world: World, started: float) -> None:
        from actors.runtime.settings import RuntimeSettings

        self.stack = stack
        self.world = world
        self.started = started
        self.namespace = RuntimeSettings().namespace
        self.probes: list[Player] = []
        self.faults: list[Fault] = []
        self.pg_restarts = 0

    async def prepare(self) -> None:
        while len(self.probes) < PROBE_PLAYERS:
            player = await self.world.register("1000.00")
            if player is not None:
                self.probes.append(player)

    def _actor(self, name: str) -> Any:
        return ray.get_actor(name, namespace=self.namespace)

    async def inject(self, kind: str) -> Fault:
        fault = Fault(kind, time.monotonic() - self.started, "")
        check, since = await getattr(self, f"_{kind}")(fault)
        fault.recovery_s = await self.recovery(since, check)
        if kind == "node":  # the cluster is whole again for what follows
            await asyncio.to_thread(self.stack.add_worker)
        self.faults.append(fault)
        return fault

    # -- the faults: each returns (is the killed thing back?, when recovery starts) --

    async def _host(self, fault: Fault, kind: str) -> tuple[Callable, float]:
        from actors.runtime import host_name
        from actors.runtime.coordinator import COORDINATOR_NAME

        status = await asyncio.wait_for(self._actor(COORDINATOR_NAME).status.remote(), 30)
        rows = [h for h in status["hosts"] if h["kind"] == kind and h["up"]]
        victim = max(rows, key=lambda h: h["entities"] or 0)
        os.kill(victim["pid"], signal.SIGKILL)
        killed = time.monotonic()
        fault.detail = f"{kind}-host-{victim['index']} pid {victim['pid']}"
        handle = self._actor(host_name(kind, victim["index"]))

        async def back() -> bool:
            return await asyncio.wait_for(handle.pid.remote(), PROBE_TIMEOUT_S) != victim["pid"]

        return back, killed

    async def _wallet_host(self, fault: Fault) -> tuple[Callable, float]:
        return await self._host(fault, "wallets")

    async def _market_host(self, fault: Fault) -> tuple[Callable, float]:
        return await self._host(fault, "markets")

    async def _named(self, fault: Fault, name: str, answer: str) -> tuple[Callable, float]:
        handle = self._actor(name)
        pid = await asyncio.wait_for(_pid_of(handle), 30)
        os.kill(pid, signal.SIGKILL)
        fault.detail = f"{name} pid {pid}"

        async def back() -> bool:
            await asyncio.wait_for(getattr(handle, answer).remote(), PROBE_TIMEOUT_S)
            return True

        return back, time.monotonic()

    async def _pubsub(self, fault: Fault) -> tuple[Callable, float]:
        from actors.pubsub.broker import NAME

        return await self._named(fault, NAME, "ping")

    async def _coordinator(self, fault: Fault) -> tuple[Callable, float]:
        from actors.runtime.coordinator import COORDINATOR_NAME

        return await self._named(fault, COORDINATOR_NAME, "status")

    async def _serve_replica(self, fault: Fault) -> tuple[Callable, float]:
        from ray import serve
        from ray.serve._private.common import ReplicaState

        names = sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                       if a["name"].startswith("SERVE_REPLICA::"))
        name = names[len(self.faults) % len(names)]
        pid = await asyncio.wait_for(_pid_of(ray.get_actor(name, namespace="serve")), 30)
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        fault.detail = f"{name.split('#')[-1]} pid {pid}"

        def running() -> int:
            app = serve.status().applications["lootify"]
            return app.deployments["gateway"].replica_states.get(ReplicaState.RUNNING, 0)

        async def back() -> bool:
            return await asyncio.to_thread(running) >= REPLICAS

        return back, killed

    async def _node(self, fault: Fault) -> tuple[Callable, float]:
        node = self.stack.workers.pop(0)
        await asyncio.to_thread(self.stack.cluster.remove_node, node, allow_graceful=False)
        fault.detail = f"node {node.node_id[:8]} removed, a new one added after recovery"
        return _always, time.monotonic()

    async def _pg_restart(self, fault: Fault) -> tuple[Callable, float]:
        from actors.ops import pgserver

        began = time.monotonic()
        self.pg_restarts += 1
        if self.pg_restarts % 2:
            await asyncio.to_thread(pgserver.stop, self.stack.pg_dir)
            fault.detail = "fast shutdown, start"
        else:
            # SIGQUIT: immediate shutdown, as a crash; the start runs crash recovery.
            postmaster = psutil.Process(pgserver.pid(self.stack.pg_dir) or -1)
            postmaster.send_signal(signal.SIGQUIT)
            await asyncio.to_thread(postmaster.wait, 30)
            fault.detail = "immediate shutdown (crash recovery), start"
        await asyncio.to_thread(pgserver.start, self.stack.pg_dir)
        fault.outage_s = time.monotonic() - began
        return _always, time.monotonic()

    async def _pg_hang(self, fault: Fault) -> tuple[Callable, float]:
        began = time.monotonic()
        stopped = self.stack.pg_processes()
        try:
            for proc in stopped:
                proc.send_signal(signal.SIGSTOP)
            await asyncio.sleep(HANG_S)  # the fault itself: PostgreSQL hung this long
        finally:
            self.stack.resume_pg()
        fault.outage_s = time.monotonic() - began
        fault.detail = f"{len(stopped)} processes stopped"
        return _always, time.monotonic()

    # -- recovery ------------------------------------------------------------------

    async def recovery(self, since: float, back: Callable[[], Awaitable[bool]]) -> float | None:
        thing_back = False
        while time.monotonic() - since < RECOVERY_LIMIT_S:
            if not thing_back:
                try:
                    thing_back = await back()
                except Exception:  # noqa: BLE001 - not back yet, whatever it raised
                    thing_back = False
            if thing_back and await self.probe():
                return time.monotonic() - since
            await asyncio.sleep(0.25)
        return None

    async def probe(self) -> bool:
        markets = list(self.world.markets.values())
        bets = [(self.probes[i % len(self.probes)], m) for i, m in enumerate(markets)]
        results = await asyncio.gather(
            *(self._probe_deposit(p) for p in self.probes),
            *(self._probe_bet(p, m.id) for p, m in bets),
            self._probe_push(),
        )
        return all(results)

    async def _probe_deposit(self, player: Player) -> bool:
        k = key("pd")
        outcome, _ = await self.world.api.once(
            "POST", "/api/wallet/deposit", token=player.token, key=k,
            body={"amount": "0.01"}, timeout=PROBE_TIMEOUT_S)
        if outcome.ok:
            self.world.acked.deposits[f"http:deposit:{k}"] = (player.id, 1)
        return outcome.ok

    async def _probe_bet(self, player: Player, market: str) -> bool:
        outcome, _ = await self.world.api.once(
            "POST", "/api/bets", token=player.token, key=key("pb"),
            body={"market_id": market, "selection": "home", "amount": "1.00",
                  "accept_odds": "any"}, timeout=PROBE_TIMEOUT_S)
        if outcome.ok:
            self.world.record_bet(player, outcome.body["bet"])
        return outcome.answered

    async def _probe_push(self) -> bool:
        player = self.probes[0]
        try:
            socket = await asyncio.wait_for(Phx.open(self.world.url, player.token),
                                            PROBE_TIMEOUT_S)
        except Exception:  # noqa: BLE001 - refused or cut, whatever the way: not yet
            return False
        try:
            joined = await socket.push(f"user:{player.id}", "phx_join", {},
                                       timeout=PROBE_TIMEOUT_S)
            if joined.get("status") != "ok" or not await self._probe_deposit(player):
                return False
            deadline = time.monotonic() + PROBE_TIMEOUT_S
            while (left := deadline - time.monotonic()) > 0:
                _topic, event, _ = await asyncio.wait_for(socket.pushes.get(), left)
                if event == "balance":
                    return True
            return False
        except (ConnectionError, TimeoutError):
            return False
        finally:
            await socket.close()


async def _always() -> bool:
    return True

