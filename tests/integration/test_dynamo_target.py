"""Real NVIDIA Dynamo (frontend + mocker workers) on loopback: bring-up, API shapes, migration
on worker SIGKILL, the in-band error without migration, SIGTERM drains, client cancellation.

Needs the Dynamo venv (`python -m ftlocust.dynamo_env`); skipped, with that reason, without it.
Expectations are Dynamo 1.6.1's measured behaviour (shared/reference/dynamo-local.md).
"""

from __future__ import annotations

import http.client
import json
import re
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ftlocust import evidence
from ftlocust.dynamo_env import env_python
from tests.support.dynamo import ENV_PATH, dynamo_marks

pytestmark = dynamo_marks(timeout_s=180)

# Speedup 2 streams 100-350 tokens/s on 2 cores (contention decides): 500 tokens leave over a
# second to act mid-stream (a kill lands milliseconds after the chunk we wait for).
SPEEDUP = 2.0
LONG_TOKENS = 500
MIGRATION = "dynamo_frontend_model_migration_total"


# ----- a small SSE client (stdlib, so nothing between us and the socket) ---------------------

@dataclass
class Stream:
    status: int
    conn: http.client.HTTPConnection
    sock: socket.socket
    response: http.client.HTTPResponse
    events: list = field(default_factory=list)  # parsed JSON payloads, in order
    done: bool = False  # saw data: [DONE]

    def read_event(self):
        """Next `data:` payload (dict, or "[DONE]"), None at the end of the body."""
        while True:
            line = self.response.readline()
            if not line:
                return None
            line = line.strip()
            if not line.startswith(b"data:"):
                continue
            data = line[len(b"data:"):].strip()
            if data == b"[DONE]":
                self.done = True
                return "[DONE]"
            event = json.loads(data)
            self.events.append(event)
            return event

    def read_until(self, content_chunks: int) -> None:
        for _ in range(100_000):
            if len(self.contents()) >= content_chunks:
                return
            if self.read_event() is None:
                raise AssertionError(f"stream ended after {len(self.contents())} content chunks")

    def read_to_end(self) -> None:
        for _ in range(100_000):
            if self.read_event() is None:
                return

    @property
    def request_id(self) -> str:
        return self.events[0]["id"]

    def contents(self) -> list[str]:
        out = []
        for e in self.events:
            for choice in e.get("choices") or []:
                text = choice.get("text") if "text" in choice else (choice.get("delta") or {}).get("content")
                if text:
                    out.append(text)
        return out

    def finish_reasons(self) -> list[str]:
        return [c["finish_reason"] for e in self.events for c in e.get("choices") or [] if c.get("finish_reason")]

    def errors(self) -> list[dict]:
        return [e["error"] for e in self.events if "error" in e]

    def usage(self) -> dict | None:
        usages = [e["usage"] for e in self.events if e.get("usage")]
        return usages[-1] if usages else None

    def cancel(self) -> None:
        """Socket-level cancel: shutdown makes the server see the close (close alone may not)."""
        self.sock.shutdown(socket.SHUT_RDWR)
        self.conn.close()


def port_of(base_url: str) -> int:
    return int(base_url.rsplit(":", 1)[1])


def open_stream(base_url: str, path: str, body: dict) -> Stream:
    conn = http.client.HTTPConnection("127.0.0.1", port_of(base_url), timeout=60)
    conn.request("POST", path, json.dumps(dict(body, stream=True)), {"content-type": "application/json"})
    sock = conn.sock  # http.client drops it from conn when the response says "close"
    response = conn.getresponse()
    return Stream(response.status, conn, sock, response)


def post(base_url: str, path: str, body: dict) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port_of(base_url), timeout=60)
    try:
        conn.request("POST", path, json.dumps(body), {"content-type": "application/json"})
        response = conn.getresponse()
        raw = response.read()
        return response.status, (json.loads(raw) if raw else {})
    finally:
        conn.close()


def get_json(url: str) -> tuple[int, dict]:
    host_port, _, path = url.removeprefix("http://").partition("/")
    host, port = host_port.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", "/" + path)
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        conn.close()


def long_completion(model: str, max_tokens: int = LONG_TOKENS) -> dict:
    return {"model": model, "prompt": "hello dynamo", "max_tokens": max_tokens, "ignore_eos": True,
            "stream_options": {"include_usage": True}}


