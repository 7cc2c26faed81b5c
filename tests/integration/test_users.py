"""LLM users against a real streaming server on 127.0.0.1: outcomes, TTFT, events, rate, budget.

Users are driven in-process (locust.env.Environment) where a single request is under test, and
whole runs go through `python -m locust -f locustfiles/load.py --headless` as a subprocess.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid

import gevent
import pytest
from locust.env import Environment

from ftlocust import payloads, users
from ftlocust.errors import ConfigError
from ftlocust.options import LoadOptions
from ftlocust.records import (
    CONNECTION_ERROR,
    HTTP_ERROR,
    OK,
    REJECTED,
    STREAM_ERROR_EVENT,
    TIMEOUT,
    TRUNCATED,
    RequestRecord,
)
from tests.support.stream_server import StreamServer

pytestmark = pytest.mark.integration

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LOAD = os.path.join(ROOT, "locustfiles", "load.py")


@pytest.fixture(scope="module")
def server():
    with StreamServer("--token-delay", "0.002") as s:
        yield s


def make_user(host: str, extra: dict | None = None, **options):
    """One LLM user in its own Environment, plus the list of request events it fires."""

    class TestUser(users.LLMUser):
        load_options = LoadOptions(**{"output_tokens": 5, "rate": 1000.0, **options})
        extra_body = extra

    TestUser.host = host
    env = Environment(user_classes=[TestUser])
    fired: list[dict] = []
    env.events.request.add_listener(lambda **kw: fired.append(kw))
    user = TestUser(env)
    user.on_start()
    return user, fired


def post_events(fired):
    return [e for e in fired if e["request_type"] == "POST"]


# --- success and the Locust events -------------------------------------------------------------


@pytest.mark.parametrize("kind", ["completion", "completion-stream", "chat", "chat-stream"])
def test_clean_request_is_ok_with_one_event_and_a_full_record(server, kind):
    tag = uuid.uuid4().hex
    user, fired = make_user(server.url, extra={"x_tag": tag})
    record = user.llm_request(kind)

    assert record.outcome == OK, record.error
    assert record.status == 200 and record.finish_reason == "length"
    assert record.output_tokens == 5 and record.usage_completion_tokens == 5 and record.expected_tokens == 5
    assert record.token_count_mismatch is None and record.retries == 0
    # streams: the server's cumulative usage on every chunk (continuous_usage_stats) counts them
    assert (record.token_source, record.content_chunks) == (("chunk-usage", 5) if record.stream else ("usage", 0))
    assert record.model == "test-model" and record.client_id == user.client_id and record.seq == 1
    (served,) = server.requests_tagged(tag)
    assert served["id"].endswith(record.request_id) and served["completed"]
    assert served["seed"] == record.seed and served["max_tokens"] == 5 and served["ignore_eos"] is True
    stream_options = {"include_usage": True, "continuous_usage_stats": True}
    assert served["stream_options"] == (stream_options if record.stream else None)
    assert abs(served["prompt_words"] - 100) <= 1  # --ft-input-tokens 100, approximated by words
    assert record.start_wall <= record.end_wall and record.latency_s == pytest.approx(record.end_mono - record.start_mono)

    (post,) = post_events(fired)
    assert post["name"] == kind and post["exception"] is None
    assert post["context"]["ft_record"] is record
    assert post["response_length"] == 5
    assert post["response_time"] == pytest.approx(record.latency_s * 1000.0)
    ttft_rows = [e for e in fired if e["request_type"] == "TTFT"]
    if record.stream:
        assert record.ttft_s is not None and record.itl_mean_s is not None and record.itl_max_s >= record.itl_p50_s
        (row,) = ttft_rows
        assert row["name"] == kind and row["response_time"] == pytest.approx(record.ttft_s * 1000.0)
        assert "ft_record" not in row["context"]
    else:
        assert record.ttft_s is None and ttft_rows == []


def test_on_content_hook_and_max_tokens_override(server):
    seen: list[tuple[int, str]] = []

    class ProbeUser(users.LLMUser):
        load_options = LoadOptions(output_tokens=5, rate=1000.0)

        def on_content(self, chunks, request_id):
            seen.append((chunks, request_id))

    ProbeUser.host = server.url
    user = ProbeUser(Environment(user_classes=[ProbeUser]))
    user.on_start()
    record = user.llm_request("completion-stream", max_tokens=12)
    assert record.outcome == OK and record.output_tokens == 12 and record.expected_tokens == 12
    assert seen == [(i, record.request_id) for i in range(1, 13)]


def test_no_ttft_rows_when_disabled(server):
    user, fired = make_user(server.url, ttft_rows=False)
    user.llm_request("chat-stream")
    assert [e["request_type"] for e in fired] == ["POST"]


def test_ttft_is_taken_when_the_first_token_arrives(server):
    """A quiet stream: prefill 0.3 s, then tokens. The client's first-token time must be within a
    few ms of the server's first send (same clock): proof that events are read incrementally."""
    tag = uuid.uuid4().hex
    user, _ = make_user(server.url, extra={"x_tag": tag, "x_first_delay": 0.3, "x_token_delay": 0.05}, output_tokens=20)
    record = user.llm_request("completion-stream")
    (served,) = server.requests_tagged(tag)
    lag = record.first_token_wall - served["t_first_send"]
    assert 0 <= lag < 0.1, lag  # reading in 1 KiB blocks would lag by ~5 events (~0.25 s) here
    assert 0.3 <= record.ttft_s < 0.3 + 0.25
    assert record.itl_p50_s == pytest.approx(0.05, abs=0.04)


