"""Shadow-engine failover, as a user runs it:

    locust -f locustfiles/migration.py --headless --ft-scenario configs/scenarios/shadow-failover.yaml

worker-2 (the shadow) starts asleep; the primary worker-1 is SIGKILLed mid-stream and the fault's
`failover:` wakes the shadow. The shadow must have served nothing before it was woken and
everything after the kill, the primary's in-flight streams must complete on it; without the
failover nobody serves after the kill and the drill fails (exit 3). The sleep / wake endpoints
and the routing around a sleeping worker are also tested through the Python API.
"""
import json
import os
import re
import time

import pytest

from ftlocust import failover
from ftlocust.errors import ConfigError
from ftlocust.records import read_records
from ftlocust.targets.reference import ReferenceDeployment, client
from ftlocust.targets.reference.logs import parse_timestamp
from tests.integration.test_engine_core_drill import _events
from tests.integration.test_migration_drill import ROOT, SMALL, _assert_torn_down
from tests.integration.test_migration_drill import _run as _run_locust

pytestmark = pytest.mark.integration

SCENARIO_PATH = os.path.join(ROOT, "configs", "scenarios", "shadow-failover.yaml")
WOKEN = "Engine woken up"


def _run(scenario, args, artifacts, timeout=240):
    return _run_locust(["--ft-scenario", scenario] + args, artifacts, timeout=timeout)


def _received(log_text):
    """request_id -> time of its `request received` line in a worker log."""
    return {m.group(2): parse_timestamp(m.group(1))
            for m in re.finditer(r"^(\S+)\s+INFO \S+: request received request_id=(\S+)", log_text, re.M)}


def _completed(log_text):
    return set(re.findall(r"request completed request_id=(\S+)", log_text))


def _completed_by(log_path, ids, timeout_s=5.0):
    """Whether the worker logged all `ids` completed within `timeout_s`: it writes the line just
    after the response's last bytes, so a client can be a moment ahead of the log."""
    deadline = time.monotonic() + timeout_s
    while not set(ids) <= _completed(open(log_path).read()):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_shadow_failover_drill_passes(tmp_path):
    art = tmp_path / "run"
    proc = _run(SCENARIO_PATH, SMALL, art)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((art / "summary.json").read_text())
    assert summary["passed"] is True and all(c["passed"] for c in summary["checks"]), summary["checks"]
    (fault,) = summary["faults"]
    fault_at = fault["injected_at"]
    assert fault["kind"] == "process-signal" and fault["target"] == "worker-1"
    record = fault["detail"]["failover"]
    assert record["ok"] is True and record["error"] is None and (record["role"], record["api"]) == ("worker-2", "vllm")
    assert fault_at <= record["woken_at"] < fault_at + 5  # right after the kill (bounded wake timeout)
    assert summary["failovers"] == [dict(record, fault="kill-primary")]

    primary = (art / "services" / "worker-1" / "worker-1.log").read_text()
    shadow = (art / "services" / "worker-2" / "worker-2.log").read_text()
    assert "(starting asleep)" in shadow and "(starting asleep)" not in primary
    (woken_line,) = [line for line in shadow.splitlines() if WOKEN in line]
    woken_at = parse_timestamp(woken_line)
    assert "path=/engine/wake_up was_asleep=true" in woken_line
    on_shadow, on_primary = _received(shadow), _received(primary)
    assert on_shadow and min(on_shadow.values()) >= woken_at  # the shadow served nothing before its wake
    assert max(on_primary.values()) <= fault_at  # nothing reached the dead primary after the kill

    # Every request that started after the kill was served (and completed) by the shadow.
    records = read_records(str(art / "requests.jsonl"))
    after = [r for r in records if r.start_wall > fault_at]
    assert after and all(r.outcome == "ok" for r in after)
    assert {r.request_id for r in after} <= set(on_shadow) & _completed(shadow)
    # The primary's in-flight streams at the kill (received, never completed) finished on the shadow.
    cut = set(on_primary) - _completed(primary)
    assert cut and cut <= _completed(shadow)
    migrated = {e["request_id"] for e in _events(art)
                if e["event"] == "migration_done" and (e["from_role"], e["to_role"]) == ("worker-1", "worker-2")}
    assert cut <= migrated
    by_id = {r.request_id: r for r in records}
    assert all(by_id[rid].outcome == "ok" and by_id[rid].token_check == "ok" for rid in cut)
    (probe,) = [r for r in records if r.client_id.endswith("/probe")]
    assert probe.request_id in cut and probe.output_tokens == probe.expected_tokens
    woken = [e for e in _events(art) if e["event"] == "worker_woken"]
    assert [e["role"] for e in woken] == ["worker-2"]
    _assert_torn_down(art)


def test_without_failover_nobody_serves_after_the_kill_and_the_drill_fails(tmp_path):
    text = open(SCENARIO_PATH).read()
    assert "    failover: {wake: worker-2, api: vllm, delay_s: 0}\n" in text
    scenario = tmp_path / "no-failover.yaml"
    scenario.write_text(text.replace("    failover: {wake: worker-2, api: vllm, delay_s: 0}\n", ""))
    art = tmp_path / "run"
    proc = _run(str(scenario), SMALL, art)
    assert proc.returncode == 3, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((art / "summary.json").read_text())
    assert summary["passed"] is False and summary["failovers"] == []
    failed = {c["name"] for c in summary["checks"] if not c["passed"]}
    assert {"no_failures[all]", "streams_complete_after_fault", "log[worker-2] has 'Engine woken up'"} <= failed
    shadow = (art / "services" / "worker-2" / "worker-2.log").read_text()
    assert WOKEN not in shadow and not _received(shadow)
    frontend = (art / "services" / "frontend" / "frontend.log").read_text()
    assert "No awake worker; waiting for a sleeping worker to wake" in frontend
    assert "No worker woke within 2 s" in frontend
    after = [r for r in read_records(str(art / "requests.jsonl")) if r.start_wall > summary["faults"][0]["injected_at"]]
    assert after and not any(r.outcome == "ok" for r in after)
    _assert_torn_down(art)


