"""A small OpenAI-style streaming server for ftlocust's tests (aiohttp, loopback only).

    python tests/support/stream_server.py [--port 0] [--port-file F] [--model ID]
        [--first-delay S] [--token-delay S] [--status N] [--models-mode ok|html|wrong-json|empty|error]
        [--tokens-per-chunk K] [--close-after-response] [--keepalive-timeout S] [--close-lag W]

Prints `PORT <n>` on its first stdout line (and writes the port to --port-file), exits by itself
after --max-seconds. Serves `GET /v1/models`, `POST /v1/completions`, `POST /v1/chat/completions`
(stream as SSE over chunked encoding, one HTTP chunk per event, `data: [DONE]` last; non-stream
JSON), `GET /stats`, `POST /reset`. Like vLLM, a stream whose `stream_options` has both
`include_usage` and `continuous_usage_stats` carries the cumulative `usage` on every chunk.

Connections (all legal HTTP/1.1; keep-alive without a `Connection: close` header):
  --close-after-response   close the connection after each generation response
  --keepalive-timeout S    close a connection idle for S seconds (like uvicorn's 5 s)
  --close-lag W            the close reaches the wire W seconds after the server decided it (a
                           busy server): a request arriving meanwhile is dropped unanswered and
                           counted in /stats `dropped` (the server never processed it)

Per-request knobs, as extra body fields (they override the command-line defaults):
  x_first_delay S     seconds before the first token (prefill); headers go out at once
  x_token_delay S     seconds between tokens
  --fail-every N      every N-th generation request (of any kind) answers HTTP 500
  x_status N          answer with HTTP N and an OpenAI error body (503 adds Retry-After)
  x_error_after K     after K tokens send `data: {"error": {...}}` and then `[DONE]` (HTTP 200)
  x_cut_after K       after K tokens drop the connection mid-body (no [DONE], incomplete chunked body)
  x_end_after K       after K tokens end the body cleanly, without finish_reason and [DONE]
  x_short K           send only K tokens, then finish_reason "length" and [DONE]
  x_no_finish true    never send a finish_reason (but [DONE])
  x_hang S            wait S seconds before sending anything (not even headers)
  x_reset true        close the connection without any response
  x_headers_late true send the headers together with the first token
  x_skip_at K         leave token K out (the next token takes its place): a gap in the stream
  x_tag TEXT          recorded in /stats, so a test can find its requests
  x_tokens_per_chunk K  pack K tokens into each chunk's text (default --tokens-per-chunk, 1)
  x_reasoning K       the first K tokens go out as `reasoning_content` deltas (chat streams)
  x_no_chunk_usage true  ignore `continuous_usage_stats` (usage only at the end)
  x_error_event K     after K tokens send an `event: error` frame and end the body (HTTP 200);
                      x_error_style: "data" (`data: {"message": ..., "code": 500}`, no "error"
                      key) or "comment" (Dynamo's `event: error` + `: <message>`, no data line)
  x_pings true        a `: ping` comment line before every event

With --tokens reference, token i is ftlocust.targets.reference.tokens.token_text(seed, i) (the
reference deployment's deterministic tokens); otherwise " tok<i>".

Every event carries `x_sent` (the server's time.time() when it was written). `/stats` returns
counters (`connections_total`, `connections_open`, `requests`) and a `log` with one entry per
request: id, tag, seed, max_tokens, peer, t_start, t_first_send (just before the first token's
write), tokens_sent, t_disconnect (when the client went away before the end), completed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid

try:  # the server needs aiohttp; a test that only imports StreamServer does not
    from aiohttp import web
except ImportError:  # pragma: no cover
    web = None  # type: ignore[assignment]

_middleware = web.middleware if web is not None else (lambda f: f)


class Stats:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.log: list[dict] = []
        self.connections_total = 0
        self.dropped = 0  # requests that arrived on a connection the server was closing
        self.disconnects: list[float] = []

    def as_dict(self, server: web.Server | None) -> dict:
        return {
            "requests": len(self.log),
            "connections_total": self.connections_total,
            "connections_open": len(server.connections) if server is not None else None,
            "dropped": self.dropped,
            "log": self.log,
        }


def _error_body(status: int, message: str) -> dict:
    return {"error": {"message": message, "type": "ServiceUnavailable" if status == 503 else "Error", "code": status}}


class Conn:
    """A connection's close plan: when the server decided to close it, whether a request runs."""

    __slots__ = ("closing_at", "busy")

    def __init__(self) -> None:
        self.closing_at: float | None = None
        self.busy = False


