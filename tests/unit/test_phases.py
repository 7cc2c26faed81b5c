"""Phases, per-phase statistics and recovery on hand-built records (T_f = 100.0 unless said)."""

import json
import math

import pytest

from ftlocust import phases
from ftlocust.phases import (
    TIMELINE,
    FaultEvent,
    FaultTimeline,
    analyse,
    classify,
    injected_faults,
    per_fault,
    percentile,
    phase_of,
    phase_stats,
    recovery,
    stats,
)
from ftlocust.records import (
    CANCELLED,
    CONNECTION_ERROR,
    OK,
    OUTCOMES,
    REJECTED,
    TIMEOUT,
    TRUNCATED,
)

from tests.support.factories import T_F, rec  # noqa: E402


# --- classification -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "start,end,expected",
    [
        (90.0, 99.0, "before"),
        (90.0, 100.0, "before"),  # ended exactly at T_f
        (100.0, 101.0, "after"),  # started exactly at T_f
        (101.0, 102.0, "after"),
        (99.0, 100.5, "spanning"),
    ],
)
def test_phase_of_boundaries(start, end, expected):
    assert phase_of(start, end, T_F) == expected
    assert classify(rec(start, end), T_F) == expected


def test_phase_of_without_fault_is_none():
    assert phase_of(1.0, 2.0, None) is None
    assert FaultTimeline().phase_of(1.0, 2.0) is None


def test_fault_event_round_trip():
    ev = FaultEvent("kill-worker", "process", "worker-1", 100.0, 104.5, 110.0, detail={"signal": "SIGKILL", "pid": 7})
    d = ev.to_dict()
    assert d == {
        "name": "kill-worker",
        "kind": "process",
        "target": "worker-1",
        "injected_at": 100.0,
        "recovered_at": 104.5,
        "rolled_back_at": 110.0,
        "status": "injected",
        "error": None,
        "detail": {"signal": "SIGKILL", "pid": 7},
    }
    json.dumps(d)
    assert FaultEvent.from_dict(d) == ev
    assert FaultEvent(**d) == ev  # what the ft_fault message handler does
    assert ev.injected


def test_fault_event_failed_and_not_fired_round_trip():
    for status in ("failed", "not_fired"):
        ev = FaultEvent("kill", "process-signal", "worker-1", None, status=status, error="why")
        assert not ev.injected
        assert FaultEvent.from_dict(json.loads(json.dumps(ev.to_dict()))) == ev


def test_fault_event_from_an_old_dict_is_injected():
    old = FaultEvent.from_dict({"name": "n", "kind": "k", "target": "t", "injected_at": 1, "recovered_at": 2,
                                "detail": {"signal": "SIGKILL"}})
    assert (old.status, old.error, old.rolled_back_at, old.recovered_at) == ("injected", None, None, 2.0)
    assert old.injected and old.detail == {"signal": "SIGKILL"}


def test_fault_event_rejects_an_injected_fault_without_time_and_unknown_status():
    with pytest.raises(ValueError, match="needs injected_at"):
        FaultEvent("n", "k", "t", None)
    with pytest.raises(ValueError, match="status"):
        FaultEvent("n", "k", "t", 1.0, status="maybe")


def test_injected_faults_leave_out_failed_and_not_fired_in_time_order():
    late = FaultEvent("late", "k", "t", 200.0)
    early = FaultEvent("early", "k", "t", 100.0)
    failed = FaultEvent("failed", "k", "t", None, status="failed", error="boom")
    never = FaultEvent("never", "k", "t", None, status="not_fired", error="trigger never reached")
    assert injected_faults([late, failed, early, never]) == [early, late]
    assert phases.first_fault_time([failed, late, never]) == 200.0
    assert phases.first_fault_time([failed, never]) is None


def test_timeline_holds_only_injected_faults():
    tl = FaultTimeline()
    assert not tl.record_fault(FaultEvent("failed", "k", "t", None, status="failed", error="boom"))
    assert not tl.record_fault(FaultEvent("never", "k", "t", None, status="not_fired", error="x"))
    assert tl.faults == [] and tl.fault_time is None
    assert tl.record_fault(FaultEvent("real", "k", "t", 100.0))
    assert tl.fault_time == 100.0


