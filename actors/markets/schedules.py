"""When a series' rounds lock: every `period_s` from `starts_at` (a fixed period), or
daily at a time of day in a named timezone (betting-mvp's NASDAQ close, 16:00 in New
York), so that rounds follow the wall clock across daylight-saving changes.

Round n of a daily series is the one of the n-th local day from the series' start
(the start's own day if its lock is still ahead); its betting opens when round n-1
locks (round 0 at the start) and it locks at that day's time of day plus
`lock_delay_s`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from actors.errors import InvalidInput

MAX_DELAY_S = 7 * 24 * 3600


@dataclass(frozen=True)
class PeriodicSchedule:
    starts_at: datetime
    period_s: int
    open_s: int

    def current(self, now: datetime) -> tuple[int, datetime] | None:
        """The round taking bets at `now`, and when it locks; None between rounds."""
        if now < self.starts_at:
            return None
        round_no = int((now - self.starts_at).total_seconds() // self.period_s)
        locks_at = self.starts_at + timedelta(seconds=round_no * self.period_s + self.open_s)
        return (round_no, locks_at) if locks_at > now else None


@dataclass(frozen=True)
class DailySchedule:
    starts_at: datetime
    time_of_day: time
    timezone: str
    lock_delay_s: int

    def _lock_on(self, day: date) -> datetime:
        local = datetime.combine(day, self.time_of_day, tzinfo=ZoneInfo(self.timezone))
        return local + timedelta(seconds=self.lock_delay_s)

    def _first_day(self) -> date:
        day = self.starts_at.astimezone(ZoneInfo(self.timezone)).date()
        return day if self._lock_on(day) > self.starts_at else day + timedelta(days=1)

    def locks_at(self, round_no: int) -> datetime:
        return self._lock_on(self._first_day() + timedelta(days=round_no))

    def current(self, now: datetime) -> tuple[int, datetime] | None:
        """The round taking bets at `now` (there always is one), and when it locks."""
        if now < self.starts_at:
            return None
        today = now.astimezone(ZoneInfo(self.timezone)).date()
        round_no = max(0, (today - self._first_day()).days)
        # A lock delay can carry a day's lock past midnight: step to the round whose
        # window holds `now`.
        while round_no > 0 and self.locks_at(round_no - 1) > now:
            round_no -= 1
        while self.locks_at(round_no) <= now:
            round_no += 1
        return round_no, self.locks_at(round_no)


def schedule_of(series: Any) -> PeriodicSchedule | DailySchedule:
    """The schedule of a `bets.round_series` row."""
    if series["time_of_day"] is None:
        return PeriodicSchedule(series["starts_at"], series["period_s"], series["open_s"])
    return DailySchedule(series["starts_at"], series["time_of_day"], series["timezone"],
                         series["lock_delay_s"])


def parse_time_of_day(value: object) -> time:
    """`"16:00"` or `"15:59:59"`."""
    try:
        parsed = time.fromisoformat(str(value))
    except ValueError:
        raise InvalidInput("time_of_day must be HH:MM or HH:MM:SS", field="time_of_day") from None
    if parsed.tzinfo is not None or parsed.microsecond:
        raise InvalidInput("time_of_day must be HH:MM or HH:MM:SS, without a zone",
                           field="time_of_day")
    return parsed


def check_timezone(value: object) -> str:
    """A name of the tz database, e.g. `America/New_York`."""
    if not isinstance(value, str) or not 0 < len(value) <= 64:
        raise InvalidInput("timezone must name a zone such as America/New_York", field="timezone")
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidInput(f"unknown timezone {value!r}", field="timezone") from None
    return value


def check_delay(value: object, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_DELAY_S:
        raise InvalidInput(f"{field} must be whole seconds from 0 to {MAX_DELAY_S}", field=field)
    return value
