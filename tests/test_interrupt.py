"""Ctrl-C in the middle of a real run: exit 130, one "interrupted" line, and a frame cache that
holds only whole entries, which later runs read and count correctly."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_helpers import error_lines, invoke, json_lines, make_video

from qvl.media.cache import FrameCache

FRAMES = ["--frames", "96", "--seek", "exact"]  # long enough to decode that Ctrl-C lands mid-run


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> list[Path]:
    d = tmp_path_factory.mktemp("interrupt")
    return [make_video(d / f"v{i}.mp4", seconds=20, rate=25, size="320x240") for i in range(3)]


def _start(*args) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "qvl", *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _interrupt_after_first_entry(proc: subprocess.Popen, root: Path, sent=signal.SIGINT) -> tuple[int, str]:
    """SIGINT (or `sent`) as soon as one entry is complete: the next video is being decoded or written."""
    deadline = time.monotonic() + 120
    while not (root.exists() and FrameCache(root).entries()):
        assert proc.poll() is None, f"finished before the interrupt: {proc.communicate()}"
        assert time.monotonic() < deadline, "no cache entry appeared"
        time.sleep(0.02)
    proc.send_signal(sent)
    out, err = proc.communicate(timeout=60)
    return proc.returncode, err


def _assert_interrupted(code: int, stderr: str, expected=(130, "interrupted")) -> None:
    assert code == expected[0], stderr
    assert "Traceback" not in stderr, stderr
    assert error_lines(stderr) == [f"qvl: error: {expected[1]}"], stderr


def _cache_size(root: Path) -> dict:
    return json.loads(invoke("cache", "size", "--cache-dir", root, "--json").stdout)


def test_ctrl_c_during_preprocess_leaves_only_whole_entries(videos, tmp_path):
    root = tmp_path / "frames"
    code, err = _interrupt_after_first_entry(_start("preprocess", *videos, *FRAMES, "--cache-dir", root), root)
    _assert_interrupted(code, err)
    size = _cache_size(root)
    assert size["entries"] < 3 and size["stale_bytes"] == 0, size  # nothing half-written is left
    assert size["entries"] == len(FrameCache(root).entries())
    again = invoke("preprocess", *videos, *FRAMES, "--cache-dir", root, "--json")
    assert again.exit_code == 0, again.stderr
    statuses = sorted(r["status"] for r in json_lines(again.stdout))
    assert statuses.count("cached") == size["entries"] and statuses.count("new") == 3 - size["entries"]
    assert _cache_size(root)["entries"] == 3
    record = json_lines(
        invoke("video", videos[-1], *FRAMES, "-m", "tiny", "--max-tokens", "2", "--cache-dir", root, "--json").stdout
    )[0]
    assert record["error"] is None and record["cache"] == "hit"


@pytest.mark.parametrize(
    "sent, expected",
    [(signal.SIGINT, (130, "interrupted")), (signal.SIGTERM, (143, "terminated"))],
    ids=["ctrl-c", "sigterm"],
)
def test_ctrl_c_during_qvl_video_leaves_only_whole_entries(videos, tmp_path, tiny_model_dir, sent, expected):
    root = tmp_path / "frames"
    args = ["video", *videos, *FRAMES, "-m", "tiny", "--max-tokens", "2", "--cache-dir", root, "--json"]
    code, err = _interrupt_after_first_entry(_start(*args), root, sent)
    _assert_interrupted(code, err, expected)
    size = _cache_size(root)
    assert 1 <= size["entries"] < 3 and size["stale_bytes"] == 0, size
    records = json_lines(invoke(*args).stdout)
    assert [r["error"] for r in records] == [None] * 3
    assert sum(r["cache"] == "hit" for r in records) == size["entries"]
    assert _cache_size(root)["entries"] == 3


def test_ctrl_c_mid_answer_at_a_terminal_ends_the_answers_line(tmp_path, tiny_model_dir):
    """The streamed answer cut short ends its line: the error line (and then the shell's prompt)
    starts on a line of its own."""
    import re

    pexpect = pytest.importorskip("pexpect")
    from PIL import Image

    image = tmp_path / "p.png"
    Image.new("RGB", (64, 48), (10, 200, 30)).save(image)
    argv = ["-m", "qvl", "describe", str(image), "-m", "tiny", "--max-tokens", "20000"]
    child = pexpect.spawn(sys.executable, argv, encoding="utf-8", codec_errors="replace", timeout=60)
    child.expect_exact("loaded tiny")
    child.expect(r"\S")  # the answer is streaming
    time.sleep(0.3)
    child.sendintr()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 130
    before = re.sub(r"\x1b\[[0-9;]*m", "", child.before).split("qvl: error: interrupted")[0]
    assert before.endswith("\n"), repr(before[-40:])
