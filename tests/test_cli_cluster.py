"""`lootify` commands that need the cluster, run as operators run them: a separate
process joined to the test session's Ray cluster and database."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import asyncpg
import pytest

from actors.client import Lootify
from actors.ops.agreement import disagreements

pytestmark = pytest.mark.cluster


@pytest.fixture
def lootify_cli(lootify: Lootify, client_env: dict[str, str]):
    env = client_env

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "gateway.cli", *args], env=env,
                              capture_output=True, text=True, timeout=180)

    return run


def test_seed_json_creates_funded_players_and_open_markets(lootify_cli, lootify):
    done = lootify_cli("seed", "--players", "3", "--events", "2", "--markets", "2",
                       "--deposit", "5000", "--json")
    assert done.returncode == 0, done.stderr
    seeded = json.loads(done.stdout)
    assert len(seeded["players"]) == 3 and len(seeded["events"]) == 2
    for player in seeded["players"]:
        assert lootify.wallet(player["id"]).balance().balance == 5000
    markets = [m for event in seeded["events"] for m in event["markets"]]
    assert len(markets) == 4
    assert {lootify.market(m["id"]).state()["status"] for m in markets} == {"open"}


def test_settle_pays_the_winner_and_void_refunds(lootify_cli, lootify):
    seeded = json.loads(lootify_cli("seed", "--players", "1", "--events", "1",
                                    "--markets", "2", "--deposit", "10000", "--json").stdout)
    player = seeded["players"][0]["id"]
    won, voided = (m["id"] for m in seeded["events"][0]["markets"])
    odds = lootify.market(won).odds()
    lootify.place_bet(player, won, "home", 1000, odds=odds["home"])
    lootify.place_bet(player, voided, "away", 500, odds=lootify.market(voided).odds()["away"])
    assert lootify.wallet(player).balance().balance == 8500

    done = lootify_cli("settle", won, "--winner", "home", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["status"] == "settled"
    done = lootify_cli("void", voided)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"market {voided} void"
    assert lootify.wallet(player).balance().balance == 9000 + int(odds["home"] * 1000)

    again = lootify_cli("settle", won, "--winner", "home")
    assert again.returncode == 1 and again.stderr.startswith("lootify: already_settled")


def test_audit_exits_1_when_a_ledger_row_is_tampered_with(lootify_cli, lootify, sql):
    player = json.loads(lootify_cli("seed", "--players", "1", "--events", "0",
                                    "--json").stdout)["players"][0]["id"]
    clean = lootify_cli("audit", "--json")
    assert clean.returncode == 0, clean.stderr
    assert json.loads(clean.stdout) == {"ledger": {}, "entities": [], "clean": True}

    sql("update wallets.entries set amount = amount + 1 where account = $1",
        f"user:{player}")
    try:
        tampered = lootify_cli("audit", "--json")
        assert tampered.returncode == 1, tampered.stderr
        report = json.loads(tampered.stdout)
        assert report["clean"] is False
        assert "unbalanced operations" in report["ledger"]
        readable = lootify_cli("audit")
        assert readable.returncode == 1 and "DISCREPANCIES FOUND" in readable.stdout
    finally:
        sql("update wallets.entries set amount = amount - 1 where account = $1",
            f"user:{player}")


def test_the_audit_finds_an_entity_that_disagrees_with_its_row(lootify, aio, run, sql,
                                                               database_url):
    """In-process: the session's hosts passivate entities idle for 2 s, sooner than a
    CLI process starts."""
    player = str(uuid.uuid4())
    lootify.wallet(player).deposit(700, reference_id=f"dep-{player}")
    sql("update wallets.wallets set available = 699 where user_id = $1::uuid", player)

    async def audit() -> list[dict]:
        await aio.wallet(player).balance()  # activated again should it have been passivated
        conn = await asyncpg.connect(database_url)
        try:
            return await disagreements(aio, conn)
        finally:
            await conn.close()

    try:
        assert run(audit()) == [{"kind": "wallets", "id": player, "memory": (700, 0),
                                 "stored": (699, 0)}]
    finally:
        sql("update wallets.wallets set available = 700 where user_id = $1::uuid", player)


def test_status_json_lists_the_hosts(lootify_cli):
    done = lootify_cli("status", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert {host["kind"] for host in report["hosts"]} == {"wallets", "markets"}
    assert all({"index", "node", "shards", "entities"} <= host.keys() for host in report["hosts"])
    assert report["nodes"] and report["epoch"]