def wait_for(predicate, timeout_s: float = 15.0, interval_s: float = 0.1):
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval_s)


def log_text(deployment, role: str) -> str:
    return Path(deployment.log_path(role)).read_text(errors="replace")


# ----- fixtures --------------------------------------------------------------------------------

@pytest.fixture
def start_dynamo(tmp_path):
    """Start a DynamoDeployment under tmp_path; every one started is stopped at teardown."""
    from ftlocust.targets.dynamo import DynamoDeployment

    started = []

    def start(**options):
        options.setdefault("speedup_ratio", SPEEDUP)
        deployment = DynamoDeployment(tmp_path / f"dynamo-{len(started)}", **options)
        started.append(deployment)
        deployment.start()
        return deployment

    yield start
    for deployment in started:
        deployment.stop(grace_s=5)
        for role in deployment.group.roles():
            assert not deployment.group.alive(role), f"{role} left running"


@pytest.fixture(scope="module")
def shared_dynamo(tmp_path_factory):
    """One deployment for the tests that neither kill nor restart anything."""
    from ftlocust.targets.dynamo import DynamoDeployment

    deployment = DynamoDeployment(tmp_path_factory.mktemp("dynamo-shared"), workers=2, speedup_ratio=SPEEDUP)
    with deployment:
        yield deployment


# ----- tests -----------------------------------------------------------------------------------

def test_tiny_tokenizer_decodes_every_mocker_token_to_text(tmp_path):
    """The mocker emits ids 1000..1999: each must decode to non-empty text, or the frontend
    drops the chunk. Checked with the `tokenizers` library Dynamo's env ships."""
    from ftlocust.targets.tinymodel import write_tiny_model

    model = write_tiny_model(tmp_path / "tiny")
    script = (
        "import sys, json\n"
        "from tokenizers import Tokenizer\n"
        "t = Tokenizer.from_file(sys.argv[1])\n"
        "empty = [i for i in range(1000, 2000) if not t.decode([i])]\n"
        "ids = t.encode('hello world').ids\n"
        "print(json.dumps({'size': t.get_vocab_size(), 'empty': len(empty), 'roundtrip': t.decode(ids)}))\n"
    )
    out = subprocess.run([str(env_python(ENV_PATH)), "-c", script, str(model / "tokenizer.json")],
                         capture_output=True, text=True, timeout=60, check=True)
    result = json.loads(out.stdout)
    assert result == {"size": 4098, "empty": 0, "roundtrip": "hello world"}
    assert "chat_template" in json.loads((model / "tokenizer_config.json").read_text())


def test_bring_up_serves_completions_and_chat_with_openai_shapes(shared_dynamo):
    d = shared_dynamo
    assert d.startup_s is not None and 0 < d.startup_s < 90
    assert d.group.roles() == ["broker", "frontend", "worker-1", "worker-2"]
    assert d.worker_roles() == ["worker-1", "worker-2"]
    assert d.frontend_role == "frontend" and d.events_path is None
    assert get_json(d.base_url + "/v1/models")[1]["data"][0]["id"] == "tiny"
    for role in d.worker_roles():
        status, health = get_json(d.health_url(role))
        assert (status, health["status"]) == (200, "ready")
        assert d.instance_id(role) in d.generate_instances()
    assert "dynamo_frontend_requests_total" in evidence.scrape(d.metrics_url("frontend")).names()
    assert evidence.scrape(d.metrics_url("worker-1")).has("dynamo_component_requests_total")

    status, body = post(d.base_url, "/v1/completions", {"model": "tiny", "prompt": "hi", "max_tokens": 5})
    assert status == 200 and body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    assert body["choices"][0]["finish_reason"] == "length" and body["choices"][0]["text"].strip()
    assert body["usage"]["completion_tokens"] == 5

    stream = open_stream(d.base_url, "/v1/completions", long_completion("tiny", max_tokens=8))
    stream.read_to_end()
    assert stream.status == 200 and stream.done and not stream.errors()
    assert len(stream.contents()) == 8  # one non-empty chunk per token
    assert stream.finish_reasons() == ["length"] and stream.usage()["completion_tokens"] == 8
    assert stream.events[-1]["choices"] == []  # the usage chunk comes last, before [DONE]

    chat = {"model": "tiny", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 6,
            "stream_options": {"include_usage": True}}
    stream = open_stream(d.base_url, "/v1/chat/completions", chat)
    stream.read_to_end()
    assert stream.status == 200 and stream.done and not stream.errors()
    assert stream.request_id.startswith("chatcmpl-") and stream.events[0]["object"] == "chat.completion.chunk"
    assert stream.events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert len(stream.contents()) == 6 and stream.finish_reasons() == ["length"]

    status, body = post(d.base_url, "/v1/chat/completions", {k: v for k, v in chat.items() if k != "stream_options"})
    assert status == 200 and body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["role"] == "assistant" and body["choices"][0]["message"]["content"]


