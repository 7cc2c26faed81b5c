"""The README's pod-kill drill (configs/k8s/decode-worker-pod.yaml) as a new user runs it:

    locust -f locustfiles/migration.py --headless --ft-scenario configs/k8s/decode-worker-pod.yaml \
           --ft-k8s-namespace NS --ft-k8s-graph GRAPH

— here against the test API server (tests/support/fake_kube.py) through the REAL `kubernetes`
client, with pods labelled as Dynamo's operator labels a DynamoGraphDeployment's and backed by a
running reference deployment: the frontend pod's port 8000 is the reference frontend, each
decode-worker pod's port 9090 and log are a reference worker's. The load goes through the
client's port-forward; deleting the pod (force) SIGKILLs that worker and its streams migrate.
The same drill runs on a real cluster (`k8s` marker) when KUBECONFIG, FTLOCUST_K8S_NAMESPACE
and FTLOCUST_K8S_GRAPH name a graph with two decode workers.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from ftlocust.k8s.dynamo import graph_labels
from tests.integration.test_external_target import deployment  # noqa: F401  (fixture)
from tests.support.fake_kube import FakeKube
from tests.support.procfs import gone, wait

ROOT = Path(__file__).resolve().parents[2]
SCENARIO = ROOT / "configs" / "k8s" / "decode-worker-pod.yaml"
pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


@dataclass
class Process:
    pid: int


def _port(url: str) -> int:
    return urllib.parse.urlsplit(url).port


def _run(art: Path, env: dict, *extra: str, scenario: Path = SCENARIO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "locust", "-f", str(ROOT / "locustfiles" / "migration.py"),
                           "--headless", "--ft-scenario", str(scenario), "--ft-artifacts", str(art), *extra],
                          cwd=ROOT, capture_output=True, text=True, timeout=280, env={**os.environ, **env})


def _frontend_requests(url: str) -> float:
    """dynamo_frontend_requests_total as the reference frontend itself counts it (no port-forward)."""
    from ftlocust.evidence import MetricsSnapshot

    return MetricsSnapshot(requests.get(url + "/metrics", timeout=5).text).value("dynamo_frontend_requests_total")


@pytest.fixture
def graph(tmp_path, deployment):  # noqa: F811
    """The test API server with a graph's pods over a reference deployment started here."""
    run_dir, urls = deployment
    fake = FakeKube(namespaces=["ft"]).start()
    pids = {role: int((run_dir / "pids" / f"{role}.pid").read_text()) for role in ("worker-1", "worker-2")}
    logs = run_dir / "logs"
    fake.add_pod("ft", "g-frontend-0", graph_labels("g", "Frontend", "frontend"),
                 ports={8000: _port(urls["frontend"])}, logs={"main": logs / "frontend.log"})
    for pod, role in (("g-vllmdecodeworker-a", "worker-1"), ("g-vllmdecodeworker-b", "worker-2")):
        fake.add_pod("ft", pod, graph_labels("g", "VllmDecodeWorker", "worker", "decode"),
                     process=Process(pids[role]), ports={9090: _port(urls[role])}, logs={"main": logs / f"{role}.log"},
                     grace_s=1)
    fake.controller("ft", graph_labels("g", "VllmDecodeWorker", "worker", "decode"), ready_after_s=1.0)
    try:
        yield fake, fake.kubeconfig(tmp_path), urls, pids
    finally:
        fake.stop()


