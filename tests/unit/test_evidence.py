"""Log polling and scanning, serving-role lookup, /metrics parsing and deltas, log collection."""

import http.server
import os
import socket
import threading
import time

import pytest

from ftlocust.evidence import (
    BENIGN_LOG_LINES,
    MetricsSnapshot,
    collect_logs,
    delta,
    family_base,
    find_serving_role,
    log_files,
    poll_for_pattern,
    previous_log_path,
    request_id_regex,
    save_metrics,
    scan_log,
    scrape,
    scrape_all,
    strip_ansi,
    wait_for_line,
)

UUID = "a22dae6e-aced-4f91-969f-4780a5ad25cb"


def write(path, text, mode="w"):
    with open(path, mode, encoding="utf-8") as f:
        f.write(text)


# --- poll_for_pattern -------------------------------------------------------------------------


def test_strip_ansi():
    assert strip_ansi("\x1b[2m2026-01-01\x1b[0m \x1b[32m INFO\x1b[0m x") == "2026-01-01  INFO x"


def test_poll_returns_line_and_offset_after_it(tmp_path):
    log = tmp_path / "w.log"
    write(log, "one\nrequest received A\ntwo\nrequest received B\n")
    line, off = poll_for_pattern(str(log), "request received", timeout_s=0)
    assert line == "request received A"
    assert off == len("one\nrequest received A\n")
    line, off2 = poll_for_pattern(str(log), "request received", offset=off, timeout_s=0)
    assert line == "request received B"
    assert off2 == os.path.getsize(log)
    line, off3 = poll_for_pattern(str(log), "request received", offset=off2, timeout_s=0)
    assert (line, off3) == (None, off2)


def test_poll_miss_returns_offset_after_complete_lines_only(tmp_path):
    log = tmp_path / "w.log"
    write(log, "alpha\nbet")  # "bet" is being written
    line, off = poll_for_pattern(str(log), "beta", timeout_s=0)
    assert (line, off) == (None, len("alpha\n"))
    write(log, "a done\n", mode="a")
    line, off = poll_for_pattern(str(log), "beta done", offset=off, timeout_s=0)
    assert line == "beta done"


def test_poll_strips_ansi_before_matching(tmp_path):
    log = tmp_path / "w.log"
    write(log, "\x1b[32m INFO\x1b[0m request received\x1b[0m request_id=1\n")
    line, _ = poll_for_pattern(str(log), "INFO request received request_id=1", timeout_s=0)
    assert line == " INFO request received request_id=1"


def test_poll_regex(tmp_path):
    log = tmp_path / "w.log"
    write(log, "Stream disconnected, recreating stream x\n")
    line, _ = poll_for_pattern(str(log), r"Stream disconnected.*recreating", regex=True, timeout_s=0)
    assert line is not None
    line, _ = poll_for_pattern(str(log), r"Stream disconnected.*recreating", regex=False, timeout_s=0)
    assert line is None


def test_poll_missing_file_times_out_quietly(tmp_path):
    t0 = time.monotonic()
    assert poll_for_pattern(str(tmp_path / "nope.log"), "x", timeout_s=0.2, interval_s=0.05) == (None, 0)
    assert 0.15 <= time.monotonic() - t0 < 5.0


def test_poll_restarts_at_zero_when_file_was_replaced(tmp_path):
    log = tmp_path / "w.log"
    write(log, "old line that is long\n")
    _, off = poll_for_pattern(str(log), "zzz", timeout_s=0)
    write(log, "new\n")  # a restart: shorter file
    line, off2 = poll_for_pattern(str(log), "new", offset=off, timeout_s=0)
    assert (line, off2) == ("new", 4)


def test_poll_waits_for_a_line_written_later(tmp_path):
    log = tmp_path / "w.log"
    write(log, "")
    timer = threading.Timer(0.1, write, args=(log, "later: ready\n", "a"))
    timer.start()
    try:
        line, _ = poll_for_pattern(str(log), "ready", timeout_s=10.0, interval_s=0.01)
    finally:
        timer.cancel()
    assert line == "later: ready"


