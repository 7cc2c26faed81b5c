"""The fault-aware run as a plain object: target up, triggers, faults, rollback, verdicts.

`hooks.py` binds a `Drill` to Locust's events; everything here is ordinary Python (plus gevent
for the fault greenlets), so the order of a run is readable in one place:

    setup()          preflight: scenario, checks, target start, fault targets  (before load)
    load_started()   arm time triggers
    on_record(r)     request log, cluster-wide count, count trigger
    on_probe(...)    mid-stream trigger (the probe request has K chunks)
    finish()         rollback every fault (always), evidence, checks, report → exit code
"""

from __future__ import annotations

import inspect
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import gevent

from ftlocust import checks as checks_module
from ftlocust import evidence, phases, plot, report
from ftlocust.errors import ConfigError
from ftlocust.faults import Fault, FaultContext, build_fault
from ftlocust.records import RequestLog, RequestRecord
from ftlocust.scenario import Scenario

log = logging.getLogger("ftlocust.drill")


@dataclass
class DrillOptions:
    artifacts_dir: str
    host: str | None = None  # given: run against it, start nothing
    dry_run: bool = False
    total_budget: int | None = None  # users × requests per client, for trigger validation
    recovery_window_s: float | None = None  # overrides the scenario's
    fault_after_requests: int | None = None  # overrides the first fault's trigger
    fault_after_seconds: float | None = None
    target_overrides: dict[str, Any] = field(default_factory=dict)  # workers, migration_limit, options…
    expected_tokens: int | None = None


