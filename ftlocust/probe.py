"""The probe: one long stream sent while the load runs, so a fault can hit it mid-flight.

The migration drill's question is "does a request in flight on the killed worker complete?".
`ProbeUser` (one per run, `fixed_count = 1`) waits `probe.start_after_s` (so the run has a
"before" phase), sends one `probe.max_tokens` stream and reports its progress to the master
(`ft_probe` message: the server's request id and the chunk count) until the scenario's
mid-stream trigger count is reached. The master then finds the worker serving that request id
in the worker logs and injects the fault. Its record is an ordinary one, with client id
"<locust worker>/probe", so checks see whether it completed with all its tokens; it also keeps
each chunk's arrival time, so every fault records how many of the probe's tokens came before
and after it (`ftlocust.phases.probe_progress`), and a mid-stream fault that landed after the
probe had finished fails the built-in `every fault injected` ("landed too late").
"""

from __future__ import annotations

import gevent
from locust.exception import StopUser

from ftlocust import hooks
from ftlocust.users import LLMUser

PROBE_CLIENT = "probe"


def _probe_settings() -> tuple[dict, int]:
    scenario = hooks.scenario
    probe = dict(scenario.probe) if scenario is not None else {}
    counts = [f.trigger.mid_stream_chunks for f in (scenario.faults if scenario else [])
              if f.trigger.mid_stream_chunks is not None]
    return probe, max(counts, default=0)


class ProbeUser(LLMUser):
    fixed_count = 1
    kind = "completion-stream"
    keep_chunk_times = True  # how far it was when each fault hit (`phases.probe_progress`)

    def __init__(self, environment) -> None:
        super().__init__(environment)
        self.client_id = f"{self.locust_worker}/{PROBE_CLIENT}"
        self.settings, self.report_until = _probe_settings()
        self.kind = self.settings.get("endpoint", self.kind)
        self._sent = False

    def on_start(self) -> None:
        super().on_start()
        if self.report_until == 0:  # no mid-stream trigger: nothing to probe
            self._sent = True

    def llm_request(self, kind: str, max_tokens: int | None = None):
        if self._sent:
            raise StopUser()
        self._sent = True
        gevent.sleep(float(self.settings.get("start_after_s", 0)))
        super().llm_request(kind, max_tokens=int(self.settings.get("max_tokens", 400)))
        raise StopUser()

    def on_content(self, chunks: int, request_id: str | None) -> None:
        if request_id and chunks <= self.report_until:
            self.environment.runner.send_message("ft_probe", {"request_id": request_id, "chunks": chunks})
