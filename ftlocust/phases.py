"""Fault timeline, phase classification, per-phase statistics and client-view recovery.

Plain Python (no Locust): hooks feed it, users read `TIMELINE`, checks and reports read the dicts.

Definitions (docs/ARCHITECTURE.md): with T_f the first *injected* fault's time (a failed or
not-fired fault is no fault: it never splits phases or starts a recovery), a request is
`before` if it ended <= T_f, `after` if it started >= T_f, `spanning` otherwise. Statistics are always computed
from the records' wall-clock times against the final T_f, never from `record.phase` (which a
user stamped while the fault broadcast may still have been in flight).
"""

from __future__ import annotations

import bisect
import math
import threading
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

from ftlocust.records import (
    AFTER,
    BEFORE,
    CANCELLED,
    FAILURE_OUTCOMES,
    OK,
    OUTCOMES,
    PHASES,
    SPANNING,
    RequestRecord,
)

ALL = "all"
SEED_BEFORE = "seed_before"  # the seed's split: by completion time, ended <= T_f
SEED_AFTER = "seed_after"  # ended > T_f, i.e. spanning + after
STAT_GROUPS = (*PHASES, ALL, SEED_BEFORE, SEED_AFTER)

# Float comparisons of ratios (0.9 - 0.05 is 0.8500000000000001).
_EPS = 1e-9


# Fault statuses: only INJECTED events are faults for phases, recovery, checks and plots.
INJECTED = "injected"
FAILED = "failed"  # inject() raised; `error` says why
NOT_FIRED = "not_fired"  # the trigger was never reached; `error` says why
FAULT_STATUSES = (INJECTED, FAILED, NOT_FIRED)


@dataclass
class FaultEvent:
    """One planned fault and what became of it. Times are wall clock (epoch s).

    - `injected_at`: when the injector reported the fault in effect (T_f of this fault); None
      unless `status` is `injected`.
    - `recovered_at`: when the fault's effect ended (SIGCONT sent, the restarted process ready,
      the partition lifted); None when nothing undid it (a SIGKILL without restart).
    - `rolled_back_at`: when the rollback step ran at the end of the run (None: it did not).
    - `status`: `injected`, `failed` (inject raised) or `not_fired` (trigger never reached);
      `error` says why for the last two.
    """

    name: str
    kind: str
    target: str
    injected_at: float | None
    recovered_at: float | None = None
    rolled_back_at: float | None = None
    status: str = INJECTED
    error: str | None = None
    detail: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in FAULT_STATUSES:
            raise ValueError(f"fault status must be one of {', '.join(FAULT_STATUSES)}, got {self.status!r}")
        if self.status == INJECTED and self.injected_at is None:
            raise ValueError(f"fault {self.name!r}: an injected fault needs injected_at")

    @property
    def injected(self) -> bool:
        return self.status == INJECTED and self.injected_at is not None

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "kind": self.kind,
            "target": self.target,
            "injected_at": self.injected_at,
            "recovered_at": self.recovered_at,
            "rolled_back_at": self.rolled_back_at,
            "status": self.status,
            "error": self.error,
            "detail": dict(self.detail),
        }

    @classmethod
    def from_dict(cls, data: dict) -> "FaultEvent":
        """Also reads dicts written before status / error / rolled_back_at existed (injected)."""

        def when(key: str) -> float | None:
            return None if data.get(key) is None else float(data[key])

        injected_at = when("injected_at")
        return cls(
            name=data["name"],
            kind=data["kind"],
            target=data["target"],
            injected_at=injected_at,
            recovered_at=when("recovered_at"),
            rolled_back_at=when("rolled_back_at"),
            status=data.get("status") or (INJECTED if injected_at is not None else FAILED),
            error=data.get("error"),
            detail=dict(data.get("detail") or {}),
        )


def injected_faults(faults: Iterable[FaultEvent]) -> list[FaultEvent]:
    """The faults that really happened, in injection order."""
    return sorted((f for f in faults if f.injected), key=lambda f: f.injected_at)


def first_fault_time(faults: Iterable[FaultEvent]) -> float | None:
    """T_f: the first injected fault's time; None when no fault was injected."""
    injected = injected_faults(faults)
    return injected[0].injected_at if injected else None


