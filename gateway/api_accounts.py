"""HTTP: `/api/auth/*` and `/api/wallet/*`."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse

from actors.errors import Unauthenticated
from actors.money import parse_amount

from . import tokens, users, views
from .deps import Authenticated, IdempotencyKey, client_ip, ctx_of, idempotent, reference_for
from .schemas import (
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
    ctx = ctx_of(request)
    await ctx.rate().check_register(client_ip(request))
    user = await users.create_user(ctx.db(), body.email, body.username, body.password)
    return {"user": views.user(user), "token": tokens.issue(user)}


@router.post("/api/auth/login", response_model=AuthOut, tags=["auth"])
async def login(body: LoginIn, request: Request) -> dict:
    ctx = ctx_of(request)
    limiter = ctx.rate()
    await limiter.check_login(client_ip(request), body.email)
    try:
        user = await users.authenticate(ctx.db(), body.email, body.password)
    except Unauthenticated:
        await limiter.login_failed(body.email)
        raise
    await limiter.login_succeeded(body.email)
    return {"user": views.user(user), "token": tokens.issue(user)}


@router.get("/api/auth/me", response_model=MeOut, tags=["auth"])
async def me(request: Request, claims: tokens.Claims = Authenticated) -> dict:
    user = await users.get_user(ctx_of(request).db(), claims.user_id)
    if user is None:
        raise Unauthenticated("the account of this token no longer exists")
    return {"user": views.user(user)}


@router.post("/api/auth/logout", status_code=204, response_class=Response, tags=["auth"])
async def logout(request: Request, claims: tokens.Claims = Authenticated) -> Response:
    await tokens.revoke(ctx_of(request).db(), claims)
    return Response(status_code=204)


# -- wallet --------------------------------------------------------------------------------


@router.get("/api/wallet/balance", response_model=BalanceOut, tags=["wallet"])
async def balance(request: Request, claims: tokens.Claims = Authenticated) -> dict:
    aio = await ctx_of(request).aio()
    return views.balance(await aio.wallet(claims.user_id).balance())


async def _move(request: Request, claims: tokens.Claims, kind: str, amount: str) -> JSONResponse:
    """Deposit or withdraw `amount` for the caller, under its Idempotency-Key."""
    minor = parse_amount(amount)

    async def work(key: str | None) -> tuple[int, dict]:
        wallet = (await ctx_of(request).aio()).wallet(claims.user_id)
        b = await getattr(wallet, kind)(minor, reference_for(kind, key))
        return 200, views.balance(b)

    return await idempotent(request, claims, work)


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
    aio = await ctx_of(request).aio()
    rows = await aio.wallet(claims.user_id).transactions(limit, before)
    return {"transactions": [views.transaction(r) for r in rows]}
