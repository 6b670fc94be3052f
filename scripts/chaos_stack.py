"""The chaos run's own stack: an embedded PostgreSQL in a temporary directory, a
`ray.cluster_utils.Cluster` (a zero-CPU head and one-CPU worker nodes), the runtime
following the nodes (`LOOTIFY_HOSTS_PER_NODE=1`, as tests/node_scenario.py does), and
the Serve app on a free port of 127.0.0.1, behind the HAProxy ingress of `make up`.

`Stack.open()` builds it; `close()` takes everything down again, whatever state the
faults left it in (PostgreSQL is sent SIGCONT first, in case a hang was under way).
The settings go into this process's environment before any of them is read, so every
process of the cluster (through the runtime environment) sees the same ones.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from local_stack import free_port, haproxy_ingress_env, wait_healthy

# Ray notices a dead node after health_check_period_ms x failure_threshold (3000 x 5
# by default, ~15 s); the node test's figures were taken with 1000 x 3.
HEALTH_CHECKS = {"health_check_period_ms": 1000, "health_check_failure_threshold": 3}
WORKER_NODES = 2
REPLICAS = 2
OPEN_STAKE_TIMEOUT_S = 20.0


def configure_environment() -> dict[str, str]:
    """The chaos run's settings, put in this process's environment (call first)."""
    settings = {
        "LOOTIFY_HOSTS_PER_NODE": "1",
        "LOOTIFY_WATCH_INTERVAL_S": "1",
        "LOOTIFY_HANDOFF_TIMEOUT_S": "2",
        "LOOTIFY_SHARDS": "32",
        "LOOTIFY_WALLET_HOSTS": "1",
        "LOOTIFY_MARKET_HOSTS": "1",
        "LOOTIFY_NAMESPACE": f"lootify-chaos-{os.getpid()}",
        # Short, so that the audit can wait for every open stake's time-out.
        "LOOTIFY_OPEN_STAKE_TIMEOUT_S": str(OPEN_STAKE_TIMEOUT_S),
        "LOOTIFY_RATE_LIMITS": "off",
        "LOOTIFY_JWT_SECRET": secrets.token_hex(32),
        "LOOTIFY_CATALOG_RELOAD_S": "5",
    }
    os.environ.update(settings)
    return settings


@dataclass
class Stack:
    """What `open` started; `close` stops it (each step on its own, so one failure
    does not leave the rest running)."""

    tmp: Path
    dsn: str = ""
    url: str = ""
    cluster: Any = None
    workers: list[Any] = field(default_factory=list)

    @property
    def pg_dir(self) -> Path:
        return self.tmp / "pg"

    @classmethod
    def open(cls, log: Any) -> Stack:
        # Short: HAProxy's unix sockets go under it (`haproxy_ingress_env`).
        stack = cls(Path(tempfile.mkdtemp(prefix="chaos-", dir="/tmp")))
        try:
            stack._start(log)
        except BaseException:
            stack.close()
            raise
        return stack

    def _start(self, log: Any) -> None:
        import asyncio

        import ray
        from ray import serve
        from ray.cluster_utils import Cluster

        import serve_app
        from actors.client import Settings
        from actors.markets.series import scheduler
        from actors.ops import pgserver
        from actors.ops.migrate import migrate

        # Before the cluster starts: Serve's controller reads them when it starts.
        os.environ.update(haproxy_ingress_env(self.tmp / "hap"))
        self.dsn = pgserver.start(self.pg_dir, port=free_port())
        os.environ["DATABASE_URL"] = self.dsn
        asyncio.run(migrate(self.dsn))
        log(f"PostgreSQL up under {self.pg_dir}, migrations applied")
        self.cluster = Cluster(
            initialize_head=True,
            head_node_args={"num_cpus": 0, "include_dashboard": False,
                            "_system_config": HEALTH_CHECKS},
        )
        self.workers = [self.cluster.add_node(num_cpus=1) for _ in range(WORKER_NODES)]
        env = {k: v for k, v in os.environ.items()
               if k.startswith("LOOTIFY_") or k == "DATABASE_URL"}
        ray.init(address=self.cluster.address, namespace=os.environ["LOOTIFY_NAMESPACE"],
                 log_to_driver=False, runtime_env={"env_vars": env})
        log(f"Ray cluster up: a zero-CPU head and {WORKER_NODES} one-CPU workers")
        ray.get(scheduler(Settings()).start.remote(), timeout=120)
        port = free_port()
        # The proxy on the head only: every node of this cluster is on one machine, and
        # proxies on the workers would all ask for the same port.
        serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
        serve.run(serve_app.build(env, replicas=REPLICAS), name="lootify", route_prefix="/",
                  blocking=False)
        self.url = f"http://127.0.0.1:{port}"
        wait_healthy(self.url, 180.0)
        log(f"Serve app healthy at {self.url} ({REPLICAS} replicas)")

    def add_worker(self) -> None:
        """A new one-CPU worker node, from any thread: `Cluster.add_node` installs a
        SIGTERM handler, which only the main thread may (and which `scripts/chaos.py`
        replaces with its own anyway), so it is skipped off the main thread."""
        import threading

        import ray._private.utils as ray_utils

        if threading.current_thread() is threading.main_thread():
            self.workers.append(self.cluster.add_node(num_cpus=1))
            return
        install = ray_utils.set_sigterm_handler
        ray_utils.set_sigterm_handler = lambda _handler: None
        try:
            self.workers.append(self.cluster.add_node(num_cpus=1))
        finally:
            ray_utils.set_sigterm_handler = install

    def pg_processes(self) -> list[psutil.Process]:
        """The postmaster and its children (the backends and auxiliary processes)."""
        from actors.ops import pgserver

        pid = pgserver.pid(self.pg_dir)
        if pid is None:
            return []
        try:
            postmaster = psutil.Process(pid)
            return [postmaster, *postmaster.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def resume_pg(self) -> None:
        for proc in self.pg_processes():
            try:
                proc.send_signal(signal.SIGCONT)
            except psutil.NoSuchProcess:
                pass

    def close(self) -> None:
        import ray
        from ray import serve

        from actors.ops import pgserver

        self.resume_pg()
        steps: list[tuple[str, Any]] = [
            ("serve", serve.shutdown if self.url else None),
            ("ray", ray.shutdown),
            ("cluster", self.cluster.shutdown if self.cluster is not None else None),
            ("postgres", lambda: pgserver.stop(self.pg_dir)),
            ("files", lambda: shutil.rmtree(self.tmp, ignore_errors=True)),
        ]
        for name, step in steps:
            if step is None:
                continue
            try:
                step()
            except Exception as exc:  # noqa: BLE001 - the next steps must still run
                print(f"chaos: stopping {name} failed: {exc!r}", flush=True)
