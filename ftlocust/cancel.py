"""Socket-level cancellation: which requests to cancel (`CancelPolicy`) and how (`InFlight`).

How (measured, shared/reference/locust-facts.md §2): mark the request first, then
`shutdown(SHUT_RDWR)` on its socket — the server sees the FIN within milliseconds, and any
greenlet blocked on the socket wakes with an error — then `release()` the response so the
connection pool frees the slot. Closing alone is not seen by the server, and a response that is
neither read to its end nor released holds a pool slot for good.

The same mechanism ends a request at `--ft-request-timeout`: `gevent.Timeout` around a
FastHttp call can be swallowed by geventhttpclient's retry logic, a shut-down socket cannot.

Policies (`--ft-cancel`):
- `none`
- `before-first-token`: streams are cancelled as soon as the response headers arrived and before
  any content event was read (the server is in prefill); a server that holds its headers back
  until the first token, and every non-stream request, is cancelled `PREFILL_CANCEL_DELAY_S`
  after the request was sent (while the client waits for the first byte).
- `after-chunks:N` (streams only): after the N-th content event was read.
- `after-ms:T`: T milliseconds after the request started (stream or not).
- any of them with `@fraction` (0 < f <= 1): only that fraction of requests, chosen by the
  request's seed, so the same run cancels the same requests again.
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass
from typing import Any

import gevent

from ftlocust.records import CANCELLED, TIMEOUT
from ftlocust.validation import did_you_mean, error

NONE = "none"
BEFORE_FIRST_TOKEN = "before-first-token"
AFTER_CHUNKS = "after-chunks"
AFTER_MS = "after-ms"
MODES = (NONE, BEFORE_FIRST_TOKEN, AFTER_CHUNKS, AFTER_MS)

# before-first-token without headers to act on: cancel this long after the request was sent.
PREFILL_CANCEL_DELAY_S = 0.02

_EXPECTED = "none, before-first-token, after-chunks:N or after-ms:T, optionally followed by @fraction (0<f<=1)"
_SPEC_RE = re.compile(r"^(none|before-first-token|after-chunks|after-ms)(?::([^@]*))?(?:@(.*))?$")


@dataclass(frozen=True)
class CancelPolicy:
    mode: str = NONE
    value: float | None = None  # N chunks (after-chunks) or T milliseconds (after-ms)
    fraction: float = 1.0

    @classmethod
    def parse(cls, spec: str | None, where: str = "--ft-cancel") -> "CancelPolicy":
        """`spec` as written (`--ft-cancel`, a scenario's `load.cancel`, a user class's `cancel`);
        a bad one is a one-line `ConfigError` naming `where` (ftlocust.validation's shape)."""
        if spec is not None and not isinstance(spec, str):
            raise error(where, _EXPECTED, spec)
        text = (spec or NONE).strip().lower()
        m = _SPEC_RE.match(text)
        if not m:
            raise error(where, _EXPECTED, spec, did_you_mean(text.split(":")[0].split("@")[0], MODES))
        mode, value_text, fraction_text = m.group(1), m.group(2), m.group(3)
        value: float | None = None
        if mode in (NONE, BEFORE_FIRST_TOKEN):
            if value_text is not None:
                raise error(where, f"{mode} without a value", spec)
            if mode == NONE and fraction_text is not None:
                raise error(where, "none without @fraction", spec)
        elif mode == AFTER_CHUNKS:
            try:
                value = int(value_text or "")
            except ValueError:
                value = 0
            if value < 1:
                raise error(where, "after-chunks:N with an integer N >= 1", spec)
        else:
            try:
                value = float(value_text or "")
            except ValueError:
                value = -1.0
            if not 0 <= value < float("inf"):
                raise error(where, "after-ms:T with milliseconds T >= 0", spec)
        fraction = 1.0
        if fraction_text is not None:
            try:
                fraction = float(fraction_text)
            except ValueError:
                fraction = 0.0
            if not 0 < fraction <= 1:
                raise error(where, "@fraction with 0 < f <= 1", spec)
        return cls(mode=mode, value=value, fraction=fraction)

    @property
    def active(self) -> bool:
        return self.mode != NONE

    @property
    def spec(self) -> str:
        """The canonical spelling, e.g. "after-chunks:5@0.5" (recorded as `cancel_policy`)."""
        if self.mode == AFTER_CHUNKS:
            text = f"{AFTER_CHUNKS}:{int(self.value or 0)}"
        elif self.mode == AFTER_MS:
            text = f"{AFTER_MS}:{self.value:g}"
        else:
            text = self.mode
        return text if self.fraction >= 1 else f"{text}@{self.fraction:g}"

    def __str__(self) -> str:
        return self.spec

    def applies(self, seed: int, stream: bool) -> bool:
        """Does this policy cancel the request with `seed`? after-chunks only applies to streams."""
        if self.mode == NONE or (self.mode == AFTER_CHUNKS and not stream):
            return False
        return self.fraction >= 1 or selected(seed, self.fraction)

    def timer_delay_s(self, stream: bool) -> float | None:
        """When a timer should cancel (seconds after the request started), or None for no timer."""
        if self.mode == AFTER_MS:
            return (self.value or 0.0) / 1000.0
        if self.mode == BEFORE_FIRST_TOKEN:
            return PREFILL_CANCEL_DELAY_S
        return None


NO_CANCEL = CancelPolicy()


def selected(seed: int, fraction: float) -> bool:
    """Deterministic per seed, uniform over seeds: Knuth's multiplicative hash into [0, 1)."""
    return ((seed * 2654435761) & 0xFFFFFFFF) / 4294967296.0 < fraction


class InFlight:
    """One request's early-end state: its socket (once the pool hands it out) and why we ended it.

    `end(reason)` may be called from the reading greenlet or from a hub timer; it only marks and
    shuts the socket down (never blocks). Whoever reads the response releases it afterwards —
    geventhttpclient does so itself on the error the shutdown causes, and `release()` is idempotent.
    """

    __slots__ = ("sock", "reason", "finished", "reused", "fresh_only")

    def __init__(self) -> None:
        self.sock: Any = None
        self.reason: str | None = None  # CANCELLED or TIMEOUT once ended on purpose
        self.finished = False  # the HTTP message was read to its end: nothing to cancel any more
        self.reused = False  # the pool gave it a kept-alive connection (not a new one)
        self.fresh_only = False  # only a new connection will do (the retry after a stale one)

    def attach(self, sock: Any) -> None:
        """The pool handed this request a socket; if it was already ended, shut it down now."""
        self.sock = sock
        if self.reason is not None:
            _shutdown(sock)

    def end(self, reason: str) -> bool:
        """Mark first, then shut the socket down. False when already finished or ended."""
        if self.finished or self.reason is not None:
            return False
        self.reason = reason
        if self.sock is not None:
            _shutdown(self.sock)
        return True

    def cancel_now(self, ghc_response: Any) -> bool:
        """Cancel from the reading greenlet: mark, shutdown(SHUT_RDWR), then release()."""
        ended = self.end(CANCELLED)
        if ended and ghc_response is not None:
            sock = getattr(ghc_response, "_sock", None)
            if sock is not None and sock is not self.sock:
                _shutdown(sock)
            try:
                ghc_response.release()
            except Exception:  # the pool closes a broken socket itself
                pass
        return ended


def _shutdown(sock: Any) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except (OSError, ValueError, AttributeError):
        pass  # already closed: nothing left to tell the server


class Timer:
    """A one-shot hub timer calling `inflight.end(reason)`; much cheaper than a greenlet per request."""

    __slots__ = ("_watcher",)

    def __init__(self, delay_s: float, inflight: InFlight, reason: str):
        self._watcher = gevent.get_hub().loop.timer(max(0.0, delay_s))
        # update=True: count from now, not from the loop's cached time (else it fires up to ms early)
        self._watcher.start(_end_quietly, inflight, reason, update=True)

    def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher.close()
            self._watcher = None


def _end_quietly(inflight: InFlight, reason: str) -> None:
    try:
        inflight.end(reason)
    except Exception:  # runs in the hub: never let it print a traceback there
        pass


def deadline(timeout_s: float, inflight: InFlight) -> Timer:
    return Timer(timeout_s, inflight, TIMEOUT)


def cancel_timer(delay_s: float, inflight: InFlight) -> Timer:
    return Timer(delay_s, inflight, CANCELLED)


class SocketTracker:
    """Tells each in-flight request which socket the connection pool gave it, and whether it
    was a kept-alive one.

    Wraps `get_socket` (and `_create_socket`) of the geventhttpclient connection pool behind a
    FastHttpSession, so a timer can shut a request's socket down even while the request waits
    for its headers (before any response object exists), and a request that must go out on a
    new connection (`InFlight.fresh_only`) gets one: kept-alive sockets are closed instead.
    Keyed by greenlet, so a pool shared by users also works.
    """

    def __init__(self) -> None:
        self._current: dict[Any, InFlight] = {}

    def install(self, session: Any, url: str) -> None:
        """Wrap the pool that `session` (a FastHttpSession) uses for `url` (once per pool)."""
        from geventhttpclient.url import URL

        client = session.client.clientpool.get_client(URL(url))
        pool = client._connection_pool
        if getattr(pool, "_ftlocust_tracked", False):
            return
        original = pool.get_socket
        original_create = pool._create_socket
        current = self._current

        def get_socket():
            inflight = current.get(gevent.getcurrent())
            if inflight is None:
                return original()
            for attempt in range(pool.size + 1):  # each round closes one idle socket of the pool
                inflight.reused = True  # unless create_socket() below runs
                sock = original()
                if not (inflight.reused and inflight.fresh_only) or attempt == pool.size:
                    break
                pool.release_socket(sock)
            inflight.attach(sock)
            return sock

        def create_socket():
            inflight = current.get(gevent.getcurrent())
            if inflight is not None:
                inflight.reused = False
            return original_create()

        pool.get_socket = get_socket
        pool._create_socket = create_socket
        pool._ftlocust_tracked = True

    def begin(self, inflight: InFlight) -> None:
        self._current[gevent.getcurrent()] = inflight

    def end(self) -> None:
        self._current.pop(gevent.getcurrent(), None)

    @property
    def in_flight(self) -> int:
        """Requests of this process between begin() and end() right now."""
        return len(self._current)


# One per process: every user's pools report to it, whoever shares which pool.
TRACKER = SocketTracker()
