"""The frame cache: hits, keys, tampering, killed and concurrent writers, unwritable roots."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from qvl.errors import CacheError
from qvl.media import cache as cache_mod
from qvl.media.cache import FrameCache, file_identity
from qvl.media.video import VideoOptions, load_video

OPTS = VideoOptions(frames=6)


def test_miss_then_hit(tmp_path, clip):
    cache = FrameCache(tmp_path / "c")
    first = load_video(clip, OPTS, cache=cache)
    assert not first.from_cache and first.cache == "miss" and first.cache_key
    second = load_video(clip, OPTS, cache=cache)
    assert second.from_cache and second.cache == "hit" and second.cache_key == first.cache_key
    assert second.timestamps == first.timestamps
    assert second.sampled_fps == pytest.approx(first.sampled_fps)
    assert second.frames.shape == first.frames.shape
    # JPEG q95 with full-resolution chroma: close to the decoded pixels.
    assert np.abs(second.frames.astype(int) - first.frames).mean() < 2.0
    assert second.to_dict()["from_cache"] is True
    [entry] = cache.entries()
    meta = json.loads((entry.path / "meta.json").read_text())
    assert meta["frames"] == 6 and len(meta["timestamps"]) == 6
    assert {"sampled_fps", "source_duration", "plan", "qvl_version", "source"} <= meta.keys()
    assert entry.size_bytes > 0 and cache.total_size() >= entry.size_bytes


def test_no_cache_means_no_files(tmp_path, clip):
    clip_ = load_video(clip, OPTS, cache=None)
    assert clip_.cache == "off" and not clip_.from_cache


def test_key_covers_plan_and_file(tmp_path, clip):
    cache = FrameCache(tmp_path / "c")
    a = load_video(clip, OPTS, cache=cache).cache_key
    assert load_video(clip, VideoOptions(frames=8), cache=cache).cache_key != a
    assert load_video(clip, VideoOptions(frames=6, seek="exact"), cache=cache).cache_key != a
    copy = tmp_path / "copy.mp4"
    shutil.copy(clip, copy)
    os.utime(copy, ns=(1, 1))
    assert load_video(copy, OPTS, cache=cache).cache_key != a  # another mtime


def test_sampled_vs_strict_hash(tmp_path):
    big = tmp_path / "big.bin"
    data = bytearray(os.urandom(8 << 20))
    big.write_bytes(data)
    st = big.stat()
    before = file_identity(big), file_identity(big, strict=True)
    data[3 << 20] ^= 0xFF  # outside the sampled first, middle and last MiB
    big.write_bytes(data)
    os.utime(big, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = file_identity(big), file_identity(big, strict=True)
    assert before[0] == after[0]  # the bounded sample does not see it ...
    assert before[1] != after[1]  # ... a full hash does
    assert before[0]["hash"].startswith("sha256-sample:") and before[1]["hash"].startswith("sha256:")


def _entry(cache: FrameCache) -> Path:
    [e] = cache.entries()
    return e.path


@pytest.mark.parametrize("damage", ["frame-bytes", "meta-timestamps", "missing-frame", "meta-garbage"])
def test_tampered_entry_is_detected_and_rebuilt(tmp_path, clip, damage):
    cache = FrameCache(tmp_path / "c")
    good = load_video(clip, OPTS, cache=cache)
    d = _entry(cache)
    if damage == "frame-bytes":
        f = d / "000002.jpg"
        b = bytearray(f.read_bytes())
        b[len(b) // 2] ^= 0x55
        f.write_bytes(bytes(b))
    elif damage == "meta-timestamps":
        meta = json.loads((d / "meta.json").read_text())
        meta["timestamps"][0] += 1.0
        (d / "meta.json").write_text(json.dumps(meta))
    elif damage == "missing-frame":
        (d / "000000.jpg").unlink()
    else:
        (d / "meta.json").write_text("{not json")
    again = load_video(clip, OPTS, cache=cache)
    assert not again.from_cache and again.cache == "rebuilt"
    assert again.timestamps == good.timestamps
    third = load_video(clip, OPTS, cache=cache)
    assert third.from_cache and third.cache == "hit"


KILLED_WRITER = textwrap.dedent(
    """
    import sys, time
    from qvl.media import cache as cache_mod
    from qvl.media.cache import FrameCache
    from qvl.media.video import VideoOptions, load_video

    def stall(d):
        print("writing", flush=True)
        time.sleep(60)

    cache_mod._fsync_dir = stall
    load_video(sys.argv[1], VideoOptions(frames=6), cache=FrameCache(sys.argv[2]))
    """
)


def test_killed_run_leaves_no_half_entry(tmp_path, clip):
    root = tmp_path / "c"
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(clip), str(root)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "writing"  # frames are on disk in tmp/
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    cache = FrameCache(root)
    assert cache.entries() == []
    leftovers = list((root / "tmp").iterdir())
    assert leftovers and any((d / "meta.json").exists() for d in leftovers)
    clip_ = load_video(clip, OPTS, cache=cache)
    assert clip_.cache == "miss" and len(cache.entries()) == 1
    for d in leftovers:
        os.utime(d, (time.time() - 7 * 3600,) * 2)
    cache.clear(older_than_days=1000)  # keeps the young entry, sweeps stale tmp leftovers
    assert len(cache.entries()) == 1 and not any(d.exists() for d in leftovers)


CONCURRENT_WRITER = textwrap.dedent(
    """
    import sys, time, os
    from qvl.media.cache import FrameCache
    from qvl.media.video import VideoOptions, load_video

    print("ready", flush=True)
    while not os.path.exists(sys.argv[3]):
        time.sleep(0.005)
    c = load_video(sys.argv[1], VideoOptions(frames=6), cache=FrameCache(sys.argv[2]))
    print(c.cache, c.cache_key, flush=True)
    """
)


def test_two_processes_fill_the_same_entry(tmp_path, clip):
    root, go = tmp_path / "c", tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CONCURRENT_WRITER, str(clip), str(root), str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    for p in procs:
        assert p.stdout.readline().strip() == "ready"
    go.touch()
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    keys = {o[0].split()[1] for o in outs}
    assert len(keys) == 1
    cache = FrameCache(root)
    assert len(cache.entries()) == 1
    hit = load_video(clip, OPTS, cache=cache)
    assert hit.cache == "hit"


def test_racing_puts_in_one_process(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    cache = FrameCache(tmp_path / "c")
    frames = np.random.default_rng(0).integers(0, 255, (2, 56, 56, 3), dtype=np.uint8)
    meta = {"timestamps": [0.0, 1.0], "sampled_fps": 1.0}
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: cache.put("ab" * 20, frames, meta), range(8)))
    got = cache.get("ab" * 20)
    assert got is not None and got.frames.shape == frames.shape and len(cache.entries()) == 1


def test_cache_root_that_is_not_writable(tmp_path, clip):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    cache = FrameCache(blocker / "cache")
    with pytest.raises(CacheError) as exc:
        load_video(clip, OPTS, cache=cache)
    msg = str(exc.value)
    assert "not writable" in msg and "--no-cache" in msg and "\n" not in msg


def test_a_qvl_cache_dir_that_is_not_writable_names_the_variable(tmp_path, clip, monkeypatch):
    # --no-cache would not help: the models live under QVL_CACHE_DIR too.
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("QVL_CACHE_DIR", str(blocker))
    with pytest.raises(CacheError) as exc:
        load_video(clip, OPTS, cache=FrameCache())
    assert f"set QVL_CACHE_DIR (now {blocker}) to a writable folder" in str(exc.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_cache_folder(tmp_path, clip):
    root = tmp_path / "ro"
    root.mkdir()
    root.chmod(0o500)
    try:
        with pytest.raises(CacheError, match="not writable"):
            load_video(clip, OPTS, cache=FrameCache(root))
    finally:
        root.chmod(0o700)


def _age(entry_dir: Path, days: float) -> None:
    meta = json.loads((entry_dir / "meta.json").read_text())
    meta.pop("checksum")
    meta["created"] = time.time() - days * 86400
    meta["checksum"] = cache_mod.hashlib.sha256(cache_mod._canonical(meta)).hexdigest()
    (entry_dir / "meta.json").write_text(json.dumps(meta))


def test_entries_size_and_clear(tmp_path, clip):
    cache = FrameCache(tmp_path / "c")
    old = load_video(clip, VideoOptions(frames=4), cache=cache).cache_key
    load_video(clip, VideoOptions(frames=6), cache=cache)
    _age(cache.entry_dir(old), 10)
    assert len(cache.entries()) == 2
    size = cache.total_size()
    removed, freed = cache.clear(older_than_days=5)
    assert removed == 1 and 0 < freed < size
    assert [e.key for e in cache.entries()] != [old] and len(cache.entries()) == 1
    removed, _ = cache.clear()
    assert removed == 1 and cache.entries() == []


def test_clear_removes_an_entry_whose_meta_is_damaged(tmp_path, clip):
    cache = FrameCache(tmp_path / "c")
    key = load_video(clip, VideoOptions(frames=4), cache=cache).cache_key
    (cache.entry_dir(key) / "meta.json").write_text("{not json")
    assert cache.entries() == [] and [p for p, _ in cache.damaged()] == [cache.entry_dir(key)]
    removed, freed = cache.clear(older_than_days=1000)  # at any age: nothing can read it
    assert removed == 1 and freed > 0 and not cache.entry_dir(key).exists() and cache.damaged() == []


def test_default_root_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv("QVL_CACHE_DIR", str(tmp_path / "env-cache"))
    assert FrameCache().root == tmp_path / "env-cache" / "frames"  # beside models/ (the tiny model)
    monkeypatch.delenv("QVL_CACHE_DIR")
    assert FrameCache().root.name == "frames" and "qvl" in str(FrameCache().root)


def test_the_plan_is_handed_out_before_any_frame_is_read(tmp_path, clip):
    """`on_plan` (where the CLI starts loading the model, sized for the request) comes first, on a
    miss and on a hit, with the plan the clip is then made from."""
    cache = FrameCache(tmp_path / "c")
    for expected in ("miss", "hit"):
        events = []
        loaded = load_video(
            clip,
            OPTS,
            cache=cache,
            progress=lambda done, total, events=events: events.append("frame"),
            on_plan=lambda plan, events=events: events.append(plan),
        )
        assert loaded.cache == expected and events[0] == loaded.plan
        assert events[1:] == (["frame"] * len(events[1:]))