def test_client_cancel_mid_stream_counts_on_frontend_and_worker(shared_dynamo):
    d = shared_dynamo
    # long enough to be still streaming when cancelled, however slow the machine is
    stream = open_stream(d.base_url, "/v1/completions", long_completion("tiny", max_tokens=50000))
    stream.read_until(10)
    role = evidence.find_serving_role(d.worker_log_paths(), stream.request_id, timeout_s=5)
    assert role in d.worker_roles()
    frontend_before = evidence.scrape(d.metrics_url("frontend"))
    worker_before = evidence.scrape(d.metrics_url(role))
    stream.cancel()

    seen = []

    def counted():
        fe = evidence.delta(frontend_before, evidence.scrape(d.metrics_url("frontend")),
                            "dynamo_frontend_model_cancellation_total", request_type="stream")
        wk = evidence.delta(worker_before, evidence.scrape(d.metrics_url(role)),
                            "dynamo_component_cancellation_total", dynamo_endpoint="generate")
        seen[:] = [fe, wk]
        return (fe, wk) if fe >= 1 and wk >= 1 else None

    uuid = stream.request_id.removeprefix("cmpl-")
    # a busy CI machine is slow, not wrong: the limit is generous, and a miss says what each side logged
    assert wait_for(counted, timeout_s=30) == (1, 1), (
        f"(frontend, worker) cancellations counted: {seen}; their lines for {uuid}: "
        + " | ".join(line[:160] for r in ("frontend", role) for line in log_text(d, r).splitlines() if uuid in line))
    assert f'request cancellation received request_id="{uuid}"' in log_text(d, role)


def test_sigkill_of_serving_worker_migrates_the_stream_then_restart(start_dynamo):
    d = start_dynamo(workers=2, migration_limit=3)
    before = evidence.scrape(d.metrics_url("frontend"))
    stream = open_stream(d.base_url, "/v1/completions", long_completion("tiny"))
    stream.read_until(40)
    role = evidence.find_serving_role(d.worker_log_paths(), stream.request_id, timeout_s=5)
    assert role in d.worker_roles()
    d.group.signal(role, signal.SIGKILL)
    stream.read_to_end()

    assert stream.status == 200 and stream.done and not stream.errors()
    assert len(stream.contents()) == LONG_TOKENS  # nothing lost or repeated at the seam
    assert stream.finish_reasons() == ["length"]
    usage = stream.usage()
    assert usage["completion_tokens"] == LONG_TOKENS
    # Dynamo re-sends prompt + tokens so far to the survivor: prompt_tokens grows (not an error).
    assert usage["prompt_tokens"] >= 40
    after = evidence.scrape(d.metrics_url("frontend"))
    assert evidence.delta(before, after, MIGRATION, migration_type="ongoing_request") == 1
    survivor = next(r for r in d.worker_roles() if r != role)
    uuid = stream.request_id.removeprefix("cmpl-")
    assert f"request received request_id={uuid}" in log_text(d, survivor)
    assert "migration retry scheduled" in log_text(d, "frontend")

    # Restart the killed role: same ports, a new instance the frontend routes to.
    old_log = log_text(d, role)
    d.restart(role)
    assert d.group.alive(role) and d.instance_id(role) in d.generate_instances()
    assert Path(d.group.previous_log_path(role)).read_text(errors="replace") == old_log
    assert get_json(d.health_url(role))[0] == 200
    status, body = post(d.base_url, "/v1/completions", {"model": "tiny", "prompt": "again", "max_tokens": 3})
    assert status == 200 and body["usage"]["completion_tokens"] == 3