def phase_of(start_wall: float, end_wall: float, fault_time: float | None) -> str | None:
    """`before` / `spanning` / `after` against `fault_time`; None when no fault happened."""
    if fault_time is None:
        return None
    if end_wall <= fault_time:
        return BEFORE
    if start_wall >= fault_time:
        return AFTER
    return SPANNING


def classify(record: RequestRecord, fault_time: float | None) -> str | None:
    return phase_of(record.start_wall, record.end_wall, fault_time)


class FaultTimeline:
    """The faults of this run, in injection order. Shared by greenlets and threads of one process.

    The first fault's time is T_f for phase classification. The same event recorded twice (the
    local runner is master and worker at once) is kept once.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[FaultEvent] = []
        self.expecting_faults = False  # a drill with faults: requests before the first are "before"

    def record_fault(self, event: FaultEvent) -> bool:
        """Add `event`; False when an event with the same name and injected_at is already known,
        or when it is not an injected fault (a failed or not-fired fault has no time to classify
        against, so the timeline never holds one)."""
        if not event.injected:
            return False
        with self._lock:
            for known in self._faults:
                if known.name == event.name and known.injected_at == event.injected_at:
                    return False
            self._faults.append(event)
            self._faults.sort(key=lambda f: f.injected_at)
            return True

    def mark_recovered(self, name: str, recovered_at: float) -> bool:
        """Set `recovered_at` of the latest fault called `name`; False when none is known."""
        with self._lock:
            for known in reversed(self._faults):
                if known.name == name:
                    known.recovered_at = recovered_at
                    return True
            return False

    @property
    def faults(self) -> list[FaultEvent]:
        with self._lock:
            return list(self._faults)

    @property
    def fault_time(self) -> float | None:
        with self._lock:
            return self._faults[0].injected_at if self._faults else None

    def phase_of(self, start_wall: float, end_wall: float) -> str | None:
        fault_time = self.fault_time
        if fault_time is None:
            return BEFORE if self.expecting_faults else None
        return phase_of(start_wall, end_wall, fault_time)

    def reset(self) -> None:
        with self._lock:
            self._faults.clear()
        self.expecting_faults = False


# The process-global timeline: hooks record faults into it, users name requests from it.
TIMELINE = FaultTimeline()


# --- statistics -----------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) by linear interpolation between closest ranks.

    Same as numpy's default (`method="linear"`, Excel PERCENTILE.INC): with the values sorted
    as x[0..n-1], rank = (n - 1) * q / 100 and the result interpolates x[floor(rank)] and
    x[ceil(rank)]. p0 is the minimum, p100 the maximum. Empty input → None.
    """
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q must be within 0..100, got {q}")
    if not values:
        return None
    xs = sorted(values)
    rank = (len(xs) - 1) * q / 100.0
    lo = math.floor(rank)
    hi = math.ceil(rank)
    return xs[lo] + (xs[hi] - xs[lo]) * (rank - lo)


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def latency_of(record: RequestRecord) -> float:
    """End-to-end latency: the user's measured value, else the wall-clock span."""
    if record.latency_s is not None:
        return record.latency_s
    return record.end_wall - record.start_wall


def is_cut_stream(record: RequestRecord) -> bool:
    """A stream that delivered at least one token and then failed (cut, not refused)."""
    return (
        record.stream
        and record.outcome in FAILURE_OUTCOMES
        and (record.output_tokens > 0 or record.first_token_wall is not None)
    )


