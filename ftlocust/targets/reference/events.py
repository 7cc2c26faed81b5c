"""Ground-truth event log of the reference deployment (JSONL, one event per line).

Written by the frontend (what the router saw: workers registered, died as detected, leases
expired, migrations, cancellations) and by the deployment/launcher (processes started, ready,
signalled, exited). Several processes append to the same file: each event is one O_APPEND
write of one short line, which the kernel keeps whole.

Event names: process_started, process_ready, process_signalled, process_stopped,
process_exited, deployment_ready, deployment_stopped, worker_registered, worker_deregistered,
worker_died, lease_expired, migration_started, migration_done, migration_failed,
request_cancelled, request_rejected, frontend_draining.
"""

from __future__ import annotations

import json
import os
import time

from ftlocust.jsonl import read_jsonl


class EventLog:
    def __init__(self, path: str | os.PathLike, source: str):
        self.path = os.fspath(path)
        self.source = source
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, event: str, **fields) -> dict:
        record = {"ts": time.time(), "event": event, "source": self.source, **fields}
        os.write(self._fd, (json.dumps(record, separators=(",", ":")) + "\n").encode())
        return record

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def read_events(path: str | os.PathLike) -> list[dict]:
    """All events in the file, in order; a torn last line (writer killed) is skipped."""
    return read_jsonl(path)
