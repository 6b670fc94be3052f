"""Stopping the stack under load (`make down`'s sequence, `actors.ops.shutdown`): the
sockets are told to reconnect (1012), Serve finishes the requests in flight, the hosts
commit what they admitted, and nothing acknowledged is lost: every deposit answered
200 is in PostgreSQL. The session's app and hosts are brought back afterwards."""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field

import httpx
import pytest
import ray
from ray import serve
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

import serve_app
from actors.ops.shutdown import drain_hosts, host_handles, tell_replicas_to_drain
from actors.runtime import RuntimeSettings
from tests.gateway.test_ws import Phx, ws_url
from tests.polling import wait_until
from tests.serve_fixtures import replica_env

pytestmark = pytest.mark.cluster

CLIENTS = 4


@dataclass
class Deposits:
    url: str
    users: list
    # (user, key, sent at, status or the transport error)
    answered: list[tuple[str, str, float, int]] = field(default_factory=list)
    unanswered: list[tuple[str, str, float, str]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def client(self, user) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as http:
            while not self.stop.is_set():
                key = f"stop-{uuid.uuid4().hex}"
                started = time.monotonic()
                try:
                    r = http.post("/api/wallet/deposit", json={"amount": "1.00"},
                                  headers={**user.headers, "Idempotency-Key": key})
                except httpx.HTTPError as exc:
                    self.unanswered.append((user.id, key, started, repr(exc)))
                    self.stop.wait(0.1)
                    continue
                self.answered.append((user.id, key, started, r.status_code))
                if r.status_code != 200:
                    self.stop.wait(0.1)


def _restore(settings, database_url: str, serve_url: str, namespace: str) -> None:
    """Fresh host processes (a drained host admits nothing) and the app again."""
    for kind in ("markets", "wallets"):
        for h in host_handles(namespace, kind):
            ray.kill(h, no_restart=False)
    serve.run(serve_app.build(replica_env(database_url, settings)), name="lootify",
              route_prefix="/", blocking=False)

    def healthy() -> bool:
        try:
            return httpx.get(serve_url + "/health", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(healthy, timeout=120, interval=0.5, what="the app and hosts back")


def test_stopping_under_load_loses_nothing_acknowledged(
        api: httpx.Client, new_user, serve_url: str, settings, database_url: str, sql) -> None:
    namespace = settings.namespace
    users = [new_user() for _ in range(CLIENTS)]
    listener = new_user()
    with connect(ws_url(serve_url) + f"?vsn=2.0.0&token={listener.token}", proxy=None,
                 open_timeout=15) as ws:
        phx = Phx(ws)
        assert phx.join(f"user:{listener.id}")["status"] == "ok"
        load = Deposits(serve_url, users)
        workers = [threading.Thread(target=load.client, args=(u,)) for u in users]
        for w in workers:
            w.start()
        try:
            wait_until(lambda: sum(s == 200 for *_, s in load.answered) >= 2 * CLIENTS,
                       timeout=30, what="deposits before the stop")
            assert tell_replicas_to_drain(namespace)
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=10)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012
            stopping = time.monotonic()
            serve.delete("lootify")  # waits for the replicas' graceful shutdown
            left = drain_hosts(namespace, RuntimeSettings().drain_timeout_s)
            assert left == {"markets": 0, "wallets": 0}, left
        finally:
            load.stop.set()
            for w in workers:
                w.join(timeout=60)
            _restore(settings, database_url, serve_url, namespace)

    # Requests sent before the stop began were all answered, not cut off.
    cut = [u for u in load.unanswered if u[2] < stopping - 1.0]
    assert not cut, cut[:5]
    acked = [(user, key) for user, key, _, status in load.answered if status == 200]
    assert acked
    stored = {(str(r["wallet_id"]), r["op_key"]) for r in sql(
        "select wallet_id, op_key from wallets.operations where op_key like 'http:deposit:stop-%'")}
    lost = [a for a in acked if (a[0], f"http:deposit:{a[1]}") not in stored]
    assert not lost, lost[:5]