def test_the_readme_pod_kill_drill_deletes_the_serving_workers_pod_and_its_streams_migrate(tmp_path, graph):
    fake, kubeconfig, urls, pids = graph
    served_before = _frontend_requests(urls["frontend"])
    art = tmp_path / "run"
    proc = _run(art, {"KUBECONFIG": kubeconfig}, "--ft-k8s-namespace", "ft", "--ft-k8s-graph", "g",
                "--ft-requests-per-client", "12")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    summary = json.loads((art / "summary.json").read_text())
    assert all(c["passed"] for c in summary["checks"])
    (entry,) = summary["per_fault"]
    fault = entry["fault"]
    assert fault["status"] == "injected" and fault["detail"]["role"] == "decode_worker"
    (pod,) = fault["detail"]["pods"]
    # the pod deleted is the one whose worker served the probe: that process is gone, the other serves on
    killed = "worker-1" if pod["name"].endswith("-a") else "worker-2"
    survivor = "worker-2" if killed == "worker-1" else "worker-1"
    records = [json.loads(line) for line in (art / "requests.jsonl").read_text().splitlines()]
    (probe,) = [r for r in records if r["client_id"].endswith("/probe")]
    assert probe["outcome"] == "ok" and probe["request_id"]
    assert ("ft", pod["name"]) not in fake.pods  # gone from the API
    assert wait(lambda: gone(pids[killed]), 10) and not gone(pids[survivor])
    gone_pods = (art / "deployment" / "logs" / "decode_worker.previous.log").read_text()
    deleted_log = gone_pods.split(f"==> {pod['name']}/main (gone) <==\n")[1].split("==> ")[0]
    assert f"request received request_id={probe['request_id'].removeprefix('cmpl-')}" in deleted_log
    # the server view: the replacement pod Ready again
    assert entry["server_recovery_s"] is not None and 0.5 < entry["server_recovery_s"] < 60
    # the load went through the port-forward, and the frontend itself saw every request
    assert fake.requested("GET", "/portforward")
    assert _frontend_requests(urls["frontend"]) - served_before >= len(records) > 100
    # evidence: pod manifests, transitions, each pod's /metrics
    pods_dir = art / "deployment" / "pods"
    assert (pods_dir / "decode_worker" / f"{pod['name']}.yaml").is_file()
    transitions = [json.loads(line) for line in (pods_dir / "transitions.jsonl").read_text().splitlines()]
    assert any(t["pod"] == pod["name"] and t["seen"] == "DELETED" for t in transitions)
    before = (art / "services" / "decode_worker" / "decode_worker.metrics.before.txt").read_text()
    assert "# ftlocust pod g-vllmdecodeworker-a" in before and "# ftlocust pod g-vllmdecodeworker-b" in before
    frontend_after = (art / "services" / "frontend" / "frontend.metrics.after.txt").read_text()
    assert "# ftlocust pod g-frontend-0" in frontend_after and "dynamo_frontend_requests_total" in frontend_after


def test_the_drill_says_in_one_line_what_is_missing(tmp_path, graph):
    fake, kubeconfig, urls, pids = graph
    proc = _run(tmp_path / "a", {"KUBECONFIG": kubeconfig}, "--ft-k8s-graph", "g")
    assert proc.returncode == 2 and "target.options.namespace: missing (required for a k8s target; or " \
                                   "--ft-k8s-namespace)" in proc.stderr
    proc = _run(tmp_path / "b", {"KUBECONFIG": kubeconfig}, "--ft-k8s-namespace", "ft", "--ft-k8s-graph", "nope")
    assert proc.returncode == 2 and "target.options.dynamo_graph: no pods labelled " \
                                   "nvidia.com/dynamo-graph-deployment-name=nope" in proc.stderr
    assert not fake.requested("DELETE")


@pytest.mark.parametrize("deployment", [["--engine-core", "VLLM::EngineCore"]], indirect=True)
def test_the_engine_core_drill_kills_the_process_inside_the_serving_workers_pod(tmp_path, graph):
    fake, kubeconfig, urls, pids = graph
    art = tmp_path / "run"
    proc = _run(art, {"KUBECONFIG": kubeconfig}, "--ft-k8s-namespace", "ft", "--ft-k8s-graph", "g",
                "--ft-requests-per-client", "30", scenario=ROOT / "configs" / "k8s" / "engine-core.yaml")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    summary = json.loads((art / "summary.json").read_text())
    assert all(c["passed"] for c in summary["checks"])
    (entry,) = summary["per_fault"]
    detail = entry["fault"]["detail"]
    assert detail["process"] == "VLLM::EngineCore" and detail["signal"] == "SIGKILL" and detail["pid"] != 1
    killed = "worker-1" if detail["pod"].endswith("-a") else "worker-2"
    assert (detail["pod"], killed) in (("g-vllmdecodeworker-a", "worker-1"), ("g-vllmdecodeworker-b", "worker-2"))
    assert fake.signals == [(detail["pid"], signal.SIGKILL)]  # exactly one kill, of that pid
    # the worker saw its engine die and exited (the pod's process), the other one serves on
    assert wait(lambda: gone(pids[killed]), 10)
    assert not gone(pids["worker-2" if killed == "worker-1" else "worker-1"])
    # its container died (restartCount 1, not Ready) and nothing brought it back here: the server
    # view claims no recovery
    transitions = [json.loads(line) for line in
                   (art / "deployment" / "pods" / "transitions.jsonl").read_text().splitlines()]
    assert [(t["ready"], t["restarts"]) for t in transitions if t["pod"] == detail["pod"]][-1] == (False, 1)
    assert entry["server_recovery_s"] is None


