"""LLM load users: one OpenAI-style request → one `RequestRecord` → one Locust request event.

`LLMUser` (FastHttpUser, abstract) sends `--ft-endpoint` requests; the ready subclasses
`CompletionUser`, `CompletionStreamUser`, `ChatUser`, `ChatStreamUser` and `MixUser` pin the kind.
A locustfile defines (or imports) exactly the classes it wants to run — Locust runs every
non-abstract User class it finds in the locustfile's namespace.

Per request (see docs/ARCHITECTURE.md "Success" and shared/reference/locust-facts.md):
- payload: a prompt of `--ft-input-tokens` tokens, approximated by words (`build_prompt`),
  `max_tokens`, `ignore_eos: true`, an integer `seed` derived from the client id and the
  request's sequence number (the reference deployment derives token i from (seed, i)), and
  `stream_options.include_usage` for streams;
- SSE is read with geventhttpclient's `readline(b"\\n")` (incremental, cheap) until the HTTP
  message ends — never only until `[DONE]`, which would leak the connection and its pool slot;
- TTFT is taken at the first event with content, inter-token latencies between content events;
  output tokens are counted from the stream (content events) and kept from `usage` as well;
- `--ft-request-timeout` and `--ft-cancel` end a request at socket level (ftlocust/cancel.py);
- exactly one Locust `request` event per request (request_type "POST", name "<kind>" or
  "<kind> [<phase>]", end-to-end response time, response_length = output tokens, exception for
  failures, `context={"ft_record": record}`), plus a "TTFT" row unless `--ft-no-ttft-rows`.
  Users never write files: ftlocust/hooks.py turns the events into the request log.

Strict rate: no two request starts of one user are closer than 1/`--ft-rate` (a custom
wait_time plus a guard before each start; `constant_throughput` only caps the average).
Budget: after `--ft-requests-per-client` requests a user stops. The run then ends by itself: a
per-process watcher (installed by this module's `init` listener) notices when no user is
running any more after spawning completed; a LocalRunner then quits (headless) or stops (web
UI); a worker tells the master (`ft_users_done` message), and the master quits once every
worker is done.

Model: `--ft-model`, else the first id of `GET /v1/models`, discovered once per process.
`preflight(host, options)` does the same checks up front and turns bad input (unreachable host,
TLS failure, not an OpenAI server, no or unknown model, a 4xx for our payload) into one
`ConfigError` line; `run_preflight(environment)` is the `init` listener form of it.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import socket
import sys
import time
import warnings
import zlib
from dataclasses import dataclass
from typing import Any

import gevent
import gevent.lock
from locust import events, task
from locust.contrib.fasthttp import FastHttpUser
from locust.exception import StopUser
from locust.runners import STATE_SPAWNING, MasterRunner, WorkerRunner

from ftlocust import cancel as cancel_mod
from ftlocust.cancel import TRACKER, CancelPolicy, InFlight
from ftlocust.errors import ConfigError
from ftlocust.options import LoadOptions
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

log = logging.getLogger("ftlocust.users")

# Load shedding: 503 (Service Unavailable, also "not ready") and Dynamo's 529 (Overloaded, seen
# with --active-decode-blocks-threshold on Dynamo 1.6.1).
REJECTION_STATUSES = (503, 529)


# --- request kinds and payloads ---------------------------------------------------------------


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
        payload["stream_options"] = {"include_usage": True}
    if extra:
        payload.update(extra)
    return payload


def kind_for_mix(seed: int) -> str:
    return _MIX_TABLE[((seed * 2654435761) >> 7) % len(_MIX_TABLE)]


# --- optional collaborators (imported lazily, tolerated when absent) ---------------------------

_MISSING = object()
_timeline: Any = None
_tokens: Any = None


def _phase_timeline() -> Any:
    global _timeline
    if _timeline is None:
        try:
            from ftlocust.phases import TIMELINE

            _timeline = TIMELINE
        except Exception:
            _timeline = _MISSING
    return None if _timeline is _MISSING else _timeline


def _tokens_module() -> Any:
    global _tokens
    if _tokens is None:
        try:
            from ftlocust.targets.reference import tokens

            _tokens = tokens if hasattr(tokens, "check_continuity") else _MISSING
        except Exception:
            _tokens = _MISSING
    return None if _tokens is _MISSING else _tokens


REFERENCE_MODEL_PREFIX = "ftlocust-ref"


def verify_tokens_enabled(setting: str, model: str) -> bool:
    """`--ft-verify-tokens`: on/off, or auto = the server is the reference deployment."""
    if setting == "off":
        return False
    if setting == "auto" and not model.startswith(REFERENCE_MODEL_PREFIX):
        return False
    return _tokens_module() is not None


# --- preflight and model discovery --------------------------------------------------------------


def _one_line(text: Any, limit: int = 160) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _error_message(body: bytes | str | None) -> str:
    """The server's error message from an OpenAI-style error body, else the start of the body."""
    if not body:
        return "empty body"
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    try:
        obj = json.loads(text)
    except ValueError:
        return _one_line(text, 120)
    if isinstance(obj, dict):
        err = obj.get("error", obj)
        if isinstance(err, dict):
            for key in ("message", "detail", "msg"):
                if err.get(key):
                    return _one_line(err[key], 120)
        elif err:
            return _one_line(err, 120)
    return _one_line(text, 120)