def stats(records: Iterable[RequestRecord]) -> dict:
    """Statistics of one group of requests. Values are numbers or None (never NaN), `outcomes` a dict.

    - `count`: all requests; `outcomes`: count per outcome (every outcome present, 0 if none).
    - `success`: outcome ok; `failed`: failure outcomes only; `cancelled`: neither.
    - `success_ratio`: success / (success + failed), None when both are 0.
    - latency mean/p50/p90/p99 and TTFT p50/p90/p99: of successful requests (TTFT where known).
    - ITL: per request the user measured a mean inter-token latency; `itl_mean_s`, `itl_p50_s`,
      `itl_p99_s` are the mean and percentiles of those per-request means over successful
      requests (as AIPerf reports ITL); `itl_max_s` is the largest single gap seen in any
      successful request (a stall at a migration shows here).
    - `output_tokens`: tokens clients received, all requests; `tokens_per_s`: that sum divided by
      `span_s` = last end - first start of the group (None when the span is 0).
    - `cut_streams`: streams that failed after delivering tokens (see `is_cut_stream`).
    Percentiles: `percentile` (linear interpolation).
    """
    group = list(records)
    outcomes = {o: 0 for o in OUTCOMES}
    for r in group:
        outcomes[r.outcome] = outcomes.get(r.outcome, 0) + 1
    ok = [r for r in group if r.outcome == OK]
    failed = sum(1 for r in group if r.outcome in FAILURE_OUTCOMES)
    latencies = [latency_of(r) for r in ok]
    ttfts = [r.ttft_s for r in ok if r.ttft_s is not None]
    itls = [r.itl_mean_s for r in ok if r.itl_mean_s is not None]
    itl_maxes = [r.itl_max_s for r in ok if r.itl_max_s is not None]
    output_tokens = sum(r.output_tokens for r in group)
    first_start = min((r.start_wall for r in group), default=None)
    last_end = max((r.end_wall for r in group), default=None)
    span = (last_end - first_start) if group else None
    decided = len(ok) + failed
    return {
        "count": len(group),
        "outcomes": outcomes,
        "success": len(ok),
        "failed": failed,
        "cancelled": outcomes[CANCELLED],
        "success_ratio": len(ok) / decided if decided else None,
        "latency_mean_s": _mean(latencies),
        "latency_p50_s": percentile(latencies, 50),
        "latency_p90_s": percentile(latencies, 90),
        "latency_p99_s": percentile(latencies, 99),
        "ttft_p50_s": percentile(ttfts, 50),
        "ttft_p90_s": percentile(ttfts, 90),
        "ttft_p99_s": percentile(ttfts, 99),
        "itl_mean_s": _mean(itls),
        "itl_p50_s": percentile(itls, 50),
        "itl_p99_s": percentile(itls, 99),
        "itl_max_s": max(itl_maxes) if itl_maxes else None,
        "output_tokens": output_tokens,
        "span_s": span,
        "tokens_per_s": output_tokens / span if span else None,
        "cut_streams": sum(1 for r in group if is_cut_stream(r)),
        "first_start_wall": first_start,
        "last_end_wall": last_end,
    }


def group_records(records: Iterable[RequestRecord], fault_time: float | None) -> dict[str, list[RequestRecord]]:
    """Records per stat group (`STAT_GROUPS`). Without a fault everything is `before`."""
    groups: dict[str, list[RequestRecord]] = {g: [] for g in STAT_GROUPS}
    for r in records:
        phase = classify(r, fault_time) or BEFORE
        groups[phase].append(r)
        groups[ALL].append(r)
        groups[SEED_BEFORE if phase == BEFORE else SEED_AFTER].append(r)
    return groups


def phase_stats(records: Iterable[RequestRecord], fault_time: float | None) -> dict:
    """`stats` for before / spanning / after, `all`, and the seed's split `seed_before` /
    `seed_after` (by completion time: a spanning request counts as after, as in the seed's
    table). Counts are per logical request (the seed counted attempts). Without a fault
    (`fault_time` None) every request is `before` and the other phases are empty."""
    return {name: stats(group) for name, group in group_records(records, fault_time).items()}


def empty_stats() -> dict:
    return stats([])


# --- recovery (client view) -----------------------------------------------------------------

DEFAULT_WINDOW_S = 5.0
DEFAULT_TOLERANCE = 0.05
# A window's median latency / TTFT within this factor of the before phase's counts as back, and
# a request started after T_f that takes longer than factor x the median latency holds recovery
# back (see `recovery`). 2 rather than 1.5: one factor serves both, and a request twice the
# median is unusual in steady load, 1.5x less so.
DEFAULT_LATENCY_FACTOR = 2.0

# The client-view figures, in the table's order; steady state is the last of them all.
CLIENT_RECOVERY_KEYS = (
    "time_to_first_success_s",
    "disruption_window_s",
    "time_to_sustained_success_s",
    "time_to_latency_back_s",
    "time_to_steady_state_s",
)


