"""The run's timeline as a picture (`timeline.png`): what clients saw around each fault.

Top: every request as a bar from its start to its end, one row per request in start order,
coloured by outcome; the fault (dashed) and its recovery (dotted) as vertical lines. Bottom:
per second, requests finished ok / failed and the success ratio. matplotlib is imported here
only, with the non-interactive Agg backend: the plot is drawn once, at the end of a run.
"""

from __future__ import annotations

from typing import Iterable, Sequence

from ftlocust.phases import FaultEvent
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


def timeline_png(records: Sequence[RequestRecord], faults: Iterable[FaultEvent], path: str, title: str = "") -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    faults = list(faults)
    done = sorted((r for r in records if r.end_wall and r.start_wall), key=lambda r: r.start_wall)
    t0 = min([r.start_wall for r in done] + [f.injected_at for f in faults], default=0.0)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 6.5), sharex=True, height_ratios=(3, 1.4))
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
    bottom.set_xlabel("seconds since the first request")
    ratio = bottom.twinx()
    ratios = [(x, ok / (ok + bad)) for x, ok, bad in zip(xs, ok_per_s, failed_per_s) if ok + bad]
    if ratios:
        ratio.plot([x for x, _ in ratios], [v for _, v in ratios], color="#1565c0", linewidth=1.0)
    ratio.set_ylim(0, 1.05)
    ratio.set_ylabel("success ratio", color="#1565c0")

    for fault in faults:
        for axis in (top, bottom):
            axis.axvline(fault.injected_at - t0, color="#b71c1c", linestyle="--", linewidth=1.2)
            if fault.recovered_at:
                axis.axvline(fault.recovered_at - t0, color="#1b5e20", linestyle=":", linewidth=1.2)
        top.annotate(f"{fault.name} ({fault.target})", xy=(fault.injected_at - t0, 1.0), xycoords=("data", "axes fraction"),
                     xytext=(3, -12), textcoords="offset points", color="#b71c1c", fontsize=8)
    if by_outcome:
        top.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
