"""Waiting for the cluster in tests: poll with a deadline, never a bare sleep."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def wait_until(check: Callable[[], Any], *, timeout: float = 10.0, interval: float = 0.05,
               what: str = "condition") -> Any:
    """Poll `check` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def sigstop(pid: int) -> None:
    """Stop the process, and wait until every thread of it has stopped: SIGSTOP takes
    effect as the kernel next schedules each thread, not when `kill` returns, so a
    process may still answer for a moment after it."""
    os.kill(pid, signal.SIGSTOP)
    wait_until(lambda: _stopped(pid), timeout=5, interval=0.005, what=f"process {pid} to stop")


def _stopped(pid: int) -> bool:
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        try:
            state = stat.read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            continue  # a thread that ended meanwhile
        if state not in ("T", "t", "Z", "X"):  # stopped, or gone
            return False
    return True
