"""The end of a run on paper: the seed's results table (plus extended columns), `summary.json`,
`results.txt`, and check verdicts for the console. Plain Python, no dependency."""

from __future__ import annotations

import json
import os
from typing import Any, Iterable, Mapping, Sequence

from ftlocust.checks import Verdict
from ftlocust.phases import STAT_GROUPS, FaultEvent, empty_stats

SEED_COLUMNS = (
    "Failure",
    "Startup",
    "Success Before",
    "Failed Before",
    "Success After",
    "Failed After",
    "Latency Before",
    "Latency After",
    "Recovery",
)
EXTENDED_COLUMNS = (
    "Spanning OK",
    "Spanning Failed",
    "TTFT p50 Before",
    "TTFT p50 After",
    "Cut Streams",
    "Cancelled",
)
RECOVERY_KEYS = ("time_to_first_success_s", "disruption_window_s", "time_to_steady_state_s", "server_recovery_s")
MISSING = "N/A"


# --- table --------------------------------------------------------------------------------------


def format_cell(value: Any) -> str:
    """None → N/A, floats with 2 decimals (as the seed's tabulate floatfmt=".2f")."""
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def format_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A plain text table: header, dashes, rows; first column left-aligned, the rest right."""
    cells = [[format_cell(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        if len(row) != len(headers):
            raise ValueError(f"row has {len(row)} cells, table has {len(headers)} columns")
        widths = [max(w, len(c)) for w, c in zip(widths, row)]

    def line(values: Sequence[str]) -> str:
        parts = [v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(values, widths))]
        return "  ".join(parts).rstrip()

    out = [line(list(headers)), line(["-" * w for w in widths])]
    out += [line(row) for row in cells]
    return "\n".join(out) + "\n"


def table_row(summary: Mapping, extended: bool = True) -> list[Any]:
    """One results-table row from a `build_summary` dict (or a `row_from` dict), seed semantics:
    Before/After split by completion time (spanning requests count as After), latency = mean of
    successful requests, After columns N/A without a fault, Recovery = server-view recovery
    (`server_recovery_s`) when measured, else the client's `time_to_first_success_s`.
    Extended: spanning ok/failed, TTFT p50 of the strict before/after phases, cut streams and
    cancelled requests over the whole run. Failure: `failure` if given, else the fault names
    joined by "+", else "none". A fault happened when `fault_time` is set (else: any fault)."""
    faults = summary.get("faults") or []
    phases = summary.get("phases") or {}
    rec = summary.get("recovery") or {}
    had_fault = summary["fault_time"] is not None if "fault_time" in summary else bool(faults)

    def stat(group: str, key: str, needs_fault: bool = True) -> Any:
        if needs_fault and not had_fault:
            return None
        return (phases.get(group) or {}).get(key)

    recovery_s = rec.get("server_recovery_s")
    if recovery_s is None:
        recovery_s = rec.get("time_to_first_success_s")
    row = [
        summary.get("failure") or "+".join(f["name"] for f in faults) or "none",
        summary.get("startup_s"),
        stat("seed_before", "success", needs_fault=False),
        stat("seed_before", "failed", needs_fault=False),
        stat("seed_after", "success"),
        stat("seed_after", "failed"),
        stat("seed_before", "latency_mean_s", needs_fault=False),
        stat("seed_after", "latency_mean_s"),
        recovery_s if had_fault else None,
    ]
    if extended:
        row += [
            stat("spanning", "success"),
            stat("spanning", "failed"),
            stat("before", "ttft_p50_s", needs_fault=False),
            stat("after", "ttft_p50_s"),
            stat("all", "cut_streams", needs_fault=False),
            stat("all", "cancelled", needs_fault=False),
        ]
    return row


def row_from(
    failure: str,
    startup_s: float | None,
    phases: Mapping,
    recovery: Mapping,
    records: Any = None,
    fault_time: float | None = None,
) -> dict:
    """A table row without a full summary. `fault_time` defaults to `recovery["fault_time"]`
    (set by `phases.recovery`); `records` is accepted and unused (the table needs only stats)."""
    if fault_time is None:
        fault_time = recovery.get("fault_time")
    return {"failure": failure, "fault_time": fault_time, "startup_s": startup_s,
            "phases": phases, "recovery": recovery}


def results_table(rows: Iterable[Mapping], extended: bool = True) -> str:
    """The seed's results table, one row per run: `build_summary` dicts or `row_from` dicts."""
    headers = SEED_COLUMNS + (EXTENDED_COLUMNS if extended else ())
    return format_table(headers, [table_row(s, extended) for s in rows])


