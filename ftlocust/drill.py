"""The fault-aware run as a plain object: target up, triggers, faults, rollback, verdicts.

`hooks.py` binds a `Drill` to Locust's events; everything here is ordinary Python (plus gevent
for the fault greenlets), so the order of a run is readable in one place:

    setup()          preflight: scenario, checks, target start, fault targets  (before load)
    load_started()   arm time triggers
    on_record(r)     request log, cluster-wide count, count trigger
    on_probe(...)    mid-stream trigger (the probe request has K chunks)
    finish_run()     rollback every fault (always), evidence, checks, report → exit code
    stop_target()    tear the embedded target down
    finish()         finish_run() + stop_target() (a headless run: one run, one folder)

Under Locust's web UI each Stop ends a run (`finish_run`) and the next start begins another
(`next_run`: a new `Drill` in its own folder against the same, still running, target); the
target is torn down once, when Locust quits.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import gevent

from ftlocust import checks as checks_module
from ftlocust import gpu_monitor
from ftlocust import evidence, failover, guardian, phases, plot, report, targets, validation
from ftlocust.errors import ConfigError
from ftlocust.faults import Fault, FaultContext, build_faults
from ftlocust.records import RequestLog, RequestRecord
from ftlocust.scenario import Scenario, apply_overrides, validate_triggers

log = logging.getLogger("ftlocust.drill")
INJECTION_GRACE_S = 30.0  # how long the end of a run waits for an injection under way


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
    target_kind: str | None = None  # --ft-target: another embedded kind than the scenario's
    run_time_s: float | None = None  # -t, for triggers that could never fire
    expected_tokens: int | None = None
    gpu_monitor: str | None = None  # --ft-gpu-monitor: auto | on | off; None: the scenario's gpu.monitor


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
        self.deployment = None  # a `ftlocust.targets.Deployment` once set up (external ones too)
        self.faults: list[Fault] = []
        self.checks: list = []
        self.records: list[RequestRecord] = []
        self.finished_count = 0
        self.request_log: RequestLog | None = None
        self.load_started_at: float | None = None
        self.metrics_before: dict[str, Any] = {}
        self.metrics_after: dict[str, Any] = {}
        self.server_recovery: dict[str, float | None] = {}  # fault name → server-view recovery (s)
        self.rollbacks: list[dict] = []  # the rollback journal: one entry per recover() that ran
        self.lost_workers: list[dict] = []  # Locust workers that vanished mid-run
        self.gpu_plan: gpu_monitor.Plan | None = None  # set up: the GPU monitor (or why none)
        self.probe_request_id: str | None = None
        self.summary: dict | None = None
        self.table = ""
        self.verdict_text = ""
        self.exit_code: int | None = None
        self._fired: set[int] = set()
        self._injection_order: list[Fault] = []
        self._greenlets: list[gevent.Greenlet] = []
        self._injecting: set[str] = set()  # faults whose inject() is running
        self._finished = False
        self.late_records = 0
        self.misnamed = 0  # requests whose Locust row name carries another phase than the master's
        self._fire_counts: dict[int, int] = {}
        self.guardian: guardian.Guardian | None = None
        self.ctx = FaultContext(artifacts_dir=options.artifacts_dir, dry_run=options.dry_run,
                                resolve_serving=self._resolve_serving,
                                probe_request_id=lambda: self.probe_request_id)

    # ---------------------------------------------------------------- setup (before load)
    def setup(self, deployment=None) -> None:
        """`deployment`: an already started one (the next run under the web UI): it is reused,
        not built nor started again."""
        o = self.options
        where = self.scenario.source or self.scenario.name
        if not o.dry_run:
            validation.writable_dir(o.artifacts_dir)
        self.scenario = apply_overrides(self.scenario, target_overrides=o.target_overrides,
                                        recovery_window_s=o.recovery_window_s,
                                        fault_after_requests=o.fault_after_requests,
                                        fault_after_seconds=o.fault_after_seconds, target_kind=o.target_kind)
        self.checks = checks_module.build_checks(self.scenario.checks, where=f"{where}: checks")
        self.faults = build_faults(self.scenario.faults, where=f"{where}: faults")
        validate_triggers(self.scenario, total_budget=o.total_budget, run_time_s=o.run_time_s)
        self._plan_gpu_monitor()
        reused = deployment is not None
        if not reused:
            run_dir = os.path.join(self.options.artifacts_dir, "deployment")
            deployment = targets.build(self.scenario.target, run_dir, self.options.host)
        self.deployment = deployment
        self.ctx.deployment = self.deployment
        if self.options.dry_run:
            if not self.deployment.started_here:
                self.deployment.start()  # starts nothing: captures the named processes' identities
            for fault in self.faults:  # resolved as far as possible without starting anything
                fault.preflight(self.ctx)
                if fault.spec.failover is not None:
                    failover.preflight(fault.spec.failover, self.deployment, started=False)
            return
        log_path = os.path.join(self.options.artifacts_dir, "requests.jsonl")
        if os.path.exists(log_path):  # one folder, one run: never mix two runs' requests
            raise ConfigError(f"--ft-artifacts: {self.options.artifacts_dir} already holds a run; choose another folder")
        self.request_log = RequestLog(log_path)
        phases.TIMELINE.reset()
        if self.guardian is None and ((not reused and deployment.started_here) or any(f.reversible for f in self.faults)):
            # Before anything it must undo exists: every process started, every lasting fault.
            self.guardian = guardian.Guardian.ensure(self.options.artifacts_dir)
            self.ctx.guardian = self.guardian
        if not reused:
            self._start_deployment()
        for fault in self.faults:
            fault.preflight(self.ctx)
            if fault.spec.failover is not None:
                failover.preflight(fault.spec.failover, self.deployment)
        self.metrics_before = self._snapshot_metrics("before")

    def _start_deployment(self) -> None:
        deployment = self.deployment
        if deployment.started_here:
            t = self.scenario.target
            log.info("starting the %s deployment (%d workers, migration limit %d)", t.kind, t.workers, t.migration_limit)
            if self.scenario.deployment is not None:
                log.info("%s", self.describe_deployment())
        try:
            deployment.start()
        except BaseException:
            deployment.stop()
            raise
        if deployment.started_here:
            log.info("%s deployment ready at %s in %.2f s", self.scenario.target.kind, deployment.base_url,
                     deployment.startup_s)

    def describe_deployment(self) -> str:
        """Where the scenario's `deployment:` row runs, and whether its engine is real."""
        row = self.scenario.deployment
        return (f"deployment {row['name']} runs on the {row['target']} target: "
                + ("the real engine" if row["real_engine"] else "an imitation of its engine (no real-engine evidence)"))

    def describe(self) -> str:
        """What a dry run prints: the target and every fault, resolved as far as possible."""
        t = self.scenario.target
        if self.options.host or (self.deployment is not None and not self.deployment.started_here):
            kind = targets.TARGETS.get(t.kind)
            shown = t.kind if kind is not None and not kind.started_here else "external"  # --host: external
            where = f"{shown} deployment at {self.host}"
        else:
            where = f"embedded {t.kind} deployment ({t.workers} workers, migration limit {t.migration_limit})"
        lines = [f"scenario {self.scenario.name}: target {where}"]
        if self.scenario.deployment is not None:
            lines.append("  " + self.describe_deployment())
        cutter = self.deployment.partitioner if self.deployment is not None else None
        if cutter is not None:
            lines += ["  " + line for line in cutter.describe().splitlines()]
        lines += [f"  fault {i + 1}: {f.describe()}" + (f"; then {failover.describe(f.spec.failover)}"
                                                        if f.spec.failover is not None else "")
                  for i, f in enumerate(self.faults)]
        lines += [f"  check: {c.name}" for c in self.checks]
        m = self.gpu_monitor
        lines.append(f"  GPU monitor: GPUs {', '.join(str(i) for i in m.indices)} every {m.interval_s:g} s" if m
                     else f"  GPU monitor: off ({self.gpu_plan.reason if self.gpu_plan else 'not set up'})")
        return "\n".join(lines)

    def next_run(self, artifacts_dir: str) -> "Drill":
        """The next run after this one finished (web UI: Stop, then start again): a new Drill with
        its own artifacts folder, request log, checks and faults (rebuilt from the scenario, so
        each fires at most once per run), against this run's target, which keeps running."""
        if not self._finished:
            raise RuntimeError("next_run: this run has not finished")
        options = dataclasses.replace(self.options, artifacts_dir=artifacts_dir)
        nxt = Drill(self.scenario, options, broadcast=self.broadcast, quit_run=self.quit_run)
        nxt.guardian = nxt.ctx.guardian = self.guardian  # one per driver process, across runs
        nxt.setup(deployment=self.deployment)
        return nxt

    @property
    def finished(self) -> bool:
        return self._finished

    @property
    def in_progress(self) -> bool:
        """Load started and the run not finished yet."""
        return self.load_started_at is not None and not self._finished

    def worker_lost(self, entry: dict) -> None:
        """A Locust worker vanished mid-run (hooks watches them): journal it; the built-in
        verdict `no load generator lost` fails the run. `entry`: {worker, node_id, reason,
        lost_at, last_seen_at, in_flight, unsent, received} (see hooks.WorkerWatch)."""
        if self._finished:
            return
        self.lost_workers.append(entry)
        log.error("load generator %s lost (%s) at %.3f, last heard from at %s: %s request(s) in flight lost, "
                  "%s of its budget unsent", entry.get("worker"), entry.get("reason"), entry.get("lost_at"),
                  entry.get("last_seen_at"), entry.get("in_flight"), entry.get("unsent"))

    @property
    def host(self) -> str | None:
        return self.options.host or (self.deployment.base_url if self.deployment else None)

    # ---------------------------------------------------------------- during load
    def _triggered(self):
        """(index, fault) of the faults their own trigger fires: first occurrences only (the
        next occurrences of a repeated fault follow the one before, `_fire`)."""
        return [(i, f) for i, f in enumerate(self.faults) if f.occurrence == 1]

    def load_started(self) -> None:
        self.load_started_at = time.time()
        if self.gpu_monitor is not None:  # the request log's window: load start to the end of the run
            try:
                self.gpu_monitor.start(os.path.join(self.options.artifacts_dir, gpu_monitor.JSONL_NAME))
            except OSError as e:
                log.error("GPU monitor: cannot write %s: %s", gpu_monitor.JSONL_NAME, e)
        for i, fault in self._triggered():
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
        if named is not None and record.phase is not None and named != record.phase:
            record.extra["locust_phase"] = named
            self.misnamed += 1
        self.records.append(record)
        self.finished_count += 1
        if self.request_log is not None:
            self.request_log.write(record)
        for i, fault in self._triggered():
            n = fault.spec.trigger.after_requests
            if n is not None and self.finished_count >= n:
                self._fire(i)

    def on_probe(self, request_id: str, chunks: int) -> None:
        self.probe_request_id = request_id
        for i, fault in self._triggered():
            k = fault.spec.trigger.mid_stream_chunks
            if k is not None and chunks >= k:
                self._fire(i)

    def _fire(self, index: int) -> None:
        if index in self._fired or self._finished:
            return
        self._fired.add(index)  # before anything can yield: exactly once
        self._fire_counts[index] = self.finished_count
        fault = self.faults[index]
        self._greenlets.append(gevent.spawn(self._run_fault, fault))
        nxt = index + 1
        if fault.spec.repeat is not None and nxt < len(self.faults) and self.faults[nxt].spec is fault.spec:
            self._greenlets.append(gevent.spawn(self._fire_at, time.time() + fault.spec.repeat.every_s, nxt))

    def _fire_at(self, when: float, index: int) -> None:
        # Slept from inside a greenlet, against the wall clock: a timer armed from outside the
        # hub's loop counts from the loop's cached time, which may be long stale.
        gevent.sleep(max(0.0, when - time.time()))
        self._fire(index)

    def _run_fault(self, fault: Fault) -> None:
        self._injecting.add(fault.name)
        try:
            event = fault.inject(self.ctx)
        except Exception as e:  # a failed injection is a result (the verdict says so), not a crash
            log.error("fault %s could not be injected: %s", fault.name, e)
            fault.event = phases.FaultEvent(name=fault.name, kind=fault.kind, target=fault.spec.target,
                                            injected_at=None, status="failed", error=f"{type(e).__name__}: {e}")
            if self.ctx.holds.get(fault.name):  # it got as far as guarding an effect: undo what it did
                self._recover(fault, "failed injection")
            return
        finally:
            self._injecting.discard(fault.name)
        fault.event = event
        self._injection_order.append(fault)
        event.detail["finished_requests_at_trigger"] = self._fire_counts.get(self.faults.index(fault))
        phases.TIMELINE.record_fault(event)
        self.broadcast(event.to_dict())
        log.info("fault %s in effect at %.3f", fault.name, event.injected_at)
        if fault.spec.failover is not None:  # its own greenlet: the injection never waits for a wake
            self._greenlets.append(gevent.spawn(self._failover, fault, event))
        early = fault.scheduled_recovery_s()
        if early is not None:
            self._greenlets.append(gevent.spawn_later(early, self._recover, fault, "scheduled"))
        if len(self._fired) == len(self.faults) and self.scenario.stop.recovery_window_s is not None:
            self._greenlets.append(gevent.spawn_later(self.scenario.stop.recovery_window_s, self._stop_after_recovery))
        self._watch_server_recovery(fault, event.injected_at)

    def _recover(self, fault: Fault, reason: str) -> None:
        """Run one fault's rollback and journal it; a failed rollback fails the run."""
        at = time.time()
        try:
            action = fault.recover(self.ctx)
        except Exception as e:
            log.error("rolling back %s failed: %s", fault.name, e)
            self.rollbacks.append({"fault": fault.name, "reason": reason, "action": None, "at": at,
                                   "ok": False, "error": f"{type(e).__name__}: {e}"})
            return
        self.ctx.release(fault.name)  # lifted (or nothing left to lift): the guardian forgets it
        if action is None:
            return  # nothing to undo (already lifted, or a crash nothing restarts)
        if fault.event is not None and fault.event.injected:
            fault.event.rolled_back_at = at
        self.rollbacks.append({"fault": fault.name, "reason": reason, "action": action, "at": at, "ok": True,
                               "error": None})

    def _failover(self, fault: Fault, event: phases.FaultEvent) -> None:
        """The fault's recovery action: wake its shadow engine `delay_s` after injection."""
        spec = fault.spec.failover
        gevent.sleep(max(0.0, event.injected_at + spec.delay_s - time.time()))
        record = failover.run(spec, self.deployment)
        event.detail["failover"] = record
        if record["ok"]:
            log.info("failover after %s: woke %s (%s API) %.3f s after the fault", fault.name, spec.wake, spec.api,
                     record["woken_at"] - event.injected_at)
        else:
            log.error("failover after %s: waking %s failed: %s", fault.name, spec.wake, record["error"])

    @staticmethod
    def _failover_record(fault: Fault) -> dict:
        """What the fault's failover did; one the run ended before (delay_s, a wake under way) is not run."""
        spec = fault.spec.failover
        record = fault.event.detail.setdefault("failover", {
            "role": spec.wake, "api": spec.api, "woken_at": None, "ok": False,
            "error": "not run: the run ended first"})
        return dict(record, fault=fault.name)

    def _stop_after_recovery(self) -> None:
        log.info("recovery window of %.1f s after the last fault is over: stopping", self.scenario.stop.recovery_window_s)
        self.quit_run()

    def _watch_server_recovery(self, fault: Fault, injected_at: float) -> None:
        """Server view: fault → the deployment serves without the faulted component again (or
        with its replacement). Polls `deployment.recovered(role)`; bounded by the run."""
        role = fault.affected_role()
        if role is None:
            return
        self.server_recovery.setdefault(fault.name, None)
        poll = self.scenario.stop.health_poll_s
        deadline = injected_at + 600
        while not self._finished and time.time() < deadline:
            try:
                recovered = fault.server_recovered(self.ctx)
            except Exception as e:  # a refused health poll just means "not yet"
                log.debug("health poll: %s", e)
                recovered = False
            if recovered is None:  # this deployment cannot tell: no server view
                self.server_recovery.pop(fault.name, None)
                return
            if recovered:
                self.server_recovery[fault.name] = time.time() - injected_at
                log.info("server view: %s recovered %.2f s after the fault", role, self.server_recovery[fault.name])
                return
            gevent.sleep(poll)

    def _resolve_serving(self) -> str | None:
        if self.probe_request_id is None:
            return None
        self.deployment.refresh_evidence()  # a k8s target's log files: now, not at the next poll
        logs = {role: path for role in self.deployment.worker_roles() if (path := self.deployment.log_path(role))}
        pattern = self.deployment.serving_log_pattern if isinstance(self.deployment, targets.NamesServingLine) \
            else evidence.SERVING_PATTERN
        return evidence.find_serving_role(logs, self.probe_request_id, timeout_s=5.0, pattern=pattern)

    def _metrics_urls(self) -> dict[str, str]:
        urls = {}
        for role in self.deployment.roles():
            try:
                url = self.deployment.metrics_url(role)
            except ConfigError:  # a role without an HTTP endpoint (a broker), or not started
                continue
            if url:
                urls[role] = url
        return urls

    def _snapshot_metrics(self, label: str) -> dict[str, Any]:
        urls = self._metrics_urls() if self.deployment is not None else {}
        if not urls:
            return {}
        snapshots = evidence.scrape_all(urls, timeout_s=2.0)
        evidence.save_metrics(snapshots, self.options.artifacts_dir, label)
        return snapshots

    # ---------------------------------------------------------------- the end (always)
    def finish(self) -> int | None:
        """The end of a headless run: `finish_run()`, then the target's teardown. Idempotent;
        never raises; returns `finish_run()`'s exit code."""
        try:
            return self.finish_run()
        finally:
            self.stop_target()

    def finish_run(self) -> int | None:
        """Idempotent; never raises; the target keeps running. Rollback first (newest fault
        first), then evidence, then verdicts and artifacts. Returns the exit code: 0 every check
        passed, 3 one failed (also: a load generator was lost); None when the scenario has no
        checks and nothing built-in failed (the caller keeps Locust's own)."""
        if self._finished:
            return self.exit_code
        self._finished = True
        if self.request_log is not None:  # the log and the summary count the same requests
            self.request_log.close()
        # An injection under way finishes first (bounded): killed halfway, it would be reported
        # as never fired while its effect stays in place.
        deadline = time.monotonic() + INJECTION_GRACE_S
        while self._injecting and time.monotonic() < deadline:
            gevent.sleep(0.05)
        if self._injecting:
            log.error("fault(s) %s still being injected %.0f s after the run ended: stopped (the guardian "
                      "keeps what they held)", ", ".join(sorted(self._injecting)), INJECTION_GRACE_S)
        for g in self._greenlets:
            g.kill(block=False)
        for fault in reversed(self._injection_order):
            self._recover(fault, "end of run")
        for fault in self.faults:  # what preflight prepared: a helper process, an open file
            try:
                fault.close(self.ctx)
            except Exception as e:
                log.error("closing fault %s failed: %s", fault.name, e)
        log_paths: dict[str, str] = {}
        try:
            if self.deployment is not None:
                self.deployment.refresh_evidence()
            self.metrics_after = self._snapshot_metrics("after")
            log_paths = self._log_paths()
            evidence.collect_logs(log_paths, self.options.artifacts_dir)
        except Exception as e:
            log.error("collecting evidence failed: %s", e)
        self._stop_gpu_monitor()  # after rollback and the last evidence: the run's whole window
        try:
            code = self._verdicts(log_paths)
            self.exit_code = None if code == 0 and not self.checks else code
        except Exception as e:
            log.exception("computing the verdicts failed: %s", e)
            self.exit_code = 1
        finally:
            if self.late_records:
                log.info("%d request(s) finished after the run ended; not counted", self.late_records)
        return self.exit_code

    def stop_target(self) -> None:
        """Tear the embedded target down, then let the guardian go (what it still holds — a
        rollback that failed — it runs once this process exits)."""
        self._stop_gpu_monitor()  # set up but never started (a failed set-up): NVML is let go
        if self.deployment is not None:
            try:
                self.deployment.stop()
            except Exception as e:
                log.error("stopping the deployment failed: %s", e)
        if self.guardian is not None:
            self.guardian.close()

    @property
    def gpu_monitor(self) -> "gpu_monitor.Monitor | None":
        return self.gpu_plan.monitor if self.gpu_plan is not None else None

    def _plan_gpu_monitor(self) -> None:
        """Before any process starts: `on` without NVML or a GPU is a one-line ConfigError."""
        self.gpu_plan = gpu_monitor.plan(self.scenario.gpu, self.options.gpu_monitor,
                                         validation.at(self.scenario.where, "gpu"))
        if self.gpu_plan.monitor is None and self.gpu_plan.mode != gpu_monitor.OFF:
            log.info("GPU monitor off: %s", self.gpu_plan.reason)

    def _stop_gpu_monitor(self) -> None:
        if self.gpu_monitor is not None:
            self.gpu_monitor.stop()

    def _exits(self) -> list[dict] | None:
        """How each deployment process that ended during the run ended (vLLM exits 0 after
        losing its engine); None: this target cannot tell, which is not "nothing exited"."""
        return self.deployment.exits() if isinstance(self.deployment, targets.RecordsExits) else None

    def _gpu_samples(self) -> list:
        return list(self.gpu_monitor.samples) if self.gpu_monitor is not None else []

    def _log_paths(self) -> dict[str, str]:
        if self.deployment is None:
            return {}
        return {role: path for role in self.deployment.roles() if (path := self.deployment.log_path(role))}

    def _verdicts(self, log_paths: dict[str, str]) -> int:
        # Every planned fault, scenario order; one whose trigger never came has no event.
        events = [
            f.event if f.event is not None else phases.FaultEvent(
                name=f.name, kind=f.kind, target=f.spec.target, injected_at=None, status=phases.NOT_FIRED,
                error="trigger never reached: " + f.spec.trigger.describe())
            for f in self.faults
        ]
        for f in self.faults:  # how far the probe was when each fault hit (and whether too late)
            aimed = f.spec.trigger.mid_stream_chunks is not None and f.occurrence == 1  # at the probe
            progress = phases.probe_progress(self.records, f.event, aimed) \
                if f.event is not None else None
            if progress is not None:
                f.event.detail["probe"] = progress
        analysis = phases.analyse(self.records, events, dict(self.server_recovery))
        fault_time = analysis["fault_time"]
        for r in self.records:
            r.phase = phases.classify(r, fault_time) if fault_time is not None else None
        urls = self._metrics_urls() if self.deployment is not None else {}
        result = checks_module.RunResult.from_analysis(
            analysis, events,
            records=self.records,
            metrics_before=self.metrics_before,
            metrics_after=dict(self.metrics_after),
            log_paths=log_paths,
            expected_tokens=self.options.expected_tokens,
            rollbacks=list(self.rollbacks),
            lost_workers=list(self.lost_workers),
            gpu_samples=self._gpu_samples(),
            exits=self._exits(),
            scrape=(lambda: evidence.scrape_all(urls, timeout_s=2.0)) if urls else None,
        )
        verdicts = checks_module.evaluate(self.checks, result)
        # Checks may have waited for late evidence: the artifacts keep what they judged.
        if result.metrics_after != self.metrics_after:
            self.metrics_after = result.metrics_after
            evidence.save_metrics(self.metrics_after, self.options.artifacts_dir, "after")
        try:
            evidence.collect_logs(log_paths, self.options.artifacts_dir)
        except Exception as e:
            log.error("collecting logs after the checks failed: %s", e)
        startup_s = self.deployment.startup_s if self.deployment is not None else None
        self.summary = report.build_summary(
            self.scenario.name, analysis, startup_s, verdicts,
            extra={"host": self.host, "requests": len(self.records), "artifacts": self.options.artifacts_dir,
                   "misnamed_in_locust": self.misnamed, "late_requests": self.late_records},
        )
        self.summary["rollbacks"] = list(self.rollbacks)  # the journal: what was undone, when, whether it worked
        self.summary["lost_workers"] = list(self.lost_workers)
        self.summary["gpu_monitor"] = self.gpu_plan.status() if self.gpu_plan else None
        self.summary["gpus"] = gpu_monitor.summarize(result.gpu_samples, events, self.gpu_monitor.gpus) \
            if self.gpu_monitor is not None else []
        self.summary["exits"] = result.exits
        self.summary["deployment"] = self.scenario.deployment  # the seed row and where it ran (real engine or not)
        self.summary["failovers"] = [self._failover_record(f) for f in self.faults
                                     if f.spec.failover is not None and f.event is not None and f.event.injected]
        self.table = report.results_table([self.summary])
        report.write_artifacts(self.options.artifacts_dir, self.summary, self.table, verdicts)
        try:
            png = plot.timeline_png(self.records, events, os.path.join(self.options.artifacts_dir, "timeline.png"),
                                    title=f"{self.scenario.name}: requests over time", gpu_samples=result.gpu_samples)
        except Exception as e:  # a picture must never cost the verdicts
            log.error("drawing the timeline failed: %s", e)
            png = None
        report.write_html(self.options.artifacts_dir, self.summary, self.table, png)
        self.verdict_text = report.format_verdicts(verdicts)
        return 0 if self.summary["passed"] else 3