def test_timeline_first_fault_is_t_f_and_duplicates_kept_once():
    tl = FaultTimeline()
    assert tl.fault_time is None and tl.faults == []
    assert tl.record_fault(FaultEvent("second", "process", "w2", 200.0))
    assert tl.record_fault(FaultEvent("first", "process", "w1", 100.0))
    assert not tl.record_fault(FaultEvent("first", "process", "w1", 100.0))
    assert tl.fault_time == 100.0
    assert [f.name for f in tl.faults] == ["first", "second"]
    assert tl.phase_of(99.0, 100.0) == "before"
    assert tl.phase_of(99.0, 150.0) == "spanning"
    assert tl.mark_recovered("first", 103.0) and tl.faults[0].recovered_at == 103.0
    assert not tl.mark_recovered("nope", 1.0)
    tl.faults.clear()  # a copy: the timeline is unchanged
    assert len(tl.faults) == 2
    tl.reset()
    assert tl.fault_time is None


def test_global_timeline_is_shared():
    TIMELINE.reset()
    try:
        TIMELINE.record_fault(FaultEvent("f", "process", "w", T_F))
        assert phases.TIMELINE.phase_of(100.0, 101.0) == "after"
    finally:
        TIMELINE.reset()


# --- percentiles ------------------------------------------------------------------------------


def test_percentile_linear_interpolation():
    xs = [4.0, 1.0, 3.0, 2.0]  # unsorted on purpose
    assert percentile(xs, 0) == 1.0
    assert percentile(xs, 50) == 2.5
    assert percentile(xs, 90) == pytest.approx(3.7)
    assert percentile(xs, 99) == pytest.approx(3.97)
    assert percentile(xs, 100) == 4.0
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) is None
    xs100 = [float(i) for i in range(1, 101)]
    assert percentile(xs100, 50) == pytest.approx(50.5)
    assert percentile(xs100, 99) == pytest.approx(99.01)
    with pytest.raises(ValueError):
        percentile(xs, 101)


# --- per-phase statistics -------------------------------------------------------------------


def dataset():
    return [
        # before
        rec(90.0, 95.0, ttft_s=0.5, itl_mean_s=0.01, itl_max_s=0.02, output_tokens=10),
        rec(94.0, 100.0, latency_s=5.5, ttft_s=1.5, itl_mean_s=0.03, itl_max_s=0.05, output_tokens=20),  # ends at T_f
        rec(96.0, 98.0, REJECTED, status=503),
        # spanning
        rec(98.0, 103.0, ttft_s=0.25, output_tokens=40, phase="after"),  # stale phase on the record is ignored
        rec(99.0, 101.0, TRUNCATED, output_tokens=3, first_token_wall=99.5),
        # after
        rec(100.0, 102.0, ttft_s=0.75, itl_mean_s=0.05, itl_max_s=0.5, output_tokens=30),  # started at T_f
        rec(101.0, 104.0, CONNECTION_ERROR, stream=False),
        rec(102.0, 103.0, CANCELLED, output_tokens=2),
    ]


def test_phase_stats_counts_per_phase():
    ps = phase_stats(dataset(), T_F)
    assert set(ps) == {"before", "spanning", "after", "all", "seed_before", "seed_after"}
    b, s, a, al = ps["before"], ps["spanning"], ps["after"], ps["all"]
    assert (b["count"], b["success"], b["failed"], b["cancelled"]) == (3, 2, 1, 0)
    assert (s["count"], s["success"], s["failed"], s["cancelled"]) == (2, 1, 1, 0)
    assert (a["count"], a["success"], a["failed"], a["cancelled"]) == (3, 1, 1, 1)
    assert (al["count"], al["success"], al["failed"], al["cancelled"]) == (8, 4, 3, 1)
    assert b["outcomes"] == {o: (2 if o == OK else 1 if o == REJECTED else 0) for o in OUTCOMES}
    assert a["outcomes"][CANCELLED] == 1 and a["outcomes"][CONNECTION_ERROR] == 1
    assert b["success_ratio"] == pytest.approx(2 / 3)
    assert a["success_ratio"] == 0.5  # cancelled is neither success nor failure


def test_phase_stats_latency_ttft_itl_tokens():
    b = phase_stats(dataset(), T_F)["before"]
    # latencies of the 2 successes: 5.0 (end - start) and 5.5 (the user's latency_s wins)
    assert b["latency_mean_s"] == 5.25
    assert b["latency_p50_s"] == 5.25
    assert b["latency_p90_s"] == pytest.approx(5.45)
    assert b["latency_p99_s"] == pytest.approx(5.495)
    assert b["ttft_p50_s"] == 1.0
    assert b["ttft_p90_s"] == pytest.approx(1.4)
    assert b["ttft_p99_s"] == pytest.approx(1.49)
    assert b["itl_mean_s"] == pytest.approx(0.02)
    assert b["itl_p50_s"] == pytest.approx(0.02)
    assert b["itl_p99_s"] == pytest.approx(0.0298)
    assert b["itl_max_s"] == 0.05
    assert b["output_tokens"] == 30
    assert b["span_s"] == 10.0  # 90 → 100
    assert b["tokens_per_s"] == 3.0
    assert (b["first_start_wall"], b["last_end_wall"]) == (90.0, 100.0)
    a = phase_stats(dataset(), T_F)["after"]
    assert a["output_tokens"] == 32  # tokens clients received, incl. the cancelled request
    assert a["span_s"] == 4.0 and a["tokens_per_s"] == 8.0
    assert a["itl_max_s"] == 0.5


