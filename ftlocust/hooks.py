"""Locust listeners: the only module that knows Locust's events and runners.

Import it from a locustfile (`from ftlocust import hooks`) and the run becomes fault-aware:
flags, the embedded target, the request log, the cluster-wide trigger, the fault broadcast,
rollback on every way out, checks, the results table and the exit code.

Data flow across processes (also for a single LocalRunner, where send_message calls the
local handler): each Locust process turns the `ft_record` in a request event's context into
an `ft_record` message to the master; the master owns the `Drill` (log, count, trigger,
verdicts) and broadcasts `ft_fault` so workers can name requests by phase.

Lost load generators: each worker's `ft_record` messages also carry `ft_run` (the run number)
and `ft_started` (its cumulative count of requests started), and its `report_to_master` data
(every 3 s) carries `ft_load`; the master's `WorkerWatch` turns a worker Locust marks missing
(or that leaves) mid-run into an entry of `drill.lost_workers`.

Web UI runs: each Stop (`test_stop`) finishes the run — rollback, verdicts, artifacts — and the
next start (`test_start`) begins a new one in `<artifacts>/run-<n>/` (`ft_reset` tells the
workers); the embedded target is torn down once, when Locust quits.
"""

from __future__ import annotations

import atexit
import datetime
import logging
import os
import sys
import time
import traceback

import gevent
from locust import events
from locust.runners import STATE_MISSING, STATE_RUNNING, STATE_SPAWNING, MasterRunner, WorkerRunner

from ftlocust import options as _load_options  # noqa: F401  load flags registered before ours (defaults, validation)
from ftlocust import phases, plugins, targets, validation
from ftlocust.drill import Drill, DrillOptions
from ftlocust.errors import ConfigError
from ftlocust.records import RequestRecord
from ftlocust.options import check_run_flags, gpu_monitor_flag_type, run_flag_type
from ftlocust.scenario import Scenario, TargetSpec, load_flags, load_scenario

log = logging.getLogger("ftlocust")

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_default_scenario: str | None = None
drill: Drill | None = None  # the master's (or the single process's) run; None on workers
scenario: Scenario | None = None  # the run's scenario, loaded in every process (the probe reads it)
_environment = None
_log_handler: logging.Handler | None = None  # the current run's test.log
_first_artifacts_dir: str | None = None  # web UI: later runs go to <this>/run-<n>/
_run_number = 1
_run_codes: dict[int, tuple[str, int | None]] = {}  # web UI: run number → (folder, exit code) once finished
_printed: set[int] = set()  # runs whose table and verdicts were printed
_watch: "WorkerWatch | None" = None  # the master's watch over its workers


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
    g.add_argument("--ft-fault-after-requests", env_var="FTLOCUST_FAULT_AFTER_REQUESTS", type=run_flag_type("ft_fault_after_requests"), default=None,
                   metavar="N", help="Fire the (first) fault when N requests finished, cluster-wide")
    g.add_argument("--ft-fault-after-seconds", env_var="FTLOCUST_FAULT_AFTER_SECONDS", type=run_flag_type("ft_fault_after_seconds"), default=None,
                   metavar="T", help="Fire the (first) fault T seconds after load start")
    g.add_argument("--ft-recovery-window", env_var="FTLOCUST_RECOVERY_WINDOW", type=run_flag_type("ft_recovery_window"), default=None,
                   metavar="S", help="Stop S seconds after the last fault (default: the scenario's, or when budgets are spent)")
    g.add_argument("--ft-plugin", env_var="FTLOCUST_PLUGIN", action="append", default=[], metavar="MODULE",
                   help="Import MODULE (a module name or a .py file) before validation: it may register fault "
                        "kinds and checks (repeatable; the variable takes a comma-separated list)")
    g.add_argument("--ft-target", env_var="FTLOCUST_TARGET", default="", choices=["", *targets.embedded_kinds()],
                   help="Embedded deployment to start when --host is not given (default: the scenario's)")
    g.add_argument("--ft-target-workers", env_var="FTLOCUST_TARGET_WORKERS", type=run_flag_type("ft_target_workers"), default=None,
                   metavar="N", help="Workers of the embedded deployment")
    g.add_argument("--ft-target-migration-limit", env_var="FTLOCUST_TARGET_MIGRATION_LIMIT", type=run_flag_type("ft_target_migration_limit"),
                   default=None, metavar="N", help="Migration limit of the embedded deployment (0 = off)")
    k = parser.add_argument_group("ftlocust kubernetes", "A k8s target (target.kind: k8s): where its pods are")
    k.add_argument("--ft-k8s-namespace", env_var="FTLOCUST_K8S_NAMESPACE", default=None, metavar="NS",
                   help="The one namespace of the target's pods (target.options.namespace)")
    k.add_argument("--ft-k8s-graph", env_var="FTLOCUST_K8S_GRAPH", default=None, metavar="NAME",
                   help="A DynamoGraphDeployment whose pods' labels give the roles (target.options.dynamo_graph)")
    k.add_argument("--ft-k8s-context", env_var="FTLOCUST_K8S_CONTEXT", default=None, metavar="CONTEXT",
                   help="The kubeconfig context (target.options.context; the file is $KUBECONFIG or ~/.kube/config)")
    g.add_argument("--ft-target-token-delay", env_var="FTLOCUST_TARGET_TOKEN_DELAY", type=run_flag_type("ft_target_token_delay"), default=None,
                   metavar="S", help="Seconds per generated token on the reference deployment's workers")
    g.add_argument("--ft-gpu-monitor", env_var="FTLOCUST_GPU_MONITOR", type=gpu_monitor_flag_type(), default=None,
                   metavar="auto|on|off", help="Sample the GPUs (NVML) from load start to the end of the run: auto "
                   "(when NVML sees a GPU), on (required: none is an error), off. Default: the scenario's gpu.monitor, else auto")


