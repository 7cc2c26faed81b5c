"""ftlocust.failover without a deployment: the engine APIs against a recording HTTP server, the
`failover:` field of a fault (parsing, one-line errors, preflight), and the drill running it
right after the injection, in its own greenlet, with what happened in the fault's detail and
the summary."""
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import gevent
import pytest

from ftlocust import failover
from ftlocust.drill import Drill, DrillOptions
from ftlocust.errors import ConfigError
from ftlocust.scenario import FaultSpec, Scenario, TargetSpec, TriggerSpec, scenario_from_dict
from tests.support.fakes import CountingFault, counting_fault  # noqa: F401  (a fixture)

pytestmark = pytest.mark.usefixtures("counting_fault")  # CountingFault registered for every test


class EngineServer:
    """A stand-in engine: records each POST (path, body); answers `answer` with `status`."""

    def __init__(self, status=200, answer=b'{"status": "ok"}'):
        self.calls = []
        self.status, self.answer = status, answer
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                server.calls.append((self.path, json.loads(body or b"null"), time.time()))
                self.send_response(server.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(server.answer)))
                self.end_headers()
                self.wfile.write(server.answer)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def engine():
    server = EngineServer()
    yield server
    server.close()


# --- the engine APIs -------------------------------------------------------------------------------


def test_vllm_and_sglang_paths_and_bodies(engine):
    assert failover.sleep(engine.url, "vllm") == {"status": "ok"}
    failover.sleep(engine.url, "vllm", level=2)
    failover.wake(engine.url, "vllm")
    failover.sleep(engine.url, "sglang")
    failover.wake(engine.url, "sglang")
    assert [(path, body) for path, body, _ in engine.calls] == [
        ("/engine/sleep", {"level": 1}), ("/engine/sleep", {"level": 2}), ("/engine/wake_up", {}),
        ("/engine/release_memory_occupation", {}), ("/engine/resume_memory_occupation", {})]


@pytest.mark.parametrize("status, answer, expected", [
    (503, b'{"error": "busy"}', "answered 503"),
    (200, b'{"status": "error"}', 'expected {"status": "ok"}'),
    (200, b"not json", 'expected {"status": "ok"}'),
])
def test_an_answer_other_than_status_ok_is_a_one_line_failover_error(status, answer, expected):
    server = EngineServer(status, answer)
    try:
        with pytest.raises(failover.FailoverError) as e:
            failover.wake(server.url, "vllm", timeout_s=2)
    finally:
        server.close()
    assert str(e.value).startswith(f"POST {server.url}/engine/wake_up: ") and expected in str(e.value)
    assert "\n" not in str(e.value)


def test_an_unreachable_engine_is_a_failover_error_within_the_timeout():
    t0 = time.monotonic()
    with pytest.raises(failover.FailoverError, match=r"^POST http://127\.0\.0\.1:9/engine/wake_up: "):
        failover.wake("http://127.0.0.1:9", timeout_s=2)
    assert time.monotonic() - t0 < 3


# --- the field ---------------------------------------------------------------------------------------


def _scenario(failover_value):
    return scenario_from_dict({"name": "s", "faults": [{"kind": "process-signal", "target": "worker-1",
                                                        "trigger": {"after_requests": 1},
                                                        "failover": failover_value}]}, source="x.yaml")


def test_failover_parses_with_defaults_and_is_not_a_kind_param():
    (fault,) = _scenario({"wake": "worker-2"}).faults
    assert fault.failover == failover.FailoverSpec(wake="worker-2", api="vllm", delay_s=0.0,
                                                   source="x.yaml: faults[0].failover")
    assert "failover" not in fault.params
    (fault,) = _scenario({"wake": "worker-2", "api": "sglang", "delay_s": 0.5}).faults
    assert (fault.failover.api, fault.failover.delay_s) == ("sglang", 0.5)


@pytest.mark.parametrize("value, message", [
    ({"wake": "worker-2", "api": "trtllm"}, "x.yaml: faults[0].failover.api: expected one of vllm, sglang, got 'trtllm'"),
    ({"api": "vllm"}, "x.yaml: faults[0].failover.wake"),
    ({"wake": "worker-2", "delay_s": -1}, "x.yaml: faults[0].failover.delay_s: expected a number >= 0, got -1"),
    ({"wake": "worker-2", "wkae": 1}, "x.yaml: faults[0].failover.wkae"),
    ("worker-2", "x.yaml: faults[0].failover: expected a mapping"),
])
def test_a_bad_failover_is_one_line_naming_the_field(value, message):
    with pytest.raises(ConfigError) as e:
        _scenario(value)
    assert str(e.value).startswith(message), str(e.value)
    assert "\n" not in str(e.value)


def test_describe_says_what_is_woken_and_when():
    assert failover.describe(failover.FailoverSpec(wake="worker-2", api="sglang", delay_s=0.5)) == (
        "wake worker-2 (sglang: POST /engine/resume_memory_occupation) 0.5 s after the fault")