def test_cut_streams_are_failed_streams_that_delivered_tokens():
    records = [
        rec(101.0, 102.0, TRUNCATED, output_tokens=5),
        rec(101.0, 102.0, TRUNCATED, output_tokens=0, first_token_wall=101.5),
        rec(101.0, 102.0, REJECTED, output_tokens=0),  # refused, not cut
        rec(101.0, 102.0, CONNECTION_ERROR, stream=False, output_tokens=5),  # not a stream
        rec(101.0, 102.0, CANCELLED, output_tokens=5),  # on purpose
    ]
    assert stats(records)["cut_streams"] == 2


def test_seed_split_puts_spanning_in_after():
    ps = phase_stats(dataset(), T_F)
    sb, sa = ps["seed_before"], ps["seed_after"]
    assert (sb["success"], sb["failed"]) == (2, 1)
    assert (sa["success"], sa["failed"], sa["cancelled"]) == (2, 2, 1)
    # seed "Latency After": mean over successes ending after T_f: 5.0 (spanning) and 2.0
    assert sa["latency_mean_s"] == 3.5


def test_empty_phase_has_none_values_not_errors():
    ps = phase_stats([rec(90.0, 95.0)], T_F)
    a = ps["after"]
    assert a["count"] == 0 and a["success"] == 0 and a["failed"] == 0
    for key in ("success_ratio", "latency_mean_s", "latency_p99_s", "ttft_p50_s", "itl_mean_s", "itl_max_s",
                "tokens_per_s", "span_s", "first_start_wall"):
        assert a[key] is None, key
    json.dumps(ps, allow_nan=False)


def test_without_fault_everything_is_before():
    ps = phase_stats(dataset(), None)
    assert ps["before"]["count"] == 8 and ps["seed_before"]["count"] == 8
    assert ps["spanning"]["count"] == ps["after"]["count"] == ps["seed_after"]["count"] == 0


def test_zero_span_gives_no_throughput():
    assert stats([rec(5.0, 5.0, output_tokens=3)])["tokens_per_s"] is None


# --- recovery ---------------------------------------------------------------------------------


def test_recovery_without_fault_is_all_none():
    r = recovery(dataset(), None)
    assert r["fault_time"] is None
    assert recovery(dataset(), T_F)["fault_time"] == T_F
    for key in phases.CLIENT_RECOVERY_KEYS:
        assert r[key] is None, key


def test_time_to_first_success_counts_only_requests_started_after_fault():
    records = [
        rec(99.0, 100.5),  # spanning success: not a sign of recovery
        rec(100.0, 103.0),
        rec(101.0, 102.5),  # started later but ended first
        rec(100.0, 101.0, CONNECTION_ERROR),
    ]
    r = recovery(records, T_F)
    assert r["time_to_first_success_s"] == 2.5
    assert r["disruption_window_s"] == 1.0
    assert r["failed_after_fault"] == 1


def test_no_success_after_fault_means_no_first_success():
    r = recovery([rec(99.0, 100.5), rec(101.0, 102.0, REJECTED)], T_F)
    assert r["time_to_first_success_s"] is None
    assert r["disruption_window_s"] == 2.0


def test_disruption_window_ignores_failures_ending_at_or_before_fault_and_cancels():
    records = [
        rec(95.0, 100.0, REJECTED),  # ended exactly at T_f: before
        rec(99.0, 107.0, CANCELLED),
        rec(100.0, 101.0),
    ]
    r = recovery(records, T_F)
    assert r["disruption_window_s"] == 0.0
    assert r["failed_after_fault"] == 0


def test_spanning_failure_counts_in_disruption_window():
    r = recovery([rec(98.0, 100.25, TRUNCATED), rec(100.0, 100.5)], T_F)
    assert r["disruption_window_s"] == 0.25


def _before_ok(n=4, **kw):
    """n successes before T_f, 1 s each: latency baseline p50 1.0 s."""
    return [rec(90.0 + i, 91.0 + i, **kw) for i in range(n)]


FIGURES = ("time_to_first_success_s", "time_to_sustained_success_s", "time_to_latency_back_s", "time_to_steady_state_s")


