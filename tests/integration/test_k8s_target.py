"""The `k8s` target kind (ftlocust/targets/k8s.py) through the REAL `kubernetes` client against
the test API server (tests/support/fake_kube.py): options, roles, the server view, the log
files, partitions as NetworkPolicies; then drills through Locust (pod-delete with the server
view, a partition whose NetworkPolicies come and go)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import gevent
import pytest

from ftlocust import targets
from ftlocust.errors import ConfigError
from ftlocust.faults import FaultContext, build_fault
from ftlocust.guardian import read_lines
from ftlocust.k8s import client as kc
from ftlocust.k8s.pods import delete_pod
from ftlocust.scenario import FaultSpec, TargetSpec, TriggerSpec
from tests.integration.test_external_target import deployment  # noqa: F401  (fixture)
from tests.integration.test_k8s_drill import ROOT, cluster  # noqa: F401  (fixture)
from tests.support.fake_kube import FakeKube
from tests.support.procfs import wait

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

NS = "ft"
SERVICES = {"frontend": "app=frontend", "worker": "app=worker"}


class _Models(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        body = b'{"object": "list", "data": [{"id": "m"}]}'
        self.send_response(200 if self.path == "/v1/models" else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def frontend():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Models)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def fake(tmp_path):
    server = FakeKube([NS]).start()
    server.add_pod(NS, "frontend-0", {"app": "frontend"}, logs={"main": "frontend up\n"})
    server.add_pod(NS, "worker-a", {"app": "worker"}, logs={"main": "request received request_id=r-1\n"})
    server.add_pod(NS, "worker-b", {"app": "worker"}, logs={"main": "worker-b up\n"})
    yield server
    server.stop()


def _build(tmp_path, fake, host=None, **options):
    opts = {"namespace": NS, "services": dict(SERVICES), "kubeconfig": fake.kubeconfig(tmp_path), **options}
    return targets.build(TargetSpec(kind="k8s", options=opts), str(tmp_path / "dep"), host)


def _wait(predicate, timeout_s):
    return wait(predicate, timeout_s, step=0.05)


def test_host_is_the_k8s_targets_frontend_and_roles_come_from_services(tmp_path, fake, frontend):
    d = _build(tmp_path, fake, host=frontend + "/")
    assert type(d).__name__ == "K8sDeployment" and not d.started_here and d.base_url == frontend
    assert d.roles() == ["frontend", "worker"] and d.worker_roles() == ["worker"]
    assert d.health_url("frontend") == frontend + "/v1/models" and d.health_url("worker") is None
    assert d.metrics_url("worker") is None and d.registry_endpoint() is None and d.process("worker") is None
    d.start()
    try:
        assert d.expected == {"frontend": 1, "worker": 2} and d.partitioner.ready
        assert d.alive("worker") and d.pid("worker") is None
        with pytest.raises(ConfigError, match="use a pod-signal fault"):
            d.signal("worker", 15)
    finally:
        d.stop()
    explicit = _build(tmp_path, fake, frontend=frontend, frontend_role="worker", worker_roles=["frontend"])
    assert explicit.frontend_role == "worker" and explicit.worker_roles() == ["frontend"]


@pytest.mark.parametrize("options, message", [
    ({"namespace": None}, "target.options.namespace: missing"),
    ({"services": None}, "target.options: give exactly one of services"),
    ({"services": []}, "target.options.services: expected a mapping of role to label selector"),
    ({"services": {"worker": "app=worker"}}, "target.options.services: no 'frontend' role"),
    ({"services": {"frontend": "app in (a,b)", "worker": "app=worker"}}, "expected an equality label selector"),
    ({"worker_roles": ["db"]}, "target.options.worker_roles: expected a list of roles of frontend, worker"),
    ({"log_poll_s": 0}, "target.options.log_poll_s: expected a number > 0"),
    ({"replicas": 2}, "target.options.replicas: unknown for a k8s deployment"),
    ({"frontend_url": "http://x"}, "target.options.frontend_url: unknown for a k8s deployment"),
    ({"dynamo_graph": "g"}, "target.options: give exactly one of services (role -> label selector) and dynamo_graph"),
    ({"frontend_port": 0}, "target.options.frontend_port: expected an integer >= 1 and <= 65535, got 0"),
    ({"metrics_port": {"worker": "x"}}, "target.options.metrics_port.worker: expected"),
    ({"ready_timeout_s": -1}, "target.options.ready_timeout_s: expected a number > 0"),
])
def test_bad_options_are_one_line(tmp_path, fake, frontend, options, message):
    with pytest.raises(ConfigError) as e:
        _build(tmp_path, fake, host=frontend, **options)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_frontend_that_is_no_url_is_one_line_and_a_selector_of_no_pods_fails_start(tmp_path, fake, frontend):
    with pytest.raises(ConfigError, match="^target.options.frontend: expected port-forward or the frontend's "
                                          "http\\(s\\) URL, got 'frontend:8000'$"):
        _build(tmp_path, fake, frontend="frontend:8000")
    assert _build(tmp_path, fake).base_url is None  # port-forward (the default): known once started
    d = _build(tmp_path, fake, frontend=frontend, services={"frontend": "app=frontend", "worker": "app=decode"})
    with pytest.raises(ConfigError) as e:
        d.start()
    assert str(e.value) == "target.options.services.worker: no pods match selector 'app=decode' in namespace ft"
    with pytest.raises(ConfigError, match="target.pids: not for kind k8s"):
        targets.build(TargetSpec(kind="k8s", pids={"worker": "pid:1"}, options={"namespace": NS}), str(tmp_path), frontend)


def test_recovered_waits_for_a_ready_replacement_of_a_deleted_pod(tmp_path, fake, frontend):
    fake.controller(NS, {"app": "worker"}, ready_after_s=1.0)
    d = _build(tmp_path, fake, host=frontend).start()
    try:
        assert d.recovered("worker") is True
        kube = kc.load(fake.kubeconfig(tmp_path))
        delete_pod(kube, namespace=NS, name="worker-a", force=True)
        assert d.recovered("worker") is False  # the replacement is not Ready yet
        assert d.gone["worker"] == {"worker-a"}
        assert _wait(lambda: d.recovered("worker"), 10)
        fake.set_ready(NS, "worker-b", False)
        assert d.recovered("worker") is False
    finally:
        d.stop()
    with pytest.raises(ConfigError, match="no role 'db'"):
        d.recovered("db")


def test_log_files_are_refreshed_from_the_pods_logs_and_keep_a_deleted_pods(tmp_path, fake, frontend):
    d = _build(tmp_path, fake, host=frontend, log_poll_s=0.1).start()
    try:
        worker_log = tmp_path / "dep" / "logs" / "worker.log"
        assert d.log_path("worker") == str(worker_log) and d.log_path("db") is None
        text = worker_log.read_text()
        assert "==> worker-a/main <==\nrequest received request_id=r-1\n" in text and "worker-b up" in text
        fake.pods[(NS, "worker-b")].logs["main"] = "request received request_id=r-2\n"
        gevent.sleep(0.5)  # the greenlet's polls
        assert "request_id=r-2" in worker_log.read_text()
        from ftlocust import evidence

        assert evidence.find_serving_role({"worker": d.log_path("worker")}, "r-2", timeout_s=1) == "worker"
        delete_pod(kc.load(fake.kubeconfig(tmp_path)), namespace=NS, name="worker-a", force=True)
        d.refresh_logs()
        assert "request_id=r-1" not in worker_log.read_text()
        previous = (tmp_path / "dep" / "logs" / "worker.previous.log").read_text()
        assert "==> worker-a/main (gone) <==\nrequest received request_id=r-1" in previous
    finally:
        d.stop()
    assert not d._greenlets
    gets = len(fake.requested("GET", "/log"))
    time.sleep(0.3)
    gevent.sleep(0.3)
    assert len(fake.requested("GET", "/log")) == gets  # stopped


class _Guardian:
    def __init__(self, fake):
        self.fake, self.held = fake, []

    def hold(self, action):
        assert not self.fake.policies, "a NetworkPolicy was created before its deletion was held"
        self.held.append(action)
        return len(self.held)

    def release(self, hold_id):
        pass


@pytest.mark.parametrize("partition, params, pairs", [
    ("frontend_worker", {}, [("worker", "frontend")]),
    ("custom", {"peers": ["frontend"]}, [("worker", "frontend")]),
])
def test_partition_over_networkpolicies_is_held_before_applied(tmp_path, fake, frontend, partition, params, pairs):
    d = _build(tmp_path, fake, host=frontend).start()
    try:
        ctx = FaultContext(deployment=d)
        ctx.guardian = _Guardian(fake)
        spec = FaultSpec(kind="partition", target="worker", trigger=TriggerSpec(after_seconds=1),
                         params={"partition": partition, **params}, name="cut")
        fault = build_fault(spec, where="f")
        fault.preflight(ctx)
        event = fault.inject(ctx)
        assert [(p.a, p.b) for p in fault._planned] == pairs
        assert [a["kind"] for a in ctx.guardian.held] == ["k8s-networkpolicy-delete"] * len(pairs)
        assert len(fake.policies) == 2 and len(event.detail["rules"]) == 2
        assert "NetworkPolicies" in event.detail["cuts"][0]
        assert fault.recover(ctx) == "lifted partition worker|frontend (2 rule(s) deleted)"
        assert not fake.policies
    finally:
        d.stop()


@pytest.mark.parametrize("params, message", [
    ({"mode": "reject"}, "partition.mode: expected drop (a NetworkPolicy cannot reject)"),
    ({"partition": "worker_nats"}, "f.partition: worker_nats, but this deployment has no registry endpoint"),
    ({"partition": "worker_worker"}, "worker_worker needs another worker"),
])
def test_partitions_a_k8s_target_cannot_make_are_refused_in_one_line(tmp_path, fake, frontend, params, message):
    d = _build(tmp_path, fake, host=frontend).start()
    try:
        spec = FaultSpec(kind="partition", target="worker", trigger=TriggerSpec(after_seconds=1), params=params,
                         name="cut")
        with pytest.raises(ConfigError) as e:
            build_fault(spec, where="f").preflight(FaultContext(deployment=d))
        assert message in str(e.value) and "\n" not in str(e.value)
        assert not fake.requested("POST", "networkpolicies")
    finally:
        d.stop()


# -- drills through Locust ------------------------------------------------------------------------


def _k8s_drill(tmp_path, name, kubeconfig, host, faults, checks="- {check: no_failures, phase: all}"):
    scenario = tmp_path / f"{name}.yaml"
    scenario.write_text(f"""
