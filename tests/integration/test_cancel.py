"""Socket-level cancellation against a real server on 127.0.0.1: the server must see each cancel
within milliseconds, the record says `cancelled` (a Locust success), and nothing leaks."""

from __future__ import annotations

import time
import uuid

import pytest
from locust.env import Environment

from ftlocust import cancel as cancel_module
from ftlocust import users
from ftlocust.cancel import CancelPolicy
from ftlocust.options import LoadOptions
from ftlocust.records import CANCELLED, OK, TIMEOUT
from tests.support.stream_server import StreamServer

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server():
    with StreamServer() as s:
        yield s


def make_user(host: str, extra: dict | None = None, **options):
    class CancelUser(users.LLMUser):
        load_options = LoadOptions(**{"output_tokens": 20, "rate": 10000.0, **options})
        extra_body = extra

    CancelUser.host = host
    env = Environment(user_classes=[CancelUser])
    fired: list[dict] = []
    env.events.request.add_listener(lambda **kw: fired.append(kw))
    user = CancelUser(env)
    user.on_start()
    return user, fired


def served(server: StreamServer, tag: str, timeout_s: float = 3.0) -> dict:
    """The server's entry for the request tagged `tag`, once it noticed the disconnect."""
    deadline = time.monotonic() + timeout_s
    while True:
        entries = server.requests_tagged(tag)
        if entries and (entries[0]["t_disconnect"] or time.monotonic() > deadline):
            assert len(entries) == 1
            return entries[0]
        if time.monotonic() > deadline:
            raise AssertionError(f"the server never saw a request tagged {tag}")
        time.sleep(0.02)


PREFILL_S = 0.2  # the before-first-token timer in these tests: a busy CI machine's server must have logged
# the request by then, or its disconnect matches nothing (the default 20 ms is too short for that)


# headers at once, the first token 1 s later: a cancel before this timer was at the headers, even
# on a busy machine where the headers take far longer than PREFILL_S to come
HEADERS_CASE_PREFILL_S = 0.8


@pytest.mark.parametrize("kind, policy, knobs, tokens_seen, cancel_after_s", [
    # headers arrive at once, the first token after 1 s: cancelled at the headers (prefill)
    ("chat-stream", "before-first-token", {"x_first_delay": 1.0}, (0, 0), (0.0, HEADERS_CASE_PREFILL_S)),
    # a server that holds its headers back until the first token: the prefill timer cancels
    ("completion-stream", "before-first-token", {"x_first_delay": 0.8, "x_headers_late": True}, (0, 0),
     (PREFILL_S, PREFILL_S + 0.4)),
    # non-stream: cancelled while waiting for the body
    ("chat", "before-first-token", {"x_first_delay": 0.8}, (0, 0), (PREFILL_S, PREFILL_S + 0.4)),
    ("completion-stream", "after-chunks:3", {"x_token_delay": 0.03}, (3, 3), (0.06, 0.4)),
    ("chat-stream", "after-ms:150", {"x_token_delay": 0.03}, (1, 7), (0.15, 0.4)),
    ("completion", "after-ms:150", {"x_token_delay": 0.03}, (0, 0), (0.15, 0.4)),
])
def test_each_policy_cancels_at_socket_level(server, monkeypatch, kind, policy, knobs, tokens_seen, cancel_after_s):
    headers_case = kind == "chat-stream" and policy == "before-first-token"
    monkeypatch.setattr(cancel_module, "PREFILL_CANCEL_DELAY_S", HEADERS_CASE_PREFILL_S if headers_case else PREFILL_S)
    tag = uuid.uuid4().hex
    user, fired = make_user(server.url, extra={"x_tag": tag, **knobs}, cancel=CancelPolicy.parse(policy))
    record = user.llm_request(kind)

    assert record.outcome == CANCELLED, record.error
    assert record.cancel_policy == policy and record.error is None
    assert cancel_after_s[0] <= record.latency_s < cancel_after_s[1]
    if record.stream:
        assert tokens_seen[0] <= record.output_tokens <= tokens_seen[1]
    (post,) = [e for e in fired if e["request_type"] == "POST"]
    assert post["exception"] is None  # cancelled on purpose: a Locust success, never a failure
    assert post["context"]["ft_record"] is record

    entry = served(server, tag)
    assert entry["t_disconnect"] is not None and not entry["completed"]
    assert entry["t_disconnect"] - record.end_wall < 0.25  # the server saw it at once (ms; generous for CI)
    assert entry["tokens_sent"] < 20


