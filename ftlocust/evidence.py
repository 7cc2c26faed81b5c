"""Server-side evidence: log lines (polled or scanned), `/metrics` snapshots and deltas, and
copies of every component's log into the artifacts folder.

Plain Python; `time.sleep` is used for polling (gevent patches it under Locust).
Artifact layout (docs/ARCHITECTURE.md): `services/<role>/<role>.log`, `<role>.previous.log`,
`<role>.metrics.before.txt`, `<role>.metrics.after.txt`.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import time
from typing import Callable, Iterable, Mapping

import requests
from prometheus_client.parser import text_string_to_metric_families

ANSI_RE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]")

# Dynamo logs this ERROR on every successful migration; it is not a fault (dynamo-local.md §4a).
BENIGN_LOG_LINES: tuple[str, ...] = ("Conflicting request tracker write",)

SERVING_PATTERN = "request received request_id={id}"

# Suffixes prometheus_client gives samples of one family.
_SAMPLE_SUFFIXES = ("_total", "_created", "_bucket", "_count", "_sum", "_gsum", "_gcount")


def strip_ansi(text: str) -> str:
    return ANSI_RE.sub("", text)


# --- log polling ----------------------------------------------------------------------------


def _matcher(pattern: str, regex: bool) -> Callable[[str], bool]:
    if regex:
        compiled = re.compile(pattern)
        return lambda line: compiled.search(line) is not None
    return lambda line: pattern in line


def _scan_new(path: str, matches: Callable[[str], bool], offset: int) -> tuple[str | None, int]:
    """One pass over the complete lines written after byte `offset`.

    Returns (first matching line without ANSI codes and newline, offset just after it), or
    (None, offset after the last complete line). A missing file reads as empty; a file shorter
    than `offset` was replaced (a restart) and is read from its start. A partial last line is
    left for the next pass, so it is never matched half-written.
    """
    try:
        size = os.path.getsize(path)
    except OSError:
        return None, offset
    if size < offset:
        offset = 0
    if size == offset:
        return None, offset
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read(size - offset)
    pos = 0
    while True:
        nl = data.find(b"\n", pos)
        if nl < 0:
            return None, offset + pos
        line = strip_ansi(data[pos:nl].decode("utf-8", errors="replace")).rstrip("\r")
        pos = nl + 1
        if matches(line):
            return line, offset + pos


def poll_for_pattern(
    path: str,
    pattern: str,
    offset: int = 0,
    timeout_s: float = 5.0,
    interval_s: float = 0.05,
    regex: bool = False,
) -> tuple[str | None, int]:
    """Wait for a line containing `pattern` (a regex searched in the line if `regex`) in the
    bytes of `path` after `offset`. Returns (the line, offset after it) or, at the timeout,
    (None, offset after the last complete line read) — pass that offset to the next call.

    Reads only new bytes, strips ANSI codes, reads at least once even with `timeout_s=0`, and
    stops after `timeout_s` (at most ceil(timeout_s / interval_s) + 1 reads).
    """
    matches = _matcher(pattern, regex)
    interval_s = max(interval_s, 0.001)
    max_reads = math.ceil(max(timeout_s, 0.0) / interval_s) + 1
    deadline = time.monotonic() + timeout_s
    for _ in range(max_reads):
        line, offset = _scan_new(path, matches, offset)
        if line is not None:
            return line, offset
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        time.sleep(min(interval_s, remaining))
    return None, offset


def wait_for_line(
    paths: Iterable[str],
    pattern: str,
    ignore: Iterable[str] = BENIGN_LOG_LINES,
    regex: bool = False,
    timeout_s: float = 10.0,
    interval_s: float = 0.1,
) -> str | None:
    """The first line of any of `paths` (each read from its start, in turn) that matches
    `pattern` and contains none of the `ignore` substrings, waiting up to `timeout_s` for one
    to be written; None at the timeout. Like `poll_for_pattern`: only new bytes are read on
    each pass, complete lines only, at least one pass even with `timeout_s=0`, at most
    ceil(timeout_s / interval_s) + 1 passes."""
    found = _matcher(pattern, regex)
    ignore = tuple(ignore)

    def matches(line: str) -> bool:
        return found(line) and not any(s in line for s in ignore)

    found_in = _first_match({path: path for path in paths}, matches, timeout_s, interval_s)
    return found_in[1] if found_in else None


def _first_match(paths: Mapping[str, str], matches, timeout_s: float, interval_s: float) -> tuple[str, str] | None:
    """(key, line) of the first new complete line of `paths` (key → file, read in turn, each from
    its start) that `matches`, waiting up to `timeout_s`; None at the timeout. At least one pass,
    at most ceil(timeout_s / interval_s) + 1."""
    offsets = {key: 0 for key in paths}
    interval_s = max(interval_s, 0.001)
    max_passes = math.ceil(max(timeout_s, 0.0) / interval_s) + 1
    deadline = time.monotonic() + timeout_s
    for _ in range(max_passes):
        for key, path in paths.items():
            line, offsets[key] = _scan_new(path, matches, offsets[key])
            if line is not None:
                return key, line
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        time.sleep(min(interval_s, remaining))
    return None


def request_id_regex(request_id: str, pattern: str = SERVING_PATTERN) -> str:
    """Regex for `pattern` with `{id}` standing for the request id, quoted or not
    (`request_id=abc` and `request_id="abc"`), and not a prefix of a longer id. The OpenAI
    response prefixes `cmpl-` / `chatcmpl-` are dropped: servers log the bare uuid. Without
    `{id}` in `pattern`, a line must contain the pattern and then the id."""
    for prefix in ("chatcmpl-", "cmpl-"):
        if request_id.startswith(prefix):
            request_id = request_id[len(prefix):]
            break
    ident = '"?' + re.escape(request_id) + r'(?:"|(?![\w-]))'
    if "{id}" in pattern:
        head, _, tail = pattern.partition("{id}")
        if tail:  # the text after the id ends it (vLLM's `cmpl-<id>-0:`)
            return re.escape(head) + '"?' + re.escape(request_id) + '"?' + re.escape(tail)
        return re.escape(head) + ident
    return re.escape(pattern) + ".*?" + r"(?<![\w-])" + ident


def find_serving_role(
    log_paths: Mapping[str, str],
    request_id: str,
    timeout_s: float = 5.0,
    pattern: str = SERVING_PATTERN,
    interval_s: float = 0.05,
) -> str | None:
    """The role whose log shows `request_id` received (default pattern: Dynamo's and the
    reference deployment's `request received request_id=<uuid>`), or None at the timeout.

    Polls every role's log in turn from its start; when several show it in the same pass (a
    migrated request is received by the survivor too), the first in `log_paths` order wins.
    """
    matches = _matcher(request_id_regex(request_id, pattern), regex=True)
    found_in = _first_match(log_paths, matches, timeout_s, interval_s)
    return found_in[0] if found_in else None


def log_files(path: str) -> list[str]:
    """The existing files of one role's log: its previous log (kept at a restart) first."""
    return [p for p in (previous_log_path(path), path) if os.path.isfile(p)]


