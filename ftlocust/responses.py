"""Reading one LLM response and deciding what happened: bytes and timestamps in, a record out.

Plain Python, no Locust or gevent import, so every shape a server sends can be tested alone
(tests/unit/test_responses.py, recorded streams in tests/unit/streams/).

- `StreamReader(chat)`: an incremental SSE reader, fed one line at a time with the time it was
  read (`feed(line, now)`, True when the line was a content chunk). It understands
  - `data: {...}` chunks (OpenAI, vLLM, SGLang, TRT-LLM, Dynamo), `data: [DONE]`;
  - content in `text` (completions), `delta.content` and the reasoning deltas
    `delta.reasoning_content` / `delta.reasoning` (chat): reasoning counts for TTFT and tokens;
  - error objects in a 200 stream (`{"error": {...}}`, vLLM/SGLang's `{"object": "error", ...}`)
    and `event: error` frames, whatever their data (`{"error": ...}`, `{"message": ..., "code":
    ...}`, plain text) or none at all (Dynamo puts the message on a `: <message>` comment line);
  - `: ping` comments and other SSE fields (ignored), usage-only chunks (`choices: []`).
- `read_unary(body, chat)`: the same for a non-stream JSON body.
- `classify(record, read, ...)`: the outcome and error (docs/ARCHITECTURE.md "Success"), then
  tokens, TTFT and inter-chunk latencies on the `RequestRecord`.
- `token_check(record, read)`: the reference deployment's token continuity.

Tokens are counted from the stream, not taken from `usage` (see `StreamReader.counted_tokens`):
the server's per-chunk token information where it sends one — the cumulative `usage` on every
chunk (`continuous_usage_stats`, asked for by ftlocust/payloads.py), else `token_ids` or
logprobs lists — and otherwise one token per content chunk. The final `usage` is recorded as
reported; a disagreement is recorded in `token_count_mismatch`.

Hot path: `feed` is one call per line; a content chunk costs one `json.loads` and a few dict
lookups, nothing per token.
"""

from __future__ import annotations

import json
import json.scanner
from typing import Any

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

# Load shedding: 503 (Service Unavailable, also "not ready") and Dynamo's 529 (Overloaded, seen
# with --active-decode-blocks-threshold on Dynamo 1.6.1).
REJECTION_STATUSES = (503, 529)

# token_source values
FROM_CHUNK_USAGE = "chunk-usage"  # cumulative usage.completion_tokens on every chunk
FROM_TOKEN_LISTS = "token-lists"  # token_ids / logprobs per chunk
FROM_CHUNKS = "chunks"  # one token per content chunk
FROM_USAGE = "usage"  # non-stream: the body's usage.completion_tokens
FROM_WORDS = "words"  # non-stream without usage: words of the text

# the C scanner behind json.loads, called directly: json.loads on bytes also sniffs the encoding
# and runs two regexes per call, a quarter of the reader's time on short chunks
_scan = json.scanner.make_scanner(json.JSONDecoder())

# `event: error` seen, its data or comment not yet: replaced by whatever the frame says next
_ERROR_EVENT = {"message": "event: error"}


def one_line(text: Any, limit: int = 160) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def error_message(body: bytes | str | None) -> str:
    """The server's error message from an OpenAI-style error body, else the start of the body."""
    if not body:
        return "empty body"
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    try:
        obj = json.loads(text)
    except ValueError:
        return one_line(text, 120)
    if isinstance(obj, dict):
        err = obj.get("error", obj)
        if isinstance(err, dict):
            for key in ("message", "detail", "msg"):
                if err.get(key):
                    return one_line(err[key], 120)
        elif err:
            return one_line(err, 120)
    return one_line(text, 120)


def describe_error(error: Any) -> str:
    if isinstance(error, dict):
        message = error.get("message") or error.get("detail") or json.dumps(error)
        code = error.get("code")
        return one_line(f"{message} (code {code})" if code is not None else message, 160)
    return one_line(error, 160)


