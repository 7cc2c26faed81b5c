"""The plain load drill (the seed's `none` failure, the baseline): LLM users against --host.

    locust -f locustfiles/load.py --headless --host http://127.0.0.1:8000
        [--ft-endpoint chat-stream] [--ft-rate 1] [--ft-requests-per-client 100] [-u 10 -r 10] …

Defaults: 10 users × 100 requests, 100 input / 100 output tokens, at most 1 request per second
per user. The run ends by itself when every user spent its budget. Bad flags or a bad target
(unreachable, not OpenAI-compatible, no or unknown model, our payload refused with a 4xx) end
it before any load with one line and exit code 2.
"""

from locust import events

from ftlocust import options as _options  # noqa: F401  flags first: validated before hooks starts anything
from ftlocust import users
from ftlocust import hooks  # noqa: E402  request log, artifacts, summary and exit code

del _options


class LoadUser(users.LLMUser):
    """Requests of `--ft-endpoint` (default chat-stream)."""


@events.init.add_listener
def _preflight(environment, **_kw) -> None:
    # After hooks' init listener: an embedded target is up by now. A target ftlocust started
    # itself was already proven to answer, so probe requests are only sent to a given --host.
    drill = hooks.drill
    started_here = drill is not None and getattr(drill, "deployment", None) is not None
    users.run_preflight(environment, probe_requests=not started_here)