def previous_log_path(path: str) -> str:
    """`x/worker-1.log` → `x/worker-1.previous.log` (the ProcessGroup's naming)."""
    if path.endswith(".log"):
        return path[: -len(".log")] + ".previous.log"
    return path + ".previous.log"


def scan_log(
    path: str,
    pattern: str,
    ignore: Iterable[str] = BENIGN_LOG_LINES,
    regex: bool = False,
) -> list[str]:
    """Every line of `path` (ANSI codes stripped) that matches `pattern` and contains none of
    the `ignore` substrings. A missing file has no lines."""
    matches = _matcher(pattern, regex)
    ignore = tuple(ignore)
    found = []
    try:
        f = open(path, "rb")
    except OSError:
        return found
    with f:
        for raw in f:
            line = strip_ansi(raw.decode("utf-8", errors="replace")).rstrip("\r\n")
            if matches(line) and not any(s in line for s in ignore):
                found.append(line)
    return found


# --- logs into the artifacts ----------------------------------------------------------------


def _role_dir_name(role: str) -> str:
    return re.sub(r"[^\w.-]", "_", role) or "_"


def collect_logs(log_paths: Mapping[str, str], dest_dir: str) -> dict[str, list[str]]:
    """Copy each role's log (and its `.previous.log` if present) to
    `dest_dir/services/<role>/<role>.log` / `<role>.previous.log`. Missing logs are skipped.
    Returns the copied destination paths per role."""
    copied: dict[str, list[str]] = {}
    for role, path in log_paths.items():
        name = _role_dir_name(role)
        out_dir = os.path.join(dest_dir, "services", name)
        pairs = [(previous_log_path(path), f"{name}.previous.log"), (path, f"{name}.log")]
        for src, dest_name in pairs:
            if not os.path.isfile(src):
                continue
            os.makedirs(out_dir, exist_ok=True)
            dest = os.path.join(out_dir, dest_name)
            shutil.copyfile(src, dest)
            copied.setdefault(role, []).append(dest)
    return copied


# --- /metrics -------------------------------------------------------------------------------


