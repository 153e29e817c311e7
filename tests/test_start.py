"""The `qvl` command's entry point (`qvl.start`): what happens around every command, in real
processes: a standard output that takes no more, and the help as the answer to no command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import error_lines

HOUSE = Path(__file__).parents[1] / "examples" / "house.jpg"


def _qvl(*args, stdout=subprocess.PIPE):
    return subprocess.run(
        [sys.executable, "-m", "qvl", *map(str, args)], stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=120
    )


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.parametrize("args", [("--help",), ("describe", HOUSE, "--model", "tiny", "--max-tokens", "2", "--json")])
def test_a_full_disk_under_stdout_is_one_line(args, tiny_model_dir):
    with open("/dev/full", "w") as full:
        result = _qvl(*args, stdout=full)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert error_lines(result.stderr) == ["qvl: error: cannot write to standard output: No space left on device"]


def test_a_closed_stdout_is_one_line_and_commands_that_do_not_print_run(tiny_model_dir, tmp_path):
    import os

    def closed(*args):
        return subprocess.run(
            [sys.executable, "-m", "qvl", *map(str, args)],
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
            preexec_fn=lambda: os.close(1),
        )

    result = closed("describe", HOUSE, "--model", "tiny", "--max-tokens", "2")
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert error_lines(result.stderr) == ["qvl: error: cannot write to standard output: it is closed"]
    out = tmp_path / "results.jsonl"
    assert closed("batch", HOUSE, "--model", "tiny", "--max-tokens", "2", "--out", out).returncode == 0
    assert len(out.read_text().splitlines()) == 1


def test_a_reader_that_stops_reading_gets_no_error_line(tiny_model_dir):
    process = subprocess.Popen(
        [sys.executable, "-m", "qvl", "describe", str(HOUSE), "--model", "tiny", "--max-tokens", "40"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    process.stdout.close()  # as `| head -c 0` does
    stderr = process.stderr.read()
    assert process.wait(timeout=120) == 1
    assert "Traceback" not in stderr and error_lines(stderr) == [], stderr


def test_no_command_prints_the_help_and_no_empty_error():
    result = _qvl()
    assert "Usage" in result.stdout and "describe" in result.stdout
    assert error_lines(result.stderr) == [], result.stderr
