"""The fault-service kind against tests/support/fault_service.py, a real HTTP server on 127.0.0.1
with the seed API's routes and models: every route and body, the guard before the POST, the
recovery witnessed by the service's own record, the guardian's action, and bad input."""

import json

import pytest

from ftlocust.errors import ConfigError
from ftlocust.fault_kinds import fault_service as fs
from ftlocust.faults import FaultContext, build_fault
from ftlocust.guardian import run_action
from ftlocust.scenario import FaultSpec, TriggerSpec
from tests.support.fault_service import FaultService


@pytest.fixture
def svc():
    with FaultService() as server:
        yield server


def _fault(duration_s=None, **params):
    spec = FaultSpec(kind="fault-service", target="gpu-node-1", trigger=TriggerSpec(after_seconds=1), params=params,
                     name="svc", duration_s=duration_s)
    return build_fault(spec, where="f")


class Guardian:
    """Records holds; checks that the service had no inject call when the first was handed over."""

    def __init__(self, svc):
        self.svc, self.held, self.released, self.first_hold_saw_injects = svc, {}, [], None

    def hold(self, action):
        if self.first_hold_saw_injects is None:
            self.first_hold_saw_injects = len(self.svc.injects())
        hold_id = len(self.held) + len(self.released) + 1
        self.held[hold_id] = action
        return hold_id

    def release(self, hold_id):
        self.released.append(self.held.pop(hold_id))


XID = {"xid": {"code": 79, "node_name": "gpu-node-1", "gpu_id": 3, "duration": 60}}
GPU = {"gpu": {"fault_type": "THROTTLE", "node_name": "gpu-node-1", "severity": "HIGH", "parameters": {"clock_mhz": 300}}}
NET = {"network": {"partition_type": "FRONTEND_WORKER", "source": "dynamo", "target": "dynamo", "mode": "CHAOS_MESH",
                   "parameters": {"target_pod_prefix": "vllm-worker", "packet_loss_percent": 100}}}


@pytest.mark.parametrize("params, route, body, response_type, record_type, record_target", [
    (XID, "/api/v1/faults/gpu/inject/xid-79", {"node_name": "gpu-node-1", "xid_type": 79, "gpu_id": 3, "duration": 60},
     "gpu_xid_79", "gpu_xid_79", "gpu-node-1/gpu3"),
    (GPU, "/api/v1/faults/gpu/inject", {"node_name": "gpu-node-1", "fault_type": "throttle", "severity": "high",
                                        "parameters": {"clock_mhz": 300}}, "gpu_throttle", "gpu", "gpu-node-1"),
    (NET, "/api/v1/faults/network/inject", {"partition_type": "frontend_worker", "source": "dynamo", "target": "dynamo",
                                            "mode": "chaos_mesh", "parameters": {"target_pod_prefix": "vllm-worker",
                                                                                 "packet_loss_percent": 100}},
     "network_frontend_worker", "network", "dynamo -> dynamo"),
])
def test_each_route_gets_the_apis_body_guarded_first_and_is_recovered_witnessed_by_its_record(
        svc, params, route, body, response_type, record_type, record_target):
    fault = _fault(duration_s=5, url=svc.url + "/", **params)
    ctx = FaultContext()
    ctx.guardian = guardian = Guardian(svc)
    fault.preflight(ctx)
    assert fault.reversible and fault.scheduled_recovery_s() == 5
    assert f"POST {svc.url}{route} {json.dumps(body, separators=(', ', ': '))}" in fault.describe()
    event = fault.inject(ctx)
    (call,) = svc.injects()
    assert call.path == route and call.body == body and call.status == 200  # the API's lower-case enums
    assert call.headers["Content-Type"] == "application/json"
    fault_id = event.detail["fault_id"]
    assert fault_id.startswith(record_type + "-")
    record = svc.faults[fault_id]
    assert (record["type"], record["target"], record["status"]) == (record_type, record_target, "injected")
    assert event.detail["fault_type"] == response_type and event.detail["target"] == record_target
    assert event.detail["service_injected_at"] and event.detail["message"]
    assert event.target == "gpu-node-1" and event.recovered_at is None
    # guarded before the POST, by a sweep; then by the id, the sweep released
    assert guardian.first_hold_saw_injects == 0
    (sweep,) = guardian.released
    assert sweep["match"] == {"type": record_type, "target": record_target} and sweep["exclude"] == []
    assert [a["fault_id"] for a in guardian.held.values()] == [fault_id]
    assert ctx.holds["svc"] == list(guardian.held)
    assert all(a["kind"] == fs.ACTION_KIND and a["module"] == "ftlocust.fault_kinds.fault_service"
               for a in [sweep, *guardian.held.values()])

    what = fault.recover(ctx)
    assert what.startswith(f"recovered {fault_id}") and event.recovered_at >= event.injected_at
    assert svc.faults[fault_id]["status"] == "recovered"
    assert [c.path for c in svc.recovers()] == [f"/api/v1/faults/{fault_id}/recover"]
    assert svc.calls[-1].method == "GET" and svc.calls[-1].path == f"/api/v1/faults/{fault_id}"  # the witness
    assert fault.recover(ctx) is None and len(svc.recovers()) == 1  # idempotent


