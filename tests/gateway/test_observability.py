"""Request ids from HTTP into the hosts' JSON logs, and one scrape of `/metrics` that
shows the hosts' and the replicas' figures."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import httpx
import pytest
import ray

from actors.client import AsyncLootify
from tests.polling import wait_until

pytestmark = pytest.mark.cluster


def _host_log_lines(pid: int) -> list[dict]:
    logs = Path(ray._private.worker._global_node.get_logs_dir_path())
    lines = []
    for path in logs.glob(f"worker-*-{pid}.err"):
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                lines.append(json.loads(line))
    return lines


@pytest.fixture
def hosts_log_calls(aio: AsyncLootify, run):
    handles = [h for router in aio.routers.values() for h in router.handles]
    run(_each(handles, "DEBUG"))
    yield
    run(_each(handles, "INFO"))


async def _stats(handle) -> dict:
    return await handle.stats.remote()


async def _each(handles: list, level: str) -> None:
    for handle in handles:
        await handle.set_log_level.remote(level)


def test_a_request_id_reaches_the_wallet_host_log(
    api: httpx.Client, new_user, aio: AsyncLootify, run, hosts_log_calls
) -> None:
    user = new_user()
    router = aio.routers["wallets"]
    pid = run(_stats(router.handles[router.host_of(user.id)]))["pid"]

    def logged(request_id: str) -> dict | None:
        return next((entry for entry in _host_log_lines(pid)
                     if request_id in entry.get("request_ids", ())), None)

    given = f"trace-{uuid.uuid4().hex}"
    r = api.post("/api/wallet/deposit", json={"amount": "12.00"},
                 headers={**user.headers, "X-Request-ID": given})
    assert r.status_code == 200, r.text
    assert r.headers["x-request-id"] == given
    line = wait_until(lambda: logged(given), timeout=15, what="the host's line with the id")
    assert line["level"] == "DEBUG" and line["msg"] == "call"
    assert line["host"].startswith("wallets-") and line["messages"] >= 1

    r = api.post("/api/wallet/deposit", json={"amount": "1.00"}, headers=user.headers)
    made = r.headers["x-request-id"]
    assert made and made != given
    wait_until(lambda: logged(made), timeout=15, what="the host's line with a made id")


def _sample(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def _total(text: str, name: str, **labels: str) -> float:
    """The sum over every series of `name` with these labels (e.g. over all hosts)."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_one_scrape_shows_hosts_replicas_and_money(api: httpx.Client, new_user,
                                                    aio: AsyncLootify) -> None:
    user = new_user()
    r = api.post("/api/wallet/deposit", json={"amount": "50.00"}, headers=user.headers)
    assert r.status_code == 200, r.text

    text = api.get("/metrics").text
    for kind, router in aio.routers.items():
        for index in range(len(router.handles)):
            assert _sample(text, "lootify_host_up", kind=kind, host=str(index)) == 1
            assert _sample(text, "lootify_host_mailbox_depth", kind=kind, host=str(index)) == 0
    # The depositor's wallet is on one of the wallet hosts, whichever its id hashes to.
    assert _total(text, "lootify_host_active_entities", kind="wallets") >= 1
    assert _total(text, "lootify_host_cycle_size_count", kind="wallets") >= 1
    assert _total(text, "lootify_host_commit_seconds_bucket", kind="wallets", le="+Inf") >= 1
    assert _total(text, "lootify_host_activations_total", kind="wallets") >= 1
    assert _sample(text, "lootify_http_requests_total", route="/api/wallet/deposit",
                   status="200") >= 1
    assert re.search(r'lootify_replica_info\{pid="\d+",replica="[^"]+"\} 1', text)
    assert _sample(text, "lootify_players_money_minor_units", state="available") == 5000
    assert _sample(text, "lootify_open_stakes") == 0  # nobody has bet yet
    assert _sample(text, "lootify_oldest_open_stake_seconds") == 0
    assert _sample(text, "lootify_settlement_seconds_count") is not None