class App:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.stats = Stats()
        self.generated = 0  # generation requests so far (--fail-every)
        self.server: web.Server | None = None
        self.conns: dict = {}  # transport -> Conn, with --close-after-response / --keepalive-timeout
        if args.tokens == "reference":
            from ftlocust.targets.reference.tokens import token_text

            self.token_text = token_text
        else:
            self.token_text = _plain_token

    # -- connections ---------------------------------------------------------------------------
    @_middleware
    async def connection_policy(self, request: web.Request, handler):
        a = self.args
        if not (a.close_after_response or a.keepalive_timeout) or not request.path.startswith("/v1/"):
            return await handler(request)
        transport = request.transport
        conn = self.conns.setdefault(transport, Conn())
        if conn.closing_at is not None and time.monotonic() >= conn.closing_at:
            # decided to close before this request came: it is dropped, the FIN is on its way
            self.stats.dropped += 1
            del self.conns[transport]
            transport.close()
            return web.Response()  # never sent
        conn.closing_at, conn.busy = None, True
        try:
            resp = await handler(request)
            try:  # finish the response here, so the close (or idle timer) starts after its last byte
                if not resp.prepared:
                    await resp.prepare(request)
                await resp.write_eof()
            except (ConnectionError, RuntimeError):
                return resp
            now = time.monotonic()
            conn.closing_at = now if a.close_after_response else now + a.keepalive_timeout
            if a.close_after_response and not a.close_lag:
                del self.conns[transport]
                transport.close()
            return resp
        finally:
            conn.busy = False

    async def closer(self) -> None:
        """Closes connections whose close is due (decision time + --close-lag)."""
        while True:
            await asyncio.sleep(0.005)
            now = time.monotonic()
            for transport, conn in list(self.conns.items()):
                if transport.is_closing():
                    self.conns.pop(transport, None)
                elif not conn.busy and conn.closing_at is not None and now >= conn.closing_at + self.args.close_lag:
                    self.conns.pop(transport, None)
                    transport.close()

    # -- routes --------------------------------------------------------------------------------
    async def models(self, request: web.Request) -> web.Response:
        mode = self.args.models_mode
        if mode == "html":
            return web.Response(text="<!DOCTYPE html><html><body>Welcome to nginx!</body></html>", content_type="text/html")
        if mode == "wrong-json":
            return web.json_response({"models": [self.args.model]})
        if mode == "empty":
            return web.json_response({"object": "list", "data": []})
        if mode == "error":
            return web.json_response(_error_body(500, "internal error"), status=500)
        return web.json_response({"object": "list", "data": [{"id": self.args.model, "object": "model", "owned_by": "tests"}]})

    async def stats_route(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats.as_dict(self.server))

    async def reset_route(self, request: web.Request) -> web.Response:
        self.stats.reset()
        return web.json_response({"ok": True})

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=False)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=True)

    # -- generation ----------------------------------------------------------------------------
    def _token_fn(self, body: dict):
        seed = int(body.get("seed") or 0)
        skip = int(body["x_skip_at"]) if "x_skip_at" in body else None
        text = self.token_text

        def token(i: int) -> str:
            return text(seed, i + 1 if skip is not None and i >= skip else i)

        return token

    async def _generate(self, request: web.Request, chat: bool) -> web.StreamResponse:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return web.json_response(_error_body(400, "body is not JSON"), status=400)
        a = self.args
        first_delay = float(body.get("x_first_delay", a.first_delay))
        token_delay = float(body.get("x_token_delay", a.token_delay))
        max_tokens = int(body.get("max_tokens") or 16)
        n_tokens = min(max_tokens, int(body["x_short"])) if "x_short" in body else max_tokens
        rid = ("chatcmpl-" if chat else "cmpl-") + str(uuid.uuid4())
        peer = request.transport.get_extra_info("peername") if request.transport else None
        entry = {
            "id": rid, "tag": body.get("x_tag"), "seed": body.get("seed"), "max_tokens": max_tokens,
            "model": body.get("model"), "stream": bool(body.get("stream")), "chat": chat,
            "ignore_eos": body.get("ignore_eos"), "stream_options": body.get("stream_options"),
            "prompt_words": _prompt_words(body, chat), "peer": list(peer) if peer else None,
            "t_start": time.time(), "t_first_send": None, "tokens_sent": 0,
            "t_disconnect": None, "completed": False,
        }
        self.stats.log.append(entry)
        try:
            if "x_hang" in body:
                await asyncio.sleep(float(body["x_hang"]))
            if body.get("x_reset"):
                entry["completed"] = True
                request.transport.close()
                return web.Response()  # never sent: the connection is gone
            status = int(body.get("x_status", a.status))
            self.generated += 1
            if a.fail_every and self.generated % a.fail_every == 0:
                status = 500
            if status != 200:
                headers = {"Retry-After": "1"} if status == 503 else None
                entry["completed"] = True
                return web.json_response(_error_body(status, f"test server answers {status}"), status=status, headers=headers)
            if body.get("model") not in (a.model, None):
                entry["completed"] = True
                return web.json_response(_error_body(404, f"model {body.get('model')!r} not found"), status=404)
            if body.get("stream"):
                return await self._stream(request, body, entry, rid, chat, first_delay, token_delay, n_tokens, max_tokens)
            return await self._unary(body, entry, rid, chat, first_delay, token_delay, n_tokens)
        except (asyncio.CancelledError, ConnectionResetError):
            entry["t_disconnect"] = time.time()
            raise

    async def _unary(self, body, entry, rid, chat, first_delay, token_delay, n_tokens) -> web.Response:
        await asyncio.sleep(first_delay + token_delay * max(0, n_tokens - 1))
        token = self._token_fn(body)
        text = "".join(token(i) for i in range(n_tokens))
        choice: dict = {"index": 0, "finish_reason": None if body.get("x_no_finish") else "length"}
        if chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        payload: dict = {
            "id": rid, "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
            "model": self.args.model, "choices": [choice],
            "usage": {"prompt_tokens": entry["prompt_words"], "completion_tokens": n_tokens,
                      "total_tokens": entry["prompt_words"] + n_tokens},
            "x_sent": time.time(),
        }
        if "x_error_after" in body:
            payload = {"error": {"message": "engine failed", "type": "InternalError", "code": 500}}
        entry["t_first_send"] = time.time()
        entry["tokens_sent"] = n_tokens
        entry["completed"] = True
        return web.json_response(payload)

    async def _stream(self, request, body, entry, rid, chat, first_delay, token_delay, n_tokens, max_tokens):
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        resp.enable_chunked_encoding()
        if not body.get("x_headers_late"):
            await resp.prepare(request)
        error_after = int(body["x_error_after"]) if "x_error_after" in body else None
        error_event = int(body["x_error_event"]) if "x_error_event" in body else None
        cut_after = int(body["x_cut_after"]) if "x_cut_after" in body else None
        end_after = int(body["x_end_after"]) if "x_end_after" in body else None
        per_chunk = max(1, int(body.get("x_tokens_per_chunk", self.args.tokens_per_chunk)))
        reasoning = int(body.get("x_reasoning", 0)) if chat else 0
        pings = bool(body.get("x_pings"))
        options = body.get("stream_options") or {}
        include_usage = bool(options.get("include_usage"))
        chunk_usage = include_usage and bool(options.get("continuous_usage_stats")) and not body.get("x_no_chunk_usage")
        obj = "chat.completion.chunk" if chat else "text_completion"
        created = int(time.time())
        token = self._token_fn(body)
        p = entry["prompt_words"]

        def usage(done: int) -> dict:
            return {"prompt_tokens": p, "completion_tokens": done, "total_tokens": p + done}

        def event(choices: list, usage=None) -> bytes:
            data = {"id": rid, "object": obj, "created": created, "model": self.args.model,
                    "choices": choices, "usage": usage, "x_sent": time.time()}
            return (b": ping\n\n" if pings else b"") + b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"

        # chunk boundaries: every per_chunk tokens, and where reasoning ends
        bounds, i = [], 0
        while i < n_tokens:
            j = min(n_tokens, i + per_chunk, reasoning if i < reasoning else n_tokens)
            bounds.append((i, j))
            i = j

        await asyncio.sleep(first_delay)
        if not resp.prepared:
            await resp.prepare(request)
        for i, j in bounds:
            if i > 0 and token_delay > 0:
                await asyncio.sleep(token_delay * (j - i))
            if error_after is not None and i >= error_after:
                err = {"error": {"message": "Stream ended before generation completed", "type": "Unavailable", "code": 503}}
                await resp.write(b"data: " + json.dumps(err).encode() + b"\n\n")
                await resp.write(b"data: [DONE]\n\n")
                entry["completed"] = True
                await resp.write_eof()
                return resp
            if error_event is not None and i >= error_event:
                if body.get("x_error_style") == "comment":  # Dynamo: the message rides a comment line
                    frame = b"event: error\n: Exception: engine failed\n\n"
                else:
                    frame = b'event: error\ndata: {"message": "engine failed", "code": 500}\n\n'
                await resp.write(frame)
                entry["completed"] = True
                await resp.write_eof()
                return resp
            if cut_after is not None and i >= cut_after:
                entry["completed"] = True
                request.transport.close()  # the connection drops in the middle of the chunked body
                return resp
            if end_after is not None and i >= end_after:
                entry["completed"] = True
                await resp.write_eof()
                return resp
            text = "".join(token(k) for k in range(i, j))
            if chat:
                delta = {"reasoning_content": text} if i < reasoning else {"content": text}
                if i == 0:
                    delta["role"] = "assistant"
                choice = {"index": 0, "delta": delta, "finish_reason": None}
            else:
                choice = {"index": 0, "text": text, "finish_reason": None}
            if entry["t_first_send"] is None:
                # Before the write: an await can yield after the bytes left, and the client may
                # read them before this coroutine runs again.
                entry["t_first_send"] = time.time()
            await resp.write(event([choice], usage(j) if chunk_usage else None))
            entry["tokens_sent"] = j
        finish = None if body.get("x_no_finish") else "length"
        last = {"index": 0, "delta": {}, "finish_reason": finish} if chat else {"index": 0, "text": "", "finish_reason": finish}
        await resp.write(event([last], usage(n_tokens) if chunk_usage else None))
        if include_usage:
            await resp.write(event([], usage(n_tokens)))
        await resp.write(b"data: [DONE]\n\n")
        entry["completed"] = True
        await resp.write_eof()
        return resp