def _assert_ordered(r):
    """The definitions order the figures: each bounds the next from below, steady is the last."""
    known = [r[k] for k in FIGURES]
    if None in known:
        assert all(v is None for v in known[known.index(None):]), r  # None: every later one too
        known = known[: known.index(None)]
    assert known == sorted(known), r
    if r["time_to_steady_state_s"] is not None:
        assert r["time_to_steady_state_s"] >= r["disruption_window_s"]


def test_sustained_success_after_failures_leave_the_window():
    # W = 2, baseline 1.0 → threshold 0.95; windows (u-2, u] at each end / end+2 <= last end,
    # from the first success (101.5) on:
    # 101.5 [FFS] · 102 [FFSS] · 102.5 [F SSS] 0.75 · 103 [SSSS] ok …
    post = [rec(99.0, 100.5, TRUNCATED), rec(100.0, 101.0, REJECTED)]
    post += [rec(101.0, e) for e in (101.5, 102.0, 102.5, 103.0, 103.5, 104.0)]
    r = recovery(_before_ok() + post, T_F, window_s=2.0, tolerance=0.05, latency_factor=4.0)
    assert r["baseline_success_ratio"] == 1.0
    assert r["success_threshold"] == pytest.approx(0.95)
    assert r["time_to_first_success_s"] == 1.5
    assert r["disruption_window_s"] == 1.0
    assert r["time_to_sustained_success_s"] == 3.0
    # latencies 0.5 … 3.0 s stay within 4 x 1.0 s: latency is back as soon as success is
    assert r["time_to_latency_back_s"] == 3.0
    assert r["time_to_steady_state_s"] == 3.0
    # with the default factor 2: the requests taking 2.5 and 3 s are outstanding past 2 s, and
    # the last window's median (2.25 s) is above 2 s: latency never came back
    default = recovery(_before_ok() + post, T_F, window_s=2.0)
    assert default["time_to_sustained_success_s"] == 3.0
    assert default["time_to_latency_back_s"] is None and default["time_to_steady_state_s"] is None
    _assert_ordered(r)
    _assert_ordered(default)


def test_steady_state_is_never_before_the_first_success():
    # Spanning streams (migrated) complete right after T_f; the first request started after
    # T_f ends 1.5 s later. The success ratio of ended requests was fine from 100.2 on, but
    # no request sent after the fault had succeeded yet: nothing is steady before 101.5.
    spanning = [rec(99.0, 100.25, latency_s=1.25), rec(99.5, 100.5), rec(99.75, 100.75)]
    after = [rec(100.5, 101.5), rec(101.0, 102.0), rec(101.5, 102.5)]
    r = recovery(_before_ok() + spanning + after, T_F, window_s=2.0)
    assert r["time_to_first_success_s"] == 1.5
    assert r["time_to_sustained_success_s"] == 1.5
    assert r["time_to_latency_back_s"] == 1.5
    assert r["time_to_steady_state_s"] == 1.5
    _assert_ordered(r)


def test_without_disruption_steady_state_is_the_first_success():
    post = [rec(99.0, 100.25), rec(100.0, 101.0), rec(100.5, 102.0)]
    r = recovery(_before_ok() + post, T_F, window_s=1.0)
    assert r["disruption_window_s"] == 0.0
    assert (r["time_to_first_success_s"], r["time_to_sustained_success_s"]) == (1.0, 1.0)
    assert r["time_to_steady_state_s"] == 1.0


def test_latency_back_waits_for_the_rolling_median():
    # Migrated streams (spanning, 3.5 s) end among fast new requests (0.75 s). W = 1, factor 2
    # of the 1.0 s baseline. Windows (u-1, u] from the first success (100.75):
    # 100.75 [3.5 .75] p50 2.125 · 101.25 [3.5 .75 3.5] 3.5 · 101.5 [.75 3.5] · 101.75 [3.5 .75]
    # all > 2 · 102.25 [.75] back.
    post = [rec(97.0, 100.5), rec(97.75, 101.25)]
    post += [rec(s, s + 0.75) for s in (100.0, 101.0, 101.75, 102.5, 103.25)]
    r = recovery(_before_ok() + post, T_F, window_s=1.0)
    assert r["latency_baseline_s"] == 1.0 and r["latency_factor"] == 2.0
    assert r["time_to_first_success_s"] == 0.75
    assert r["time_to_sustained_success_s"] == 0.75
    assert r["time_to_latency_back_s"] == 2.25
    assert r["time_to_steady_state_s"] == 2.25
    # a looser factor accepts the first windows
    assert recovery(_before_ok() + post, T_F, window_s=1.0, latency_factor=4.0)["time_to_latency_back_s"] == 0.75
    _assert_ordered(r)


