"""The Ray Serve application: the gateway deployment and how to run it.

Each replica is a process with its own PostgreSQL pool, cluster client, PubSub
subscription, read cache and sockets (see `gateway.context`); the FastAPI app is
built inside the replica (`gateway.http.create_app`), so nothing of it is pickled.

    make up                          # scripts/cluster.py calls deploy(port)
    serve.run(build(), name="lootify", route_prefix="/")   # tests
"""

from __future__ import annotations

import os
from typing import Any

from ray import serve

MAX_ONGOING = int(os.environ.get("LOOTIFY_MAX_ONGOING_REQUESTS", 10_000))


@serve.deployment(
    name="gateway",
    ray_actor_options={"num_cpus": 0},
    # A WebSocket is an ongoing request for its whole life: the default (5) would cap
    # a replica at five sockets.
    max_ongoing_requests=MAX_ONGOING,
    health_check_period_s=5,
)
@serve.ingress()
class Gateway:
    async def __init__(self) -> None:
        from gateway.context import Context

        self.ctx = Context()
        await self.ctx.start()

    def __serve_build_asgi_app__(self) -> Any:
        from gateway.http import create_app

        return create_app(self.ctx)

    async def __del__(self) -> None:
        ctx = getattr(self, "ctx", None)
        if ctx is not None:
            await ctx.close()


def build(env: dict[str, str] | None = None, replicas: int | None = None) -> Any:
    """The bound application. `env`: extra environment for the replicas (tests pass
    the database, namespace and secrets of their own cluster)."""
    options: dict[str, Any] = {"num_cpus": 0}
    if env:
        options["runtime_env"] = {"env_vars": dict(env)}
    count = replicas if replicas is not None else int(os.environ.get("LOOTIFY_REPLICAS", 1))
    return Gateway.options(num_replicas=count, ray_actor_options=options).bind()


def forwarded_env() -> dict[str, str]:
    """The deploying process's `LOOTIFY_*` settings (e.g. `LOOTIFY_RATE_LIMITS=off`), so
    they reach the replicas even when the Ray head was started earlier. Secrets are
    left out: runtime environments are visible in Ray's dashboard."""
    return {
        k: v for k, v in os.environ.items()
        if k.startswith("LOOTIFY_") and "SECRET" not in k and not k.endswith("_DSN")
    }


def deploy(port: int) -> None:
    """Start Serve on 127.0.0.1:`port` and deploy the app (call inside ray.init)."""
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build(forwarded_env()), name="lootify", route_prefix="/", blocking=False)
