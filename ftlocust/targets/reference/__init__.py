"""The reference deployment: a real multi-process OpenAI-compatible service on 127.0.0.1 that
speaks Dynamo's observable dialect (log lines, metric names, SSE error objects), with
deterministic tokens so continuity across a migration is checkable.

    from ftlocust.targets.reference import ReferenceDeployment
    with ReferenceDeployment("run", workers=2) as dep:
        ...  # dep.base_url, dep.signal("worker-1", signal.SIGKILL), dep.events_path

Command line: python -m ftlocust.targets.reference --workers 2 --port 8000 --run-dir DIR
"""

from ftlocust.targets.reference.deployment import ReferenceDeployment
from ftlocust.targets.reference.events import read_events
from ftlocust.targets.reference.tokens import check_continuity, seed_for, token_text

__all__ = ["ReferenceDeployment", "check_continuity", "read_events", "seed_for", "token_text"]