def _http(method: str, url: str, timeout_s: float, body: dict | None = None):
    """One plain HTTP call for preflight (requests; cooperative under Locust's gevent patching).
    Certificates are not verified, like FastHttpUser's default `insecure=True`."""
    import requests
    import urllib3

    session = requests.Session()
    session.trust_env = False  # proxies from the environment would not apply to the users either
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", urllib3.exceptions.InsecureRequestWarning)
        try:
            return session.request(method, url, json=body, timeout=(min(10.0, timeout_s), timeout_s), verify=False)
        finally:
            session.close()


def _describe_connect_error(host: str, what: str, exc: Exception, timeout_s: float) -> ConfigError:
    import requests

    if isinstance(exc, requests.exceptions.SSLError):
        inner = exc.args[0] if exc.args else exc
        reason = getattr(inner, "reason", None) or inner
        return ConfigError(f"--host {host}: TLS handshake failed on {what} ({_one_line(reason, 100)})")
    if isinstance(exc, requests.exceptions.Timeout):
        return ConfigError(f"--host {host}: no answer to {what} within {timeout_s:g} s")
    text = str(exc)
    if "refused" in text.lower():
        reason = "connection refused"
    elif "Name or service not known" in text or "nodename nor servname" in text or "getaddrinfo" in text:
        reason = "unknown host name"
    else:
        reason = _one_line(text, 100)
    return ConfigError(f"--host {host}: cannot connect for {what} ({reason})")


def _check_host(host: str | None) -> str:
    if not host or not str(host).startswith(("http://", "https://")):
        raise ConfigError(f"--host: expected the server's base URL like http://127.0.0.1:8000, got {host!r}")
    return str(host).rstrip("/")


def fetch_models(host: str, timeout_s: float = 10.0) -> list[str]:
    """The model ids `GET <host>/v1/models` lists. ConfigError (one line) for every way it fails."""
    import requests

    host = _check_host(host)
    what = "GET /v1/models"
    try:
        resp = _http("GET", host + "/v1/models", timeout_s)
    except requests.exceptions.RequestException as e:
        raise _describe_connect_error(host, what, e, timeout_s) from None
    if resp.status_code != 200:
        raise ConfigError(f"--host {host}: {what} answered HTTP {resp.status_code} ({_error_message(resp.content)}); "
                          f"expected 200 with an OpenAI model list")
    try:
        data = resp.json()
    except ValueError:
        ctype = resp.headers.get("content-type", "?").split(";")[0]
        raise ConfigError(f"--host {host}: {what} did not return JSON (got {ctype}: {_one_line(resp.text, 60)!r}); "
                          f"is this an OpenAI-compatible server?") from None
    entries = data.get("data") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not all(isinstance(m, dict) and isinstance(m.get("id"), str) for m in entries):
        raise ConfigError(f"--host {host}: {what} is not an OpenAI model list "
                          f"(expected {{\"data\": [{{\"id\": ...}}]}}, got {_one_line(resp.text, 60)!r})")
    if not entries:
        raise ConfigError(f"--host {host}: {what} lists no models (is a worker registered?)")
    return [m["id"] for m in entries]


