"""The run's timeline as a picture (`timeline.png`): what clients saw around each fault.

Top: every request as a bar from its start to its end, one row per request in start order,
coloured by outcome; each injected fault (dashed red), the end of its effect (`recovered_at`,
dotted green) and its rollback (`rolled_back_at`, dash-dot grey) as vertical lines — a fault
that failed or never fired is not drawn. Bottom:
per second, requests finished ok / failed and the success ratio. matplotlib is imported here
only, with the non-interactive Agg backend: the plot is drawn once, at the end of a run.
"""

from __future__ import annotations

from typing import Iterable, Sequence

from ftlocust.phases import FaultEvent, injected_faults
from ftlocust.records import CANCELLED, OK, RequestRecord

OUTCOME_COLOURS = {
    OK: "#2e7d32",
    CANCELLED: "#9e9e9e",
    "rejected": "#ef6c00",
    "http_error": "#c62828",
    "stream_error_event": "#ad1457",
    "truncated": "#6a1b9a",
    "connection_error": "#d84315",
    "timeout": "#4e342e",
}


MARK_STYLES = {  # mark -> (colour, line style, width)
    "injected": ("#b71c1c", "--", 1.2),
    "recovered": ("#1b5e20", ":", 1.2),
    "rolled_back": ("#616161", "-.", 1.0),
}


def fault_marks(faults: Iterable[FaultEvent]) -> list[tuple[float, str, FaultEvent]]:
    """The vertical lines to draw: (time, mark, fault) for every injected fault — `injected`
    at injected_at, `recovered` at recovered_at and `rolled_back` at rolled_back_at where set.
    Failed and not-fired faults have none."""
    marks = []
    for fault in injected_faults(faults):
        marks.append((fault.injected_at, "injected", fault))
        if fault.recovered_at is not None:
            marks.append((fault.recovered_at, "recovered", fault))
        if fault.rolled_back_at is not None:
            marks.append((fault.rolled_back_at, "rolled_back", fault))
    return marks


def timeline_png(records: Sequence[RequestRecord], faults: Iterable[FaultEvent], path: str, title: str = "",
                 gpu_samples: Sequence = ()) -> str:
    """`gpu_samples` (the GPU monitor's): two more rows on the same time axis, util % and memory
    used, SM clock and power (`ftlocust.gpu_monitor.draw`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    faults = injected_faults(faults)
    done = sorted((r for r in records if r.end_wall and r.start_wall), key=lambda r: r.start_wall)
    t0 = min([r.start_wall for r in done] + [f.injected_at for f in faults], default=0.0)
    if gpu_samples:
        fig, (top, bottom, gpu_load, gpu_power) = plt.subplots(4, 1, figsize=(11, 10.5), sharex=True,
                                                               height_ratios=(3, 1.4, 1.4, 1.4))
        from ftlocust.gpu_monitor import draw

        draw(gpu_load, gpu_power, gpu_samples, t0)
        rows = (top, bottom, gpu_load, gpu_power)
    else:
        fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 6.5), sharex=True, height_ratios=(3, 1.4))
        rows = (top, bottom)
    by_outcome: dict[str, list[tuple[float, float, int]]] = {}
    for i, r in enumerate(done):
        by_outcome.setdefault(r.outcome, []).append((r.start_wall - t0, r.end_wall - r.start_wall, i))
    for outcome, bars in sorted(by_outcome.items(), key=lambda kv: kv[0] != OK):
        colour = OUTCOME_COLOURS.get(outcome, "#000000")
        top.hlines([b[2] for b in bars], [b[0] for b in bars], [b[0] + b[1] for b in bars], colors=colour,
                   linewidth=1.2, label=f"{outcome} ({len(bars)})")
    top.set_ylabel("request (by start)")
    top.set_title(title or "requests over time")

    end = max((r.end_wall - t0 for r in done), default=1.0)
    seconds = int(end) + 1
    ok_per_s = [0] * seconds
    failed_per_s = [0] * seconds
    for r in done:
        second = min(int(r.end_wall - t0), seconds - 1)
        if r.outcome == OK:
            ok_per_s[second] += 1
        elif r.outcome != CANCELLED:
            failed_per_s[second] += 1
    xs = [s + 0.5 for s in range(seconds)]
    bottom.bar(xs, ok_per_s, width=1.0, color=OUTCOME_COLOURS[OK], label="ok / s")
    bottom.bar(xs, failed_per_s, width=1.0, bottom=ok_per_s, color="#c62828", label="failed / s")
    bottom.set_ylabel("finished / s")
    rows[-1].set_xlabel("seconds since the first request")
    ratio = bottom.twinx()
    ratios = [(x, ok / (ok + bad)) for x, ok, bad in zip(xs, ok_per_s, failed_per_s) if ok + bad]
    if ratios:
        ratio.plot([x for x, _ in ratios], [v for _, v in ratios], color="#1565c0", linewidth=1.0)
    ratio.set_ylim(0, 1.05)
    ratio.set_ylabel("success ratio", color="#1565c0")

    for when, mark, fault in fault_marks(faults):
        colour, style, width = MARK_STYLES[mark]
        for axis in rows:
            axis.axvline(when - t0, color=colour, linestyle=style, linewidth=width)
        if mark == "injected":
            top.annotate(f"{fault.name} ({fault.target})", xy=(when - t0, 1.0), xycoords=("data", "axes fraction"),
                         xytext=(3, -12), textcoords="offset points", color=colour, fontsize=8)
    if by_outcome:
        top.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
