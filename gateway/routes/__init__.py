"""The HTTP API's routers: `accounts` (auth, wallet) and `betting` (events, markets, bets)."""
