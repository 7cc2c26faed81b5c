"""Fault timeline, phase classification, per-phase statistics and client-view recovery.

Plain Python (no Locust): hooks feed it, users read `TIMELINE`, checks and reports read the dicts.

Definitions (docs/ARCHITECTURE.md): with T_f the first fault's time, a request is `before` if it
ended <= T_f, `after` if it started >= T_f, `spanning` otherwise. Statistics are always computed
from the records' wall-clock times against the final T_f, never from `record.phase` (which a
user stamped while the fault broadcast may still have been in flight).
"""

from __future__ import annotations

import bisect
import math
import threading
from dataclasses import dataclass, field
from typing import Iterable, Sequence

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


@dataclass
class FaultEvent:
    """One injected fault as the injector reported it. Times are wall clock (epoch s)."""

    name: str
    kind: str
    target: str
    injected_at: float
    recovered_at: float | None = None
    detail: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "kind": self.kind,
            "target": self.target,
            "injected_at": self.injected_at,
            "recovered_at": self.recovered_at,
            "detail": dict(self.detail),
        }

    @classmethod
    def from_dict(cls, data: dict) -> "FaultEvent":
        return cls(
            name=data["name"],
            kind=data["kind"],
            target=data["target"],
            injected_at=float(data["injected_at"]),
            recovered_at=None if data.get("recovered_at") is None else float(data["recovered_at"]),
            detail=dict(data.get("detail") or {}),
        )


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
        """Add `event`; False when an event with the same name and injected_at is already known."""
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


def _decided(record: RequestRecord) -> bool:
    return record.outcome == OK or record.outcome in FAILURE_OUTCOMES


def recovery(
    records: Iterable[RequestRecord],
    fault_time: float | None,
    window_s: float = 5.0,
    tolerance: float = 0.05,
) -> dict:
    """Client-view recovery after the fault at `fault_time` (all values in seconds from T_f).

    - `time_to_first_success_s`: the earliest end among successful requests that *started* at
      or after T_f, minus T_f. None when there is none.
    - `disruption_window_s`: the latest end among failed requests that ended after T_f
      (spanning or after), minus T_f; 0.0 when none failed.
    - `time_to_steady_state_s`: cancelled requests are ignored. Let B be the success ratio of
      the before phase (1.0 when it has no ok/failed request) and threshold = B - tolerance.
      Over the requests that ended after T_f, the rolling success ratio at time u is
      ok / (ok + failed) among those ending in (u - window_s, u]. It is evaluated at every
      instant it can change (each end, and each end + window_s) from the first end after T_f
      up to the last end; instants whose window is empty are skipped. Steady state is the
      first such instant after the last one below threshold (the first one at all when none
      is below), minus T_f. None when no request ended after T_f, or when the last evaluated
      window is below threshold (never steady).
    Also returned: `fault_time` (T_f), `failed_after_fault` (failed requests ending after T_f),
    `baseline_success_ratio` (B, None when no before phase), `steady_state_threshold`,
    `window_s`, `tolerance`. Without a fault every measure is None.
    """
    if window_s <= 0:
        raise ValueError(f"window_s must be > 0, got {window_s}")
    records = list(records)
    result = {
        "fault_time": fault_time,
        "time_to_first_success_s": None,
        "disruption_window_s": None,
        "time_to_steady_state_s": None,
        "failed_after_fault": None,
        "baseline_success_ratio": None,
        "steady_state_threshold": None,
        "window_s": window_s,
        "tolerance": tolerance,
    }
    if fault_time is None:
        return result
    t_f = fault_time

    first_ok_ends = [r.end_wall for r in records if r.outcome == OK and r.start_wall >= t_f]
    if first_ok_ends:
        result["time_to_first_success_s"] = min(first_ok_ends) - t_f

    failed_ends = [r.end_wall for r in records if r.outcome in FAILURE_OUTCOMES and r.end_wall > t_f]
    result["failed_after_fault"] = len(failed_ends)
    result["disruption_window_s"] = (max(failed_ends) - t_f) if failed_ends else 0.0

    before = [r for r in records if _decided(r) and r.end_wall <= t_f]
    baseline = sum(1 for r in before if r.outcome == OK) / len(before) if before else None
    threshold = (1.0 if baseline is None else baseline) - tolerance
    result["baseline_success_ratio"] = baseline
    result["steady_state_threshold"] = threshold

    post = sorted((r for r in records if _decided(r) and r.end_wall > t_f), key=lambda r: r.end_wall)
    steady_at = _steady_from(post, window_s, threshold)
    result["time_to_steady_state_s"] = None if steady_at is None else steady_at - t_f
    return result


def _steady_from(post: list[RequestRecord], window_s: float, threshold: float) -> float | None:
    """The instant from which the rolling ratio stays >= threshold (see `recovery`)."""
    if not post:
        return None
    ends = [r.end_wall for r in post]
    ok_prefix = [0]
    for r in post:
        ok_prefix.append(ok_prefix[-1] + (1 if r.outcome == OK else 0))
    last = ends[-1]
    instants = sorted({*ends, *(e + window_s for e in ends if e + window_s <= last)})
    steady_at: float | None = None
    for u in instants:
        lo = bisect.bisect_right(ends, u - window_s)
        hi = bisect.bisect_right(ends, u)
        if hi == lo:
            continue
        ratio = (ok_prefix[hi] - ok_prefix[lo]) / (hi - lo)
        if ratio < threshold - _EPS:
            steady_at = None
        elif steady_at is None:
            steady_at = u
    return steady_at


def per_fault(
    records: Iterable[RequestRecord],
    faults: Sequence[FaultEvent],
    window_s: float = 5.0,
    tolerance: float = 0.05,
) -> list[dict]:
    """Phases and recovery around each of several faults, in injection order.

    Fault k (time T_k) sees the requests that ended in (T_{k-1}, T_{k+1}] (no bound before the
    first or after the last fault), classified against T_k: before/after run between
    consecutive faults. A request spanning T_{k+1} belongs to fault k+1 only.
    """
    records = list(records)
    ordered = sorted(faults, key=lambda f: f.injected_at)
    out = []
    for k, fault in enumerate(ordered):
        lower = ordered[k - 1].injected_at if k > 0 else -math.inf
        upper = ordered[k + 1].injected_at if k + 1 < len(ordered) else math.inf
        mine = [r for r in records if lower < r.end_wall <= upper]
        out.append(
            {
                "fault": fault.to_dict(),
                "phases": phase_stats(mine, fault.injected_at),
                "recovery": recovery(mine, fault.injected_at, window_s, tolerance),
            }
        )
    return out