name: {name}
target:
  kind: k8s
  options: {{namespace: ft, services: {{frontend: "app=frontend", worker: "app=worker"}}, kubeconfig: "{kubeconfig}",
             log_poll_s: 0.5}}
load: {{endpoint: completion-stream, requests_per_client: 6}}
faults:
{faults}
checks:
  {checks}
""")
    art = tmp_path / f"run-{name}"
    proc = subprocess.run([sys.executable, "-m", "locust", "-f", str(ROOT / "locustfiles" / "load.py"), "--headless",
                           "--host", host, "--ft-scenario", str(scenario), "--ft-artifacts", str(art)],
                          cwd=ROOT, capture_output=True, text=True, timeout=200)
    return proc, art


def test_pod_delete_drill_on_a_k8s_target_measures_the_server_view(tmp_path, cluster):  # noqa: F811
    fake, kubeconfig, urls, pids, run_dir = cluster
    fake.add_pod("ft", "frontend-0", {"app": "frontend"})
    fake.controller("ft", {"app": "worker"}, ready_after_s=0.5)
    proc, art = _k8s_drill(tmp_path, "k8s-pod-delete", kubeconfig, urls["frontend"], f"""
  - {{name: delete-worker-pod, kind: pod-delete, target: worker, namespace: ft, selector: "app=worker",
     expect: 2, force: true, kubeconfig: "{kubeconfig}", trigger: {{after_requests: 10}}}}""")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((art / "summary.json").read_text())
    (entry,) = summary["per_fault"]
    assert entry["fault"]["status"] == "injected"
    assert [p["name"] for p in entry["fault"]["detail"]["pods"]] == ["worker-a"]
    assert entry["server_recovery_s"] is not None and 0.4 < entry["server_recovery_s"] < 30
    assert (art / "deployment" / "logs" / "worker.log").is_file()


def test_partition_drill_on_a_k8s_target_creates_and_deletes_its_networkpolicies(tmp_path, cluster):  # noqa: F811
    fake, kubeconfig, urls, pids, run_dir = cluster
    fake.add_pod("ft", "frontend-0", {"app": "frontend"})
    proc, art = _k8s_drill(tmp_path, "k8s-partition", kubeconfig, urls["frontend"], """
  - {name: cut-worker, kind: partition, target: worker, partition: frontend_worker, duration_s: 1.5,
     trigger: {after_requests: 5}}""")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((art / "summary.json").read_text())
    (entry,) = summary["per_fault"]
    fault = entry["fault"]
    assert fault["status"] == "injected" and fault["detail"]["partition"] == "frontend_worker"
    created = fake.requested("POST", "/networkpolicies")
    assert len(created) == 2 and {r["body"]["spec"]["podSelector"]["matchLabels"]["app"] for r in created} == \
        {"worker", "frontend"}
    deleted = fake.requested("DELETE", "/networkpolicies/")
    assert sorted(r["path"].rsplit("/", 1)[1] for r in deleted) == sorted(r["body"]["metadata"]["name"]
                                                                           for r in created)
    assert not fake.policies  # none left
    rollback = summary["rollbacks"][0]
    assert rollback["ok"] and rollback["reason"] == "scheduled" and "2 rule(s) deleted" in rollback["action"]
    journal = read_lines(str(art / "guardian.jsonl"))
    assert journal[-1]["event"] == "end" and journal[-1]["reason"] == "closed" and journal[-1]["held"] == 0
    assert not [e for e in journal if e["event"] == "lifted"]


def test_pod_transitions_and_manifests_are_recorded_as_they_happen(tmp_path, fake, frontend):
    fake.controller(NS, {"app": "worker"}, ready_after_s=0.5)
    d = _build(tmp_path, fake, host=frontend).start()
    try:
        delete_pod(kc.load(fake.kubeconfig(tmp_path)), namespace=NS, name="worker-a", force=True)
        transitions = tmp_path / "dep" / "pods" / "transitions.jsonl"

        def lines():
            return [json.loads(line) for line in transitions.read_text().splitlines()] if transitions.exists() else []

        assert _wait(lambda: any(t["pod"] != "worker-a" and t["role"] == "worker" and t["ready"]
                                 and t["pod"] not in ("worker-b",) for t in lines()), 10)
    finally:
        d.stop()
    seen = lines()
    a = [t for t in seen if t["pod"] == "worker-a"]
    assert a[0]["ready"] and not a[0]["deleting"] and a[-1]["seen"] == "DELETED"
    new = [t for t in seen if t["pod"] not in ("worker-a", "worker-b", "frontend-0")]
    assert [t["ready"] for t in new][:1] == [False] and new[-1]["ready"] is True
    assert new[0]["t"] < new[-1]["t"] and all(t["uid"] for t in seen)
    import yaml

    manifest = yaml.safe_load((tmp_path / "dep" / "pods" / "worker" / "worker-a.yaml").read_text())
    assert manifest["metadata"]["uid"] == a[0]["uid"] and manifest["metadata"]["labels"] == {"app": "worker"}
    assert (tmp_path / "dep" / "pods" / "frontend" / "frontend-0.yaml").is_file()


def test_a_dynamo_graph_gives_the_roles_from_its_pods_labels(tmp_path, frontend):
    from ftlocust.k8s.dynamo import COMPONENT, GRAPH, graph_labels

    server = FakeKube([NS]).start()
    try:
        server.add_pod(NS, "g-frontend-x", graph_labels("g", "Frontend", "frontend"))
        server.add_pod(NS, "g-decode-a", graph_labels("g", "VllmDecodeWorker", "worker", "decode"))
        server.add_pod(NS, "g-decode-b", graph_labels("g", "VllmDecodeWorker", "worker", "decode"))
        server.add_pod(NS, "g-prefill-a", graph_labels("g", "VllmPrefillWorker", "worker", "prefill"))
        server.add_pod(NS, "other-frontend", graph_labels("other", "Frontend", "frontend"))
        opts = {"namespace": NS, "dynamo_graph": "g", "kubeconfig": server.kubeconfig(tmp_path)}
        d = targets.build(TargetSpec(kind="k8s", options=opts), str(tmp_path / "dep"), frontend).start()
        try:
            assert d.roles() == ["frontend", "decode_worker", "prefill_worker"]
            assert d.worker_roles() == ["decode_worker", "prefill_worker"] and d.frontend_role == "frontend"
            assert d.selector("decode_worker") == f"{GRAPH}=g,{COMPONENT}=VllmDecodeWorker"
            assert d.expected == {"frontend": 1, "decode_worker": 2, "prefill_worker": 1}
            assert d.metrics_port == {"frontend": 8000, "decode_worker": 9090, "prefill_worker": 9090}
        finally:
            d.stop()
        aggregated = FakeKube([NS]).start()
        try:
            aggregated.add_pod(NS, "a-frontend", graph_labels("a", "Frontend", "frontend"))
            aggregated.add_pod(NS, "a-worker", graph_labels("a", "VllmWorker", "worker"))
            (tmp_path / "a").mkdir()
            opts = {"namespace": NS, "dynamo_graph": "a", "kubeconfig": aggregated.kubeconfig(tmp_path / "a")}
            d = targets.build(TargetSpec(kind="k8s", options=opts), str(tmp_path / "dep-a"), frontend).start()
            d.stop()
            assert d.roles() == ["frontend", "decode_worker"]  # an aggregated worker is the seed's decode worker
            missing = targets.build(TargetSpec(kind="k8s", options={**opts, "dynamo_graph": "nope"}),
                                    str(tmp_path / "dep-b"), frontend)
            with pytest.raises(ConfigError) as e:
                missing.start()
            assert str(e.value) == (f"target.options.dynamo_graph: no pods labelled {GRAPH}=nope (with {COMPONENT}) "
                                    f"in namespace ft: is the DynamoGraphDeployment named 'nope' deployed there?")
        finally:
            aggregated.stop()
    finally:
        server.stop()


def test_start_waits_until_every_pod_is_ready_and_says_who_is_not(tmp_path, fake, frontend):
    fake.set_ready(NS, "worker-b", False)
    d = _build(tmp_path, fake, host=frontend, ready_timeout_s=1)
    with pytest.raises(ConfigError) as e:
        d.start()
    assert str(e.value) == "target.options.ready_timeout_s: not ready after 1 s in namespace ft: worker 1/2 Ready"
    threading.Timer(0.5, fake.set_ready, (NS, "worker-b", True)).start()
    d = _build(tmp_path, fake, host=frontend, ready_timeout_s=10).start()
    try:
        assert 0.4 < d.startup_s < 10
    finally:
        d.stop()


def test_the_api_failing_at_rollback_is_recorded_and_the_guardian_still_deletes_the_policies(tmp_path, cluster):  # noqa: F811,E501
    fake, kubeconfig, urls, pids, run_dir = cluster
    fake.add_pod("ft", "frontend-0", {"app": "frontend"})
    fake.fail("delete", "networkpolicies", status=503, times=2)  # the driver's two tries (scheduled, end of run)
    proc, art = _k8s_drill(tmp_path, "k8s-partition-api-down", kubeconfig, urls["frontend"], """
  - {name: cut-worker, kind: partition, target: worker, partition: frontend_worker, duration_s: 1.0,
     trigger: {after_requests: 5}}""")
    assert proc.returncode == 3, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((art / "summary.json").read_text())
    verdicts = {c["name"]: c["passed"] for c in summary["checks"]}
    assert verdicts["every fault injected"] is True and verdicts["every rollback succeeded"] is False
    assert [(r["reason"], r["ok"]) for r in summary["rollbacks"]] == [("scheduled", False), ("end of run", False)]
    assert all("503 Service Unavailable" in r["error"] and "\n" not in r["error"] for r in summary["rollbacks"])
    # what the driver could not undo, the guardian did once the driver let it go (its journal's
    # last line is written after the deletes)
    journal_path = str(art / "guardian.jsonl")
    assert _wait(lambda: (read_lines(journal_path) or [{}])[-1].get("event") == "end", 60), read_lines(journal_path)
    assert not fake.policies
    journal = read_lines(journal_path)
    lifted = [e for e in journal if e["event"] == "lifted"]
    assert len(lifted) == 1 and lifted[0]["kind"] == "k8s-networkpolicy-delete"
    deletes = fake.requested("DELETE", "/networkpolicies/")
    assert len(deletes) == 4  # two refused (the driver's first delete, twice), two done (the guardian)


def test_pod_signal_server_view_waits_for_the_container_to_restart_and_be_ready(tmp_path, frontend):
    """Against a k8s target a pod-signal names its pods by role; its server view is the
    signalled container restarting (restartCount grows) and the pod Ready again."""
    server = FakeKube([NS]).start()
    victim = subprocess.Popen(["dynamo.worker", "-c", "import time; time.sleep(60)"], executable=sys.executable)
    try:
        server.add_pod(NS, "frontend-0", {"app": "frontend"})
        server.add_pod(NS, "worker-a", {"app": "worker"}, process=victim)
        opts = {"namespace": NS, "services": dict(SERVICES), "kubeconfig": server.kubeconfig(tmp_path)}
        d = targets.build(TargetSpec(kind="k8s", options=opts), str(tmp_path / "dep"), frontend).start()
        try:
            ctx = FaultContext(deployment=d)
            spec = FaultSpec(kind="pod-signal", target="worker", trigger=TriggerSpec(after_seconds=1),
                             params={"signal": "SIGTERM"}, name="term")
            fault = build_fault(spec, where="f")
            fault.preflight(ctx)
            assert fault.pid == 1 and fault.pods_spec.selector == "app=worker" and fault.kube is d.kube
            assert fault.server_recovered(ctx) is False  # nothing happened yet: no restart seen
            fault.inject(ctx)
            assert victim.wait(10) == -15
            assert _wait(lambda: not server.pods[(NS, "worker-a")].ready, 5)
            assert fault.server_recovered(ctx) is False  # restarted, not Ready
            server.set_ready(NS, "worker-a", True)  # the kubelet's new container is up
            assert fault.server_recovered(ctx) is True
        finally:
            d.stop()
    finally:
        if victim.poll() is None:
            victim.kill()
        victim.wait()
        server.stop()


def test_port_forward_forbidden_is_one_line_at_start_not_a_ready_timeout(tmp_path, fake):
    fake.forbid("create", "pods/portforward")
    d = _build(tmp_path, fake, ready_timeout_s=60)  # frontend: port-forward (the default)
    started = time.monotonic()
    with pytest.raises(ConfigError) as e:
        d.start()
    assert str(e.value) == ("target.options.frontend: forbidden: cannot create pods/portforward in namespace ft "
                            "(RBAC: the service account needs 'create' on 'pods/portforward')")
    assert time.monotonic() - started < 30 and d.base_url is not None and not d._watchers


def test_worker_nats_cuts_the_worker_from_the_registry_port_named_by_the_options(tmp_path, fake, frontend):
    fake.add_pod(NS, "nats-0", {"app.kubernetes.io/name": "nats"})
    d = _build(tmp_path, fake, host=frontend,
               registry={"role": "nats", "port": 4222, "selector": "app.kubernetes.io/name=nats"}).start()
    try:
        assert d.roles() == ["frontend", "worker", "nats"] and d.worker_roles() == ["worker"]
        assert d.registry_endpoint() == ("nats", 4222)
        ctx = FaultContext(deployment=d)
        ctx.guardian = _Guardian(fake)
        spec = FaultSpec(kind="partition", target="worker", trigger=TriggerSpec(after_seconds=1),
                         params={"partition": "worker_nats"}, name="cut")
        fault = build_fault(spec, where="f")
        fault.preflight(ctx)
        fault.inject(ctx)
        (policy,) = fake.policies.values()  # on the registry's pods: the worker's are refused on 4222 only
        assert policy["spec"]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "nats"}
        from_others, other_ports = policy["spec"]["ingress"]
        assert {"podSelector": {"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["worker"]}]}} \
            in from_others["from"]
        assert {"protocol": "TCP", "port": 1, "endPort": 4221} in other_ports["ports"]
        assert {"protocol": "TCP", "port": 4223, "endPort": 65535} in other_ports["ports"]
        assert fault.recover(ctx).startswith("lifted partition worker|nats")
        assert not fake.policies
    finally:
        d.stop()
    with pytest.raises(ConfigError, match=r"^target.options.registry.role: 'nats' is not a role .* give "
                                          r"registry.selector"):
        _build(tmp_path, fake, host=frontend, registry={"role": "nats", "port": 4222})


def test_pod_delete_server_view_is_no_recovery_while_the_deleted_pod_is_still_there(tmp_path, fake, frontend):
    """Before the pod is gone (not deleted yet, or kept by a finalizer) nothing has recovered,
    although every pod is Ready; after it, the replacement must be Ready."""
    fake.controller(NS, {"app": "worker"}, ready_after_s=0.5)
    d = _build(tmp_path, fake, host=frontend).start()
    try:
        ctx = FaultContext(deployment=d)
        spec = FaultSpec(kind="pod-delete", target="worker", trigger=TriggerSpec(after_seconds=1),
                         params={"force": True}, name="del")
        fault = build_fault(spec, where="f")
        fault.preflight(ctx)
        assert [p.metadata.name for p in fault.victims] == ["worker-a"] and fault.affected_role() == "worker"
        assert d.recovered("worker") is True and fault.server_recovered(ctx) is False
        fault.inject(ctx)
        assert fault.server_recovered(ctx) is False  # the replacement is not Ready yet
        assert _wait(lambda: fault.server_recovered(ctx), 10)
    finally:
        d.stop()


def test_exits_are_the_containers_ends_the_kubelet_reports_during_the_run(tmp_path, frontend):
    """`exits()` (the summary's `exits`, the `process_exit` check) from the pods' container
    statuses: an exit status as it is, a signal as the runtime's 128+n; a container that had
    ended before the run is history, not a finding."""
    server = FakeKube([NS]).start()
    procs = []
    try:
        server.add_pod(NS, "frontend-0", {"app": "frontend"})
        old = server.add_pod(NS, "worker-old", {"app": "worker"})
        old.restarts, old.exit_code, old.finished = 1, 2, "2020-01-01T00:00:00Z"  # crashed long before
        for name, code in (("worker-a", "import sys, time; time.sleep(3); sys.exit(3)"),
                           ("worker-b", "import time; time.sleep(60)")):
            proc = subprocess.Popen([sys.executable, "-c", code])
            procs.append(proc)
            server.add_pod(NS, name, {"app": "worker"}, process=proc)
        d = _build(tmp_path, server, host=frontend).start()
        try:
            assert d.exits() == []
            procs[1].kill()  # worker-b's process ends by SIGKILL
            assert _wait(lambda: len(d.exits()) == 2, 15), d.exits()
            ends = {e["pod"]: e for e in d.exits()}
            assert ends["worker-a"] == {"role": "worker", "pod": "worker-a", "container": "main", "pid": None,
                                        "exit_code": 3, "signal": None, "reason": "Error"}
            assert (ends["worker-b"]["exit_code"], ends["worker-b"]["signal"]) == (137, "SIGKILL")
        finally:
            d.stop()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
        server.stop()


def test_an_exit_in_the_second_the_run_began_is_the_runs(tmp_path, fake):
    """Kubernetes times are whole seconds: a container that ended 0.7 s after the run began
    reads as the run's own second, and must not be taken for history."""
    import datetime

    from kubernetes.client import (V1ContainerState, V1ContainerStateTerminated, V1ContainerStatus, V1ObjectMeta,
                                   V1Pod, V1PodStatus)

    def pod(uid: str, finished_s: int) -> V1Pod:
        ended = V1ContainerStateTerminated(exit_code=137, reason="Error", finished_at=datetime.datetime.fromtimestamp(
            finished_s, datetime.timezone.utc))
        status = V1ContainerStatus(name="main", image="x", image_id="", ready=False, restart_count=0,
                                   state=V1ContainerState(terminated=ended))
        return V1Pod(metadata=V1ObjectMeta(name=f"p-{uid}", uid=uid), status=V1PodStatus(container_statuses=[status]))

    d = _build(tmp_path, fake)
    d._watching_since = 1_000.7  # what start() sets: its wall clock
    d._note_exits("worker", pod("same-second", 1_000))
    d._note_exits("worker", pod("second-before", 999))
    assert [e["pod"] for e in d.exits()] == ["p-same-second"]
