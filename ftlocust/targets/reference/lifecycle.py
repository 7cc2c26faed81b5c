"""Process lifecycle helpers shared by the frontend and the workers."""

from __future__ import annotations

import asyncio
import os

from ftlocust.targets.reference import logs

LOG = logs.get("main")


async def watch_parent(parent_pid: int | None, shutdown, interval_s: float = 0.5) -> None:
    """Call `shutdown()` once the process that started us is gone (we were re-parented).

    The deployment starts its processes in their own sessions; if the driver is SIGKILLed it
    cannot stop them, so they stop themselves instead of lingering on their ports.
    """
    if not parent_pid:
        return
    while True:
        await asyncio.sleep(interval_s)
        if os.getppid() != parent_pid:
            LOG.warning(f"Parent process {parent_pid} is gone; shutting down")
            await shutdown()
            return
