"""Log lines in Dynamo's dialect: `<ISO-8601 UTC>Z  LEVEL target: message key=value ...`.

One line per record, flushed at once (drills poll these files while the process runs).
"""

from __future__ import annotations

import logging
import sys
import time


class DynamoFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        t = record.created
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int((t % 1) * 1e6):06d}Z"
        line = f"{stamp} {record.levelname.replace('WARNING', 'WARN'):>5} {record.name}: {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def setup(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(DynamoFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiohttp's access log would add one line per request and cost CPU under load.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def get(target: str) -> logging.Logger:
    """A logger named like Dynamo's tracing targets, e.g. "dynamo_llm::migration"."""
    return logging.getLogger(target)


def parse_timestamp(line: str) -> float | None:
    """Epoch seconds of a line written by this formatter (None if it has no timestamp)."""
    import calendar

    stamp = line.split(" ", 1)[0]
    if len(stamp) < 20 or not stamp.endswith("Z"):
        return None
    try:
        whole, frac = stamp[:-1].split(".")
        return calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S")) + float("0." + frac)
    except ValueError:
        return None
