"""The response reader without Locust: recorded streams (tests/unit/streams/) in, records out.

Each stream file is the body exactly as a server sent it (OpenAI, vLLM, SGLang, Dynamo shapes);
it is fed line by line with made-up arrival times 0.1 s apart, the first at t=1.0 for a request
that started at t=0.5.
"""

from __future__ import annotations

import json
import os

import pytest

from ftlocust import payloads, responses
from ftlocust.records import (
    CANCELLED,
    CONNECTION_ERROR,
    HTTP_ERROR,
    OK,
    REJECTED,
    STREAM_ERROR_EVENT,
    TIMEOUT,
    TRUNCATED,
    RequestRecord,
)
from ftlocust.responses import StreamReader, classify, read_unary
from ftlocust.targets.reference.tokens import token_text

STREAMS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "streams")
T0 = 0.5


def feed(name: str, chat: bool, keep_texts: bool = True) -> StreamReader:
    with open(os.path.join(STREAMS, name), "rb") as f:
        body = f.read()
    reader = StreamReader(chat, keep_texts=keep_texts)
    now = 1.0
    for line in body.splitlines(keepends=True):
        if reader.feed(line, now):
            now += 0.1
    return reader


def record_for(chat: bool, stream: bool = True, expected: int | None = None, status: int | None = 200) -> RequestRecord:
    kind = ("chat" if chat else "completion") + ("-stream" if stream else "")
    return RequestRecord(kind=kind, endpoint="/v1/chat/completions" if chat else "/v1/completions", stream=stream,
                         status=status, start_mono=T0, start_wall=1000.0, expected_tokens=expected, seed=7)


def read_file(name: str, chat: bool, expected: int | None = None) -> tuple[RequestRecord, StreamReader]:
    reader = feed(name, chat)
    return classify(record_for(chat, expected=expected), reader), reader


# --- clean streams: outcome, tokens, TTFT, ITL -------------------------------------------------------


@pytest.mark.parametrize("name, chat, tokens, source, chunks, usage", [
    ("openai_chat.txt", True, 5, "chunks", 5, 5),
    ("vllm_completion.txt", False, 4, "chunks", 4, None),
    ("dynamo_chat.txt", True, 4, "chunks", 4, 4),
    ("pings_crlf.txt", False, 2, "chunks", 2, None),
    # several tokens per chunk, counted by the cumulative usage on every chunk
    ("vllm_chat_continuous_usage.txt", True, 16, "chunk-usage", 4, 16),
    ("sglang_chat_reasoning.txt", True, 6, "chunk-usage", 3, 6),
    # reasoning chunks count, one token each
    ("vllm_reasoning.txt", True, 7, "chunks", 7, 7),
    # token lists per chunk (return_token_ids, logprobs)
    ("vllm_reasoning_token_ids.txt", True, 6, "token-lists", 3, 6),
    ("chat_logprobs.txt", True, 3, "token-lists", 2, None),
])
def test_clean_streams_are_ok_and_counted_from_the_stream(name, chat, tokens, source, chunks, usage):
    record, _ = read_file(name, chat, expected=tokens)
    assert record.outcome == OK, record.error
    assert record.error is None and record.finish_reason == "length"
    assert (record.output_tokens, record.token_source, record.content_chunks) == (tokens, source, chunks)
    assert record.usage_completion_tokens == usage and record.token_count_mismatch is None
    assert record.ttft_s == pytest.approx(1.0 - T0) and record.first_token_wall == pytest.approx(1000.5)
    if chunks > 1:
        assert record.itl_mean_s == pytest.approx(0.1) and record.itl_p50_s == pytest.approx(0.1)
        assert record.itl_max_s == pytest.approx(0.1)
    assert record.request_id


