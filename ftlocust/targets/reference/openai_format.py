"""OpenAI-compatible response shapes, as Dynamo's frontend writes them.

Per-token SSE chunks are built by pasting the worker's JSON-encoded token text between two
byte strings prepared once per request: no dict building or JSON encoding per token.
"""

from __future__ import annotations

import json

DONE = b"data: [DONE]\n\n"

# In-band SSE error objects (after the 200 header went out), byte for byte like Dynamo.
UNAVAILABLE_ERROR = {"message": "Service temporarily unavailable", "type": "service_unavailable", "code": 503}
INTERNAL_ERROR = {"message": "Internal server error", "type": "internal_server_error", "code": 500}

_ERROR_TYPES = {
    400: "invalid_request_error",
    404: "not_found_error",
    413: "invalid_request_error",
    500: "internal_server_error",
    503: "service_unavailable",
    529: "overloaded",
}


def error_body(status: int, message: str, param: str | None = None) -> dict:
    """OpenAI-style error body for an HTTP error response."""
    return {"error": {"message": message, "type": _ERROR_TYPES.get(status, "error"), "param": param, "code": status}}


def sse_event(obj: dict) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"audio_tokens": None, "cached_tokens": 0},
    }


class StreamFormat:
    """SSE chunks of one streaming response (completion or chat)."""

    def __init__(self, chat: bool, response_id: str, model: str, created: int):
        self.chat = chat
        self.response_id = response_id
        self.model = model
        self.created = created
        obj = "chat.completion.chunk" if chat else "text_completion"
        head = (
            f'data: {{"id":"{response_id}","object":"{obj}","created":{created},'
            f'"model":{json.dumps(model)},"choices":[{{"index":0,'
        ).encode()
        if chat:
            self._first_head = head + b'"delta":{"role":"assistant","content":'
            self._head = head + b'"delta":{"content":'
            self._tail = b'},"logprobs":null,"finish_reason":null}]}\n\n'
        else:
            self._first_head = self._head = head + b'"text":'
            self._tail = b',"logprobs":null,"finish_reason":null}],"usage":null}\n\n'
        self.role_sent = False

    def tokens(self, token_literals: list[bytes]) -> bytes:
        """SSE chunks for tokens given as JSON string literals (the worker's token lines)."""
        parts = []
        head, tail = self._head, self._tail
        for lit in token_literals:
            if not self.role_sent:
                parts.append(self._first_head + lit + tail)
                self.role_sent = True
            else:
                parts.append(head + lit + tail)
        return b"".join(parts)

    def _base(self) -> dict:
        return {
            "id": self.response_id,
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": self.created,
            "model": self.model,
        }

    def finish(self, finish_reason: str) -> bytes:
        if self.chat:
            choice = {"index": 0, "delta": {}, "logprobs": None, "finish_reason": finish_reason}
        else:
            choice = {"index": 0, "text": "", "logprobs": None, "finish_reason": finish_reason}
        return sse_event({**self._base(), "choices": [choice]})

    def usage_chunk(self, prompt_tokens: int, completion_tokens: int) -> bytes:
        return sse_event({**self._base(), "choices": [], "usage": usage(prompt_tokens, completion_tokens)})


def error_event(error: dict) -> bytes:
    """In-band error (Dynamo: `data: {"error":{...}}`, then the caller sends [DONE])."""
    return sse_event({"error": error})


def unary_body(chat: bool, response_id: str, model: str, created: int, text: str, finish_reason: str,
               prompt_tokens: int, completion_tokens: int) -> dict:
    if chat:
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": text, "refusal": None},
            "finish_reason": finish_reason,
            "logprobs": None,
        }
        obj = "chat.completion"
    else:
        choice = {"index": 0, "text": text, "finish_reason": finish_reason, "logprobs": None}
        obj = "text_completion"
    return {
        "id": response_id,
        "object": obj,
        "created": created,
        "model": model,
        "choices": [choice],
        "system_fingerprint": None,
        "usage": usage(prompt_tokens, completion_tokens),
    }
