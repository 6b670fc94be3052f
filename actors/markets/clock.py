"""Times as the markets keep them (epoch seconds) and store them (aware datetimes)."""

from __future__ import annotations

from datetime import UTC, datetime


def to_datetime(epoch: float | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, tz=UTC)


def to_epoch(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()