def test_the_first_reasoning_chunk_is_the_first_token():
    reader = feed("vllm_reasoning.txt", chat=True)
    record = classify(record_for(True, expected=7), reader)
    assert record.first_token_mono == pytest.approx(1.0)  # "Okay", a reasoning delta
    assert reader.texts == ["\n\n", "Hello", "!"]  # continuity is about content, not reasoning
    sglang = feed("sglang_chat_reasoning.txt", chat=True)
    assert sglang.texts == [" Sure thing", " here it"] and len(sglang.times) == 3


def test_request_id_usage_and_prompt_tokens_are_kept_as_reported():
    record, _ = read_file("dynamo_chat.txt", True)
    assert record.request_id == "0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b"  # Dynamo's log key
    assert (record.usage_prompt_tokens, record.usage_completion_tokens) == (101, 4)


def test_packed_chunks_without_per_chunk_information_disagree_with_usage():
    """Two chunks of 4 tokens, usage 8 on the last one only: counted 2 (one per chunk), the
    disagreement is on the record, and with ignore_eos the counted figure decides."""
    record, _ = read_file("packed_usage_at_end.txt", False)
    assert (record.output_tokens, record.token_source, record.usage_completion_tokens) == (2, "chunks", 8)
    assert record.token_count_mismatch == "stream 2 vs usage 8" and record.outcome == OK
    strict, _ = read_file("packed_usage_at_end.txt", False, expected=8)
    assert strict.outcome == TRUNCATED
    assert strict.error == "2 of 8 tokens (ignore_eos was sent; usage says 8)"


def test_usage_that_trails_the_stream_is_flagged():
    record, _ = read_file("openai_chat.txt", True, expected=5)
    record2 = classify(record_for(True, expected=5), _with_usage(feed("openai_chat.txt", True), 9))
    assert record.token_count_mismatch is None
    assert record2.token_count_mismatch == "stream 5 vs usage 9" and record2.outcome == OK  # 5 >= 5 expected


def _with_usage(reader: StreamReader, completion_tokens: int) -> StreamReader:
    reader.usage = {"prompt_tokens": 1, "completion_tokens": completion_tokens}
    return reader


def test_fewer_tokens_than_max_tokens_with_ignore_eos_is_truncated():
    record, _ = read_file("vllm_completion.txt", False, expected=5)
    assert record.outcome == TRUNCATED and record.error == "4 of 5 tokens (ignore_eos was sent)"


def test_a_usage_count_that_starts_over_adds_up():
    """A per-chunk count that drops (e.g. a stream continued elsewhere) restarts, not subtracts."""
    reader = StreamReader(chat=False)
    for i, cum in enumerate([2, 4, 1, 3]):
        chunk = {"id": "cmpl-1", "choices": [{"index": 0, "text": " x", "finish_reason": None}],
                 "usage": {"completion_tokens": cum}}
        reader.feed(b"data: " + json.dumps(chunk).encode() + b"\n", 1.0 + i)
    assert reader.counted_tokens() == (4 + 3, "chunk-usage")


def test_non_ascii_text_is_read():
    reader = StreamReader(chat=True, keep_texts=True)
    chunk = {"id": "chatcmpl-1", "choices": [{"index": 0, "delta": {"content": " été 東京"}, "finish_reason": "length"}]}
    assert reader.feed(b"data: " + json.dumps(chunk, ensure_ascii=False).encode() + b"\n", 1.0)
    assert reader.texts == [" été 東京"] and reader.protocol_error is None


# --- errors inside a 200 ------------------------------------------------------------------------------


