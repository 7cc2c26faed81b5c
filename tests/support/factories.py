"""Hand-built records for the analysis tests (no network)."""
from ftlocust.records import OK, RequestRecord

T_F = 100.0  # the fault time the synthetic timelines are built around


def rec(start, end, outcome=OK, **kw):
    kw.setdefault("kind", "chat-stream")
    kw.setdefault("endpoint", "/v1/chat/completions")
    kw.setdefault("stream", True)
    return RequestRecord(start_wall=start, end_wall=end, outcome=outcome, **kw)
