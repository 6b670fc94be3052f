"""The sandbox payment provider: what the gateway asks of a real one (payment intents
for deposits, payouts for withdrawals), answered as a real one answers, later, with
signed webhooks posted to the gateway over HTTP.

It runs inside each replica (`LOOTIFY_PAYMENTS=provider`, under `make up` and in the
tests). Like a provider's test mode it fails on purpose for amounts whose cents are
`FAILING_CENTS` (e.g. "20.13"): the deposit is refused, the payout fails. It keeps
the events it has still to deliver in memory only: a replica that stops forgets them
(a real provider keeps retrying for days).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
import uuid
from typing import Any, Protocol

import httpx

from .signing import HEADER, sign

log = logging.getLogger("ray.serve").getChild(__name__)
FAILING_CENTS = 13
POST_TIMEOUT_S = 10.0
RETRIES = 5


class PaymentProvider(Protocol):
    """What the gateway asks of a payment provider; both are idempotent by our id."""

    async def create_payment_intent(self, deposit_id: str, amount: int) -> str:
        """The provider's payment id for a deposit of `amount` minor units."""

    async def create_payout(self, withdrawal_id: str, amount: int) -> str:
        """The provider's payout id for a withdrawal of `amount` minor units."""


class SandboxProvider:
    def __init__(self, webhook_url: str, secret: str, delay_s: float, deliveries: int) -> None:
        self.webhook_url = webhook_url
        self.secret = secret
        self.delay_s = delay_s
        self.deliveries = max(1, deliveries)
        self._deliveries: set[asyncio.Task] = set()

    async def create_payment_intent(self, deposit_id: str, amount: int) -> str:
        payment_id = f"pi_{uuid.UUID(deposit_id).hex}"
        outcome = "payment_failed" if amount % 100 == FAILING_CENTS else "succeeded"
        self._later(f"payment_intent.{outcome}", payment_id, amount, {"deposit_id": deposit_id})
        return payment_id

    async def create_payout(self, withdrawal_id: str, amount: int) -> str:
        payout_id = f"po_{uuid.UUID(withdrawal_id).hex}"
        outcome = "failed" if amount % 100 == FAILING_CENTS else "paid"
        self._later(f"payout.{outcome}", payout_id, amount, {"withdrawal_id": withdrawal_id})
        return payout_id

    def _later(self, event_type: str, object_id: str, amount: int,
               metadata: dict[str, str]) -> None:
        # One event per object and outcome, whatever the number of deliveries.
        event_id = "evt_" + hashlib.sha256(f"{event_type}|{object_id}".encode()).hexdigest()[:24]
        event = {"id": event_id, "object": "event", "type": event_type,
                 "created": int(time.time()),
                 "data": {"object": {"id": object_id, "amount": amount, "metadata": metadata}}}
        task = asyncio.ensure_future(self._deliver(event))
        self._deliveries.add(task)
        task.add_done_callback(self._deliveries.discard)

    async def _deliver(self, event: dict[str, Any]) -> None:
        await asyncio.sleep(self.delay_s)
        body = json.dumps(event).encode()
        async with httpx.AsyncClient(timeout=POST_TIMEOUT_S) as client:
            for _ in range(self.deliveries):
                await self._post(client, event["id"], body)

    async def _post(self, client: httpx.AsyncClient, event_id: str, body: bytes) -> None:
        for attempt in range(RETRIES):
            try:
                r = await client.post(self.webhook_url, content=body, headers={
                    HEADER: sign(self.secret, body), "Content-Type": "application/json"})
                if r.status_code < 500:
                    if r.status_code >= 400:
                        log.warning("webhook %s refused: %s %s", event_id, r.status_code, r.text)
                    return
            except httpx.HTTPError as exc:
                log.warning("webhook %s not delivered: %r", event_id, exc)
            await asyncio.sleep(0.5 * 2**attempt)

    async def close(self) -> None:
        for task in list(self._deliveries):
            task.cancel()
