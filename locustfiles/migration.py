"""The main drill: a worker is SIGKILLed while it serves a long stream; its requests must migrate.

    locust -f locustfiles/migration.py --headless                     # embedded reference deployment
    locust -f locustfiles/migration.py --headless --ft-target-migration-limit 0   # must fail (exit ≠ 0)
    locust -f locustfiles/migration.py --headless --ft-target dynamo  # real Dynamo + mocker workers

Scenario: configs/scenarios/migration.yaml (target, probe, the fault and its trigger, checks).
Load: 10 streaming users at 1 request/s each (plus the one probe user), 100 requests each.
"""

from locust import events

from ftlocust import options as _options  # noqa: F401  load flags first: validated before anything starts
from ftlocust import hooks, users
from ftlocust.probe import ProbeUser  # noqa: F401  the long in-flight stream the fault hits

hooks.use_scenario("configs/scenarios/migration.yaml")


class StreamingUser(users.CompletionStreamUser):
    """The load around the fault: streaming completions, as the seed's clients send."""


@events.init_command_line_parser.add_listener
def _defaults(parser) -> None:
    parser.set_defaults(num_users=11, spawn_rate=11)  # 10 load users + the probe


@events.init.add_listener
def _preflight(environment, **_kw) -> None:
    drill = hooks.drill
    users.run_preflight(environment, probe_requests=drill is None or drill.deployment is None)