def _plain_token(seed: int, i: int) -> str:
    return f" tok{i}"


def _prompt_words(body: dict, chat: bool) -> int:
    if chat:
        text = " ".join(str(m.get("content", "")) for m in body.get("messages") or [] if isinstance(m, dict))
    else:
        text = str(body.get("prompt", ""))
    return len(text.split())


async def serve(args: argparse.Namespace) -> None:
    app_state = App(args)
    app = web.Application(middlewares=[app_state.connection_policy])
    app.router.add_get("/v1/models", app_state.models)
    app.router.add_post("/v1/completions", app_state.completions)
    app.router.add_post("/v1/chat/completions", app_state.chat)
    app.router.add_get("/stats", app_state.stats_route)
    app.router.add_post("/reset", app_state.reset_route)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    server = runner.server
    original_made = server.connection_made

    def connection_made(handler, transport):
        app_state.stats.connections_total += 1
        original_made(handler, transport)

    server.connection_made = connection_made  # type: ignore[method-assign]
    app_state.server = server
    site = web.TCPSite(runner, "127.0.0.1", args.port)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    if args.port_file:
        tmp = args.port_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(str(port))
        os.replace(tmp, args.port_file)
    sys.stdout.write(f"PORT {port}\n")
    sys.stdout.flush()
    closer = asyncio.ensure_future(app_state.closer()) if args.close_after_response or args.keepalive_timeout else None
    try:
        await asyncio.sleep(args.max_seconds)
    finally:
        if closer is not None:
            closer.cancel()
        await runner.cleanup()


