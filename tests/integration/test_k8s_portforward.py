"""`ftlocust.k8s.portforward` through the REAL `kubernetes` client's port-forward WebSocket,
against the test API server (tests/support/fake_kube.py), whose pods' ports are served by real
HTTP servers on 127.0.0.1 started here."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from ftlocust.k8s import client as kc
from ftlocust.k8s.client import KubeError
from ftlocust.k8s.portforward import RELIST_S, PodForward, http_get
from tests.integration.test_k8s_kinds import NS, fake  # noqa: F401  (fixture)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

PORT = 8000


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # chunked answers need it

    def do_GET(self):  # noqa: N802
        try:
            self._answer()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the forward was closed under it (test_close_...)

    def _answer(self):
        self.server.seen.append(self.path)
        if self.path == "/slow":
            time.sleep(3)
        if self.path == "/stream":
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Connection", "close")
            self.end_headers()
            for i in range(5):
                data = f"{self.server.name}:chunk-{i};".encode()
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()
                time.sleep(0.05)
            self.wfile.write(b"0\r\n\r\n")
            self.close_connection = True
            return
        body = (f"# backend {self.server.name}\nrequests_total {len(self.server.seen)}\n" if self.path == "/metrics"
                else f"{self.server.name} {self.path}").encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture
def backends():
    """start(name) -> a running ThreadingHTTPServer answering with its name (`.seen`: paths)."""
    started = []

    def start(name: str) -> ThreadingHTTPServer:
        srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        srv.daemon_threads = True
        srv.name, srv.seen = name, []
        threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.shutdown()
        srv.server_close()


@pytest.fixture
def kube(fake, tmp_path):
    return kc.load(fake.kubeconfig(tmp_path))


@pytest.fixture
def forwards():
    made = []

    def make(kube, **kw) -> PodForward:
        kw.setdefault("namespace", NS)
        kw.setdefault("port", PORT)
        f = PodForward(kube, **kw).start()
        made.append(f)
        return f

    yield make
    for f in made:
        f.close()


def _pod(fake, backends, name: str, labels=None, **kw):
    srv = backends(name)
    fake.add_pod(NS, name, labels or {"app": "frontend"}, ports={PORT: srv.server_address[1]}, **kw)
    return srv


def _get(url: str, path: str = "/v1/models") -> requests.Response:
    return requests.get(url + path, timeout=10, headers={"Connection": "close"})


# -- PodForward -----------------------------------------------------------------------------------


def test_a_get_through_the_listener_reaches_the_pods_backend_and_pods_take_turns(fake, backends, kube, forwards):
    a, b = _pod(fake, backends, "frontend-a"), _pod(fake, backends, "frontend-b")
    f = forwards(kube, selector="app=frontend")
    assert f.url == f"http://127.0.0.1:{f.local_port}" and f.local_port > 0
    assert f.describe() == (f"127.0.0.1:{f.local_port} -> port {PORT} of Ready pods 'app=frontend' in namespace "
                            f"{NS} (port-forward)")
    answered = []
    for i in range(6):
        r = _get(f.url, f"/v1/models/{i}")
        assert r.status_code == 200
        who, path = r.text.split()
        assert path == f"/v1/models/{i}"
        assert f.last_pod == who  # the pod it went to is the backend that answered
        answered.append(who)
    assert answered == ["frontend-a", "frontend-b"] * 3
    assert a.seen == ["/v1/models/0", "/v1/models/2", "/v1/models/4"]
    assert b.seen == ["/v1/models/1", "/v1/models/3", "/v1/models/5"]
    assert f.connections == 6
    assert len(fake.requested("GET", "/portforward")) == 6  # each connection is one forward
    assert {r["query"]["ports"] for r in fake.requested("GET", "/portforward")} == {str(PORT)}


def test_one_named_pod(fake, backends, kube, forwards):
    _pod(fake, backends, "frontend-a")
    b = _pod(fake, backends, "frontend-b")
    f = forwards(kube, pod="frontend-b")
    assert [_get(f.url).text.split()[0] for _ in range(3)] == ["frontend-b"] * 3
    assert len(b.seen) == 3 and f.last_pod == "frontend-b"
    assert "of pod frontend-b in namespace ft" in f.describe()


def test_a_pod_not_ready_is_skipped_and_none_ready_closes_the_connection_until_one_is(fake, backends, kube,
                                                                                      forwards):
    a, b = _pod(fake, backends, "frontend-a"), _pod(fake, backends, "frontend-b", ready=False)
    _pod(fake, backends, "other-0", labels={"app": "other"})
    f = forwards(kube, selector="app=frontend")
    assert [_get(f.url).text.split()[0] for _ in range(4)] == ["frontend-a"] * 4
    assert b.seen == []

    fake.set_ready(NS, "frontend-a", False)
    time.sleep(RELIST_S + 0.2)  # the listing is cached for RELIST_S
    before = f.connections
    for _ in range(2):
        with pytest.raises(requests.ConnectionError):
            _get(f.url)
    assert f.connections == before and len(a.seen) == 4

    fake.set_ready(NS, "frontend-b", True)
    time.sleep(RELIST_S + 0.2)
    r = _get(f.url)
    assert r.status_code == 200 and r.text.split()[0] == "frontend-b" and f.last_pod == "frontend-b"
    assert len(b.seen) == 1


def test_an_opening_failure_closes_that_connection_and_the_listener_goes_on(fake, backends, kube, forwards, caplog):
    a = _pod(fake, backends, "frontend-a")
    f = forwards(kube, selector="app=frontend")
    fake.forbid("create", "pods/portforward", times=1)
    with caplog.at_level("WARNING", logger="ftlocust.k8s"):
        with pytest.raises(requests.ConnectionError):
            _get(f.url)
    assert any("forbidden: cannot create pods/portforward in namespace ft" in r.getMessage() for r in caplog.records)
    assert a.seen == []
    assert _get(f.url).text.split()[0] == "frontend-a"


def test_a_streamed_response_arrives_whole(fake, backends, kube, forwards):
    _pod(fake, backends, "frontend-a")
    f = forwards(kube, selector="app=frontend")
    r = requests.get(f.url + "/stream", timeout=10, stream=True)
    assert r.headers.get("Transfer-Encoding") == "chunked"
    arrived = []
    for piece in r.iter_content(chunk_size=None):
        arrived.append((time.monotonic(), piece))
    text = b"".join(p for _, p in arrived).decode()
    assert text == "".join(f"frontend-a:chunk-{i};" for i in range(5))
    assert len(arrived) >= 2  # it came as it was sent, not at the end
    assert arrived[-1][0] - arrived[0][0] > 0.1


def test_close_ends_open_connections_and_the_listener(fake, backends, kube):
    a = _pod(fake, backends, "frontend-a")
    f = PodForward(kube, namespace=NS, port=PORT, selector="app=frontend").start()
    held = socket.create_connection(("127.0.0.1", f.local_port), timeout=10)
    held.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")  # the backend answers after 3 s
    deadline = time.monotonic() + 10
    while a.seen != ["/slow"] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert a.seen == ["/slow"] and f.connections == 1
    t0 = time.monotonic()
    f.close()
    f.close()  # idempotent
    held.settimeout(5)
    try:
        assert held.recv(1024) == b""
    except ConnectionResetError:
        pass
    assert time.monotonic() - t0 < 2.5  # closed by close(), not by the answer
    held.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", f.local_port), timeout=2).close()


# -- http_get -------------------------------------------------------------------------------------


def test_http_get_reads_a_pods_metrics(fake, backends, kube):
    a = _pod(fake, backends, "frontend-a")
    status, text = http_get(kube, namespace=NS, pod="frontend-a", port=PORT)
    assert status == 200
    assert text.startswith("# backend frontend-a\n") and "requests_total 1" in text
    assert a.seen == ["/metrics"]
    assert http_get(kube, namespace=NS, pod="frontend-a", port=PORT, path="/health") == (200, "frontend-a /health")


def test_http_get_forbidden_is_a_one_line_kube_error_naming_the_resource(fake, backends, kube):
    a = _pod(fake, backends, "frontend-a")
    fake.forbid("create", "pods/portforward")
    with pytest.raises(KubeError) as e:
        http_get(kube, namespace=NS, pod="frontend-a", port=PORT, where="metrics")
    assert "\n" not in str(e.value)
    assert str(e.value).startswith("metrics: forbidden: cannot create pods/portforward in namespace ft")
    assert a.seen == []


def test_http_get_of_a_pod_gone_or_unknown_is_a_one_line_kube_error(fake, backends, kube):
    _pod(fake, backends, "frontend-a")
    kube.core.delete_namespaced_pod("frontend-a", NS, grace_period_seconds=0)
    for name in ("frontend-a", "nope"):
        with pytest.raises(KubeError) as e:
            http_get(kube, namespace=NS, pod=name, port=PORT)
        assert "\n" not in str(e.value)
        assert str(e.value).startswith("port-forward: not found: create pods/portforward in namespace ft")
        assert f'pods "{name}" not found' in str(e.value)


def test_http_get_of_a_port_not_served_is_the_servers_error(fake, backends, kube):
    _pod(fake, backends, "frontend-a")
    with pytest.raises(KubeError) as e:
        http_get(kube, namespace=NS, pod="frontend-a", port=9000, timeout_s=5)
    assert "\n" not in str(e.value)
    assert "error forwarding port 9000 to pod frontend-a" in str(e.value)


def test_http_get_is_bounded_when_the_api_server_never_answers_the_handshake(fake, tmp_path):
    mute = socket.create_server(("127.0.0.1", 0))  # accepts (the kernel does), never answers
    path = fake.kubeconfig(tmp_path)
    with open(path) as f:
        config = json.load(f)
    config["clusters"][0]["cluster"]["server"] = f"http://127.0.0.1:{mute.getsockname()[1]}"
    with open(path, "w") as f:
        json.dump(config, f)
    t0 = time.monotonic()
    try:
        with pytest.raises(KubeError) as e:
            http_get(kc.load(path), namespace=NS, pod="frontend-a", port=PORT, timeout_s=1.0)
        assert time.monotonic() - t0 < 3
        assert "did not open within 1 s" in str(e.value) and "pods/portforward" in str(e.value)
    finally:
        mute.close()


# -- gevent ---------------------------------------------------------------------------------------


GEVENT_DRIVER = r"""
from gevent import monkey; monkey.patch_all()
import json, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import requests
from tests.support.fake_kube import FakeKube
from ftlocust.k8s import client as kc
from ftlocust.k8s.portforward import PodForward, http_get
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"gevent-backend " + self.path.encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
threading.Thread(target=srv.serve_forever, daemon=True).start()
fake = FakeKube(["ft"]).start()
fake.add_pod("ft", "f-0", {"app": "f"}, ports={8000: srv.server_address[1]})
kube = kc.load(fake.kubeconfig(sys.argv[1]))
f = PodForward(kube, namespace="ft", port=8000, selector="app=f").start()
texts = [requests.get(f.url + "/x%d" % i, timeout=10).text for i in range(3)]
metrics = http_get(kube, namespace="ft", pod="f-0", port=8000)
f.close()
print(json.dumps({"texts": texts, "metrics": list(metrics), "connections": f.connections}))
"""


def test_under_gevent_a_get_goes_through_the_forward(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run([sys.executable, "-c", GEVENT_DRIVER, str(tmp_path)], capture_output=True, text=True,
                         timeout=90, cwd=root)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"texts": ["gevent-backend /x0", "gevent-backend /x1", "gevent-backend /x2"],
                      "metrics": [200, "gevent-backend /metrics"], "connections": 3}