def _artifacts_dir(opts) -> str:
    if opts.ft_artifacts:
        return opts.ft_artifacts
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return os.path.join("ft-results", stamp)


def _scenario(opts) -> Scenario:
    """The run's scenario, with the plugins it and --ft-plugin name imported first (they may
    register the fault kinds and checks the scenario uses)."""
    plugins.load(plugins.split_names(opts.ft_plugin), where="--ft-plugin")
    path = opts.ft_scenario or _default_scenario
    if not path:
        return Scenario(name="none", target=TargetSpec(kind="reference"))
    scenario = load_scenario(path)
    plugins.load(scenario.plugins, where=f"{path}: plugins", base_dir=os.path.dirname(os.path.abspath(path)))
    return scenario


_parser_defaults: dict = {}


@events.init_command_line_parser.add_listener
def _remember_defaults(parser) -> None:
    # Runs after every flag is registered (listeners run in import order; hooks is imported
    # after ftlocust.options by the locustfiles), so the defaults of the load flags are known.
    _parser_defaults.clear()
    _parser_defaults.update({a.dest: a.default for a in parser._actions})


def _drill_options(environment, opts) -> DrillOptions:
    users = getattr(opts, "num_users", None)
    per_client = getattr(opts, "ft_requests_per_client", None)
    overrides = {
        "workers": opts.ft_target_workers,
        "migration_limit": opts.ft_target_migration_limit,
        "token_delay_s": opts.ft_target_token_delay,
        "namespace": getattr(opts, "ft_k8s_namespace", None),
        "dynamo_graph": getattr(opts, "ft_k8s_graph", None),
        "context": getattr(opts, "ft_k8s_context", None),
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
        target_kind=opts.ft_target or None,
        run_time_s=getattr(opts, "run_time", None) or None,
        expected_tokens=getattr(opts, "ft_output_tokens", None),
        gpu_monitor=getattr(opts, "ft_gpu_monitor", None),
    )


