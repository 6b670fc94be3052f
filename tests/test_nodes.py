"""Nodes join and leave under load (issue 13): hosts follow them, shards follow the
hosts, nothing acknowledged is lost or done twice; Serve keeps a replica on every node,
and PubSub and the odds cache work across them. Each cluster is a
`ray.cluster_utils.Cluster` (zero-CPU head, one-CPU workers) run in a process of its
own by `tests/node_scenario.py` and `tests/serve_nodes_scenario.py`."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from actors.ops.audit import ledger_violations
from actors.ops.databases import create_database, drop_database
from actors.ops.migrate import migrate
from tests.pg_fixtures import fetch_rows

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
# The bound from a node's death to its shards serving again, with Ray's
# health checks set to 1 s x 3 in the scenario (Ray's defaults take ~15 s to notice).
SERVING_AGAIN_S = 20.0


def run_scenario(module: str, dsn: str) -> dict:
    done = subprocess.run([sys.executable, "-m", module, dsn],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_nodes_join_leave_and_die_under_load(pg_dsn):
    dsn = asyncio.run(create_database(pg_dsn, "lootify_nodes"))
    try:
        asyncio.run(migrate(dsn))
        findings = run_scenario("tests.node_scenario", dsn)

        def sql(query: str, *args: object) -> list:
            return fetch_rows(asyncio.run, dsn, query, *args)

        async def audit() -> dict[str, int]:
            import asyncpg

            conn = await asyncpg.connect(dsn)
            try:
                return await ledger_violations(conn)
            finally:
                await conn.close()

        after_join = Counter(kind for kind, shards in findings["after_join"] if shards)
        assert after_join == {"wallets": 3, "markets": 3}, findings["after_join"]
        assert findings["kill_to_serving_s"] < SERVING_AGAIN_S, findings
        assert findings["first_node_alive"]
        assert set(kind for kind, _ in findings["failed"].values()) <= {"Unavailable"}, (
            findings["failed"])
        acked = findings["acked"]
        deposits = Counter(r["reference_id"] for r in sql(
            "select reference_id from wallets.operations where kind = 'deposit' "
            "and reference_id <> 'seed'"))
        assert {ref for ref, kind in acked.items() if kind == "deposit"} <= set(deposits)
        assert set(deposits.values()) == {1}
        bets = {r["id"] for r in sql("select id::text from bets.bets")}
        assert {b for b, kind in acked.items() if kind == "bet"} <= bets
        assert not sql(
            "select kind, shard, epoch from runtime.activations group by kind, shard, epoch "
            "having count(distinct host) > 1")
        assert asyncio.run(audit()) == {}
        print(json.dumps({k: v for k, v in findings.items() if k.endswith("_s")}))
    finally:
        asyncio.run(drop_database(pg_dsn, "lootify_nodes"))


def test_a_replica_on_every_node_and_pubsub_across_them(pg_dsn):
    dsn = asyncio.run(create_database(pg_dsn, "lootify_serve_nodes"))
    try:
        asyncio.run(migrate(dsn))
        findings = run_scenario("tests.serve_nodes_scenario", dsn)
        # Head, the first worker and the one that joined: a replica and a proxy on each,
        # the new node's proxy answering on its own port.
        assert len(findings["nodes"]) == 3
        assert findings["replica_nodes"] == findings["nodes"]
        assert findings["new_node"] in findings["proxies"]
        assert set(findings["proxies"].values()) == {"ProxyStatus.HEALTHY"}, findings["proxies"]
        # Bets placed on the first worker's replica, heard on the new node's socket, and
        # the pool's odds (15.00 staked, 10% takeout) in that replica's cache.
        assert sorted(findings["bets"]) == findings["bets_heard"]
        assert findings["odds_before"] == {"home": None, "away": None}
        assert findings["odds_pushed"] == findings["odds_cached_b"] == {
            "home": "2.70", "away": "1.35"}
        # The new node killed: the two survivors keep their replicas, not restarted.
        assert len(findings["nodes_after_kill"]) == 2
        assert findings["replica_nodes_after_kill"] == findings["nodes_after_kill"]
        print(json.dumps({k: v for k, v in findings.items() if k.endswith("_s")}))
    finally:
        asyncio.run(drop_database(pg_dsn, "lootify_serve_nodes"))
