"""`qvl download` and shell completion through the real app (no network here: the Hub fails fast)."""

import time
from pathlib import Path

import pytest
from cli_helpers import assert_one_error, invoke

HOUSE = Path(__file__).resolve().parent.parent / "examples" / "house.jpg"


def test_download_tiny_builds_into_local_dir(tmp_path):
    target = tmp_path / "tiny-copy"
    result = invoke("download", "tiny", "--local-dir", target)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == str(target)
    assert (target / "config.json").is_file() and list(target.glob("*.safetensors"))
    # and the folder is a model qvl can run
    answer = invoke("describe", HOUSE, "--model", target, "--max-tokens", "2", "--json")
    assert answer.exit_code == 0, answer.stderr


def test_download_unknown_preset_is_exit_2():
    assert_one_error(invoke("download", "13b"), contains="13b", exit_code=2)


def test_download_without_the_hub_fails_fast_and_says_so():
    started = time.perf_counter()
    result = invoke("download", "7b")
    line = assert_one_error(result, contains="Qwen/Qwen2.5-VL-7B-Instruct", exit_code=2)
    assert "qvl download" not in line, line  # never advise the very command that failed
    assert time.perf_counter() - started < 30


def test_completion_script_for_bash():
    # Typer detects the shell from the process's ancestors, so the command runs from bash as a
    # user's does (a test process may have none: a backgrounded pytest is re-parented to init).
    import shlex
    import shutil
    import subprocess
    import sys

    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash here")
    # "; exit $?" keeps bash alive as the parent (a lone command would replace the shell)
    command = f"{shlex.quote(sys.executable)} -m qvl --show-completion; exit $?"
    result = subprocess.run([bash, "-c", command], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert "qvl" in result.stdout and "complete" in result.stdout
