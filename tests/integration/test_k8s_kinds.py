"""The Kubernetes kinds (`pod-delete`, `pod-signal`) and `ftlocust.k8s`, driven through the REAL
`kubernetes` client against the API server built for the tests (tests/support/fake_kube.py),
with pods backed by real local processes; one `k8s`-marked test runs against a real cluster."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from ftlocust.errors import ConfigError
from ftlocust.faults import FaultContext, build_fault
from ftlocust.k8s import client as kc
from ftlocust.k8s.client import KubeError
from ftlocust.k8s.exec import kill_command, run_in_pod, signal_in_pod
from ftlocust.k8s.networkpolicy import NetworkPolicyPartitioner
from ftlocust.k8s.pods import pod_logs, wait_for_replacement
from ftlocust.scenario import FaultSpec, TriggerSpec
from tests.support.fake_kube import FakeKube
from tests.support.process_tree import tree  # noqa: F401 (fixture)
from tests.support.procfs import start_time

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

NS = "ft"
SLEEP = "import time; time.sleep(60)"


@pytest.fixture
def fake():
    server = FakeKube([NS]).start()
    yield server
    server.stop()


@pytest.fixture
def procs():
    """start(argv0=None) -> Popen of a sleeping python; each is SIGKILLed by its pid at the end."""
    started = []

    def start(argv0: str | None = None, code: str = SLEEP):
        p = subprocess.Popen([argv0 or sys.executable, "-c", code], executable=sys.executable)
        started.append(p)
        return p

    yield start
    for p in started:
        if p.poll() is None:
            p.kill()
        p.wait(10)


@pytest.fixture
def kubeconfig(fake, tmp_path):
    return fake.kubeconfig(tmp_path)


def _fault(kind, kubeconfig, target="decode_worker", **params):
    params.setdefault("namespace", NS)
    params.setdefault("selector", "app=decode")
    params["kubeconfig"] = kubeconfig
    spec = FaultSpec(kind=kind, target=target, trigger=TriggerSpec(after_seconds=1), params=params, name="k")
    return build_fault(spec, where="f")


def _one_line(e: BaseException) -> str:
    text = str(e)
    assert "\n" not in text
    return text


# -- selection (the one shared helper) and its errors --------------------------------------------


def test_selector_matching_no_pod_is_one_line_at_preflight(fake, kubeconfig):
    fake.add_pod(NS, "frontend-0", {"app": "frontend"})
    f = _fault("pod-delete", kubeconfig)
    with pytest.raises(ConfigError) as e:
        f.preflight(FaultContext())
    assert _one_line(e.value) == "f.selector: no pods match selector 'app=decode' in namespace ft"


def test_selector_matching_more_pods_than_expected_names_them(fake, kubeconfig):
    for i in range(3):
        fake.add_pod(NS, f"decode-{i}", {"app": "decode"})
    with pytest.raises(ConfigError) as e:
        _fault("pod-delete", kubeconfig, expect=2).preflight(FaultContext())
    assert _one_line(e.value) == ("f.selector: expected 2 pods matching selector 'app=decode' in namespace ft, "
                                  "found 3 (decode-0, decode-1, decode-2)")


def test_terminating_pods_are_left_out(fake, kubeconfig):
    fake.add_pod(NS, "decode-0", {"app": "decode"})
    fake.add_pod(NS, "decode-1", {"app": "decode"}).deletion = "2025-01-01T00:00:00Z"
    f = _fault("pod-delete", kubeconfig)
    f.preflight(FaultContext())
    assert [p.metadata.name for p in f.victims] == ["decode-0"]


def test_missing_namespace_is_said(fake, kubeconfig):
    with pytest.raises(ConfigError) as e:
        _fault("pod-delete", kubeconfig, namespace="gone").preflight(FaultContext())
    assert _one_line(e.value) == "f.selector: namespace 'gone' not found (selector 'app=decode')"
    # listing pods in a namespace that does not exist is an empty list (as the API does), not a 404
    assert any(r["path"] == "/api/v1/namespaces/gone" for r in fake.requests)


def test_rbac_forbidden_names_verb_and_resource(fake, kubeconfig):
    fake.add_pod(NS, "decode-0", {"app": "decode"})
    fake.forbid("list", "pods")
    with pytest.raises(ConfigError) as e:
        _fault("pod-delete", kubeconfig).preflight(FaultContext())
    assert _one_line(e.value) == ("f.namespace: forbidden: cannot list pods in namespace ft (RBAC: the service "
                                  "account needs 'list' on 'pods')")


def test_rbac_forbidden_exec_names_pods_exec(fake, kubeconfig, procs):
    fake.add_pod(NS, "decode-0", {"app": "decode"}, process=procs())
    fake.forbid("create", "pods/exec")
    with pytest.raises(ConfigError) as e:
        _fault("pod-signal", kubeconfig).preflight(FaultContext())
    assert _one_line(e.value) == ("f.process: forbidden: cannot create pods/exec in namespace ft (RBAC: the "
                                  "service account needs 'create' on 'pods/exec')")


def test_no_kubeconfig_is_one_line(tmp_path, monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(ConfigError) as e:
        kc.load(str(tmp_path / "nope"), where="f.kubeconfig")
    assert _one_line(e.value).startswith("f.kubeconfig: expected a kubeconfig file, got ")


def test_kind_fields_are_checked(tmp_path):
    cfg = str(tmp_path / "k")
    cases = [
        ({"namespace": None}, "f.namespace: expected a non-empty string, got None"),
        ({"selector": "decode"}, "f.selector: expected a label selector"),
        ({"pick": "last"}, "f.pick: expected one of first, random, got 'last'"),
        ({"count": 2}, "f.count: expected an integer >= 1 and <= 1, got 2"),
        ({"force": True, "grace_period_s": 5}, "f.grace_period_s: not with force"),
        ({"nmespace": "x"}, "f.nmespace: unknown field"),
    ]
    for params, start in cases:
        with pytest.raises(ConfigError) as e:
            _fault("pod-delete", cfg, **params)
        assert _one_line(e.value).startswith(start), (params, str(e.value))
    with pytest.raises(ConfigError, match=r"^f.signal: SIGSTOP is not offered"):
        _fault("pod-signal", cfg, signal="SIGSTOP")
    with pytest.raises(ConfigError, match=r"^f.duration_s: only for a fault that lasts"):
        build_fault(FaultSpec(kind="pod-delete", target="w", trigger=TriggerSpec(after_seconds=1), duration_s=3,
                              params={"namespace": NS, "selector": "a=b"}), where="f")


# -- pod-delete ---------------------------------------------------------------------------------


def test_pod_delete_force_kills_exactly_that_pod_by_uid(fake, kubeconfig, procs):
    victim, bystander, other = procs(), procs(), procs()
    pod = fake.add_pod(NS, "decode-0", {"app": "decode"}, process=victim, node="gpu-7")
    fake.add_pod(NS, "frontend-0", {"app": "frontend"}, process=bystander)
    fake.add_pod("other", "decode-0", {"app": "decode"}, process=other)  # another namespace, same name
    f = _fault("pod-delete", kubeconfig, force=True)
    f.preflight(FaultContext())
    assert f.describe() == (f"delete pod decode-0 (uid {pod.uid}, node gpu-7) of decode_worker (selector "
                            f"'app=decode', namespace ft), force (grace period 0), {f.spec.trigger.describe()}")
    event = f.inject(FaultContext())
    assert victim.wait(5) == -signal.SIGKILL
    assert bystander.poll() is None and other.poll() is None
    deletes = fake.requested("DELETE")
    assert [r["path"] for r in deletes] == ["/api/v1/namespaces/ft/pods/decode-0"]
    assert deletes[0]["body"] == {"gracePeriodSeconds": 0, "preconditions": {"uid": pod.uid}}
    assert event.detail["pods"] == [{"name": "decode-0", "uid": pod.uid, "node": "gpu-7"}]
    assert event.detail["force"] is True and event.injected_at is not None
    assert all("/namespaces/ft/" in r["path"] or r["path"] == "/api/v1/namespaces/ft" for r in fake.requests)
    assert f.recover(FaultContext()) is None and not f.reversible


def test_pod_delete_with_grace_sends_sigterm_and_the_controller_replaces_it(fake, kubeconfig, procs):
    victim = procs()
    fake.add_pod(NS, "decode-0", {"app": "decode"}, process=victim)
    replacements = []
    fake.controller(NS, {"app": "decode"}, ready_after_s=0.3,
                    factory=lambda: replacements.append(procs()) or replacements[-1])
    f = _fault("pod-delete", kubeconfig, grace_period_s=3)
    f.preflight(FaultContext())
    f.inject(FaultContext())
    assert fake.requested("DELETE")[0]["body"]["gracePeriodSeconds"] == 3
    assert victim.wait(5) == -signal.SIGTERM
    kube = kc.load(kubeconfig)
    new = wait_for_replacement(kube, namespace=NS, selector="app=decode", gone={"decode-0"}, timeout_s=10)
    assert new is not None and new.metadata.name != "decode-0"
    assert new.metadata.name == fake.controllers[0].made[0].name and replacements[0].poll() is None
    assert any(r["query"].get("watch") == "true" for r in fake.requested("GET", "/pods"))


def test_pod_delete_grace_ends_in_sigkill_for_a_process_ignoring_sigterm(fake, kubeconfig, procs):
    stubborn = procs(code="import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)")
    time.sleep(0.3)  # its handler in place
    fake.add_pod(NS, "decode-0", {"app": "decode"}, process=stubborn)
    f = _fault("pod-delete", kubeconfig, grace_period_s=1)
    f.preflight(FaultContext())
    f.inject(FaultContext())
    assert stubborn.wait(10) == -signal.SIGKILL
    assert [s for _, s in fake.signals] == [signal.SIGTERM, signal.SIGKILL]


def test_pod_delete_never_deletes_a_replacement_of_the_same_name(fake, kubeconfig, procs):
    first, second = procs(), procs()
    fake.add_pod(NS, "decode-0", {"app": "decode"}, process=first)
    f = _fault("pod-delete", kubeconfig, force=True)
    f.preflight(FaultContext())
    del fake.pods[(NS, "decode-0")]  # a StatefulSet's replacement: same name, new uid
    fake.add_pod(NS, "decode-0", {"app": "decode"}, process=second)
    with pytest.raises(KubeError) as e:
        f.inject(FaultContext())
    assert "is no longer uid" in _one_line(e.value) and "not deleted" in str(e.value)
    assert second.poll() is None and (NS, "decode-0") in fake.pods


def test_api_failing_at_injection_raises_one_line(fake, kubeconfig, procs):
    victim = procs()
    fake.add_pod(NS, "decode-0", {"app": "decode"}, process=victim)
    f = _fault("pod-delete", kubeconfig)
    f.preflight(FaultContext())
    fake.fail("delete", "pods", status=500, message="etcdserver: request timed out")
    with pytest.raises(KubeError) as e:
        f.inject(FaultContext())
    assert _one_line(e.value) == ("f: delete pods in namespace ft failed: 500 Internal Server Error: etcdserver: "
                                  "request timed out")
    assert victim.poll() is None


def test_rbac_forbidden_at_injection_names_delete(fake, kubeconfig):
    fake.add_pod(NS, "decode-0", {"app": "decode"})
    f = _fault("pod-delete", kubeconfig)
    f.preflight(FaultContext())
    fake.forbid("delete", "pods")
    with pytest.raises(KubeError, match=r"^f: forbidden: cannot delete pods in namespace ft \(RBAC: the service "
                                        r"account needs 'delete' on 'pods'\)$"):
        f.inject(FaultContext())


def test_pod_delete_pick_and_count(fake, kubeconfig):
    for i in range(3):
        fake.add_pod(NS, f"decode-{i}", {"app": "decode"})
    f = _fault("pod-delete", kubeconfig, expect=3, count=2)
    f.preflight(FaultContext())
    event = f.inject(FaultContext())
    assert [p["name"] for p in event.detail["pods"]] == ["decode-0", "decode-1"]
    f = _fault("pod-delete", kubeconfig, expect=1, pick="random")
    f.preflight(FaultContext())
    assert [p.metadata.name for p in f.victims] == ["decode-2"]


# -- pod-signal ---------------------------------------------------------------------------------


def test_pod_signal_finds_the_process_by_name_and_kills_it(fake, kubeconfig, tree):
    t = tree("VLLM::EngineCore", "dynamo.other")
    engine, other = t.children
    pod = fake.add_pod(NS, "decode-0", {"app": "decode"}, process=t.proc, containers=["main", "sidecar"])
    f = _fault("pod-signal", kubeconfig, process="VLLM::EngineCore", container="main")
    f.preflight(FaultContext())
    assert f.pid == engine
    assert f.describe().startswith(f"SIGKILL → pid {engine} VLLM::EngineCore in container main of pod decode-0 "
                                   f"(uid {pod.uid}, decode_worker, namespace ft), via exec")
    event = f.inject(FaultContext())
    assert fake.signals == [(engine, signal.SIGKILL)]
    execs = [r["query"]["command"] for r in fake.requested("GET", "/exec")]
    start = f.found.start_time
    assert start == start_time(engine) and execs[-1] == kill_command(engine, "SIGKILL", start)
    assert event.detail == {"pod": "decode-0", "uid": pod.uid, "node": "node-1", "namespace": NS,
                            "container": "main", "process": "VLLM::EngineCore", "pid": engine, "start_time": start,
                            "signal": "SIGKILL", "requested_signal": "SIGKILL", "note": None}
    from tests.support.procfs import gone, wait
    assert wait(lambda: gone(engine), 5)
    assert t.proc.poll() is None and not gone(other)


def test_pod_signal_needs_exactly_one_process_and_lists_what_it_saw(fake, kubeconfig, tree):
    t = tree("worker", "worker")
    fake.add_pod(NS, "decode-0", {"app": "decode"}, process=t.proc)
    with pytest.raises(ConfigError) as e:
        _fault("pod-signal", kubeconfig, process="worker").preflight(FaultContext())
    a, b = t.children
    assert _one_line(e.value).startswith(f"f.process: expected 1 process named 'worker' in container main of pod "
                                         f"decode-0 (namespace ft), found 2 (pid {a}, pid {b}); processes: pid 1 ")
    with pytest.raises(ConfigError, match=r"^f.process: expected 1 process named 'VLLM::EngineCore' .* found 0; "
                                          r"processes: pid 1 .*pid \d+ worker"):
        _fault("pod-signal", kubeconfig, process="VLLM::EngineCore").preflight(FaultContext())
    with pytest.raises(ConfigError, match=r"^f.container: expected a container of pod decode-0 \(main\), got 'gpu'$"):
        _fault("pod-signal", kubeconfig, process="worker", container="gpu").preflight(FaultContext())


def test_pod_signal_sigkill_to_pid_1_becomes_sigint_and_says_so(fake, kubeconfig, procs):
    main = procs()
    time.sleep(0.3)  # python's SIGINT handler in place
    fake.add_pod(NS, "frontend-0", {"app": "frontend"}, process=main)
    f = _fault("pod-signal", kubeconfig, target="frontend", selector="app=frontend")
    f.preflight(FaultContext())
    assert f.pid == 1 and f.signal_name == "SIGINT"
    assert "SIGINT → pid 1 " in f.describe()
    assert "(SIGINT instead of SIGKILL: the process is the container's pid 1" in f.describe()
    event = f.inject(FaultContext())
    assert event.detail["signal"] == "SIGINT" and event.detail["requested_signal"] == "SIGKILL"
    assert event.detail["note"].startswith("SIGINT instead of SIGKILL")
    assert fake.requested("GET", "/exec")[-1]["query"]["command"] == kill_command(1, "INT", start_time(main.pid))
    assert main.wait(5) in (-signal.SIGINT, 1, 130)  # KeyboardInterrupt


def test_sigkill_to_pid_1_from_inside_does_nothing(fake, kubeconfig, procs):
    """Why the kind sends SIGINT: the fake, like the kernel, ignores SIGKILL to a namespace's init."""
    main = procs()
    fake.add_pod(NS, "frontend-0", {"app": "frontend"}, process=main)
    kube = kc.load(kubeconfig)
    signal_in_pod(kube, namespace=NS, pod="frontend-0", container=None, pid=1, signal_name="SIGKILL")
    time.sleep(0.2)
    assert main.poll() is None


