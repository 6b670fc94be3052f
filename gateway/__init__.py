"""The gateway's building blocks, independent of Ray and of the web framework.

- `users`: accounts and password hashing;
- `tokens`: JWTs and their revocation;
- `idempotency`: `Idempotency-Key` handling for money-moving POSTs;
- `ratelimit`: login/register limits shared through PostgreSQL, the per-user bet limit;
- `phoenix`: the Phoenix Channels V2 protocol (codec and per-socket channel session).

Every database function takes the process's asyncpg pool as its first argument.
"""
