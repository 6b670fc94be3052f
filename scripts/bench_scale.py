"""`make bench`: scaling out under load, in a `ray.cluster_utils.Cluster` of its own.

Starts its own PostgreSQL (or uses DATABASE_URL) and a cluster of a zero-CPU head and
one one-CPU worker; the coordinator keeps one host of each kind per node
(`LOOTIFY_HOSTS_PER_NODE=1`). While workers place bets and deposits through the client
API it measures:
  - a node joins: the time until hosts run on it and half of every kind's shards moved
    to them (balanced), and the p99 of bets in that time;
  - that node is killed (`Cluster.remove_node(allow_graceful=False)`: its raylet and
    workers SIGKILLed): the time until every wallet and market answers again, its
    hosts restarted by Ray on the survivor. Ray declares the node dead after
    `health_check_period_ms` x `health_check_failure_threshold` (set on the head,
    HEALTH_CHECKS below; Ray's defaults are 3000 ms x 5);
  - operations lost or duplicated, against PostgreSQL: every acknowledged deposit by
    its reference id and every acknowledged bet by its id stored exactly once, no
    wallet operation stored twice, and the ledger audit.
Prints a table and writes bench-results/scale-<time>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Coroutine
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

HEALTH_CHECKS = {"health_check_period_ms": 1000, "health_check_failure_threshold": 3}
# Before the imports that read them: every process of the cluster inherits them.
os.environ.update(
    LOOTIFY_HOSTS_PER_NODE="1",
    LOOTIFY_WATCH_INTERVAL_S="1",
    LOOTIFY_WALLET_HOSTS="1",
    LOOTIFY_MARKET_HOSTS="1",
    LOOTIFY_IDLE_SECONDS="3600",
    LOOTIFY_NAMESPACE=f"lootify-bench-scale-{os.getpid()}",
)
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg  # noqa: E402
import ray  # noqa: E402
from local_stack import free_port, fresh_database  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from actors.client import AsyncLootify, LoopThread, Settings  # noqa: E402
from actors.errors import LootifyError  # noqa: E402
from actors.ops import pgserver  # noqa: E402
from actors.ops.audit import ledger_violations  # noqa: E402
from actors.runtime import Unavailable, coordinator_handle  # noqa: E402
from actors.settings import PROJECT_ROOT  # noqa: E402

USERS = 64
MARKETS = 16
WORKERS = 8
SERVING_AGAIN_LIMIT_S = 20.0  # issue 13's bound


def log(msg: str) -> None:
    print(f"[bench_scale {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def percentile(values: list[float], p: float) -> float | None:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] if ordered else None


def wait_for(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


class Load:
    """Bets and deposits from `WORKERS` loops; every answer's time and outcome kept."""

    def __init__(self, aio: AsyncLootify, users: list[str], markets: list[str]) -> None:
        self.aio, self.users, self.markets = aio, users, markets
        self.acked: dict[str, str] = {}  # reference or bet id -> "deposit" | "bet"
        self.samples: list[tuple[float, str, float, bool]] = []  # start, kind, ms, ok
        self.refused: dict[str, int] = {}
        self.stop = False

    async def run(self) -> None:
        await asyncio.gather(*(self._worker(n) for n in range(WORKERS)))

    async def _worker(self, n: int) -> None:
        i = 0
        while not self.stop:
            i += 1
            user = self.users[(n * 7 + i) % len(self.users)]
            start = time.monotonic()
            ok = False
            kind = "deposit" if i % 2 else "bet"
            try:
                if kind == "deposit":
                    ref = f"dep-{n}-{i}"
                    await asyncio.wait_for(self.aio.wallet(user).deposit(10, ref), 60)
                    self.acked[ref] = kind
                else:
                    ref = str(uuid.uuid4())
                    market = self.markets[(n + i) % len(self.markets)]
                    await asyncio.wait_for(self.aio.place_bet(
                        user, market, "home", 100, accept_odds="any", bet_id=ref), 60)
                    self.acked[ref] = kind
                ok = True
            except (LootifyError, TimeoutError) as exc:
                name = type(exc).__name__
                self.refused[name] = self.refused.get(name, 0) + 1
            self.samples.append((start, kind, (time.monotonic() - start) * 1000, ok))
            await asyncio.sleep(0.005)

    def bets_between(self, t0: float, t1: float) -> dict[str, Any]:
        ms = [s[2] for s in self.samples if s[1] == "bet" and s[3] and t0 <= s[0] < t1]
        return {"bets": len(ms), "p50_ms": percentile(ms, 50), "p99_ms": percentile(ms, 99),
                "bets_per_s": round(len(ms) / (t1 - t0), 1) if t1 > t0 else None}


def connect(loop: LoopThread) -> AsyncLootify:
    """The client, once the first hosts have started: on a loaded machine their first
    start can take longer than a call deadline."""
    for _ in range(3):
        try:
            return loop.run(AsyncLootify.create(settings=Settings()))
        except Unavailable:
            log("hosts still starting; connecting again")
    return loop.run(AsyncLootify.create(settings=Settings()))


