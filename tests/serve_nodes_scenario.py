"""Serve on every node, in a `ray.cluster_utils.Cluster` of its own (issue 13, part 4).

Run by `tests/test_nodes.py` in a process of its own (a test session's Ray is already
initialised): `python -m tests.serve_nodes_scenario DSN` prints one JSON line of
findings. The app is deployed as `make up` and `cluster.yaml` deploy it (HAProxy
ingress, `proxy_location="EveryNode"`, `serve_app.build()`), on a zero-CPU head and
one worker; then a second worker joins:

* a replica starts on it and its proxy answers HTTP on its own port;
* a WebSocket on the new node's replica hears the bet placed over HTTP on the first
  worker's replica (its `bet_placed` and the `odds_updated` it causes), and the new
  replica's odds cache (`GET /api/events`) shows the new odds;
* the new node is killed: the survivors keep a replica each, answering.

Every node of a real cluster has its own address and the same port. Here the nodes
share one machine, so each worker's HAProxy gets ports of its own through Serve's
per-node overrides (`RAY_SERVE_WORKER_PROXY_HTTP_PORT` and HAProxy's stats and metrics
ports, read from the environment the node's raylet starts with). A request to a
node's proxy may be balanced to any node's replica; to reach one replica the scenario
uses its own direct-ingress port, the one HAProxy forwards to.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

# Short: HAProxy's socket paths under it (with a node id) must fit in 97 characters.
HAP = tempfile.mkdtemp(prefix="lsn", dir="/tmp")
# Direct-ingress ports of the replicas: a range of their own, to find them by.
DIRECT_PORTS = (30000, 31000)
# Before any import reads them: every process of the cluster inherits them.
os.environ.update(
    LOOTIFY_NAMESPACE=f"lootify-serve-nodes-{os.getpid()}",
    LOOTIFY_SHARDS="32",
    # Hosts start while replicas and HAProxies do, on two shared cores: give them time.
    LOOTIFY_CALL_DEADLINE_S="60",
    LOOTIFY_RATE_LIMITS="off",
    # The odds cache must learn the new odds over PubSub, not by reloading.
    LOOTIFY_CATALOG_RELOAD_S="3600",
    LOOTIFY_JWT_SECRET="serve-nodes-" + "x" * 40,
    # As `make up` and cluster.yaml run Serve (scripts/local_stack.haproxy_ingress_env).
    RAY_SERVE_THROUGHPUT_OPTIMIZED="1",
    RAY_SERVE_ENABLE_HA_PROXY="1",
    RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S="1",
    RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT=str(DIRECT_PORTS[0]),
    RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT=str(DIRECT_PORTS[1]),
    RAY_SERVE_HAPROXY_CONFIG_FILE_LOC=f"{HAP}/haproxy.cfg",
    RAY_SERVE_HAPROXY_SOCKET_PATH=f"{HAP}/admin.sock",
    RAY_SERVE_HAPROXY_SERVER_STATE_BASE=HAP,
    RAY_SERVE_HAPROXY_SERVER_STATE_FILE=f"{HAP}/server-state",
    RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH=f"{HAP}/metrics.sock",
    FORWARDED_ALLOW_IPS="",
)

import httpx  # noqa: E402
import psutil  # noqa: E402
import ray  # noqa: E402
from ray import serve  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402
from ray.util.state import list_actors  # noqa: E402
from websockets.sync.client import connect  # noqa: E402

import serve_app  # noqa: E402
from actors.client import AsyncLootify, LoopThread, Settings  # noqa: E402
from tests.node_scenario import HEALTH_CHECKS, wait_for  # noqa: E402

REPLICA_CLASS = "ServeReplica:lootify:gateway"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ports_for_next_node(worker: bool) -> int:
    """Ports of their own for the next node's HAProxy; its HTTP port."""
    http = free_port()
    os.environ["RAY_SERVE_HAPROXY_STATS_PORT"] = str(free_port())
    os.environ["RAY_SERVE_HAPROXY_METRICS_PORT"] = str(free_port())
    if worker:
        os.environ["RAY_SERVE_WORKER_PROXY_HTTP_PORT"] = str(http)
    return http


