"""Serve replicas on every node: the gateway's autoscaling policy.

Serve runs a proxy (HAProxy here) on the head and on every node that holds a replica
(`proxy_location="EveryNode"`), so a load balancer can target a node only once a
replica lives there. The gateway deployment therefore asks for `per_node` replicas for
each alive node of the cluster and caps each node at `per_node`
(`max_replicas_per_node`): N nodes, N x `per_node` replicas, so every node holds
exactly `per_node`. A node that joins gets its replicas on Serve's next control loop; a
node that goes away takes its replicas along and the target follows it down.

This is a Serve custom autoscaling policy (a class: Serve instantiates it once in its
controller with `policy_kwargs`, then calls it every control loop), not a reconciler
of our own: changing `num_replicas` by redeploying an app built in Python restarts
every replica (Serve gives such a deployment a new random version), and with it every
WebSocket.
"""

from __future__ import annotations

import time
from typing import Any

import ray

POLICY = f"{__name__}:ReplicasPerNode"
# Upper bound Serve requires for an autoscaled deployment; nodes beyond it get none.
MAX_NODES = 1000


class ReplicasPerNode:
    def __init__(self, per_node: int = 1, refresh_s: float = 1.0) -> None:
        self.per_node = per_node
        # ray.nodes() is a call to the GCS from Serve's controller loop (every 0.1 s):
        # ask at most this often.
        self.refresh_s = refresh_s
        self.nodes = 1
        self.checked = float("-inf")

    def __call__(self, ctx: Any) -> tuple[int, dict[str, Any]]:
        now = time.monotonic()
        if now - self.checked >= self.refresh_s:
            self.checked = now
            try:
                self.nodes = max(1, sum(1 for node in ray.nodes() if node["Alive"]))
            except Exception:  # noqa: BLE001  # the GCS away for a moment: keep the last count
                pass
        return self.per_node * self.nodes, ctx.policy_state


def autoscaling_config(per_node: int) -> dict[str, Any]:
    """The gateway deployment's `autoscaling_config`: `per_node` replicas a node."""
    return {
        "min_replicas": per_node,
        "max_replicas": per_node * MAX_NODES,
        # A node that joins gets its replica at once; one that leaves is gone already
        # (its replicas with it): a short delay only rides out a flapping count.
        "upscale_delay_s": 0,
        "downscale_delay_s": 5,
        "policy": {"policy_function": POLICY, "policy_kwargs": {"per_node": per_node}},
    }