def test_latency_back_waits_for_the_rolling_ttft_median():
    # TTFT baseline 0.125 s; the first four requests after the fault see 0.5 s (latency normal).
    before = _before_ok(ttft_s=0.125)
    post = [rec(100.0 + 0.5 * i, 100.75 + 0.5 * i, ttft_s=0.5 if i < 4 else 0.125) for i in range(10)]
    r = recovery(before + post, T_F, window_s=1.0)
    assert r["ttft_baseline_s"] == 0.125
    assert r["time_to_sustained_success_s"] == 0.75
    # (101.75, 102.75] holds TTFTs 0.5 and 0.125: p50 0.3125 > 0.25; back at 103.25
    assert r["time_to_latency_back_s"] == 3.25
    # without a TTFT baseline only latency counts
    assert recovery(_before_ok() + post, T_F, window_s=1.0)["time_to_latency_back_s"] == 0.75


def test_a_hung_request_holds_latency_back_until_it_ends():
    # Requests every 0.5 s, 1 s each; one started after T_f hangs for 7.8 s (ok in the end).
    # It is outstanding from 100.25 + 2 x 1.0 to 108.0, though every window's median is 1.0.
    post = [rec(100.0 + 0.5 * i, 101.0 + 0.5 * i) for i in range(20)]
    hung = rec(100.25, 108.0)
    r = recovery(_before_ok() + post + [hung], T_F, window_s=2.0)
    assert r["time_to_sustained_success_s"] == 1.0
    assert r["time_to_latency_back_s"] == 8.0
    assert r["time_to_steady_state_s"] == 8.0
    # cancelled on purpose: its end is ours, not the server's
    cancelled = rec(100.25, 108.0, CANCELLED)
    assert recovery(_before_ok() + post + [cancelled], T_F, window_s=2.0)["time_to_latency_back_s"] == 1.0
    # spanning requests are not held to it (only requests started after T_f)
    long_spanning = rec(99.5, 104.0)
    assert recovery(_before_ok() + post + [long_spanning], T_F, window_s=2.0)["time_to_latency_back_s"] == 1.0
    _assert_ordered(r)


def test_steady_state_is_after_the_last_failure():
    # A single late failure leaves the ratio above threshold (tolerance 0.5), but the run is
    # not steady before the last failed request ended.
    post = [rec(100.0 + 0.25 * i, 100.5 + 0.25 * i) for i in range(16)]
    post.append(rec(103.5, 104.0, REJECTED))
    r = recovery(_before_ok() + post, T_F, window_s=2.0, tolerance=0.5)
    assert r["time_to_sustained_success_s"] == 0.5 and r["time_to_latency_back_s"] == 0.5
    assert r["disruption_window_s"] == 4.0
    assert r["time_to_steady_state_s"] == 4.0
    _assert_ordered(r)


def test_never_sustained_when_the_last_window_is_below_threshold():
    post = [rec(100.0, 101.0), rec(100.0, 102.0), rec(100.0, 103.0, CONNECTION_ERROR)]
    r = recovery(_before_ok() + post, T_F, window_s=5.0)
    assert r["time_to_first_success_s"] == 1.0
    assert r["time_to_sustained_success_s"] is None
    assert r["time_to_latency_back_s"] is None and r["time_to_steady_state_s"] is None
    _assert_ordered(r)


def test_no_first_success_means_no_later_figure():
    r = recovery(_before_ok() + [rec(99.0, 100.5), rec(101.0, 102.0, TIMEOUT)], T_F)
    assert r["disruption_window_s"] == 2.0
    assert all(r[k] is None for k in FIGURES)


def test_steady_state_needs_a_request_after_fault():
    r = recovery(_before_ok(), T_F)
    assert r["time_to_steady_state_s"] is None
    assert r["time_to_first_success_s"] is None
    assert r["disruption_window_s"] == 0.0


def test_without_before_phase_full_success_is_the_baseline_and_latency_has_none():
    post = [rec(100.0, 100.5, REJECTED)] + [rec(100.0, 100.5 + 0.5 * i) for i in range(1, 7)]
    r = recovery(post, T_F, window_s=1.0, tolerance=0.1)
    assert r["baseline_success_ratio"] is None
    assert r["success_threshold"] == pytest.approx(0.9)
    # from the first success (101): 101 [F S] 0.5 · 101.5 [S S] → sustained at 101.5
    assert r["time_to_first_success_s"] == 1.0
    assert r["time_to_sustained_success_s"] == 1.5
    # no successful request before the fault: no latency baseline, so latency is never "back"
    assert r["latency_baseline_s"] is None
    assert r["time_to_latency_back_s"] is None and r["time_to_steady_state_s"] is None