def _log_to_file(path: str) -> None:
    """test.log of the current run (a later web UI run replaces the previous run's file)."""
    global _log_handler
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("[%(asctime)s] %(levelname)s/%(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    root = logging.getLogger()
    if _log_handler is not None:
        root.removeHandler(_log_handler)
        _log_handler.close()
    root.addHandler(handler)
    _log_handler = handler


@events.init.add_listener
def _on_init(environment, **_kw) -> None:
    global drill, scenario, _environment, _first_artifacts_dir, _watch
    _environment = environment
    runner = environment.runner
    opts = environment.parsed_options
    if runner is None or opts is None:
        return
    if isinstance(runner, WorkerRunner):
        scenario = _scenario(opts)  # the master validated it; workers only read the probe settings
        vars(opts).update(load_flags(scenario, opts, _parser_defaults))
        phases.TIMELINE.expecting_faults = bool(scenario.faults)
        runner.register_message("ft_fault", lambda environment, msg, **kw: phases.TIMELINE.record_fault(
            phases.FaultEvent(**msg.data)))
        runner.register_message("ft_reset", lambda environment, msg, **kw: _worker_reset(msg.data))
        environment.events.report_to_master.add_listener(_report_load)
        environment.events.spawning_complete.add_listener(_push_load)
        return
    try:
        check_run_flags(opts)
        scenario = _scenario(opts)
        vars(opts).update(load_flags(scenario, opts, _parser_defaults))
        options = _drill_options(environment, opts)
        drill = Drill(scenario, options, broadcast=_broadcaster(environment), quit_run=lambda: _quit(environment))
        if not options.dry_run:
            validation.writable_dir(options.artifacts_dir)
            _log_to_file(os.path.join(options.artifacts_dir, "test.log"))
        drill.setup()
        scenario = drill.scenario  # with the flags' overrides applied (the probe reads it)
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
    _first_artifacts_dir = options.artifacts_dir
    atexit.register(lambda: drill.finish())  # a crash past Locust's own shutdown still rolls back (the current run)
    if drill.host and not environment.host:
        environment.host = drill.host
    log.info("artifacts: %s", options.artifacts_dir)
    if _web_ui(environment) and drill.gpu_monitor is not None:
        from ftlocust import webui_tabs

        webui_tabs.register_tab(environment.web_ui, webui_tabs.gpu_tab(lambda: drill.gpu_monitor if drill else None))
    if isinstance(runner, MasterRunner):
        _watch = WorkerWatch(runner)
    runner.register_message("ft_record", _on_record_message)
    runner.register_message("ft_probe", lambda environment, msg, **kw: drill.on_probe(msg.data["request_id"], msg.data["chunks"]))


def _broadcaster(environment):
    def broadcast(event: dict) -> None:
        if isinstance(environment.runner, MasterRunner):
            environment.runner.send_message("ft_fault", event)
    return broadcast


def _quit(environment) -> None:
    from ftlocust.users import end_run  # the same ending as a spent budget: quit, or stop under the web UI

    end_run(environment)


# --- load accounting per Locust process (read by the master to report a lost worker) ---------


class _Load:
    """This process's LLM requests in the current run: `finished` (records sent to the master),
    `started` (finished + in flight; never decreases, also when a stop kills a request in flight)
    and `budget` (the request budgets of every user seen in the run, by client id: a user counts
    from the first scan that sees it alive or its first record; None: a user without budget)."""

    def __init__(self, run: int = 1) -> None:
        self.run = run
        self.started = 0
        self.finished = 0
        self.budget: int | None = 0
        self.clients: set[str] = set()

    @staticmethod
    def in_flight() -> int:
        from ftlocust.cancel import TRACKER  # every LLM request is tracked from its start to its end

        return TRACKER.in_flight

    def started_now(self) -> int:
        self.started = max(self.started, self.finished + self.in_flight())
        return self.started

    def count_client(self, client_id: str, budget: int | None) -> None:
        self.clients.add(client_id)
        self.budget = None if budget is None or self.budget is None else self.budget + budget

    def scan(self, runner) -> None:
        """Count the budget of every live LLM user not counted yet (users that spent theirs are gone)."""
        from ftlocust.users import LLMUser

        probe = sys.modules.get("ftlocust.probe")
        for greenlet in list(runner.user_greenlets):
            user = greenlet.args[0] if greenlet.args else None  # Locust's own way to find a greenlet's user
            if not isinstance(user, LLMUser) or user.client_id in self.clients:
                continue
            if probe is not None and isinstance(user, probe.ProbeUser):
                budget = 1 if user.report_until else 0  # the probe sends its one stream, or nothing
            else:
                budget = user.options.requests_per_client or None
            self.count_client(user.client_id, budget)

    def report(self, runner) -> dict:
        """`ft_load`: {run, at, started, finished, in_flight, budget, users}."""
        try:
            self.scan(runner)
        except Exception as e:  # accounting must never cost the report
            log.debug("scanning the users' budgets: %s", e)
        return {"run": self.run, "at": time.time(), "started": self.started_now(), "finished": self.finished,
                "in_flight": self.in_flight(), "budget": self.budget, "users": runner.user_count}


_LOAD = _Load()


def _record_budget(client_id: str) -> int | None:
    """The budget of a user first seen by its record (no scan saw it alive)."""
    if client_id.endswith("/probe"):
        return 1
    from ftlocust.options import LoadOptions

    try:
        return LoadOptions.from_parsed(_environment.parsed_options).requests_per_client or None
    except Exception:  # the users refuse bad flags themselves; here it is only unknown
        return None


def _report_load(client_id=None, data=None, **_kw) -> None:
    """Worker: `report_to_master` (every 3 s) carries `ft_load`."""
    runner = _environment.runner if _environment is not None else None
    if runner is not None and data is not None:
        data["ft_load"] = _LOAD.report(runner)


def _push_load(**_kw) -> None:
    """Worker, spawning complete: tell the master its budget now, not at the next report."""
    runner = _environment.runner if _environment is not None else None
    if runner is not None:
        runner.send_message("ft_load", _LOAD.report(runner))


def _worker_reset(data: dict) -> None:
    """Worker: the master began a new (web UI) run: forget the last run's faults and counts."""
    phases.TIMELINE.reset()
    phases.TIMELINE.expecting_faults = bool(data.get("expecting_faults"))
    _LOAD.__init__(data.get("run", 1))


class WorkerWatch:
    """Master: what each Locust worker last said, to report one that is lost mid-run.

    Per worker (node id), for the current run: `last_seen_at` (its last heartbeat or message),
    `received` (its records the master got), and the largest `started` and `budget` it sent —
    with every `ft_record` (`ft_started`, `ft_budget`), every report (`ft_load`, every 3 s) and
    an `ft_load` message when its spawning completed. Every POLL_S while a run is on, a worker
    that Locust marks missing (no heartbeat for ~4 s: HEARTBEAT_LIVENESS 3 at 1 s), or that leaves
    the running test (a `quit` message), becomes one `drill.worker_lost` entry:

      worker        "worker-<index>" (the records' `locust_worker`); node_id: Locust's client id
      reason        "missing" (no heartbeat) or "left" (quit mid-run)
      lost_at       when the master saw it lost (for "missing": ~4 s after its last heartbeat)
      last_seen_at  its last heartbeat or message
      in_flight     started - received: requests it had started whose record never came — lost
                    with it. A lower bound: a request started after its last message is unknown
                    to the master and counted in unsent
      unsent        budget - started: requests of its users' budgets it never sent (None when
                    its users have no budget); received + in_flight + unsent = its budget
      received, started, budget, report_at (its last report)

    Budgets no longer add up after a loss: with --enable-rebalancing (or once Locust drops a
    missing worker, after 60 s) Locust respawns the lost worker's users on the others with fresh
    budgets, so the run can send more than users × budget − unsent. The numbers describe the
    lost worker's own users only.
    """

    POLL_S = 0.25

    def __init__(self, runner: MasterRunner) -> None:
        self.runner = runner
        self.run = 1
        self.workers: dict[str, dict] = {}
        self.reported: set[str] = set()
        runner.environment.events.heartbeat_sent.add_listener(lambda client_id=None, **_kw: self._seen(client_id))
        runner.environment.events.worker_report.add_listener(self._on_report)
        runner.register_message("ft_load", lambda environment, msg, **kw: self._on_report(msg.node_id, {"ft_load": msg.data}))
        self.greenlet = gevent.spawn(self._loop)

    def reset(self, run: int) -> None:
        self.run = run
        self.workers.clear()
        self.reported.clear()

    def _seen(self, node_id: str | None) -> dict | None:
        if node_id is None:
            return None
        w = self.workers.get(node_id)
        if w is None:
            w = self.workers[node_id] = {"last_seen_at": None, "received": 0, "started": 0, "budget": 0,
                                         "report_at": None}
        w["last_seen_at"] = time.time()
        return w

    def _on_report(self, client_id=None, data=None, **_kw) -> None:
        w = self._seen(client_id)
        load = (data or {}).get("ft_load")
        if w is not None and load and load.get("run") == self.run:
            w["report_at"] = load.get("at")
            self._count(w, load.get("started"), load.get("budget", 0))

    def on_record(self, node_id: str | None, data: dict) -> None:
        w = self._seen(node_id)
        if w is not None and data.get("ft_run", self.run) == self.run:
            w["received"] += 1
            self._count(w, data.get("ft_started"), data.get("ft_budget", 0))

    @staticmethod
    def _count(w: dict, started: int | None, budget: int | None) -> None:
        # both only grow within a run (messages of one worker arrive in order); None: no budget
        w["started"] = max(w["started"], started or 0)
        w["budget"] = None if budget is None or w["budget"] is None else max(w["budget"], budget)

    def _loop(self) -> None:
        while True:
            gevent.sleep(self.POLL_S)
            try:
                self.check()
            except Exception as e:  # the watch must outlive any surprise
                log.error("watching the Locust workers failed: %s", e)

    def check(self) -> None:
        d = drill
        if d is None or not d.in_progress:
            return
        running = self.runner.state in (STATE_SPAWNING, STATE_RUNNING)
        for node_id, w in list(self.workers.items()):
            if node_id in self.reported:
                continue
            node = self.runner.clients.get(node_id)
            if node is not None and node.state == STATE_MISSING:
                reason = "missing"
            elif node is None and running:
                reason = "left"
            else:
                continue
            self.reported.add(node_id)
            d.worker_lost(self.describe(node_id, w, reason))

    def describe(self, node_id: str, w: dict, reason: str) -> dict:
        started, budget = w["started"], w["budget"]
        return {"worker": f"worker-{self.runner.get_worker_index(node_id)}", "node_id": node_id, "reason": reason,
                "lost_at": time.time(), "last_seen_at": w["last_seen_at"],
                "in_flight": max(0, started - w["received"]),
                "unsent": None if budget is None else max(0, budget - started),
                "received": w["received"], "started": started, "budget": budget, "report_at": w["report_at"]}


def _on_record_message(environment, msg, **_kw) -> None:
    data = msg.data
    if _watch is not None:
        _watch.on_record(msg.node_id, data)
    drill.on_record(RequestRecord.from_dict(data))


@events.request.add_listener
def _on_request(context=None, **_kw) -> None:
    record = context.get("ft_record") if isinstance(context, dict) else None
    if record is not None and _environment is not None and _environment.runner is not None:
        data = record.to_dict()
        _LOAD.finished += 1
        if record.client_id not in _LOAD.clients:
            _LOAD.count_client(record.client_id, _record_budget(record.client_id))
        data["ft_run"] = _LOAD.run
        data["ft_started"] = _LOAD.started_now()
        data["ft_budget"] = _LOAD.budget
        _environment.runner.send_message("ft_record", data)


# --- runs -------------------------------------------------------------------------------------


def _web_ui(environment) -> bool:
    return getattr(environment, "web_ui", None) is not None


@events.test_start.add_listener
def _on_test_start(environment, **_kw) -> None:
    if drill is None or isinstance(environment.runner, WorkerRunner):
        return
    if drill.finished and _web_ui(environment):
        _begin_next_run(environment)
    drill.load_started()


def _begin_next_run(environment) -> None:
    """Web UI, a start after a Stop: a new run in <first folder>/run-<n>/, against the same target."""
    global drill, _run_number
    _run_number += 1
    folder = os.path.join(_first_artifacts_dir, f"run-{_run_number}")
    os.makedirs(folder, exist_ok=True)
    _log_to_file(os.path.join(folder, "test.log"))
    try:
        drill = drill.next_run(folder)
    except Exception as e:  # e.g. a fault's target did not survive the last run: this run cannot be
        log.error("run %d cannot start: %s; stopping", _run_number, e)
        gevent.spawn(environment.runner.stop)
        return
    phases.TIMELINE.expecting_faults = bool(drill.scenario.faults)
    if _watch is not None:
        _watch.reset(_run_number)
    if isinstance(environment.runner, MasterRunner):  # before the spawn messages: the workers reset first
        environment.runner.send_message("ft_reset", {"run": _run_number,
                                                     "expecting_faults": phases.TIMELINE.expecting_faults})
    else:
        _LOAD.__init__(_run_number)
    log.info("run %d: artifacts %s", _run_number, folder)


@events.test_stop.add_listener
def _on_test_stop(environment, **_kw) -> None:
    """Web UI: Stop (or the budget spent, or -t) finishes the run; the target keeps running."""
    if drill is None or isinstance(environment.runner, WorkerRunner) or not _web_ui(environment):
        return
    if drill.in_progress:
        _finish_web_ui_run(drill.finish_run())


def _finish_web_ui_run(code: int | None) -> None:
    _run_codes[_run_number] = (drill.options.artifacts_dir, code)
    outcome = _outcome(code)
    log.info("run %d %s: %s", _run_number, outcome, drill.options.artifacts_dir)
    _print_run(outcome)


def _outcome(code: int | None, locust_code: int | None = None) -> str:
    if code is None:
        return "no checks" if locust_code is None else f"no checks: exit code {locust_code} from Locust"
    return "PASSED" if drill.summary and drill.summary.get("passed") else "FAILED"


def _print_run(outcome: str) -> None:
    if _run_number in _printed or not drill.table:
        return
    _printed.add(_run_number)
    sys.stdout.write("\n" + drill.table + "\n" + drill.verdict_text + "\n")
    sys.stdout.write(f"artifacts: {drill.options.artifacts_dir} — {outcome}\n")
    sys.stdout.flush()


@events.quitting.add_listener
def _on_quitting(environment, **_kw) -> None:
    if drill is None or isinstance(environment.runner, WorkerRunner):
        return
    code = drill.finish()  # finishes the run if it is still on (headless: always), then the teardown
    if _web_ui(environment):
        # every run counts: the worst exit code of them (3 when any run failed), None when none had one
        _run_codes.setdefault(_run_number, (drill.options.artifacts_dir, code))
        codes = [c for _folder, c in _run_codes.values() if c is not None]
        code = max(codes) if codes else None
    # None: no checks and nothing built-in failed, so Locust's own exit code stands (non-zero on
    # a failed request, --exit-code-on-error honoured). A bad-input exit (2) set by the users stays.
    if code is not None and not environment.process_exit_code:
        environment.process_exit_code = code


@events.quit.add_listener
def _on_quit(exit_code, **_kw) -> None:
    if drill is None or not drill.table:
        return
    _print_run(_outcome(drill.exit_code, exit_code))
    if len(_run_codes) > 1:
        runs = ", ".join(f"run {n} {'exit ' + str(c) if c is not None else 'no checks'} ({folder})"
                         for n, (folder, c) in sorted(_run_codes.items()))
        sys.stdout.write(f"web UI runs: {runs}\n")
        sys.stdout.flush()