def _decided(record: RequestRecord) -> bool:
    return record.outcome == OK or record.outcome in FAILURE_OUTCOMES


def recovery(
    records: Iterable[RequestRecord],
    fault_time: float | None,
    window_s: float = DEFAULT_WINDOW_S,
    tolerance: float = DEFAULT_TOLERANCE,
    latency_factor: float = DEFAULT_LATENCY_FACTOR,
) -> dict:
    """Client-view recovery after the fault at T_f = `fault_time` (every figure: seconds from T_f).

    Cancelled requests (on purpose) are neither success nor failure and are ignored, except
    where said. "Post" requests are the ok/failed ones that ended after T_f (spanning or after).
    The rolling window at instant u holds the post requests that ended in (u - window_s, u];
    windows are evaluated at every instant they can change (each post end, and each end +
    window_s up to the last post end); instants whose window holds nothing to judge are skipped.
    "X holds from v on" means X is true at every evaluated instant >= v; the figure is the first
    evaluated instant >= its lower bound after the last one where X is false.

    - `time_to_first_success_s` (F): the earliest end among successful requests that *started*
      at or after T_f. A spanning success (migrated, or never touched) is no sign of recovery.
    - `disruption_window_s`: the latest end among failed post requests; 0.0 when none failed.
    - `time_to_sustained_success_s` (S): from F on, the rolling success ratio ok / (ok + failed)
      holds >= threshold = B - `tolerance`, B being the before phase's success ratio (1.0 when
      the before phase has no ok/failed request). S >= F.
    - `time_to_latency_back_s` (L): from S on, the rolling p50 latency and p50 TTFT of the
      successful requests in the window hold <= `latency_factor` x the before phase's p50
      latency / p50 TTFT (a window without a successful request, or without a TTFT, passes
      that part; TTFT counts only when the before phase has one), and no request started at
      or after T_f is outstanding: a request (not cancelled) with end > start + factor x
      baseline p50 latency (wall clock) is outstanding over (start + factor x baseline, end),
      so L >= its end. L >= S. None when the before phase has no successful request (no
      baseline).
    - `time_to_steady_state_s`: max(L, disruption window): every figure above is behind.
    Each is None when it never happened, and then every later one is None too (a figure whose
    condition is false in the last evaluated window never happened). Without a fault (None)
    every figure is None.

    Also returned: `fault_time`, `failed_after_fault` (failed post requests),
    `baseline_success_ratio` (B, None without a before phase), `success_threshold`,
    `latency_baseline_s` / `ttft_baseline_s` (before-phase p50s), `latency_factor`,
    `window_s`, `tolerance`.
    """
    if window_s <= 0:
        raise ValueError(f"window_s must be > 0, got {window_s}")
    if latency_factor < 1:
        raise ValueError(f"latency_factor must be >= 1, got {latency_factor}")
    records = list(records)
    result: dict = {"fault_time": fault_time}
    result.update({key: None for key in CLIENT_RECOVERY_KEYS})
    result.update(
        {
            "failed_after_fault": None,
            "baseline_success_ratio": None,
            "success_threshold": None,
            "latency_baseline_s": None,
            "ttft_baseline_s": None,
            "latency_factor": latency_factor,
            "window_s": window_s,
            "tolerance": tolerance,
        }
    )
    if fault_time is None:
        return result
    t_f = fault_time

    failed_ends = [r.end_wall for r in records if r.outcome in FAILURE_OUTCOMES and r.end_wall > t_f]
    result["failed_after_fault"] = len(failed_ends)
    disruption = (max(failed_ends) - t_f) if failed_ends else 0.0
    result["disruption_window_s"] = disruption

    before = [r for r in records if _decided(r) and r.end_wall <= t_f]
    before_ok = [r for r in before if r.outcome == OK]
    baseline = len(before_ok) / len(before) if before else None
    threshold = (1.0 if baseline is None else baseline) - tolerance
    latency_base = percentile([latency_of(r) for r in before_ok], 50)
    ttft_base = percentile([r.ttft_s for r in before_ok if r.ttft_s is not None], 50)
    result.update(
        baseline_success_ratio=baseline,
        success_threshold=threshold,
        latency_baseline_s=latency_base,
        ttft_baseline_s=ttft_base,
    )

    first_ok_ends = [r.end_wall for r in records if r.outcome == OK and r.start_wall >= t_f]
    if not first_ok_ends:
        return result
    first = min(first_ok_ends)
    result["time_to_first_success_s"] = first - t_f

    post = sorted((r for r in records if _decided(r) and r.end_wall > t_f), key=lambda r: r.end_wall)
    windows = _Windows(post, window_s)
    sustained = windows.holds_from(first, lambda w: w.ratio() is None or w.ratio() >= threshold - _EPS)
    if sustained is None:
        return result
    result["time_to_sustained_success_s"] = sustained - t_f
    if latency_base is None:
        return result

    latency_max = latency_factor * latency_base
    ttft_max = None if ttft_base is None else latency_factor * ttft_base

    def latency_ok(w: "_Windows") -> bool:
        p50 = w.latency_p50()
        if p50 is not None and p50 > latency_max + _EPS:
            return False
        ttft = w.ttft_p50()
        return ttft_max is None or ttft is None or ttft <= ttft_max + _EPS

    back = windows.holds_from(sustained, latency_ok)
    if back is None:
        return result
    hung_ends = [
        r.end_wall
        for r in records
        if r.outcome != CANCELLED and r.start_wall >= t_f and r.end_wall > r.start_wall + latency_max + _EPS
    ]
    back = max([back, *hung_ends])
    result["time_to_latency_back_s"] = back - t_f
    result["time_to_steady_state_s"] = max(back - t_f, disruption)
    return result