def test_sustained_threshold_follows_a_degraded_baseline():
    before = [rec(90.0, 91.0), rec(91.0, 92.0, REJECTED)]  # baseline 0.5 → threshold 0.45
    post = [rec(100.0, 100.5, REJECTED), rec(100.0, 101.0), rec(100.0, 101.5)]
    r = recovery(before + post, T_F, window_s=1.0, tolerance=0.05)
    assert r["baseline_success_ratio"] == 0.5
    # 101 [F S] 0.5 ≥ 0.45 → sustained at 101
    assert r["time_to_sustained_success_s"] == 1.0
    assert r["time_to_steady_state_s"] == 1.0


def test_sustained_success_sees_a_window_emptied_of_successes():
    # Threshold 0.5 (tolerance 0.5). W = 1. S@100.25, F@100.5, then nothing until S@101.75.
    # At 101.25 the success has left the window and only the failure remains (ratio 0):
    # evaluating at window exits as well as at ends, sustained success is 101.75, not 100.25.
    post = [rec(100.0, 100.25), rec(100.0, 100.5, REJECTED), rec(100.0, 101.75)]
    r = recovery(_before_ok() + post, T_F, window_s=1.0, tolerance=0.5)
    assert r["time_to_first_success_s"] == 0.25
    assert r["time_to_sustained_success_s"] == 1.75
    assert r["time_to_steady_state_s"] == 1.75


def test_recovery_ignores_cancelled_requests_for_steady_state():
    post = [rec(100.0, 100.5, CANCELLED), rec(100.0, 101.0)]
    r = recovery(_before_ok() + post, T_F, window_s=1.0)
    assert r["time_to_sustained_success_s"] == 1.0
    assert r["time_to_steady_state_s"] == 1.0


def test_recovery_rejects_bad_window_and_factor():
    with pytest.raises(ValueError):
        recovery([], T_F, window_s=0)
    with pytest.raises(ValueError):
        recovery([], T_F, latency_factor=0.5)


def test_recovery_is_json_safe():
    json.dumps(recovery(dataset(), T_F), allow_nan=False)


# --- several faults -------------------------------------------------------------------------


def test_per_fault_splits_between_consecutive_faults():
    f1 = FaultEvent("kill-1", "process", "worker-1", 100.0)
    f2 = FaultEvent("kill-2", "process", "worker-2", 200.0)
    records = [
        rec(90.0, 95.0),  # before f1
        rec(99.0, 101.0),  # spanning f1
        rec(150.0, 160.0),  # after f1, before f2
        rec(199.0, 201.0, TRUNCATED),  # spanning f2 only
        rec(205.0, 206.0),  # after f2
    ]
    out = per_fault(records, [f2, f1])
    assert [o["fault"]["name"] for o in out] == ["kill-1", "kill-2"]
    p1, p2 = out[0]["phases"], out[1]["phases"]
    assert (p1["before"]["count"], p1["spanning"]["count"], p1["after"]["count"]) == (1, 1, 1)
    # fault 2 sees what ended after fault 1: the request spanning fault 1 is "before" fault 2
    assert (p2["before"]["count"], p2["spanning"]["count"], p2["after"]["count"]) == (2, 1, 1)
    assert p2["before"]["first_start_wall"] == 99.0
    assert out[0]["recovery"]["disruption_window_s"] == 0.0
    assert out[1]["recovery"]["disruption_window_s"] == 1.0
    assert out[1]["recovery"]["time_to_first_success_s"] == 6.0


def test_per_fault_ignores_faults_that_did_not_happen():
    f1 = FaultEvent("kill-1", "process", "worker-1", 100.0)
    failed = FaultEvent("kill-x", "process", "worker-3", None, status="failed", error="no such process")
    out = per_fault([rec(90.0, 95.0), rec(150.0, 160.0)], [failed, f1])
    assert [o["fault"]["name"] for o in out] == ["kill-1"]
    assert out[0]["phases"]["after"]["count"] == 1


def _three_faults():
    kill_2 = FaultEvent("kill-2", "process", "worker-2", 200.0)
    never = FaultEvent("stall", "process", "worker-1", None, status="not_fired",
                       error="trigger never reached: after 900 finished requests")
    kill_1 = FaultEvent("kill-1", "process", "worker-1", 100.0, 104.0)
    return [kill_2, never, kill_1]  # the scenario's order