def test_a_failover_naming_an_unknown_role_is_one_line_before_anything_starts(tmp_path):
    scenario = tmp_path / "bad.yaml"
    scenario.write_text(open(SCENARIO_PATH).read().replace("wake: worker-2,", "wake: worker-3,"))
    art = tmp_path / "run"
    proc = _run(str(scenario), ["--ft-dry-run"], art, timeout=60)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert ("faults[0].failover.wake: expected a role of the deployment (frontend, worker-1, worker-2), "
            "got 'worker-3'") in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (art / "deployment" / "events.jsonl").exists()


def test_dry_run_names_the_wake_and_starts_nothing(tmp_path):
    art = tmp_path / "run"
    proc = _run(SCENARIO_PATH, ["--ft-dry-run"], art, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert ("fault 1: SIGKILL → worker-1, when the probe stream has 40 chunks; then wake worker-2 "
            "(vllm: POST /engine/wake_up) 0 s after the fault") in proc.stdout
    assert not (art / "deployment" / "events.jsonl").exists()


def _completion(dep, prompt):
    status, _, body = client.request(dep.base_url, "POST", "/v1/completions",
                                     {"model": dep.model, "prompt": prompt, "max_tokens": 2, "seed": 1}, timeout_s=10)
    return status, json.loads(body)


def test_sleep_and_wake_endpoints_and_routing_around_a_sleeping_worker(tmp_path):
    with ReferenceDeployment(tmp_path / "dep", workers=2, asleep=["worker-2"], token_delay_s=0.001) as dep:
        shadow, primary = dep.engine_url("worker-2"), dep.engine_url("worker-1")
        assert shadow == dep.url("worker-2") and dep.engine_url("frontend") is None
        assert client.get_json(shadow, "/health")[1]["status"] == "sleeping"
        instances = {i["name"]: i for i in client.get_json(dep.base_url, "/health")[1]["instances"]}
        assert instances["worker-2"]["asleep"] is True and instances["worker-1"]["asleep"] is False
        ids = [_completion(dep, f"p {i}")[1]["id"].split("-", 1)[1] for i in range(4)]
        assert _completed_by(dep.log_path("worker-1"), ids)
        assert not _received(open(dep.log_path("worker-2")).read())  # round-robin skipped the sleeper
        status, _, _ = client.request(shadow, "POST", "/generate", {"request_id": "x", "seed": 1, "max_tokens": 1,
                                                                    "prompt_tokens": 1}, timeout_s=5)
        assert status == 503  # reached directly anyway: it does not serve
        status, _, body = client.request(shadow, "POST", "/engine/sleep", {"level": 4}, timeout_s=5)
        assert status == 400 and b"level" in body

        assert failover.wake(shadow, "sglang") == {"status": "ok"}  # resume_memory_occupation
        assert client.get_json(shadow, "/health")[1]["status"] == "ready"
        assert failover.sleep(primary, "vllm", level=2) == {"status": "ok"}
        assert client.get_json(primary, "/health")[1]["status"] == "sleeping"
        ids = [_completion(dep, f"q {i}")[1]["id"].split("-", 1)[1] for i in range(4)]
        assert _completed_by(dep.log_path("worker-2"), ids)
        assert not set(ids) & set(_received(open(dep.log_path("worker-1")).read()))
        assert dep.recovered("frontend") is True  # one awake worker: the frontend serves
        assert failover.sleep(shadow, "sglang") == {"status": "ok"}  # both asleep: nothing serves
        assert dep.recovered("frontend") is False
        status, _, _ = client.request(dep.base_url, "POST", "/v1/completions",
                                      {"model": dep.model, "prompt": "r", "max_tokens": 1}, timeout_s=15)
        assert status == 503  # after waiting wake_wait_s for a wake that did not come
        status, _, body = client.request(primary, "POST", "/engine/wake", {}, timeout_s=5)  # vLLM's older path
        assert status == 200 and json.loads(body) == {"status": "ok"}
        assert _completion(dep, "s")[0] == 200
        primary_log = open(dep.log_path("worker-1")).read()
    assert "Engine put to sleep level=2" in primary_log and "path=/engine/wake was_asleep=true" in primary_log


@pytest.mark.parametrize("asleep, expected", [
    (["worker-3"], "worker roles (worker-1, worker-2), not 'worker-3'"),
    (["worker-1", "worker-2"], "at least one serving worker awake (the start-up request needs one)"),
    ("worker-2", "a list of worker roles"),
])
def test_asleep_knob_is_checked(tmp_path, asleep, expected):
    with pytest.raises(ConfigError) as e:
        ReferenceDeployment(tmp_path, asleep=asleep)
    assert str(e.value) == f"reference deployment asleep={asleep!r}: expected {expected}"
