"""The reference deployment, started by its launcher, against the issue's "Done when" list.

Each test starts its own deployment with `python -m ftlocust.targets.reference` on
OS-assigned ports (the API-shape tests share one per module), short token delays and small
token counts. Every wait is a bounded poll.
"""

import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from ftlocust.targets.reference import client, logs
from ftlocust.targets.reference.events import read_events
from ftlocust.targets.reference.tokens import check_continuity, seed_for, token_text

pytestmark = pytest.mark.integration

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODEL = "ftlocust-ref"


def wait_for(predicate, timeout_s=10.0, interval_s=0.01, what="condition"):
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)


def pid_gone(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1].startswith("Z")  # zombie: exited, not yet reaped
    except FileNotFoundError:
        return True


class Launched:
    """A deployment started by the launcher in a child process (the way a user starts it)."""

    def __init__(self, run_dir, *args, token_delay_s=0.01):
        self.run_dir = str(run_dir)
        argv = [sys.executable, "-m", "ftlocust.targets.reference", "--run-dir", self.run_dir, "--port", "0",
                "--token-delay-s", str(token_delay_s), *args]
        self.proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     start_new_session=True)
        self.pids = {}
        self.base_url = None
        out = self._read_until_ready(deadline=time.monotonic() + 60)
        for line in out.splitlines():
            parts = line.split()
            if line.startswith("reference deployment up"):
                self.base_url = parts[parts.index("s:") + 1]
            elif len(parts) >= 3 and parts[1] == "pid":
                self.pids[parts[0]] = int(parts[2])
        if self.base_url is None or "Ctrl-C" not in out:
            self.stop()  # SIGTERM: the launcher stops whatever it had started
            raise AssertionError(f"launcher did not come up: {out}")

    def _read_until_ready(self, deadline):
        """Launcher stdout up to its "Ctrl-C ..." line (raw fd reads: bounded by the deadline)."""
        fd = self.proc.stdout.fileno()
        buf = b""
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while b"Ctrl-C" not in buf and time.monotonic() < deadline:
                if sel.select(timeout=0.2):
                    chunk = os.read(fd, 65536)
                    if not chunk:
                        break
                    buf += chunk
                elif self.proc.poll() is not None:
                    break
        return buf.decode()

    # -- observing --
    def url(self, role):
        if role == "frontend":
            return self.base_url
        with open(os.path.join(self.run_dir, "addr", f"{role}.json")) as f:
            return json.load(f)["url"]

    def log(self, role):
        with open(os.path.join(self.run_dir, "logs", f"{role}.log")) as f:
            return f.read()

    def metrics(self, role="frontend"):
        return client.get_text(self.url(role) + "/metrics")

    def metric(self, sample, role="frontend", **labels):
        return client.metric_value(self.metrics(role), sample, **labels)

    def events(self):
        return read_events(os.path.join(self.run_dir, "events.jsonl"))

    def log_line(self, role, needle, timeout_s=10.0):
        def find():
            for line in self.log(role).splitlines():
                if needle in line:
                    return line
            return None

        return wait_for(find, timeout_s, what=f"{needle!r} in {role}.log")

    def serving_role(self, request_id, prefix="worker-"):
        needle = f"request received request_id={request_id}"
        roles = [r for r in self.pids if r.startswith(prefix)]
        return wait_for(lambda: next((r for r in roles if needle in self.log(r)), None), 10,
                        what=f"the worker serving {request_id}")

    def instances(self):
        status, body = client.get_json(self.base_url, "/health")
        return body["instances"] if status == 200 else None

    def stop(self, sig=signal.SIGTERM, timeout_s=30):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc.stdout.close()
        self.proc.stderr.close()
        return self.proc.returncode


@pytest.fixture
def launch(tmp_path):
    started = []

    def _launch(*args, **kw):
        d = Launched(tmp_path / f"run{len(started)}", *args, **kw)
        started.append(d)
        return d

    yield _launch
    for d in started:
        d.stop()
        # Teardown leaves no process behind.
        assert all(pid_gone(p) for p in d.pids.values()), d.pids


def body(prompt="the quick brown fox", max_tokens=5, seed=None, **extra):
    b = {"model": MODEL, "prompt": prompt, "max_tokens": max_tokens, **extra}
    if seed is not None:
        b["seed"] = seed
    return b