def test_analyse_one_entry_per_planned_fault_in_scenario_order():
    records = [rec(90.0, 95.0), rec(99.0, 101.0), rec(101.0, 102.0), rec(150.0, 151.0),
               rec(199.0, 201.0, TRUNCATED), rec(205.0, 206.0)]
    a = analyse(records, _three_faults(), {"kill-1": 2.5, "kill-2": None}, window_s=2.0)
    assert a["fault_time"] == 100.0
    assert [e["name"] for e in a["per_fault"]] == ["kill-2", "stall", "kill-1"]
    kill_2, stall, kill_1 = a["per_fault"]
    assert (stall["status"], stall["phases"], stall["recovery"], stall["server_recovery_s"]) == ("not_fired", None, None, None)
    assert stall["error"] == "trigger never reached: after 900 finished requests"
    assert stall["fault"]["injected_at"] is None
    assert kill_1["status"] == "injected" and kill_1["error"] is None
    assert kill_1["server_recovery_s"] == 2.5 and kill_1["recovery"]["server_recovery_s"] == 2.5
    assert kill_2["server_recovery_s"] is None and kill_2["recovery"]["server_recovery_s"] is None
    # each fault its own phases: kill-1 sees what ended up to 200, kill-2 what ended after 100
    assert (kill_1["phases"]["before"]["count"], kill_1["phases"]["spanning"]["count"],
            kill_1["phases"]["after"]["count"]) == (1, 1, 2)
    assert (kill_2["phases"]["before"]["count"], kill_2["phases"]["spanning"]["count"],
            kill_2["phases"]["after"]["count"]) == (3, 1, 1)
    assert kill_1["recovery"]["fault_time"] == 100.0 and kill_2["recovery"]["fault_time"] == 200.0
    assert kill_2["recovery"]["disruption_window_s"] == 1.0
    # the whole run against the first injected fault (what checks read)
    assert a["phases"]["before"]["count"] == 1 and a["phases"]["after"]["count"] == 4
    assert a["recovery"]["fault_time"] == 100.0 and a["recovery"]["server_recovery_s"] == 2.5
    assert a["recovery"]["disruption_window_s"] == 101.0
    json.dumps(a, allow_nan=False)


def test_analyse_a_failed_fault_sets_no_fault_time():
    failed = FaultEvent("kill", "process", "worker-1", None, status="failed", error="PermissionError: denied")
    a = analyse([rec(90.0, 95.0), rec(101.0, 102.0)], [failed], {"kill": 3.0})
    assert a["fault_time"] is None
    assert a["phases"]["before"]["count"] == 2 and a["phases"]["after"]["count"] == 0
    assert a["recovery"]["time_to_first_success_s"] is None and a["recovery"]["server_recovery_s"] is None
    (entry,) = a["per_fault"]
    assert (entry["status"], entry["error"], entry["phases"]) == ("failed", "PermissionError: denied", None)
    assert entry["server_recovery_s"] is None  # no fault, no server view of it


def test_analyse_without_faults():
    a = analyse([rec(90.0, 95.0)], [])
    assert a["fault_time"] is None and a["per_fault"] == []
    assert a["recovery"]["server_recovery_s"] is None


def test_stats_never_produce_nan():
    ps = phase_stats([rec(1.0, 1.0, CANCELLED)], 1.0)
    for group in ps.values():
        for v in group.values():
            assert not (isinstance(v, float) and math.isnan(v))


# --- the window of a fault with an end (a lifted partition, a SIGCONT) ---------------------------


def test_window_splits_requests_at_the_end_of_the_effect_and_counts_stalls():
    lifted = FaultEvent("cut", "partition", "frontend|worker-1", T_F, recovered_at=T_F + 5)
    records = [
        rec(90.0, 92.0, ttft_s=0.1, itl_max_s=0.05, first_token_wall=90.1),  # before: not in the window
        rec(98.0, 107.0, ttft_s=0.1, itl_max_s=5.5, first_token_wall=98.1),  # held through the cut: stalled, ok
        rec(101.0, 103.0, TIMEOUT),  # nothing came: the whole 2 s is the stall
        rec(104.9, 105.5, ttft_s=0.1, itl_max_s=0.05, first_token_wall=105.0),  # started inside, fine
        rec(105.0, 106.0, ttft_s=0.1, itl_max_s=0.05, first_token_wall=105.1),  # after the end
        rec(106.0, 106.5, REJECTED),
    ]
    w = phases.window_stats(records, lifted)
    assert w["in_effect_s"] == 5
    assert (w["during"]["count"], w["during"]["success"], w["during"]["failed"], w["during"]["stalled"]) == (3, 2, 1, 2)
    assert (w["after_end"]["count"], w["after_end"]["success"], w["after_end"]["failed"], w["after_end"]["stalled"]) == (
        2, 1, 1, 0)
    # a fault whose effect did not end (a SIGKILL), or that did not happen, has no window
    assert phases.window_stats(records, FaultEvent("kill", "process-signal", "worker-1", T_F)) is None
    assert phases.window_stats(records, FaultEvent("x", "k", "t", None, status="not_fired", error="e")) is None
    (entry,) = analyse(records, [lifted])["per_fault"]
    assert entry["window"]["during"]["stalled"] == 2


