"""HTTP: the payment provider's webhook, players' deposits and withdrawals, and the
operators' withdrawal queue (`LOOTIFY_PAYMENTS=provider`; in direct mode there is no
provider and these answer 404)."""

from __future__ import annotations

import uuid
from typing import Literal

from fastapi import APIRouter, Query, Request

from actors.errors import NotFound

from ..auth import tokens
from ..context import Context
from ..deps import Authenticated, Operator, ctx_of
from ..payments.desk import PaymentDesk
from ..payments.signing import HEADER
from ..schemas import ERRORS

router = APIRouter(responses=ERRORS, tags=["payments"])
QueueStatus = Literal["requested", "pending", "approved", "paying", "paid", "failed"]


def _desk(ctx: Context) -> PaymentDesk:
    if ctx.payments is None:
        raise NotFound("payments are direct (LOOTIFY_PAYMENTS=direct): there is no provider")
    return ctx.payments


@router.post("/api/payments/webhook")
async def webhook(request: Request) -> dict:
    """The provider's events, signed in the `Lootify-Signature` header: 400 when the
    signature is bad or stale, and nothing moves."""
    desk = _desk(ctx_of(request))
    return await desk.webhook(request.headers.get(HEADER), await request.body())


@router.get("/api/wallet/deposits/{deposit_id}")
async def deposit(deposit_id: str, request: Request,
                  claims: tokens.Claims = Authenticated) -> dict:
    desk = _desk(ctx_of(request))
    return {"deposit": await desk.own("deposits", claims.user_id, _uuid(deposit_id))}


@router.get("/api/wallet/withdrawals/{withdrawal_id}")
async def withdrawal(withdrawal_id: str, request: Request,
                     claims: tokens.Claims = Authenticated) -> dict:
    desk = _desk(ctx_of(request))
    return {"withdrawal": await desk.own("withdrawals", claims.user_id, _uuid(withdrawal_id))}


@router.get("/api/withdrawals")
async def queue(request: Request, claims: tokens.Claims = Operator,
                status: QueueStatus | None = None,
                limit: int = Query(100, ge=1, le=500)) -> dict:
    """The withdrawal queue, oldest first (operators)."""
    return {"withdrawals": await _desk(ctx_of(request)).queue(status, limit)}


@router.post("/api/withdrawals/{withdrawal_id}/approve")
async def approve(withdrawal_id: str, request: Request,
                  claims: tokens.Claims = Operator) -> dict:
    """Approve a pending withdrawal: the provider pays it out (operators)."""
    desk = _desk(ctx_of(request))
    return {"withdrawal": await desk.approve(_uuid(withdrawal_id), claims.user_id)}


def _uuid(value: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise NotFound("no such payment") from None
