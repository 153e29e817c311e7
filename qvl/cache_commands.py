"""`qvl preprocess` and `qvl cache list|size|clear`: filling and keeping the frame cache
(qvl/media/preprocess.py and qvl/media/cache.py do the work)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from qvl import output
from qvl.errors import CacheDirError, QvlError
from qvl.option_groups import with_video_options
from qvl.options import CacheDirOpt, JsonOpt, QuietOpt, StrictHashOpt, fail, json_opt
from qvl.runner import frame_cache

CacheListJsonOpt = json_opt("one JSON object per cache entry")
CacheSizeJsonOpt = json_opt("the folder, entry count and bytes as one JSON object")
CacheClearJsonOpt = json_opt("the entries removed and bytes freed as one JSON object")


@with_video_options
def preprocess(
    inputs: Annotated[
        list[str], typer.Argument(help="Video files, folders (searched recursively), globs or http(s) URLs.")
    ],
    jobs: Annotated[int, typer.Option("--jobs", "-j", min=1, help="Videos decoded at once.")] = 1,
    cache_dir: CacheDirOpt = None,
    strict_hash: StrictHashOpt = False,
    json_output: JsonOpt = False,
    quiet: QuietOpt = False,
    video_options=None,
) -> None:
    """Fill the frame cache for many videos so later `qvl video` runs skip decoding.

    Entries already present are skipped; a bad file is reported and the rest go on (the exit
    status is 1 if any failed). The same frame options as `qvl video` give the same entries.
    """
    from qvl.media.preprocess import preprocess as run_preprocess

    cache = frame_cache(cache_dir, strict_hash=strict_hash)
    failed: list = []
    counts = {"new": 0, "cached": 0, "error": 0}
    with output.progress(quiet) as progress:
        overall = progress.add_task("videos", total=None) if progress else None
        tasks: dict[str, int] = {}

        def on_progress(src: str, done: int, total: int) -> None:
            if progress is None:
                return
            if src not in tasks:
                tasks[src] = progress.add_task(f"  {src}", total=total)
            progress.update(tasks[src], completed=done, total=total)

        try:
            for result in run_preprocess(inputs, video_options, cache, jobs=jobs, on_progress=on_progress):
                counts[result.status] += 1
                if progress is not None:
                    if result.path in tasks:
                        progress.remove_task(tasks.pop(result.path))
                    progress.update(overall, advance=1)
                if result.status == "error":
                    failed.append(result)
                if json_output:
                    output.json_line(result.to_dict())
                elif result.status != "error":
                    output.preprocessed(result)
        except QvlError as exc:  # the cache itself is unusable: nothing was done
            fail(exc)
    for result in failed:  # after the progress bars, before the summary that counts them
        output.error(output.named_error(result.error, result.path))
    output.note(
        f"{counts['new']} new, {counts['cached']} already cached, {counts['error']} failed; cache: {cache.root}",
        quiet=quiet,
    )
    raise typer.Exit(1 if failed else 0)


cache_app = typer.Typer(help="Inspect and clear the frame cache.", no_args_is_help=True)


def _kept_cache(cache_dir: str | None):
    """The frame cache that `list`, `size` and `clear` look at: a --cache-dir given must be a
    folder that exists, since a mistyped one would read as an empty cache."""
    if cache_dir is not None:
        from pathlib import Path

        path = Path(cache_dir).expanduser()
        if not path.exists():
            fail(CacheDirError(f"--cache-dir {cache_dir}: no such folder"))
        if not path.is_dir():
            fail(CacheDirError(f"--cache-dir {cache_dir}: not a folder"))
    return frame_cache(cache_dir)


@cache_app.command("list")
def cache_list(cache_dir: CacheDirOpt = None, json_output: CacheListJsonOpt = False) -> None:
    """List cache entries: key, frames, frame size, bytes, age and source."""
    output.cache_entries(_kept_cache(cache_dir).entries(), json_output)


@cache_app.command("size")
def cache_size(cache_dir: CacheDirOpt = None, json_output: CacheSizeJsonOpt = False) -> None:
    """Print the cache folder, its entry count and the bytes it uses (leftovers of interrupted runs apart)."""
    cache = _kept_cache(cache_dir)
    output.cache_size(cache.root, len(cache.entries()), cache.total_size(), cache.stale_bytes(), json_output)


@cache_app.command("clear")
def cache_clear(
    older_than: Annotated[
        Optional[float],
        typer.Option("--older-than", min=0.0, help="Only entries created more than DAYS ago.", metavar="DAYS"),
    ] = None,
    cache_dir: CacheDirOpt = None,
    json_output: CacheClearJsonOpt = False,
) -> None:
    """Remove cache entries (all, or those older than --older-than DAYS)."""
    cache = _kept_cache(cache_dir)
    try:
        removed, freed = cache.clear(older_than_days=older_than)
    except QvlError as exc:
        fail(exc)
    output.cache_cleared(cache.root, removed, freed, json_output)