# --- failure outcomes ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind, knobs, outcome, status, error_part",
    [
        ("chat-stream", {"x_status": 503}, REJECTED, 503, "HTTP 503"),
        ("chat", {"x_status": 503}, REJECTED, 503, "HTTP 503"),
        ("chat-stream", {"x_status": 400}, HTTP_ERROR, 400, "HTTP 400: test server answers 400"),
        ("completion", {"x_status": 500}, HTTP_ERROR, 500, "HTTP 500"),
        ("chat-stream", {"x_error_after": 2}, STREAM_ERROR_EVENT, 200, "Stream ended before generation completed"),
        ("completion", {"x_error_after": 0}, STREAM_ERROR_EVENT, 200, "engine failed"),
        ("chat-stream", {"x_cut_after": 2}, TRUNCATED, 200, "body broke off"),
        ("completion-stream", {"x_end_after": 2}, TRUNCATED, 200, "without [DONE]"),
        ("chat-stream", {"x_short": 3}, TRUNCATED, 200, "3 of 5 tokens"),
        ("chat", {"x_short": 3}, TRUNCATED, 200, "3 of 5 tokens"),
        ("chat-stream", {"x_no_finish": True}, TRUNCATED, 200, "no finish_reason"),
        # `event: error` frames: data without an "error" key, and Dynamo's message-on-a-comment
        ("chat-stream", {"x_error_event": 2}, STREAM_ERROR_EVENT, 200,
         "`event: error` frame in a 200 stream: engine failed (code 500)"),
        ("completion-stream", {"x_error_event": 1, "x_error_style": "comment"}, STREAM_ERROR_EVENT, 200,
         "`event: error` frame in a 200 stream: Exception: engine failed"),
        # 4 tokens a chunk without per-chunk usage: 2 chunks counted, although usage says 5
        ("chat-stream", {"x_tokens_per_chunk": 4, "x_no_chunk_usage": True}, TRUNCATED, 200,
         "2 of 5 tokens (ignore_eos was sent; usage says 5)"),
    ],
)
def test_failure_outcomes_are_exact(server, kind, knobs, outcome, status, error_part):
    user, fired = make_user(server.url, extra=knobs)
    record = user.llm_request(kind)
    assert (record.outcome, record.status) == (outcome, status), record.error
    assert error_part in record.error
    (post,) = post_events(fired)
    assert post["exception"] is not None and str(post["exception"]).startswith(outcome)
    assert post["context"]["ft_record"] is record


def test_connection_refused_is_a_connection_error():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    user, fired = make_user(f"http://127.0.0.1:{port}", model="m")
    record = user.llm_request("chat-stream")
    assert record.outcome == CONNECTION_ERROR and record.status is None
    assert "refused" in record.error.lower()
    (post,) = post_events(fired)
    assert post["exception"] is not None


