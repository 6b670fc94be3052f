"""A wallet's state in its host, and what a commit cycle writes of it."""

from __future__ import annotations

from typing import NamedTuple

from .messages import Balance


class Wallet:
    __slots__ = ("id", "available", "reserved", "seq", "pending", "stored_seq")

    def __init__(self, wallet_id: str, available: int = 0, reserved: int = 0, seq: int = 0):
        self.id = wallet_id
        self.available = available
        self.reserved = reserved
        self.seq = seq
        self.stored_seq = seq if seq else -1  # -1: no row yet
        # reference -> (amount, expires_at epoch or None); None while empty, to stay small
        self.pending: dict[str, tuple[int, float | None]] | None = None

    def balance(self) -> Balance:
        return Balance(self.available + self.reserved, self.available, self.reserved)


class Prior(NamedTuple):
    """An operation already done: its arguments and its result."""

    args: str
    kind: str
    available: int
    reserved: int


class Write(NamedTuple):
    wallet: Wallet
    op_key: str
    seq: int
    reference_id: str
    amount: int
    entries: tuple[tuple[str, int], ...]
    pending_add: tuple[int, float | None] | None
    pending_remove: bool
    done: Prior  # its kind, arguments and result
    stake_market: str | None = None  # a stake: opened, for the market of this id
    key_id: str | None = None  # the Idempotency-Key's id it was sent under (`messages`)