# --- summary and artifacts ----------------------------------------------------------------------


def _as_dict(item: Any) -> dict:
    return item.to_dict() if hasattr(item, "to_dict") else dict(item)


def build_summary(
    scenario_name: str,
    faults: Iterable[FaultEvent | Mapping],
    phases: Mapping,
    recovery: Mapping,
    startup_s: float | None,
    verdicts: Iterable[Verdict | Mapping],
    extra: Mapping | None = None,
) -> dict:
    """The machine-readable record of one run (`summary.json`).

    Keys: scenario, fault_time (first fault's injected_at or None), faults (name, kind, target,
    injected_at, recovered_at, detail), phases (before / spanning / after / all / seed_before /
    seed_after, each `phases.stats`; missing ones empty), recovery (the `phases.recovery` dict,
    with time_to_first_success_s, disruption_window_s, time_to_steady_state_s and
    server_recovery_s always present, None when unknown), startup_s, checks (name, passed,
    detail), passed (every check passed; True with no checks), extra (`extra`, as given).
    """
    fault_list = sorted((_as_dict(f) for f in faults), key=lambda f: f["injected_at"])
    phase_dict = {group: dict(phases.get(group) or empty_stats()) for group in STAT_GROUPS}
    rec = dict(recovery)
    for key in RECOVERY_KEYS:
        rec.setdefault(key, None)
    checks = [_as_dict(v) for v in verdicts]
    return {
        "scenario": scenario_name,
        "fault_time": fault_list[0]["injected_at"] if fault_list else None,
        "faults": fault_list,
        "phases": phase_dict,
        "recovery": rec,
        "startup_s": startup_s,
        "checks": checks,
        "passed": all(bool(c["passed"]) for c in checks),
        "extra": dict(extra or {}),
    }


def format_verdicts(verdicts: Iterable[Verdict | Mapping]) -> str:
    """One line per check: `PASS name — detail` / `FAIL name — detail`."""
    lines = []
    for v in map(_as_dict, verdicts):
        lines.append(f"{'PASS' if v['passed'] else 'FAIL'} {v['name']} — {v['detail']}")
    return "\n".join(lines) if lines else "(no checks)"


