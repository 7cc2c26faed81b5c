"""Locust listeners: the only module that knows Locust's events and runners.

Import it from a locustfile (`from ftlocust import hooks`) and the run becomes fault-aware:
flags, the embedded target, the request log, the cluster-wide trigger, the fault broadcast,
rollback on every way out, checks, the results table and the exit code.

Data flow across processes (also for a single LocalRunner, where send_message calls the
local handler): each Locust process turns the `ft_record` in a request event's context into
an `ft_record` message to the master; the master owns the `Drill` (log, count, trigger,
verdicts) and broadcasts `ft_fault` so workers can name requests by phase.
"""

from __future__ import annotations

import atexit
import datetime
import logging
import os
import sys
import traceback

from locust import events
from locust.runners import MasterRunner, WorkerRunner

from ftlocust import options as _load_options  # noqa: F401  load flags registered before ours (defaults, validation)
from ftlocust import phases
from ftlocust.drill import Drill, DrillOptions
from ftlocust.errors import ConfigError
from ftlocust.records import RequestRecord
from ftlocust.scenario import LOAD_KEYS, Scenario, TargetSpec, load_scenario

log = logging.getLogger("ftlocust")

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_default_scenario: str | None = None
drill: Drill | None = None  # the master's (or the single process's) run; None on workers
scenario: Scenario | None = None  # the run's scenario, loaded in every process (the probe reads it)
_environment = None


def use_scenario(path: str) -> None:
    """Called by a locustfile: the scenario used when --ft-scenario is not given.
    Relative paths are taken from the project root, so a drill runs from any directory."""
    global _default_scenario
    _default_scenario = path if os.path.isabs(path) else os.path.join(PROJECT_ROOT, path)


@events.init_command_line_parser.add_listener
def _add_flags(parser) -> None:
    g = parser.add_argument_group("ftlocust run", "Fault injection, phases, checks and artifacts")
    g.add_argument("--ft-artifacts", env_var="FTLOCUST_ARTIFACTS", default="", metavar="DIR",
                   help="Folder for this run's artifacts (default: ft-results/<UTC timestamp>)")
    g.add_argument("--ft-scenario", env_var="FTLOCUST_SCENARIO", default="", metavar="FILE",
                   help="Scenario YAML: target, faults with triggers, checks, stop (default: the locustfile's)")
    g.add_argument("--ft-dry-run", env_var="FTLOCUST_DRY_RUN", action="store_true", default=False,
                   help="Resolve and print the target, faults and checks, then exit without load")
    g.add_argument("--ft-fault-after-requests", env_var="FTLOCUST_FAULT_AFTER_REQUESTS", type=int, default=None,
                   metavar="N", help="Fire the (first) fault when N requests finished, cluster-wide")
    g.add_argument("--ft-fault-after-seconds", env_var="FTLOCUST_FAULT_AFTER_SECONDS", type=float, default=None,
                   metavar="T", help="Fire the (first) fault T seconds after load start")
    g.add_argument("--ft-recovery-window", env_var="FTLOCUST_RECOVERY_WINDOW", type=float, default=None,
                   metavar="S", help="Stop S seconds after the last fault (default: the scenario's, or when budgets are spent)")
    g.add_argument("--ft-target", env_var="FTLOCUST_TARGET", default="", choices=["", "reference", "dynamo"],
                   help="Embedded deployment to start when --host is not given (default: the scenario's)")
    g.add_argument("--ft-target-workers", env_var="FTLOCUST_TARGET_WORKERS", type=int, default=None,
                   metavar="N", help="Workers of the embedded deployment")
    g.add_argument("--ft-target-migration-limit", env_var="FTLOCUST_TARGET_MIGRATION_LIMIT", type=int,
                   default=None, metavar="N", help="Migration limit of the embedded deployment (0 = off)")
    g.add_argument("--ft-target-token-delay", env_var="FTLOCUST_TARGET_TOKEN_DELAY", type=float, default=None,
                   metavar="S", help="Seconds per generated token on the reference deployment's workers")


def _artifacts_dir(opts) -> str:
    if opts.ft_artifacts:
        return opts.ft_artifacts
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return os.path.join("ft-results", stamp)


def _scenario(opts) -> Scenario:
    path = opts.ft_scenario or _default_scenario
    if path:
        return load_scenario(path)
    return Scenario(name="none", target=TargetSpec(kind="reference"))


def _apply_scenario_load(opts, scenario: Scenario, parser_defaults: dict) -> None:
    """The scenario's `load:` values replace the load flags' defaults; an explicit flag wins."""
    for key, value in scenario.load.items():
        attr = LOAD_KEYS[key]
        if getattr(opts, attr, None) == parser_defaults.get(attr):
            setattr(opts, attr, value)
    if scenario.load:
        from ftlocust.options import LoadOptions

        try:
            LoadOptions.from_parsed(opts)
        except ConfigError as e:
            raise ConfigError(f"{scenario.source}: load: {e}") from None


_parser_defaults: dict = {}


@events.init_command_line_parser.add_listener
def _remember_defaults(parser) -> None:
    # Runs after every flag is registered (listeners run in import order; hooks is imported
    # after ftlocust.options by the locustfiles), so the defaults of the load flags are known.
    _parser_defaults.clear()
    _parser_defaults.update({a.dest: a.default for a in parser._actions})


