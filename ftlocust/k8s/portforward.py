"""Reaching a pod's port through the API server's port-forward WebSocket (no kubectl, no local
process): `PodForward` is a local listener forwarding each connection to a Ready pod, `http_get`
one GET (e.g. /metrics) of one pod.

Why through the API: the driver often runs outside the cluster, where pod IPs are unreachable;
the API server is the one address it has. Each forward is one WebSocket on a client of its own
(`Kube.stream_api`). The client's `PortForward` runs a proxy thread per forward between a socket
pair and the WebSocket; under gevent's monkey-patching that thread is a greenlet.
"""

from __future__ import annotations

import http.client
import io
import logging
import select
import socket
import threading
import time
from typing import Any

from ftlocust.k8s.client import Kube, KubeError, api_error
from ftlocust.k8s.selection import is_live, is_ready

log = logging.getLogger("ftlocust.k8s")

OPEN_TIMEOUT_S = 15.0  # the client does not bound the WebSocket handshake (it ignores _request_timeout)
RELIST_S = 1.0
_CHUNK = 64 * 1024


def _one_line(text: Any) -> str:
    return " ".join(str(text).split())


def _open(kube: Kube, namespace: str, pod: str, port: int, timeout_s: float, where: str) -> Any:
    """The client's PortForward to `port` of `pod`, opened within `timeout_s`. KubeError.

    The handshake runs on a helper thread because nothing in the client bounds it; a forward
    that opens after we gave up is closed by that thread."""
    from kubernetes.stream import portforward

    box: dict = {}
    done = threading.Event()
    lock = threading.Lock()

    def opener():
        pf = None
        try:
            api = kube.stream_api()
            # _request_timeout: passed on, but the client's portforward_call does not use it
            pf = portforward(api.connect_get_namespaced_pod_portforward, pod, namespace, ports=str(port),
                             _request_timeout=timeout_s)
        except Exception as e:  # noqa: BLE001 (reported to the waiting caller)
            box["error"] = e
        with lock:
            if box.get("abandoned") and pf is not None:
                _release(pf, port)
            else:
                box["pf"] = pf
            done.set()

    threading.Thread(target=opener, name=f"port-forward open {pod}:{port}", daemon=True).start()
    done.wait(timeout_s)
    with lock:
        if not done.is_set():
            box["abandoned"] = True
            raise KubeError(f"{where}: create pods/portforward in namespace {namespace} failed: port-forward to "
                            f"port {port} of pod {pod} did not open within {timeout_s:g} s")
    if box.get("pf") is None:
        raise api_error(box.get("error") or RuntimeError("no port-forward"), "create", "pods/portforward",
                        namespace, where) from None
    return box["pf"]


def _forward_error(pf: Any, port: int) -> str | None:
    try:
        err = pf.error(port)
    except Exception:  # noqa: BLE001
        return None
    return _one_line(err) if err else None


def _end(sock: Any) -> None:
    """shutdown before close: close alone does not wake a thread blocked in recv on it."""
    for step in (lambda: sock.shutdown(socket.SHUT_RDWR), sock.close):
        try:
            step()
        except OSError:
            pass


def _proxy_done(pf: Any, timeout_s: float) -> bool:
    """Whether the client's proxy thread let go of `pf` within timeout_s: it has closed its half
    of every port's socket pair (`local_ports[port].python`) and the WebSocket is no longer
    connected (with data still to send it keeps the WebSocket until that is sent)."""
    deadline = time.monotonic() + timeout_s
    while any(p.python.fileno() != -1 for p in pf.local_ports.values()) or pf.websocket.connected:
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


def _release(pf: Any, port: int) -> None:
    """Close the forward and its WebSocket. The proxy closes the WebSocket only when it closes
    it first; after the server's close frame or a dropped connection it leaves the socket open
    (to the garbage collector), so it is shut here once the proxy is done."""
    try:
        _end(pf.socket(port))
        pf.close()
    except Exception:  # noqa: BLE001
        pass
    if not _proxy_done(pf, 5.0):  # > the 3 s the client's close handshake may take
        return  # stuck: closing its socket under it would only add a traceback
    try:
        pf.websocket.shutdown()
    except Exception:  # noqa: BLE001
        pass


