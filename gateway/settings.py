"""The gateway's settings, the one place it reads the environment.

A Serve replica reads `GatewaySettings.from_env()` once, when it starts (its
environment is the deployment's runtime environment); the deploying process reads
the deployment's own settings (`max_ongoing_requests`, `replicas`, `http_port`) the
same way. Token settings are the exception: see `TokenSettings`.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from actors.money import parse_amount

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _flag(value: str) -> bool:
    return value.strip().lower() not in ("off", "0", "false", "no", "disabled")


@dataclass(frozen=True)
class RateLimitSettings:
    """`LOOTIFY_RATE_LIMITS` on|off (default on), `LOOTIFY_RATE_REGISTER_PER_MIN` (10),
    `LOOTIFY_RATE_LOGIN_PER_MIN` (10), `LOOTIFY_LOGIN_LOCKOUT_FAILURES` (5),
    `LOOTIFY_LOGIN_LOCKOUT_S` (900), `LOOTIFY_RATE_BETS_PER_S` (50),
    `LOOTIFY_RATE_BETS_BURST` (defaults to the per-second rate)."""

    enabled: bool = True
    register_per_min: int = 10
    login_per_min: int = 10
    lockout_failures: int = 5
    lockout_s: float = 900.0
    bets_per_s: float = 50.0
    bets_burst: float = 50.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> RateLimitSettings:
        env = os.environ if environ is None else environ
        bets = float(env.get("LOOTIFY_RATE_BETS_PER_S", cls.bets_per_s))
        return cls(
            enabled=_flag(env.get("LOOTIFY_RATE_LIMITS", "on")),
            register_per_min=int(env.get("LOOTIFY_RATE_REGISTER_PER_MIN", cls.register_per_min)),
            login_per_min=int(env.get("LOOTIFY_RATE_LOGIN_PER_MIN", cls.login_per_min)),
            lockout_failures=int(env.get("LOOTIFY_LOGIN_LOCKOUT_FAILURES", cls.lockout_failures)),
            lockout_s=float(env.get("LOOTIFY_LOGIN_LOCKOUT_S", cls.lockout_s)),
            bets_per_s=bets,
            bets_burst=float(env.get("LOOTIFY_RATE_BETS_BURST", bets)),
        )


@dataclass(frozen=True)
class TokenSettings:
    """`LOOTIFY_JWT_SECRET` (unset or empty: the shared secret file), `LOOTIFY_JWT_TTL_S`
    (24 hours), `LOOTIFY_REVOCATION_CACHE_S` (1 second).

    `gateway.auth.tokens` reads the secret and the lifetime at each use, not once:
    processes that are not replicas (the benchmark's driver, tests) sign tokens with
    a secret they put in their environment after the gateway was imported."""

    secret: str | None = None
    ttl_s: int = 24 * 3600
    revocation_cache_s: float = 1.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> TokenSettings:
        env = os.environ if environ is None else environ
        return cls(
            secret=env.get("LOOTIFY_JWT_SECRET") or None,
            ttl_s=int(env.get("LOOTIFY_JWT_TTL_S", cls.ttl_s)),
            revocation_cache_s=float(env.get("LOOTIFY_REVOCATION_CACHE_S",
                                             cls.revocation_cache_s)),
        )


@dataclass(frozen=True)
class PaymentSettings:
    """`LOOTIFY_PAYMENTS` direct|provider (direct: deposits and withdrawals act at once);
    in provider mode `LOOTIFY_PAYMENTS_WEBHOOK_SECRET` (unset: one kept under the data
    directory, as the JWT secret), `LOOTIFY_PAYMENTS_TOLERANCE_S` (300),
    `LOOTIFY_WITHDRAWAL_AUTO_APPROVE_BELOW` (a decimal amount; withdrawals under it need
    no operator; unset: every one does), `LOOTIFY_PAYMENTS_WEBHOOK_URL` (where the
    sandbox provider posts; default the gateway on loopback), `LOOTIFY_PAYOUT_INTERVAL_S`
    (0.5), `LOOTIFY_SANDBOX_DELAY_S` (0.5) and `LOOTIFY_SANDBOX_DELIVERIES` (how often
    the sandbox sends each event, as providers deliver at least once; 1)."""

    mode: str = "direct"
    webhook_secret: str | None = None
    tolerance_s: float = 300.0
    auto_approve_below: int = 0
    webhook_url: str = ""
    payout_interval_s: float = 0.5
    sandbox_delay_s: float = 0.5
    sandbox_deliveries: int = 1

    @property
    def via_provider(self) -> bool:
        return self.mode == "provider"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> PaymentSettings:
        env = os.environ if environ is None else environ
        mode = env.get("LOOTIFY_PAYMENTS", cls.mode).strip().lower()
        if mode not in ("direct", "provider"):
            raise ValueError(f"LOOTIFY_PAYMENTS must be direct or provider, not {mode!r}")
        below = env.get("LOOTIFY_WITHDRAWAL_AUTO_APPROVE_BELOW")
        port = int(env.get("LOOTIFY_HTTP_PORT", GatewaySettings.http_port))
        return cls(
            mode=mode,
            webhook_secret=env.get("LOOTIFY_PAYMENTS_WEBHOOK_SECRET") or None,
            tolerance_s=float(env.get("LOOTIFY_PAYMENTS_TOLERANCE_S", cls.tolerance_s)),
            auto_approve_below=parse_amount(below, field="auto_approve_below") if below else 0,
            webhook_url=env.get("LOOTIFY_PAYMENTS_WEBHOOK_URL")
            or f"http://127.0.0.1:{port}/api/payments/webhook",
            payout_interval_s=float(env.get("LOOTIFY_PAYOUT_INTERVAL_S", cls.payout_interval_s)),
            sandbox_delay_s=float(env.get("LOOTIFY_SANDBOX_DELAY_S", cls.sandbox_delay_s)),
            sandbox_deliveries=int(env.get("LOOTIFY_SANDBOX_DELIVERIES",
                                           cls.sandbox_deliveries)),
        )


@dataclass(frozen=True)
class GatewaySettings:
    # HTTP
    max_body_bytes: int = 64 * 1024
    # Under the 5 s in which a money request must answer, even with PostgreSQL hung.
    request_deadline_s: float = 4.5
    # Honour X-Forwarded-For only from these peers (e.g. HAProxy on loopback): none by default.
    trusted_proxies: tuple[IPNetwork, ...] = ()
    currency: str = "BRL"
    # The replica
    pool_size: int = 10
    purge_interval_s: float = 600.0
    odds_cache_reload_s: float = 30.0
    rate_limits: RateLimitSettings = field(default_factory=RateLimitSettings)
    payments: PaymentSettings = field(default_factory=PaymentSettings)
    # Browsers' origins allowed to call the API (`LOOTIFY_CORS_ORIGINS`, comma-separated;
    # none by default: same-origin only).
    cors_origins: tuple[str, ...] = ()
    # WebSockets
    ws_idle_s: float = 60.0  # Phoenix's default socket timeout
    ws_queue_max: int = 1000
    # The deployment
    max_ongoing_requests: int = 10_000
    # A stopping replica waits this long for its requests in flight (Serve's
    # graceful_shutdown_timeout_s): past the request deadline and, behind HAProxy,
    # Serve's draining period (RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S, 10 s).
    graceful_shutdown_s: float = 20.0
    replicas: int = 1  # on each node of the cluster (`gateway.every_node`)
    http_port: int = 8000
    # Serve's log line per request in each replica: the ingress (HAProxy) logs every
    # request already, and the replica's line cost ~4% of its CPU per bet.
    access_log: bool = False
    # Where Serve's proxies listen: loopback on one machine (`make up`); all interfaces
    # on a cluster, so that a load balancer on another machine reaches every node.
    http_host: str = "127.0.0.1"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> GatewaySettings:
        env = os.environ if environ is None else environ
        return cls(
            max_body_bytes=int(env.get("LOOTIFY_MAX_BODY_BYTES", cls.max_body_bytes)),
            request_deadline_s=float(env.get("LOOTIFY_REQUEST_DEADLINE_S",
                                             cls.request_deadline_s)),
            trusted_proxies=tuple(
                ipaddress.ip_network(n.strip())
                for n in env.get("LOOTIFY_TRUSTED_PROXIES", "").split(",")
                if n.strip()
            ),
            currency=env.get("LOOTIFY_CURRENCY", cls.currency),
            pool_size=int(env.get("LOOTIFY_GATEWAY_POOL_SIZE", cls.pool_size)),
            purge_interval_s=float(env.get("LOOTIFY_PURGE_INTERVAL_S", cls.purge_interval_s)),
            odds_cache_reload_s=float(env.get("LOOTIFY_CATALOG_RELOAD_S",
                                              cls.odds_cache_reload_s)),
            rate_limits=RateLimitSettings.from_env(env),
            payments=PaymentSettings.from_env(env),
            cors_origins=tuple(
                o.strip() for o in env.get("LOOTIFY_CORS_ORIGINS", "").split(",") if o.strip()
            ),
            ws_idle_s=float(env.get("LOOTIFY_WS_IDLE_S", cls.ws_idle_s)),
            ws_queue_max=int(env.get("LOOTIFY_WS_QUEUE_MAX", cls.ws_queue_max)),
            max_ongoing_requests=int(env.get("LOOTIFY_MAX_ONGOING_REQUESTS",
                                             cls.max_ongoing_requests)),
            graceful_shutdown_s=float(env.get("LOOTIFY_GRACEFUL_SHUTDOWN_S",
                                              cls.graceful_shutdown_s)),
            replicas=int(env.get("LOOTIFY_REPLICAS", cls.replicas)),
            http_port=int(env.get("LOOTIFY_HTTP_PORT", cls.http_port)),
            access_log=env.get("LOOTIFY_ACCESS_LOG", "off") == "on",
            http_host=env.get("LOOTIFY_HTTP_HOST", cls.http_host),
        )


def forwarded_env() -> dict[str, str]:
    """The deploying process's `LOOTIFY_*` settings (e.g. `LOOTIFY_RATE_LIMITS=off`), so
    they reach the replicas even when the Ray head was started earlier. Secrets are
    left out: runtime environments are visible in Ray's dashboard."""
    return {
        k: v for k, v in os.environ.items()
        if k.startswith("LOOTIFY_") and "SECRET" not in k and not k.endswith("_DSN")
    }