@pytest.mark.parametrize("name, chat, frame, message", [
    ("vllm_error_in_200.txt", True, False, "EngineCore encountered an issue"),
    ("sglang_error_object.txt", False, False, "The context length is exceeded (code 400)"),
    ("dynamo_inband_error.txt", False, False, "Service temporarily unavailable (code 503)"),
    # Dynamo: no data line, the message on a comment line
    ("dynamo_event_error_comment.txt", False, True, "Exception: Failed to load image"),
    # data without an "error" key
    ("event_error_message_code.txt", False, True, "worker lost (code 500)"),
    ("event_error_text.txt", False, True, "upstream timed out"),
])
def test_errors_inside_a_200_are_stream_error_events(name, chat, frame, message):
    record, reader = read_file(name, chat)
    assert record.outcome == STREAM_ERROR_EVENT, record.error
    assert message in record.error
    assert record.error.startswith("`event: error` frame" if frame else "error object in a 200 body")
    assert reader.error_event is frame
    assert record.content_chunks >= 1 and record.ttft_s is not None  # what came before the error is kept


def test_an_error_event_with_nothing_else_is_still_an_error():
    reader = StreamReader(chat=False)
    for line in (b"event: error\n", b"\n"):
        reader.feed(line, 1.0)
    record = classify(record_for(False), reader)
    assert record.outcome == STREAM_ERROR_EVENT and record.error == "`event: error` frame in a 200 stream: event: error"


def test_data_after_an_error_frame_ended_is_read_normally():
    reader = StreamReader(chat=False)
    lines = [b"event: error\n", b": first\n", b": second\n", b"\n",
             b'data: {"id":"cmpl-1","choices":[{"text":" a","finish_reason":"length"}]}\n', b"\n"]
    assert [reader.feed(line, 1.0) for line in lines] == [False] * 4 + [True, False]
    assert reader.error == "first"  # the frame's first detail


def test_other_named_events_and_sse_fields_are_plain_data():
    reader = StreamReader(chat=False)
    lines = [b"id: 1\n", b"retry: 1000\n", b"event: message\n",
             b'data: {"id":"cmpl-1","choices":[{"text":" a","finish_reason":"length"}]}\n', b"\n", b"data: [DONE]\n"]
    for line in lines:
        reader.feed(line, 1.0)
    record = classify(record_for(False, expected=1), reader)
    assert record.outcome == OK and record.output_tokens == 1


# --- broken streams -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name, outcome, error", [
    ("no_finish_reason.txt", TRUNCATED, "no finish_reason"),
    ("no_done.txt", TRUNCATED, "stream ended without [DONE]"),
    ("non_json_data.txt", HTTP_ERROR, "SSE event is not JSON: '<html>502 Bad Gateway</html>'"),
])
def test_broken_streams(name, outcome, error):
    record, _ = read_file(name, False)
    assert (record.outcome, record.error) == (outcome, error)


def test_a_body_that_broke_off_is_truncated_with_what_was_read():
    reader = feed("no_done.txt", chat=False)
    record = classify(record_for(False), reader, failure=ConnectionResetError("reset by peer"))
    assert record.outcome == TRUNCATED and record.error == "body broke off: ConnectionResetError: reset by peer"
    assert record.output_tokens == 2 and record.content_chunks == 2


# --- what the client decided, and no response -------------------------------------------------------------


def test_cancel_and_timeout_lose_to_what_the_server_said_first():
    errored = feed("dynamo_inband_error.txt", chat=False)
    assert classify(record_for(False), errored, ended=CANCELLED).outcome == STREAM_ERROR_EVENT
    partial = feed("no_done.txt", chat=False)
    cancelled = classify(record_for(False), partial, ended=CANCELLED, cancel_policy="after-chunks:2")
    assert (cancelled.outcome, cancelled.cancel_policy, cancelled.error) == (CANCELLED, "after-chunks:2", None)
    timed = classify(record_for(False), feed("no_done.txt", chat=False), ended=TIMEOUT, timeout_s=0.4)
    assert timed.outcome == TIMEOUT and timed.error == "no complete answer within --ft-request-timeout 0.4 s"


def test_no_response_is_a_connection_error_or_a_timeout():
    read = StreamReader(chat=True)
    refused = classify(record_for(True, status=None), read, failure=ConnectionRefusedError(111, "Connection refused"))
    assert refused.outcome == CONNECTION_ERROR and "Connection refused" in refused.error
    timed = classify(record_for(True, status=None), StreamReader(chat=True), failure=TimeoutError("t"), timed_out=True)
    assert timed.outcome == TIMEOUT