def test_inject_answered_500_raises_with_the_services_answer_and_nothing_is_recovered(svc):
    svc.plan("POST", r"/xid-79$", status=500, body={"detail": "Failed to inject XID 79: No GPU fault injector found"})
    fault = _fault(url=svc.url, **XID)
    ctx = FaultContext()
    fault.preflight(ctx)
    with pytest.raises(RuntimeError, match=r"answered 500: Failed to inject XID 79: No GPU fault injector found; "
                                           r"the fault did not happen") as e:
        fault.inject(ctx)
    assert "\n" not in str(e.value)
    assert [f["status"] for f in svc.faults.values()] == ["failed"]
    assert fault.recover(ctx) is None and svc.recovers() == []


def test_a_fault_response_with_status_failed_is_no_injection(svc):
    svc.plan("POST", r"/gpu/inject$", fault_status="failed")
    fault = _fault(url=svc.url, **GPU)
    ctx = FaultContext()
    fault.preflight(ctx)
    with pytest.raises(RuntimeError, match=r"answered 200: status 'failed' \(fault gpu-[0-9a-f]{8}\); the fault did not happen"):
        fault.inject(ctx)
    assert fault.event is None and fault.recover(ctx) is None and svc.recovers() == []


def test_an_unanswered_inject_is_swept_on_recovery_sparing_an_older_fault_on_the_same_target(svc):
    older = svc.add_fault("gpu_xid_79", "gpu-node-1/gpu3")  # someone else's, before ours
    svc.plan("POST", r"/xid-79$", delay_s=1.5)  # the record is made, the answer comes late
    fault = _fault(url=svc.url, timeout_s=0.3, **XID)
    ctx = FaultContext()
    ctx.guardian = guardian = Guardian(svc)
    fault.preflight(ctx)
    with pytest.raises(RuntimeError, match=r"no answer within 0.3 s \(whether the service made the fault is unknown"):
        fault.inject(ctx)
    (sweep,) = guardian.held.values()  # still held: nothing knows the id
    assert sweep["exclude"] == [older] and "fault_id" not in sweep
    ours = [f["id"] for f in svc.active() if f["id"] != older]
    assert len(ours) == 1
    what = fault.recover(ctx)
    assert what.startswith(f"recovered {ours[0]}")
    assert [c.path for c in svc.recovers()] == [f"/api/v1/faults/{ours[0]}/recover"]
    assert svc.faults[older]["status"] == "injected"