def test_wait_for_line_reads_every_file_and_skips_ignored_lines(tmp_path):
    a, b = tmp_path / "w1.log", tmp_path / "w2.log"
    write(a, "ERROR Conflicting request tracker write x\n")
    write(b, "INFO \x1b[31mERROR\x1b[0m Failed to publish response\n")
    assert wait_for_line([str(a), str(b)], "ERROR", timeout_s=0) == "INFO ERROR Failed to publish response"
    assert wait_for_line([str(a)], "ERROR", timeout_s=0) is None  # benign by default
    assert wait_for_line([str(a)], "ERROR", ignore=(), timeout_s=0).startswith("ERROR Conflicting")
    assert wait_for_line([str(tmp_path / "missing.log")], "x", timeout_s=0) is None


def test_wait_for_line_waits_for_a_late_line_and_gives_up_in_time(tmp_path):
    log = tmp_path / "w.log"
    write(log, "INFO up\n")
    timer = threading.Timer(0.2, write, args=(log, "WARN Failed to publish response\n", "a"))
    timer.start()
    try:
        t0 = time.monotonic()
        assert wait_for_line([str(log)], "Failed to publish", timeout_s=5.0, interval_s=0.02) is not None
        assert 0.15 <= time.monotonic() - t0 < 3.0
    finally:
        timer.cancel()
    t0 = time.monotonic()
    assert wait_for_line([str(log)], "never", timeout_s=0.3, interval_s=0.05) is None
    assert 0.25 <= time.monotonic() - t0 < 2.0


# --- find_serving_role ------------------------------------------------------------------------


def test_find_serving_role_quoted_id_and_no_prefix_match(tmp_path):
    w1, w2 = tmp_path / "worker-1.log", tmp_path / "worker-2.log"
    write(w1, f"INFO request received request_id={UUID}0\n")  # a longer id: not ours
    write(w2, f'INFO handle_payload: request_span: request received request_id="{UUID}" x\n')
    roles = {"worker-1": str(w1), "worker-2": str(w2)}
    assert find_serving_role(roles, UUID, timeout_s=0) == "worker-2"


def test_find_serving_role_unquoted_and_openai_prefix(tmp_path):
    w1, w2 = tmp_path / "worker-1.log", tmp_path / "worker-2.log"
    write(w1, f"INFO request received request_id={UUID} model=tiny\n")
    write(w2, "INFO something else\n")
    roles = {"worker-1": str(w1), "worker-2": str(w2), "worker-3": str(tmp_path / "missing.log")}
    assert find_serving_role(roles, UUID, timeout_s=0) == "worker-1"
    assert find_serving_role(roles, f"chatcmpl-{UUID}", timeout_s=0) == "worker-1"
    assert find_serving_role(roles, f"cmpl-{UUID}", timeout_s=0) == "worker-1"


def test_find_serving_role_at_end_of_line_and_not_found(tmp_path):
    w1 = tmp_path / "worker-1.log"
    write(w1, f"request received request_id={UUID}\n")
    assert find_serving_role({"w": str(w1)}, UUID, timeout_s=0) == "w"
    assert find_serving_role({"w": str(w1)}, "other-id", timeout_s=0.05, interval_s=0.01) is None


def test_find_serving_role_custom_patterns(tmp_path):
    w1 = tmp_path / "w.log"
    write(w1, "[TRT] New Request ID: 42 started\n")
    assert find_serving_role({"w": str(w1)}, "42", pattern="New Request ID: {id}", timeout_s=0) == "w"
    assert find_serving_role({"w": str(w1)}, "4", pattern="New Request ID: {id}", timeout_s=0) is None
    assert find_serving_role({"w": str(w1)}, "42", pattern="New Request ID:", timeout_s=0) == "w"


def test_find_serving_role_sees_a_late_line(tmp_path):
    w1, w2 = tmp_path / "worker-1.log", tmp_path / "worker-2.log"
    write(w1, "")
    timer = threading.Timer(0.1, write, args=(w2, f"request received request_id={UUID}\n"))
    timer.start()
    try:
        role = find_serving_role({"worker-1": str(w1), "worker-2": str(w2)}, UUID, timeout_s=10, interval_s=0.01)
    finally:
        timer.cancel()
    assert role == "worker-2"


def test_request_id_regex_escapes_the_id():
    import re

    rx = re.compile(request_id_regex("a.b"))
    assert rx.search("request received request_id=a.b")
    assert not rx.search("request received request_id=axb")


# --- scan_log and log files -------------------------------------------------------------------