def test_window_table_lists_only_faults_with_an_end():
    from ftlocust.report import build_summary, results_table, window_table

    faults = [FaultEvent("kill", "process-signal", "worker-1", T_F),
              FaultEvent("cut", "partition", "frontend|worker-1", T_F + 10, recovered_at=T_F + 12)]
    records = [rec(T_F + 10.5, T_F + 11.5, TIMEOUT), rec(T_F + 13, T_F + 14, ttft_s=0.1, first_token_wall=T_F + 13.1)]
    s = build_summary("x", analyse(records, faults), 1.0, [])
    table = window_table([s]).splitlines()
    assert table[0].split()[:3] == ["Fault", "In", "Effect"] and len(table) == 3
    assert table[2].split() == ["cut", "2.00", "0", "1", "1", "0", "1", "0", "0"]
    assert results_table([s]).endswith("\n".join(table) + "\n")
    assert window_table([build_summary("y", analyse(records, faults[:1]), 1.0, [])]) == ""


def test_a_stall_is_judged_against_what_was_usual_before_the_fault():
    from ftlocust.phases import Baseline, is_stalled

    before = [rec(90.0, 93.0, ttft_s=1.5, itl_max_s=0.05, first_token_wall=91.5),  # a long prefill, usual
              rec(90.0, 92.0, stream=False, kind="completion", latency_s=2.0)]
    base = Baseline.of(before, T_F)
    assert base == Baseline(ttft_s=1.5, latency_s=2.0)
    assert not is_stalled(rec(101.0, 104.0, ttft_s=1.6, itl_max_s=0.05, first_token_wall=102.6), baseline=base)
    assert is_stalled(rec(101.0, 105.0, ttft_s=2.6, itl_max_s=0.05, first_token_wall=103.6), baseline=base)
    assert is_stalled(rec(101.0, 104.0, ttft_s=0.1, itl_max_s=1.2, first_token_wall=101.1), baseline=base)
    unary = dict(stream=False, kind="completion")
    assert not is_stalled(rec(101.0, 103.5, **unary), baseline=base) and is_stalled(rec(101.0, 104.5, **unary), baseline=base)
    assert not is_stalled(rec(101.0, 120.0, **unary))  # no baseline: a long unary answer is not judged a stall


def test_probe_progress_counts_the_probes_tokens_either_side_of_the_fault():
    from ftlocust.checks import FAULTS_INJECTED, builtin_verdicts, RunResult

    walls = [10.0 + 0.1 * i for i in range(20)]  # chunks at 10.0 .. 11.9
    probe = rec(9.9, 12.0, client_id="local/probe", request_id="p1", extra={"chunk_walls": walls})
    other = rec(9.0, 13.0, client_id="local/1", extra={})
    in_flight = FaultEvent("kill", "process-signal", "worker-1", 11.05)
    p = phases.probe_progress([other, probe], in_flight, mid_stream=True)
    assert (p["request_id"], p["tokens_before"], p["tokens_after"]) == ("p1", 11, 9) and "too_late" not in p
    late = FaultEvent("kill", "process-signal", "worker-1", 12.5)
    p = phases.probe_progress([probe], late, mid_stream=True)
    assert p["tokens_after"] == 0 and p["too_late"].startswith("landed too late: the probe stream had finished 0.500 s")
    # a fault not aimed at the probe is only measured, never late; no probe: nothing to say
    assert "too_late" not in phases.probe_progress([probe], late, mid_stream=False)
    assert phases.probe_progress([other], in_flight, mid_stream=True) is None

    late.detail["probe"] = phases.probe_progress([probe], late, mid_stream=True)
    result = RunResult(records=[probe], fault_time=12.5, faults=[late], phases={}, recovery={})
    (v, *_) = builtin_verdicts(result)
    assert v.name == FAULTS_INJECTED and not v.passed
    assert v.detail.startswith("0 of 1 injected in time; kill landed too late")
    in_flight.detail["probe"] = phases.probe_progress([probe], in_flight, mid_stream=True)
    (v, *_) = builtin_verdicts(RunResult(records=[probe], fault_time=11.05, faults=[in_flight], phases={}, recovery={}))
    assert v.passed and v.detail == "1 of 1 injected: kill"
