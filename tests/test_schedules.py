"""Daily schedules follow the wall clock of their timezone, daylight-saving included."""

from __future__ import annotations

from datetime import UTC, datetime, time

import pytest

from actors.errors import InvalidInput
from actors.markets.schedules import (
    DailySchedule,
    PeriodicSchedule,
    check_timezone,
    parse_time_of_day,
)

NEW_YORK = "America/New_York"


def test_daily_rounds_lock_at_the_local_time_across_daylight_saving() -> None:
    # Friday 6 March 2026, noon in New York; clocks go forward on Sunday the 8th.
    start = datetime(2026, 3, 6, 17, 0, tzinfo=UTC)
    schedule = DailySchedule(start, time(16, 0), NEW_YORK, lock_delay_s=0)
    assert schedule.locks_at(0) == datetime(2026, 3, 6, 21, 0, tzinfo=UTC)  # EST, UTC-5
    assert schedule.locks_at(3) == datetime(2026, 3, 9, 20, 0, tzinfo=UTC)  # EDT, UTC-4
    assert schedule.current(start) == (0, schedule.locks_at(0))
    # At its lock a round stops taking bets and the next one opens.
    assert schedule.current(schedule.locks_at(0)) == (1, schedule.locks_at(1))


def test_a_start_after_the_days_lock_begins_the_next_day() -> None:
    start = datetime(2026, 3, 6, 22, 0, tzinfo=UTC)  # 17:00 in New York
    schedule = DailySchedule(start, time(16, 0), NEW_YORK, lock_delay_s=0)
    assert schedule.locks_at(0) == datetime(2026, 3, 7, 21, 0, tzinfo=UTC)
    assert schedule.current(datetime(2026, 3, 6, 23, 0, tzinfo=UTC))[0] == 0


def test_a_lock_delay_past_midnight_keeps_the_round_open_until_it() -> None:
    start = datetime(2026, 3, 6, 17, 0, tzinfo=UTC)
    schedule = DailySchedule(start, time(23, 30), NEW_YORK, lock_delay_s=3600)
    lock = schedule.locks_at(0)
    assert lock == datetime(2026, 3, 7, 5, 30, tzinfo=UTC)  # 00:30 on the 7th, EST
    assert schedule.current(datetime(2026, 3, 7, 5, 10, tzinfo=UTC)) == (0, lock)
    assert schedule.current(lock)[0] == 1


def test_a_periodic_schedule_has_gaps_between_rounds() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    schedule = PeriodicSchedule(start, period_s=10, open_s=5)
    assert schedule.current(datetime(2026, 1, 1, 0, 0, 12, tzinfo=UTC))[0] == 1
    assert schedule.current(datetime(2026, 1, 1, 0, 0, 17, tzinfo=UTC)) is None


@pytest.mark.parametrize("bad", ["25:00", "4pm", "16:00+01:00", ""])
def test_times_of_day_are_checked(bad: str) -> None:
    with pytest.raises(InvalidInput):
        parse_time_of_day(bad)


def test_timezones_are_checked() -> None:
    assert check_timezone(NEW_YORK) == NEW_YORK
    for bad in ("Mars/Olympus", "../etc/passwd", "", 5):
        with pytest.raises(InvalidInput):
            check_timezone(bad)