@pytest.mark.parametrize("kind", ["chat-stream", "completion"])
def test_connection_dropped_before_any_response_is_a_connection_error(server, kind):
    user, _ = make_user(server.url, extra={"x_reset": True})
    record = user.llm_request(kind)
    assert record.outcome == CONNECTION_ERROR and record.status is None, record.error


@pytest.mark.parametrize("kind, knobs", [
    ("chat-stream", {"x_hang": 5}),                              # no headers at all
    ("chat-stream", {"x_first_delay": 5}),                       # headers, then nothing
    ("completion-stream", {"x_token_delay": 0.2}),               # a stream too slow to finish
    ("chat", {"x_first_delay": 5}),                              # non-stream, waiting for the body
])
def test_request_timeout_is_enforced_on_the_socket(server, kind, knobs):
    tag = uuid.uuid4().hex
    user, fired = make_user(server.url, extra={"x_tag": tag, **knobs}, request_timeout_s=0.4)
    record = user.llm_request(kind)
    assert record.outcome == TIMEOUT, record.error
    assert 0.4 <= record.latency_s < 0.4 + 0.5
    assert str(post_events(fired)[0]["exception"]).startswith(TIMEOUT)
    (served,) = _wait_for(lambda: [e for e in server.requests_tagged(tag) if e["t_disconnect"]])
    assert served["t_disconnect"] - record.end_wall < 0.25  # the server saw the socket go at once


def _wait_for(fn, timeout_s: float = 3.0):
    deadline = time.monotonic() + timeout_s
    while True:
        value = fn()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.02)


# --- tokens counted from the stream ---------------------------------------------------------------


@pytest.mark.parametrize("kind", ["chat-stream", "completion-stream"])
def test_four_tokens_per_chunk_are_counted_right(server, kind):
    tag = uuid.uuid4().hex
    knobs = {"x_tag": tag, "x_tokens_per_chunk": 4, "x_pings": True}
    user, fired = make_user(server.url, extra=knobs, output_tokens=20)
    record = user.llm_request(kind)
    assert record.outcome == OK, record.error
    (served,) = server.requests_tagged(tag)
    assert served["tokens_sent"] == 20
    assert (record.output_tokens, record.content_chunks, record.token_source) == (20, 5, "chunk-usage")
    assert record.usage_completion_tokens == 20 and record.token_count_mismatch is None
    assert post_events(fired)[0]["response_length"] == 20


def test_without_per_chunk_usage_the_disagreement_is_recorded(server):
    user, _ = make_user(server.url, extra={"x_tokens_per_chunk": 4, "x_no_chunk_usage": True}, output_tokens=20)
    record = user.llm_request("completion-stream")
    assert (record.output_tokens, record.token_source, record.usage_completion_tokens) == (5, "chunks", 20)
    assert record.token_count_mismatch == "stream 5 vs usage 20" and record.outcome == TRUNCATED


@pytest.mark.parametrize("chunk_usage", [True, False])
def test_a_reasoning_models_stream_counts_its_reasoning(server, chunk_usage):
    """6 reasoning tokens after a 0.3 s prefill, then 4 content tokens: TTFT is the first
    reasoning chunk, and all 10 tokens count (by per-chunk usage, or one per chunk)."""
    tag = uuid.uuid4().hex
    knobs = {"x_tag": tag, "x_reasoning": 6, "x_first_delay": 0.3, "x_token_delay": 0.05}
    if not chunk_usage:
        knobs["x_no_chunk_usage"] = True
    user, _ = make_user(server.url, extra=knobs, output_tokens=10)
    record = user.llm_request("chat-stream")
    assert record.outcome == OK, record.error
    assert (record.output_tokens, record.content_chunks) == (10, 10)
    assert record.token_source == ("chunk-usage" if chunk_usage else "chunks")
    (served,) = server.requests_tagged(tag)
    assert 0 <= record.first_token_wall - served["t_first_send"] < 0.1  # the first reasoning chunk
    assert 0.3 <= record.ttft_s < 0.3 + 0.25


# --- connections the server closes: no phantom failures, and no masking ------------------------------------


