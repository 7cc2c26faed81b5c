"""LLM load users: one OpenAI-style request → one `RequestRecord` → one Locust request event.

`LLMUser` (FastHttpUser, abstract) sends `--ft-endpoint` requests; the ready subclasses
`CompletionUser`, `CompletionStreamUser`, `ChatUser`, `ChatStreamUser` and `MixUser` pin the kind.
A locustfile defines (or imports) exactly the classes it wants to run — Locust runs every
non-abstract User class it finds in the locustfile's namespace.

Per request (see docs/ARCHITECTURE.md "Success" and shared/reference/locust-facts.md):
- payload (ftlocust/payloads.py): a prompt of `--ft-input-tokens` tokens, approximated by words,
  `max_tokens`, `ignore_eos: true`, an integer `seed` derived from the client id and the
  request's sequence number (the reference deployment derives token i from (seed, i)), and for
  streams `stream_options: {include_usage, continuous_usage_stats}`;
- SSE is read with geventhttpclient's `readline(b"\n")` (incremental, cheap) until the HTTP
  message ends — never only until `[DONE]`, which would leak the connection and its pool slot —
  and each line goes to ftlocust/responses.py's `StreamReader` with the time it arrived; that
  module also decides the outcome and fills tokens (counted from the stream: per-chunk usage,
  token lists, else one per content chunk; `usage` kept as reported), TTFT (first content or
  reasoning chunk) and inter-chunk latencies;
- `--ft-request-timeout` and `--ft-cancel` end a request at socket level (ftlocust/cancel.py);
- a request that got no byte of an answer because the server had already closed the kept-alive
  connection it was sent on (legal HTTP: `Connection: close` without the header, an idle
  timeout like uvicorn's 5 s racing the next request) is sent once more on a new connection and
  counted in `record.retries`; nothing else is retried (refused, reset mid-body, no answer on a
  new connection: the server's failure, reported as such);
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

import itertools
import json
import logging
import socket
import sys
import time
import warnings
from typing import Any

import gevent
import gevent.lock
from geventhttpclient.response import HTTPConnectionClosed
from locust import events, task
from locust.contrib.fasthttp import FastHttpUser
from locust.exception import StopUser
from locust.runners import STATE_SPAWNING, MasterRunner, WorkerRunner

from ftlocust import cancel as cancel_mod
from ftlocust.cancel import TRACKER, CancelPolicy, InFlight
from ftlocust.errors import ConfigError
from ftlocust.options import LoadOptions
from ftlocust.payloads import (
    KINDS,
    STREAM_HEADERS,
    UNARY_HEADERS,
    RequestKind,
    build_payload,
    build_prompt,
    kind_for_mix,
    request_seed,
)
from ftlocust.records import CANCELLED, OK, RequestRecord
from ftlocust.responses import (
    ResponseRead,
    StreamReader,
    classify,
    error_message,
    one_line,
    read_unary,
    request_id,
    token_check,
)

log = logging.getLogger("ftlocust.users")

# --- optional collaborators (imported lazily, tolerated when absent) ---------------------------

_MISSING = object()
_timeline: Any = None


def _phase_timeline() -> Any:
    global _timeline
    if _timeline is None:
        try:
            from ftlocust.phases import TIMELINE

            _timeline = TIMELINE
        except Exception:
            _timeline = _MISSING
    return None if _timeline is _MISSING else _timeline


REFERENCE_MODEL_PREFIX = "ftlocust-ref"


def verify_tokens_enabled(setting: str, model: str) -> bool:
    """`--ft-verify-tokens`: on/off, or auto = the server is the reference deployment."""
    if setting == "off":
        return False
    return setting == "on" or model.startswith(REFERENCE_MODEL_PREFIX)


# --- preflight and model discovery --------------------------------------------------------------


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
        return ConfigError(f"--host {host}: TLS handshake failed on {what} ({one_line(reason, 100)})")
    if isinstance(exc, requests.exceptions.Timeout):
        return ConfigError(f"--host {host}: no answer to {what} within {timeout_s:g} s")
    text = str(exc)
    if "refused" in text.lower():
        reason = "connection refused"
    elif "Name or service not known" in text or "nodename nor servname" in text or "getaddrinfo" in text:
        reason = "unknown host name"
    else:
        reason = one_line(text, 100)
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
        raise ConfigError(f"--host {host}: {what} answered HTTP {resp.status_code} ({error_message(resp.content)}); "
                          f"expected 200 with an OpenAI model list")
    try:
        data = resp.json()
    except ValueError:
        ctype = resp.headers.get("content-type", "?").split(";")[0]
        raise ConfigError(f"--host {host}: {what} did not return JSON (got {ctype}: {one_line(resp.text, 60)!r}); "
                          f"is this an OpenAI-compatible server?") from None
    entries = data.get("data") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not all(isinstance(m, dict) and isinstance(m.get("id"), str) for m in entries):
        raise ConfigError(f"--host {host}: {what} is not an OpenAI model list "
                          f"(expected {{\"data\": [{{\"id\": ...}}]}}, got {one_line(resp.text, 60)!r})")
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
            raise ConfigError(f"--host {host}: {what} answered HTTP {resp.status_code}: {error_message(resp.content)}")


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


# --- one request's connection -------------------------------------------------------------------


def _is_timeout(exc: BaseException | None) -> bool:
    """A timeout of geventhttpclient's own (backstop) timers, possibly wrapped in RetriesExceeded."""
    for _ in range(5):
        if exc is None:
            return False
        if isinstance(exc, (socket.timeout, TimeoutError, gevent.Timeout)):
            return True
        exc = getattr(exc, "original", None) or exc.__cause__
    return False