def chat_body(content="hello there", max_tokens=5, seed=None, **extra):
    b = {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens, **extra}
    if seed is not None:
        b["seed"] = seed
    return b


# ---------------------------------------------------------------------------------------------
# API shapes (one deployment for the module)
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    d = Launched(tmp_path_factory.mktemp("shared"), "--context-length", "64")
    yield d
    d.stop()
    assert all(pid_gone(p) for p in d.pids.values())


def test_launcher_reports_url_pids_and_run_dir_layout(shared):
    assert shared.base_url.startswith("http://127.0.0.1:")
    assert set(shared.pids) == {"frontend", "worker-1", "worker-2"}
    for role, pid in shared.pids.items():
        with open(os.path.join(shared.run_dir, "pids", f"{role}.pid")) as f:
            assert int(f.read()) == pid
        assert shared.url(role).startswith("http://127.0.0.1:")
        assert client.get_json(shared.url(role), "/health")[0] == 200
        assert client.get_json(shared.url(role), "/live")[0] == 200
    status, models = client.get_json(shared.base_url, "/v1/models")
    assert status == 200 and [m["id"] for m in models["data"]] == [MODEL]
    assert "Request migration enabled (limit: 3)" in shared.log("frontend")
    names = [e["event"] for e in shared.events()]
    assert names.count("worker_registered") == 2 and "deployment_ready" in names


def test_stream_completion_shape_usage_and_done(shared):
    r = client.stream(shared.base_url, "/v1/completions",
                      body(max_tokens=6, seed=11, stream_options={"include_usage": True})).read_all()
    assert r.status == 200 and r.headers["content-type"].startswith("text/event-stream")
    assert r.texts == [token_text(11, i) for i in range(6)]
    assert r.finish_reason == "length" and r.done and r.error is None
    assert r.usage == {"prompt_tokens": 4, "completion_tokens": 6, "total_tokens": 10,
                       "prompt_tokens_details": {"audio_tokens": None, "cached_tokens": 0}}
    assert r.response_id.startswith("cmpl-")
    # the bare uuid is the request_id of the worker's and the frontend's log lines
    role = shared.serving_role(r.request_id)
    shared.log_line(role, f"request completed request_id={r.request_id}")
    shared.log_line("frontend", f"request completed request_id={r.request_id}")


def test_stream_without_include_usage_has_no_usage_chunk(shared):
    r = client.stream(shared.base_url, "/v1/completions", body(max_tokens=3)).read_all()
    assert r.usage is None and r.done and len(r.texts) == 3
    # without a "seed" field the worker seeds from the prompt
    assert check_continuity(seed_for("the quick brown fox"), r.texts, 3) == "ok"


def test_non_stream_completion_shape(shared):
    status, headers, b = client.post_json(shared.base_url, "/v1/completions", body(max_tokens=4, seed=3))
    assert status == 200 and headers["content-type"].startswith("application/json")
    assert b["object"] == "text_completion" and b["id"].startswith("cmpl-") and b["model"] == MODEL
    choice = b["choices"][0]
    assert choice["text"] == "".join(token_text(3, i) for i in range(4)) and choice["finish_reason"] == "length"
    assert b["usage"]["completion_tokens"] == 4 and b["usage"]["prompt_tokens"] == 4


def test_chat_stream_and_non_stream_shape(shared):
    r = client.stream(shared.base_url, "/v1/chat/completions",
                      chat_body(max_tokens=4, seed=5, stream_options={"include_usage": True})).read_all()
    assert r.status == 200 and r.response_id.startswith("chatcmpl-")
    assert r.texts == [token_text(5, i) for i in range(4)] and r.finish_reason == "length" and r.done
    assert r.usage["completion_tokens"] == 4
    status, _, b = client.post_json(shared.base_url, "/v1/chat/completions", chat_body(max_tokens=4, seed=5))
    assert status == 200 and b["object"] == "chat.completion"
    msg = b["choices"][0]["message"]
    assert msg["role"] == "assistant" and msg["content"] == "".join(r.texts)


def test_chat_first_delta_carries_the_role(shared):
    s = client.stream(shared.base_url, "/v1/chat/completions", chat_body(max_tokens=2))
    first = s.next_event()
    assert first["object"] == "chat.completion.chunk"
    assert first["choices"][0]["delta"]["role"] == "assistant"
    s.read_all()


