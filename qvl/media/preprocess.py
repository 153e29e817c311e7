"""Fill the frame cache for many videos: what `qvl preprocess` runs.

Inputs are files, directories (searched recursively for video files), globs and http(s) URLs.
Videos run `jobs` at a time in threads (libav and Pillow release the GIL); each video's decode
gets its share of the CPU cores. A bad file becomes an "error" result and the rest go on.
"""

from __future__ import annotations

import glob
import os
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

from qvl.errors import QvlError

VIDEO_EXTENSIONS = frozenset(".mp4 .m4v .mov .mkv .webm .avi .mpg .mpeg .ts .mts .m2ts .flv .wmv .3gp .ogv".split())

# on_progress(source, frames_done, frames_total): called from worker threads while decoding.
OnProgress = Callable[[str, int, int], None]


@dataclass
class PreprocessResult:
    path: str
    status: str  # "cached" (already there), "new" (decoded now) or "error"
    key: str | None = None
    frames: int = 0
    seconds: float = 0.0
    error: str | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["seconds"] = round(self.seconds, 3)
        return d


def expand_inputs(items: Iterable[str]) -> tuple[list[str], list[PreprocessResult]]:
    """Files, directories, globs and URLs to a de-duplicated, ordered list of sources.

    Returns (sources, problems): an argument matching nothing is a problem, reported like a
    failed video.
    """
    sources: list[str] = []
    problems: list[PreprocessResult] = []
    seen: set[str] = set()

    def add(s: str) -> None:
        if s not in seen:
            seen.add(s)
            sources.append(s)

    for item in items:
        if item.startswith(("http://", "https://")):
            add(item)
            continue
        p = Path(item).expanduser()
        if p.is_dir():
            found = sorted(str(f) for f in p.rglob("*") if f.is_file() and f.suffix.lower() in VIDEO_EXTENSIONS)
            if not found:
                problems.append(PreprocessResult(item, "error", error=f"{item}: no video files in this folder"))
            for f in found:
                add(f)
        elif p.exists() or p.is_symlink():
            add(str(p))
        elif glob.has_magic(item):
            found = sorted(f for f in glob.glob(os.path.expanduser(item), recursive=True) if os.path.isfile(f))
            if not found:
                problems.append(PreprocessResult(item, "error", error=f"{item}: no files match"))
            for f in found:
                add(f)
        else:
            problems.append(PreprocessResult(item, "error", error=f"{item}: no such file"))
    return sources, problems


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def preprocess(
    paths_or_globs: Iterable[str],
    options,
    cache,
    jobs: int = 1,
    on_progress: OnProgress | None = None,
) -> Iterator[PreprocessResult]:
    """Fill `cache` with each video's planned frames; yield one result per video as it finishes.

    options: qvl.media.video.VideoOptions; cache: qvl.media.cache.FrameCache (checked for
    writability first: a CacheError is raised before any work).
    """
    from qvl.media.video import fill_cache

    sources, problems = expand_inputs(paths_or_globs)
    yield from problems
    if not sources:
        return
    cache.check_writable(can_skip=False)
    jobs = max(1, int(jobs))
    workers = max(1, _cpus() // jobs)

    def one(src: str) -> PreprocessResult:
        t0 = time.perf_counter()
        progress = (lambda done, total: on_progress(src, done, total)) if on_progress else None
        try:
            status, key, plan = fill_cache(src, options, cache, progress=progress, workers=workers)
        except QvlError as exc:
            return PreprocessResult(src, "error", seconds=time.perf_counter() - t0, error=str(exc))
        except Exception as exc:  # keep going past anything one file does; report it
            return PreprocessResult(
                src, "error", seconds=time.perf_counter() - t0, error=f"{src}: {type(exc).__name__}: {exc}"
            )
        return PreprocessResult(src, status, key=key, frames=plan.frames, seconds=time.perf_counter() - t0)

    if jobs == 1:
        for src in sources:
            yield one(src)
        return
    pending = iter(sources)
    with ThreadPoolExecutor(jobs) as pool:
        running = {pool.submit(one, s) for s in _take(pending, jobs)}
        while running:
            done, running = wait(running, return_when=FIRST_COMPLETED)
            for fut in done:
                yield fut.result()
                running |= {pool.submit(one, s) for s in _take(pending, 1)}


def _take(it: Iterator[str], n: int) -> list[str]:
    out = []
    for _ in range(n):
        try:
            out.append(next(it))
        except StopIteration:
            break
    return out