def test_recover_404_says_already_gone_and_500_fails_the_rollback_until_it_works(svc):
    fault = _fault(url=svc.url, **XID)
    ctx = FaultContext()
    fault.preflight(ctx)
    fault.inject(ctx)
    fault_id = fault.fault_id
    svc.plan("POST", r"/recover$", status=500, body={"detail": "Failed to recover fault: agent unreachable"})
    with pytest.raises(fs.ServiceError, match=r"/recover answered 500: Failed to recover fault: agent unreachable"):
        fault.recover(ctx)
    assert svc.faults[fault_id]["status"] == "injected" and fault.event.recovered_at is None
    assert fault.recover(ctx).startswith(f"recovered {fault_id}")  # tried again at the end of the run

    gone = _fault(url=svc.url, **XID)
    gone.preflight(ctx)
    gone.inject(ctx)
    del svc.faults[gone.fault_id]  # the service restarted
    assert gone.recover(ctx) == f"fault {gone.fault_id} was already gone from the service (404)"
    assert gone.event.recovered_at is None


def test_a_recover_answered_200_whose_record_is_not_recovered_fails(svc):
    fault = _fault(url=svc.url, **XID)
    ctx = FaultContext()
    fault.preflight(ctx)
    fault.inject(ctx)
    svc.plan("GET", rf"/api/v1/faults/{fault.fault_id}$", status=200, body={"id": fault.fault_id, "status": "injected"},
             times=2)
    svc.plan("POST", r"/recover$", status=200, body={"status": "recovered"})  # says so, does nothing
    with pytest.raises(fs.ServiceError, match=r"answered 200, but GET /api/v1/faults/gpu_xid_79-\w+ answered 200 "
                                              r"with status 'injected' \(expected recovered\)"):
        fault.recover(ctx)


def test_the_guardian_action_recovers_by_id_once_and_its_sweep_only_new_faults(svc):
    fault = _fault(url=svc.url, **XID)
    ctx = FaultContext()
    ctx.guardian = guardian = Guardian(svc)
    fault.preflight(ctx)
    fault.inject(ctx)
    (by_id,) = guardian.held.values()
    assert run_action(json.loads(json.dumps(by_id))).startswith(f"recovered {fault.fault_id}")
    assert run_action(by_id) is None  # already recovered: nothing done, no second POST
    assert len(svc.recovers()) == 1

    older = svc.add_fault("gpu", "gpu-node-1")
    newer = svc.add_fault("gpu", "gpu-node-1", status="pending")
    other = svc.add_fault("gpu", "gpu-node-2")
    sweep = {**by_id, "fault_id": None, "match": {"type": "gpu", "target": "gpu-node-1"}, "exclude": [older]}
    assert run_action(sweep).startswith(f"recovered {newer}")
    assert [svc.faults[i]["status"] for i in (older, newer, other)] == ["injected", "recovered", "injected"]


def test_headers_from_the_environment_are_sent_and_never_shown(svc, monkeypatch):
    svc.require_headers = {"Authorization": "Bearer s3cret-token"}
    monkeypatch.setenv("FI_TOKEN", "s3cret-token")
    fault = _fault(url=svc.url, headers={"Authorization": "Bearer ${FI_TOKEN}"}, **XID)
    ctx = FaultContext()
    ctx.guardian = guardian = Guardian(svc)
    fault.preflight(ctx)
    assert "s3cret" not in fault.describe() and "headers Authorization (values not shown)" in fault.describe()
    fault.inject(ctx)
    assert all(c.headers["Authorization"] == "Bearer s3cret-token" and c.status == 200 for c in svc.calls)
    assert all("s3cret" not in json.dumps(a) for a in [*guardian.held.values(), *guardian.released])
    assert "s3cret" not in json.dumps(fault.event.to_dict())
    assert run_action(next(iter(guardian.held.values()))).startswith("recovered")  # the guardian resolves it

    monkeypatch.delenv("FI_TOKEN")
    with pytest.raises(ConfigError, match=r"^f.headers.Authorization: expected the environment variable FI_TOKEN "
                                          r"to be set \(the value uses \$\{FI_TOKEN\}\)$"):
        _fault(url=svc.url, headers={"Authorization": "Bearer ${FI_TOKEN}"}, **XID).preflight(ctx)
    with pytest.raises(ConfigError, match=r"GET /health answered 401: Not authenticated\) \(check headers\)$"):
        _fault(url=svc.url, **XID).preflight(ctx)


