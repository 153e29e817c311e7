"""Load a video for the model: a local file or an http(s) URL, through the frame cache or PyAV."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from qvl.media.fetch import download, is_url
from qvl.media.video.decode import Extraction, Progress, decode_plan
from qvl.media.video.options import VideoOptions
from qvl.media.video.plan import FramePlan, plan_frames, sampled_fps_of
from qvl.media.video.probe import VideoInfo, check_readable, probe


@dataclass
class VideoClip:
    """Frames ready for the processor, with where they came from.

    frames: uint8 [T, H, W, 3]; timestamps: real seconds from the first frame; sampled_fps: pass
    it to the processor as the video's fps (see sampled_fps_of); cache: "hit", "miss",
    "rebuilt" (a damaged entry was replaced) or "off".
    """

    frames: np.ndarray
    timestamps: tuple[float, ...]
    sampled_fps: float
    plan: FramePlan
    info: VideoInfo
    from_cache: bool
    source: str
    cache: str = "off"
    cache_key: str | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """Everything but the pixels, for --json."""
        return {
            "source": self.source,
            "frames": int(self.frames.shape[0]),
            "width": int(self.frames.shape[2]),
            "height": int(self.frames.shape[1]),
            "timestamps": [round(t, 6) for t in self.timestamps],
            "sampled_fps": round(self.sampled_fps, 6),
            "tokens": self.plan.tokens,
            "from_cache": self.from_cache,
            "cache": self.cache,
            "cache_key": self.cache_key,
            "seconds": round(self.seconds, 4),
        }


def _info_from_dict(d: dict) -> VideoInfo:
    return VideoInfo(**{k: d[k] for k in VideoInfo.__dataclass_fields__ if k in d})


@dataclass
class _Prepared:
    path: Path
    info: VideoInfo
    plan: FramePlan
    identity: dict | None
    key: str | None


def _prepare(path: Path, options: VideoOptions, cache, *, downloaded: bool) -> _Prepared:
    """Probe (or reuse the cached probe record), plan, and compute the cache key."""
    identity = None
    info = None
    if cache is not None:
        identity = cache.identity(path, with_mtime=not downloaded)
        stored = cache.load_probe(identity)
        if stored is not None:
            try:
                info = _info_from_dict({**stored["info"], "path": str(path)})
            except (KeyError, TypeError):
                info = None
    if info is None:
        info = probe(path)
        if cache is not None:
            cache.save_probe(identity, info.to_dict())
    plan = plan_frames(info, options)
    key = cache.key(identity, plan.key_dict()) if cache is not None else None
    return _Prepared(path, info, plan, identity, key)


class _LocalSource:
    """A context giving a local path for a file or an http(s) URL (downloaded, then removed)."""

    def __init__(self, source: str, options: VideoOptions):
        self.source = source
        self.options = options
        self.tmpdir: str | None = None

    def __enter__(self) -> Path:
        if is_url(self.source):
            import tempfile

            self.tmpdir = tempfile.mkdtemp(prefix="qvl-download-")
            try:
                return download(
                    self.source, self.tmpdir, max_mb=self.options.max_download_mb, option="--max-download-mb"
                )
            except BaseException:  # `with` calls __exit__ only once __enter__ has returned
                self.__exit__()
                raise
        path = Path(self.source)
        check_readable(path)
        return path

    def __exit__(self, *exc) -> None:
        if self.tmpdir is not None:
            import shutil

            shutil.rmtree(self.tmpdir, ignore_errors=True)

    @property
    def downloaded(self) -> bool:
        return self.tmpdir is not None


def plan_source(source: str | os.PathLike, options: VideoOptions | None = None, *, cache=None) -> FramePlan:
    """The frame plan for a file or URL, without decoding frames (for --dry-run)."""
    options = options or VideoOptions()
    local = _LocalSource(str(source), options)
    with local as path:
        return _prepare(path, options, cache, downloaded=local.downloaded).plan


def _cache_meta(src: str, prep: _Prepared, ex: Extraction, fps: float) -> dict:
    info = prep.info
    # A file's absolute path: `qvl cache list` is read from anywhere, later.
    path = src if is_url(src) else os.path.abspath(os.path.expanduser(src))
    return {
        "source": {"path": path, **(prep.identity or {})},
        "timestamps": [float(t) for t in ex.timestamps],
        "sampled_fps": fps,
        "source_duration": info.duration,
        "source_fps": info.fps,
        "source_size": [info.width, info.height],
        "plan": prep.plan.to_dict(),
        "keyframes": ex.keyframes,
    }


def fill_cache(
    source: str | os.PathLike,
    options: VideoOptions,
    cache,
    *,
    progress: Progress | None = None,
    workers: int | None = None,
) -> tuple[str, str, FramePlan]:
    """Make sure the cache holds `source`'s frames for `options` without reading them back.

    Returns (status, key, plan): status "cached" (already there) or "new".
    """
    src = str(source)
    local = _LocalSource(src, options)
    with local as path:
        prep = _prepare(path, options, cache, downloaded=local.downloaded)
        if cache.has(prep.key):
            return "cached", prep.key, prep.plan
        cache.check_writable(can_skip=False)  # filling the cache is the whole point here
        ex = decode_plan(path, prep.plan, prep.info, progress=progress, workers=workers)
        fps = sampled_fps_of(ex.timestamps, prep.plan)
        cache.put(prep.key, ex.frames, _cache_meta(src, prep, ex, fps), can_skip=False)
        return "new", prep.key, prep.plan


def load_video(
    source: str | os.PathLike,
    options: VideoOptions | None = None,
    *,
    cache=None,
    progress: Progress | None = None,
    workers: int | None = None,
    on_plan: Callable[[FramePlan], None] | None = None,
) -> VideoClip:
    """Probe, plan and decode a video file or http(s) URL, through the frame cache when given.

    cache: a qvl.media.cache.FrameCache, or None to decode every time.
    progress: called as progress(frames_done, frames_total) while decoding.
    on_plan: called with the plan once it is made, before any frame is read.
    Raises InputError (bad file or URL), PlanError (an impossible plan for this video), CacheError.
    """
    import time

    t_start = time.perf_counter()
    options = options or VideoOptions()
    src = str(source)
    local = _LocalSource(src, options)
    with local as path:
        prep = _prepare(path, options, cache, downloaded=local.downloaded)
        plan, info, key = prep.plan, prep.info, prep.key
        if on_plan is not None:
            on_plan(plan)
        status, hit = "off", None
        if cache is not None:
            hit = cache.get(key, width=plan.width, height=plan.height)
            status = "hit" if hit is not None else cache.last_status
            if hit is None:
                cache.check_writable()
        if hit is not None:
            frames, timestamps, fps = hit.frames, hit.timestamps, hit.sampled_fps
        else:
            ex = decode_plan(path, plan, info, progress=progress, workers=workers)
            frames, timestamps, fps = ex.frames, ex.timestamps, sampled_fps_of(ex.timestamps, plan)
            if cache is not None:
                cache.put(key, ex.frames, _cache_meta(src, prep, ex, fps))
        return VideoClip(
            frames=frames,
            timestamps=timestamps,
            sampled_fps=fps,
            plan=plan,
            info=info,
            from_cache=hit is not None,
            source=src,
            cache=status,
            cache_key=key,
            seconds=time.perf_counter() - t_start,
        )
