"""Cancellation drill: clients hang up on purpose; the server must see it and free the work.

    locust -f locustfiles/cancellation.py --headless
    locust -f locustfiles/cancellation.py --headless --ft-scenario configs/dynamo/cancellation.yaml

Four kinds of cancel, one user class each (as Dynamo's own cancellation tests do): a completion
cancelled while waiting for its body, a non-stream chat likewise, a streaming chat after 5
chunks, and a streaming completion during prefill (before its first token). Every cancel is a
socket shutdown (ftlocust/cancel.py); cancelled requests are never failures. The scenario
(configs/scenarios/cancellation.yaml) checks the frontend's and workers' cancellation counters
and the workers' "request cancellation received" log lines.
"""

from locust import events

from ftlocust import options as _options  # noqa: F401  load flags first
from ftlocust import hooks, users

hooks.use_scenario("configs/scenarios/cancellation.yaml")


class CompletionCancelledUser(users.CompletionUser):
    cancel = "after-ms:150"


class ChatCancelledUser(users.ChatUser):
    cancel = "after-ms:150"


class ChatStreamCancelledUser(users.ChatStreamUser):
    cancel = "after-chunks:5"


class PrefillCancelledUser(users.CompletionStreamUser):
    cancel = "before-first-token"


@events.init_command_line_parser.add_listener
def _defaults(parser) -> None:
    parser.set_defaults(num_users=4, spawn_rate=4)  # one of each kind


@events.init.add_listener
def _preflight(environment, **_kw) -> None:
    drill = hooks.drill
    users.run_preflight(environment, probe_requests=drill is None or drill.deployment is None)