def test_the_frontend_pod_drill_moves_the_port_forward_to_the_replacement(tmp_path, graph):
    fake, kubeconfig, urls, pids = graph
    # the replacement frontend pod is served by the same (surviving) reference frontend
    fake.controller("ft", graph_labels("g", "Frontend", "frontend"), ready_after_s=1.0, keep=("ports", "logs"))
    art = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "locust", "-f", str(ROOT / "locustfiles" / "load.py"), "--headless",
                           "-u", "4", "-r", "4", "--ft-scenario", str(ROOT / "configs" / "k8s" / "frontend-pod.yaml"),
                           "--ft-artifacts", str(art), "--ft-k8s-namespace", "ft", "--ft-k8s-graph", "g",
                           "--ft-fault-after-seconds", "4", "--ft-recovery-window", "6", "--ft-output-tokens", "40"],
                          cwd=ROOT, capture_output=True, text=True, timeout=200,
                          env={**os.environ, "KUBECONFIG": kubeconfig})
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    summary = json.loads((art / "summary.json").read_text())
    (entry,) = summary["per_fault"]
    assert [p["name"] for p in entry["fault"]["detail"]["pods"]] == ["g-frontend-0"]
    (delete,) = fake.requested("DELETE", "/pods/g-frontend-0")
    assert delete["body"]["gracePeriodSeconds"] == 0
    # streams through the deleted pod were cut, and new connections waited for a Ready replacement
    records = [json.loads(line) for line in (art / "requests.jsonl").read_text().splitlines()]
    t_f = entry["fault"]["injected_at"]
    hit = [r for r in records if r["end_wall"] > t_f and r["outcome"] != "ok" and r["start_wall"] < t_f + 3]
    assert hit, "the deletion cut nothing"
    assert entry["server_recovery_s"] is not None and 0.9 < entry["server_recovery_s"] < 30
    replacement = [p for (ns, p) in fake.pods if p.startswith("g-frontend-") and p != "g-frontend-0"]
    assert len(replacement) == 1
    assert fake.requested("GET", f"/pods/{replacement[0]}/portforward")  # the load moved there
    assert any(r["outcome"] == "ok" and r["start_wall"] > t_f + entry["server_recovery_s"] for r in records)


@pytest.mark.k8s
@pytest.mark.skipif(not (os.environ.get("KUBECONFIG") and os.environ.get("FTLOCUST_K8S_NAMESPACE")
                         and os.environ.get("FTLOCUST_K8S_GRAPH")),
                    reason="needs KUBECONFIG, FTLOCUST_K8S_NAMESPACE and FTLOCUST_K8S_GRAPH (a DynamoGraphDeployment "
                           "with two decode workers whose pods may be deleted)")
def test_the_readme_pod_kill_drill_on_a_real_cluster(tmp_path):
    art = tmp_path / "run"
    proc = _run(art, {})  # namespace and graph from the environment, as the flags' env_var
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    summary = json.loads((art / "summary.json").read_text())
    (entry,) = summary["per_fault"]
    assert entry["fault"]["status"] == "injected" and entry["fault"]["detail"]["role"] == "decode_worker"
    assert (art / "deployment" / "pods" / "transitions.jsonl").is_file()