def request_id(raw: Any) -> str | None:
    """The server's request id: the uuid of "cmpl-<uuid>" / "chatcmpl-<uuid>" (Dynamo's log key)."""
    if not raw:
        return None
    rid = str(raw)
    return rid.split("-", 1)[1] if rid.startswith(("cmpl-", "chatcmpl-")) else rid


class ResponseRead:
    """What was seen of one response body."""

    __slots__ = ("chat", "done", "finish_reason", "usage", "rid", "error", "error_event", "protocol_error",
                 "status_message", "times", "texts", "text", "extra_tokens", "listed_tokens", "usage_tokens",
                 "usage_streamed", "_cum", "_in_error")

    def __init__(self, chat: bool, keep_texts: bool = False) -> None:
        self.chat = chat
        self.done = False  # saw data: [DONE]
        self.finish_reason: str | None = None
        self.usage: dict | None = None  # the last usage object: the server's report
        self.rid: str | None = None
        self.error: Any = None  # an error object / message in the body, an SSE event or frame
        self.error_event = False  # it came as an `event: error` frame
        self.protocol_error: str | None = None  # not JSON / not an object
        self.status_message: str | None = None  # non-200: the message of the error body
        self.times: list[float] = []  # arrival of each content chunk (text, content or reasoning)
        self.texts: list[str] | None = [] if keep_texts else None  # content texts, for continuity
        self.text: str | None = None  # non-stream: the whole generated text
        self.extra_tokens = 0  # tokens beyond one per content chunk, from token_ids / logprobs
        self.listed_tokens = False  # some chunk listed its tokens
        self.usage_tokens = 0  # tokens by the per-chunk cumulative usage (sum of its increments)
        self.usage_streamed = False  # usage came on a chunk before the last, or on the first: continuous usage
        self._cum = 0
        self._in_error = False  # inside an `event: error` frame (until its blank line)

    @property
    def chunks(self) -> int:
        return len(self.times)

    def counted_tokens(self) -> tuple[int, str]:
        """Output tokens counted from the stream, and how (FROM_* constant)."""
        if self.usage_streamed:
            return self.usage_tokens, FROM_CHUNK_USAGE
        if self.listed_tokens:
            return len(self.times) + self.extra_tokens, FROM_TOKEN_LISTS
        return len(self.times), FROM_CHUNKS