def test_fraction_picks_the_same_requests_by_seed(server):
    policy = CancelPolicy.parse("after-ms:0@0.5")
    user, _ = make_user(server.url, extra={"x_first_delay": 0.05}, cancel=policy, output_tokens=2)
    records = [user.llm_request("chat") for _ in range(40)]
    expected = [policy.applies(r.seed, stream=False) for r in records]
    assert [r.outcome == CANCELLED for r in records] == expected
    assert all(r.outcome == OK for r in records if not policy.applies(r.seed, stream=False))
    assert 8 <= sum(expected) <= 32  # about half


@pytest.mark.timeout(60)  # a leaked pool slot shows as a request that blocks forever
def test_no_connection_or_pool_slot_leaks_over_many_cancels(monkeypatch):
    """100 cancels (every policy, stream and not) and 5 timeouts, then normal requests on the
    same user: every pool slot comes back, the server saw every disconnect, and the normal
    requests share one keep-alive connection again."""
    # cancel non-streams 150 ms after sending (not 20): time enough for a busy CI machine's
    # server to have logged the request, so that it can be matched with its disconnect
    monkeypatch.setattr(cancel_module, "PREFILL_CANCEL_DELAY_S", 0.15)
    with StreamServer("--token-delay", "0.002") as server:
        tag = uuid.uuid4().hex
        user, fired = make_user(server.url, extra={"x_tag": tag, "x_first_delay": 0.4}, output_tokens=10)
        pool = user.client.client.clientpool.get_client(users_url(user))._connection_pool
        slots = pool._semaphore.counter
        policies = ["before-first-token", "after-chunks:1", "after-ms:60", "after-ms:90"]
        n_cancels, n_timeouts = 100, 5
        for i in range(n_cancels):
            spec = policies[i % len(policies)]
            kind = ("chat-stream", "completion", "completion-stream", "chat")[(i // 4) % 4]
            if spec.startswith("after-chunks"):
                kind = kind if kind.endswith("stream") else kind + "-stream"
                user.extra_body = {"x_tag": tag}  # tokens at once
            else:
                user.extra_body = {"x_tag": tag, "x_first_delay": 0.4}  # still in prefill when cancelled
            user.options = LoadOptions(output_tokens=10, rate=10000.0, cancel=CancelPolicy.parse(spec))
            record = user.llm_request(kind)
            assert record.outcome == CANCELLED, (spec, kind, record.error)
        user.extra_body = {"x_tag": tag, "x_hang": 2}
        user.options = LoadOptions(output_tokens=10, rate=10000.0, request_timeout_s=0.1)
        for _ in range(n_timeouts):  # timeouts end requests the same way
            assert user.llm_request("chat-stream").outcome == TIMEOUT
        user.extra_body = {"x_tag": tag}
        user.options = LoadOptions(output_tokens=10, rate=10000.0)
        after = [user.llm_request(kind) for kind in ("chat-stream", "chat", "completion-stream", "completion") * 3]
        assert all(r.outcome == OK for r in after), [r.error for r in after]
        assert pool._semaphore.counter == slots  # every pool slot came back

        ended_early = n_cancels + n_timeouts
        deadline = time.monotonic() + 5
        while True:
            stats = server.stats()
            log = [e for e in stats["log"] if e["tag"] == tag]
            disconnected = [e for e in log if e["t_disconnect"]]
            if len(disconnected) >= ended_early or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert len(log) == ended_early + len(after)  # every request reached the server exactly once
        assert len({e["seed"] for e in log}) == len(log)  # and none was sent twice
        assert len(disconnected) == ended_early  # the server saw every cancel and timeout
        assert all(not e["completed"] for e in disconnected)
        assert stats["connections_open"] <= 2  # the cancelled connections are closed, not parked
        # the normal requests after the cancels reused one keep-alive connection
        assert len({tuple(e["peer"]) for e in log[-len(after):]}) == 1


def users_url(user):
    from geventhttpclient.url import URL

    return URL(user.client._build_url("/"))
