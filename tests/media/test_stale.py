"""Leftovers of killed runs in the frame cache are found, counted and reclaimed; never read."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from cli_helpers import invoke, json_lines, make_video

from qvl.media import cache as cache_mod
from qvl.media.cache import FrameCache
from qvl.media.video import VideoOptions, load_video


@pytest.fixture(scope="module")
def big_clip(media_dir):
    """Enough frames at a size whose encoding takes a visible moment, so a kill can land in it."""
    return make_video(media_dir / "big.mp4", seconds=6, rate=25, size="640x480")


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_sigkilled_preprocess_leftovers_are_counted_and_cleared(tmp_path, big_clip):
    root = tmp_path / "c"
    proc = subprocess.Popen(
        [sys.executable, "-m", "qvl", "preprocess", str(big_clip), "--frames", "120", "--cache-dir", str(root), "-q"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    work = None
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        tmp = root / "tmp"
        found = [d for d in tmp.iterdir() if not d.name.startswith(".")] if tmp.is_dir() else []
        if found:
            work = found[0]
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.002)
    proc.wait(timeout=30)
    if work is None:
        pytest.skip("preprocess finished before the kill could land in its write")
    assert proc.returncode == -signal.SIGKILL

    cache = FrameCache(root)
    assert cache.entries() == []  # the half-written entry is not an entry
    stale = cache.stale()
    assert [p for p, _ in stale] == [work]  # the writer is gone: stale at once, no age needed
    leftover_bytes = cache.stale_bytes()
    assert leftover_bytes == sum(size for _, size in stale) <= cache.total_size()

    size = json_lines(invoke("cache", "size", "--cache-dir", root, "--json").stdout)[0]
    assert size["entries"] == 0 and size["bytes"] >= leftover_bytes

    result = invoke("cache", "clear", "--cache-dir", root, "--json")
    record = json_lines(result.stdout)[0]
    assert record["removed"] == 0 and record["bytes_freed"] == leftover_bytes
    assert not work.exists() and FrameCache(root).stale() == []


def test_leftover_of_a_dead_writer_is_stale_at_once(tmp_path):
    cache = FrameCache(tmp_path / "c")
    tmp = tmp_path / "c" / "tmp"
    dead = tmp / f"{'ab' * 20}.{cache_mod._HOST}-{_dead_pid()}.0123abcd"
    alive = tmp / f"{'cd' * 20}.{cache_mod._HOST}-{os.getpid()}.0123abcd"
    elsewhere = tmp / f"{'ef' * 20}.0badbeef-{_dead_pid()}.0123abcd"  # another host's writer
    for d in (dead, alive, elsewhere):
        d.mkdir(parents=True)
        (d / "000000.jpg").write_bytes(b"x" * 1000)
    assert [p for p, _ in cache.stale()] == [dead]
    assert cache.stale_bytes() == 1000

    removed, freed = cache.clear(older_than_days=30)  # an age limit still sweeps dead writers
    assert (removed, freed) == (0, 1000) and cache.last_stale == (1, 1000)
    assert not dead.exists() and alive.exists() and elsewhere.exists()


def test_old_leftovers_are_stale_whoever_wrote_them(tmp_path):
    cache = FrameCache(tmp_path / "c")
    tmp = tmp_path / "c" / "tmp"
    old = tmp / f"{'ab' * 20}.12345.0123abcd"  # the older name format: no host
    trash = tmp / "trash-x-0123abcd"
    for d in (old, trash):
        d.mkdir(parents=True)
        (d / "f").write_bytes(b"y" * 10)
    assert [p for p, _ in cache.stale()] == [trash]  # young, writer unknown: maybe still writing
    past = time.time() - cache_mod.STALE_TMP_SECONDS - 60
    os.utime(old, (past, past))
    assert sorted(p for p, _ in cache.stale()) == sorted([old, trash])
    assert cache.clear() == (0, 20)
    assert not old.exists() and not trash.exists()


def test_a_stalled_write_is_never_read(tmp_path, clip):
    # Frames and meta.json complete in tmp/, the rename not done: the entry does not exist yet.
    cache = FrameCache(tmp_path / "c")
    options = VideoOptions(frames=4)
    first = load_video(clip, options, cache=cache)
    entry = cache.entry_dir(first.cache_key)
    work = tmp_path / "c" / "tmp" / f"{first.cache_key}.{cache_mod._HOST}-{_dead_pid()}.00000000"
    os.rename(entry, work)
    assert not cache.has(first.cache_key)
    again = load_video(clip, options, cache=cache)
    assert again.cache == "miss" and cache.has(first.cache_key)
    assert [p for p, _ in cache.stale()] == [work]