def balanced(coordinator: Any, hosts: int, seen: list[dict] | None = None) -> dict | None:
    """The coordinator's status once each kind keeps `hosts` hosts, all up, with
    balanced shards; every status asked is appended to `seen`."""
    status = ray.get(coordinator.status.remote(), timeout=30)
    if seen is not None:
        seen.append({"at": time.monotonic(), **status})
    for kind in ("wallets", "markets"):
        state = status["kinds"].get(kind)
        rows = [h for h in status["hosts"] if h["kind"] == kind]
        if (state is None or state["target"] != hosts or not state["balanced"]
                or len(rows) != hosts or not all(h["up"] for h in rows)):
            return None
    return status


def measure(cluster: Cluster, loop: LoopThread, aio: AsyncLootify) -> dict[str, Any]:
    coordinator = coordinator_handle(Settings().runtime)
    tomorrow = datetime.now(UTC) + timedelta(days=1)
    event = loop.run(aio.create_event("Home x Away", "football", tomorrow))
    markets = [loop.run(aio.create_market(
        event["id"], f"Market {i}", "fixed_odds",
        [{"key": "home", "name": "Home", "odds": "2.00"},
         {"key": "away", "name": "Away", "odds": "2.00"}]))["id"] for i in range(MARKETS)]
    users = [str(uuid.uuid4()) for _ in range(USERS)]
    for user in users:
        loop.run(aio.wallet(user).deposit(10_000_000, "seed"))
    load = Load(aio, users, markets)
    running = asyncio.run_coroutine_threadsafe(load.run(), loop.loop)
    out: dict[str, Any] = {"shards": Settings().runtime.shards, "users": USERS, "markets": MARKETS,
                           "workers": WORKERS, "ray_health_checks": HEALTH_CHECKS}
    wait_for(lambda: balanced(coordinator, 1), 120, "one host of each kind")
    time.sleep(5)  # a baseline under load, before anything moves
    now = time.monotonic()
    out["before"] = load.bets_between(now - 5, now)

    log("a node joins: hosts on it, half of the shards move to them")
    started = time.monotonic()
    before = ray.get(coordinator.status.remote(), timeout=30)
    moved_before = {k: v["shards_moved"] for k, v in before["kinds"].items()}
    added = cluster.add_node(num_cpus=1)
    seen: list[dict] = []
    status = wait_for(lambda: balanced(coordinator, 2, seen), 300,
                      "shards balanced over two nodes")
    ended = time.monotonic()
    # The first status in which shards had moved: the new hosts were up by then.
    first_move = next(s["at"] for s in seen if any(
        s["kinds"][k]["shards_moved"] > moved_before[k] for k in moved_before))
    out["join"] = {
        "to_balanced_s": round(ended - started, 1),
        "first_move_to_balanced_s": round(ended - first_move, 1),
        "hosts_on_new_node": sum(1 for h in status["hosts"] if h["node"] == added.node_id),
        "load_avg_1m": os.getloadavg()[0],
        "shards_moved": {k: v["shards_moved"] - moved_before[k]
                         for k, v in status["kinds"].items()},
        **load.bets_between(started, ended),
    }

    log("that node is killed: its shards serve again on the survivor")
    probe = 0

    def serving() -> bool:
        nonlocal probe
        probe += 1
        calls: list[Coroutine[Any, Any, Any]] = [
            aio.wallet(u).deposit(1, f"probe-{probe}-{u}") for u in users]
        calls += [aio.market(m).odds() for m in markets]
        futures = [asyncio.run_coroutine_threadsafe(c, loop.loop) for c in calls]
        try:
            for future in futures:
                future.result(timeout=30)
        except (LootifyError, TimeoutError):
            return False
        for u in users:
            load.acked[f"probe-{probe}-{u}"] = "deposit"
        return True

    started = time.monotonic()
    cluster.remove_node(added, allow_graceful=False)
    wait_for(serving, 120, "every wallet and market to answer after the kill")
    serving_again = time.monotonic()
    wait_for(lambda: balanced(coordinator, 1), 120, "one host of each kind again")
    settled = time.monotonic()
    out["kill"] = {
        "to_serving_s": round(serving_again - started, 1),
        "to_settled_s": round(settled - started, 1),
        "load_avg_1m": os.getloadavg()[0],
        **load.bets_between(started, serving_again),
    }
    time.sleep(3)
    load.stop = True
    running.result(timeout=120)
    out["acked"] = {"deposits": sum(1 for k in load.acked.values() if k == "deposit"),
                    "bets": sum(1 for k in load.acked.values() if k == "bet")}
    out["failed"] = load.refused
    out["_acked"] = load.acked
    return out


async def check_stored(dsn: str, acked: dict[str, str]) -> dict[str, Any]:
    """Lost: acknowledged, not stored. Duplicated: stored more than once."""
    conn = await asyncpg.connect(dsn)
    try:
        deposits = {r["reference_id"]: r["n"] for r in await conn.fetch(
            "select reference_id, count(*) as n from wallets.operations "
            "where kind = 'deposit' and reference_id <> 'seed' group by reference_id")}
        bets = {r["id"] for r in await conn.fetch("select id::text from bets.bets")}
        twice = await conn.fetchval(
            "select count(*) from (select 1 from wallets.operations "
            "group by wallet_id, kind, reference_id having count(*) > 1) d")
        audit = await ledger_violations(conn)
    finally:
        await conn.close()
    lost = [ref for ref, kind in acked.items()
            if (kind == "deposit" and ref not in deposits) or (kind == "bet" and ref not in bets)]
    return {"lost": len(lost), "duplicated": sum(1 for n in deposits.values() if n > 1) + twice,
            "audit": audit or "clean"}