def test_preflight_refuses_an_unreachable_unhealthy_or_foreign_service_in_one_line(svc):
    ctx = FaultContext()
    with FaultService() as gone:
        url = gone.url
    with pytest.raises(ConfigError, match=rf"^f.url: the fault-injection API is unreachable \(GET {url}/health: .*\)$"):
        _fault(url=url, **XID).preflight(ctx)
    svc.health = {"status": "degraded", "service": "fault-injection-api"}
    with pytest.raises(ConfigError, match=rf"^f.url: the fault-injection API at {svc.url} is not healthy "
                                          r"\(GET /health: status 'degraded'\)$"):
        _fault(url=svc.url, **XID).preflight(ctx)
    svc.health = {"status": "healthy", "service": "some-other-api"}
    with pytest.raises(ConfigError, match=rf"^f.url: {svc.url} is not the fault-injection API \(GET /health answered 200"):
        _fault(url=svc.url, **XID).preflight(ctx)
    svc.health = {"status": "healthy", "service": "fault-injection-api"}
    svc.plan("GET", r"^/health$", status=404, body={"detail": "Not Found"})
    with pytest.raises(ConfigError, match=r"is not the fault-injection API \(GET /health answered 404: Not Found\)$"):
        _fault(url=svc.url, **XID).preflight(ctx)
    svc.plan("GET", r"^/api/v1/faults$", status=404, body={"detail": "Not Found"})
    with pytest.raises(ConfigError, match=r"is not the fault-injection API \(GET .*/api/v1/faults\?active_only=true "
                                          r"answered 404: Not Found"):
        _fault(url=svc.url, **XID).preflight(ctx)
    assert svc.injects() == []


def test_the_xid_code_must_be_one_the_service_lists_when_it_lists_them(svc):
    ctx = FaultContext()
    svc.xid_types = [{"code": 79, "name": "GPU Fell Off Bus"}, {"code": 48, "name": "Double Bit ECC Error"}]
    with pytest.raises(ConfigError, match=r"^f.xid.code: expected one of the XID codes the service lists \(48, 79\), got 43$"):
        _fault(url=svc.url, xid={"code": 43, "node_name": "n"}).preflight(ctx)
    _fault(url=svc.url, xid={"code": 48, "node_name": "n"}).preflight(ctx)
    svc.xid_types = None  # an API without that route
    _fault(url=svc.url, xid={"code": 43, "node_name": "n"}).preflight(ctx)


