"""Internal values -> the contract's JSON shapes, in one place.

Inside, money is an int of minor units and odds a `Decimal`; outside both are
two-place decimal strings. Hosts publish internal values; the replica formats them
here once per event before fanning out to sockets.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from actors.money import format_amount, format_odds


def money(minor: int | None) -> str | None:
    return None if minor is None else format_amount(int(minor))


def odds(value: Decimal | str | None) -> str | None:
    if value is None:
        return None
    return format_odds(value if isinstance(value, Decimal) else Decimal(str(value)))


def timestamp(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return value.isoformat()
    return str(value)


def _get(obj: Any, name: str, default: Any = None) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    return getattr(obj, name, default)


def user(u: Any) -> dict[str, str]:
    return {
        "id": str(_get(u, "id")),
        "email": _get(u, "email"),
        "username": _get(u, "username"),
        "role": _get(u, "role"),
    }


def balance(b: Any, currency: str) -> dict[str, str]:
    """A `Balance` (named tuple), or a dict with balance/available/reserved."""
    available, reserved = int(_get(b, "available", 0)), int(_get(b, "reserved", 0))
    total = _get(b, "balance")
    return {
        "balance": format_amount(available + reserved if total is None else int(total)),
        "available": format_amount(available),
        "reserved": format_amount(reserved),
        "currency": currency,
    }


def transaction(t: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": str(t["id"]),
        "kind": t["kind"],
        "amount": format_amount(int(t["amount"])),
        "balance_after": format_amount(int(t["balance_after"])),
        "reference_id": t.get("reference_id"),
        "created_at": timestamp(t.get("created_at")),
    }


def selection(s: Mapping[str, Any]) -> dict[str, Any]:
    return {"key": s["key"], "name": s.get("name", s["key"]), "odds": odds(s.get("odds"))}


def market(m: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": str(m["id"]),
        "event_id": str(m["event_id"]),
        "name": m["name"],
        "type": m["type"],
        "status": m["status"],
        "selections": [selection(s) for s in m.get("selections") or ()],
        "min_stake": money(m.get("min_stake")),
        "max_stake": money(m.get("max_stake")),
        "max_payout": money(m.get("max_payout")),
        "closes_at": timestamp(m.get("closes_at")),
        "in_play": bool(m.get("in_play")),
        **(_raffle(m) if m["type"] == "raffle" else {}),
    }


def _raffle(m: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "tickets": m["tickets"],
        "ticket_price": money(m["ticket_price"]),
        "prize": money(m["prize"]),
        "lottery": m.get("lottery"),
        "sold": m["sold"],
        "house_keeps_sales": m["house_keeps_sales"],
    }


def event(e: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": str(e["id"]),
        "name": e["name"],
        "category": e["category"],
        "starts_at": timestamp(e.get("starts_at")),
        "status": e.get("status"),
        "markets": [market(m) for m in e.get("markets") or ()],
    }


def bet(b: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": str(b["id"]),
        "market_id": str(b["market_id"]),
        "selection": b["selection"],
        "amount": format_amount(int(b["amount"])),
        "odds": odds(b.get("odds")),
        "potential_payout": money(b.get("potential_payout")),
        "status": b["status"],
        "payout": format_amount(int(b.get("payout") or 0)),
        "placed_at": timestamp(b.get("placed_at")),
        "settled_at": timestamp(b.get("settled_at")),
    }


def odds_map(values: Mapping[str, Any]) -> dict[str, str | None]:
    return {str(k): odds(v) for k, v in values.items()}


def push(event_name: str, payload: Any, currency: str) -> Any:
    """A host's published payload -> what the socket push carries (the bare object)."""
    if event_name == "balance":
        return balance(payload, currency)
    if event_name in ("bet_placed", "bet_settled"):
        return bet(payload)
    if event_name == "odds_updated":
        out = {"market_id": str(payload["market_id"]), "odds": odds_map(payload["odds"])}
        return out
    if event_name == "sales_updated":
        return {k: payload[k] for k in ("market_id", "sold", "tickets")}
    if event_name == "status_changed":
        out = {"status": payload["status"]}
        if payload.get("market_id") is not None:
            out["market_id"] = str(payload["market_id"])
        return out
    return payload