def choose_model(host: str, wanted: str | None, available: list[str]) -> str:
    if wanted:
        if wanted not in available:
            raise ConfigError(f"--ft-model {wanted}: not served by {host} (it serves: {', '.join(available[:5])})")
        return wanted
    if len(available) > 1:
        log.info("%s serves %d models; using %s (choose with --ft-model)", host, len(available), available[0])
    return available[0]


def _kinds_of(endpoint: str) -> list[str]:
    return list(KINDS) if endpoint == "mix" else [endpoint]


def probe(host: str, options: LoadOptions, model: str) -> None:
    """One tiny request per kind the run will send, with the run's payload shape: a 4xx (our
    payload is not accepted, unknown model) becomes one ConfigError line. 5xx/503 are left to
    the load (the server may be busy)."""
    import requests

    host = _check_host(host)
    for name in _kinds_of(options.endpoint):
        kind = KINDS[name]
        payload = build_payload(kind, model, build_prompt(min(options.input_tokens, 8), 0), 1, 0)
        what = f"POST {kind.path} ({name})"
        try:
            resp = _http("POST", host + kind.path, options.request_timeout_s, payload)
        except requests.exceptions.RequestException as e:
            raise _describe_connect_error(host, what, e, options.request_timeout_s) from None
        if 400 <= resp.status_code < 500:
            raise ConfigError(f"--host {host}: {what} answered HTTP {resp.status_code}: {_error_message(resp.content)}")


_models: dict[tuple[str, str | None], str] = {}
_model_lock = gevent.lock.Semaphore()


def preflight(host: str | None, options: LoadOptions, probe_requests: bool = True) -> str:
    """Check the target before any load; return the model id the users will request.

    Raises ConfigError with one line naming what is wrong. Reusable from hooks (e.g. at
    test_start, after an embedded target is up). With `probe_requests`, sends one tiny request
    per request kind (these count in the server's own metrics)."""
    host = _check_host(host)
    model = choose_model(host, options.model, fetch_models(host, min(options.request_timeout_s, 30.0)))
    if probe_requests:
        probe(host, options, model)
    _models[(host, options.model)] = model
    return model


def model_for(host: str, options: LoadOptions) -> str:
    """The model for this host, discovered once per process (users of one process share it).
    With `--ft-model` given no request is made (preflight on the master checked it)."""
    host = _check_host(host)
    if options.model:
        return options.model
    key = (host, None)
    if key not in _models:
        with _model_lock:
            if key not in _models:
                _models[key] = choose_model(host, None, fetch_models(host, min(options.request_timeout_s, 30.0)))
    return _models[key]


# --- reading one response -----------------------------------------------------------------------


class _Read:
    """What was seen of one response body."""

    __slots__ = ("done", "finish_reason", "usage", "rid", "error_obj", "protocol_error", "read_error",
                 "token_times", "texts", "text")

    def __init__(self, keep_texts: bool) -> None:
        self.done = False  # saw data: [DONE]
        self.finish_reason: str | None = None
        self.usage: dict | None = None
        self.rid: str | None = None
        self.error_obj: Any = None  # an {"error": ...} object in the body or an event
        self.protocol_error: str | None = None  # not JSON / not an object
        self.read_error: BaseException | None = None  # the body broke off
        self.token_times: list[float] = []
        self.texts: list[str] | None = [] if keep_texts else None
        self.text: str | None = None  # non-stream: the whole generated text


def _is_error_object(obj: dict) -> bool:
    return obj.get("error") is not None or obj.get("object") == "error"


