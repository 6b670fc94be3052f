"""Faults (issue section 5): a wallet host SIGKILLed in the middle of a load.

Ray restarts the host (same name, new process); the router retries the batches the
dead host never answered, with the same reference ids, so nothing acknowledged is lost
and nothing is done twice; through Ray calls, and over direct links (which break with
the process, and are opened again to the new one). Every wait is a poll with a
deadline.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import socket
import time
import uuid
from collections import Counter, defaultdict
from typing import Any

import pytest
import ray
from ray.exceptions import GetTimeoutError, RayActorError

from actors.client import AsyncLootify
from actors.errors import LootifyError, Unavailable
from actors.runtime import KindSettings, RuntimeSettings, connect_router, host_name, kind_named
from actors.runtime.coordinator import COORDINATOR_NAME
from actors.runtime.link import Link, LinkDown
from actors.runtime.wire import decode_outcomes, encode_batch
from actors.wallets import Balance, GetBalance
from tests.polling import sigstop, wait_until

pytestmark = pytest.mark.cluster

WALLETS = 200
DEPOSITS = 2_000
CHUNK = 50  # deposits issued together, then a short pause: the load lasts ~0.5 s
RECOVERY_LIMIT_S = 5.0


@pytest.fixture(params=["ray", "direct"])
def client(request, aio, run, settings) -> Any:
    """The session's client (Ray calls), or one whose wallet router uses direct links."""
    if request.param == "ray":
        yield aio
        return
    direct = run(AsyncLootify.create(kinds=("wallets",), settings=settings, direct=True))
    yield direct
    close_links(run, direct)


def close_links(run: Any, client: AsyncLootify) -> None:
    """Close a client's links on the loop they were opened on."""

    async def close() -> None:
        client.close()

    run(close())


def linked_calls(handle: Any) -> int:
    return ray.get(handle.stats.remote(), timeout=30)["linked_calls"]


def link_up(run: Any, client: Any, uid: str) -> bool:
    """Whether the router had an open link to `uid`'s host for a call to it (the first
    call through Ray opens one)."""
    router = client.routers["wallets"]
    slot = router.links.get(router.host_of(uid))
    up = slot is not None and slot.link is not None and not slot.link.closed
    run(client.wallet(uid).balance())
    return up


async def bounded(awaitable: Any, timeout: float, what: str) -> Any:
    try:
        return await asyncio.wait_for(awaitable, timeout)
    except TimeoutError:
        raise AssertionError(f"no answer in {timeout}s: {what}") from None