@pytest.mark.parametrize(
    "path, payload, status, param",
    [
        ("/v1/completions", {"model": MODEL, "prompt": "hi"}, 400, "max_tokens"),
        ("/v1/completions", {"model": MODEL, "prompt": "hi", "max_tokens": 0}, 400, "max_tokens"),
        ("/v1/completions", {"model": "no-such-model", "prompt": "hi", "max_tokens": 2}, 404, "model"),
        ("/v1/completions", {"model": MODEL, "prompt": "word " * 65, "max_tokens": 2}, 413, "prompt"),
        ("/v1/completions", {"model": MODEL, "prompt": "hi", "max_tokens": 2, "seed": "x"}, 400, "seed"),
        ("/v1/chat/completions", {"model": MODEL, "messages": [], "max_tokens": 2}, 400, "messages"),
    ],
)
def test_bad_requests_get_openai_style_errors(shared, path, payload, status, param):
    got, _, b = client.post_json(shared.base_url, path, payload)
    assert got == status
    assert b["error"]["code"] == status and b["error"]["param"] == param and b["error"]["message"]


def test_malformed_json_is_400(shared):
    status, _, data = client.request(shared.base_url, "POST", "/v1/completions", raw=b'{"model": "x", ')
    assert status == 400 and json.loads(data)["error"]["type"] == "invalid_request_error"


def test_metrics_speak_dynamo_names(shared):
    client.post_json(shared.base_url, "/v1/completions", body(max_tokens=1))
    fe = shared.metrics()
    for name in ("dynamo_frontend_requests_total", "dynamo_frontend_inflight_requests",
                 "dynamo_frontend_time_to_first_token_seconds_bucket"):
        assert name in fe
    assert client.metric_value(fe, "dynamo_frontend_requests_total", endpoint="completions", status="success") >= 1
    w = shared.metrics("worker-1")
    assert "dynamo_component_requests_total" in w and "dynamo_component_inflight_requests" in w


# ---------------------------------------------------------------------------------------------
# Faults (one deployment per test)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["completion-stream", "chat-stream"])
def test_sigkill_mid_stream_migrates_with_no_gap_or_duplicate(launch, kind):
    d = launch()
    chat = kind.startswith("chat")
    path = "/v1/chat/completions" if chat else "/v1/completions"
    payload = (chat_body if chat else body)(max_tokens=200, seed=2024, stream_options={"include_usage": True})
    s = client.stream(d.base_url, path, payload)
    s.read_tokens(15)
    rid = s.result.request_id
    victim = d.serving_role(rid)
    os.kill(d.pids[victim], signal.SIGKILL)
    r = s.read_all()
    assert r.error is None and r.done and r.finish_reason == "length"
    assert check_continuity(2024, r.texts, 200) == "ok"
    assert d.metric("dynamo_frontend_model_migration_total", migration_type="ongoing_request") == 1
    d.log_line("frontend", f"Stream disconnected, recreating stream error=Unavailable: Stream ended before "
                           f"generation completed request_id={rid}")
    survivor = "worker-2" if victim == "worker-1" else "worker-1"
    d.log_line(survivor, f"request received request_id={rid}")
    # Dynamo's quirk, kept on purpose: prompt_tokens = original prompt + tokens before the kill.
    assert r.usage["completion_tokens"] == 200 and r.usage["prompt_tokens"] > (2 if chat else 4)
    mig = [e for e in d.events() if e.get("request_id") == rid]
    assert [e["event"] for e in mig] == ["worker_died", "migration_started", "migration_done"]
    assert mig[1]["from_role"] == victim and mig[1]["to_role"] == survivor and mig[1]["tokens_completed"] >= 15


def test_sigkill_mid_non_stream_request_migrates(launch):
    d = launch()
    out = {}
    t = threading.Thread(target=lambda: out.update(
        r=client.post_json(d.base_url, "/v1/completions", body(max_tokens=200, seed=77), timeout_s=30)))
    t.start()
    rid = wait_for(lambda: _inflight_request_id(d), 10, what="an in-flight request")
    victim = d.serving_role(rid)
    time.sleep(0.2)  # let it generate some tokens first (not a timing assertion)
    os.kill(d.pids[victim], signal.SIGKILL)
    t.join(30)
    status, _, b = out["r"]
    assert status == 200
    text = b["choices"][0]["text"]
    assert check_continuity(77, [text], 200) == "ok"
    assert d.metric("dynamo_frontend_model_migration_total", migration_type="ongoing_request") == 1


