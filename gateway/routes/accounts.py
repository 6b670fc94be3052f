"""HTTP: `/api/auth/*` and `/api/wallet/*`."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse

from actors.money import parse_amount

from .. import idempotency, services, views
from ..auth import tokens
from ..deps import Authenticated, IdempotencyKey, client_ip, ctx_of, idempotent, reference_for
from ..payments.desk import PaymentDesk, request_id
from ..schemas import (
    ERRORS,
    AmountIn,
    AuthOut,
    BalanceOut,
    LoginIn,
    MeOut,
    RegisterIn,
    TransactionsOut,
)

router = APIRouter(responses=ERRORS)


# -- auth ----------------------------------------------------------------------------------


@router.post("/api/auth/register", status_code=201, response_model=AuthOut, tags=["auth"])
async def register(body: RegisterIn, request: Request) -> dict:
    user, token = await services.register(
        ctx_of(request), client_ip(request), body.email, body.username, body.password
    )
    return {"user": views.user(user), "token": token}


@router.post("/api/auth/login", response_model=AuthOut, tags=["auth"])
async def login(body: LoginIn, request: Request) -> dict:
    user, token = await services.login(
        ctx_of(request), client_ip(request), body.email, body.password
    )
    return {"user": views.user(user), "token": token}


@router.get("/api/auth/me", response_model=MeOut, tags=["auth"])
async def me(request: Request, claims: tokens.Claims = Authenticated) -> dict:
    return {"user": views.user(await services.account(ctx_of(request), claims.user_id))}


@router.post("/api/auth/logout", status_code=204, response_class=Response, tags=["auth"])
async def logout(request: Request, claims: tokens.Claims = Authenticated) -> Response:
    await services.logout(ctx_of(request), claims)
    return Response(status_code=204)


# -- wallet --------------------------------------------------------------------------------


@router.get("/api/wallet/balance", response_model=BalanceOut, tags=["wallet"])
async def balance(request: Request, claims: tokens.Claims = Authenticated) -> dict:
    ctx = ctx_of(request)
    return views.balance(await services.balance(ctx, claims.user_id), ctx.settings.currency)


async def _move(request: Request, claims: tokens.Claims, kind: str, amount: str) -> JSONResponse:
    """Deposit or withdraw `amount` for the caller, under its Idempotency-Key."""
    minor = parse_amount(amount)
    ctx = ctx_of(request)
    move = services.deposit if kind == "deposit" else services.withdraw

    async def work(key: str | None) -> tuple[int, dict]:
        key_id = None if key is None else idempotency.key_id(claims.user_id, key)
        if key_id is not None:
            await services.refuse_a_bet_key(ctx, key_id)
        if ctx.payments is not None:  # through the provider: pending, answered 202
            return 202, await _through_provider(ctx.payments, claims.user_id, kind, minor, key,
                                                key_id)
        b = await move(ctx, claims.user_id, minor, reference_for(kind, key), key_id)
        return 200, views.balance(b, ctx.settings.currency)

    return await idempotent(request, claims, work)


async def _through_provider(desk: PaymentDesk, user_id: str, kind: str, minor: int,
                            key: str | None, key_id: str | None) -> dict:
    if kind == "deposit":
        return await desk.deposit(user_id, minor, request_id(kind, user_id, key))
    return await desk.withdraw(user_id, minor, request_id(kind, user_id, key), key_id)


@router.post("/api/wallet/deposit", response_model=BalanceOut, tags=["wallet"])
async def deposit(
    body: AmountIn, request: Request, claims: tokens.Claims = Authenticated,
    idempotency_key: str | None = IdempotencyKey,
):
    return await _move(request, claims, "deposit", body.amount)


@router.post("/api/wallet/withdraw", response_model=BalanceOut, tags=["wallet"])
async def withdraw(
    body: AmountIn, request: Request, claims: tokens.Claims = Authenticated,
    idempotency_key: str | None = IdempotencyKey,
):
    return await _move(request, claims, "withdraw", body.amount)


@router.get("/api/wallet/transactions", response_model=TransactionsOut, tags=["wallet"])
async def transactions(
    request: Request,
    claims: tokens.Claims = Authenticated,
    limit: int = Query(50, ge=1, le=500),
    before: str | None = Query(None, max_length=64, description="a transaction id"),
) -> dict:
    rows = await services.transactions(ctx_of(request), claims.user_id, limit, before)
    return {"transactions": [views.transaction(r) for r in rows]}
