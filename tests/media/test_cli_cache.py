"""`qvl preprocess` and `qvl cache list|size|clear` through the real app."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.cli_helpers import assert_one_error, invoke, json_lines


@pytest.fixture()
def videos(tmp_path, clip, long_gop_clip, unicode_clip, not_a_video, audio_only):
    d = tmp_path / "in"
    d.mkdir()
    shutil.copy(clip, d / "a.mp4")
    shutil.copy(long_gop_clip, d / "b c.mp4")
    shutil.copy(unicode_clip, d / unicode_clip.name)
    return d


def test_preprocess_fills_then_skips(tmp_path, videos):
    cache = tmp_path / "cache"
    r = invoke("preprocess", videos, "--frames", "4", "--jobs", "2", "--cache-dir", cache, "--json")
    assert r.exit_code == 0, r.stderr
    rows = json_lines(r.stdout)
    assert len(rows) == 3 and {row["status"] for row in rows} == {"new"}
    assert all(row["frames"] == 4 and row["key"] and row["error"] is None for row in rows)
    assert {"path", "key", "frames", "seconds", "status"} <= rows[0].keys()
    again = json_lines(invoke("preprocess", f"{videos}/*.mp4", "--frames", "4", "--cache-dir", cache, "--json").stdout)
    assert {row["status"] for row in again} == {"cached"}
    listed = json_lines(invoke("cache", "list", "--cache-dir", cache, "--json").stdout)
    assert len(listed) == 3 and all(e["frames"] == 4 for e in listed)
    # qvl video's library path finds what preprocess stored.
    from qvl.media.cache import FrameCache
    from qvl.media.video import VideoOptions, load_video

    assert load_video(videos / "a.mp4", VideoOptions(frames=4), cache=FrameCache(cache)).from_cache


def test_preprocess_keeps_going_and_lists_failures(tmp_path, videos, not_a_video, audio_only):
    cache = tmp_path / "cache"
    r = invoke(
        "preprocess",
        videos / "a.mp4",
        not_a_video,
        audio_only,
        tmp_path / "missing.mp4",
        "--frames",
        "4",
        "--cache-dir",
        cache,
        "--json",
    )
    assert r.exit_code == 1
    rows = {row["path"]: row for row in json_lines(r.stdout)}
    assert rows[str(videos / "a.mp4")]["status"] == "new"
    assert [row["status"] for row in rows.values()].count("error") == 3
    assert "not a video" in rows[str(not_a_video)]["error"]
    assert "audio only" in rows[str(audio_only)]["error"]
    lines = r.stderr.splitlines()
    errors = [line for line in lines if line.startswith("qvl: error:")]
    assert len(errors) == 3 and "Traceback" not in r.stderr
    failed = [not_a_video, audio_only, tmp_path / "missing.mp4"]
    assert sorted(line.split(": ")[2] for line in errors) == sorted(str(p) for p in failed)  # each names its file
    summary = next(i for i, line in enumerate(lines) if "1 new, 0 already cached, 3 failed" in line)
    assert all(lines.index(line) < summary for line in errors)  # the count comes after what it counts


def test_preprocess_human_output(tmp_path, videos):
    r = invoke("preprocess", videos / "a.mp4", "--frames", "4", "--cache-dir", tmp_path / "c")
    assert r.exit_code == 0 and "new" in r.stdout and "a.mp4" in r.stdout


def test_preprocess_bad_options_and_unwritable_cache(tmp_path, videos):
    assert_one_error(
        invoke("preprocess", videos, "--frames", "0", "--cache-dir", tmp_path / "c"),
        contains="--frames must be at least 1",
        exit_code=2,
    )
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert_one_error(
        invoke("preprocess", videos, "--frames", "4", "--cache-dir", blocker / "c"), contains="not writable"
    )


def test_cache_size_and_clear(tmp_path, videos):
    cache = tmp_path / "cache"
    invoke("preprocess", videos, "--frames", "4", "--cache-dir", cache)
    size = json_lines(invoke("cache", "size", "--cache-dir", cache, "--json").stdout)[0]
    assert size["entries"] == 3 and size["bytes"] > 0
    assert "3 entries" in invoke("cache", "size", "--cache-dir", cache).stdout
    table = invoke("cache", "list", "--cache-dir", cache).stdout
    assert "frames" in table
    kept = json_lines(invoke("cache", "clear", "--older-than", "30", "--cache-dir", cache, "--json").stdout)[0]
    assert kept["removed"] == 0
    gone = json_lines(invoke("cache", "clear", "--cache-dir", cache, "--json").stdout)[0]
    assert gone["removed"] == 3 and gone["bytes_freed"] > 0
    assert json_lines(invoke("cache", "list", "--cache-dir", cache, "--json").stdout) == []


@contextlib.contextmanager
def _read_only(folder: Path):
    """`folder` and all below it made unchangeable for this process: the mode bits, or, for root
    (whom they do not stop), the immutable attribute; skips where neither is available."""
    if os.geteuid() != 0:
        folders = [folder, *(p for p in folder.rglob("*") if p.is_dir())]
        for d in folders:
            d.chmod(0o555)
        try:
            yield
        finally:
            for d in folders:
                d.chmod(0o755)
        return
    if shutil.which("chattr") is None or subprocess.run(["chattr", "-R", "+i", folder], capture_output=True).returncode:
        pytest.skip("cannot make a folder read-only for root here (no chattr, or a file system without it)")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-R", "-i", folder], check=True)


def test_cache_clear_of_a_read_only_cache_says_so(tmp_path, videos):
    """Entries that cannot be removed are neither counted as removed nor passed over in silence."""
    cache = tmp_path / "cache"
    invoke("preprocess", videos, "--frames", "4", "--cache-dir", cache)
    with _read_only(cache):
        assert_one_error(invoke("cache", "clear", "--cache-dir", cache), contains="3 entries", exit_code=1)
    assert json_lines(invoke("cache", "size", "--cache-dir", cache, "--json").stdout)[0]["entries"] == 3
    gone = json_lines(invoke("cache", "clear", "--cache-dir", cache, "--json").stdout)[0]
    assert gone["removed"] == 3


def test_cache_list_names_a_relative_input_by_its_absolute_path(tmp_path, videos, monkeypatch):
    monkeypatch.chdir(videos)
    cache = tmp_path / "cache"
    assert invoke("preprocess", "a.mp4", "--frames", "4", "--cache-dir", cache).exit_code == 0
    (entry,) = json_lines(invoke("cache", "list", "--cache-dir", cache, "--json").stdout)
    assert entry["source"] == str(videos / "a.mp4")


@pytest.mark.parametrize("command", ["list", "size", "clear"])
def test_a_cache_dir_that_is_no_folder_is_one_line_not_an_empty_cache(tmp_path, command):
    """A mistyped --cache-dir would read as an empty cache (and clear would 'remove 0 entries')."""
    a_file = tmp_path / "red.png"
    a_file.write_bytes(b"not a folder")
    assert_one_error(
        invoke("cache", command, "--cache-dir", tmp_path / "nowhere"), contains="no such folder", exit_code=2
    )
    assert_one_error(invoke("cache", command, "--cache-dir", a_file), contains="red.png: not a folder", exit_code=2)
    assert not (tmp_path / "nowhere").exists() and a_file.read_bytes() == b"not a folder"
    (tmp_path / "empty").mkdir()
    assert invoke("cache", command, "--cache-dir", tmp_path / "empty").exit_code == 0