def _inflight_request_id(d):
    """The request_id a worker received but has not completed yet (from the worker logs)."""
    for role in ("worker-1", "worker-2"):
        received, completed = set(), set()
        for line in d.log(role).splitlines():
            if "request received request_id=" in line:
                received.add(line.split("request_id=")[1].split()[0])
            elif "request completed request_id=" in line:
                completed.add(line.split("request_id=")[1].split()[0])
        open_ = received - completed
        if open_:
            return open_.pop()
    return None


def test_sigkill_with_migration_off_ends_with_in_band_503(launch):
    d = launch("--migration-limit", "0")
    assert "Request migration disabled (limit: 0)" in d.log("frontend")
    s = client.stream(d.base_url, "/v1/completions", body(max_tokens=200, seed=1))
    s.read_tokens(10)
    rid = s.result.request_id
    os.kill(d.pids[d.serving_role(rid)], signal.SIGKILL)
    r = s.read_all()
    assert r.status == 200 and r.done and r.finish_reason is None and r.usage is None
    assert r.error == {"message": "Service temporarily unavailable", "type": "service_unavailable", "code": 503}
    assert 10 <= len(r.texts) < 200 and check_continuity(1, r.texts, None) == "ok"
    d.log_line("frontend", f"Cannot recreate stream error=Migration limit exhausted request_id={rid}")
    # Like Dynamo, the migration counter counts the attempt even with migration disabled.
    assert d.metric("dynamo_frontend_model_migration_total", migration_type="ongoing_request") == 1
    assert d.metric("dynamo_frontend_requests_total", status="error", error_type="unavailable") == 1
    assert [e["event"] for e in d.events() if e.get("request_id") == rid] == ["worker_died", "migration_failed"]


def test_sigterm_with_short_drain_ends_with_in_band_500_and_no_migration(launch):
    d = launch("--drain-timeout-s", "0.3")
    s = client.stream(d.base_url, "/v1/completions", body(max_tokens=300, seed=9))
    s.read_tokens(5)
    rid = s.result.request_id
    victim = d.serving_role(rid)
    os.kill(d.pids[victim], signal.SIGTERM)
    r = s.read_all()
    assert r.status == 200 and r.done and r.finish_reason is None
    assert r.error == {"message": "Internal server error", "type": "internal_server_error", "code": 500}
    assert 5 <= len(r.texts) < 300 and check_continuity(9, r.texts, None) == "ok"
    d.log_line(victim, "Timed out waiting for inflight requests to drain")
    d.log_line(victim, f"request completed request_id={rid}")
    assert d.metric("dynamo_frontend_model_migration_total") == 0
    assert d.metric("dynamo_frontend_requests_total", status="error", error_type="internal") == 1
    events = d.events()
    assert any(e["event"] == "worker_deregistered" and e["role"] == victim for e in events)
    assert not any(e["event"].startswith("migration") for e in events)
    # deregistered at once: gone from the frontend's instances, and new work goes to the other worker
    assert not any(i["name"] == victim for i in d.instances())
    for _ in range(3):
        assert client.post_json(d.base_url, "/v1/completions", body(max_tokens=1))[0] == 200


def test_sigterm_idle_worker_drains_and_exits_at_once(launch):
    d = launch()
    os.kill(d.pids["worker-2"], signal.SIGTERM)
    d.log_line("worker-2", "Worker stopped", timeout_s=10)
    wait_for(lambda: pid_gone(d.pids["worker-2"]), 10, what="worker-2 to exit")
    assert "Runtime readiness withdrawn for shutdown" in d.log("worker-2")


def test_client_disconnect_cancels_on_both_sides_within_100ms(launch):
    d = launch(token_delay_s=0.05)
    s = client.stream(d.base_url, "/v1/completions", body(max_tokens=200))
    s.read_tokens(3)
    rid = s.result.request_id
    role = d.serving_role(rid)
    before_fe = d.metric("dynamo_frontend_model_cancellation_total", endpoint="completions", request_type="stream")
    t_cut = s.cut()
    wline = d.log_line(role, f"request cancellation received request_id={rid}", timeout_s=5)
    fline = d.log_line("frontend", f"Stream closed unexpectedly; issuing cancellation request_id={rid}", timeout_s=5)
    assert logs.parse_timestamp(wline) - t_cut < 0.1, wline
    assert logs.parse_timestamp(fline) - t_cut < 0.1, fline
    assert before_fe == 0
    wait_for(lambda: d.metric("dynamo_frontend_model_cancellation_total", endpoint="completions",
                              model=MODEL, request_type="stream") == 1, 5, what="frontend cancellation metric")
    wait_for(lambda: d.metric("dynamo_component_cancellation_total", role=role, dynamo_endpoint="generate") == 1,
             5, what="worker cancellation metric")
    assert d.metric("dynamo_component_inflight_requests", role=role) == 0
    assert any(e["event"] == "request_cancelled" and e["request_id"] == rid for e in d.events())