class StreamReader(ResponseRead):
    """An SSE response read incrementally: `feed(line, now)` per line, in order."""

    __slots__ = ()

    def feed(self, line: bytes, now: float) -> bool:
        """One line (with its line end) read at `now`. True when it was a content chunk."""
        if line[:5] != b"data:":
            if line != b"\n" or self._in_error:
                self._other(line)
            return False
        if self._in_error:
            self._error_detail(line[5:])
            return False
        data = line[5:].strip()
        if data == b"[DONE]":
            self.done = True
            return False
        try:
            text = data.decode()
            obj, end = _scan(text, 0)
            bad = end != len(text)
        except (ValueError, StopIteration):  # StopIteration: no JSON value at all
            bad = True
        if bad:
            self.protocol_error = f"SSE event is not JSON: {one_line(data.decode('utf-8', 'replace'), 60)!r}"
            return False
        if type(obj) is not dict:
            self.protocol_error = "SSE event is not a JSON object"
            return False
        choices = obj.get("choices")
        if obj.get("error") is not None or (not choices and obj.get("object") == "error"):
            self.error = obj.get("error") or obj
            return False
        if self.rid is None:
            self.rid = obj.get("id")
        usage = obj.get("usage")
        counted_here = False
        if usage and type(usage) is dict:
            self.usage = usage
            cum = usage.get("completion_tokens") if choices else None
            if type(cum) is int:  # usage on a chunk with choices: the server's count so far
                # a figure below the last one: the count started over (e.g. a migrated stream)
                self.usage_tokens += cum - self._cum if cum >= self._cum else cum
                self._cum = cum
                counted_here = True
                if type(choices[0]) is dict and not choices[0].get("finish_reason"):
                    self.usage_streamed = True  # not just a final report on the last chunk
        if not choices:
            return False
        choice = choices[0]
        finish = choice.get("finish_reason")
        if finish:
            self.finish_reason = finish
        if self.chat:
            delta = choice.get("delta")
            if not delta:
                return False
            content = delta.get("content")
            if not content and not (delta.get("reasoning_content") or delta.get("reasoning")):
                return False  # the role-only first delta, an empty or a tool delta
        else:
            content = choice.get("text")
            if not content:
                return False
        self.times.append(now)
        if counted_here and len(self.times) == 1:
            # The first content chunk carries the count so far: a real engine whose reader
            # lagged sends several tokens in one chunk (vLLM merges them), even all of them in
            # the only one. Continuous usage or a final report, it counts that chunk's tokens.
            self.usage_streamed = True
        if content and self.texts is not None:
            self.texts.append(content)
        listed = choice.get("token_ids")
        if listed is None:
            logprobs = choice.get("logprobs")
            if logprobs and type(logprobs) is dict:
                listed = logprobs.get("content" if self.chat else "tokens")
        if listed and type(listed) is list:
            self.extra_tokens += len(listed) - 1
            self.listed_tokens = True
        return True

    def _other(self, line: bytes) -> None:
        """Lines other than data: the blank line ending an event, `event:`, comments, id/retry."""
        text = line.strip()
        if not text:
            self._in_error = False
        elif text[:6] == b"event:":
            if text[6:].strip() == b"error":
                self._in_error = True
                self.error_event = True
                if self.error is None:
                    self.error = _ERROR_EVENT
        elif text[:1] == b":" and self._in_error:
            self._error_detail(text[1:])  # Dynamo: `event: error` then `: <message>`

    def _error_detail(self, raw: bytes) -> None:
        raw = raw.strip()
        if not raw or self.error is not _ERROR_EVENT:
            return
        try:
            detail = json.loads(raw)
        except ValueError:
            detail = raw.decode("utf-8", "replace")
        if isinstance(detail, dict):
            detail = detail.get("error") or detail
        self.error = detail or _ERROR_EVENT


def read_unary(body: bytes, chat: bool) -> ResponseRead:
    """A non-stream JSON body."""
    read = ResponseRead(chat)
    try:
        obj = json.loads(body)
    except ValueError:
        read.protocol_error = f"body is not JSON: {one_line(body.decode('utf-8', 'replace'), 60)!r}"
        return read
    if type(obj) is not dict:
        read.protocol_error = "body is not a JSON object"
        return read
    if obj.get("error") is not None or obj.get("object") == "error":
        read.error = obj.get("error") or obj
        return read
    read.rid = obj.get("id")
    choices = obj.get("choices")
    if choices and isinstance(choices[0], dict):
        choice = choices[0]
        if chat:
            message = choice.get("message") or {}
            read.text = message.get("content") if isinstance(message, dict) else None
        else:
            read.text = choice.get("text")
        read.finish_reason = choice.get("finish_reason")
    usage = obj.get("usage")
    if isinstance(usage, dict):
        read.usage = usage
    return read