class MetricsSnapshot:
    """One `/metrics` text, parsed with prometheus_client. `error` is set (and there are no
    samples) when the scrape failed, so checks can say why instead of crashing."""

    def __init__(self, text: str, source: str = "", taken_at: float | None = None, error: str | None = None):
        self.text = text
        self.source = source
        self.taken_at = time.time() if taken_at is None else taken_at
        self.error = error
        self.samples: list[tuple[str, dict[str, str], float]] = []
        self.families: dict[str, str] = {}  # family name -> type
        if text:
            for family in text_string_to_metric_families(text):
                self.families[family.name] = family.type
                for s in family.samples:
                    self.samples.append((s.name, dict(s.labels), float(s.value)))

    @classmethod
    def failed(cls, source: str, error: str) -> "MetricsSnapshot":
        return cls("", source=source, error=error)

    @classmethod
    def from_text(cls, text: str, source: str = "") -> "MetricsSnapshot":
        """Like the constructor, but text that does not parse gives a `failed` snapshot (with
        the raw text kept for the artifacts) instead of raising."""
        try:
            return cls(text, source=source)
        except ValueError as e:
            snap = cls.failed(source, f"unparseable /metrics text: {e}")
            snap.text = text
            return snap

    def names(self) -> list[str]:
        """Every sample name (`x_total`, `h_bucket`, `h_count`, gauges) and family name."""
        return sorted({name for name, _, _ in self.samples} | set(self.families))

    def _resolve(self, name: str) -> str:
        present = {n for n, _, _ in self.samples}
        if name in present:
            return name
        # Counters: prometheus_client names counter samples `<family>_total`, always.
        alt = name[: -len("_total")] if name.endswith("_total") else name + "_total"
        return alt if alt in present else name

    def has(self, name: str, /, **labels) -> bool:
        name = self._resolve(name)
        want = {k: str(v) for k, v in labels.items()}
        return any(n == name and _labels_match(l, want) for n, l, _ in self.samples)

    def value(self, name: str, /, **labels) -> float:
        """Sum of the samples called `name` (with or without `_total`) whose labels include
        `labels`; 0.0 when none match (Dynamo creates labelled counters at their first event)."""
        name = self._resolve(name)
        want = {k: str(v) for k, v in labels.items()}
        return sum(v for n, l, v in self.samples if n == name and _labels_match(l, want))

    def save(self, path: str) -> str:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(self.text or f"# scrape of {self.source} failed: {self.error}\n")
        return path


def _labels_match(have: dict[str, str], want: dict[str, str]) -> bool:
    return all(have.get(k) == v for k, v in want.items())


def delta(before: MetricsSnapshot | None, after: MetricsSnapshot, name: str, /, **labels) -> float:
    """after - before of `value(name, **labels)`; a missing `before` counts as 0."""
    start = before.value(name, **labels) if before is not None else 0.0
    return after.value(name, **labels) - start


def family_base(name: str) -> str:
    """`x_total` / `x_bucket` / `x_count` / ... → `x` (the name a catalog lists)."""
    for suffix in _SAMPLE_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def scrape(url: str, timeout_s: float = 5.0) -> MetricsSnapshot:
    """GET `url` and parse it. Raises `requests.RequestException` on a network or HTTP error
    and `ValueError` on text that is not Prometheus exposition format."""
    response = requests.get(url, timeout=timeout_s)
    if response.status_code >= 400:  # the body often says why (a k8s role's pod that did not answer)
        why = " ".join(response.text.split())[:300]
        raise requests.HTTPError(f"{response.status_code} {response.reason} for {url}" + (f": {why}" if why else ""),
                                 response=response)
    return MetricsSnapshot(response.text, source=url)


def scrape_all(urls: Mapping[str, str], timeout_s: float = 5.0) -> dict[str, MetricsSnapshot]:
    """Scrape every role; a role that fails gets `MetricsSnapshot.failed(...)` with the reason."""
    out = {}
    for role, url in urls.items():
        try:
            out[role] = scrape(url, timeout_s)
        except (requests.RequestException, ValueError) as e:
            out[role] = MetricsSnapshot.failed(url, f"{type(e).__name__}: {e}")
    return out


def save_metrics(snapshots: Mapping[str, MetricsSnapshot], dest_dir: str, label: str) -> dict[str, str]:
    """Write each role's raw text to `dest_dir/services/<role>/<role>.metrics.<label>.txt`."""
    paths = {}
    for role, snap in snapshots.items():
        name = _role_dir_name(role)
        paths[role] = snap.save(os.path.join(dest_dir, "services", name, f"{name}.metrics.{label}.txt"))
    return paths