@pytest.mark.timeout(60)
def test_a_server_closing_every_connection_after_each_response_causes_no_failure():
    """A server that closes each connection after its response without saying so (legal HTTP)
    races the next request on the kept-alive connection: such a request got no byte back and was
    never processed; it is sent once more on a new connection, never reported as a failure."""
    with StreamServer("--close-after-response") as closing:
        user, fired = make_user(closing.url, output_tokens=3)
        kinds = ("chat-stream", "completion-stream", "chat", "completion")
        records = [user.llm_request(kinds[i % 4]) for i in range(500)]
        log = closing.stats()["log"]
    assert [r.outcome for r in records].count(CONNECTION_ERROR) == 0
    assert all(r.outcome == OK for r in records), {r.error for r in records if r.outcome != OK}
    assert len(log) == 500 and len({e["seed"] for e in log}) == 500  # each processed exactly once
    assert all(r.retries <= 1 for r in records)
    assert len(post_events(fired)) == 500  # one Locust event per request, retried or not


@pytest.mark.timeout(60)
def test_idle_keepalive_timeout_racing_the_next_request_is_retried_not_failed():
    """A 1 s keep-alive idle timeout whose close reaches the wire 0.3 s late (a busy server), and
    4 users sending one request every 1.1 s: every request on a kept-alive connection arrives
    while the server is closing it and is dropped unanswered. Each is retried once on a new
    connection: zero connection errors, and the retries match the server's drops exactly."""
    with StreamServer("--keepalive-timeout", "1", "--close-lag", "0.3") as idle:
        user_list = [make_user(idle.url, output_tokens=3, rate=0.9)[0] for _ in range(4)]
        records: list[RequestRecord] = []

        def run(user):
            for i in range(7):
                records.append(user.llm_request("chat-stream" if i % 2 else "completion"))

        greenlets = [gevent.spawn(run, u) for u in user_list]
        gevent.joinall(greenlets, timeout=40, raise_error=True)
        stats = idle.stats()
    assert len(records) == 28
    assert [r.outcome for r in records].count(CONNECTION_ERROR) == 0
    assert all(r.outcome == OK for r in records), {r.error for r in records if r.outcome != OK}
    retries = sum(r.retries for r in records)
    assert retries > 0 and retries == stats["dropped"]
    assert len(stats["log"]) == 28 and len({e["seed"] for e in stats["log"]}) == 28


@pytest.mark.timeout(60)
def test_a_server_killed_mid_run_is_still_reported():
    """SIGKILL the server while 4 users stream: streams in flight are truncated, every request
    after that fails with connection refused (a retry never turns them into successes)."""
    server = StreamServer("--token-delay", "0.01")
    try:
        user_list = [make_user(server.url, output_tokens=40)[0] for _ in range(4)]
        records: list[RequestRecord] = []
        killed_at: list[float] = []

        def run(user):
            for _ in range(5):
                records.append(user.llm_request("chat-stream"))

        def kill():
            gevent.sleep(1.0)  # each user is in its 2nd or 3rd 0.4 s stream
            killed_at.append(time.time())
            os.kill(server.proc.pid, signal.SIGKILL)
            # a request begun between kill() and the exit meets a dying server (a reset), not a
            # refused connection: "refused" is judged from the moment it is gone
            for _ in range(2000):
                if server.proc.poll() is not None:
                    break
                gevent.sleep(0.001)
            killed_at.append(time.time())

        gevent.joinall([gevent.spawn(kill)] + [gevent.spawn(run, u) for u in user_list], timeout=40, raise_error=True)
    finally:
        server.stop()
    t_kill, t_gone = killed_at
    after = [r for r in records if r.end_wall > t_kill]
    assert len(records) == 20 and after
    assert not [r for r in after if r.outcome == OK]
    assert [r.outcome for r in after].count(TRUNCATED) >= 1  # cut mid-stream
    refused = [r for r in after if r.start_wall > t_gone]
    assert refused and all(r.outcome == CONNECTION_ERROR and "refused" in r.error.lower() for r in refused)


# --- names, phases, token continuity -------------------------------------------------------------


