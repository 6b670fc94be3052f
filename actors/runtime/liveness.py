"""Whether a failed Ray call means its actor is down (dead, restarting or
unreachable), so the caller should get a fresh handle or retry later."""

from __future__ import annotations

from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

ACTOR_DOWN = (RayActorError, ActorDiedError, ActorUnavailableError)


def is_actor_down(error: BaseException) -> bool:
    return isinstance(error, ACTOR_DOWN)
