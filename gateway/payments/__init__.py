"""Money in and out through a payment provider (`LOOTIFY_PAYMENTS=provider`): pending
deposits credited by the provider's signed webhook, queued withdrawals paid out by
it, and the sandbox provider that stands in for it in development and tests."""