def test_request_name_carries_the_phase(server, monkeypatch):
    class Timeline:
        def phase_of(self, start_wall, end_wall):
            return "after"

    monkeypatch.setattr(users, "_phase_timeline", lambda: Timeline())
    user, fired = make_user(server.url)
    record = user.llm_request("chat-stream")
    assert record.phase == "after"
    assert {e["name"] for e in fired} == {"chat-stream [after]"}


def test_token_continuity_is_checked_against_the_reference_tokens():
    with StreamServer("--tokens", "reference", "--model", "ftlocust-ref-test", "--token-delay", "0.001") as ref:
        user, _ = make_user(ref.url)
        assert user.verify_tokens  # auto: the model id names the reference deployment
        for kind in ("chat-stream", "completion-stream", "chat", "completion"):
            assert user.llm_request(kind).token_check == "ok"
        user.extra_body = {"x_tokens_per_chunk": 4}  # any chunking: texts are split back into tokens
        for kind in ("chat-stream", "completion-stream"):
            packed = user.llm_request(kind)
            assert (packed.token_check, packed.content_chunks, packed.output_tokens) == ("ok", 2, 5)
        user.extra_body = {"x_skip_at": 2}
        record = user.llm_request("chat-stream")
        assert record.outcome == OK and record.token_check.startswith("gap at token 2")
        off, _ = make_user(ref.url, verify_tokens="off")
        assert off.llm_request("chat-stream").token_check is None
    plain, _ = make_user("http://127.0.0.1:9", model="test-model")  # auto: not the reference model
    assert not plain.verify_tokens


def test_mix_sends_every_kind_deterministically():
    kinds = [payloads.kind_for_mix(payloads.request_seed("local/0", seq)) for seq in range(1, 401)]
    assert set(kinds) == set(payloads.KINDS)
    assert kinds.count("chat-stream") > kinds.count("chat")  # weighted
    assert kinds == [payloads.kind_for_mix(payloads.request_seed("local/0", seq)) for seq in range(1, 401)]


def test_seed_and_prompt_are_deterministic():
    assert payloads.request_seed("local/3", 7) == payloads.request_seed("local/3", 7)
    assert payloads.request_seed("local/3", 7) != payloads.request_seed("local/3", 8)
    assert 0 <= payloads.request_seed("worker-9/99", 12345) < 2**31
    prompt = payloads.build_prompt(100, 42)
    assert len(prompt.split()) == 100 and prompt == payloads.build_prompt(100, 42)


# --- preflight: bad input as one line -------------------------------------------------------------


@pytest.mark.parametrize("mode, part", [
    ("html", "did not return JSON (got text/html"),
    ("wrong-json", "is not an OpenAI model list"),
    ("empty", "lists no models"),
    ("error", "answered HTTP 500"),
])
def test_preflight_rejects_servers_that_are_not_openai_compatible(mode, part):
    with StreamServer("--models-mode", mode) as s:
        with pytest.raises(ConfigError) as e:
            users.preflight(s.url, LoadOptions())
    assert part in str(e.value) and "--host" in str(e.value) and "\n" not in str(e.value)


def test_preflight_finds_the_model_and_rejects_bad_ones(server):
    assert users.preflight(server.url, LoadOptions(endpoint="mix")) == "test-model"
    with pytest.raises(ConfigError, match=r"^--ft-model nope: not served by .* \(it serves: test-model\)$"):
        users.preflight(server.url, LoadOptions(model="nope"))
    with pytest.raises(ConfigError, match=r"^--host: expected the server's base URL"):
        users.preflight("127.0.0.1:8000", LoadOptions())
    with pytest.raises(ConfigError, match=r"TLS handshake failed"):
        users.preflight(server.url.replace("http://", "https://"), LoadOptions())


def test_preflight_turns_a_4xx_for_our_payload_into_one_line():
    with StreamServer("--status", "422") as s:
        with pytest.raises(ConfigError, match=r"POST /v1/chat/completions \(chat-stream\) answered HTTP 422"):
            users.preflight(s.url, LoadOptions())
        assert users.preflight(s.url, LoadOptions(), probe_requests=False) == "test-model"


def test_preflight_unreachable_host():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ConfigError, match=r"cannot connect for GET /v1/models \(connection refused\)"):
        users.preflight(f"http://127.0.0.1:{port}", LoadOptions())


