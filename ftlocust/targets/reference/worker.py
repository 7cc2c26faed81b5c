"""Engine worker of the reference deployment: one process, one aiohttp server on 127.0.0.1 (or
the address `--host` gives it in its own network namespace).

It "generates" deterministic tokens (tokens.py) with a prefill time that scales with the prompt
length and a fixed inter-token delay, admits requests within a KV capacity (in tokens), holds a
lease with the frontend, and behaves like a Dynamo worker where drills look: the same log lines
(`request received request_id=<uuid>`, `request completed`, `request cancellation received`),
the same `dynamo_component_*` metrics, SIGTERM = deregister at once, drain in-flight requests up
to a timeout, then end them with an in-band error and exit.

With `--engine-core NAME` it also runs a child process named NAME (engine_core.py), like vLLM's
`VLLM::EngineCore` under `dynamo.vllm`, and watches it: when the child dies, the worker does what
Dynamo's vLLM worker did (/work/shared/reference/vllm-cpu.md): logs `EngineDeadError` and
`Initiating Dynamo Runtime shutdown`, deregisters at once, cuts its in-flight streams without an
end line (the frontend sees the stream break and migrates it, as for a SIGKILLed worker) and
exits with code 1.

With `--kernel-log PATH` it watches that file (a stand-in for the kernel log) for XID lines
naming its GPU (`--gpu PCI`) and, on one, does the same as for a dead engine core, as Dynamo's
engine monitor does on a GPU failure (exit 1). It also offers vLLM's and SGLang's sleep / wake
endpoints: asleep, it stays registered (its lease says so, the frontend routes nothing to it)
but serves nothing (503) until woken (`--asleep` starts it so).

Run: python -m ftlocust.targets.reference.worker --name worker-1 --frontend-url URL ...
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import random
import re
import signal
import subprocess
import sys
import time

from aiohttp import ClientError, ClientSession, ClientTimeout, TCPConnector, web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import disable_created_metrics
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from ftlocust.gpu import pci_key
from ftlocust.targets.reference import logs, wire
from ftlocust.targets.reference.lifecycle import watch_parent
from ftlocust.targets.reference.tokens import token_id

disable_created_metrics()

INGRESS = logs.get("dynamo_runtime::pipeline::network::ingress")
PUSH = logs.get("dynamo_runtime::pipeline::network::ingress::push_handler")
RUNTIME = logs.get("dynamo_runtime::runtime")
MAIN = logs.get("main.graceful_shutdown")
STARTUP = logs.get("main")
DISCOVERY = logs.get("dynamo_runtime::discovery")
PREFILL_LOG = logs.get("dynamo_llm::disagg")
ENGINE = logs.get("dynamo.vllm.engine_monitor")

GPU_LOG = logs.get("dynamo.vllm.gpu")
SLEEP_LOG = logs.get("dynamo.vllm.sleep_mode")

# An XID line anywhere in a kernel-log line: plain, with a /dev/kmsg prefix, or `NVRM: NVRM:`.
XID_RE = re.compile(r"Xid \(PCI:([0-9a-fA-F:.]+)\): (\d+)")
KERNEL_LOG_POLL_S = 0.1
SLEEP_LEVELS = (1, 2, 3)  # vLLM: 1 = weights offloaded, 2 = weights and buffers dropped, 3 = everything

ENGINE_CORE_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "engine_core.py")


class _Req:
    """One request in flight on this worker."""

    __slots__ = ("request_id", "task", "kv", "drain_abort", "transport", "engine_dead")

    def __init__(self, request_id: str, task: asyncio.Task | None, transport=None):
        self.request_id = request_id
        self.task = task
        self.kv = 0  # KV tokens this request holds
        self.drain_abort = False  # set when the drain timed out: end with an error, not cancel
        self.transport = transport  # its connection, cut when the engine core dies
        self.engine_dead = False  # set when the engine core died: the stream is cut, no end line


class Worker:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.name = args.name
        self.kind = args.kind
        self.instance_id = random.getrandbits(63)
        self.component = "prefill" if self.kind == wire.PREFILL else "backend"
        self.url = ""  # known once bound
        self.active: dict[str, _Req] = {}
        self.kv_used = 0
        self.waiters: collections.deque = collections.deque()  # (need, future) FIFO
        self.registered = False
        self.draining = False
        self.stopped = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._lease_task: asyncio.Task | None = None
        self.session: ClientSession | None = None
        self.engine_core: subprocess.Popen | None = None
        self.engine_dead = False
        self._engine_fd: int | None = None  # pidfd of the engine core, watched by the loop
        self._engine_poll: asyncio.Task | None = None  # fallback watcher without pidfd
        self._no_more_tokens = asyncio.Event()  # never set: what a stream waits on once the engine died
        self.exit_code = 0
        self.asleep = bool(args.asleep)  # registered, not serving
        self.sleep_level = 1 if self.asleep else 0
        self.started = time.monotonic()
        self._init_metrics()

    # -- metrics ----------------------------------------------------------------------------

    def _init_metrics(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        names = ["dynamo_component", "dynamo_endpoint", "dynamo_namespace", "worker_id"]
        values = [self.component, "generate", "dynamo", format(self.instance_id, "x")]
        self.m_requests = Counter(
            "dynamo_component_requests", "Requests received by this endpoint", names, registry=r
        ).labels(*values)
        self.m_cancel = Counter(
            "dynamo_component_cancellation", "Requests cancelled by the caller", names, registry=r
        ).labels(*values)
        self.m_errors = Counter(
            "dynamo_component_errors", "Requests ended with an error", names + ["error_type"], registry=r
        )
        self._labels = values
        self.m_duration = Histogram(
            "dynamo_component_request_duration_seconds", "Request duration", names, registry=r,
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
        ).labels(*values)
        Gauge("dynamo_component_inflight_requests", "Requests in flight", names, registry=r).labels(
            *values
        ).set_function(lambda: len(self.active))
        Gauge("dynamo_component_uptime_seconds", "Uptime", names, registry=r).labels(*values).set_function(
            lambda: time.monotonic() - self.started
        )
        Gauge("vllm:num_requests_running", "Requests admitted to the KV cache", registry=r).set_function(
            lambda: len(self.active) - len(self.waiters)
        )
        Gauge("vllm:num_requests_waiting", "Requests waiting for KV capacity", registry=r).set_function(
            lambda: len(self.waiters)
        )
        Gauge("vllm:kv_cache_usage_perc", "KV tokens in use / capacity", registry=r).set_function(
            lambda: self.kv_used / self.args.kv_capacity
        )
        self.m_ttft = Histogram(
            "vllm:time_to_first_token_seconds", "Time to first token", registry=r,
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    # -- health -----------------------------------------------------------------------------

    async def health(self, request: web.Request) -> web.Response:
        if self.registered and not self.draining:
            if self.asleep:  # alive and registered, not serving
                return web.json_response({"status": "sleeping", "instance_id": self.instance_id,
                                          "sleep_level": self.sleep_level, "endpoints": {"generate": "sleeping"}})
            body = {"status": "ready", "instance_id": self.instance_id, "endpoints": {"generate": "ready"}}
            return web.json_response(body)
        return web.json_response({"status": "notready", "endpoints": {"generate": "notready"}}, status=503)

    async def live(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "live"})

    # -- KV admission -----------------------------------------------------------------------

    async def _admit(self, req: _Req, need: int) -> None:
        """Take `need` KV tokens; wait (FIFO) while they do not fit. An idle worker always admits."""
        if not self.waiters and (self.kv_used + need <= self.args.kv_capacity or self.kv_used == 0):
            self.kv_used += need
            req.kv = need
            return
        fut = asyncio.get_running_loop().create_future()
        entry = (need, fut)
        self.waiters.append(entry)
        try:
            await fut  # _release() added our tokens to kv_used before resolving
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.kv_used -= need  # admitted in the same instant we were cancelled
                self._wake()
            else:
                try:
                    self.waiters.remove(entry)
                except ValueError:
                    pass
            raise
        req.kv = need

    def _release(self, req: _Req) -> None:
        self.kv_used -= req.kv
        req.kv = 0
        self._wake()

    def _wake(self) -> None:
        while self.waiters:
            need, fut = self.waiters[0]
            if fut.done():
                self.waiters.popleft()
                continue
            if self.kv_used + need > self.args.kv_capacity and self.kv_used > 0:
                break
            self.waiters.popleft()
            self.kv_used += need
            fut.set_result(None)

    # -- request plane ----------------------------------------------------------------------

    def _begin(self, request_id: str, transport=None) -> _Req:
        req = _Req(request_id, asyncio.current_task(), transport)
        self.active[request_id] = req
        self._idle.clear()
        self.m_requests.inc()
        PUSH.info(
            f'request received request_id={request_id} otel.kind="server" component="{self.component}" '
            f'endpoint="generate" namespace="dynamo" instance_id={self.instance_id}'
        )
        return req

    def _end(self, req: _Req, t0: float) -> None:
        self._release(req)
        self.active.pop(req.request_id, None)
        if not self.active:
            self._idle.set()
        if req.engine_dead:  # cut with the engine: not completed, not cancelled by the caller
            self.m_errors.labels(*self._labels, "engine_dead").inc()
            return
        self.m_duration.observe(time.monotonic() - t0)
        PUSH.info(f"request completed request_id={req.request_id} instance_id={self.instance_id}")

    def _cancelled(self, req: _Req, signal_name: str) -> None:
        self.m_cancel.inc()
        PUSH.info(
            f"request cancellation received request_id={req.request_id} cancellation.signal=\"{signal_name}\" "
            f'cancellation.source="upstream" otel.kind="server" instance_id={self.instance_id}'
        )

    def _prefill_seconds(self, prompt_tokens: int) -> float:
        return self.args.prefill_base_s + self.args.prefill_per_token_s * prompt_tokens

    async def generate(self, request: web.Request) -> web.StreamResponse:
        if self.draining:
            return web.json_response({"error": "worker is shutting down"}, status=503)
        if self.asleep:
            return web.json_response({"error": "engine is sleeping"}, status=503)
        body = json.loads(await request.read())
        request_id = str(body["request_id"])
        seed = int(body["seed"])
        start = int(body.get("start_index", 0))
        count = int(body["max_tokens"])
        prompt_tokens = int(body["prompt_tokens"])
        t0 = time.monotonic()
        req = self._begin(request_id, request.transport)
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        resp.enable_chunked_encoding()
        try:
            await resp.prepare(request)  # headers go out now: the frontend knows we accepted
            await self._admit(req, prompt_tokens)
            await self._prefill(request_id, prompt_tokens, body.get("prefill_urls") or ())
            loop = asyncio.get_running_loop()
            delay = self.args.token_delay_s
            lines = wire.TOKEN_LINES
            write = resp.write
            next_t = loop.time()
            for i in range(start, start + count):
                if i != start:
                    next_t += delay
                    wait = next_t - loop.time()
                    if wait > 0:
                        await asyncio.sleep(wait)
                    else:
                        next_t -= wait  # running late: do not burst to catch up
                if self.engine_dead:  # no engine, no tokens: wait for the connection to be cut
                    await self._no_more_tokens.wait()
                await write(lines[token_id(seed, i)])
                req.kv += 1
                self.kv_used += 1
                if i == start:
                    self.m_ttft.observe(time.monotonic() - t0)
            await write(wire.finish_line(prompt_tokens))
            await resp.write_eof()
        except asyncio.CancelledError:
            if req.engine_dead:
                self._end(req, t0)
                raise
            if not req.drain_abort:
                self._cancelled(req, "kill")
                self._end(req, t0)
                raise
            # Drain timed out: end the stream "cleanly" with an error marker (Dynamo 4c).
            self.m_errors.labels(*self._labels, "internal").inc()
            try:
                await resp.write(wire.error_line())
                await resp.write_eof()
            except (ConnectionError, RuntimeError):
                pass
        except (ConnectionError, RuntimeError):
            if req.engine_dead:
                self._end(req, t0)
                return resp
            # The caller went away between two tokens and the cancellation was not yet delivered.
            self._cancelled(req, "stream_drop")
            self._end(req, t0)
            return resp
        self._end(req, t0)
        return resp

    async def _prefill(self, request_id: str, prompt_tokens: int, prefill_urls) -> None:
        """Put the prompt in the KV cache: locally, or (decode worker) on a prefill worker."""
        if self.kind == wire.DECODE:
            for url in prefill_urls:
                try:
                    async with self.session.post(
                        url + wire.PREFILL_PATH,
                        json={"request_id": request_id, "prompt_tokens": prompt_tokens},
                    ) as r:
                        await r.read()
                        if r.status == 200:
                            return
                        reason = f"status {r.status}"
                except (ClientError, OSError, asyncio.TimeoutError) as e:
                    reason = f"{type(e).__name__}: {e}"
                PREFILL_LOG.warning(
                    f"Remote prefill failed, trying the next prefill worker request_id={request_id} "
                    f"prefill_url={url} error={reason}"
                )
            PREFILL_LOG.warning(
                f"No prefill worker available; falling back to local prefill request_id={request_id} "
                f"prompt_tokens={prompt_tokens}"
            )
        await asyncio.sleep(self._prefill_seconds(prompt_tokens))

    async def prefill(self, request: web.Request) -> web.Response:
        """Prefill plane (kind prefill): compute the prompt's KV, return when done."""
        if self.draining:
            return web.json_response({"error": "worker is shutting down"}, status=503)
        if self.asleep:
            return web.json_response({"error": "engine is sleeping"}, status=503)
        body = json.loads(await request.read())
        request_id = str(body["request_id"])
        prompt_tokens = int(body["prompt_tokens"])
        t0 = time.monotonic()
        req = self._begin(request_id, request.transport)
        try:
            await self._admit(req, prompt_tokens)
            await asyncio.sleep(self._prefill_seconds(prompt_tokens))
            if self.engine_dead:
                await self._no_more_tokens.wait()
        except asyncio.CancelledError:
            if req.engine_dead:
                self._end(req, t0)
                raise
            if not req.drain_abort:
                self._cancelled(req, "kill")
                self._end(req, t0)
                raise
            self.m_errors.labels(*self._labels, "internal").inc()
            self._end(req, t0)
            return web.json_response({"error": wire.INTERNAL_ERROR}, status=500)
        self._end(req, t0)
        return web.json_response({"prompt_tokens": prompt_tokens})

    # -- discovery (lease) ------------------------------------------------------------------

    def _lease_body(self) -> dict:
        return {
            "instance_id": self.instance_id,
            "name": self.name,
            "kind": self.kind,
            "url": self.url,
            "model": self.args.model,
            "kv_capacity": self.args.kv_capacity,
            "ttl_s": self.args.lease_ttl_s,
            "pid": os.getpid(),
            "asleep": self.asleep,
        }

    async def _lease_loop(self) -> None:
        """Register, then renew every min(ttl/3, 1 s); retry quickly while the frontend is unreachable.

        Renewing at least every second lets a restarted frontend see its workers again at once.
        """
        renew_s = min(self.args.lease_ttl_s / 3, 1.0)
        failing = False
        while not self.draining:
            try:
                async with self.session.post(
                    self.args.frontend_url + wire.LEASE_PATH, json=self._lease_body(), timeout=ClientTimeout(total=2)
                ) as r:
                    await r.read()
                    ok = r.status == 200
            except (ClientError, OSError, asyncio.TimeoutError):
                ok = False
            if ok:
                if not self.registered:
                    DISCOVERY.info(
                        f"Registered endpoint with discovery instance_id={self.instance_id} name={self.name} "
                        f"kind={self.kind} url={self.url} lease_ttl_secs={self.args.lease_ttl_s:g}"
                    )
                elif failing:
                    DISCOVERY.info(f"Lease renewed again instance_id={self.instance_id}")
                self.registered = True
                failing = False
                await asyncio.sleep(renew_s)
            else:
                if not failing and self.registered:
                    DISCOVERY.warning(f"Lease renewal failed, retrying instance_id={self.instance_id}")
                failing = True
                await asyncio.sleep(min(0.2, renew_s))

    async def _deregister(self) -> None:
        try:
            async with self.session.post(
                self.args.frontend_url + wire.DEREGISTER_PATH,
                json={"instance_id": self.instance_id, "name": self.name},
                timeout=ClientTimeout(total=1),
            ) as r:
                await r.read()
        except (ClientError, OSError, asyncio.TimeoutError) as e:
            DISCOVERY.warning(f"Failed to unregister endpoint from discovery error={type(e).__name__}")

    async def _push_lease(self) -> bool:
        """Renew the lease now (its body carries `asleep`): the frontend routes by it at once."""
        try:
            async with self.session.post(
                self.args.frontend_url + wire.LEASE_PATH, json=self._lease_body(), timeout=ClientTimeout(total=2)
            ) as r:
                await r.read()
                return r.status == 200
        except (ClientError, OSError, asyncio.TimeoutError):
            return False

    # -- sleep / wake (vLLM /engine/sleep, /engine/wake_up; SGLang memory occupation) ---------

    async def engine_sleep(self, request: web.Request) -> web.Response:
        """Sleep: stay registered, take no new work (the frontend skips a sleeping worker; a
        request that arrives anyway gets 503). In-flight requests finish."""
        level = 1
        if request.path == "/engine/sleep":
            try:
                body = json.loads(await request.read() or b"{}")
                level = body.get("level", 1) if isinstance(body, dict) else None
            except ValueError:
                level = None
            if isinstance(level, bool) or level not in SLEEP_LEVELS:
                return web.json_response({"status": "error", "message": "level: expected 1, 2 or 3"}, status=400)
        return await self._set_asleep(True, level, request.path)

    async def engine_wake(self, request: web.Request) -> web.Response:
        return await self._set_asleep(False, 0, request.path)

    async def _set_asleep(self, asleep: bool, level: int, path: str) -> web.Response:
        if self.draining:
            return web.json_response({"status": "error", "message": "worker is shutting down"}, status=503)
        was = self.asleep
        self.asleep, self.sleep_level = asleep, level
        if asleep:
            SLEEP_LOG.info(f"Engine put to sleep level={level} instance_id={self.instance_id} path={path} "
                           f"inflight={len(self.active)} (registered, not serving)")
        else:
            SLEEP_LOG.info(f"Engine woken up instance_id={self.instance_id} path={path} was_asleep={str(was).lower()} "
                           f"(serving)")
        if self.registered and not await self._push_lease():  # else the next renewal tells the frontend
            DISCOVERY.warning(f"Lease update after {'sleep' if asleep else 'wake'} failed; the next renewal "
                              f"carries it instance_id={self.instance_id}")
        return web.json_response({"status": "ok"})

    # -- GPU failure (--kernel-log PATH, --gpu PCI) -------------------------------------------

    async def watch_kernel_log(self, path: str, offset: int) -> None:
        """Tail the kernel log from `offset` (its end when we started: older lines are history);
        an XID line naming our GPU is a GPU failure. Polled: a regular file gives no inotify-free
        way to wait, and 0.1 s is well under what a drill measures."""
        own = pci_key(self.args.gpu)
        partial = b""
        while not self.stopped.is_set():
            await asyncio.sleep(KERNEL_LOG_POLL_S)
            try:
                with open(path, "rb") as f:
                    size = os.fstat(f.fileno()).st_size
                    if size < offset:  # truncated (rotated): start again from its beginning
                        offset, partial = 0, b""
                    if size == offset:
                        continue
                    f.seek(offset)
                    data = f.read(size - offset)
            except OSError:
                continue  # not there (yet): nothing written
            offset += len(data)
            *lines, partial = (partial + data).split(b"\n")
            for raw in lines:
                line = raw.decode("utf-8", "replace")
                m = XID_RE.search(line)
                if m and pci_key(m.group(1)) == own:
                    self._gpu_failed(int(m.group(2)), m.group(1), line.strip())
                    return

    def _gpu_failed(self, xid: int, address: str, line: str) -> None:
        """An XID on our GPU: the engine is dead, as when the engine core dies (same shutdown)."""
        if self.engine_dead:
            return
        self.engine_dead = True
        self._unwatch_engine_core()  # its child is stopped at shutdown, not reported as a second failure
        ENGINE.error(
            f"EngineDeadError: GPU failure detected: Xid {xid} on PCI:{address} (this worker's GPU "
            f"{self.args.gpu}) instance_id={self.instance_id} inflight={len(self.active)} "
            f'kernel_log_line="{line}"'
        )
        asyncio.ensure_future(self._engine_dead_shutdown())

    # -- engine core (--engine-core NAME) ---------------------------------------------------

    async def start_engine_core(self, name: str, timeout_s: float = 10.0) -> bool:
        """Start the engine-core child and wait until it carries its name; watch it from then on.

        Started as `NAME -S engine_core.py`: argv[0] is the name, the real python the executable;
        PYTHONEXECUTABLE tells that python where it is (argv[0] no longer does).
        """
        env = dict(os.environ, PYTHONEXECUTABLE=sys.executable)
        try:
            proc = subprocess.Popen([name, "-S", ENGINE_CORE_SCRIPT, "--parent-pid", str(os.getpid())],
                                    executable=sys.executable, env=env, stdin=subprocess.DEVNULL)
        except OSError as e:
            STARTUP.error(f"cannot start the engine core {name}: {e.strerror or e}")
            return False
        self.engine_core = proc
        deadline = time.monotonic() + timeout_s
        while _comm(proc.pid) != name[:15]:  # renamed: exec'd, and looks like vLLM's
            if proc.poll() is not None or time.monotonic() > deadline:
                STARTUP.error(f"engine core {name} (pid {proc.pid}) did not start: "
                              f"{_exit_status(proc.poll()) if proc.poll() is not None else 'timed out'}")
                self._stop_engine_core_now()
                return False
            await asyncio.sleep(0.005)
        STARTUP.info(f"Engine core started name={name} pid={proc.pid}")
        loop = asyncio.get_running_loop()
        try:
            self._engine_fd = os.pidfd_open(proc.pid)
            loop.add_reader(self._engine_fd, self._engine_core_exited)
        except (AttributeError, OSError):  # no pidfd (old kernel): poll
            self._engine_fd = None
            self._engine_poll = asyncio.ensure_future(self._poll_engine_core())
        return True

    async def _poll_engine_core(self) -> None:
        while self.engine_core is not None and self.engine_core.poll() is None:
            await asyncio.sleep(0.05)
        self._engine_core_exited()

    def _unwatch_engine_core(self) -> None:
        if self._engine_fd is not None:
            asyncio.get_running_loop().remove_reader(self._engine_fd)
            os.close(self._engine_fd)
            self._engine_fd = None
        if self._engine_poll is not None and self._engine_poll is not asyncio.current_task():
            self._engine_poll.cancel()
        self._engine_poll = None

    def _engine_core_exited(self) -> None:
        self._unwatch_engine_core()
        proc = self.engine_core
        if proc is None or self.engine_dead:
            return
        code = proc.wait()  # it is gone: reaps at once
        self.engine_dead = True
        ENGINE.error(
            f"EngineDeadError: EngineCore encountered an issue; engine core {proc.args[0]} pid={proc.pid} "
            f"{_exit_status(code)} instance_id={self.instance_id} inflight={len(self.active)}"
        )
        asyncio.ensure_future(self._engine_dead_shutdown())

    async def _engine_dead_shutdown(self) -> None:
        """Like Dynamo's vLLM worker: withdraw readiness and deregister at once, cut the in-flight
        streams (no end line: the frontend migrates them), exit 1. No drain: nothing generates."""
        ENGINE.warning("Initiating Dynamo Runtime shutdown")
        self.exit_code = 1
        self.draining = True  # /health 503, new requests 503 (also during a SIGTERM drain)
        if self._lease_task is not None:
            self._lease_task.cancel()
        await self._deregister()
        RUNTIME.info(f"Runtime readiness withdrawn: engine dead instance_id={self.instance_id}")
        if self.active:
            INGRESS.warning(f'Aborting inflight requests: engine dead endpoint_name="generate" '
                            f"inflight_count={len(self.active)}")
        await self._end_inflight(engine_dead=True)
        self.stopped.set()

    async def _end_inflight(self, engine_dead: bool) -> None:
        """End every in-flight request, then wait (2 s at most) for their handlers to finish.
        Engine dead: the streams are cut (the frontend migrates them); else the drain timed out
        and each ends with an in-band error."""
        for req in list(self.active.values()):
            if engine_dead:
                req.engine_dead = True
                if req.transport is not None:
                    req.transport.abort()  # no chunked terminator: the body ends before its end line
                    continue
            else:
                req.drain_abort = True
            if req.task is not None:
                req.task.cancel()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout=2)
        except asyncio.TimeoutError:
            pass

    async def stop_engine_core(self, grace_s: float = 2.0) -> None:
        """Normal shutdown: SIGTERM the child, SIGKILL it after grace_s (by PID, ours only)."""
        proc = self.engine_core
        if proc is None or (self.engine_dead and proc.poll() is not None):  # it died: nothing to stop
            return
        self._unwatch_engine_core()
        self.engine_core = None
        if proc.poll() is None:
            proc.terminate()
            deadline = time.monotonic() + grace_s
            while proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
        self._kill_engine_core(proc)
        STARTUP.info(f"Engine core stopped pid={proc.pid} {_exit_status(proc.returncode)}")

    def _stop_engine_core_now(self) -> None:
        proc, self.engine_core = self.engine_core, None
        if proc is not None:
            self._kill_engine_core(proc)

    @staticmethod
    def _kill_engine_core(proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            proc.kill()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass

    # -- shutdown ---------------------------------------------------------------------------

    async def shutdown(self) -> None:
        """SIGTERM/SIGINT: deregister at once, drain up to the timeout, end the rest with an error."""
        if self.draining:
            return
        MAIN.info("Received shutdown signal, shutting down DistributedRuntime instances")
        self.draining = True
        if self._lease_task is not None:
            self._lease_task.cancel()
        await self._deregister()
        RUNTIME.info("Runtime readiness withdrawn for shutdown")
        RUNTIME.info("Phase 2: Waiting for graceful endpoints to complete")
        if self.active:
            INGRESS.info(f'Waiting for inflight requests to complete endpoint_name="generate" inflight_count={len(self.active)}')
            try:
                await asyncio.wait_for(self._idle.wait(), timeout=self.args.drain_timeout_s)
                INGRESS.info('All inflight requests completed endpoint_name="generate"')
            except asyncio.TimeoutError:
                INGRESS.warning(
                    "Timed out waiting for inflight requests to drain; proceeding with shutdown "
                    f'endpoint_name="generate" timeout_secs={self.args.drain_timeout_s:g} remaining={len(self.active)}'
                )
                await self._end_inflight(engine_dead=False)
        self.stopped.set()


def _comm(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().rstrip("\n")
    except OSError:
        return None


def _exit_status(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


def _write_addr_file(path: str, info: dict) -> None:
    """Atomically publish where this process listens (the deployment reads it)."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(info, f)
    os.replace(tmp, path)


async def serve(args: argparse.Namespace) -> int:
    worker = Worker(args)
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_get("/health", worker.health)
    app.router.add_get("/live", worker.live)
    app.router.add_get("/metrics", worker.metrics)
    if args.kind == wire.PREFILL:
        app.router.add_post(wire.PREFILL_PATH, worker.prefill)
    else:
        app.router.add_post(wire.GENERATE_PATH, worker.generate)
    for path in ("/engine/sleep", "/engine/release_memory_occupation"):
        app.router.add_post(path, worker.engine_sleep)
    for path in ("/engine/wake_up", "/engine/wake", "/engine/resume_memory_occupation"):
        app.router.add_post(path, worker.engine_wake)
    # handler_cancellation: a caller that disconnects cancels its handler at once, also while
    # it sleeps in prefill, so generation stops within milliseconds.
    worker.session = ClientSession(connector=TCPConnector(limit=0), timeout=ClientTimeout(total=None, sock_connect=2))
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port)
    try:
        await site.start()
    except OSError as e:
        STARTUP.error(f"cannot bind {args.host}:{args.port}: {e.strerror or e}")
        await runner.cleanup()
        await worker.session.close()
        return 1
    port = runner.addresses[0][1]
    worker.url = f"http://{args.host}:{port}"
    if args.addr_file:
        _write_addr_file(
            args.addr_file,
            {"role": args.name, "pid": os.getpid(), "port": port, "url": worker.url, "instance_id": worker.instance_id},
        )
    STARTUP.info(
        f"Worker started name={args.name} kind={args.kind} model={args.model} url={worker.url} "
        f"instance_id={worker.instance_id} token_delay_s={args.token_delay_s:g} kv_capacity={args.kv_capacity}"
    )
    STARTUP.info(f"GPU assigned pci_bus_id={args.gpu} kernel_log={args.kernel_log or 'none'}"
                 + (" (starting asleep)" if args.asleep else ""))
    kernel_log_watch = None
    if args.kernel_log:
        try:
            offset = os.path.getsize(args.kernel_log)  # what is there now is history
        except OSError:
            offset = 0
        kernel_log_watch = asyncio.ensure_future(worker.watch_kernel_log(args.kernel_log, offset))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: asyncio.ensure_future(worker.shutdown()))
    if args.engine_core and not await worker.start_engine_core(args.engine_core):
        await runner.cleanup()
        await worker.session.close()
        return 1
    worker._lease_task = asyncio.ensure_future(worker._lease_loop())
    watcher = asyncio.ensure_future(watch_parent(args.parent_pid, worker.shutdown))
    await worker.stopped.wait()
    watcher.cancel()
    if kernel_log_watch is not None:
        kernel_log_watch.cancel()
    await worker.stop_engine_core()
    await runner.cleanup()
    await worker.session.close()
    STARTUP.info(f"Worker stopped exit_code={worker.exit_code}")
    return worker.exit_code


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ftlocust.targets.reference.worker")
    p.add_argument("--name", required=True, help="role name, e.g. worker-1")
    p.add_argument("--kind", choices=wire.KINDS, default=wire.AGGREGATED)
    p.add_argument("--model", default="ftlocust-ref")
    p.add_argument("--frontend-url", required=True)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (its network namespace's, in one)")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--addr-file", default=None)
    p.add_argument("--token-delay-s", type=float, default=0.02)
    p.add_argument("--prefill-base-s", type=float, default=0.005)
    p.add_argument("--prefill-per-token-s", type=float, default=0.0001)
    p.add_argument("--kv-capacity", type=int, default=65536)
    p.add_argument("--lease-ttl-s", type=float, default=10.0)
    p.add_argument(
        "--drain-timeout-s",
        type=float,
        default=float(os.environ.get("DYN_RUNTIME_GRACEFUL_SHUTDOWN_TIMEOUT_SECS", 10)),
    )
    p.add_argument("--parent-pid", type=int, default=None,
                   help="shut down if this process (the launcher/driver) goes away")
    p.add_argument("--engine-core", default=None, metavar="NAME",
                   help="run an engine-core child named NAME (e.g. VLLM::EngineCore); exit 1 when it dies")
    p.add_argument("--gpu", default="00000000:19:00.0", metavar="PCI",
                   help="PCI bus id of this worker's GPU (what XID lines name)")
    p.add_argument("--kernel-log", default=None, metavar="PATH",
                   help="watch this file for XID lines naming --gpu; on one, shut down with exit 1")
    p.add_argument("--asleep", action="store_true", help="start asleep: registered, not serving, until woken")
    p.add_argument("--log-level", default="INFO")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.setup(args.log_level)
    return asyncio.run(serve(args))


if __name__ == "__main__":
    sys.exit(main())
