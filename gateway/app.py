"""The FastAPI application of one replica: routes, the contract's error shape, the
body-size limit, the request deadline, request metrics, `/health`, `/metrics`, the
Phoenix socket, the live odds page at `/` (`gateway.page`), and the lane that takes
bets past the router (`gateway.lane`)."""

from __future__ import annotations

from fastapi import FastAPI, WebSocket
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from . import lane
from .context import Context
from .error_handlers import add_error_handlers
from .health import check_health
from .middleware import BodyLimit, Deadline, RequestMetrics
from .page import add_page_routes
from .realtime.hub import Hub
from .realtime.sockets import CLOSE_RESTART, serve_socket
from .request_ids import RequestIds
from .routes import accounts, betting, payments, series
from .schemas import HealthOut


def create_app(ctx: Context) -> FastAPI:
    app = FastAPI(
        title="Lootify",
        version="1.0.0",
        description="Sports betting on Ray: wallets, events, markets and bets. Money and "
        "odds are decimal strings with two places; errors are "
        '`{"error": {"code", "message"}}`.',
    )
    app.state.ctx = ctx
    hub = Hub(ctx.subscriber, ctx.metrics, ctx.settings.currency)
    ctx.on_drain.append(lambda: hub.close_all(CLOSE_RESTART))
    add_error_handlers(app)
    app.include_router(accounts.router)
    app.include_router(betting.router)
    app.include_router(payments.router)
    app.include_router(series.router)
    add_page_routes(app)

    @app.get("/health", response_model=HealthOut, tags=["operations"],
             responses={503: {"model": HealthOut}})
    async def health() -> JSONResponse:
        status, checks = await check_health(ctx)
        return JSONResponse({"status": status, "checks": checks},
                            status_code=503 if status == "unhealthy" else 200)

    @app.get("/metrics", response_class=Response, tags=["operations"])
    async def metrics() -> Response:
        return Response(await ctx.cluster_metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.websocket("/socket/websocket")
    async def socket(websocket: WebSocket) -> None:
        await serve_socket(websocket, ctx, hub)

    lane.install(app)
    app.add_middleware(BodyLimit, limit=ctx.settings.max_body_bytes)
    app.add_middleware(Deadline, seconds=ctx.settings.request_deadline_s)
    app.add_middleware(RequestMetrics, metrics=ctx.metrics)
    app.add_middleware(RequestIds)
    if ctx.settings.cors_origins:  # outermost, so preflights are answered before the rest
        app.add_middleware(CORSMiddleware, allow_origins=list(ctx.settings.cors_origins),
                           allow_methods=["*"], allow_headers=["*"],
                           expose_headers=["X-Request-ID", "Idempotent-Replayed"])
    return app