def _check_numbers(opts) -> None:
    for flag in ("ft_fault_after_requests", "ft_target_workers"):
        value = getattr(opts, flag)
        if value is not None and value <= 0:
            raise ConfigError(f"--{flag.replace('_', '-')}: expected an integer > 0, got {value}")
    for flag in ("ft_fault_after_seconds", "ft_recovery_window", "ft_target_token_delay", "ft_target_migration_limit"):
        value = getattr(opts, flag)
        if value is not None and value < 0:
            raise ConfigError(f"--{flag.replace('_', '-')}: expected a value >= 0, got {value}")


def _drill_options(environment, opts) -> DrillOptions:
    users = getattr(opts, "num_users", None)
    per_client = getattr(opts, "ft_requests_per_client", None)
    overrides = {
        "workers": opts.ft_target_workers,
        "migration_limit": opts.ft_target_migration_limit,
        "token_delay_s": opts.ft_target_token_delay,
    }
    return DrillOptions(
        artifacts_dir=_artifacts_dir(opts),
        host=environment.host or None,
        dry_run=opts.ft_dry_run,
        total_budget=users * per_client if users and per_client else None,
        recovery_window_s=opts.ft_recovery_window,
        fault_after_requests=opts.ft_fault_after_requests,
        fault_after_seconds=opts.ft_fault_after_seconds,
        target_overrides=overrides,
        expected_tokens=getattr(opts, "ft_output_tokens", None),
    )


def _log_to_file(path: str) -> None:
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("[%(asctime)s] %(levelname)s/%(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    logging.getLogger().addHandler(handler)


@events.init.add_listener
def _on_init(environment, **_kw) -> None:
    global drill, scenario, _environment
    _environment = environment
    runner = environment.runner
    opts = environment.parsed_options
    if runner is None or opts is None:
        return
    if isinstance(runner, WorkerRunner):
        scenario = _scenario(opts)  # the master validated it; workers only read the probe settings
        _apply_scenario_load(opts, scenario, _parser_defaults)
        phases.TIMELINE.expecting_faults = bool(scenario.faults)
        runner.register_message("ft_fault", lambda environment, msg, **kw: phases.TIMELINE.record_fault(
            phases.FaultEvent(**msg.data)))
        return
    try:
        _check_numbers(opts)
        scenario = _scenario(opts)
        _apply_scenario_load(opts, scenario, _parser_defaults)
        if opts.ft_target and opts.ft_target != scenario.target.kind:
            # another kind of deployment: the scenario's knobs were for the one it named
            scenario.target.kind, scenario.target.options = opts.ft_target, {}
        options = _drill_options(environment, opts)
        drill = Drill(scenario, options, broadcast=_broadcaster(environment), quit_run=lambda: _quit(environment))
        if not options.dry_run:
            os.makedirs(options.artifacts_dir, exist_ok=True)
            _log_to_file(os.path.join(options.artifacts_dir, "test.log"))
        drill.setup()
        phases.TIMELINE.expecting_faults = bool(scenario.faults)
    except ConfigError as e:
        if drill is not None:
            drill.stop_target()
        sys.stderr.write(f"ftlocust: {e}\n")
        sys.exit(2)
    except Exception as e:  # not the user's input: one line here, the traceback in test.log
        if drill is not None:
            if not drill.options.dry_run:
                with open(os.path.join(drill.options.artifacts_dir, "test.log"), "a", encoding="utf-8") as f:
                    f.write(traceback.format_exc())
            drill.stop_target()
        sys.stderr.write(f"ftlocust: set-up failed: {type(e).__name__}: {e}\n")
        sys.exit(1)
    if options.dry_run:
        sys.stdout.write(drill.describe() + "\n")
        sys.exit(0)
    atexit.register(drill.finish)  # a crash past Locust's own shutdown still rolls back
    if drill.host and not environment.host:
        environment.host = drill.host
    log.info("artifacts: %s", options.artifacts_dir)
    runner.register_message("ft_record", lambda environment, msg, **kw: drill.on_record(RequestRecord.from_dict(msg.data)))
    runner.register_message("ft_probe", lambda environment, msg, **kw: drill.on_probe(msg.data["request_id"], msg.data["chunks"]))


def _broadcaster(environment):
    def broadcast(event: dict) -> None:
        if isinstance(environment.runner, MasterRunner):
            environment.runner.send_message("ft_fault", event)
    return broadcast


def _quit(environment) -> None:
    from ftlocust.users import end_run  # the same ending as a spent budget: quit, or stop under the web UI

    end_run(environment)


@events.request.add_listener
def _on_request(context=None, **_kw) -> None:
    record = context.get("ft_record") if isinstance(context, dict) else None
    if record is not None and _environment is not None and _environment.runner is not None:
        _environment.runner.send_message("ft_record", record.to_dict())


@events.test_start.add_listener
def _on_test_start(environment, **_kw) -> None:
    if drill is not None and not isinstance(environment.runner, WorkerRunner):
        drill.load_started()


@events.quitting.add_listener
def _on_quitting(environment, **_kw) -> None:
    if drill is None or isinstance(environment.runner, WorkerRunner):
        return
    code = drill.finish()
    if not environment.process_exit_code:  # keep a bad-input exit (2) set earlier by the users
        environment.process_exit_code = code


@events.quit.add_listener
def _on_quit(exit_code, **_kw) -> None:
    if drill is None or not drill.table:
        return
    sys.stdout.write("\n" + drill.table + "\n" + drill.verdict_text + "\n")
    sys.stdout.write(f"artifacts: {drill.options.artifacts_dir} — {'PASSED' if drill.summary and drill.summary['passed'] else 'FAILED'}\n")
    sys.stdout.flush()