class FakeDeployment:
    """Just enough of a Deployment for the drill: two roles, an engine URL for worker-2."""

    started_here = False
    base_url = "http://127.0.0.1:9"
    startup_s = None
    frontend_role = "frontend"
    partitioner = None
    events_path = None

    def __init__(self, engine_url=None):
        self._engine_url = engine_url

    def roles(self):
        return ["frontend", "worker-1", "worker-2"]

    def worker_roles(self):
        return ["worker-1", "worker-2"]

    def engine_url(self, role):
        return self._engine_url if role == "worker-2" else None

    def metrics_url(self, role):
        return None

    def log_path(self, role):
        return None

    def refresh_evidence(self):
        pass

    def stop(self):
        pass


class NoEngineDeployment(FakeDeployment):
    engine_url = None  # a target that cannot reach an engine's control port


def test_preflight_names_an_unknown_role_and_a_target_without_engine_control(engine):
    spec = failover.FailoverSpec(wake="worker-9", source="x.yaml: faults[0].failover")
    with pytest.raises(ConfigError) as e:
        failover.preflight(spec, FakeDeployment(engine.url))
    assert str(e.value) == ("x.yaml: faults[0].failover.wake: expected a role of the deployment (frontend, worker-1, "
                            "worker-2), got 'worker-9'; did you mean 'worker-2'?")
    spec = failover.FailoverSpec(wake="worker-2", source="x.yaml: faults[0].failover")
    with pytest.raises(ConfigError, match=r"^x\.yaml: faults\[0\]\.failover\.wake: this NoEngineDeployment cannot "
                                          r"reach worker-2's engine-control endpoints"):
        failover.preflight(spec, NoEngineDeployment())
    with pytest.raises(ConfigError, match=r"worker-2 has no engine-control endpoint"):
        failover.preflight(spec, FakeDeployment(None))
    failover.preflight(spec, FakeDeployment(None), started=False)  # a dry run: not started, no URL yet
    failover.preflight(spec, FakeDeployment(engine.url))


# --- the drill runs it -------------------------------------------------------------------------------




def _drill(tmp_path, deployment, delay_s=0.0):
    spec = FaultSpec(kind=CountingFault.kind, target="worker-1", trigger=TriggerSpec(after_seconds=0), name="kill",
                     failover=failover.FailoverSpec(wake="worker-2", delay_s=delay_s, source="faults[0].failover"))
    scenario = Scenario(name="t", target=TargetSpec(kind="external"), faults=[spec])
    drill = Drill(scenario, DrillOptions(artifacts_dir=str(tmp_path), host="http://127.0.0.1:9"))
    drill.setup(deployment=deployment)
    return drill


def _wait(predicate, timeout_s=5.0):
    deadline = time.time() + timeout_s
    while not predicate() and time.time() < deadline:
        gevent.sleep(0.01)
    return predicate()


def test_the_drill_wakes_the_shadow_after_the_fault_and_records_it(tmp_path, engine):
    drill = _drill(tmp_path, FakeDeployment(engine.url), delay_s=0.3)
    drill.load_started()
    assert _wait(lambda: drill.faults[0].event is not None)
    event = drill.faults[0].event
    assert "failover" not in event.detail and not engine.calls  # delay_s: not yet, and the injection is done
    assert _wait(lambda: "failover" in event.detail)
    record = event.detail["failover"]
    assert record["ok"] is True and record["error"] is None and (record["role"], record["api"]) == ("worker-2", "vllm")
    ((path, body, called_at),) = engine.calls
    assert (path, body) == ("/engine/wake_up", {})
    assert called_at - event.injected_at >= 0.3 and record["woken_at"] >= called_at
    drill.finish()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["faults"][0]["detail"]["failover"]["ok"] is True
    assert summary["failovers"] == [dict(record, fault="kill")]


def test_a_failed_wake_is_in_the_summary(tmp_path):
    broken = EngineServer(500, b'{"status": "error"}')
    try:
        drill = _drill(tmp_path, FakeDeployment(broken.url))
        drill.load_started()
        assert _wait(lambda: drill.faults[0].event is not None and "failover" in drill.faults[0].event.detail)
        drill.finish()
    finally:
        broken.close()
    (entry,) = json.loads((tmp_path / "summary.json").read_text())["failovers"]
    assert entry["ok"] is False and entry["woken_at"] is None and entry["fault"] == "kill"
    assert entry["error"].startswith(f"FailoverError: POST {broken.url}/engine/wake_up: answered 500")


def test_a_failover_the_run_ended_before_is_recorded_as_not_run(tmp_path, engine):
    drill = _drill(tmp_path, FakeDeployment(engine.url), delay_s=60)
    drill.load_started()
    assert _wait(lambda: drill.faults[0].event is not None)
    drill.finish()
    (entry,) = json.loads((tmp_path / "summary.json").read_text())["failovers"]
    assert entry["ok"] is False and entry["error"] == "not run: the run ended first" and not engine.calls


def test_a_target_without_engine_control_fails_at_preflight(tmp_path):
    with pytest.raises(ConfigError, match=r"^faults\[0\]\.failover\.wake: this NoEngineDeployment cannot reach"):
        _drill(tmp_path, NoEngineDeployment())
