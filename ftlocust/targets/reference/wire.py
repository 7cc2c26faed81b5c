"""What the frontend and the workers say to each other over loopback HTTP.

Request plane: POST <worker>/generate with a JSON body (GenerateRequest fields below). The
response is a chunked body of newline-terminated lines, written as they are produced:
- a token: its text as a JSON string literal, e.g. `" zuto"` (first byte `"`). The frontend
  pastes it into an SSE chunk as is: no per-token JSON parsing on the hot path;
- the end: a JSON object, `{"finish_reason":"length","prompt_tokens":N}`, or an error object
  `{"error":{...}}` (the worker gave up, e.g. its drain timed out).
A body that ends without the end line means the worker died mid-stream (the frontend migrates).

Prefill plane (disaggregated): POST <prefill worker>/prefill {"request_id","prompt_tokens"} →
200 {"prompt_tokens": N} once the prompt is "in the KV cache".

Discovery: POST <frontend>/internal/lease registers or renews a lease (same body each time);
POST <frontend>/internal/deregister {"instance_id"} drops it at once.
"""

from __future__ import annotations

import json

from ftlocust.targets.reference.tokens import TOKEN_TEXTS

GENERATE_PATH = "/generate"
PREFILL_PATH = "/prefill"
LEASE_PATH = "/internal/lease"
DEREGISTER_PATH = "/internal/deregister"

# Worker kinds: "aggregated" does prefill and decode; disaggregated uses "prefill" + "decode".
AGGREGATED, PREFILL, DECODE = "aggregated", "prefill", "decode"
KINDS = (AGGREGATED, PREFILL, DECODE)
SERVING_KINDS = (AGGREGATED, DECODE)  # the kinds the frontend routes requests to

# Pre-encoded token lines, indexed by token id: one bytes object per vocabulary entry.
TOKEN_LINES: tuple[bytes, ...] = tuple(json.dumps(t).encode() + b"\n" for t in TOKEN_TEXTS)
QUOTE = 0x22  # first byte of a token line

INTERNAL_ERROR = {"message": "Internal server error", "type": "internal_server_error", "code": 500}


def finish_line(prompt_tokens: int, finish_reason: str = "length") -> bytes:
    return json.dumps({"finish_reason": finish_reason, "prompt_tokens": prompt_tokens}).encode() + b"\n"


def error_line(error: dict = INTERNAL_ERROR) -> bytes:
    return json.dumps({"error": error}).encode() + b"\n"