def test_scan_log_ignores_benign_lines_by_default(tmp_path):
    log = tmp_path / "frontend.log"
    write(
        log,
        "\x1b[31mERROR\x1b[0m dynamo_llm::protocols::common::timing: Conflicting request tracker write field=x\n"
        "INFO fine\n"
        "ERROR http-request: Semantic streaming failure class=Internal\n",
    )
    assert BENIGN_LOG_LINES == ("Conflicting request tracker write",)
    assert scan_log(str(log), "ERROR") == ["ERROR http-request: Semantic streaming failure class=Internal"]
    assert len(scan_log(str(log), "ERROR", ignore=())) == 2
    assert scan_log(str(log), r"class=\w+", regex=True) == ["ERROR http-request: Semantic streaming failure class=Internal"]
    assert scan_log(str(tmp_path / "missing.log"), "ERROR") == []


def test_previous_log_naming(tmp_path):
    assert previous_log_path("/x/worker-1.log") == "/x/worker-1.previous.log"
    assert previous_log_path("/x/worker-1.txt") == "/x/worker-1.txt.previous.log"
    cur, prev = tmp_path / "w.log", tmp_path / "w.previous.log"
    write(cur, "now\n")
    assert log_files(str(cur)) == [str(cur)]
    write(prev, "before restart\n")
    assert log_files(str(cur)) == [str(prev), str(cur)]


