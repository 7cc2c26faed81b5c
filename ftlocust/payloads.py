"""What one LLM request sends: its kind (endpoint, stream or not), seed, prompt and JSON payload.

Plain Python, no Locust import: the users (ftlocust/users.py) build every request from here, and
tests or other tools can build the same requests without Locust.

- `KINDS`: completion, completion-stream, chat, chat-stream; `kind_for_mix(seed)` picks one per
  request for the "mix" endpoint (weighted, reproducible from the seed).
- `request_seed(client_id, seq)`: the integer `seed` sent with a request; the reference
  deployment derives token i from (seed, i).
- `build_prompt(n, seed)`: about n tokens (the seed, then common one-token words).
- `build_payload(...)`: `max_tokens`, `ignore_eos: true`, `seed`, and for streams
  `stream_options: {include_usage, continuous_usage_stats}` — the latter makes vLLM, SGLang,
  TRT-LLM and Dynamo report the cumulative `usage` on every chunk, which is how a stream that
  packs several tokens into one chunk is counted right (ftlocust/responses.py). Servers that do
  not know it ignore a field inside `stream_options` (Dynamo 1.6.1 and the reference deployment
  accept it; Dynamo rejects unknown *top-level* fields, so nothing else is added there).
"""

from __future__ import annotations

import functools
import zlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RequestKind:
    name: str
    path: str
    stream: bool
    chat: bool


KINDS = {
    "completion": RequestKind("completion", "/v1/completions", stream=False, chat=False),
    "completion-stream": RequestKind("completion-stream", "/v1/completions", stream=True, chat=False),
    "chat": RequestKind("chat", "/v1/chat/completions", stream=False, chat=True),
    "chat-stream": RequestKind("chat-stream", "/v1/chat/completions", stream=True, chat=True),
}

# The "mix" endpoint: weights per kind, chosen per request from its seed (reproducible).
MIX_WEIGHTS = (("chat-stream", 4), ("completion-stream", 2), ("chat", 1), ("completion", 1))
_MIX_TABLE = tuple(kind for kind, weight in MIX_WEIGHTS for _ in range(weight))

# Common English words that BPE vocabularies (GPT, Llama, Qwen…) encode as one token each.
_WORDS = (
    "the of and to in is was for that on as with by he at from his an were are which this be "
    "or has had not but first one their its new after who they have her she two been other when "
    "there all during into school time may years more most only over city some world would where "
    "later up such used many can state about national out known university united then made "
    "team him american under year while them high part well three being through both early "
    "however film season before second these people game like also war could between group "
    "since age music area name number long found main each government house several life "
    "series off well day began because best around end although four league form club held "
    "same took last home following became line family album river south north west east large "
    "small water light power place point field order water party public record history side"
).split()

STREAM_HEADERS = {"Content-Type": "application/json", "Accept": "text/event-stream", "Accept-Encoding": "identity"}
UNARY_HEADERS = {"Content-Type": "application/json", "Accept": "application/json", "Accept-Encoding": "identity"}

STREAM_OPTIONS = {"include_usage": True, "continuous_usage_stats": True}


def request_seed(client_id: str, seq: int) -> int:
    """The request's seed: deterministic from client id and sequence number, fits an int32."""
    return zlib.crc32(f"{client_id}#{seq}".encode()) & 0x7FFFFFFF


def build_prompt(n_tokens: int, seed: int) -> str:
    """About `n_tokens` tokens: the request's seed (so prefix caches cannot skip the prefill of a
    whole prompt) and then n-1 common words, each one token in usual BPE vocabularies. Word
    counts are an approximation of token counts; the server's `usage.prompt_tokens` is exact."""
    if n_tokens <= 1:
        return str(seed)
    return f"{seed} {_prompt_words(n_tokens - 1, seed % len(_WORDS))}"


@functools.lru_cache(maxsize=1024)
def _prompt_words(count: int, start: int) -> str:
    n = len(_WORDS)
    return " ".join(_WORDS[(start + i * 37) % n] for i in range(count))


def build_payload(kind: RequestKind, model: str, prompt: str, max_tokens: int, seed: int,
                  extra: dict | None = None) -> dict:
    payload: dict[str, Any] = {"model": model}
    if kind.chat:
        payload["messages"] = [{"role": "user", "content": prompt}]
    else:
        payload["prompt"] = prompt
    payload.update(max_tokens=max_tokens, ignore_eos=True, seed=seed, stream=kind.stream)
    if kind.stream:
        payload["stream_options"] = dict(STREAM_OPTIONS)
    if extra:
        payload.update(extra)
    return payload


def kind_for_mix(seed: int) -> str:
    return _MIX_TABLE[((seed * 2654435761) >> 7) % len(_MIX_TABLE)]
