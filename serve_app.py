"""The Ray Serve application: the gateway deployment and how to run it.

Each replica is a process with its own PostgreSQL pool, cluster client, PubSub
subscription, read cache and sockets (see `gateway.context`); the FastAPI app is
built inside the replica (`gateway.app.create_app`), so nothing of it is pickled.

    make up                          # scripts/cluster.py calls deploy(port)
    serve.run(build(), name="lootify", route_prefix="/")   # tests
"""

from __future__ import annotations

import gc
from typing import Any

from ray import serve

from gateway import every_node
from gateway.app import create_app
from gateway.context import Context
from gateway.settings import GatewaySettings, forwarded_env

UVICORN_TRUSTED_PROXIES = "FORWARDED_ALLOW_IPS"


@serve.deployment(
    name="gateway",
    ray_actor_options={"num_cpus": 0},
    health_check_period_s=5,
)
@serve.ingress()
class Gateway:
    async def __init__(self) -> None:  # type: ignore[misc]  # Serve awaits an async __init__
        # Read here, in the replica: its environment is the deployment's runtime_env.
        self.ctx = Context(GatewaySettings.from_env())
        await self.ctx.start()

    def __serve_build_asgi_app__(self) -> Any:
        app = create_app(self.ctx)
        # What exists now (Ray, Serve, FastAPI, the app) lives as long as the replica:
        # keep it out of the collector's scans, and scan the young less often; a
        # request's objects are mostly freed by reference counting anyway. With
        # Python's defaults the collector took a sixth of the replica's CPU per bet.
        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 50, 100)
        return app

    async def __del__(self) -> None:
        ctx = getattr(self, "ctx", None)
        if ctx is not None:
            await ctx.close()


def build(env: dict[str, str] | None = None, replicas: int | None = None) -> Any:
    """The bound application. `env`: extra environment for the replicas (tests pass
    the database, namespace and secrets of their own cluster). `replicas`: replicas on
    each node (`LOOTIFY_REPLICAS`), kept as nodes come and go (`gateway.every_node`)."""
    settings = GatewaySettings.from_env()
    options: dict[str, Any] = {"num_cpus": 0, "runtime_env": {"env_vars": {
        # uvicorn (Serve's HTTP server) would otherwise take the client address from
        # X-Forwarded-For for any peer on loopback, forged or not: the gateway alone
        # decides whom to believe (`LOOTIFY_TRUSTED_PROXIES`, `gateway.deps.client_ip`).
        UVICORN_TRUSTED_PROXIES: "",
        **(env or {}),
    }}}
    per_node = replicas if replicas is not None else settings.replicas
    return Gateway.options(  # type: ignore[attr-defined]  # serve.deployment made it one
        num_replicas=None,
        autoscaling_config=every_node.autoscaling_config(per_node),
        max_replicas_per_node=per_node,
        # A WebSocket is an ongoing request for its whole life: the default (5) would cap
        # a replica at five sockets.
        max_ongoing_requests=settings.max_ongoing_requests,
        # A stopping replica finishes its requests in flight first (polled every half
        # second); its sockets were told to reconnect when the stop began (`make down`).
        graceful_shutdown_timeout_s=settings.graceful_shutdown_s,
        graceful_shutdown_wait_loop_s=0.5,
        ray_actor_options=options,
        # JSON lines, each with the request id Serve assigned (the hosts log it too).
        logging_config={"enable_access_log": settings.access_log, "encoding": "JSON"},
    ).bind()


def deploy(port: int, host: str = "127.0.0.1") -> None:
    """Start Serve on `host`:`port` (`LOOTIFY_HTTP_HOST`) and deploy the app (call
    inside ray.init). A proxy runs on every node that holds a replica, and every node
    holds one (`gateway.every_node`): a load balancer can target any node."""
    serve.start(proxy_location="EveryNode", http_options={"host": host, "port": port})
    serve.run(build(forwarded_env()), name="lootify", route_prefix="/", blocking=False)