def write_artifacts(
    dir: str, summary: Mapping, table_text: str, verdicts: Iterable[Verdict | Mapping]
) -> dict[str, str]:
    """Write `summary.json` and `results.txt` (the table, a blank line, the verdicts) into `dir`.
    Returns their paths."""
    os.makedirs(dir, exist_ok=True)
    summary_path = os.path.join(dir, "summary.json")
    results_path = os.path.join(dir, "results.txt")
    with open(summary_path, "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2, default=str)
        f.write("\n")
    with open(results_path, "w", encoding="utf-8") as f:
        f.write(table_text.rstrip("\n") + "\n\n" + format_verdicts(verdicts) + "\n")
    return {"summary": summary_path, "results": results_path}


# --- report.html --------------------------------------------------------------------------------

_PHASE_ROWS = (
    ("count", "requests"), ("success", "ok"), ("failed", "failed"), ("cancelled", "cancelled"),
    ("latency_mean_s", "latency mean (s)"), ("latency_p50_s", "latency p50 (s)"), ("latency_p99_s", "latency p99 (s)"),
    ("ttft_p50_s", "TTFT p50 (s)"), ("ttft_p99_s", "TTFT p99 (s)"), ("itl_p50_s", "ITL p50 (s)"),
    ("tokens_per_s", "tokens / s"), ("cut_streams", "cut streams"),
)


def _when(ts: float | None) -> str:
    if ts is None:
        return MISSING
    import datetime

    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime("%H:%M:%S.%f")[:-3] + "Z"


def write_html(dir: str, summary: Mapping, table_text: str, timeline_png: str | None = None) -> str:
    """A self-contained `report.html`: verdicts, the results table, phases, recovery, faults and
    the timeline picture (embedded, so the file can be mailed or attached to a CI run)."""
    import base64
    import html

    esc = html.escape
    checks = summary.get("checks") or []
    verdict_rows = "".join(
        f'<tr class="{"pass" if c["passed"] else "fail"}"><td>{"PASS" if c["passed"] else "FAIL"}</td>'
        f"<td>{esc(str(c['name']))}</td><td>{esc(str(c.get('detail') or ''))}</td></tr>"
        for c in checks
    )
    phases = summary.get("phases") or {}
    groups = [g for g in ("before", "spanning", "after", "all") if g in phases]
    phase_rows = "".join(
        f"<tr><th>{label}</th>" + "".join(f"<td>{format_cell((phases[g] or {}).get(key))}</td>" for g in groups) + "</tr>"
        for key, label in _PHASE_ROWS
    )
    recovery = summary.get("recovery") or {}
    recovery_rows = "".join(f"<tr><th>{esc(k)}</th><td>{format_cell(recovery.get(k))}</td></tr>" for k in RECOVERY_KEYS)
    fault_rows = "".join(
        f"<tr><td>{esc(str(f.get('name')))}</td><td>{esc(str(f.get('kind')))}</td><td>{esc(str(f.get('target')))}</td>"
        f"<td>{_when(f.get('injected_at'))}</td><td>{_when(f.get('recovered_at'))}</td>"
        f"<td>{esc(json.dumps(f.get('detail') or {}, default=str))}</td></tr>"
        for f in summary.get("faults") or []
    )
    image = ""
    if timeline_png and os.path.isfile(timeline_png):
        with open(timeline_png, "rb") as f:
            image = f'<img alt="timeline" src="data:image/png;base64,{base64.b64encode(f.read()).decode()}">'
    passed = summary.get("passed")
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>ftlocust — {esc(str(summary.get('scenario')))}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; }}
td, th {{ border: 1px solid #ccc; padding: 3px 8px; text-align: left; font-size: 0.9em; }}
tr.pass td:first-child {{ color: #2e7d32; font-weight: bold; }} tr.fail td:first-child {{ color: #c62828; font-weight: bold; }}
pre {{ background: #f6f6f6; padding: 0.8em; overflow-x: auto; font-size: 0.8em; }}
.verdict {{ font-size: 1.4em; font-weight: bold; color: {'#2e7d32' if passed else '#c62828'}; }}
img {{ max-width: 100%; }}
</style></head><body>
<h1>{esc(str(summary.get('scenario')))}</h1>
<p class="verdict">{'PASSED' if passed else 'FAILED'}: {sum(1 for c in checks if c['passed'])} of {len(checks)} checks</p>
<table>{verdict_rows}</table>
<h2>Results</h2><pre>{esc(table_text)}</pre>
<h2>Timeline</h2>{image or '<p>no timeline</p>'}
<h2>Phases</h2><table><tr><th></th>{''.join(f'<th>{g}</th>' for g in groups)}</tr>{phase_rows}</table>
<h2>Recovery</h2><table>{recovery_rows}<tr><th>startup_s</th><td>{format_cell(summary.get('startup_s'))}</td></tr></table>
<h2>Faults</h2><table><tr><th>name</th><th>kind</th><th>target</th><th>injected at</th><th>recovered at</th><th>detail</th></tr>{fault_rows}</table>
</body></html>
"""
    path = os.path.join(dir, "report.html")
    with open(path, "w", encoding="utf-8") as f:
        f.write(page)
    return path