def test_pod_signal_kill_failing_at_injection_raises(fake, kubeconfig, tree):
    t = tree("VLLM::EngineCore")
    fake.add_pod(NS, "decode-0", {"app": "decode"}, process=t.proc)
    f = _fault("pod-signal", kubeconfig, process="VLLM::EngineCore")
    f.preflight(FaultContext())
    os.kill(t.children[0], signal.SIGKILL)  # gone before the trigger
    from tests.support.procfs import gone, wait
    assert wait(lambda: gone(t.children[0]), 5)
    with pytest.raises(KubeError) as e:
        f.inject(FaultContext())
    assert _one_line(e.value) == (f"f: pid {t.children[0]} in pod decode-0 is gone or is another process now "
                                  f"(start time {f.found.start_time} no longer matches): not signalled")
    assert fake.signals == []
    fake.fail("create", "pods/exec", status=500)
    with pytest.raises(KubeError, match=r"^f: create pods/exec in namespace ft failed: 500 Internal Server Error"):
        f.inject(FaultContext())


def test_a_process_with_another_start_time_is_not_signalled(fake, kubeconfig, tree):
    """A pid reused by another process between the listing and the fault: nothing is sent."""
    t = tree("VLLM::EngineCore")
    fake.add_pod(NS, "decode-0", {"app": "decode"}, process=t.proc)
    kube = kc.load(kubeconfig)
    engine = t.children[0]
    with pytest.raises(KubeError, match=f"pid {engine} in pod decode-0 is gone or is another process now"):
        signal_in_pod(kube, namespace=NS, pod="decode-0", container=None, pid=engine, signal_name="SIGKILL",
                      start_time=start_time(engine) + 1)
    assert fake.signals == [] and t.proc.poll() is None
    signal_in_pod(kube, namespace=NS, pod="decode-0", container=None, pid=engine, signal_name="SIGKILL",
                  start_time=start_time(engine))
    assert fake.signals == [(engine, signal.SIGKILL)]