def read_stream(ghc: Any, chat: bool, seen: _Read, inflight: InFlight, cancel_after_chunks: int,
                on_content: Any = None) -> None:
    """Read SSE events until the HTTP message ends (or the policy cancels after N chunks).
    `on_content(chunks, raw_id)`, when given, is called after each content event."""
    readline = ghc.readline
    loads = json.loads
    perf = time.perf_counter
    times = seen.token_times
    texts = seen.texts
    while True:
        line = readline(b"\n")
        if not line:
            break
        if not line.startswith(b"data:"):
            continue  # blank separators, ": keep-alive" comments, "event:" lines
        data = line[5:].strip()
        if data == b"[DONE]":
            seen.done = True
            continue
        now = perf()
        try:
            obj = loads(data)
        except ValueError:
            seen.protocol_error = f"SSE event is not JSON: {_one_line(data.decode('utf-8', 'replace'), 60)!r}"
            continue
        if type(obj) is not dict:
            seen.protocol_error = "SSE event is not a JSON object"
            continue
        if _is_error_object(obj):
            seen.error_obj = obj.get("error") or obj
            continue
        if seen.rid is None:
            seen.rid = obj.get("id")
        choices = obj.get("choices")
        if choices:
            choice = choices[0]
            if chat:
                delta = choice.get("delta")
                content = delta.get("content") if delta else None
            else:
                content = choice.get("text")
            if content:
                times.append(now)
                if texts is not None:
                    texts.append(content)
                if on_content is not None:
                    on_content(len(times), seen.rid)
                if cancel_after_chunks and len(times) >= cancel_after_chunks:
                    inflight.cancel_now(ghc)
                    return
            finish = choice.get("finish_reason")
            if finish:
                seen.finish_reason = finish
        usage = obj.get("usage")
        if usage:
            seen.usage = usage
    inflight.finished = True  # the message ended: no timer may mark it any more


def read_unary(body: bytes, chat: bool, seen: _Read) -> None:
    try:
        obj = json.loads(body)
    except ValueError:
        seen.protocol_error = f"body is not JSON: {_one_line(body.decode('utf-8', 'replace'), 60)!r}"
        return
    if type(obj) is not dict:
        seen.protocol_error = "body is not a JSON object"
        return
    if _is_error_object(obj):
        seen.error_obj = obj.get("error") or obj
        return
    seen.rid = obj.get("id")
    choices = obj.get("choices")
    if choices and isinstance(choices[0], dict):
        choice = choices[0]
        if chat:
            message = choice.get("message") or {}
            seen.text = message.get("content") if isinstance(message, dict) else None
        else:
            seen.text = choice.get("text")
        seen.finish_reason = choice.get("finish_reason")
    usage = obj.get("usage")
    if isinstance(usage, dict):
        seen.usage = usage


def _request_id(raw: Any) -> str | None:
    """The server's request id: the uuid of "cmpl-<uuid>" / "chatcmpl-<uuid>" (Dynamo's log key)."""
    if not raw:
        return None
    rid = str(raw)
    return rid.split("-", 1)[1] if rid.startswith(("cmpl-", "chatcmpl-")) else rid


def _describe_error(error_obj: Any) -> str:
    if isinstance(error_obj, dict):
        message = error_obj.get("message") or error_obj.get("detail") or json.dumps(error_obj)
        code = error_obj.get("code")
        return _one_line(f"{message} (code {code})" if code is not None else message, 160)
    return _one_line(error_obj, 160)


def _is_timeout(exc: BaseException | None) -> bool:
    """A timeout of geventhttpclient's own (backstop) timers, possibly wrapped in RetriesExceeded."""
    for _ in range(5):
        if exc is None:
            return False
        if isinstance(exc, (socket.timeout, TimeoutError, gevent.Timeout)):
            return True
        exc = getattr(exc, "original", None) or exc.__cause__
    return False


class LLMRequestFailure(Exception):
    """The exception of a failed LLM request's Locust event: "<outcome>: <what happened>"."""


# --- the users ----------------------------------------------------------------------------------


