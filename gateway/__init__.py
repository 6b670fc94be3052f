"""The HTTP and WebSocket gateway: one FastAPI app per Ray Serve replica.

- `app`: the FastAPI application (`create_app`), with `error_handlers`,
  `middleware` and `health`;
- `context`: what one replica holds; `settings`: what it reads from the environment;
- `routes`: the HTTP routes, thin over `services`, the operations that the routes and
  the socket share;
- `realtime`: the Phoenix socket (`phoenix` protocol, `sockets`, the `hub` that fans
  PubSub events out to them);
- `auth`: accounts and password hashing (`users`), JWTs and their revocation (`tokens`);
- `idempotency`: `Idempotency-Key` handling for money-moving POSTs;
- `ratelimit`: login/register limits shared through PostgreSQL, the per-user bet limit;
- `odds_cache`: the replica's read cache of events and markets;
- `errors`: the gateway's own errors; `cli`: the operators' command line.

Every database function takes the process's asyncpg pool as its first argument.
"""
