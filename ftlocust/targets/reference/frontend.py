"""Frontend / router of the reference deployment: OpenAI-compatible HTTP on 127.0.0.1.

Routes /v1/completions and /v1/chat/completions round-robin to the workers that hold a lease,
migrates a request whose worker stream breaks (continuing at token k on another worker, so the
client sees one unbroken stream), cancels the worker's request when the client disconnects,
sheds load when every worker is busy, and drains on SIGTERM/SIGINT. A worker whose lease says
it is asleep (vLLM / SGLang sleep mode) stays registered but gets no requests; a request that
finds only sleeping workers waits (`--wake-wait-s`) for one to wake. It speaks Dynamo's
observable dialect: its log lines and `dynamo_frontend_*` metrics are the ones a drill looks
for on a real Dynamo frontend (README.md beside this file lists them).

Run: python -m ftlocust.targets.reference.frontend --port 8000 --events run/events.jsonl ...
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
import uuid

from aiohttp import (
    ClientConnectorError,
    ClientError,
    ClientSession,
    ClientTimeout,
    TCPConnector,
    web,
)
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import disable_created_metrics
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from ftlocust.targets.reference import logs, wire
from ftlocust.targets.reference import openai_format as fmt
from ftlocust.targets.reference.events import EventLog
from ftlocust.targets.reference.lifecycle import watch_parent
from ftlocust.targets.reference.tokens import chat_prompt_text, count_prompt_tokens, seed_for

disable_created_metrics()

MAIN = logs.get("main.async_main")
HTTP = logs.get("dynamo_llm::http::service")
METRICS_LOG = logs.get("dynamo_llm::http::service::metrics")
DISCONNECT = logs.get("dynamo_llm::http::service::disconnect")
MIGRATION = logs.get("dynamo_llm::migration")
ROUTER = logs.get("http-request:router.route_request: request_span")
TCP = logs.get("dynamo_runtime::pipeline::network::egress::tcp_client")
DISCOVERY = logs.get("dynamo_runtime::storage::kv::file")

JSON_HEADERS = {"Content-Type": "application/json"}
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}

# Outcomes of one attempt on one worker.
DONE, WORKER_ERROR, CANNOT_CONNECT, DISCONNECTED = "done", "worker_error", "cannot_connect", "disconnected"


class ClientGone(Exception):
    """Writing to the client failed: it disconnected (treated as a cancellation)."""


class WorkerEntry:
    """A worker holding a lease, as the router sees it."""

    __slots__ = (
        "instance_id", "name", "kind", "url", "model", "kv_capacity", "ttl_s", "pid", "expires",
        "renewed", "inflight", "kv_load", "inhibited_until", "died_reported", "asleep",
    )

    def __init__(self, body: dict):
        self.instance_id = int(body["instance_id"])
        self.name = str(body.get("name", ""))
        self.kind = str(body.get("kind", wire.AGGREGATED))
        self.url = str(body["url"])
        self.model = str(body.get("model", ""))
        self.kv_capacity = max(1, int(body.get("kv_capacity", 1)))
        self.ttl_s = float(body.get("ttl_s", 10.0))
        self.pid = body.get("pid")
        self.renewed = time.monotonic()
        self.expires = self.renewed + self.ttl_s
        self.inflight = 0
        self.kv_load = 0  # prompt + generated tokens of the requests routed here and still running
        self.inhibited_until = 0.0
        self.died_reported = False
        self.asleep = bool(body.get("asleep", False))  # registered, not serving: never routed to

    def describe(self) -> dict:
        return {
            "instance_id": self.instance_id,
            "name": self.name,
            "kind": self.kind,
            "url": self.url,
            "model": self.model,
            "pid": self.pid,
            "inflight": self.inflight,
            "kv_load": self.kv_load,
            "kv_capacity": self.kv_capacity,
            "inhibited": self.inhibited_until > time.monotonic(),
            "asleep": self.asleep,
        }


class Ctx:
    """One client request while the frontend serves it."""

    __slots__ = (
        "rid", "response_id", "model", "endpoint", "chat", "stream", "request_type", "seed",
        "prompt_tokens", "max_tokens", "include_usage", "created", "generated", "pieces", "resp",
        "fmt", "t0", "last_token_t", "worker", "attempt", "final_prompt_tokens", "pending", "wake_deadline",
    )


class Frontend:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.workers: dict[int, WorkerEntry] = {}
        self._rr = 0
        self._prefill_rr = 0
        self.inflight = 0
        self.draining = False
        self.stopping = False
        self.stopped = asyncio.Event()
        self._woken = asyncio.Event()  # set (and replaced) when a worker wakes or registers awake
        self.session: ClientSession | None = None
        self.events = EventLog(args.events, "frontend") if args.events else None
        self._init_metrics()

    # -- metrics ----------------------------------------------------------------------------

    def _init_metrics(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.m_requests = Counter(
            "dynamo_frontend_requests", "Requests by outcome",
            ["endpoint", "model", "request_type", "status", "error_type"], registry=r,
        )
        self.m_started = Counter(
            "dynamo_frontend_requests_started", "Requests started", ["endpoint", "model", "request_type"], registry=r
        )
        self.m_inflight = Gauge("dynamo_frontend_inflight_requests", "Requests in flight", ["model"], registry=r)
        lat = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
        self.m_ttft = Histogram(
            "dynamo_frontend_time_to_first_token_seconds", "Time to first token", ["model"], registry=r, buckets=lat
        )
        self.m_itl = Histogram(
            "dynamo_frontend_inter_token_latency_seconds", "Inter-token latency", ["model"], registry=r, buckets=lat
        )
        self.m_duration = Histogram(
            "dynamo_frontend_request_duration_seconds", "Request duration", ["model"], registry=r,
            buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
        )
        self.m_output_tokens = Counter("dynamo_frontend_output_tokens", "Output tokens sent", ["model"], registry=r)
        self.m_migration = Counter(
            "dynamo_frontend_model_migration", "Request migrations (attempted, like Dynamo: counted even when "
            "the limit is exhausted)", ["migration_type", "model"], registry=r,
        )
        self.m_migration_duration = Histogram(
            "dynamo_frontend_model_migration_duration_seconds", "Time from a broken stream to the new one",
            ["migration_type", "model", "outcome"], registry=r,
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5),
        )
        self.m_cancel = Counter(
            "dynamo_frontend_model_cancellation", "Requests cancelled by a client disconnect",
            ["endpoint", "model", "request_type"], registry=r,
        )
        self.m_reject = Counter(
            "dynamo_frontend_model_rejection", "Requests rejected because every worker was busy",
            ["endpoint", "model"], registry=r,
        )
        self.m_failures = Counter("dynamo_frontend_failures", "Failures by class", ["class", "reason"], registry=r)
        self._disconnected = 0
        Gauge(
            "dynamo_frontend_disconnected_clients", "Clients that disconnected (cumulative, as Dynamo)", registry=r
        ).set_function(lambda: self._disconnected)
        g = Gauge("dynamo_frontend_model_migration_limit", "Effective migration limit", registry=r)
        g.set(self.args.migration_limit)
        workers = Gauge("ftlocust_reference_workers", "Workers holding a lease", ["kind"], registry=r)
        for kind in wire.KINDS:
            workers.labels(kind).set_function(lambda k=kind: sum(1 for w in self.workers.values() if w.kind == k))

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    def _event(self, event: str, **fields) -> None:
        if self.events is not None:
            self.events.write(event, **fields)

    # -- discovery --------------------------------------------------------------------------

    async def lease(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            entry = WorkerEntry(body)
        except (ValueError, KeyError, TypeError) as e:
            return web.json_response(fmt.error_body(400, f"bad lease: {e}"), status=400)
        known = self.workers.get(entry.instance_id)
        if known is not None:
            known.renewed = time.monotonic()
            known.expires = known.renewed + known.ttl_s
            if known.asleep != entry.asleep:
                known.asleep = entry.asleep
                state = "asleep" if entry.asleep else "woken"
                DISCOVERY.info(f"Instance {'sleeping' if entry.asleep else 'awake'} instance_id={entry.instance_id} "
                               f"name={entry.name}")
                self._event(f"worker_{state}", role=entry.name, instance_id=entry.instance_id, pid=entry.pid)
                if not entry.asleep:
                    self._wake_waiters()
            return web.json_response({"ok": True})
        self.workers[entry.instance_id] = entry
        DISCOVERY.info(
            f"Registered instance instance_id={entry.instance_id} name={entry.name} kind={entry.kind} "
            f"url={entry.url} model={entry.model} lease_ttl_secs={entry.ttl_s:g}"
            + (" asleep=true" if entry.asleep else "")
        )
        self._event(
            "worker_registered", role=entry.name, instance_id=entry.instance_id, kind=entry.kind, url=entry.url,
            pid=entry.pid, model=entry.model, asleep=entry.asleep,
        )
        if not entry.asleep:
            self._wake_waiters()
        return web.json_response({"ok": True})

    def _wake_waiters(self) -> None:
        woken, self._woken = self._woken, asyncio.Event()
        woken.set()

    async def deregister(self, request: web.Request) -> web.Response:
        body = await request.json()
        entry = self.workers.pop(int(body.get("instance_id", -1)), None)
        if entry is not None:
            DISCOVERY.info(f"Deregistered instance instance_id={entry.instance_id} name={entry.name}")
            self._event("worker_deregistered", role=entry.name, instance_id=entry.instance_id, pid=entry.pid)
        return web.json_response({"ok": True})

    async def _sweep_leases(self) -> None:
        while True:
            await asyncio.sleep(self.args.lease_sweep_s)
            now = time.monotonic()
            for entry in [w for w in self.workers.values() if w.expires <= now]:
                self.workers.pop(entry.instance_id, None)
                DISCOVERY.info(
                    f'Expired path="v1/instances/dynamo/{_component(entry)}/generate/{entry.instance_id:x}" '
                    f"instance_id={entry.instance_id} name={entry.name} since_last_renew_s={now - entry.renewed:.2f}"
                )
                self._event(
                    "lease_expired", role=entry.name, instance_id=entry.instance_id, pid=entry.pid,
                    since_last_renew_s=round(now - entry.renewed, 3),
                )

    def models(self) -> list[str]:
        return sorted({w.model for w in self.workers.values() if w.kind in wire.SERVING_KINDS})

    def _pick(self, model: str, exclude: set, ignore_busy: bool) -> tuple[WorkerEntry | None, str]:
        """Round-robin over serving workers of `model` that are not inhibited, excluded or busy.

        Returns (worker, "") or (None, "busy" | "sleeping" | "unavailable"); "sleeping": none
        of the others can take it, but a sleeping worker could once woken.
        """
        serving = [w for w in self.workers.values() if w.kind in wire.SERVING_KINDS and w.model == model]
        candidates = [w for w in serving if not w.asleep]
        n = len(candidates)
        if not n:
            return None, "sleeping" if serving else "unavailable"
        now = time.monotonic()
        threshold = self.args.busy_threshold
        saw_busy = False
        for step in range(n):
            w = candidates[(self._rr + step) % n]
            if w.instance_id in exclude or w.inhibited_until > now:
                continue
            if not ignore_busy and threshold and w.kv_load >= threshold * w.kv_capacity:
                saw_busy = True
                continue
            self._rr = (self._rr + step + 1) % n
            return w, ""
        if saw_busy:
            return None, "busy"
        return None, "sleeping" if len(serving) > n else "unavailable"

    def _prefill_urls(self) -> list[str]:
        now = time.monotonic()
        urls = [w.url for w in self.workers.values()
                if w.kind == wire.PREFILL and w.inhibited_until <= now and not w.asleep]
        if not urls:
            return []
        k = self._prefill_rr % len(urls)
        self._prefill_rr += 1
        return urls[k:] + urls[:k]

    # -- simple routes ----------------------------------------------------------------------

    async def health(self, request: web.Request) -> web.Response:
        if self.draining:
            return web.json_response({"status": "notready", "message": "draining"}, status=503)
        return web.json_response(
            {
                "status": "healthy",
                "endpoints": ["/v1/models", "/v1/completions", "/v1/chat/completions"],
                "instances": [w.describe() for w in self.workers.values()],
            }
        )

    async def live(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "live"})

    async def list_models(self, request: web.Request) -> web.Response:
        data = [{"id": m, "object": "model", "created": int(time.time()), "owned_by": "ftlocust"} for m in self.models()]
        return web.json_response({"object": "list", "data": data})

    # -- completions ------------------------------------------------------------------------

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, chat=False)

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, chat=True)

    def _http_error(self, endpoint: str, model: str, request_type: str, status: int, message: str,
                    param: str | None = None, error_type: str = "validation", headers: dict | None = None
                    ) -> web.Response:
        self.m_requests.labels(endpoint, model, request_type, "error", error_type).inc()
        HTTP.info(f"http response sent status={status} endpoint={endpoint} error={message!r}")
        return web.json_response(fmt.error_body(status, message, param), status=status, headers=headers)

    async def _handle(self, request: web.Request, chat: bool) -> web.StreamResponse:
        endpoint = "chat_completions" if chat else "completions"
        if self.draining:
            return self._http_error(endpoint, "unknown", "unknown", 503, "Service is not ready", error_type="unavailable")
        raw = await request.read()
        try:
            body = json.loads(raw)
        except ValueError as e:
            return self._http_error(endpoint, "unknown", "unknown", 400, f"Failed to parse the request body as JSON: {e}")
        if not isinstance(body, dict):
            return self._http_error(endpoint, "unknown", "unknown", 400, "The request body must be a JSON object")
        ctx = self._make_ctx(body, chat, endpoint)
        if isinstance(ctx, web.Response):
            return ctx
        self.inflight += 1
        self.m_inflight.labels(ctx.model).inc()
        self.m_started.labels(endpoint, ctx.model, ctx.request_type).inc()
        try:
            return await self._serve(request, ctx)
        except asyncio.CancelledError:
            if not self.stopping:
                self._on_client_cancel(ctx)
            raise
        except ClientGone:
            if not self.stopping:
                self._on_client_cancel(ctx)
            return ctx.resp if ctx.resp is not None else web.Response(status=499)
        finally:
            self.inflight -= 1
            self.m_inflight.labels(ctx.model).dec()

    def _make_ctx(self, body: dict, chat: bool, endpoint: str):
        model = body.get("model")
        stream = bool(body.get("stream", False))
        request_type = "stream" if stream else "unary"
        if not isinstance(model, str) or not model:
            return self._http_error(endpoint, "unknown", request_type, 400, "`model` is required (a string)", "model")
        if model not in self.models():
            return self._http_error(endpoint, model, request_type, 404, "Model not found", "model", "not_found")
        max_tokens = body.get("max_tokens")
        if max_tokens is None and chat:
            max_tokens = body.get("max_completion_tokens")
        if max_tokens is None:
            return self._http_error(
                endpoint, model, request_type, 400,
                "`max_output_tokens` (or `max_tokens`) is required by the reference worker", "max_tokens",
            )
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            return self._http_error(endpoint, model, request_type, 400,
                                    f"`max_tokens` must be a positive integer, got {max_tokens!r}", "max_tokens")
        if chat:
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                return self._http_error(endpoint, model, request_type, 400,
                                        "`messages` must be a non-empty list", "messages")
            prompt = chat_prompt_text(messages)
            prompt_tokens = count_prompt_tokens(prompt)
        else:
            prompt = body.get("prompt")
            if isinstance(prompt, str):
                prompt_tokens = count_prompt_tokens(prompt)
            elif isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
                prompt = " ".join(prompt)
                prompt_tokens = count_prompt_tokens(prompt)
            elif isinstance(prompt, list) and prompt and all(isinstance(p, int) for p in prompt):
                prompt_tokens = len(prompt)
                prompt = json.dumps(prompt)
            else:
                return self._http_error(endpoint, model, request_type, 400,
                                        "`prompt` must be a string, a list of strings or a list of token ids", "prompt")
        if prompt_tokens > self.args.context_length:
            return self._http_error(
                endpoint, model, request_type, 413,
                f"The prompt has {prompt_tokens} tokens, above the context length {self.args.context_length}",
                "prompt", "payload_too_large",
            )
        seed = body.get("seed")
        if seed is None:
            seed = seed_for(prompt)
        elif isinstance(seed, bool) or not isinstance(seed, int):
            return self._http_error(endpoint, model, request_type, 400, f"`seed` must be an integer, got {seed!r}", "seed")
        options = body.get("stream_options")
        ctx = Ctx()
        ctx.rid = str(uuid.uuid4())
        ctx.response_id = ("chatcmpl-" if chat else "cmpl-") + ctx.rid
        ctx.model = model
        ctx.endpoint = endpoint
        ctx.chat = chat
        ctx.stream = stream
        ctx.request_type = request_type
        ctx.seed = seed
        ctx.prompt_tokens = prompt_tokens
        ctx.final_prompt_tokens = prompt_tokens
        ctx.max_tokens = max_tokens
        ctx.include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
        ctx.created = int(time.time())
        ctx.generated = 0
        ctx.pieces = []
        ctx.resp = None
        ctx.fmt = None
        ctx.t0 = time.monotonic()
        ctx.last_token_t = None
        ctx.worker = None
        ctx.attempt = 0
        ctx.pending = None  # (migration_type, detected_at, from_worker) while a migration is under way
        ctx.wake_deadline = None  # set when it first waits for a sleeping worker to wake
        return ctx

    async def _serve(self, request: web.Request, ctx: Ctx) -> web.StreamResponse:
        exclude: set[int] = set()
        limit = self.args.migration_limit
        while True:
            w, why = self._pick(ctx.model, exclude, ignore_busy=ctx.pending is not None)
            if w is None and why == "sleeping" and await self._wait_for_wake(ctx):
                continue
            if w is None:
                if ctx.pending is None and why == "busy":
                    return self._reject_busy(ctx)
                if ctx.pending is not None:
                    MIGRATION.warning(f"Cannot recreate stream error=no backend worker available request_id={ctx.rid}")
                    self._migration_outcome(ctx, "failure", reason="no backend worker available")
                return await self._fail_unavailable(request, ctx, "transport.cannot_connect")
            if ctx.pending is not None:
                mtype, _, src = ctx.pending
                ROUTER.info(
                    f"migration retry scheduled request.attempt={ctx.attempt} migration.is_retry=true "
                    f'migration.reason="{"disconnected" if mtype == "ongoing_request" else "cannot_connect"}" '
                    f"migration.from_worker_id={src.instance_id} migration.tokens_completed={ctx.generated} "
                    f"request_id={ctx.rid} worker_id={w.instance_id}"
                )
                self._event(
                    "migration_started", request_id=ctx.rid, migration_type=mtype, from_role=src.name,
                    from_instance_id=src.instance_id, to_role=w.name, to_instance_id=w.instance_id,
                    tokens_completed=ctx.generated, attempt=ctx.attempt,
                )
            outcome, detail = await self._attempt(request, ctx, w)
            if outcome == DONE:
                return await self._finish_ok(request, ctx, detail)
            if outcome == WORKER_ERROR:
                return await self._finish_worker_error(request, ctx, detail)
            # The worker is gone (or refused): migrate if the limit allows.
            mtype = "new_request" if outcome == CANNOT_CONNECT else "ongoing_request"
            if ctx.pending is not None:  # the previous migration's new stream failed too
                self._migration_outcome(ctx, "failure", reason=detail)
            self._worker_failed(ctx, w, outcome, detail)
            exclude.add(w.instance_id)
            self.m_migration.labels(mtype, ctx.model).inc()
            if outcome == DISCONNECTED:
                MIGRATION.warning(
                    "Stream disconnected, recreating stream error=Unavailable: Stream ended before generation "
                    f"completed request_id={ctx.rid} worker_id={w.instance_id} tokens_completed={ctx.generated}"
                )
            else:
                MIGRATION.warning(f"Creating new stream, retrying error=Unavailable: {detail} request_id={ctx.rid}")
            if ctx.attempt >= limit:
                MIGRATION.warning(f"Cannot recreate stream error=Migration limit exhausted request_id={ctx.rid}")
                self.m_migration_duration.labels(mtype, ctx.model, "failure").observe(0.0)
                self._event(
                    "migration_failed", request_id=ctx.rid, migration_type=mtype, from_role=w.name,
                    from_instance_id=w.instance_id, tokens_completed=ctx.generated, reason="migration limit exhausted",
                    limit=limit,
                )
                reason = "transport.disconnected" if outcome == DISCONNECTED else "transport.cannot_connect"
                return await self._fail_unavailable(request, ctx, reason)
            ctx.attempt += 1
            ctx.pending = (mtype, time.monotonic(), w)

    async def _wait_for_wake(self, ctx: Ctx) -> bool:
        """Only sleeping workers could serve: wait (up to --wake-wait-s per request) for one to
        wake; True when one did (pick again), False when the wait is over."""
        now = time.monotonic()
        if ctx.wake_deadline is None:
            ctx.wake_deadline = now + self.args.wake_wait_s
            if self.args.wake_wait_s > 0:
                ROUTER.warning(f"No awake worker; waiting for a sleeping worker to wake request_id={ctx.rid} "
                               f"model={ctx.model} wait_s={self.args.wake_wait_s:g} "
                               f"migrating={str(ctx.pending is not None).lower()}")
        remaining = ctx.wake_deadline - now
        if remaining <= 0:
            return False
        try:
            await asyncio.wait_for(self._woken.wait(), remaining)
        except asyncio.TimeoutError:
            ROUTER.warning(f"No worker woke within {self.args.wake_wait_s:g} s request_id={ctx.rid}")
            return False
        return True

    def _migration_outcome(self, ctx: Ctx, outcome: str, reason: str = "") -> None:
        """Close the migration under way (ctx.pending): its new stream was accepted, or not."""
        mtype, detected, src = ctx.pending
        ctx.pending = None
        took = time.monotonic() - detected
        self.m_migration_duration.labels(mtype, ctx.model, outcome).observe(took)
        if outcome == "success":
            self._event(
                "migration_done", request_id=ctx.rid, migration_type=mtype, from_role=src.name,
                from_instance_id=src.instance_id, to_role=ctx.worker.name, to_instance_id=ctx.worker.instance_id,
                tokens_completed=ctx.generated, duration_s=round(took, 6),
            )
        else:
            self._event(
                "migration_failed", request_id=ctx.rid, migration_type=mtype, from_role=src.name,
                from_instance_id=src.instance_id, tokens_completed=ctx.generated, reason=reason,
            )

    def _worker_failed(self, ctx: Ctx, w: WorkerEntry, outcome: str, detail: str) -> None:
        if outcome == CANNOT_CONNECT:
            w.inhibited_until = time.monotonic() + self.args.inhibit_s
            if detail.startswith("status "):  # alive but refusing work (draining)
                ROUTER.warning(f"worker refused the request worker_id={w.instance_id} error={detail}")
            else:
                TCP.warning(f"TCP connection unavailable addr={w.url.split('//', 1)[-1]} error=Unavailable: {detail}")
            ROUTER.warning(
                f'route request failed request.outcome="connection_failed" error.type="cannot_connect" '
                f"request_id={ctx.rid} worker_id={w.instance_id} request.attempt={ctx.attempt} "
                f"migration.tokens_completed={ctx.generated}"
            )
        else:
            ROUTER.warning(
                f'route request failed request.outcome="worker_disconnected" error.type="disconnected" '
                f"request_id={ctx.rid} worker_id={w.instance_id} request.attempt={ctx.attempt} "
                f"migration.tokens_completed={ctx.generated}"
            )
        if not w.died_reported and not detail.startswith("status "):
            w.died_reported = True
            self._event(
                "worker_died", role=w.name, instance_id=w.instance_id, pid=w.pid, detected_by=outcome,
                request_id=ctx.rid, detail=detail,
            )

    async def _attempt(self, request: web.Request, ctx: Ctx, w: WorkerEntry) -> tuple[str, object]:
        """Run the request on worker w from token ctx.generated on; forward its tokens."""
        ctx.worker = w
        start = ctx.generated
        attempt_prompt = ctx.prompt_tokens + start  # like Dynamo: prompt + tokens so far
        payload = {
            "request_id": ctx.rid,
            "seed": ctx.seed,
            "start_index": start,
            "max_tokens": ctx.max_tokens - start,
            "prompt_tokens": attempt_prompt,
        }
        if w.kind == wire.DECODE:
            payload["prefill_urls"] = self._prefill_urls()
        load = attempt_prompt
        w.inflight += 1
        w.kv_load += load
        wr = None
        clean = False
        try:
            try:
                wr = await self.session.post(w.url + wire.GENERATE_PATH, data=json.dumps(payload), headers=JSON_HEADERS)
            except ClientConnectorError as e:
                return CANNOT_CONNECT, f"TCP connection to {w.url.split('//', 1)[-1]} failed: {e.strerror or e}"
            except (ClientError, OSError) as e:
                return DISCONNECTED, f"{type(e).__name__}: {e}"
            if wr.status != 200:
                return CANNOT_CONNECT, f"status {wr.status}"  # draining worker: try another one
            if ctx.pending is not None:
                self._migration_outcome(ctx, "success")
            if ctx.stream and ctx.resp is None:
                await self._commit_stream(request, ctx)
            content = wr.content
            buf = b""
            result = None
            itl = self.m_itl.labels(ctx.model)
            while True:
                try:
                    data = await content.readany()
                except (ClientError, OSError) as e:
                    if result is not None:
                        break
                    return DISCONNECTED, f"{type(e).__name__}: {e}"
                if not data:
                    if result is not None:
                        clean = True
                        break
                    return DISCONNECTED, "Stream ended before generation completed"
                if result is not None:
                    continue  # only the chunked terminator is expected after the end line
                if buf:
                    data = buf + data
                    buf = b""
                if data[-1] != 10:
                    cut = data.rfind(b"\n")
                    buf = data[cut + 1 :]
                    data = data[: cut + 1] if cut >= 0 else b""
                    if not data:
                        continue
                tokens = []
                for line in data[:-1].split(b"\n"):
                    if not line:
                        continue
                    if line[0] == wire.QUOTE:
                        tokens.append(line)
                    else:
                        result = json.loads(line)
                        break
                if tokens:
                    n = len(tokens)
                    ctx.generated += n
                    w.kv_load += n
                    load += n
                    now = time.monotonic()
                    if ctx.last_token_t is None:
                        self.m_ttft.labels(ctx.model).observe(now - ctx.t0)
                    else:
                        gap = (now - ctx.last_token_t) / n
                        for _ in range(n):
                            itl.observe(gap)
                    ctx.last_token_t = now
                    if ctx.stream:
                        try:
                            await ctx.resp.write(ctx.fmt.tokens(tokens))
                        except (ConnectionError, RuntimeError) as e:
                            raise ClientGone(str(e)) from None
                    else:
                        ctx.pieces.extend(tokens)
                if result is not None and content.is_eof():
                    clean = True
                    break
            if "error" in result:
                return WORKER_ERROR, result["error"]
            ctx.final_prompt_tokens = int(result.get("prompt_tokens", attempt_prompt))
            return DONE, result.get("finish_reason", "length")
        finally:
            w.inflight -= 1
            w.kv_load -= load
            if wr is not None:
                if clean:
                    wr.release()  # whole message read: the connection goes back to the pool
                else:
                    wr.close()  # closes the connection: the worker sees the disconnect at once

    async def _commit_stream(self, request: web.Request, ctx: Ctx) -> None:
        ctx.fmt = fmt.StreamFormat(ctx.chat, ctx.response_id, ctx.model, ctx.created)
        resp = web.StreamResponse(headers=SSE_HEADERS)
        try:
            await resp.prepare(request)
        except (ConnectionError, RuntimeError) as e:
            raise ClientGone(str(e)) from None
        ctx.resp = resp

    async def _send_final(self, ctx: Ctx, data: bytes) -> None:
        try:
            await ctx.resp.write(data)
            await ctx.resp.write_eof()
        except (ConnectionError, RuntimeError) as e:
            raise ClientGone(str(e)) from None

    def _log_completed(self, ctx: Ctx, status: str, error_type: str = "", detail: str = "") -> None:
        elapsed = time.monotonic() - ctx.t0
        self.m_requests.labels(ctx.endpoint, ctx.model, ctx.request_type, status, error_type).inc()
        self.m_duration.labels(ctx.model).observe(elapsed)
        if ctx.generated:
            self.m_output_tokens.labels(ctx.model).inc(ctx.generated)
        line = (
            f"request completed request_id={ctx.rid} model={ctx.model} endpoint={ctx.endpoint} "
            f"request_type={ctx.request_type} status={status} "
        )
        if error_type:
            line += f'error_type={error_type} error_detail="{detail}" '
        line += (
            f"elapsed_ms={int(elapsed * 1000)} input_tokens={ctx.final_prompt_tokens} output_tokens={ctx.generated} "
            f"worker_id={ctx.worker.instance_id if ctx.worker else ''}"
        )
        if status == "success" or status == "cancelled":
            METRICS_LOG.info(line)
        else:
            METRICS_LOG.error(line)

    async def _finish_ok(self, request: web.Request, ctx: Ctx, finish_reason: str) -> web.StreamResponse:
        if ctx.stream:
            data = ctx.fmt.finish(finish_reason)
            if ctx.include_usage:
                data += ctx.fmt.usage_chunk(ctx.final_prompt_tokens, ctx.generated)
            await self._send_final(ctx, data + fmt.DONE)
            self._log_completed(ctx, "success")
            return ctx.resp
        text = "".join(json.loads(b"[" + b",".join(ctx.pieces) + b"]")) if ctx.pieces else ""
        body = fmt.unary_body(ctx.chat, ctx.response_id, ctx.model, ctx.created, text, finish_reason,
                              ctx.final_prompt_tokens, ctx.generated)
        self._log_completed(ctx, "success")
        return web.json_response(body)

    async def _finish_worker_error(self, request: web.Request, ctx: Ctx, error) -> web.StreamResponse:
        """The worker ended the stream with an error marker (e.g. its drain timed out): no migration."""
        DISCONNECT.error(
            "Semantic streaming failure class=Internal reason=runtime.unclassified "
            f'diagnostic=Some("All output transmitters closed") request_id={ctx.rid}'
        )
        self.m_failures.labels("Internal", "runtime.unclassified").inc()
        self._log_completed(ctx, "error", "internal", "internal server error during processing")
        if ctx.stream:
            await self._send_final(ctx, fmt.error_event(fmt.INTERNAL_ERROR) + fmt.DONE)
            return ctx.resp
        return web.json_response(fmt.error_body(500, "Internal server error"), status=500)

    async def _fail_unavailable(self, request: web.Request, ctx: Ctx, reason: str) -> web.StreamResponse:
        self.m_failures.labels("Unavailable", reason).inc()
        self._log_completed(ctx, "error", "unavailable", "no backend worker available")
        if ctx.stream and ctx.resp is not None:
            await self._send_final(ctx, fmt.error_event(fmt.UNAVAILABLE_ERROR) + fmt.DONE)
            return ctx.resp
        HTTP.info(f"http response sent status=503 request_id={ctx.rid}")
        return web.json_response(fmt.error_body(503, "Service temporarily unavailable"), status=503)

    def _reject_busy(self, ctx: Ctx) -> web.Response:
        status = self.args.rejection_status
        self.m_reject.labels(ctx.endpoint, ctx.model).inc()
        HTTP.warning(
            f"Rejecting request: all workers are busy request_id={ctx.rid} model={ctx.model} "
            f"busy_threshold={self.args.busy_threshold:g}"
        )
        HTTP.error(f"http response sent status={status} request_id={ctx.rid}")
        self._event("request_rejected", request_id=ctx.rid, reason="all workers busy", status=status)
        self._log_completed(ctx, "error", "overload", "all workers are busy")
        if status == 529:  # Dynamo 1.6.1 as measured
            message = "Service temporarily overloaded: All workers are busy, please retry later"
        else:  # Dynamo's documented answer
            message = "Service temporarily unavailable: All workers are busy, please retry later"
        return web.json_response(
            fmt.error_body(status, message), status=status, headers={"Retry-After": str(self.args.retry_after_s)}
        )

    def _on_client_cancel(self, ctx: Ctx) -> None:
        w = ctx.worker
        DISCONNECT.warning(f"Stream closed unexpectedly; issuing cancellation request_id={ctx.rid}")
        ROUTER.info(
            'route request cancelled request.outcome="cancelled" cancellation.signal="stream_drop" '
            f"request_id={ctx.rid} worker_id={w.instance_id if w else ''} request.attempt={ctx.attempt} "
            f"migration.tokens_completed={ctx.generated}"
        )
        self.m_cancel.labels(ctx.endpoint, ctx.model, ctx.request_type).inc()
        self._disconnected += 1
        self._log_completed(ctx, "cancelled", "cancelled", "cancelled before completion")
        self._event(
            "request_cancelled", request_id=ctx.rid, role=w.name if w else None,
            instance_id=w.instance_id if w else None, tokens_completed=ctx.generated,
        )

    # -- shutdown ---------------------------------------------------------------------------

    async def shutdown(self) -> None:
        """SIGTERM/SIGINT: 503 for new work, drain in-flight requests up to the timeout, stop."""
        if self.draining:
            return
        self.draining = True
        HTTP.info(f"frontend service entering draining stage previous_stage=Ready inflight_requests={self.inflight}")
        self._event("frontend_draining", inflight=self.inflight)
        deadline = time.monotonic() + self.args.drain_timeout_s
        while self.inflight and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        if self.inflight:
            HTTP.warning(f"Timed out waiting for inflight inference requests to drain inflight_requests={self.inflight}")
        HTTP.info(f"frontend service entering stopping stage inflight_requests={self.inflight}")
        self.stopping = True
        self.stopped.set()


def _component(entry: WorkerEntry) -> str:
    return "prefill" if entry.kind == wire.PREFILL else "backend"


def _write_addr_file(path: str, info: dict) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(info, f)
    os.replace(tmp, path)


async def serve(args: argparse.Namespace) -> int:
    fe = Frontend(args)
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_get("/v1/models", fe.list_models)
    app.router.add_post("/v1/completions", fe.completions)
    app.router.add_post("/v1/chat/completions", fe.chat_completions)
    app.router.add_get("/health", fe.health)
    app.router.add_get("/live", fe.live)
    app.router.add_get("/metrics", fe.metrics)
    app.router.add_post(wire.LEASE_PATH, fe.lease)
    app.router.add_post(wire.DEREGISTER_PATH, fe.deregister)
    # No connection limit: every in-flight request holds one connection to its worker.
    fe.session = ClientSession(
        connector=TCPConnector(limit=0),
        timeout=ClientTimeout(total=None, sock_connect=2),
        auto_decompress=False,
    )
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port)
    try:
        await site.start()
    except OSError as e:
        MAIN.error(f"cannot bind {args.host}:{args.port}: {e.strerror or e}")
        await runner.cleanup()
        await fe.session.close()
        return 1
    port = runner.addresses[0][1]
    if args.addr_file:
        _write_addr_file(args.addr_file, {"role": "frontend", "pid": os.getpid(), "port": port,
                                          "url": f"http://{args.host}:{port}"})
    if args.migration_limit > 0:
        MAIN.info(f"Request migration enabled (limit: {args.migration_limit})")
    else:
        MAIN.info("Request migration disabled (limit: 0)")
    MAIN.info(f"Starting HTTP service host={args.host} port={port} router_mode=round-robin")
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: asyncio.ensure_future(fe.shutdown()))
    sweeper = asyncio.ensure_future(fe._sweep_leases())
    watcher = asyncio.ensure_future(watch_parent(args.parent_pid, fe.shutdown))
    await fe.stopped.wait()
    sweeper.cancel()
    watcher.cancel()
    await runner.cleanup()
    await fe.session.close()
    if fe.events is not None:
        fe.events.close()
    MAIN.info("Frontend stopped")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ftlocust.targets.reference.frontend")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--addr-file", default=None)
    p.add_argument("--events", default=None, help="ground-truth JSONL event log to append to")
    p.add_argument("--migration-limit", type=int, default=3)
    p.add_argument("--context-length", type=int, default=8192)
    p.add_argument("--busy-threshold", type=float, default=0.0,
                   help="reject (503) when every worker's KV load is at least this fraction of its capacity; 0=off")
    p.add_argument("--retry-after-s", type=int, default=1)
    p.add_argument("--rejection-status", type=int, choices=(503, 529), default=503,
                   help="HTTP status of a rejection: 503 (Dynamo's docs) or 529 (Dynamo 1.6.1 as measured)")
    p.add_argument("--inhibit-s", type=float, default=5.0)
    p.add_argument("--lease-sweep-s", type=float, default=0.1)
    p.add_argument("--wake-wait-s", type=float, default=5.0,
                   help="a request that finds only sleeping workers waits this long for one to wake")
    p.add_argument(
        "--drain-timeout-s", type=float,
        default=float(os.environ.get("DYN_HTTP_GRACEFUL_SHUTDOWN_TIMEOUT_SECS", 5)),
    )
    p.add_argument("--parent-pid", type=int, default=None,
                   help="shut down if this process (the launcher/driver) goes away")
    p.add_argument("--log-level", default="INFO")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.setup(args.log_level)
    return asyncio.run(serve(args))


if __name__ == "__main__":
    sys.exit(main())
