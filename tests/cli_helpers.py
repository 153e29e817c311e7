"""Running the real `qvl` app in tests, and checking the one-line error contract."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from qvl.cli import app

runner = CliRunner()


def invoke(*args: str, input: str | None = None, env: dict[str, str] | None = None):
    """Run `qvl ARGS` in-process (the real app, the real tiny model); stdout and stderr apart;
    `input` is what stdin reads (not a terminal); env: variables set for the run."""
    return runner.invoke(app, [str(a) for a in args], input=input, catch_exceptions=False, env=env)


def run_subprocess(*args: str, timeout: float = 120):
    """Run `python -m qvl ARGS` as a user would, through the console entry point."""
    return subprocess.run(
        [sys.executable, "-m", "qvl", *map(str, args)], capture_output=True, text=True, timeout=timeout
    )


def json_lines(stdout: str) -> list[dict]:
    """Every stdout line must be one JSON object."""
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("qvl: error:")]


def assert_one_error(result, *, contains: str, exit_code: int | None = None) -> str:
    """Non-zero exit, exactly one error line mentioning `contains`, and no traceback."""
    code = getattr(result, "exit_code", None)
    code = result.returncode if code is None else code
    assert code != 0, f"expected failure, got exit 0; stderr: {result.stderr}"
    if exit_code is not None:
        assert code == exit_code, (code, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    errors = error_lines(result.stderr)
    assert len(errors) == 1, result.stderr
    assert contains.lower() in errors[0].lower(), errors[0]
    return errors[0]


def make_video(path: Path, seconds: float, rate: int = 8, size: str = "64x48", extra: tuple = ()) -> Path:
    """A real H.264 test-pattern video made by ffmpeg, a keyframe every second."""
    from qvl.media.ffmpeg import run_ffmpeg

    source = f"testsrc2=size={size}:rate={rate}:duration={seconds}"
    encode = ("-c:v", "libx264", "-g", str(rate), "-pix_fmt", "yuv420p")
    run_ffmpeg("-f", "lavfi", "-i", source, *extra, *encode, str(path))
    return path


def make_video_or_skip(path, seconds: float) -> Path:
    """`make_video`, or a skipped test where PyAV or ffmpeg is missing (the GPU host has neither)."""
    import pytest

    pytest.importorskip("av")
    from qvl.errors import InputError
    from qvl.media.ffmpeg import ffmpeg_exe

    try:
        ffmpeg_exe()
    except InputError:
        pytest.skip("no ffmpeg")
    return make_video(path, seconds=seconds)
