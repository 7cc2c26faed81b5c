"""For tests that run real Dynamo: their marks (skipped, with the reason, only where its env is
missing), and readers of the frontend's log lines."""
import re

import pytest

from ftlocust.dynamo_env import default_env_path, is_complete

ENV_PATH = default_env_path()


def dynamo_marks(timeout_s: int) -> list:
    return [
        pytest.mark.dynamo,
        pytest.mark.integration,
        pytest.mark.timeout(timeout_s),
        pytest.mark.skipif(
            not is_complete(ENV_PATH),
            reason=f"no Dynamo environment at {ENV_PATH} (create it: python -m ftlocust.dynamo_env)",
        ),
    ]


def log_field(line: str, name: str) -> str | None:
    found = re.search(rf'\b{re.escape(name)}="?([^"\s]+)"?', line)
    return found.group(1) if found else None


def routed_ids(lines: list[str], outcome: str) -> list[str]:
    """The client-visible request ids (cmpl-<uuid>, the second request_id of the router span)
    of the frontend's `route request ... request.outcome="<outcome>"` lines."""
    ids = []
    for line in lines:
        if "request_span: route request" in line and f'request.outcome="{outcome}"' in line:
            ids.append(re.findall(r'request_id=([0-9a-f-]{36})', line)[-1])
    return ids


def completed_line(lines: list[str], request_id: str) -> str:
    """The frontend's `dynamo_llm::http::service::metrics: request completed` line of a request."""
    (line,) = [l for l in lines if f"request completed request_id={request_id}" in l]
    return line