def replicas(address: str) -> dict[str, int]:
    """node id -> pid of the gateway replica running there."""
    return {
        a.node_id: a.pid
        for a in list_actors(address=address, filters=[("class_name", "=", REPLICA_CLASS)])
        if a.state == "ALIVE"
    }


def direct_port(pid: int) -> int | None:
    """The replica's direct-ingress HTTP port (what its node's HAProxy forwards to)."""
    low, high = DIRECT_PORTS
    for conn in psutil.Process(pid).net_connections("tcp"):
        if conn.status == psutil.CONN_LISTEN and low <= conn.laddr.port < high:
            return conn.laddr.port
    return None


def answers(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/api/events", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def market_odds(port: int, market_id: str) -> dict[str, str | None]:
    events = httpx.get(f"http://127.0.0.1:{port}/api/events", timeout=5).json()["events"]
    for event in events:
        for market in event["markets"]:
            if market["id"] == market_id:
                return {s["key"]: s["odds"] for s in market["selections"]}
    raise KeyError(market_id)


def main(dsn: str) -> dict[str, Any]:
    os.environ["DATABASE_URL"] = dsn
    ports: dict[str, int] = {}
    head_port = ports_for_next_node(worker=False)
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "_system_config": HEALTH_CHECKS},
    )
    ports[cluster.head_node.node_id] = head_port
    port = ports_for_next_node(worker=True)
    ports[cluster.add_node(num_cpus=1).node_id] = port
    env = {k: v for k, v in os.environ.items()
           if k.startswith("LOOTIFY_") or k in ("DATABASE_URL", "FORWARDED_ALLOW_IPS")}
    ray.init(address=cluster.address, namespace=os.environ["LOOTIFY_NAMESPACE"],
             log_to_driver=False, runtime_env={"env_vars": env})
    try:
        return run_scenario(cluster, ports, head_port, env)
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            cluster.shutdown()
            shutil.rmtree(HAP, ignore_errors=True)


def every_node_served(cluster: Cluster, ports: dict[str, int]) -> dict[str, int] | None:
    alive = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    found = replicas(cluster.address)
    if set(found) != alive or not all(answers(ports[node]) for node in alive):
        return None
    return found


def run_scenario(cluster: Cluster, ports: dict[str, int], head_port: int,
                 env: dict[str, str]) -> dict[str, Any]:
    loop = LoopThread()
    aio = loop.run(AsyncLootify.create(settings=Settings()))
    # Before the replicas start, so every odds cache loads it with the catalogue.
    event = loop.run(aio.create_event("Home x Away", "football",
                                      datetime.now(UTC) + timedelta(days=1)))
    market = loop.run(aio.create_market(
        event["id"], "Winner", "pool",
        [{"key": "home", "name": "Home"}, {"key": "away", "name": "Away"}], takeout="0.10"))
    findings: dict[str, Any] = {}
    serve.start(proxy_location="EveryNode", http_options={"host": "127.0.0.1", "port": head_port})
    serve.run(serve_app.build(env), name="lootify", route_prefix="/", blocking=False)
    wait_for(lambda: every_node_served(cluster, ports), 180, "a replica on each node")

    # A node joins: a replica starts on it, and its proxy answers.
    started = time.monotonic()
    port = ports_for_next_node(worker=True)
    joined = cluster.add_node(num_cpus=1)
    ports[joined.node_id] = port
    wait_for(lambda: joined.node_id in replicas(cluster.address), 120, "a replica on the new node")
    findings["join_to_replica_s"] = time.monotonic() - started
    found = wait_for(lambda: every_node_served(cluster, ports), 120, "the new node's proxy")
    findings["join_to_answering_s"] = time.monotonic() - started
    findings["replica_nodes"] = sorted(found)
    findings["nodes"] = sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])
    findings["proxies"] = {node: str(status) for node, status in serve.status().proxies.items()}
    findings["new_node"] = joined.node_id

    # Across nodes: a bet over HTTP on one worker's replica, heard on the other's socket.
    first = next(node for node in found if node not in (cluster.head_node.node_id,
                                                        joined.node_id))
    a = wait_for(lambda: direct_port(found[first]), 30, "replica A's port")
    b = wait_for(lambda: direct_port(found[joined.node_id]), 30, "replica B's port")
    findings.update(cross_node(a, b, event["id"], market["id"]))

    # The node dies: its replica goes with it, the survivors keep theirs (the same
    # processes: no replica restarted) and Serve's target follows the nodes down.
    survivors = {node: pid for node, pid in found.items() if node != joined.node_id}
    started = time.monotonic()
    cluster.remove_node(joined, allow_graceful=False)
    del ports[joined.node_id]

    def settled() -> bool:
        gateway = serve.status().applications["lootify"].deployments["gateway"]
        states = {getattr(k, "value", k): n for k, n in gateway.replica_states.items()}
        return (states == {"RUNNING": len(survivors)} and replicas(cluster.address) == survivors
                and bool(every_node_served(cluster, ports)))

    wait_for(settled, 120, "a replica on each survivor, and no other")
    findings["kill_to_settled_s"] = time.monotonic() - started
    findings["nodes_after_kill"] = sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])
    findings["replica_nodes_after_kill"] = sorted(survivors)
    return findings


