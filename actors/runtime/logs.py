"""Structured logs: one JSON object a line, carrying the request that caused the work.

A Serve replica sets `REQUEST_ID` for each HTTP request; a router tags the messages
sent under it and a host logs the tags of the calls it answers (see
`EntityHost.call`), so one id leads from the HTTP request into the host's log.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from contextvars import ContextVar

REQUEST_ID: ContextVar[str | None] = ContextVar("lootify_request_id", default=None)

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """`{ts, level, logger, msg, pid, request_id?, ...extra}`; `extra=` keys become fields."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            "pid": record.process,
        }
        request_id = REQUEST_ID.get()
        if request_id is not None:
            line["request_id"] = request_id
        line.update((k, v) for k, v in vars(record).items() if k not in _STANDARD)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def log_json(logger_name: str, level: str) -> None:
    """Write `logger_name`'s records as JSON lines on stderr (Ray keeps each worker's
    stderr in its log directory); calling it again only sets the level."""
    logger = logging.getLogger(logger_name)
    logger.setLevel(level.upper())
    if not any(isinstance(h.formatter, JsonFormatter) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        logger.addHandler(handler)
        logger.propagate = False
