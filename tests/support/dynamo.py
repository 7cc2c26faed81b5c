"""Marks for tests that run real Dynamo: skipped, with the reason, only where its env is missing."""
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