@pytest.mark.parametrize("params, message", [
    ({"url": "ftp://x:8080", **XID}, "f.url: expected an http(s) URL of the fault-injection API, like "
                                     "http://127.0.0.1:8080, got 'ftp://x:8080'"),
    ({"url": "127.0.0.1:8080", **XID}, "f.url: expected an http(s) URL of the fault-injection API, like "
                                       "http://127.0.0.1:8080, got '127.0.0.1:8080'"),
    ({"url": "http://h:99999", **XID}, "f.url: expected an http(s) URL of the fault-injection API, like "
                                       "http://127.0.0.1:8080, got 'http://h:99999' (bad port)"),
    ({**XID}, "f.url: missing (required)"),
    ({"url": "http://h:1"}, "f: expected exactly one of xid, gpu, network, got {'url': 'http://h:1'}"),
    ({"url": "http://h:1", **XID, **GPU}, "f: expected exactly one of xid, gpu, network, got ['xid', 'gpu']"),
    ({"url": "http://h:1", "xid": {"code": 80, "node_name": "n"}},
     "f.xid.code: expected one of 43, 48, 74, 79, 94, 95, 119, 120 (the API's XID routes), got 80"),
    ({"url": "http://h:1", "xid": {"code": 79}}, "f.xid.node_name: missing (required)"),
    ({"url": "http://h:1", "xid": {"code": 79, "target_pod": "vllm-worker-0"}},
     "f.xid.target_pod: unknown field (expected one of code, duration, gpu_id, node_name); the API's field is "
     "node_name (the seed doc shows target_pod)"),
    ({"url": "http://h:1", "xid": {"xid_type": 79, "node_name": "n"}},
     "f.xid.xid_type: unknown field (expected one of code, duration, gpu_id, node_name); give the XID as code "
     "(sent in the route, xid-<code>, and as xid_type)"),
    ({"url": "http://h:1", "xid": {"code": 79, "node_name": "n", "gpu_id": -1}},
     "f.xid.gpu_id: expected an integer >= 0, got -1"),
    ({"url": "http://h:1", "gpu": {"fault_type": "THROTLE", "node_name": "n"}},
     "f.gpu.fault_type: expected one of xid_error, throttle, memory_pressure, overheat, compute_overload, "
     "got 'THROTLE'; did you mean 'throttle'?"),
    ({"url": "http://h:1", "gpu": {"fault_type": "overheat", "node_name": "n", "severity": "critical"}},
     "f.gpu.severity: expected one of low, medium, high, got 'critical'"),
    ({"url": "http://h:1", "gpu": {"fault_type": "overheat", "node_name": "n", "duration": 0}},
     "f.gpu.duration: expected an integer >= 1 (seconds), got 0"),
    ({"url": "http://h:1", "network": {"partition_type": "FRONTEND_WORKER", "duration_seconds": 30}},
     "f.network.duration_seconds: unknown field (expected one of duration, mode, parameters, partition_type, source, "
     "target); the API's field is duration (the seed doc shows duration_seconds)"),
    ({"url": "http://h:1", "network": {"partition_type": "frontend_worker", "source": "a", "target": "b",
                                       "mode": "iptables"}},
     "f.network.mode: expected one of networkpolicy, chaos_mesh, got 'iptables'"),
    ({"url": "http://h:1", "headers": {"Authorization": 12}, **XID},
     "f.headers.Authorization: expected a one-line string (its value may use ${VAR} from the environment)"),
    ({"url": "http://h:1", "headers": {"Bad Name": "x"}, **XID},
     "f.headers: expected HTTP header names (letters, digits, -), got 'Bad Name'"),
    ({"url": "http://h:1", "timeout_s": 0, **XID}, "f.timeout_s: expected a number > 0, got 0"),
    ({"url": "http://h:1", "xids": 79}, "f.xids: unknown field (expected one of gpu, headers, network, timeout_s, "
                                        "url, xid); did you mean 'xid'?"),
])
def test_bad_fields_are_one_line_errors_naming_the_field(params, message):
    with pytest.raises(ConfigError) as e:
        _fault(**params)
    assert str(e.value) == message


def test_upper_case_spellings_of_the_seed_doc_are_sent_in_the_apis_lower_case():
    inj = _fault(url="http://h:1", gpu={"fault_type": "XID_ERROR", "node_name": "n", "severity": "HIGH"}).injection
    assert inj.body == {"node_name": "n", "fault_type": "xid_error", "severity": "high", "parameters": {}}
    inj = _fault(url="http://h:1", network={"partition_type": "WORKER_NATS", "source": "s", "target": "t",
                                            "mode": "NETWORKPOLICY"}).injection
    assert inj.body == {"partition_type": "worker_nats", "source": "s", "target": "t", "mode": "networkpolicy",
                        "parameters": {}}