def test_collect_logs_layout(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    write(logs / "frontend.log", "fe\n")
    write(logs / "worker-1.log", "w1 new\n")
    write(logs / "worker-1.previous.log", "w1 old\n")
    dest = tmp_path / "artifacts"
    copied = collect_logs(
        {"frontend": str(logs / "frontend.log"), "worker-1": str(logs / "worker-1.log"),
         "worker-2": str(logs / "worker-2.log")},
        str(dest),
    )
    svc = dest / "services"
    assert (svc / "frontend" / "frontend.log").read_text() == "fe\n"
    assert (svc / "worker-1" / "worker-1.log").read_text() == "w1 new\n"
    assert (svc / "worker-1" / "worker-1.previous.log").read_text() == "w1 old\n"
    assert not (svc / "worker-2").exists()
    assert set(copied) == {"frontend", "worker-1"}
    assert sorted(os.path.basename(p) for p in copied["worker-1"]) == ["worker-1.log", "worker-1.previous.log"]


# --- metrics ----------------------------------------------------------------------------------

PROM = """\
# HELP dynamo_frontend_model_migration_total Migrations
# TYPE dynamo_frontend_model_migration_total counter
dynamo_frontend_model_migration_total{migration_type="ongoing_request",model="tiny"} 1
dynamo_frontend_model_migration_total{migration_type="new_request",model="tiny"} 2
# TYPE dynamo_frontend_requests_total counter
dynamo_frontend_requests_total{endpoint="completions",request_type="stream",status="success"} 10
dynamo_frontend_requests_total{endpoint="completions",request_type="stream",status="error"} 3
dynamo_frontend_requests_total{endpoint="chat_completions",request_type="unary",status="success"} 5
# TYPE legacy_counter counter
legacy_counter 7
# TYPE dynamo_frontend_request_duration_seconds histogram
dynamo_frontend_request_duration_seconds_bucket{le="1"} 4
dynamo_frontend_request_duration_seconds_bucket{le="+Inf"} 6
dynamo_frontend_request_duration_seconds_sum 9.5
dynamo_frontend_request_duration_seconds_count 6
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0"} 2
dynamo_frontend_disconnected_clients 1
"""


def test_snapshot_value_sums_matching_series():
    m = MetricsSnapshot(PROM, source="http://x/metrics", taken_at=5.0)
    assert m.value("dynamo_frontend_model_migration_total") == 3
    assert m.value("dynamo_frontend_model_migration_total", migration_type="ongoing_request") == 1
    assert m.value("dynamo_frontend_model_migration", migration_type="new_request", model="tiny") == 2
    assert m.value("dynamo_frontend_requests_total", status="success") == 15
    assert m.value("dynamo_frontend_requests_total", status="success", request_type="stream") == 10
    assert m.value("dynamo_frontend_requests_total", status="nope") == 0.0
    assert m.value("legacy_counter") == 7 and m.value("legacy_counter_total") == 7
    assert m.value("dynamo_frontend_request_duration_seconds_count") == 6
    assert m.value("dynamo_frontend_request_duration_seconds_sum") == 9.5
    assert m.value("dynamo_frontend_request_duration_seconds_bucket", le="1") == 4
    assert m.value("vllm:num_requests_running", engine=0) == 2  # label values compared as text
    assert m.value("dynamo_frontend_disconnected_clients") == 1
    assert m.value("never_seen_total") == 0.0
    assert m.source == "http://x/metrics" and m.taken_at == 5.0 and m.error is None


def test_snapshot_has_and_names():
    m = MetricsSnapshot(PROM)
    assert m.has("dynamo_frontend_model_migration_total", migration_type="ongoing_request")
    assert m.has("dynamo_frontend_model_migration")
    assert not m.has("dynamo_frontend_model_migration_total", migration_type="other")
    names = m.names()
    assert "dynamo_frontend_model_migration_total" in names
    assert "dynamo_frontend_model_migration" in names  # family name
    assert "dynamo_frontend_request_duration_seconds_bucket" in names
    assert "vllm:num_requests_running" in names
    assert names == sorted(names)


def test_label_called_name_works():
    m = MetricsSnapshot('# TYPE x gauge\nx{name="a"} 1\nx{name="b"} 2\n')
    assert m.value("x", name="b") == 2


def test_delta_and_missing_before():
    before = MetricsSnapshot(PROM)
    after = MetricsSnapshot(PROM.replace('migration_type="ongoing_request",model="tiny"} 1', 'migration_type="ongoing_request",model="tiny"} 4'))
    assert delta(before, after, "dynamo_frontend_model_migration_total", migration_type="ongoing_request") == 3
    assert delta(before, after, "dynamo_frontend_model_migration_total", migration_type="new_request") == 0
    assert delta(None, after, "dynamo_frontend_model_migration_total") == 6
    assert delta(MetricsSnapshot(""), after, "dynamo_frontend_model_migration_total") == 6


def test_bad_exposition_text_raises_value_error():
    with pytest.raises(ValueError):
        MetricsSnapshot("this is { not prometheus\n")


def test_from_text_never_raises(tmp_path):
    good = MetricsSnapshot.from_text(PROM, source="fe")
    assert good.error is None and good.value("legacy_counter") == 7 and good.source == "fe"
    bad = MetricsSnapshot.from_text("this is { not prometheus\n", source="fe")
    assert bad.error.startswith("unparseable /metrics text") and bad.samples == []
    assert open(bad.save(str(tmp_path / "m.txt"))).read() == "this is { not prometheus\n"  # raw text kept


def test_failed_snapshot_and_save(tmp_path):
    f = MetricsSnapshot.failed("http://h/metrics", "ConnectionError: refused")
    assert f.error and f.samples == [] and f.value("x") == 0.0
    out = f.save(str(tmp_path / "f.txt"))
    assert "failed: ConnectionError: refused" in open(out).read()
    paths = save_metrics({"frontend": MetricsSnapshot(PROM), "worker-1": f}, str(tmp_path), "before")
    assert paths["frontend"] == str(tmp_path / "services" / "frontend" / "frontend.metrics.before.txt")
    assert open(paths["frontend"]).read() == PROM
    assert os.path.isfile(tmp_path / "services" / "worker-1" / "worker-1.metrics.before.txt")


def test_family_base():
    assert family_base("a_total") == "a"
    assert family_base("h_bucket") == "h"
    assert family_base("h_count") == "h"
    assert family_base("g") == "g"
    assert family_base("_total") == "_total"


class _MetricsHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = PROM.encode() if self.path == "/metrics" else b"nope"
        self.send_response(200 if self.path == "/metrics" else 404)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def metrics_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _MetricsHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _closed_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_scrape_and_scrape_all(metrics_server):
    m = scrape(metrics_server + "/metrics", timeout_s=5)
    assert m.value("dynamo_frontend_model_migration_total") == 3
    assert m.source == metrics_server + "/metrics"
    snaps = scrape_all(
        {"frontend": metrics_server + "/metrics", "missing": metrics_server + "/other",
         "down": f"http://127.0.0.1:{_closed_port()}/metrics"},
        timeout_s=5,
    )
    assert snaps["frontend"].error is None
    assert "404" in snaps["missing"].error
    assert snaps["down"].error.startswith("ConnectionError")