class LLMUser(FastHttpUser):
    """Sends OpenAI-style requests of one kind (or the mix) under a strict per-user rate."""

    abstract = True
    kind: str | None = None  # a fixed request kind; None: --ft-endpoint
    load_options: LoadOptions | None = None  # set to bypass the flags (tests, programmatic runs)
    extra_body: dict | None = None  # merged into every payload (e.g. test-server knobs)
    cancel: str | None = None  # a cancel policy for this class ("after-chunks:5"); None: --ft-cancel

    _user_numbers = itertools.count()

    def __init__(self, environment) -> None:
        self._fatal: str | None = None
        try:
            self.options = self.load_options or LoadOptions.from_parsed(getattr(environment, "parsed_options", None))
        except ConfigError as e:
            self._fatal = str(e)
            self.options = LoadOptions()
        # geventhttpclient's own timeouts only back up our socket-level deadline
        self.network_timeout = self.connection_timeout = self.options.request_timeout_s + 5.0
        super().__init__(environment)
        runner = environment.runner
        if isinstance(runner, WorkerRunner):
            self.locust_worker = f"worker-{runner.worker_index}"
        else:
            self.locust_worker = "local"
        self.user_number = next(self._user_numbers)
        self.client_id = f"{self.locust_worker}/{self.user_number}"
        self._class_cancel: CancelPolicy | None = None
        try:
            self._class_cancel = CancelPolicy.parse(self.cancel) if self.cancel else None
        except ConfigError as e:
            self._fatal = f"{type(self).__name__}.cancel: {e}"
        self.model = self.options.model or ""
        self.verify_tokens = False
        self.seq = 0
        self._next_start = 0.0  # perf_counter time before which no request may start

    # -- lifecycle -------------------------------------------------------------------------------
    def on_start(self) -> None:
        if self._fatal is not None:
            return
        try:
            self.model = model_for(self.host, self.options)
        except ConfigError as e:
            self._fatal = str(e)
            return
        TRACKER.install(self.client, self.client._build_url("/"))
        self.verify_tokens = verify_tokens_enabled(self.options.verify_tokens, self.model)

    def wait_time(self) -> float:
        return max(0.0, self._next_start - time.perf_counter())

    @task
    def send_next(self) -> None:
        if self._fatal is not None:
            _abort_run(self.environment, self._fatal)
            raise StopUser()
        budget = self.options.requests_per_client
        if budget and self.seq >= budget:
            raise StopUser()
        kind = self.kind or self.options.endpoint
        if kind == "mix":
            kind = kind_for_mix(request_seed(self.client_id, self.seq + 1))
        self.llm_request(kind)
        if budget and self.seq >= budget:
            raise StopUser()  # done: don't sit out one more wait_time first

    # -- one request -----------------------------------------------------------------------------
    def on_content(self, chunks: int, request_id: str | None) -> None:
        """Called after each content event of a stream with the count so far and the server's
        request id (e.g. for a mid-stream trigger). Only when a subclass overrides it: the
        default costs nothing per token."""

    def llm_request(self, kind: str, max_tokens: int | None = None) -> RequestRecord:
        """Send one request of `kind`, fire its Locust event(s), return its record.
        `max_tokens` overrides --ft-output-tokens for this request (e.g. one long probe stream)."""
        spec = KINDS[kind]
        opts = self.options
        max_tokens = max_tokens or opts.output_tokens
        self._respect_rate()
        self.seq += 1
        seed = request_seed(self.client_id, self.seq)
        payload = build_payload(spec, self.model, build_prompt(opts.input_tokens, seed), max_tokens, seed,
                                self.extra_body)
        data = json.dumps(payload, separators=(",", ":"))
        record = RequestRecord(kind=kind, endpoint=spec.path, stream=spec.stream, model=self.model,
                               client_id=self.client_id, locust_worker=self.locust_worker, seq=self.seq,
                               seed=seed, expected_tokens=max_tokens)
        cancel = self._class_cancel or opts.cancel
        policy = cancel if cancel.applies(seed, spec.stream) else None
        seen = _Read(keep_texts=self.verify_tokens)
        inflight = InFlight()
        resp = None
        failure: BaseException | None = None
        TRACKER.begin(inflight)
        record.start_wall = time.time()
        t0 = record.start_mono = time.perf_counter()
        self._next_start = t0 + opts.min_interval_s
        timers = [cancel_mod.deadline(opts.request_timeout_s, inflight)]
        if policy is not None:
            delay = policy.timer_delay_s(spec.stream)
            if delay is not None:
                timers.append(cancel_mod.cancel_timer(delay, inflight))
        try:
            resp = self.client.request("POST", spec.path, data=data, name=kind, stream=True, catch_response=True,
                                       headers=STREAM_HEADERS if spec.stream else UNARY_HEADERS,
                                       context={"ft_record": record})
            failure = self._read_response(resp, spec, seen, inflight, policy)
        except Exception as e:  # anything unexpected still ends as one reported request
            failure = e
        finally:
            for timer in timers:
                timer.stop()
            TRACKER.end()
            ghc = getattr(resp, "_response", None)
            if ghc is not None:
                try:
                    ghc.release()
                except Exception:
                    pass
        end = time.perf_counter()
        record.end_mono = end
        record.end_wall = record.start_wall + (end - t0)
        record.latency_s = end - t0
        status = resp.status_code if resp is not None and getattr(resp, "_response", None) is not None else 0
        record.status = status or None
        self._classify(record, seen, inflight, policy, failure, status, resp)
        self._fill_tokens(record, seen, t0)
        if self.verify_tokens and record.outcome == OK:
            record.token_check = self._check_tokens(record, seen)
        self._report(record, resp)
        return record

    def _respect_rate(self) -> None:
        # wait_time got us here about on time; gevent timers may wake a little early, so make sure
        for _ in range(100):
            remaining = self._next_start - time.perf_counter()
            if remaining <= 0:
                return
            gevent.sleep(remaining)

    def _read_response(self, resp: Any, spec: RequestKind, seen: _Read, inflight: InFlight,
                       policy: cancel_mod.CancelPolicy | None) -> BaseException | None:
        """Read the body; returns the exception that ended the request early, if any."""
        ghc = resp._response
        if ghc is None:  # no response at all (connect/send/headers failed): resp.error says why
            return getattr(resp, "error", None) or ConnectionError("no response")
        if inflight.sock is None and ghc._sock is not None:
            inflight.attach(ghc._sock)  # the pool was not tracked (e.g. on_start not run)
        if resp.status_code != 200:
            try:
                seen.text = _error_message(resp.content)
            except Exception as e:  # the error body broke off; the status says enough
                seen.text = _one_line(e, 80)
            inflight.finished = True
            return None
        try:
            if spec.stream:
                cancel_after = 0
                if policy is not None:
                    if policy.mode == cancel_mod.BEFORE_FIRST_TOKEN:
                        inflight.cancel_now(ghc)  # headers are in, no content read yet: prefill
                        return None
                    if policy.mode == cancel_mod.AFTER_CHUNKS:
                        cancel_after = int(policy.value or 1)
                # only a subclass that overrides on_content pays a call per token
                progress = None
                if type(self).on_content is not LLMUser.on_content:
                    def progress(chunks: int, raw_id: Any) -> None:
                        self.on_content(chunks, _request_id(raw_id))
                read_stream(ghc, spec.chat, seen, inflight, cancel_after, progress)
            else:
                body = ghc.read()
                inflight.finished = True
                read_unary(body, spec.chat, seen)
        except Exception as e:
            seen.read_error = e
            return e
        return None

    def _classify(self, record: RequestRecord, seen: _Read, inflight: InFlight,
                  policy: cancel_mod.CancelPolicy | None, failure: BaseException | None, status: int,
                  resp: Any) -> None:
        # What the server said before we ended a request ourselves wins: a 503 or an error event
        # seen before the cancel/timeout is the result, not the cancel.
        if status in REJECTION_STATUSES:
            record.outcome, record.error = REJECTED, f"HTTP {status}: {seen.text or ''}".rstrip(": ")
        elif status and status != 200:
            record.outcome, record.error = HTTP_ERROR, f"HTTP {status}: {seen.text or ''}".rstrip(": ")
        elif seen.error_obj is not None:
            record.outcome = STREAM_ERROR_EVENT
            record.error = f"error object in a 200 body: {_describe_error(seen.error_obj)}"
        elif inflight.reason == CANCELLED:
            record.outcome, record.cancel_policy = CANCELLED, policy.spec if policy else None
            record.error = None
        elif inflight.reason == TIMEOUT:
            record.outcome = TIMEOUT
            record.error = f"no complete answer within --ft-request-timeout {self.options.request_timeout_s:g} s"
        elif not status:
            record.outcome = TIMEOUT if _is_timeout(failure) else CONNECTION_ERROR
            record.error = _one_line(f"{type(failure).__name__}: {failure}" if failure else "no response", 200)
        elif seen.read_error is not None or failure is not None:
            err = seen.read_error or failure
            record.outcome, record.error = TRUNCATED, _one_line(f"body broke off: {type(err).__name__}: {err}", 200)
        elif seen.protocol_error is not None:
            record.outcome, record.error = HTTP_ERROR, seen.protocol_error
        elif record.stream and not seen.done:
            record.outcome, record.error = TRUNCATED, "stream ended without [DONE]"
        elif not seen.finish_reason:
            record.outcome, record.error = TRUNCATED, "no finish_reason"
        else:
            record.outcome = OK
        record.finish_reason = seen.finish_reason

    def _fill_tokens(self, record: RequestRecord, seen: _Read, t0: float) -> None:
        usage = seen.usage
        if usage:
            record.usage_prompt_tokens = usage.get("prompt_tokens")
            record.usage_completion_tokens = usage.get("completion_tokens")
        if seen.rid:
            record.request_id = _request_id(seen.rid)
        times = seen.token_times
        if record.stream:
            record.output_tokens = len(times)
        elif record.usage_completion_tokens is not None:
            record.output_tokens = int(record.usage_completion_tokens)
        elif seen.text and record.status == 200:
            record.output_tokens = len(seen.text.split())  # no usage: words approximate tokens
        if times:
            ttft = times[0] - t0
            record.ttft_s = ttft
            record.first_token_mono = times[0]
            record.first_token_wall = record.start_wall + ttft
            if len(times) > 1:
                gaps = sorted(b - a for a, b in zip(times, times[1:]))
                record.itl_mean_s = (times[-1] - times[0]) / (len(times) - 1)
                mid = len(gaps) // 2
                record.itl_p50_s = gaps[mid] if len(gaps) % 2 else (gaps[mid - 1] + gaps[mid]) / 2
                record.itl_max_s = gaps[-1]
        if record.outcome == OK and record.expected_tokens:
            produced = record.usage_completion_tokens
            if produced is None:
                produced = record.output_tokens
            if produced < record.expected_tokens:
                record.outcome = TRUNCATED
                record.error = f"{produced} of {record.expected_tokens} tokens (ignore_eos was sent)"

    def _check_tokens(self, record: RequestRecord, seen: _Read) -> str | None:
        texts = seen.texts if record.stream else ([seen.text] if seen.text else [])
        if not texts:
            return None
        try:
            return str(_tokens_module().check_continuity(record.seed, texts, record.expected_tokens))
        except Exception as e:  # a checker bug must not turn into a lost request
            return _one_line(f"check failed: {type(e).__name__}: {e}", 200)

    def _report(self, record: RequestRecord, resp: Any) -> None:
        timeline = _phase_timeline()
        phase = timeline.phase_of(record.start_wall, record.end_wall) if timeline is not None else None
        record.phase = phase
        name = f"{record.kind} [{phase}]" if phase else record.kind
        failed = record.outcome not in (OK, CANCELLED)
        exception = LLMRequestFailure(f"{record.outcome}: {record.error}") if failed else None
        meta = getattr(resp, "request_meta", None) if resp is not None else None
        if meta is None:
            meta = {"request_type": "POST", "start_time": record.start_wall,
                    "url": self.client._build_url(record.endpoint),
                    "response": None, "context": {"ft_record": record}}
        meta["context"]["ft_record"] = record
        meta.update(name=name, response_time=record.latency_s * 1000.0, response_length=record.output_tokens,
                    exception=exception)
        request_event = self.environment.events.request
        request_event.fire(**meta)
        if self.options.ttft_rows and record.ttft_s is not None:
            request_event.fire(request_type="TTFT", name=name, response_time=record.ttft_s * 1000.0,
                               response_length=0, exception=None, context={}, response=None,
                               start_time=record.start_wall, url=meta.get("url"))


