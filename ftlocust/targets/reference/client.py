"""A small blocking client for the reference deployment (readiness probes, tests, manual checks).

Not the load generator (that is ftlocust/users.py): plain http.client, no proxies, one
connection per request, and a socket-level `cut()` that the server sees at once.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
import urllib.parse
from dataclasses import dataclass, field


def _conn(base_url: str, timeout_s: float) -> http.client.HTTPConnection:
    parts = urllib.parse.urlsplit(base_url)
    return http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout_s)


def request(base_url: str, method: str, path: str, body=None, timeout_s: float = 10.0,
            raw: bytes | None = None) -> tuple[int | None, dict, bytes]:
    """(status, headers, body) of one request; status None if it could not be sent."""
    conn = _conn(base_url, timeout_s)
    try:
        data = raw if raw is not None else (json.dumps(body) if body is not None else None)
        headers = {"Content-Type": "application/json"} if data is not None else {}
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    except (OSError, http.client.HTTPException) as e:
        return None, {}, str(e).encode()
    finally:
        conn.close()


def post_json(base_url: str, path: str, body, timeout_s: float = 10.0) -> tuple[int | None, dict, object]:
    """(status, headers, decoded JSON body or raw text)."""
    status, headers, data = request(base_url, "POST", path, body, timeout_s)
    try:
        return status, headers, json.loads(data)
    except ValueError:
        return status, headers, data.decode("utf-8", "replace")


def get_json(base_url: str, path: str, timeout_s: float = 5.0) -> tuple[int | None, object]:
    status, _, data = request(base_url, "GET", path, timeout_s=timeout_s)
    try:
        return status, json.loads(data)
    except ValueError:
        return status, data.decode("utf-8", "replace")


def get_text(url: str, timeout_s: float = 5.0) -> str:
    parts = urllib.parse.urlsplit(url)
    status, _, data = request(f"{parts.scheme}://{parts.netloc}", "GET", parts.path or "/", timeout_s=timeout_s)
    if status != 200:
        raise OSError(f"GET {url}: status {status}")
    return data.decode()


def metric_value(metrics_text: str, sample: str, **labels: str) -> float:
    """Sum of the samples named `sample` (e.g. "dynamo_frontend_requests_total") whose labels
    include `labels`; 0.0 if there is none (labelled metrics appear only after first use)."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(metrics_text):
        for s in family.samples:
            if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


@dataclass
class StreamResult:
    status: int
    headers: dict
    texts: list[str] = field(default_factory=list)  # one per content chunk
    finish_reason: str | None = None
    usage: dict | None = None
    error: dict | None = None  # in-band {"error": {...}} object
    done: bool = False  # saw data: [DONE]
    response_id: str | None = None
    body: object = None  # decoded body of a non-200 answer

    @property
    def request_id(self) -> str | None:
        """The bare uuid (the request_id in frontend and worker logs)."""
        if not self.response_id:
            return None
        return self.response_id.split("-", 1)[1]


class Stream:
    """One streaming request; read events one by one, or all; cut() drops it like a client crash."""

    def __init__(self, base_url: str, path: str, body: dict, timeout_s: float = 30.0):
        self.conn = _conn(base_url, timeout_s)
        self.conn.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
        self.resp = self.conn.getresponse()
        self.result = StreamResult(self.resp.status, {k.lower(): v for k, v in self.resp.getheaders()})
        if self.resp.status != 200:
            data = self.resp.read()
            try:
                self.result.body = json.loads(data)
            except ValueError:
                self.result.body = data.decode("utf-8", "replace")
            self.conn.close()

    def next_event(self):
        """The next SSE data payload (dict, or "[DONE]"), or None at the end of the body."""
        while True:
            line = self.resp.readline()
            if not line:
                return None
            line = line.strip()
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]":
                self.result.done = True
                return "[DONE]"
            event = json.loads(payload)
            self._absorb(event)
            return event

    def _absorb(self, event: dict) -> None:
        r = self.result
        if "error" in event:
            r.error = event["error"]
            return
        r.response_id = r.response_id or event.get("id")
        if event.get("usage"):
            r.usage = event["usage"]
        for choice in event.get("choices") or []:
            text = choice.get("text")
            if text is None:
                text = (choice.get("delta") or {}).get("content")
            if text:
                r.texts.append(text)
            if choice.get("finish_reason"):
                r.finish_reason = choice["finish_reason"]

    def read_tokens(self, n: int, timeout_s: float = 30.0) -> None:
        """Read until at least n content chunks arrived (or the stream ended)."""
        deadline = time.monotonic() + timeout_s
        while len(self.result.texts) < n and time.monotonic() < deadline:
            if self.next_event() is None:
                return

    def read_all(self) -> StreamResult:
        if self.result.status == 200:
            while self.next_event() is not None:
                pass
            self.conn.close()
        return self.result

    def cut(self) -> float:
        """Drop the connection at the socket level (the server sees it at once); return the time."""
        sock = self.conn.sock
        t = time.time()
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.resp.close()
        self.conn.close()
        return t


def stream(base_url: str, path: str, body: dict, timeout_s: float = 30.0) -> Stream:
    return Stream(base_url, path, {**body, "stream": True}, timeout_s)
