"""Marks for tests that run real vLLM: skipped, with the reason, only where its env is missing."""
import pytest

from ftlocust.vllm_env import default_env_path, is_complete


def vllm_marks(target: str, timeout_s: int) -> list:
    path = default_env_path(target)
    return [
        pytest.mark.vllm,
        pytest.mark.integration,
        pytest.mark.timeout(timeout_s),
        pytest.mark.skipif(
            not is_complete(target, path),
            reason=f"no {target} environment at {path} (create it: python -m ftlocust.vllm_env --target {target})",
        ),
    ]
