"""The replica's payments desk (`LOOTIFY_PAYMENTS=provider`): deposits wait for the
provider's word, withdrawals hold their funds in the queue until paid out, and the
provider's signed webhooks move the money, each exactly once.

The money moves in the wallet, idempotent by reference id: a deposit credits
`provider:<payment id>`, so however many replicas take however many copies of its
webhook, one credit happens; a withdrawal is the reservation `withdrawal:<id>`,
committed to `external` when paid out and released when the payout failed. The
event ids acted on are kept too (`gateway.webhook_events`), recorded in the same
transaction as the deposit's or withdrawal's new status, so a replay is answered
without touching a wallet.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from actors.client import AsyncLootify
from actors.errors import InsufficientFunds, InvalidInput, InvalidTransition, LootifyError
from actors.errors import NotFound as NoSuchPayment

from ..auth.tokens import load_secret
from ..settings import PaymentSettings
from . import store
from .sandbox import PaymentProvider
from .signing import verify

log = logging.getLogger("ray.serve").getChild(__name__)
PROVIDER_TIMEOUT_S = 10.0
SECRET_FILE = "payments_webhook_secret"
_IDS_NS = uuid.UUID("0b6a6a53-3c3e-4f53-8a55-6f0b9c1d2e71")
_PROVIDER_ID = re.compile(r"^[A-Za-z0-9_\-]{1,100}$")


class InvalidPayload(LootifyError):
    status = 400
    code = "invalid_payload"


def webhook_secret(settings: PaymentSettings) -> str:
    """`LOOTIFY_PAYMENTS_WEBHOOK_SECRET`, else one kept under the data directory."""
    return settings.webhook_secret or load_secret(name=SECRET_FILE)


def request_id(kind: str, user_id: str, key: str | None) -> str:
    """A deposit's or withdrawal's id: from the Idempotency-Key when given, so a retried
    request names the same one, else fresh."""
    if key is None:
        return str(uuid.uuid4())
    return str(uuid.uuid5(_IDS_NS, f"{kind}\n{user_id}\n{key}"))


def _payment_ref(payment_id: str) -> str:
    return f"provider:{payment_id}"


def _withdrawal_ref(withdrawal_id: str) -> str:
    return f"withdrawal:{withdrawal_id}"


class PaymentDesk:
    def __init__(self, settings: PaymentSettings, db: Callable[[], asyncpg.Pool],
                 aio: Callable[[], Awaitable[AsyncLootify]], provider: PaymentProvider,
                 secret: str) -> None:
        self.settings = settings
        self.db = db
        self.aio = aio
        self.provider = provider
        self.secret = secret
        self._wake = asyncio.Event()
        self._paying: asyncio.Task | None = None

    def start(self) -> None:
        self._paying = asyncio.ensure_future(self._pay_out_approved())

    async def close(self) -> None:
        if self._paying is not None:
            self._paying.cancel()

    # -- players ---------------------------------------------------------------------------

    async def deposit(self, user_id: str, amount: int, deposit_id: str) -> dict[str, Any]:
        pool = self.db()
        row = await store.create_deposit(pool, deposit_id, user_id, amount)
        if row["provider_payment_id"] is None:
            payment_id = await asyncio.wait_for(
                self.provider.create_payment_intent(deposit_id, amount), PROVIDER_TIMEOUT_S)
            await store.set_payment_id(pool, deposit_id, payment_id)
        return {"deposit": store.view(row)}

    async def withdraw(self, user_id: str, amount: int, withdrawal_id: str,
                       key_id: str | None = None) -> dict[str, Any]:
        """`key_id`: the Idempotency-Key's id, if the player sent one (its hold takes it)."""
        pool = self.db()
        row = await store.create_withdrawal(pool, withdrawal_id, user_id, amount)
        if row["status"] == "requested":
            try:
                # No time-out: the funds stay held until the provider says paid or failed.
                await (await self.aio()).wallet(user_id).reserve(
                    amount, _withdrawal_ref(withdrawal_id), key_id=key_id)
            except (InsufficientFunds, InvalidInput):
                await store.drop_withdrawal(pool, withdrawal_id)
                raise
            auto = amount < self.settings.auto_approve_below
            row = await store.queue_withdrawal(pool, withdrawal_id, auto_approved=auto)
            if auto:
                self._wake.set()
        return {"withdrawal": store.view(row)}

    async def own(self, table: str, user_id: str, row_id: str) -> dict[str, Any]:
        """The caller's deposit or withdrawal; someone else's is 404 as a missing one."""
        read = store.deposit if table == "deposits" else store.withdrawal
        row = await read(self.db(), row_id)
        if row is None or row["user_id"] != user_id:
            raise NoSuchPayment(f"no such {table[:-1]}")
        return store.view(row)

    # -- operators -------------------------------------------------------------------------

    async def approve(self, withdrawal_id: str, operator_id: str) -> dict[str, Any]:
        row = await store.approve(self.db(), withdrawal_id, operator_id)
        self._wake.set()
        return store.view(row)

    async def queue(self, status: str | None, limit: int) -> list[dict[str, Any]]:
        return [store.view(r) for r in await store.list_withdrawals(self.db(), status, limit)]

    async def _pay_out_approved(self) -> None:
        """Ask the provider to pay each approved withdrawal; every replica does, and
        each claims its rows (`for update skip locked`), so each is asked once."""
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self.settings.payout_interval_s)
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                pool = self.db()
                for row in await store.claim_payouts(pool):
                    payout_id = await asyncio.wait_for(
                        self.provider.create_payout(row["id"], row["amount"]),
                        PROVIDER_TIMEOUT_S)
                    await store.set_payout_id(pool, row["id"], payout_id)
            except Exception as exc:  # the database or the provider: try again next time
                log.warning("paying out withdrawals failed: %r", exc)

    # -- the provider's webhook ------------------------------------------------------------

    async def webhook(self, signature: str | None, body: bytes) -> dict[str, Any]:
        verify(signature, body, self.secret, self.settings.tolerance_s)
        event_id, event_type, obj = _parse(body)
        pool = self.db()
        if await store.event_seen(pool, event_id):
            return {"received": True, "duplicate": True}
        handlers = {
            "payment_intent.succeeded": self._deposit_succeeded,
            "payment_intent.payment_failed": self._deposit_failed,
            "payout.paid": self._payout_paid,
            "payout.failed": self._payout_failed,
        }
        handle = handlers.get(event_type)
        if handle is None:  # events we did not ask for are acknowledged, as Stripe expects
            await store.record_event(pool, event_id, event_type)
            return {"received": True, "ignored": True}
        await handle(event_id, event_type, obj)
        return {"received": True}

    async def _deposit_of(self, obj: dict[str, Any]) -> asyncpg.Record:
        row = await store.deposit(self.db(), _metadata_id(obj, "deposit_id"))
        if row is None:
            raise NoSuchPayment("the webhook names no deposit of ours")
        paid = row["provider_payment_id"]
        if paid not in (None, obj["id"]) or row["amount"] != obj.get("amount"):
            raise InvalidPayload("the webhook's payment does not match the deposit")
        return row

    async def _deposit_succeeded(self, event_id: str, event_type: str,
                                 obj: dict[str, Any]) -> None:
        row = await self._deposit_of(obj)
        if row["status"] == "failed":
            raise InvalidTransition("the deposit failed before; it is not credited")
        await (await self.aio()).wallet(row["user_id"]).deposit(
            row["amount"], _payment_ref(obj["id"]))
        await store.finish(self.db(), "deposits", row["id"], "credited", ("pending",),
                           event_id, event_type)

    async def _deposit_failed(self, event_id: str, event_type: str,
                              obj: dict[str, Any]) -> None:
        row = await self._deposit_of(obj)
        await store.finish(self.db(), "deposits", row["id"], "failed", ("pending",),
                           event_id, event_type)

    async def _withdrawal_of(self, obj: dict[str, Any]) -> asyncpg.Record:
        row = await store.withdrawal(self.db(), _metadata_id(obj, "withdrawal_id"))
        if row is None:
            raise NoSuchPayment("the webhook names no withdrawal of ours")
        if row["amount"] != obj.get("amount"):
            raise InvalidPayload("the webhook's payout does not match the withdrawal")
        if row["status"] not in ("paying", "paid", "failed"):
            raise InvalidTransition(f"the withdrawal is {row['status']}: no payout was asked")
        return row

    async def _payout_paid(self, event_id: str, event_type: str, obj: dict[str, Any]) -> None:
        row = await self._withdrawal_of(obj)
        await (await self.aio()).wallet(row["user_id"]).commit(
            _withdrawal_ref(row["id"]), target="external")
        await store.finish(self.db(), "withdrawals", row["id"], "paid", ("paying",),
                           event_id, event_type)

    async def _payout_failed(self, event_id: str, event_type: str, obj: dict[str, Any]) -> None:
        row = await self._withdrawal_of(obj)
        await (await self.aio()).wallet(row["user_id"]).release(_withdrawal_ref(row["id"]))
        await store.finish(self.db(), "withdrawals", row["id"], "failed", ("paying",),
                           event_id, event_type)


def _parse(body: bytes) -> tuple[str, str, dict[str, Any]]:
    """The event's id, type and object, Stripe's shape: `{id, type, data: {object}}`."""
    try:
        event = json.loads(body)
        event_id, event_type, obj = event["id"], event["type"], event["data"]["object"]
    except (ValueError, KeyError, TypeError):
        raise InvalidPayload("expected a JSON event {id, type, data: {object}}") from None
    if not (isinstance(event_id, str) and _PROVIDER_ID.match(event_id)
            and isinstance(event_type, str) and len(event_type) <= 100
            and isinstance(obj, dict) and isinstance(obj.get("id"), str)
            and _PROVIDER_ID.match(obj["id"])):
        raise InvalidPayload("the event's id, type or object is malformed")
    amount = obj.get("amount")
    if "amount" in obj and (isinstance(amount, bool) or not isinstance(amount, int)):
        raise InvalidPayload("the object's amount must be an integer of minor units")
    return event_id, event_type, obj


def _metadata_id(obj: dict[str, Any], name: str) -> str:
    metadata = obj.get("metadata")
    value = metadata.get(name) if isinstance(metadata, dict) else None
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        raise InvalidPayload(f"the object's metadata has no {name}") from None