@pytest.mark.parametrize("status, message, outcome, error", [
    (503, "Service is not ready", REJECTED, "HTTP 503: Service is not ready"),
    (529, None, REJECTED, "HTTP 529"),
    (400, "Validation: Unsupported parameter(s): `bogus_field`", HTTP_ERROR,
     "HTTP 400: Validation: Unsupported parameter(s): `bogus_field`"),
])
def test_http_errors(status, message, outcome, error):
    read = StreamReader(chat=True)
    read.status_message = message
    record = classify(record_for(True, status=status), read)
    assert (record.outcome, record.error) == (outcome, error)


def test_error_messages_of_openai_and_dynamo_bodies():
    assert responses.error_message(b'{"error": {"message": "model not found", "code": 404}}') == "model not found"
    # Dynamo's HTTP error bodies have no "error" key
    assert responses.error_message(b'{"message":"Model not found","type":"Not Found","code":404}') == "Model not found"
    assert responses.error_message(b"") == "empty body"
    assert responses.error_message(b"<html>oops</html>") == "<html>oops</html>"


# --- non-stream bodies ---------------------------------------------------------------------------------------


def test_unary_bodies():
    chat = {"id": "chatcmpl-1", "object": "chat.completion", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": " a b c", "reasoning_content": "hmm"},
         "finish_reason": "length"}], "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}}
    record = classify(record_for(True, stream=False, expected=4), read_unary(json.dumps(chat).encode(), chat=True))
    assert (record.outcome, record.output_tokens, record.token_source) == (OK, 4, "usage")
    no_usage = {"id": "cmpl-1", "choices": [{"text": " a b c", "finish_reason": "length"}]}
    record = classify(record_for(False, stream=False, expected=3), read_unary(json.dumps(no_usage).encode(), False))
    assert (record.outcome, record.output_tokens, record.token_source) == (OK, 3, "words")
    body = b'{"object":"error","message":"boom","code":500}'
    error = classify(record_for(False, stream=False), read_unary(body, False))
    assert error.outcome == STREAM_ERROR_EVENT and error.error == "error object in a 200 body: boom (code 500)"
    broken = classify(record_for(False, stream=False), read_unary(b"not json", False))
    assert broken.outcome == HTTP_ERROR and broken.error.startswith("body is not JSON")


# --- reference continuity: any chunking -----------------------------------------------------------------------


def test_reference_continuity_accepts_four_tokens_per_chunk():
    seed = 7
    tokens = [token_text(seed, i) for i in range(12)]
    reader = StreamReader(chat=False, keep_texts=True)
    for j in range(0, 12, 4):
        chunk = {"id": "cmpl-1", "choices": [{"text": "".join(tokens[j:j + 4]), "finish_reason": None}]}
        reader.feed(b"data: " + json.dumps(chunk).encode() + b"\n", 1.0 + j)
    record = record_for(False, expected=12)
    assert responses.token_check(record, reader) == "ok"
    reader.texts[1] = "".join(tokens[5:8])  # token 4 lost inside a chunk
    assert responses.token_check(record, reader).startswith("gap at token 4")


# --- the payload ---------------------------------------------------------------------------------------------------


def test_streams_ask_for_usage_on_every_chunk_and_nothing_else_is_added():
    spec = payloads.KINDS["chat-stream"]
    payload = payloads.build_payload(spec, "m", "hi", 5, 3)
    assert payload["stream_options"] == {"include_usage": True, "continuous_usage_stats": True}
    assert set(payload) == {"model", "messages", "max_tokens", "ignore_eos", "seed", "stream", "stream_options"}
    assert "stream_options" not in payloads.build_payload(payloads.KINDS["chat"], "m", "hi", 5, 3)