def test_sigkill_wallet_host_under_load(client, run, sql, settings):
    aio = client
    router = aio.routers["wallets"]
    wallets = [str(uuid.uuid4()) for _ in range(WALLETS)]
    victim = Counter(router.host_of(u) for u in wallets).most_common(1)[0][0]
    handle = router.handles[victim]
    old_pid = ray.get(handle.pid.remote(), timeout=30)
    probe = next(u for u in wallets if router.host_of(u) == victim)
    if router.direct:
        wait_until(lambda: link_up(run, aio, probe), timeout=10, what="the link to the host")
        linked_before = linked_calls(handle)
    plan = [(wallets[i % WALLETS], f"dep-{i}", 1 + (i * 7_919) % 1_000) for i in range(DEPOSITS)]
    expected: dict[str, int] = defaultdict(int)
    for uid, _, amount in plan:
        expected[uid] += amount

    async def first_answer_after(killed_at: float) -> float:
        """Seconds from the kill to the first answer from the restarted host."""
        while True:
            try:
                outcome = await asyncio.wait_for(
                    handle.call.remote(encode_batch([(probe, GetBalance())])), timeout=1.0)
                if decode_outcomes(outcome)[0][0]:
                    return time.monotonic() - killed_at
            except (RayActorError, TimeoutError):
                pass
            await asyncio.sleep(0.02)

    async def load() -> dict[str, Any]:
        acked: dict[str, Balance] = {}
        failed: dict[str, LootifyError] = {}

        async def deposit(uid: str, ref: str, amount: int) -> None:
            try:
                acked[ref] = await aio.wallet(uid).deposit(amount, reference_id=ref)
            except LootifyError as exc:
                failed[ref] = exc

        tasks: list[asyncio.Future] = []
        killed_at = None
        in_flight = 0
        recovery = None
        for start in range(0, DEPOSITS, CHUNK):
            tasks += [asyncio.ensure_future(deposit(*p)) for p in plan[start:start + CHUNK]]
            await asyncio.sleep(0.003)  # the chunk's batches are at the hosts now
            if killed_at is None and start >= DEPOSITS // 3:
                in_flight = len(tasks) - len(acked) - len(failed)
                os.kill(old_pid, signal.SIGKILL)
                killed_at = time.monotonic()
                recovery = asyncio.ensure_future(first_answer_after(killed_at))
            await asyncio.sleep(0.007)
        await bounded(asyncio.gather(*tasks), 30, "the deposits after the kill")
        assert killed_at is not None
        return {"acked": acked, "failed": failed, "in_flight": in_flight,
                "answered_s": time.monotonic() - killed_at,
                "recovery_s": await bounded(recovery, 30, "the killed host to answer again")}

    result = run(load())
    acked, failed = result["acked"], result["failed"]
    assert result["in_flight"] > 0, "the kill should land while deposits are unanswered"
    assert len(acked) + len(failed) == DEPOSITS

    # The host came back within the limit, under its name, as a new process.
    assert result["recovery_s"] < RECOVERY_LIMIT_S, f"recovered in {result['recovery_s']:.2f}s"
    # Calls the kill left unanswered were sent again as soon as the host was back, not
    # left to their deadline (a broken link fails its calls at once).
    assert result["answered_s"] < RECOVERY_LIMIT_S + 2, f"answered in {result['answered_s']:.2f}s"
    new_pid = ray.get(handle.pid.remote(), timeout=30)
    assert new_pid != old_pid
    named = ray.get_actor(host_name("wallets", victim), namespace=settings.namespace)
    assert ray.get(named.pid.remote(), timeout=30) == new_pid

    # Every acknowledged deposit is durable.
    done = {r["reference_id"]: r["wallet_id"] for r in sql(
        "select reference_id, wallet_id::text from wallets.operations where kind = 'deposit'")}
    missing = [ref for ref in acked if ref not in done]
    assert not missing, f"{len(missing)} acknowledged deposits are not in wallets.operations"

    # Callers that got an error retry with the same reference id: it takes effect once.
    assert all(isinstance(e, Unavailable) for e in failed.values()), Counter(
        type(e).__name__ for e in failed.values())
    by_ref = {ref: (uid, amount) for uid, ref, amount in plan}

    async def retry_failed() -> list[Any]:
        return await bounded(asyncio.gather(*(
            aio.wallet(by_ref[ref][0]).deposit(by_ref[ref][1], reference_id=ref)
            for ref in failed)), 30, "retries of the failed deposits")

    assert all(isinstance(b, Balance) for b in run(retry_failed()))

    # A replay of an acknowledged deposit (now answered from PostgreSQL, since the new
    # process has no memory of it) returns the first answer and does nothing.
    sample = sorted(acked)[:: max(1, len(acked) // 200)]

    async def replay() -> list[Any]:
        return await bounded(asyncio.gather(*(
            aio.wallet(by_ref[ref][0]).deposit(by_ref[ref][1], reference_id=ref)
            for ref in sample)), 20, "replays of acknowledged deposits")

    assert run(replay()) == [acked[ref] for ref in sample]

    # Exactly once: one operation per reference, and balances are the sums of deposits.
    counts = Counter(r["reference_id"] for r in sql(
        "select reference_id from wallets.operations where kind = 'deposit'"))
    assert set(counts) == set(by_ref)
    assert set(counts.values()) == {1}
    stored = {r["id"]: (r["available"], r["reserved"]) for r in sql(
        "select user_id::text as id, available, reserved from wallets.wallets")}
    assert stored == {uid: (expected[uid], 0) for uid in wallets}

    async def balances() -> list[Balance]:
        return await bounded(asyncio.gather(*(aio.wallet(u).balance() for u in wallets)),
                             30, "balances after recovery")

    assert dict(zip(wallets, run(balances()), strict=True)) == {
        uid: Balance(expected[uid], expected[uid], 0) for uid in wallets}

    if router.direct:  # the load went over the link, and a link reaches the new process
        assert not router.links[victim].closed
        wait_until(lambda: link_up(run, aio, probe), timeout=10, what="a link to the new host")
        assert linked_calls(handle) > 0
        assert linked_before > 0


def test_killed_host_is_restarted_under_its_name(aio, run, settings, sql):
    """An idle host SIGKILLed: Ray starts a new process under the same name, which
    serves the same wallets with their state from PostgreSQL."""
    router = aio.routers["wallets"]
    uid = str(uuid.uuid4())
    index = router.host_of(uid)
    name = host_name("wallets", index)

    async def deposit() -> Balance:
        w = aio.wallet(uid)
        await w.deposit(700, reference_id="d-1")
        return await w.reserve(200, reference_id="bet-1")

    assert run(bounded(deposit(), 30, "setup")) == Balance(700, 500, 200)
    old_pid = ray.get(ray.get_actor(name, namespace=settings.namespace).pid.remote(), timeout=30)
    os.kill(old_pid, signal.SIGKILL)
    killed_at = time.monotonic()

    def new_pid() -> int | None:
        try:
            actor = ray.get_actor(name, namespace=settings.namespace)
            pid = ray.get(actor.pid.remote(), timeout=1.0)
        except (RayActorError, GetTimeoutError, ValueError):
            return None
        return pid if pid != old_pid else None

    pid = wait_until(new_pid, timeout=30, interval=0.05, what=f"{name} to restart")
    assert time.monotonic() - killed_at < RECOVERY_LIMIT_S
    assert pid != old_pid

    async def after() -> tuple[Balance, Balance]:
        w = aio.wallet(uid)
        return await w.balance(), await w.commit("bet-1")

    assert run(bounded(after(), 30, "the restarted host")) == (
        Balance(700, 500, 200), Balance(500, 500, 0))
    assert sql("select available, reserved from wallets.wallets where user_id = $1",
               uid)[0][:] == (500, 0)


def test_a_link_without_the_hosts_secret_is_refused(aio, run):
    """A process that can reach a host's port but did not get its endpoint from Ray
    (which carries the secret) is disconnected before any batch is read."""
    router = aio.routers["wallets"]
    handle = router.handles[0]
    address, port, secret, protocol = ray.get(handle.endpoint.remote(), timeout=30)
    served = linked_calls(handle)
    probe = next(str(u) for u in iter(uuid.uuid4, None) if router.host_of(str(u)) == 0)
    payload = encode_batch([(probe, GetBalance())])

    async def with_secret(offered: bytes) -> bytes:
        link = await Link.open((address, port, offered, protocol))
        try:
            return await asyncio.wait_for(link.call(payload), 10)
        finally:
            link.close()

    with pytest.raises(LinkDown):
        run(with_secret(bytes(len(secret))))
    assert linked_calls(handle) == served
    ok, balance = decode_outcomes(run(with_secret(secret)))[0]
    assert ok and isinstance(balance, Balance)
    assert linked_calls(handle) == served + 1


def test_a_link_to_a_host_that_stops_answering_is_closed(aio, run, settings):
    """A host that stops answering (SIGSTOPped here; in production, a node cut off from
    the cluster while Ray restarts its hosts elsewhere) fails a call over its link at
    the call deadline, and the link is closed: the next calls go through Ray, which
    reaches the live process, until a link to it is open."""
    quick = dataclasses.replace(
        settings, runtime=dataclasses.replace(settings.runtime, call_deadline_s=1.0))
    client = run(AsyncLootify.create(kinds=("wallets",), settings=quick, direct=True))
    router = client.routers["wallets"]
    uid = str(uuid.uuid4())
    assert run(client.wallet(uid).deposit(100, reference_id="before")) == Balance(100, 100, 0)
    wait_until(lambda: link_up(run, client, uid), timeout=10, what="the link to the host")
    host = router.host_of(uid)
    link = router.links[host].link
    assert link is not None
    pid = ray.get(router.handles[host].pid.remote(), timeout=30)
    sigstop(pid)
    try:
        started = time.monotonic()
        with pytest.raises(Unavailable):
            run(client.wallet(uid).balance())
        assert time.monotonic() - started < 5
        assert link.closed
    finally:
        os.kill(pid, signal.SIGCONT)
    assert run(client.wallet(uid).balance()) == Balance(100, 100, 0)
    wait_until(lambda: link_up(run, client, uid), timeout=10, what="a new link to the host")
    close_links(run, client)


def test_connecting_to_hosts_that_cannot_start_fails_within_the_deadline(run, settings):
    """A PostgreSQL that accepts connections but never answers: the coordinator cannot
    read the shard directory, and connecting a router answers `Unavailable` after the
    call deadline, instead of waiting for the database driver's own time-out."""
    runtime = RuntimeSettings(namespace=f"{settings.namespace}-silent", call_deadline_s=1.0)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        dsn = f"postgresql://nobody@127.0.0.1:{silent.getsockname()[1]}/nothing"
        started = time.monotonic()
        try:
            with pytest.raises(Unavailable):
                run(connect_router(kind_named("wallets"), dsn, runtime, KindSettings(hosts=1)))
            assert time.monotonic() - started < 10
        finally:
            ray.kill(ray.get_actor(COORDINATOR_NAME, namespace=runtime.namespace))