def test_client_disconnect_during_prefill_cancels_the_worker(launch):
    d = launch("--prefill-base-s", "5")
    s = client.Stream(d.base_url, "/v1/completions", {**body(max_tokens=5), "stream": True})
    # headers arrive when a worker accepted; the first token only after the 5 s prefill
    rid = wait_for(lambda: _inflight_request_id(d), 5, what="the request on a worker")
    role = d.serving_role(rid)
    t_cut = s.cut()
    line = d.log_line(role, f"request cancellation received request_id={rid}", timeout_s=3)
    assert logs.parse_timestamp(line) - t_cut < 0.1, line


@pytest.mark.parametrize("status", [503, 529])
def test_overload_is_rejected_with_retry_after(launch, status):
    # each 30-word prompt takes 30 of a worker's 50 KV tokens: over the 0.5 busy threshold
    d = launch("--kv-capacity", "50", "--busy-threshold", "0.5", "--rejection-status", str(status))
    prompt = " ".join(["word"] * 30)
    streams = [client.stream(d.base_url, "/v1/completions", body(prompt=prompt, max_tokens=300)) for _ in range(2)]
    for s in streams:
        s.read_tokens(1)
    got, headers, b = client.post_json(d.base_url, "/v1/completions", body(prompt="short", max_tokens=2))
    assert got == status and headers["retry-after"] == "1"
    assert b["error"]["code"] == status and "busy" in b["error"]["message"]
    assert d.metric("dynamo_frontend_model_rejection_total", endpoint="completions", model=MODEL) == 1
    assert d.metric("dynamo_frontend_requests_total", status="error", error_type="overload") == 1
    d.log_line("frontend", f"http response sent status={status}")
    for s in streams:
        s.cut()
    # once load is gone the same request is served again
    wait_for(lambda: client.post_json(d.base_url, "/v1/completions", body(max_tokens=1))[0] == 200, 5,
             what="service after the load went away")


def test_killed_worker_is_dropped_after_its_lease_ttl(launch):
    ttl = 1.5
    d = launch("--lease-ttl-s", str(ttl))
    assert sorted(i["name"] for i in d.instances()) == ["worker-1", "worker-2"]
    os.kill(d.pids["worker-2"], signal.SIGKILL)
    t_kill = time.time()
    wait_for(lambda: [i["name"] for i in d.instances()] == ["worker-1"], ttl + 5, 0.02, what="lease expiry")
    elapsed = time.time() - t_kill
    assert elapsed >= ttl / 3, f"dropped after {elapsed:.2f} s: not by lease expiry"
    expired = [e for e in d.events() if e["event"] == "lease_expired"]
    assert [e["role"] for e in expired] == ["worker-2"] and expired[0]["pid"] == d.pids["worker-2"]
    d.log_line("frontend", "Expired path=")
    for _ in range(4):
        assert client.post_json(d.base_url, "/v1/completions", body(max_tokens=1))[0] == 200


def test_connect_failure_before_first_token_migrates_as_new_request_and_inhibits(launch):
    d = launch("--lease-ttl-s", "30")
    os.kill(d.pids["worker-1"], signal.SIGKILL)
    wait_for(lambda: pid_gone(d.pids["worker-1"]), 5, what="worker-1 gone")
    results = [client.post_json(d.base_url, "/v1/completions", body(max_tokens=1))[0] for _ in range(6)]
    assert results == [200] * 6  # migrated to worker-2; afterwards worker-1 is inhibited
    assert d.metric("dynamo_frontend_model_migration_total", migration_type="new_request") == 1
    assert "TCP connection unavailable" in d.log("frontend")
    died = [e for e in d.events() if e["event"] == "worker_died"]
    assert [(e["role"], e["detected_by"]) for e in died] == [("worker-1", "cannot_connect")]