class _Windows:
    """Rolling windows (u - window_s, u] over `post` (sorted by end), evaluated at the instants
    `recovery` defines, in order, with a running success count and sorted latencies / TTFTs of
    the successful requests inside."""

    def __init__(self, post: list[RequestRecord], window_s: float):
        self.post = post
        self.window_s = window_s
        ends = [r.end_wall for r in post]
        last = ends[-1] if ends else None
        self.instants = sorted({*ends, *(e + window_s for e in ends if last is not None and e + window_s <= last)})

    def _walk(self):
        """Yield (u, self) per instant with the window's contents current."""
        post, lo, hi = self.post, 0, 0
        self._n = self._ok = 0
        self._lat: list[float] = []
        self._ttft: list[float] = []
        for u in self.instants:
            while hi < len(post) and post[hi].end_wall <= u:
                self._add(post[hi], +1)
                hi += 1
            while lo < hi and post[lo].end_wall <= u - self.window_s:
                self._add(post[lo], -1)
                lo += 1
            if self._n:
                yield u

    def _add(self, r: RequestRecord, sign: int) -> None:
        self._n += sign
        if r.outcome != OK:
            return
        self._ok += sign
        for values, v in ((self._lat, latency_of(r)), (self._ttft, r.ttft_s)):
            if v is None:
                continue
            if sign > 0:
                bisect.insort(values, v)
            else:
                del values[bisect.bisect_left(values, v)]

    def ratio(self) -> float | None:
        return self._ok / self._n if self._n else None

    def latency_p50(self) -> float | None:
        return _p50_sorted(self._lat)

    def ttft_p50(self) -> float | None:
        return _p50_sorted(self._ttft)

    def holds_from(self, lower: float, condition) -> float | None:
        """The first instant >= `lower` from which `condition(self)` holds at every later
        evaluated instant; None when it is false at the last one (or no instant is >= lower)."""
        since: float | None = None
        for u in self._walk():
            if u < lower:
                continue
            if not condition(self):
                since = None
            elif since is None:
                since = u
        return since


def _p50_sorted(xs: list[float]) -> float | None:
    """`percentile(xs, 50)` of an already sorted list."""
    if not xs:
        return None
    rank = (len(xs) - 1) / 2.0
    lo, hi = math.floor(rank), math.ceil(rank)
    return xs[lo] + (xs[hi] - xs[lo]) * (rank - lo)


DEFAULT_STALL_S = 1.0  # a wait this long for a first token or between two tokens is a stall