class CompletionUser(LLMUser):
    kind = "completion"


class CompletionStreamUser(LLMUser):
    kind = "completion-stream"


class ChatUser(LLMUser):
    kind = "chat"


class ChatStreamUser(LLMUser):
    kind = "chat-stream"


class MixUser(LLMUser):
    kind = "mix"


# --- ending the run, and bad input at run level ------------------------------------------------

_aborted: set[str] = set()


def _abort_run(environment, line: str) -> None:
    """A user hit bad input it cannot work around (e.g. no model): say it once, end the run."""
    if line in _aborted:
        return
    _aborted.add(line)
    log.error("ftlocust: %s", line)
    runner = environment.runner
    if runner is None or isinstance(runner, WorkerRunner):
        return  # this worker's users stop; the master ends the run once every worker is done
    environment.process_exit_code = 2
    gevent.spawn(end_run, environment)


def end_run(environment) -> None:
    runner = environment.runner
    if runner is None:
        return
    if environment.web_ui is None:
        runner.quit()  # headless: the main greenlet ends, Locust runs its shutdown (quitting, exit code)
        return
    runner.stop()  # web UI: keep the results on screen…
    opts = environment.parsed_options
    if getattr(opts, "autostart", False) and getattr(opts, "autoquit", -1) != -1:
        gevent.sleep(opts.autoquit)  # …unless --autostart --autoquit S asked to quit, as after -t
        runner.quit()
        environment.web_ui.stop()