def _pump(src: Any, dst: Any) -> None:
    """Copy src to dst until src ends or dst fails."""
    while True:
        try:
            data = src.recv(_CHUNK)
            if not data:
                return
            dst.sendall(data)
        except OSError:
            return


class PodForward:
    """A local TCP listener on 127.0.0.1 whose every accepted connection is forwarded, over the
    API's port-forward WebSocket, to `port` of one live, Ready pod matching `selector` in
    `namespace` (round-robin over those pods, re-listed at most once a second) — or of the one
    pod `pod`. No Ready pod: the connection is closed at once (the client sees the frontend
    unreachable, which is the truth)."""

    def __init__(self, kube: Kube, *, namespace: str, port: int, selector: str | None = None,
                 pod: str | None = None, local_port: int = 0, where: str = "port-forward"):
        if (selector is None) == (pod is None):
            raise ValueError(f"{where}: give exactly one of selector and pod")
        self.kube, self.namespace, self.port = kube, namespace, int(port)
        self.selector, self.pod, self.where = selector, pod, where
        self.local_port = int(local_port)
        self.connections = 0
        self.last_pod: str | None = None
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._closed = False
        self._lock = threading.Lock()
        self._open: set = set()  # (local socket, PortForward | None) of live connections
        self._pods: list[str] = []
        self._listed_at = -1e9
        self._next = 0
        self._warned_empty = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.local_port}"

    def describe(self) -> str:
        to = f"Ready pods '{self.selector}'" if self.selector is not None else f"pod {self.pod}"
        return f"127.0.0.1:{self.local_port} -> port {self.port} of {to} in namespace {self.namespace} ({self.where})"

    def start(self) -> "PodForward":
        if self._listener is not None:
            return self
        lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lsock.bind(("127.0.0.1", self.local_port))
        lsock.listen(128)
        lsock.settimeout(0.5)  # accept wakes up to see close() (closing alone may not wake it)
        self._listener = lsock
        self.local_port = lsock.getsockname()[1]
        self._thread = threading.Thread(target=self._accept_loop, name=f"port-forward :{self.local_port}",
                                        daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            live = list(self._open)
            self._open.clear()
        if self._listener is not None:
            try:
                self._listener.close()
            except OSError:
                pass
        for conn, pf in live:  # their threads see both ends close, and release the forwards
            _end(conn)
            if pf is not None:
                _end(pf.socket(self.port))
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(2.0)

    def __enter__(self) -> "PodForward":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- accepting ------------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                if self._closed:
                    return
                time.sleep(0.05)  # e.g. EMFILE: do not spin
                continue
            conn.settimeout(None)
            with self._lock:
                if self._closed:
                    _end(conn)
                    return
                self._open.add((conn, None))
            threading.Thread(target=self._serve, args=(conn,), name="port-forward conn", daemon=True).start()

    def _choose(self) -> str | None:
        if self.pod is not None:
            return self.pod
        with self._lock:
            if time.monotonic() - self._listed_at >= RELIST_S:
                self._listed_at = time.monotonic()
                try:
                    listed = self.kube.core.list_namespaced_pod(self.namespace, label_selector=self.selector,
                                                                _request_timeout=10).items
                    self._pods = sorted(p.metadata.name for p in listed if is_live(p) and is_ready(p))
                except Exception as e:  # noqa: BLE001 (one line, and the listener goes on)
                    self._pods = []
                    log.warning("%s", api_error(e, "list", "pods", self.namespace, self.where))
                if self._pods:
                    self._warned_empty = False
                elif not self._warned_empty:
                    self._warned_empty = True
                    log.warning("%s: no Ready pod matches selector '%s' in namespace %s: connections to %s are "
                                "closed", self.where, self.selector, self.namespace, self.url)
            if not self._pods:
                return None
            name = self._pods[self._next % len(self._pods)]
            self._next += 1
            return name

    def _serve(self, conn: socket.socket) -> None:
        pf = None
        try:
            name = self._choose()
            if name is None or self._closed:
                return
            try:
                pf = _open(self.kube, self.namespace, name, self.port, OPEN_TIMEOUT_S, self.where)
            except KubeError as e:
                log.warning("%s", e)
                return
            with self._lock:
                if self._closed:
                    return
                self._open.discard((conn, None))
                self._open.add((conn, pf))
                self.connections += 1
                self.last_pod = name
            self._relay(conn, pf, name)
        finally:
            with self._lock:
                self._open.discard((conn, None))
                self._open.discard((conn, pf))
            _end(conn)
            if pf is not None:
                _release(pf, self.port)

    def _relay(self, conn: socket.socket, pf: Any, name: str) -> None:
        """Both directions until either ends, then both ends are closed."""
        remote = pf.socket(self.port)
        remote.setblocking(True)
        upward = threading.Thread(target=lambda: (_pump(conn, remote), _end(remote)), name="port-forward up",
                                  daemon=True)
        upward.start()
        _pump(remote, conn)
        _end(conn)
        upward.join(5.0)
        err = _forward_error(pf, self.port)
        if err:
            log.warning("%s: port-forward to port %d of pod %s in namespace %s: %s", self.where, self.port, name,
                        self.namespace, err[:300])


class _Raw:
    """What http.client.HTTPResponse needs of a socket, over bytes already read."""

    def __init__(self, data: bytes):
        self._data = data

    def makefile(self, *_: Any, **__: Any) -> io.BytesIO:
        return io.BytesIO(self._data)


def http_get(kube: Kube, *, namespace: str, pod: str, port: int, path: str = "/metrics",
             timeout_s: float = 5.0, where: str = "port-forward") -> tuple[int, str]:
    """One HTTP/1.1 GET (Connection: close) of `path` on `port` of `pod`, over a port-forward;
    (status code, body text). KubeError (one line, via client.api_error with verb "create" and
    resource "pods/portforward") when the forward cannot be opened; KubeError when no valid
    HTTP answer comes within timeout_s."""
    deadline = time.monotonic() + timeout_s
    pf = _open(kube, namespace, pod, port, timeout_s, where)
    what = f"GET {path} on port {port} of pod {pod} in namespace {namespace}"
    data = b""
    failed = None
    try:
        sock = pf.socket(port)
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost:{port}\r\nAccept: */*\r\nConnection: close\r\n"
                     f"User-Agent: ftlocust\r\n\r\n".encode())
        while time.monotonic() < deadline and len(data) < 64 * 1024 * 1024:
            left = deadline - time.monotonic()
            if not select.select([sock], [], [], max(0.0, left))[0]:
                break
            chunk = sock.recv(_CHUNK)
            if not chunk:
                break
            data += chunk
    except OSError as e:  # e.g. a broken pipe: the server refused the port before we wrote
        failed = e
    finally:
        _release(pf, port)
    err = _forward_error(pf, port)
    if failed is not None:
        raise KubeError(f"{where}: {what} failed: " + (err[:300] if err else
                        f"{type(failed).__name__}: {_one_line(failed)}"[:300])) from None
    resp = http.client.HTTPResponse(_Raw(data), method="GET")  # type: ignore[arg-type]
    try:
        resp.begin()
        body = resp.read()
    except (http.client.HTTPException, ValueError, OSError) as e:
        if err:
            raise KubeError(f"{where}: {what} failed: {err[:300]}") from None
        if not data:
            raise KubeError(f"{where}: {what}: no answer within {timeout_s:g} s") from None
        raise KubeError(f"{where}: {what}: no valid HTTP answer within {timeout_s:g} s "
                        f"({type(e).__name__}; {len(data)} bytes)") from None
    charset = resp.headers.get_content_charset() or "utf-8"
    return resp.status, body.decode(charset, errors="replace")