def is_stalled(record: RequestRecord, stall_s: float = DEFAULT_STALL_S, baseline: "Baseline | None" = None) -> bool:
    """The request waited `stall_s` longer than usual for its first token (a stream: the
    baseline TTFT; nothing came at all: its whole wait counts), or at least `stall_s` between two
    tokens, or — not a stream — `stall_s` longer than the baseline latency (a partition or a
    hung worker holds a request without cutting it). Without a baseline, a usual TTFT is 0 and
    a non-stream cannot be judged (never stalled): a long prefill or a long unary answer alone
    is not a stall."""
    baseline = baseline or Baseline()
    if record.stream:
        first = record.ttft_s if record.first_token_wall is not None else latency_of(record)
        return ((first is not None and first >= baseline.ttft_s + stall_s)
                or (record.itl_max_s is not None and record.itl_max_s >= stall_s))
    return baseline.latency_s is not None and latency_of(record) >= baseline.latency_s + stall_s


@dataclass(frozen=True)
class Baseline:
    """What is usual before a fault: the p50 TTFT of streams and the p50 latency of other
    requests that succeeded and ended before it (`of`)."""

    ttft_s: float = 0.0
    latency_s: float | None = None

    @classmethod
    def of(cls, records: Iterable[RequestRecord], before: float) -> "Baseline":
        ok = [r for r in records if r.outcome == OK and r.end_wall <= before]
        ttft = percentile([r.ttft_s for r in ok if r.stream and r.ttft_s is not None], 50)
        latency = percentile([latency_of(r) for r in ok if not r.stream], 50)
        return cls(ttft_s=ttft or 0.0, latency_s=latency)


def window_stats(records: Iterable[RequestRecord], fault: FaultEvent, stall_s: float = DEFAULT_STALL_S) -> dict | None:
    """What clients saw while a fault with an end (`recovered_at`: SIGCONT sent, partition
    lifted, restarted process ready) was in effect, and after it ended:

    - `in_effect_s`: recovered_at - injected_at;
    - `during`: `stats` of the requests that overlapped [injected_at, recovered_at), plus
      `stalled` (`is_stalled`, against the `Baseline` of the requests that ended before it);
    - `after_end`: the same for the requests that started at or after recovered_at.

    None for a fault that was not injected or whose effect did not end (a SIGKILL)."""
    if not fault.injected or fault.recovered_at is None:
        return None
    records = list(records)
    start, end = fault.injected_at, fault.recovered_at
    baseline = Baseline.of(records, start)
    during = [r for r in records if r.start_wall < end and r.end_wall > start]
    after = [r for r in records if r.start_wall >= end]
    out = {"in_effect_s": end - start, "stall_s": stall_s,
           "baseline": {"ttft_s": baseline.ttft_s, "latency_s": baseline.latency_s}}
    for key, group in (("during", during), ("after_end", after)):
        out[key] = {**stats(group), "stalled": sum(1 for r in group if is_stalled(r, stall_s, baseline))}
    return out


PROBE_SUFFIX = "/probe"  # the probe user's client id ends so (ftlocust.probe)


def probe_progress(records: Iterable[RequestRecord], fault: FaultEvent, mid_stream: bool) -> dict | None:
    """How far the probe stream was when `fault` hit: its tokens (content chunks, on the wall
    clock the probe kept) before and after T_f. None without a probe record with chunk times.

    `too_late` (only for a `mid_stream` fault, the one aimed at the probe): the probe had
    finished before T_f, so the fault hit no stream in flight — a drill that then passes proves
    nothing. The probe ending exactly because of the fault is not late: its end comes after T_f.
    """
    if fault.injected_at is None:
        return None
    probe = next((r for r in records if (r.client_id or "").endswith(PROBE_SUFFIX)
                  and r.extra.get("chunk_walls") is not None), None)
    if probe is None:
        return None
    t_f = fault.injected_at
    walls = probe.extra["chunk_walls"]
    before = sum(1 for t in walls if t < t_f)
    out = {"request_id": probe.request_id, "tokens_before": before, "tokens_after": len(walls) - before,
           "probe_started": probe.start_wall, "probe_ended": probe.end_wall, "outcome": probe.outcome,
           "mid_stream": mid_stream}
    if mid_stream and probe.end_wall is not None and probe.end_wall < t_f:
        out["too_late"] = (f"landed too late: the probe stream had finished {t_f - probe.end_wall:.3f} s before "
                           f"the fault ({before} tokens, all of them before it)")
    return out


