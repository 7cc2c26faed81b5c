"""One finished LLM request as data (`RequestRecord`) and the JSONL request log.

Plain Python: no Locust import, so phases, checks and reports can be tested alone.
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
from dataclasses import dataclass, field
from typing import IO, Iterable, Iterator

# Outcomes of one request. Only OK counts as success; CANCELLED is on purpose and never a failure.
OK = "ok"
REJECTED = "rejected"  # HTTP 503 (load shedding / not ready)
HTTP_ERROR = "http_error"  # any other non-200 status
STREAM_ERROR_EVENT = "stream_error_event"  # {"error": ...} or an `event: error` frame inside a 200 body
TRUNCATED = "truncated"  # stream ended without [DONE] / finish_reason, or fewer tokens than expected
CONNECTION_ERROR = "connection_error"  # no response: refused, reset, closed before an answer
TIMEOUT = "timeout"
CANCELLED = "cancelled"

OUTCOMES = (OK, REJECTED, HTTP_ERROR, STREAM_ERROR_EVENT, TRUNCATED, CONNECTION_ERROR, TIMEOUT, CANCELLED)
FAILURE_OUTCOMES = tuple(o for o in OUTCOMES if o not in (OK, CANCELLED))

# Phases against the fault time T_f (see docs/ARCHITECTURE.md).
BEFORE = "before"
SPANNING = "spanning"
AFTER = "after"
PHASES = (BEFORE, SPANNING, AFTER)


@dataclass
class RequestRecord:
    """Everything the client saw of one LLM request. Times: wall clock (epoch s) and monotonic."""

    kind: str  # completion | completion-stream | chat | chat-stream
    endpoint: str  # /v1/completions | /v1/chat/completions
    stream: bool
    model: str = ""
    client_id: str = ""  # "<locust worker>/<user index>"
    locust_worker: str = ""
    request_id: str | None = None  # server id: the uuid of "cmpl-<uuid>" / "chatcmpl-<uuid>"
    seq: int = 0  # n-th request of this client, from 1
    seed: int | None = None  # sent to the server; reference-deployment tokens derive from it
    start_wall: float = 0.0
    start_mono: float = 0.0
    first_token_wall: float | None = None
    first_token_mono: float | None = None
    end_wall: float = 0.0
    end_mono: float = 0.0
    latency_s: float | None = None
    ttft_s: float | None = None  # to the first content chunk (text, content or reasoning)
    # inter-chunk latencies: between content chunks (a chunk may carry several tokens)
    itl_mean_s: float | None = None
    itl_p50_s: float | None = None
    itl_max_s: float | None = None
    # Output tokens, counted (streams, see ftlocust/responses.py): by the server's per-chunk token
    # information (cumulative usage on every chunk, token_ids / logprobs lists), else one per
    # content chunk (reasoning included). Non-stream: usage.completion_tokens, else words.
    # The expected-tokens check and the token statistics use this figure.
    output_tokens: int = 0
    token_source: str | None = None  # how: chunk-usage | token-lists | chunks | usage | words
    content_chunks: int = 0  # streams: chunks that carried content (text, content, reasoning)
    usage_prompt_tokens: int | None = None  # as the server reported them (its last usage object)
    usage_completion_tokens: int | None = None
    token_count_mismatch: str | None = None  # streams: "stream 25 vs usage 100" when they disagree
    expected_tokens: int | None = None  # max_tokens when ignore_eos was sent
    finish_reason: str | None = None
    status: int | None = None  # HTTP status, None when no response came
    outcome: str = OK
    error: str | None = None
    # resent once on a new connection: the kept-alive connection was closed by the server before
    # any byte of the answer came back (the server never processed the request)
    retries: int = 0
    cancel_policy: str | None = None  # the policy that cancelled it, e.g. "after-chunks:5"
    token_check: str | None = None  # reference deployment: "ok" or what broke continuity
    phase: str | None = None  # before | spanning | after, None while no fault happened
    extra: dict = field(default_factory=dict)

    @property
    def succeeded(self) -> bool:
        return self.outcome == OK

    @property
    def failed(self) -> bool:
        return self.outcome in FAILURE_OUTCOMES

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "RequestRecord":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


class RequestLog:
    """Append-only JSONL file, one line per finished request, flushed and fsync-free per line.

    Flushing per line means a SIGTERM or crash loses nothing already finished.
    Safe across greenlets and threads of one process.
    """

    def __init__(self, path: str):
        self.path = path
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self._lock = threading.Lock()
        self._file: IO[str] | None = open(path, "a", encoding="utf-8", buffering=1)
        self.count = 0

    def write(self, record: RequestRecord | dict) -> None:
        data = record.to_dict() if isinstance(record, RequestRecord) else record
        line = json.dumps(data, separators=(",", ":"), default=str) + "\n"
        with self._lock:
            if self._file is None:
                return
            self._file.write(line)
            self._file.flush()
            self.count += 1

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


def read_records(path: str) -> list[RequestRecord]:
    return list(iter_records(path))


def iter_records(path: str) -> Iterator[RequestRecord]:
    """Read a request log; a torn last line (the run was killed mid-write) is skipped."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                yield RequestRecord.from_dict(json.loads(line))
            except (json.JSONDecodeError, TypeError):
                continue


def write_records(path: str, records: Iterable[RequestRecord]) -> None:
    log = RequestLog(path)
    try:
        for r in records:
            log.write(r)
    finally:
        log.close()