def classify(record: RequestRecord, read: ResponseRead, *, ended: str | None = None,
             failure: BaseException | None = None, timed_out: bool = False,
             cancel_policy: str | None = None, timeout_s: float | None = None) -> RequestRecord:
    """Fill the record's outcome, error, finish_reason, tokens, TTFT and ITL from `read`.

    Needs `record.status` (None: no response came) and `record.start_mono`/`start_wall` (the
    clock of `read.times`). `ended`: CANCELLED or TIMEOUT when the client ended the request on
    purpose (`cancel_policy` names the policy, `timeout_s` the limit). `failure`: the exception
    that ended it otherwise — with no response the connection failed (`timed_out`: by a timeout),
    else the body broke off.
    """
    status = record.status or 0
    # What the server said before we ended a request ourselves wins: a 503 or an error event
    # seen before the cancel/timeout is the result, not the cancel.
    if status in REJECTION_STATUSES:
        record.outcome, record.error = REJECTED, f"HTTP {status}: {read.status_message or ''}".rstrip(": ")
    elif status and status != 200:
        record.outcome, record.error = HTTP_ERROR, f"HTTP {status}: {read.status_message or ''}".rstrip(": ")
    elif read.error is not None:
        where = "`event: error` frame in a 200 stream" if read.error_event else "error object in a 200 body"
        record.outcome, record.error = STREAM_ERROR_EVENT, f"{where}: {describe_error(read.error)}"
    elif ended == CANCELLED:
        record.outcome, record.cancel_policy, record.error = CANCELLED, cancel_policy, None
    elif ended == TIMEOUT:
        record.outcome = TIMEOUT
        record.error = f"no complete answer within --ft-request-timeout {timeout_s:g} s"
    elif not status:
        record.outcome = TIMEOUT if timed_out else CONNECTION_ERROR
        record.error = one_line(f"{type(failure).__name__}: {failure}" if failure else "no response", 200)
    elif failure is not None:
        record.outcome = TRUNCATED
        record.error = one_line(f"body broke off: {type(failure).__name__}: {failure}", 200)
    elif read.protocol_error is not None:
        record.outcome, record.error = HTTP_ERROR, read.protocol_error
    elif record.stream and not read.done:
        record.outcome, record.error = TRUNCATED, "stream ended without [DONE]"
    elif not read.finish_reason:
        record.outcome, record.error = TRUNCATED, "no finish_reason"
    else:
        record.outcome = OK
    record.finish_reason = read.finish_reason
    _fill_tokens(record, read)
    _fill_times(record, read.times)
    if record.outcome == OK and record.expected_tokens and record.output_tokens < record.expected_tokens:
        record.outcome = TRUNCATED
        said = f"; usage says {record.usage_completion_tokens}" if record.token_count_mismatch else ""
        record.error = f"{record.output_tokens} of {record.expected_tokens} tokens (ignore_eos was sent{said})"
    return record


def _fill_tokens(record: RequestRecord, read: ResponseRead) -> None:
    usage = read.usage
    if usage:
        record.usage_prompt_tokens = usage.get("prompt_tokens")
        record.usage_completion_tokens = usage.get("completion_tokens")
    if read.rid:
        record.request_id = request_id(read.rid)
    reported = record.usage_completion_tokens
    if record.stream:
        record.content_chunks = len(read.times)
        record.output_tokens, record.token_source = read.counted_tokens()
        if type(reported) is int and reported != record.output_tokens:
            record.token_count_mismatch = f"stream {record.output_tokens} vs usage {reported}"
    elif type(reported) is int:
        record.output_tokens, record.token_source = reported, FROM_USAGE
    elif read.text and record.status == 200:
        record.output_tokens, record.token_source = len(read.text.split()), FROM_WORDS


def _fill_times(record: RequestRecord, times: list[float]) -> None:
    if not times:
        return
    ttft = times[0] - record.start_mono
    record.ttft_s = ttft
    record.first_token_mono = times[0]
    record.first_token_wall = record.start_wall + ttft
    if len(times) > 1:
        gaps = sorted(b - a for a, b in zip(times, times[1:]))
        record.itl_mean_s = (times[-1] - times[0]) / (len(times) - 1)
        mid = len(gaps) // 2
        record.itl_p50_s = gaps[mid] if len(gaps) % 2 else (gaps[mid - 1] + gaps[mid]) / 2
        record.itl_max_s = gaps[-1]


def token_check(record: RequestRecord, read: ResponseRead) -> str | None:
    """Reference deployment: "ok" if the texts are the request's tokens 0..n-1 in order (any
    chunking), else what broke continuity; None when there is no text to check."""
    texts = read.texts if record.stream else ([read.text] if read.text else [])
    if not texts:
        return None
    try:
        from ftlocust.targets.reference.tokens import check_continuity

        return str(check_continuity(record.seed, texts, record.expected_tokens))
    except Exception as e:  # a checker bug must not turn into a lost request
        return one_line(f"check failed: {type(e).__name__}: {e}", 200)