def report(r: dict[str, Any]) -> list[str]:
    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.0f}"

    rows = [
        ("bets before the move (5 s)", "", f"{r['before']['bets_per_s']}/s",
         ms(r["before"]["p50_ms"]), ms(r["before"]["p99_ms"])),
        (f"node joins, {sum(r['join']['shards_moved'].values())} shards move "
         f"({', '.join(f'{k} {v}' for k, v in r['join']['shards_moved'].items())})",
         f"{r['join']['to_balanced_s']} s", f"{r['join']['bets_per_s']}/s",
         ms(r["join"]["p50_ms"]), ms(r["join"]["p99_ms"])),
        ("  of which from the first shard moved to balanced",
         f"{r['join']['first_move_to_balanced_s']} s", "", "", ""),
        ("node killed -> every wallet and market answers", f"{r['kill']['to_serving_s']} s",
         f"{r['kill']['bets_per_s']}/s", ms(r["kill"]["p50_ms"]), ms(r["kill"]["p99_ms"])),
        ("node killed -> hosts balanced again", f"{r['kill']['to_settled_s']} s", "", "", ""),
    ]
    lines = [f"| {'phase':<58} | {'time':>7} | {'bets':>8} | {'p50 ms':>6} | {'p99 ms':>6} |",
             f"|{'-' * 60}|{'-' * 9}|{'-' * 10}|{'-' * 8}|{'-' * 8}|"]
    lines += [f"| {a:<58} | {b:>7} | {c:>8} | {d:>6} | {e:>6} |" for a, b, c, d, e in rows]
    s = r["stored"]
    lines.append(f"acknowledged: {r['acked']['deposits']} deposits, {r['acked']['bets']} bets; "
                 f"lost {s['lost']}, duplicated {s['duplicated']}, ledger audit {s['audit']}; "
                 f"failed calls {r['failed'] or 0}")
    lines.append(f"Ray health checks: {HEALTH_CHECKS} (defaults 3000 ms x 5); load average "
                 f"(1 min) at the start {r['load_avg_1m']:.1f}, after the join "
                 f"{r['join']['load_avg_1m']:.1f}, after the kill {r['kill']['load_avg_1m']:.1f}")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64 shards instead of 256")
    args = parser.parse_args()
    # Read by the settings of this process and, through ray.init, of the cluster's.
    os.environ["LOOTIFY_SHARDS"] = "64" if args.quick else "256"
    pg_dir = None
    base = os.environ.get("DATABASE_URL")
    if not base:
        pg_dir = Path(tempfile.mkdtemp(prefix="lootify-bench-scale-pg-"))
        base = pgserver.start(pg_dir, port=free_port())
    cluster = None
    try:
        dsn = asyncio.run(fresh_database(base, "lootify_bench_scale"))
        os.environ["DATABASE_URL"] = dsn  # the clients below create hosts with it
        cluster = Cluster(initialize_head=True,
                          head_node_args={"num_cpus": 0,
                                          # A copy: Ray adds its own keys to it.
                                          "_system_config": dict(HEALTH_CHECKS)})
        cluster.add_node(num_cpus=1)
        ray.init(address=cluster.address, namespace=os.environ["LOOTIFY_NAMESPACE"],
                 log_to_driver=False, runtime_env={"env_vars": {
                     k: v for k, v in os.environ.items()
                     if k.startswith("LOOTIFY_") or k == "DATABASE_URL"}})
        loop = LoopThread()
        aio = connect(loop)
        results: dict[str, Any] = {"when": datetime.now(UTC).isoformat(timespec="seconds"),
                                   "cpus": os.cpu_count(), "load_avg_1m": os.getloadavg()[0]}
        results.update(measure(cluster, loop, aio))
        acked = results.pop("_acked")
        results["stored"] = asyncio.run(check_stored(dsn, acked))
    finally:
        if ray.is_initialized():
            ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
        if pg_dir is not None:
            pgserver.stop(pg_dir)
            shutil.rmtree(pg_dir, ignore_errors=True)

    print("\n".join(report(results)))
    out = PROJECT_ROOT / "bench-results"
    out.mkdir(exist_ok=True)
    path = out / f"scale-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=2, default=str))
    print(f"wrote {path.relative_to(PROJECT_ROOT)}")
    ok = (results["kill"]["to_serving_s"] <= SERVING_AGAIN_LIMIT_S
          and results["stored"]["lost"] == 0 and results["stored"]["duplicated"] == 0
          and results["stored"]["audit"] == "clean")
    if not ok:
        print("bench_scale: a target was missed (serving again <= 20 s, nothing lost or "
              "duplicated, audit clean)")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
