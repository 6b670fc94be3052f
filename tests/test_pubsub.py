"""PubSub on the session cluster: delivery, coalescing, the publishers' topic filter,
and recovery after the broker restarts."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator

import pytest
import ray

from actors.pubsub import Publisher, Subscriber, broker, publisher, pubsub_handle, subscriber
from tests.polling import sigstop

pytestmark = pytest.mark.cluster


async def _collect(sub: Subscriber, topic: str) -> list:
    got: list = []
    await sub.subscribe(topic, lambda t, e, p: got.append((t, e, p)))
    return got


async def _subscribed(namespace: str) -> tuple[Subscriber, str, list, Publisher]:
    """A started subscriber to a new user topic, what it got of it, and a publisher."""
    sub = Subscriber(namespace)
    sub.start()
    topic = f"user:{uuid.uuid4()}"
    got = await _collect(sub, topic)
    return sub, topic, got, Publisher(namespace)


@contextlib.asynccontextmanager
async def _pubsub_stopped(namespace: str) -> AsyncIterator[None]:
    """The PubSub actor hung (SIGSTOPped) inside the block, running again after it."""
    handle = pubsub_handle(namespace)
    pid = await handle.__ray_call__.remote(lambda _self: os.getpid())
    sigstop(pid)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


async def _until(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.02)
    return bool(predicate())


def test_delivery_in_order_and_coalescing(ray_cluster, run, settings) -> None:
    async def main() -> None:
        sub, topic, got, pub = await _subscribed(settings.namespace)
        for i in range(5):
            pub.publish(topic, "balance", {"balance": i}, coalesce=topic)
        pub.publish(topic, "bet_placed", {"id": "b1"})
        for i in range(3):
            pub.publish(topic, "odds_updated", {"market_id": "m1", "n": i}, coalesce="m1")
            pub.publish(topic, "odds_updated", {"market_id": "m2", "n": i}, coalesce="m2")
        await pub.drain()
        assert await _until(lambda: len(got) >= 4)
        await asyncio.sleep(0.2)
        assert [(e, p) for _, e, p in got] == [
            ("balance", {"balance": 4}),
            ("bet_placed", {"id": "b1"}),
            ("odds_updated", {"market_id": "m1", "n": 2}),
            ("odds_updated", {"market_id": "m2", "n": 2}),
        ]
        await sub.close()

    run(main())


def test_events_reach_a_subscriber_over_its_link_and_one_without_through_pubsub(
    ray_cluster, run, settings
) -> None:
    async def main() -> None:
        linked = Subscriber(settings.namespace)
        polled = Subscriber(settings.namespace, direct=False)
        linked.start()
        polled.start()
        topic = f"user:{uuid.uuid4()}"
        got_linked = await _collect(linked, topic)
        got_polled = await _collect(polled, topic)
        pub = Publisher(settings.namespace)
        for i in range(3):
            pub.publish(topic, "n", {"i": i})
        await pub.drain()
        assert await _until(lambda: len(got_linked) == len(got_polled) == 3)
        assert [p["i"] for _, _, p in got_linked] == [p["i"] for _, _, p in got_polled] == [0, 1, 2]
        assert (pub.linked, pub.forwarded) == (3, 3)
        await linked.close()
        await polled.close()

    run(main())


def test_a_subscriber_whose_link_broke_gets_its_events_through_pubsub(
    ray_cluster, run, settings
) -> None:
    async def main() -> None:
        sub, topic, got, pub = await _subscribed(settings.namespace)
        pub.publish(topic, "before", {})
        await pub.drain()
        assert await _until(lambda: len(got) == 1) and pub.linked == 1
        assert sub._listener is not None
        sub._listener.close()  # its links break, and it takes no new one
        pub.publish(topic, "after", {})
        await pub.drain()
        assert await _until(lambda: len(got) == 2)
        assert [e for _, e, _ in got] == ["before", "after"]
        assert (pub.linked, pub.forwarded) == (1, 1)
        await sub.close()

    run(main())


def test_a_broken_link_is_opened_again_in_the_background(ray_cluster, run, settings) -> None:
    """While it is being opened again, the subscriber's events go through PubSub, so no
    flush waits for a subscriber that may be gone."""

    async def main() -> None:
        sub, topic, got, pub = await _subscribed(settings.namespace)
        pub.publish(topic, "first", {})
        await pub.drain()
        link = pub._peers[sub.id].link
        assert link is not None
        link.close()  # as a network blip would
        pub.publish(topic, "meanwhile", {})
        await pub.drain()
        assert await _until(lambda: len(got) == 2)
        assert await _until(lambda: (peer := pub._peers[sub.id]).link not in (None, link)
                            and not peer.link.closed)
        pub.publish(topic, "after", {})
        await pub.drain()
        assert await _until(lambda: len(got) == 3)
        assert [e for _, e, _ in got] == ["first", "meanwhile", "after"]
        assert (pub.linked, pub.forwarded) == (2, 1)
        await sub.close()

    run(main())


def test_a_hung_pubsub_costs_a_flush_its_events_not_a_hang(ray_cluster, run, settings) -> None:
    async def main() -> None:
        sub = Subscriber(settings.namespace, direct=False)  # its events go through PubSub
        sub.start()
        topic = f"user:{uuid.uuid4()}"
        got = await _collect(sub, topic)
        pub = Publisher(settings.namespace)
        pub.publish(topic, "before", {})  # the publisher knows the routes, and trusts them
        await pub.drain()
        assert await _until(lambda: len(got) == 1)
        async with _pubsub_stopped(settings.namespace):
            pub.publish(topic, "n", {})
            started = time.monotonic()
            await asyncio.wait_for(pub.drain(), publisher.PUBSUB_TIMEOUT_S + 5)
            assert time.monotonic() - started < publisher.PUBSUB_TIMEOUT_S + 2
            assert pub.lost == 1
        await sub.close()

    run(main())


def test_a_hung_pubsub_fails_a_join_in_bounded_time_and_shows_unhealthy(
    ray_cluster, run, settings
) -> None:
    async def main() -> None:
        sub = Subscriber(settings.namespace, poll_wait_s=0.2)
        sub.start()
        await _collect(sub, f"user:{uuid.uuid4()}")
        assert await _until(lambda: sub.healthy)
        late = f"user:{uuid.uuid4()}"
        async with _pubsub_stopped(settings.namespace):
            started = time.monotonic()
            with pytest.raises(TimeoutError):  # the socket's join answers "unavailable"
                await asyncio.wait_for(_collect(sub, late), subscriber.CONTROL_TIMEOUT_S + 5)
            assert time.monotonic() - started < subscriber.CONTROL_TIMEOUT_S + 2
            assert late not in sub.callbacks
            assert await _until(lambda: not sub.healthy, subscriber.POLL_MARGIN_S + 2)
        assert await _until(lambda: sub.healthy, subscriber.CONTROL_TIMEOUT_S + 2)
        got = await _collect(sub, late)
        pub = Publisher(settings.namespace)
        pub.publish(late, "after", {})
        await pub.drain()
        assert await _until(lambda: len(got) == 1)
        await sub.close()

    run(main())


def test_patterns_and_unsubscribe(ray_cluster, run, settings) -> None:
    async def main() -> None:
        sub = Subscriber(settings.namespace)
        sub.start()
        got = await _collect(sub, "match:*")
        pub = Publisher(settings.namespace)
        pub.publish("match:1", "x", {})
        pub.publish("match:2", "y", {})
        pub.publish("other:1", "z", {})
        await pub.drain()
        assert await _until(lambda: len(got) == 2)
        assert [e for _, e, _ in got] == ["x", "y"]
        callback = next(iter(sub.callbacks["match:*"]))
        sub.unsubscribe("match:*", callback)
        await asyncio.sleep(0.3)
        pub.publish("match:3", "late", {})
        await pub.drain()
        await asyncio.sleep(0.3)
        assert len(got) == 2
        await sub.close()

    run(main())


def test_publishers_drop_unsubscribed_topics_but_never_a_joined_one(
    ray_cluster, run, settings
) -> None:
    async def main() -> None:
        pub = Publisher(settings.namespace)
        pub.publish(f"user:{uuid.uuid4()}", "balance", {})  # learns the topic set
        await pub.drain()
        before = pub.dropped
        for _ in range(10):
            pub.publish(f"user:{uuid.uuid4()}", "balance", {})
        await pub.drain()
        assert pub.dropped - before == 10

        sub = Subscriber(settings.namespace)
        sub.start()
        topic = f"user:{uuid.uuid4()}"
        got = await _collect(sub, topic)  # returns once publishers cannot miss it
        pub.publish(topic, "balance", {"n": 1})
        await pub.drain()
        assert await _until(lambda: got)
        await sub.close()

    run(main())


def test_a_publisher_in_use_keeps_dropping_unwanted_events_between_sparse_rounds(
    ray_cluster, run, settings
) -> None:
    """A market's rounds may come far apart; between them, a publisher in use still
    sends nothing that nobody wants (dropped when published, or at the flush)."""

    async def main() -> None:
        pub = Publisher(settings.namespace)
        pub.publish(f"user:{uuid.uuid4()}", "balance", {})  # learns the topic set
        await pub.drain()
        sent, dropped = pub.sent, pub.dropped
        for _ in range(6):
            await asyncio.sleep(broker.WATCH_HOLD_S * 0.4)
            pub.publish(f"user:{uuid.uuid4()}", "balance", {})
            await pub.drain()
        assert (pub.sent - sent, pub.dropped - dropped) == (0, 6)

    run(main())


def test_a_new_subscription_waits_until_every_watching_publisher_knows_it(
    ray_cluster, run, settings
) -> None:
    """A publisher that has not yet applied a new topic may still drop its events, so
    the subscription must not complete before that publisher acknowledges it."""

    async def main() -> None:
        handle = pubsub_handle(settings.namespace)
        laggard = f"laggard-{uuid.uuid4()}"
        routes = await handle.watch.remote(laggard, None, 0)
        epoch, version = (await handle.watch.remote(laggard, routes.epoch, routes.version))[:2]
        sub = Subscriber(settings.namespace)
        sub.start()
        joining = asyncio.ensure_future(sub.subscribe(f"user:{uuid.uuid4()}", print))
        await asyncio.sleep(0.5)
        assert not joining.done(), "the join did not wait for the publisher"
        routes = await handle.watch.remote(laggard, epoch, version)
        newer = routes.version
        assert newer > version and routes.delta, "the publisher learns the new topic"
        assert not joining.done()
        await handle.watch.remote(laggard, epoch, newer)  # acknowledges it
        await asyncio.wait_for(joining, timeout=5)
        await handle.unwatch.remote(laggard)
        await sub.close()

    run(main())


def test_a_publisher_in_use_acknowledges_a_new_topic_at_once(ray_cluster, run, settings) -> None:
    """A publisher in use keeps a watch open, so a join waits for its acknowledgement,
    not for its lease to run out."""

    async def main() -> None:
        pub = Publisher(settings.namespace)
        pub.publish(f"user:{uuid.uuid4()}", "balance", {})  # in use: it watches
        await pub.drain()
        sub = Subscriber(settings.namespace)
        sub.start()
        start = time.monotonic()
        await sub.subscribe(f"user:{uuid.uuid4()}", print)
        assert time.monotonic() - start < broker.LEASE_S / 2
        await sub.close()

    run(main())


def test_a_silent_publisher_is_waited_for_one_lease_at_most(ray_cluster, run, settings) -> None:
    async def main() -> None:
        handle = pubsub_handle(settings.namespace)
        silent = f"silent-{uuid.uuid4()}"
        await handle.watch.remote(silent, None, 0)
        sub = Subscriber(settings.namespace)
        sub.start()
        start = time.monotonic()
        await asyncio.wait_for(sub.subscribe(f"user:{uuid.uuid4()}", print), broker.LEASE_S + 5)
        assert time.monotonic() - start > broker.LEASE_S / 2  # it was waited for
        await sub.close()

    run(main())


def test_a_publisher_that_stopped_watching_trusts_its_copy_no_more(
    ray_cluster, run, settings
) -> None:
    """PubSub stops waiting for a publisher that stopped watching, so that publisher
    must not drop events on its old copy: it asks again before it drops anything."""

    async def main() -> None:
        pub = Publisher(settings.namespace)
        nobody = f"user:{uuid.uuid4()}"
        pub.publish(nobody, "balance", {})
        await pub.drain()
        assert not pub.wants(nobody)
        await asyncio.sleep(broker.KEEP_WATCHING_S + broker.WATCH_HOLD_S + 0.5)
        assert pub.wants(nobody), "an idle publisher's copy is not trusted"
        pub.publish(nobody, "balance", {})
        await pub.drain()  # asks first, so nothing is sent
        assert pub.sent == 0

    run(main())


def test_subscribers_come_back_after_a_broker_restart(ray_cluster, run, settings) -> None:
    async def main() -> None:
        sub = Subscriber(settings.namespace, poll_wait_s=0.2)
        sub.start()
        topic = f"user:{uuid.uuid4()}"
        got = await _collect(sub, topic)
        resyncs = []
        sub.on_resync.append(lambda: resyncs.append(1))
        handle = pubsub_handle(settings.namespace)
        epoch = (await handle.ping.remote())["epoch"]
        ray.kill(handle, no_restart=False)

        async def restarted() -> bool:
            try:
                return (await handle.ping.remote())["epoch"] != epoch
            except Exception:
                return False

        deadline = time.monotonic() + 30
        while not await restarted():
            assert time.monotonic() < deadline, "PubSub did not restart"
            await asyncio.sleep(0.2)
        pub = Publisher(settings.namespace)
        deadline = time.monotonic() + 20
        while not got:  # events are ephemeral: publish until the re-registration is done
            assert time.monotonic() < deadline, "no delivery after the restart"
            pub.publish(topic, "balance", {"n": 1})
            await pub.drain()
            await asyncio.sleep(0.2)
        assert resyncs, "the read caches were told to resync"
        # Healthy once its registration is acknowledged, which may come after a
        # publisher that already knows it has handed it events.
        assert await _until(lambda: sub.healthy)
        await sub.close()

    run(main())