class SelfStop:
    """Ends the run when every LLM user spent its budget (see the module docstring)."""

    POLL_S = 0.2

    def __init__(self, environment) -> None:
        self.environment = environment
        self.watcher: gevent.Greenlet | None = None
        self.done_workers: set[str] = set()
        events_ = environment.events
        if isinstance(environment.runner, MasterRunner):
            environment.runner.register_message("ft_users_done", self._on_worker_done)
            events_.test_start.add_listener(lambda **_kw: self.done_workers.clear())
            events_.spawning_complete.add_listener(lambda **_kw: self._master_check())
        else:
            events_.spawning_complete.add_listener(self._start_watcher)
            events_.test_stop.add_listener(lambda **_kw: self._stop_watcher())

    def _start_watcher(self, **_kw) -> None:
        self._stop_watcher()
        self.watcher = gevent.spawn(self._watch)

    def _stop_watcher(self) -> None:
        if self.watcher is not None and self.watcher is not gevent.getcurrent():
            self.watcher.kill(block=False)
        self.watcher = None

    def _watch(self) -> None:
        runner = self.environment.runner
        while runner.user_count > 0:
            gevent.sleep(self.POLL_S)
        self.watcher = None
        if isinstance(runner, WorkerRunner):
            runner.send_message("ft_users_done", {"worker_index": runner.worker_index})
        else:
            log.info("every user spent its request budget: ending the run")
            end_run(self.environment)

    def _on_worker_done(self, environment, msg, **_kw) -> None:
        self.done_workers.add(msg.node_id)
        self._master_check()

    def _master_check(self) -> None:
        runner = self.environment.runner
        if runner.state == STATE_SPAWNING or not self.done_workers:
            return
        if len(self.done_workers) >= runner.worker_count:
            log.info("every worker's users spent their request budget: ending the run")
            self.done_workers.clear()
            gevent.spawn(end_run, self.environment)


def install_self_stop(environment) -> SelfStop:
    return SelfStop(environment)


@events.init.add_listener
def _on_init(environment, **_kw) -> None:
    if environment.runner is not None:
        install_self_stop(environment)


def run_preflight(environment, probe_requests: bool = True, **_kw) -> None:
    """`init` listener form of `preflight` for a locustfile: headless master/local only (workers
    and the web UI discover the model in the users' on_start). One line and exit 2 on error."""
    runner = environment.runner
    parsed = environment.parsed_options
    if runner is None or isinstance(runner, WorkerRunner) or parsed is None or not getattr(parsed, "headless", False):
        return
    try:
        options = LoadOptions.from_parsed(parsed)
        preflight(environment.host, options, probe_requests=probe_requests)
    except ConfigError as e:
        sys.stderr.write(f"ftlocust: {e}\n")
        sys.exit(2)
