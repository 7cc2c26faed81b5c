import subprocess
import sys

from ftlocust import cli


def test_help_lists_the_commands(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "dynamo-env" in out and "reference" in out and "locustfiles/migration.py" in out


def test_unknown_command_is_one_line_and_exit_2(capsys):
    assert cli.main(["bogus"]) == 2
    assert "unknown command 'bogus'" in capsys.readouterr().err


def test_dynamo_env_check_reports_a_missing_env(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "ftlocust.cli", "dynamo-env", "--check", "--path", str(tmp_path / "none")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "missing or incomplete" in proc.stdout