# --- whole runs: strict rate, budget, the run ends by itself ----------------------------------------


def run_load(host: str, artifacts: str, *args: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "locust", "-f", LOAD, "--headless", "--host", host,
           "--ft-artifacts", artifacts, "--only-summary", *args]
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("LOCUST_SKIP_MONKEY_PATCH", None)  # a real Locust process is monkey-patched
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, cwd=ROOT, env=env,
                          stdin=subprocess.DEVNULL)


def read_log(artifacts: str) -> list[RequestRecord]:
    with open(os.path.join(artifacts, "requests.jsonl"), encoding="utf-8") as f:
        return [RequestRecord.from_dict(json.loads(line)) for line in f if line.strip()]


def test_strict_rate_and_budget_and_the_run_ends_by_itself(server, tmp_path):
    rate, budget, n_users = 8.0, 5, 3
    started = time.monotonic()
    proc = run_load(server.url, str(tmp_path), "-u", str(n_users), "-r", "100", "--ft-rate", str(rate),
                    "--ft-requests-per-client", str(budget), "--ft-output-tokens", "4",
                    "--ft-endpoint", "mix")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert time.monotonic() - started < 30  # no -t given: it ended because every budget was spent
    records = read_log(str(tmp_path))
    by_client: dict[str, list[RequestRecord]] = {}
    for r in records:
        by_client.setdefault(r.client_id, []).append(r)
    assert len(by_client) == n_users
    for client, rs in by_client.items():
        rs.sort(key=lambda r: r.seq)
        assert [r.seq for r in rs] == list(range(1, budget + 1)), client
        gaps = [b.start_mono - a.start_mono for a, b in zip(rs, rs[1:])]
        assert min(gaps) >= 1.0 / rate, (client, gaps)  # strict: never two starts closer than 1/R
        assert max(gaps) < 1.0 / rate + 0.5  # and not much slower either
    assert all(r.outcome == OK for r in records)
    assert {r.kind for r in records} <= set(payloads.KINDS)


def test_distributed_run_ends_when_every_worker_spent_its_budget(server, tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("LOCUST_SKIP_MONKEY_PATCH", None)
    base = [sys.executable, "-m", "locust", "-f", LOAD]
    master = subprocess.Popen(
        [*base, "--headless", "--master", "--master-bind-host", "127.0.0.1", "--master-bind-port", str(port),
         "--expect-workers", "2", "--host", server.url, "-u", "3", "--ft-requests-per-client", "3",
         "--ft-rate", "10", "--ft-output-tokens", "3", "--ft-artifacts", str(tmp_path), "--only-summary"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    workers = [subprocess.Popen([*base, "--worker", "--master-host", "127.0.0.1", "--master-port", str(port)],
                                cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                stdin=subprocess.DEVNULL) for _ in range(2)]
    try:
        _, err = master.communicate(timeout=60)  # no -t: it must end by itself
        assert master.returncode == 0, err[-2000:]
        for w in workers:
            assert w.wait(timeout=20) == 0
    finally:
        for p in (master, *workers):
            if p.poll() is None:
                p.kill()
                p.wait()
    records = read_log(str(tmp_path))
    assert len(records) == 9 and all(r.outcome == OK for r in records)
    assert {r.locust_worker for r in records} == {"worker-0", "worker-1"}
    assert len({r.client_id for r in records}) == 3


def test_bad_target_ends_before_load_with_one_line(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = run_load(f"http://127.0.0.1:{port}", str(tmp_path))
    assert proc.returncode == 2
    lines = [l for l in proc.stderr.splitlines() if l.startswith("ftlocust:")]
    assert lines == [f"ftlocust: --host http://127.0.0.1:{port}: cannot connect for GET /v1/models (connection refused)"]
    assert "Traceback" not in proc.stderr


def test_bad_flag_ends_before_load_with_one_line(server, tmp_path):
    proc = run_load(server.url, str(tmp_path), "--ft-cancel", "after-chunks:0")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == "ftlocust: --ft-cancel: expected after-chunks:N with an integer N >= 1, got 'after-chunks:0'"
    assert "Traceback" not in proc.stderr
    assert not os.path.exists(os.path.join(str(tmp_path), "requests.jsonl"))  # stopped before any load