class Drill:
    def __init__(
        self,
        scenario: Scenario,
        options: DrillOptions,
        broadcast: Callable[[dict], None] = lambda msg: None,
        quit_run: Callable[[], None] = lambda: None,
    ):
        self.scenario = scenario
        self.options = options
        self.broadcast = broadcast  # tells every Locust process the fault time
        self.quit_run = quit_run
        self.deployment = None
        self.faults: list[Fault] = []
        self.checks: list = []
        self.records: list[RequestRecord] = []
        self.finished_count = 0
        self.request_log: RequestLog | None = None
        self.load_started_at: float | None = None
        self.metrics_before: dict[str, Any] = {}
        self.metrics_after: dict[str, Any] = {}
        self.server_recovery_s: float | None = None
        self.probe_request_id: str | None = None
        self.summary: dict | None = None
        self.table = ""
        self.verdict_text = ""
        self.exit_code: int | None = None
        self._fired: set[int] = set()
        self._greenlets: list[gevent.Greenlet] = []
        self._finished = False
        self.late_records = 0
        self.misnamed = 0  # requests whose Locust row name carries another phase than the truth
        self._fire_counts: dict[int, int] = {}
        self.ctx = FaultContext(artifacts_dir=options.artifacts_dir, dry_run=options.dry_run,
                                resolve_serving=self._resolve_serving)

    # ---------------------------------------------------------------- setup (before load)
    def setup(self) -> None:
        os.makedirs(self.options.artifacts_dir, exist_ok=True)
        self._apply_overrides()
        self.checks = checks_module.build_checks(self.scenario.checks, where=f"{self.scenario.source or self.scenario.name}: checks")
        pids = self.scenario.target.pids  # external deployment: roles name processes by identity
        for spec in self.scenario.faults:
            if spec.target in pids:
                spec.target = pids[spec.target]
        self.faults = [build_fault(spec) for spec in self.scenario.faults]
        self._validate_triggers()
        if self.options.dry_run:
            if self.options.host is not None:  # processes named by identity: resolve and show them
                for fault in self.faults:
                    fault.preflight(self.ctx)
            return
        log_path = os.path.join(self.options.artifacts_dir, "requests.jsonl")
        if os.path.exists(log_path):  # one folder, one run: never mix two runs' requests
            raise ConfigError(f"--ft-artifacts: {self.options.artifacts_dir} already holds a run; choose another folder")
        self.request_log = RequestLog(log_path)
        phases.TIMELINE.reset()
        if self.options.host is None and self.scenario.target.kind != "external":
            self.deployment = self._start_deployment()
            self.ctx.deployment = self.deployment
        elif self.options.host is None:
            raise ConfigError("--host: the scenario's target is external, so --host is required")
        for fault in self.faults:
            fault.preflight(self.ctx)
        self.metrics_before = self._snapshot_metrics("before")

    def _apply_overrides(self) -> None:
        o = self.options
        t = self.scenario.target
        for key, value in o.target_overrides.items():
            if value is None:
                continue
            if key in ("workers", "migration_limit"):
                setattr(t, key, value)
            elif key == "token_delay_s" and t.kind != "reference":
                raise ConfigError(f"--ft-target-token-delay: only for the reference deployment (target is {t.kind})")
            else:
                t.options[key] = value
        if o.recovery_window_s is not None:
            if o.recovery_window_s < self.scenario.stop.health_poll_s:
                raise ConfigError(
                    f"--ft-recovery-window: {o.recovery_window_s:g} s is shorter than the health poll interval "
                    f"({self.scenario.stop.health_poll_s:g} s)"
                )
            self.scenario.stop.recovery_window_s = o.recovery_window_s
        if self.scenario.faults and (o.fault_after_requests is not None or o.fault_after_seconds is not None):
            trigger = self.scenario.faults[0].trigger
            trigger.after_requests = o.fault_after_requests
            trigger.after_seconds = o.fault_after_seconds
            trigger.mid_stream_chunks = None

    def _validate_triggers(self) -> None:
        budget = self.options.total_budget
        for fault in self.faults:
            n = fault.spec.trigger.after_requests
            if n is not None and budget is not None and n > budget:
                raise ConfigError(
                    f"--ft-fault-after-requests: {n} is larger than the total request budget {budget} "
                    f"(users × --ft-requests-per-client)"
                )

    def _start_deployment(self):
        t = self.scenario.target
        run_dir = os.path.join(self.options.artifacts_dir, "deployment")
        if t.kind == "reference":
            from ftlocust.targets.reference import ReferenceDeployment as deployment_class
        else:
            from ftlocust.targets.dynamo import DynamoDeployment as deployment_class
        known = set(inspect.signature(deployment_class).parameters) - {"run_dir", "workers", "migration_limit"}
        unknown = sorted(set(t.options) - known)
        if unknown:
            raise ConfigError(f"{self.scenario.source or self.scenario.name}: target.options: unknown {unknown[0]!r} "
                              f"for a {t.kind} deployment (expected one of {', '.join(sorted(known))})")
        deployment = deployment_class(run_dir, workers=t.workers, migration_limit=t.migration_limit, **t.options)
        log.info("starting the %s deployment (%d workers, migration limit %d) in %s",
                 t.kind, t.workers, t.migration_limit, run_dir)
        try:
            deployment.start()
        except BaseException:
            deployment.stop()
            raise
        log.info("%s deployment ready at %s in %.2f s", t.kind, deployment.base_url, deployment.startup_s)
        return deployment

    def describe(self) -> str:
        """What a dry run prints: the target and every fault, resolved as far as possible."""
        t = self.scenario.target
        where = self.options.host or f"embedded {t.kind} deployment ({t.workers} workers, migration limit {t.migration_limit})"
        lines = [f"scenario {self.scenario.name}: target {where}"]
        lines += [f"  fault {i + 1}: {f.describe()}" for i, f in enumerate(self.faults)]
        lines += [f"  check: {c.name}" for c in self.checks]
        return "\n".join(lines)

    @property
    def host(self) -> str | None:
        return self.options.host or (self.deployment.base_url if self.deployment else None)

    # ---------------------------------------------------------------- during load
    def load_started(self) -> None:
        self.load_started_at = time.time()
        for i, fault in enumerate(self.faults):
            seconds = fault.spec.trigger.after_seconds
            if seconds is not None:
                self._greenlets.append(gevent.spawn_later(seconds, self._fire, i))

    def on_record(self, record: RequestRecord) -> None:
        if self._finished:  # the run is over: what finishes now (killed users) is not part of it
            self.late_records += 1
            return
        # The master's phase is the truth (T_f is set before the fault greenlet can yield); the
        # phase a Locust worker named the request with may lag the fault broadcast by a few ms.
        named = record.phase
        record.phase = phases.TIMELINE.phase_of(record.start_wall, record.end_wall)
        if named != record.phase:
            record.extra["locust_phase"] = named
            self.misnamed += 1
        self.records.append(record)
        self.finished_count += 1
        if self.request_log is not None:
            self.request_log.write(record)
        for i, fault in enumerate(self.faults):
            n = fault.spec.trigger.after_requests
            if n is not None and self.finished_count >= n:
                self._fire(i)

    def on_probe(self, request_id: str, chunks: int) -> None:
        self.probe_request_id = request_id
        for i, fault in enumerate(self.faults):
            k = fault.spec.trigger.mid_stream_chunks
            if k is not None and chunks >= k:
                self._fire(i)

    def _fire(self, index: int) -> None:
        if index in self._fired or self._finished:
            return
        self._fired.add(index)  # before anything can yield: exactly once
        self._fire_counts[index] = self.finished_count
        self._greenlets.append(gevent.spawn(self._run_fault, self.faults[index]))

    def _run_fault(self, fault: Fault) -> None:
        try:
            event = fault.inject(self.ctx)
        except Exception as e:  # a failed injection is a result, not a crash
            log.error("fault %s could not be injected: %s", fault.name, e)
            event = phases.FaultEvent(name=fault.name, kind=fault.kind, target=fault.spec.target,
                                      injected_at=time.time(), recovered_at=None, detail={"error": str(e)})
            fault.event = event
            return
        event.detail["finished_requests_at_trigger"] = self._fire_counts.get(self.faults.index(fault))
        phases.TIMELINE.record_fault(event)
        self.broadcast(event.to_dict())
        log.info("fault %s in effect at %.3f", fault.name, event.injected_at)
        early = getattr(fault, "scheduled_recovery_s", lambda: None)()
        if early is not None:
            self._greenlets.append(gevent.spawn_later(early, self._recover, fault))
        if len(self._fired) == len(self.faults) and self.scenario.stop.recovery_window_s is not None:
            self._greenlets.append(gevent.spawn_later(self.scenario.stop.recovery_window_s, self._stop_after_recovery))
        self._watch_server_recovery(fault, event.injected_at)

    def _recover(self, fault: Fault) -> None:
        try:
            fault.recover(self.ctx)
        except Exception as e:
            log.error("recovering %s failed: %s", fault.name, e)

    def _stop_after_recovery(self) -> None:
        log.info("recovery window of %.1f s after the last fault is over: stopping", self.scenario.stop.recovery_window_s)
        self.quit_run()

    def _watch_server_recovery(self, fault: Fault, injected_at: float) -> None:
        """Server view: fault → the deployment serves without the faulted component again
        (or with its replacement). Polls `deployment.recovered(role)`; bounded by the run."""
        if self.deployment is None or not hasattr(self.deployment, "recovered"):
            return
        role = getattr(fault, "_role", None) or fault.spec.target
        poll = self.scenario.stop.health_poll_s
        deadline = injected_at + 600
        while not self._finished and time.time() < deadline:
            try:
                if self.deployment.recovered(role):
                    if self.server_recovery_s is None:
                        self.server_recovery_s = time.time() - injected_at
                        log.info("server view: %s recovered %.2f s after the fault", role, self.server_recovery_s)
                    return
            except Exception as e:  # a refused health poll just means "not yet"
                log.debug("health poll: %s", e)
            gevent.sleep(poll)

    def _resolve_serving(self) -> str | None:
        if self.probe_request_id is None:
            return None
        if self.deployment is not None:
            logs = {role: self.deployment.log_path(role) for role in self.deployment.worker_roles()}
        else:
            logs = {role: path for role, path in self.scenario.target.logs.items() if role in self.scenario.target.pids}
        return evidence.find_serving_role(logs, self.probe_request_id, timeout_s=5.0)

    def _metrics_urls(self) -> dict[str, str]:
        if self.deployment is None:  # an external deployment: what the scenario names
            return dict(self.scenario.target.metrics)
        roles = [self.deployment.frontend_role, *self.deployment.worker_roles()]
        return {role: self.deployment.metrics_url(role) for role in roles if self.deployment.metrics_url(role)}

    def _snapshot_metrics(self, label: str) -> dict[str, Any]:
        urls = self._metrics_urls()
        if not urls:
            return {}
        snapshots = evidence.scrape_all(urls, timeout_s=2.0)
        evidence.save_metrics(snapshots, self.options.artifacts_dir, label)
        return snapshots

    # ---------------------------------------------------------------- the end (always)
    def finish(self) -> int:
        """Idempotent. Rollback first, then evidence, then verdicts; never raises."""
        if self._finished:
            return self.exit_code if self.exit_code is not None else 1
        self._finished = True
        if self.request_log is not None:  # the log and the summary count the same requests
            self.request_log.close()
        for g in self._greenlets:
            g.kill(block=False)
        for fault in self.faults:
            if fault.event is not None:
                self._recover(fault)
        try:
            self.metrics_after = self._snapshot_metrics("after")
            log_paths = self._log_paths()
            evidence.collect_logs(log_paths, self.options.artifacts_dir)
        except Exception as e:
            log.error("collecting evidence failed: %s", e)
            log_paths = {}
        try:
            self.exit_code = self._verdicts(log_paths)
        except Exception as e:
            log.exception("computing the verdicts failed: %s", e)
            self.exit_code = 1
        finally:
            self.stop_target()
            if self.late_records:
                log.info("%d request(s) finished after the run ended; not counted", self.late_records)
        return self.exit_code

    def stop_target(self) -> None:
        if self.deployment is not None:
            try:
                self.deployment.stop()
            except Exception as e:
                log.error("stopping the deployment failed: %s", e)

    def _log_paths(self) -> dict[str, str]:
        if self.deployment is None:
            return dict(self.scenario.target.logs)
        return {role: self.deployment.log_path(role) for role in self.deployment.group.roles()}

    def _verdicts(self, log_paths: dict[str, str]) -> int:
        timeline = phases.TIMELINE
        fault_time = timeline.fault_time
        for r in self.records:
            r.phase = phases.classify(r, fault_time) if fault_time is not None else None
        phase_data = phases.phase_stats(self.records, fault_time)
        recovery = phases.recovery(self.records, fault_time)
        recovery["server_recovery_s"] = self.server_recovery_s
        fault_events = [f.event for f in self.faults if f.event is not None]
        result = checks_module.RunResult(
            records=self.records,
            fault_time=fault_time,
            faults=fault_events,
            phases=phase_data,
            recovery=recovery,
            metrics_before=self.metrics_before,
            metrics_after=self.metrics_after,
            log_paths=log_paths,
            expected_tokens=self.options.expected_tokens,
        )
        verdicts = checks_module.evaluate(self.checks, result)
        startup_s = self.deployment.startup_s if self.deployment is not None else None
        self.summary = report.build_summary(
            self.scenario.name, fault_events, phase_data, recovery, startup_s, verdicts,
            extra={"host": self.host, "requests": len(self.records), "artifacts": self.options.artifacts_dir,
                   "misnamed_in_locust": self.misnamed, "late_requests": self.late_records},
        )
        self.table = report.results_table([self.summary])
        report.write_artifacts(self.options.artifacts_dir, self.summary, self.table, verdicts)
        try:
            png = plot.timeline_png(self.records, fault_events, os.path.join(self.options.artifacts_dir, "timeline.png"),
                                    title=f"{self.scenario.name}: requests over time")
        except Exception as e:  # a picture must never cost the verdicts
            log.error("drawing the timeline failed: %s", e)
            png = None
        report.write_html(self.options.artifacts_dir, self.summary, self.table, png)
        self.verdict_text = report.format_verdicts(verdicts)
        return 0 if self.summary["passed"] else 3