def test_exec_of_anything_else_is_exit_127_and_logs(fake, kubeconfig, procs):
    fake.add_pod(NS, "decode-0", {"app": "decode"}, process=procs(), logs={"main": "line 1\nline 2\n"},
                 previous_logs={"main": "before the crash\n"})
    kube = kc.load(kubeconfig)
    code, out, err = run_in_pod(kube, namespace=NS, pod="decode-0", container="main", argv=["sh", "-c", "id"])
    assert code == 127 and out == ""
    assert pod_logs(kube, namespace=NS, name="decode-0") == "line 1\nline 2\n"
    assert pod_logs(kube, namespace=NS, name="decode-0", container="main", previous=True) == "before the crash\n"
    log_queries = [r["query"] for r in fake.requested("GET", "/log")]
    assert log_queries[-1] == {"container": "main", "previous": "true"}
    with pytest.raises(KubeError, match=r"^pod logs: not found: get pods/log in namespace ft \(pods \"nope\" not found\)$"):
        pod_logs(kube, namespace=NS, name="nope")


# -- NetworkPolicy partitions --------------------------------------------------------------------


def _not_in(key, value):
    return {"podSelector": {"matchExpressions": [{"key": key, "operator": "NotIn", "values": [value]}]}}


OTHER_NAMESPACES = {"namespaceSelector": {"matchExpressions": [
    {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": [NS]}]}}


def test_partition_creates_exactly_these_policies_and_deletes_them(fake, kubeconfig):
    kube = kc.load(kubeconfig)
    lab = NetworkPolicyPartitioner(kube, NS, {"frontend": "app=frontend",
                                              "worker": "app=decode,dynamo/component=worker"}, run_id="r1")
    p = lab.plan("worker", "frontend")
    assert not fake.requests, "plan creates nothing"
    assert p.names == ["ftlocust-r1-1-worker-frontend", "ftlocust-r1-2-frontend-worker"]
    assert p.guardian_action() == {"kind": "k8s-networkpolicy-delete", "module": "ftlocust.k8s.networkpolicy",
                                   "namespace": NS, "names": p.names, "kubeconfig": kube.kubeconfig,
                                   "context": None, "label": "partition worker <-> frontend"}
    lab.apply(p)
    bodies = [r["body"] for r in fake.requested("POST")]
    labels = {"managed-by": "ftlocust", "ftlocust-run": "r1"}
    assert bodies == [
        {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
         "metadata": {"name": "ftlocust-r1-1-worker-frontend", "namespace": NS, "labels": labels},
         "spec": {"podSelector": {"matchLabels": {"app": "decode", "dynamo/component": "worker"}},
                  "policyTypes": ["Ingress"], "ingress": [{"from": [_not_in("app", "frontend"), OTHER_NAMESPACES]}]}},
        {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
         "metadata": {"name": "ftlocust-r1-2-frontend-worker", "namespace": NS, "labels": labels},
         "spec": {"podSelector": {"matchLabels": {"app": "frontend"}}, "policyTypes": ["Ingress"],
                  "ingress": [{"from": [_not_in("app", "decode"), _not_in("dynamo/component", "worker"),
                                        OTHER_NAMESPACES]}]}},
    ]
    assert lab.policies() == sorted(p.names)
    assert "established connections stay up" in p.describe()
    assert lab.unblock(p) == p.names and lab.policies() == [] and fake.policies == {}
    assert lab.unblock(p) == []  # already gone is fine


def test_partition_to_one_port_and_no_reject(fake, kubeconfig):
    kube = kc.load(kubeconfig)
    lab = NetworkPolicyPartitioner(kube, NS, {"worker": "app=decode", "nats": "app=nats"}, run_id="r2")
    p = lab.block("worker", "nats", port=4222)
    (body,) = [r["body"] for r in fake.requested("POST")]
    assert body["spec"] == {"podSelector": {"matchLabels": {"app": "nats"}}, "policyTypes": ["Ingress"],
                            "ingress": [{"from": [_not_in("app", "decode"), OTHER_NAMESPACES]},
                                        {"ports": [{"protocol": "TCP", "port": 1, "endPort": 4221},
                                                   {"protocol": "TCP", "port": 4223, "endPort": 65535},
                                                   {"protocol": "UDP", "port": 1, "endPort": 65535}]}]}
    lab.unblock(p)
    with pytest.raises(ConfigError, match=r"^partition.mode: expected drop \(a NetworkPolicy cannot reject\), got 'reject'$"):
        lab.plan("worker", "nats", mode="reject")
    with pytest.raises(ConfigError, match=r"^partition.selectors.x: expected an equality label selector"):
        NetworkPolicyPartitioner(kube, NS, {"x": "app in (a,b)"})


def test_partition_apply_failing_halfway_deletes_what_it_made(fake, kubeconfig):
    kube = kc.load(kubeconfig)
    lab = NetworkPolicyPartitioner(kube, NS, {"a": "app=a", "b": "app=b"}, run_id="r3")
    p = lab.plan("a", "b")
    original = fake._create_policy
    calls = []

    def second_fails(ns, body):
        calls.append(body)
        if len(calls) == 2:
            return fake._status(500, "InternalError", "boom")
        return original(ns, body)

    fake._create_policy = second_fails
    with pytest.raises(KubeError, match=r"^partition: create networkpolicies in namespace ft failed: 500"):
        lab.apply(p)
    assert fake.policies == {}


def test_guardian_deletes_the_policies_from_another_process(fake, kubeconfig):
    kube = kc.load(kubeconfig)
    lab = NetworkPolicyPartitioner(kube, NS, {"frontend": "app=frontend", "worker": "app=decode"}, run_id="g1")
    p = lab.block("worker", "frontend")
    foreign = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
               "metadata": {"name": "ftlocust-g1-1-worker-frontend-x", "labels": {"app": "mine"}},
               "spec": {"podSelector": {}}}
    kube.networking.create_namespaced_network_policy(NS, foreign)
    action = p.guardian_action()
    action["names"] = [*action["names"], foreign["metadata"]["name"]]  # not ftlocust's: left alone
    code = ("import json, sys; from ftlocust import guardian; "
            "print(json.dumps(guardian.run_action(json.loads(sys.argv[1]))))")
    run = lambda: subprocess.run([sys.executable, "-c", code, json.dumps(action)], capture_output=True, text=True,
                                 timeout=60, cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    out = run()
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == (f"lifted partition worker <-> frontend: deleted NetworkPolicies "
                                      f"{', '.join(p.names)} in namespace ft")
    assert list(fake.policies) == [(NS, "ftlocust-g1-1-worker-frontend-x")]
    again = run()
    assert again.returncode == 0 and json.loads(again.stdout) is None  # idempotent


# -- a real cluster -----------------------------------------------------------------------------


@pytest.mark.k8s
@pytest.mark.skipif(not os.environ.get("KUBECONFIG") or not os.environ.get("FTLOCUST_K8S_NAMESPACE"),
                    reason="needs KUBECONFIG and FTLOCUST_K8S_NAMESPACE (a namespace whose pods "
                           "FTLOCUST_K8S_SELECTOR, default app=ftlocust-victim, may be deleted)")
def test_pod_delete_against_a_real_cluster():
    ns = os.environ["FTLOCUST_K8S_NAMESPACE"]
    selector = os.environ.get("FTLOCUST_K8S_SELECTOR", "app=ftlocust-victim")
    f = _fault("pod-delete", os.environ["KUBECONFIG"], namespace=ns, selector=selector, grace_period_s=1)
    f.preflight(FaultContext())
    gone = {p.metadata.name for p in f.victims}
    f.inject(FaultContext())
    new = wait_for_replacement(f.kube, namespace=ns, selector=selector, gone=gone, timeout_s=120)
    assert new is not None


GEVENT_DRIVER = r"""
from gevent import monkey; monkey.patch_all()
import gevent, json, subprocess, sys, time
from tests.support.fake_kube import FakeKube
from ftlocust.faults import FaultContext, build_fault
from ftlocust.scenario import FaultSpec, TriggerSpec
fake = FakeKube(["ft"]).start()
p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
fake.add_pod("ft", "d-0", {"app": "d"}, process=p)
f = build_fault(FaultSpec(kind="pod-signal", target="w", trigger=TriggerSpec(after_seconds=1),
                          params={"namespace": "ft", "selector": "app=d", "kubeconfig": fake.kubeconfig(sys.argv[1]),
                                  "signal": "SIGTERM"}), where="f")
gaps = []
def tick():
    last = time.monotonic()
    while True:
        gevent.sleep(0.01); now = time.monotonic(); gaps.append(now - last); last = now
gevent.spawn(tick)
f.preflight(FaultContext())  # the client's slow first call happens here
gevent.sleep(0.05); gaps.clear()
f.inject(FaultContext())
gevent.sleep(0.05)
print(json.dumps({"max_gap_s": max(gaps), "rc": p.wait(5)}))
"""


def test_under_gevent_the_exec_goes_over_the_patched_socket_without_blocking_the_hub(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run([sys.executable, "-c", GEVENT_DRIVER, str(tmp_path)], capture_output=True, text=True,
                         timeout=90, cwd=root)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["rc"] == -signal.SIGTERM
    assert result["max_gap_s"] < 0.5, result  # injection is one exec, cooperative under gevent
