"""The README's two set-up commands are what users and CI run: keep them true."""
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _commands():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        return [line[4:].rstrip("\n") for line in f if line.startswith("    python3 -m venv")]


def test_readme_opens_with_the_main_job_then_the_tests():
    main, tests = _commands()[:2]
    assert main.endswith("locust -f locustfiles/migration.py --headless")
    assert re.search(r"pytest", tests)


def test_ci_runs_the_readme_test_command():
    with open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8") as f:
        ci = f.read()
    # .ci/run extracts the command from the README; check its pattern picks the test command
    pattern = re.search(r'grep -m1 -E "([^"]+)" README.md', ci).group(1)
    picked = [c for c in _commands() if re.search(pattern, "    " + c)]
    assert picked[0] == _commands()[1]