def test_sigkill_without_migration_ends_the_200_stream_with_an_in_band_503(start_dynamo):
    d = start_dynamo(workers=2, migration_limit=0)
    before = evidence.scrape(d.metrics_url("frontend"))
    stream = open_stream(d.base_url, "/v1/completions", long_completion("tiny"))
    stream.read_until(40)
    role = evidence.find_serving_role(d.worker_log_paths(), stream.request_id, timeout_s=5)
    d.group.signal(role, signal.SIGKILL)
    stream.read_to_end()

    assert stream.status == 200  # headers were already sent: the error is in the body
    assert [e["code"] for e in stream.errors()] == [503]
    assert stream.done and not stream.finish_reasons() and stream.usage() is None
    assert 40 <= len(stream.contents()) < LONG_TOKENS
    assert "Migration limit exhausted" in log_text(d, "frontend")
    # The migration counter counts the attempt even with migration off: checks must look at
    # the client's outcome, not at this counter alone.
    after = evidence.scrape(d.metrics_url("frontend"))
    assert evidence.delta(before, after, MIGRATION, migration_type="ongoing_request") == 1


def test_sigterm_with_short_drain_ends_the_stream_with_an_in_band_500(start_dynamo):
    d = start_dynamo(workers=2, migration_limit=3, worker_drain_s=1)
    before = evidence.scrape(d.metrics_url("frontend"))
    # Far more tokens than 1 s of drain can finish; the stream ends early at the error anyway.
    stream = open_stream(d.base_url, "/v1/completions", long_completion("tiny", max_tokens=4000))
    stream.read_until(30)
    role = evidence.find_serving_role(d.worker_log_paths(), stream.request_id, timeout_s=5)
    d.group.signal(role, signal.SIGTERM)
    stream.read_to_end()

    assert stream.status == 200 and [e["code"] for e in stream.errors()] == [500]
    assert not stream.finish_reasons() and len(stream.contents()) < 4000
    assert wait_for(lambda: not d.group.alive(role), timeout_s=15), "drained worker did not exit"
    # Which component reports the timeout varies between runs (ingress WARN or runtime ERROR).
    drain_timeout = r"(Timed out waiting for inflight requests to drain|Graceful endpoint shutdown timed out).*timeout_secs=1\b"
    assert re.search(drain_timeout, log_text(d, role)), "no drain-timeout line with timeout_secs=1"
    after = evidence.scrape(d.metrics_url("frontend"))
    assert evidence.delta(before, after, MIGRATION) == 0  # a drain that times out does not migrate


def test_sigterm_with_default_drain_finishes_the_stream_on_the_dying_worker(start_dynamo):
    d = start_dynamo(workers=2, migration_limit=3)
    stream = open_stream(d.base_url, "/v1/completions", long_completion("tiny"))
    stream.read_until(30)
    role = evidence.find_serving_role(d.worker_log_paths(), stream.request_id, timeout_s=5)
    instance = d.instance_id(role)
    assert instance in d.generate_instances()
    d.group.signal(role, signal.SIGTERM)
    # The worker deregisters at once: new requests go to the other one.
    assert wait_for(lambda: instance not in d.generate_instances(), timeout_s=5)
    stream.read_to_end()

    assert stream.done and not stream.errors() and len(stream.contents()) == LONG_TOKENS
    assert stream.usage()["prompt_tokens"] < 30  # not migrated: the prompt was not re-sent
    assert wait_for(lambda: not d.group.alive(role), timeout_s=15)
    assert "All inflight requests completed" in log_text(d, role)


def test_a_worker_that_cannot_start_fails_start_with_one_line_and_leaves_nothing(tmp_path):
    from ftlocust.errors import ConfigError
    from ftlocust.targets.dynamo import DynamoDeployment

    deployment = DynamoDeployment(tmp_path / "bad", workers=1, extra_worker_args=["--no-such-flag"])
    with pytest.raises(ConfigError, match=r"worker-1 exited with code \d+ .*worker-1\.log"):
        with deployment:
            pass
    assert deployment.group.roles() and not any(deployment.group.alive(r) for r in deployment.group.roles())
