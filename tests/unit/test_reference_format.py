"""Wire and response formats of the reference deployment (no processes)."""

import json
import time

from ftlocust.targets.reference import logs, wire
from ftlocust.targets.reference import openai_format as fmt
from ftlocust.targets.reference.tokens import TOKEN_TEXTS, token_id


def sse_payloads(data: bytes) -> list:
    out = []
    for block in data.split(b"\n\n"):
        if block:
            assert block.startswith(b"data: ")
            payload = block[6:]
            out.append("[DONE]" if payload == b"[DONE]" else json.loads(payload))
    return out


def test_token_lines_are_json_string_literals_of_the_token_texts():
    assert len(wire.TOKEN_LINES) == len(TOKEN_TEXTS)
    for i in (0, 1, 2047):
        line = wire.TOKEN_LINES[i]
        assert line[0] == wire.QUOTE and line.endswith(b"\n")
        assert json.loads(line) == TOKEN_TEXTS[i]
    assert json.loads(wire.finish_line(12)) == {"finish_reason": "length", "prompt_tokens": 12}
    assert json.loads(wire.error_line())["error"]["code"] == 500


def test_completion_stream_chunks_parse_and_carry_the_token_text():
    f = fmt.StreamFormat(False, "cmpl-abc", "m", 123)
    lits = [wire.TOKEN_LINES[token_id(1, i)][:-1] for i in range(3)]
    events = sse_payloads(f.tokens(lits) + f.finish("length") + f.usage_chunk(4, 3) + fmt.DONE)
    assert [e["choices"][0]["text"] for e in events[:3]] == [TOKEN_TEXTS[token_id(1, i)] for i in range(3)]
    assert all(e["id"] == "cmpl-abc" and e["object"] == "text_completion" and e["model"] == "m" for e in events[:4])
    assert events[3]["choices"][0]["finish_reason"] == "length"
    assert events[4]["choices"] == [] and events[4]["usage"]["total_tokens"] == 7
    assert events[5] == "[DONE]"


def test_chat_stream_sends_the_role_once():
    f = fmt.StreamFormat(True, "chatcmpl-x", 'odd "model"', 1)
    lits = [b'" a"', b'" b"']
    first = sse_payloads(f.tokens(lits[:1]))
    later = sse_payloads(f.tokens(lits[1:]))
    assert first[0]["choices"][0]["delta"] == {"role": "assistant", "content": " a"}
    assert later[0]["choices"][0]["delta"] == {"content": " b"}
    assert first[0]["model"] == 'odd "model"' and first[0]["object"] == "chat.completion.chunk"
    assert sse_payloads(f.finish("length"))[0]["choices"][0]["delta"] == {}


def test_error_shapes():
    assert sse_payloads(fmt.error_event(fmt.UNAVAILABLE_ERROR)) == [
        {"error": {"message": "Service temporarily unavailable", "type": "service_unavailable", "code": 503}}
    ]
    body = fmt.error_body(404, "Model not found", "model")
    assert body == {"error": {"message": "Model not found", "type": "not_found_error", "param": "model", "code": 404}}


def test_unary_bodies():
    chat = fmt.unary_body(True, "chatcmpl-1", "m", 5, " x y", "length", 3, 2)
    assert chat["object"] == "chat.completion" and chat["choices"][0]["message"]["content"] == " x y"
    comp = fmt.unary_body(False, "cmpl-1", "m", 5, " x y", "length", 3, 2)
    assert comp["choices"][0]["text"] == " x y" and comp["usage"]["completion_tokens"] == 2


def test_log_lines_start_with_an_iso_timestamp_and_level_and_parse_back():
    import logging

    rec = logging.LogRecord("dynamo_llm::migration", logging.WARNING, __file__, 1, "Stream disconnected", None, None)
    line = logs.DynamoFormatter().format(rec)
    stamp, level, target = line.split()[:3]
    assert stamp.endswith("Z") and "T" in stamp and level == "WARN" and target == "dynamo_llm::migration:"
    assert abs(logs.parse_timestamp(line) - rec.created) < 1e-5
    assert logs.parse_timestamp("no timestamp here") is None
    assert abs(logs.parse_timestamp(logs.DynamoFormatter().format(
        logging.LogRecord("x", logging.INFO, __file__, 1, "m", None, None))) - time.time()) < 5