class StreamServer:
    """Runs this server as a subprocess for a test: `with StreamServer("--token-delay", "0.01") as s:`.

    Binds 127.0.0.1 on an OS-assigned port; stops only the process it started (by PID)."""

    def __init__(self, *args: str, max_seconds: float = 120.0, startup_timeout_s: float = 15.0):
        self._dir = tempfile.mkdtemp(prefix="ftl-stream-server-")
        port_file = os.path.join(self._dir, "port")
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
        with open(os.path.join(self._dir, "stderr.log"), "wb") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), "--port-file", port_file, "--max-seconds", str(max_seconds), *args],
                stdout=subprocess.DEVNULL, stderr=stderr, env=env,
            )
        deadline = time.monotonic() + startup_timeout_s
        while not os.path.exists(port_file):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"stream server did not start: {self.stderr()}")
            time.sleep(0.02)
        with open(port_file) as f:
            self.port = int(f.read())
        self.url = f"http://127.0.0.1:{self.port}"

    def stderr(self) -> str:
        try:
            with open(os.path.join(self._dir, "stderr.log"), encoding="utf-8", errors="replace") as f:
                return f.read()[-2000:]
        except OSError:
            return ""

    def stats(self) -> dict:
        with urllib.request.urlopen(self.url + "/stats", timeout=10) as resp:
            return json.loads(resp.read())

    def requests_tagged(self, tag: str) -> list[dict]:
        return [e for e in self.stats()["log"] if e.get("tag") == tag]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> "StreamServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--port-file", default="")
    p.add_argument("--model", default="test-model")
    p.add_argument("--first-delay", type=float, default=0.0)
    p.add_argument("--token-delay", type=float, default=0.0)
    p.add_argument("--status", type=int, default=200, help="HTTP status for every generation request")
    p.add_argument("--fail-every", type=int, default=0, help="answer every N-th generation request with HTTP 500")
    p.add_argument("--models-mode", choices=["ok", "html", "wrong-json", "empty", "error"], default="ok")
    p.add_argument("--tokens", choices=["plain", "reference"], default="plain")
    p.add_argument("--tokens-per-chunk", type=int, default=1)
    p.add_argument("--close-after-response", action="store_true")
    p.add_argument("--keepalive-timeout", type=float, default=0.0, help="0: keep idle connections open")
    p.add_argument("--close-lag", type=float, default=0.0)
    p.add_argument("--max-seconds", type=float, default=300.0)
    args = p.parse_args(argv)
    try:
        asyncio.run(serve(args))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