def post(client: httpx.Client, path: str, token: str, body: dict) -> dict:
    """POST until answered: a 503 (the request's deadline, on a loaded machine) is
    retried with the same `Idempotency-Key`."""
    headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": str(uuid.uuid4())}

    def answered() -> httpx.Response | None:
        r = client.post(path, headers=headers, json=body)
        if r.status_code == 503:
            return None
        assert r.status_code in (200, 201), r.text
        return r

    return wait_for(answered, 60, f"an answer to {path}").json()


def cross_node(a: int, b: int, event_id: str, market_id: str) -> dict[str, Any]:
    http_a = httpx.Client(base_url=f"http://127.0.0.1:{a}", timeout=30)
    r = http_a.post("/api/auth/register", json={
        "email": f"u{uuid.uuid4().hex[:12]}@example.com", "username": "tester",
        "password": "correct horse " + uuid.uuid4().hex[:6]})
    assert r.status_code == 201, r.text
    user, token = r.json()["user"]["id"], r.json()["token"]
    post(http_a, "/api/wallet/deposit", token, {"amount": "100.00"})
    before = market_odds(b, market_id)
    url = f"ws://127.0.0.1:{b}/socket/websocket?vsn=2.0.0&token={token}"
    with connect(url, proxy=None, open_timeout=30) as ws:
        frames: list[list] = []

        def next_frame(match: Any, timeout: float = 20.0) -> list:
            deadline = time.monotonic() + timeout
            while True:
                for frame in frames:
                    if match(frame):
                        frames.remove(frame)
                        return frame
                frames.append(json.loads(ws.recv(timeout=max(0.01, deadline - time.monotonic()))))

        for ref, topic in enumerate((f"user:{user}", f"event:{event_id}"), start=1):
            ws.send(json.dumps([str(ref), str(ref), topic, "phx_join", {}]))
            reply = next_frame(lambda f, ref=ref: f[1] == str(ref) and f[3] == "phx_reply")
            assert reply[4]["status"] == "ok", reply
        placed = [
            post(http_a, "/api/bets", token,
                 {"market_id": market_id, "selection": selection, "amount": amount})["bet"]["id"]
            for selection, amount in (("home", "5.00"), ("away", "10.00"))
        ]
        heard = {next_frame(lambda f: f[3] == "bet_placed")[4]["id"] for _ in placed}
        pushed: dict[str, Any] = {}

        def final_odds() -> bool:
            frame = next_frame(lambda f: f[3] == "odds_updated")
            assert frame[4]["market_id"] == market_id
            pushed.update(frame[4]["odds"])
            return all(pushed.get(key) is not None for key in ("home", "away"))

        wait_for(final_odds, 30, "odds_updated for both selections")
    wait_for(lambda: market_odds(b, market_id) == pushed, 20, "replica B's odds cache")
    http_a.close()
    return {"bets": placed, "bets_heard": sorted(heard), "odds_before": before,
            "odds_pushed": pushed, "odds_cached_b": market_odds(b, market_id),
            "replica_ports": [a, b]}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])))