def per_fault(
    records: Iterable[RequestRecord],
    faults: Sequence[FaultEvent],
    window_s: float = DEFAULT_WINDOW_S,
    tolerance: float = DEFAULT_TOLERANCE,
    latency_factor: float = DEFAULT_LATENCY_FACTOR,
) -> list[dict]:
    """Phases and recovery around each injected fault, in injection order (failed and
    not-fired faults are left out: they have no time to split at).

    Fault k (time T_k) sees the requests that ended in (T_{k-1}, T_{k+1}] (no bound before the
    first or after the last fault), classified against T_k: before/after run between
    consecutive faults. A request spanning T_{k+1} belongs to fault k+1 only. Each entry has
    `fault`, `phases`, `recovery` and `window` (`window_stats`).
    """
    records = list(records)
    ordered = injected_faults(faults)
    out = []
    for k, fault in enumerate(ordered):
        lower = ordered[k - 1].injected_at if k > 0 else -math.inf
        upper = ordered[k + 1].injected_at if k + 1 < len(ordered) else math.inf
        mine = [r for r in records if lower < r.end_wall <= upper]
        out.append(
            {
                "fault": fault.to_dict(),
                "phases": phase_stats(mine, fault.injected_at),
                "recovery": recovery(mine, fault.injected_at, window_s, tolerance, latency_factor),
                "window": window_stats(mine, fault),
            }
        )
    return out


def analyse(
    records: Iterable[RequestRecord],
    faults: Sequence[FaultEvent],
    server_recovery: Mapping[str, float | None] | None = None,
    window_s: float = DEFAULT_WINDOW_S,
    tolerance: float = DEFAULT_TOLERANCE,
    latency_factor: float = DEFAULT_LATENCY_FACTOR,
) -> dict:
    """Everything a run's verdicts and reports need from its records and planned faults.

    `faults`: every fault of the scenario, in the scenario's order, whatever became of it.
    `server_recovery`: fault name → server-view recovery in s (T_f → the faulted component or
    its replacement serves), None or absent when not measured.

    Returns:
    - `fault_time`: T_f of the first injected fault (None when none was injected);
    - `phases`, `recovery`: `phase_stats` / `recovery` of all records against that T_f, the
      recovery with `server_recovery_s` of that fault (what checks read);
    - `per_fault`: one entry per planned fault, in the scenario's order: `name`, `status`,
      `error`, `fault` (its `to_dict`), `server_recovery_s`, and for an injected fault its own
      `phases` and `recovery` (see `per_fault`; the recovery carries `server_recovery_s` too)
      and `window` (`window_stats`: while in effect / after its end, None when it did not end);
      a failed or not-fired fault has `phases`, `recovery` and `window` None.
    """
    records = list(records)
    faults = list(faults)
    server_recovery = dict(server_recovery or {})
    injected = injected_faults(faults)
    fault_time = injected[0].injected_at if injected else None
    whole = recovery(records, fault_time, window_s, tolerance, latency_factor)
    whole["server_recovery_s"] = server_recovery.get(injected[0].name) if injected else None
    around = {id(f): entry for f, entry in zip(injected, per_fault(records, injected, window_s, tolerance, latency_factor))}
    entries = []
    for fault in faults:
        mine = around.get(id(fault))
        server_s = server_recovery.get(fault.name) if fault.injected else None
        if mine is not None:
            mine["recovery"]["server_recovery_s"] = server_s
        entries.append(
            {
                "name": fault.name,
                "status": fault.status,
                "error": fault.error,
                "fault": fault.to_dict(),
                "server_recovery_s": server_s,
                "phases": mine["phases"] if mine else None,
                "recovery": mine["recovery"] if mine else None,
                "window": mine["window"] if mine else None,
            }
        )
    return {
        "fault_time": fault_time,
        "phases": phase_stats(records, fault_time),
        "recovery": whole,
        "per_fault": entries,
    }