def test_connect_failure_with_migration_off_is_an_immediate_http_503(launch):
    d = launch("--migration-limit", "0", "--lease-ttl-s", "30")
    os.kill(d.pids["worker-1"], signal.SIGKILL)
    wait_for(lambda: pid_gone(d.pids["worker-1"]), 5, what="worker-1 gone")
    results = [client.post_json(d.base_url, "/v1/completions", body(max_tokens=1))[0] for _ in range(4)]
    assert results.count(503) == 1 and results.count(200) == 3


def test_frontend_sigterm_refuses_new_work_and_drains(launch):
    d = launch(token_delay_s=0.02)
    s = client.stream(d.base_url, "/v1/completions", body(max_tokens=100, seed=4))
    s.read_tokens(2)
    os.kill(d.pids["frontend"], signal.SIGTERM)
    d.log_line("frontend", "entering draining stage")
    status, _, b = client.post_json(d.base_url, "/v1/completions", body(max_tokens=1))
    assert status == 503 and b["error"]["message"] == "Service is not ready"
    assert client.get_json(d.base_url, "/health")[0] == 503
    r = s.read_all()
    assert r.done and r.finish_reason == "length" and check_continuity(4, r.texts, 100) == "ok"
    wait_for(lambda: pid_gone(d.pids["frontend"]), 10, what="frontend exit")
    wait_for(lambda: any(e["event"] == "process_exited" and e["role"] == "frontend" for e in d.events()), 5,
             what="process_exited event from the launcher")


def test_disaggregated_decode_falls_back_to_local_prefill(launch):
    d = launch("--disagg", "--workers", "1", "--prefill-workers", "1")
    assert set(d.pids) == {"frontend", "prefill-1", "decode-1"}
    r = client.stream(d.base_url, "/v1/completions", body(max_tokens=5, seed=8)).read_all()
    assert r.done and check_continuity(8, r.texts, 5) == "ok"
    d.log_line("prefill-1", f"request received request_id={r.request_id}")
    d.log_line("decode-1", f"request received request_id={r.request_id}")
    os.kill(d.pids["prefill-1"], signal.SIGKILL)
    wait_for(lambda: pid_gone(d.pids["prefill-1"]), 5, what="prefill-1 gone")
    r2 = client.stream(d.base_url, "/v1/completions", body(max_tokens=5, seed=8)).read_all()
    assert r2.done and r2.texts == r.texts
    d.log_line("decode-1", f"falling back to local prefill request_id={r2.request_id}")


def test_teardown_by_sigint_stops_every_recorded_pid(launch):
    d = launch()
    pids = dict(d.pids)
    assert all(not pid_gone(p) for p in pids.values())
    assert d.stop(signal.SIGINT) == 0
    assert all(pid_gone(p) for p in pids.values())
    assert not os.listdir(os.path.join(d.run_dir, "pids"))
    names = [e["event"] for e in d.events()]
    assert names.count("process_stopped") == 3 and names[-1] == "deployment_stopped"


def test_port_in_use_is_one_line_naming_the_frontend_and_its_log(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = subprocess.run(
            [sys.executable, "-m", "ftlocust.targets.reference", "--run-dir", str(tmp_path), "--port", str(port)],
            cwd=ROOT, capture_output=True, text=True, timeout=60,
        )
    assert out.returncode == 2
    err = out.stderr.strip()
    assert "\n" not in err and "process frontend" in err and str(tmp_path / "logs" / "frontend.log") in err
    assert f"cannot bind 127.0.0.1:{port}" in err
    assert not os.listdir(tmp_path / "pids")  # nothing left running


def test_bad_flag_value_is_one_line(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "ftlocust.targets.reference", "--run-dir", str(tmp_path), "--workers", "0"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 2 and out.stderr.strip().count("\n") == 0 and "workers=0" in out.stderr


def test_process_never_ready_is_one_line_naming_it_and_its_log(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "ftlocust.targets.reference", "--run-dir", str(tmp_path), "--port", "0",
         "--startup-timeout-s", "0.05"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    err = out.stderr.strip()
    assert out.returncode == 2 and "\n" not in err
    assert "process frontend not ready after 0.05 s" in err and str(tmp_path / "logs" / "frontend.log") in err
    assert not os.listdir(tmp_path / "pids")