def _closed_before_answer(exc: BaseException | None) -> bool:
    """geventhttpclient raises HTTPConnectionClosed for a request whose connection was closed
    before the first byte of the answer (send failed or recv got EOF/reset at once); with any
    byte received it raises another HTTPParseError or the socket error instead."""
    for _ in range(3):
        if exc is None:
            return False
        if isinstance(exc, HTTPConnectionClosed):
            return True
        exc = getattr(exc, "original", None)  # RetriesExceeded
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
    keep_chunk_times = False  # the record keeps each content chunk's arrival (extra["chunk_walls"])

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
        """Called after each content chunk of a stream with the count so far and the server's
        request id (e.g. for a mid-stream trigger). Only when a subclass overrides it: the
        default costs nothing per chunk."""

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
        read = StreamReader(spec.chat, keep_texts=self.verify_tokens) if spec.stream else ResponseRead(spec.chat)
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
            resp = self._send(spec, data, record, inflight)
            read, failure = self._read_response(resp, spec, read, inflight, policy)
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
        if not status and failure is None and resp is not None:
            failure = getattr(resp, "error", None)  # connect/send/headers failed: resp.error says why
        classify(record, read, ended=inflight.reason, failure=failure, timed_out=_is_timeout(failure),
                 cancel_policy=policy.spec if policy else None, timeout_s=opts.request_timeout_s)
        if self.verify_tokens and record.outcome == OK:
            record.token_check = token_check(record, read)
        if self.keep_chunk_times and getattr(read, "times", None):
            # on the wall clock of every other timestamp of the run (the fault's T_f among them)
            record.extra["chunk_walls"] = [round(record.start_wall + (t - t0), 4) for t in read.times]
        self._report(record, resp)
        return record

    def _send(self, spec: RequestKind, data: str, record: RequestRecord, inflight: InFlight) -> Any:
        headers = STREAM_HEADERS if spec.stream else UNARY_HEADERS
        resp = self.client.request("POST", spec.path, data=data, name=record.kind, stream=True, catch_response=True,
                                   headers=headers, context={"ft_record": record})
        if getattr(resp, "_response", None) is None and inflight.reason is None and inflight.reused \
                and _closed_before_answer(getattr(resp, "error", None)):
            # The server had closed this kept-alive connection: not one byte of an answer came
            # back, so it never processed the request. Send it once more, on a new connection.
            record.retries += 1
            inflight.fresh_only = True
            resp = self.client.request("POST", spec.path, data=data, name=record.kind, stream=True,
                                       catch_response=True, headers=headers, context={"ft_record": record})
        return resp

    def _respect_rate(self) -> None:
        # wait_time got us here about on time; gevent timers may wake a little early, so make sure
        for _ in range(100):
            remaining = self._next_start - time.perf_counter()
            if remaining <= 0:
                return
            gevent.sleep(remaining)

    def _read_response(self, resp: Any, spec: RequestKind, read: ResponseRead, inflight: InFlight,
                       policy: cancel_mod.CancelPolicy | None) -> tuple[ResponseRead, BaseException | None]:
        """Read the body; returns what was read and the exception that ended it early, if any."""
        ghc = resp._response
        if ghc is None:  # no response at all (connect/send/headers failed)
            return read, None
        if inflight.sock is None and ghc._sock is not None:
            inflight.attach(ghc._sock)  # the pool was not tracked (e.g. on_start not run)
        if resp.status_code != 200:
            try:
                read.status_message = error_message(resp.content)
            except Exception as e:  # the error body broke off; the status says enough
                read.status_message = one_line(e, 80)
            inflight.finished = True
            return read, None
        try:
            if not spec.stream:
                body = ghc.read()
                inflight.finished = True
                return read_unary(body, spec.chat), None
            cancel_after = 0
            if policy is not None:
                if policy.mode == cancel_mod.BEFORE_FIRST_TOKEN:
                    inflight.cancel_now(ghc)  # headers are in, no content read yet: prefill
                    return read, None
                if policy.mode == cancel_mod.AFTER_CHUNKS:
                    cancel_after = int(policy.value or 1)
            # only a subclass that overrides on_content pays a call per chunk
            progress = type(self).on_content is not LLMUser.on_content
            watch = progress or cancel_after
            feed = read.feed
            readline = ghc.readline
            perf = time.perf_counter
            while True:
                line = readline(b"\n")
                if not line:
                    break
                if feed(line, perf()) and watch:
                    chunks = len(read.times)
                    if progress:
                        self.on_content(chunks, request_id(read.rid))
                    if cancel_after and chunks >= cancel_after:
                        inflight.cancel_now(ghc)
                        return read, None
            inflight.finished = True  # the message ended: no timer may mark it any more
        except Exception as e:
            return read, e
        return read, None

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
    """Ends the run when every LLM user spent its budget (see the module docstring).

    On the master, the workers that count are the ones Locust still counts (ready, spawning,
    running): a worker lost mid-run (no heartbeat for ~4 s, or it quit) never says it is done, so
    the master re-checks every POLL_S while the run is on, and ends it once every remaining
    worker is done. When the last worker is lost Locust stops the test itself; headless, the
    master then quits (the lost workers are reported by ftlocust.hooks)."""

    POLL_S = 0.2

    def __init__(self, environment) -> None:
        self.environment = environment
        self.watcher: gevent.Greenlet | None = None
        self.done_workers: set[str] = set()
        self._ending = False
        events_ = environment.events
        if isinstance(environment.runner, MasterRunner):
            environment.runner.register_message("ft_users_done", self._on_worker_done)
            events_.test_start.add_listener(lambda **_kw: self._new_run())
            events_.spawning_complete.add_listener(self._start_master_watcher)
            events_.test_stopping.add_listener(lambda **_kw: self._stop_watcher())
            events_.test_stop.add_listener(self._on_master_stop)
        else:
            events_.spawning_complete.add_listener(self._start_watcher)
            # test_stopping, not test_stop: a stop kills the users first, and the watcher must not
            # take that for spent budgets (and end the run a second time)
            events_.test_stopping.add_listener(lambda **_kw: self._stop_watcher())

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
        if runner.state in ("cleanup", "stopping", "stopped"):  # stopped from outside: not a spent budget
            return
        if isinstance(runner, WorkerRunner):
            runner.send_message("ft_users_done", {"worker_index": runner.worker_index})
        else:
            log.info("every user spent its request budget: ending the run")
            end_run(self.environment)

    # -- the master ------------------------------------------------------------------------------
    def _new_run(self) -> None:
        self.done_workers.clear()
        self._ending = False

    def _start_master_watcher(self, **_kw) -> None:
        self._stop_watcher()
        self._master_check()
        self.watcher = gevent.spawn(self._master_watch)

    def _master_watch(self) -> None:
        while True:
            gevent.sleep(self.POLL_S)
            self._master_check()

    def _on_worker_done(self, environment, msg, **_kw) -> None:
        self.done_workers.add(msg.node_id)
        self._master_check()

    def _live_workers(self) -> set[str]:
        from locust.runners import STATE_INIT, STATE_RUNNING  # the states Locust's worker_count counts

        runner = self.environment.runner
        return {c.id for c in runner.clients.values() if c.state in (STATE_INIT, STATE_SPAWNING, STATE_RUNNING)}

    def _master_check(self) -> None:
        from locust.runners import STATE_RUNNING

        runner = self.environment.runner
        if self._ending or runner.state != STATE_RUNNING or not self.done_workers:
            return
        live = self._live_workers()
        if live and live <= self.done_workers:
            self._end("every worker's users spent their request budget: ending the run")

    def _on_master_stop(self, **_kw) -> None:
        self._stop_watcher()
        if self._ending or self.environment.web_ui is not None or self._live_workers():
            return
        # Locust stopped the test because its last worker went missing; headless, nothing else ends it
        self._end("no Locust worker left: ending the run")

    def _end(self, why: str) -> None:
        self._ending = True
        log.info(why)
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
