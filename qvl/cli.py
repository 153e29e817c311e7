"""The `qvl` command line: one function per command, each parse -> engine/media -> render.

Heavy imports (torch, transformers, the engine) happen inside the commands, so `qvl --help`
starts instantly. Errors the user can fix are `QvlError`s, printed as one red line on stderr.
"""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from qvl import __version__
from qvl.errors import QvlError

app = typer.Typer(
    name="qvl",
    help="Run Qwen2.5-VL on images and long videos from one machine.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

DEFAULT_IMAGE_PROMPT = "Describe this image."
DEFAULT_IMAGES_PROMPT = "Describe these images."
DEFAULT_VIDEO_PROMPT = "Describe this video."

# Options shared by the commands that run a model.
ModelOpt = Annotated[
    Optional[str],
    typer.Option(
        "--model", "-m", help="Preset (3b, 7b, 72b, tiny), Hub id or local folder. Default: $QVL_MODEL, else 7b."
    ),
]
PromptOpt = Annotated[Optional[str], typer.Option("--prompt", "-p", help="What to ask about the input.")]
MaxTokensOpt = Annotated[int, typer.Option("--max-tokens", help="Most tokens to generate per answer.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto (cuda if available), cuda or cpu.")]
DtypeOpt = Annotated[
    str, typer.Option("--dtype", help="auto (bf16 on GPU, fp32 on CPU), bfloat16, float16 or float32.")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object per input on stdout, nothing else.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress or notes on stderr (errors still).")]
TemperatureOpt = Annotated[float, typer.Option("--temperature", min=0.0, help="Sampling temperature; 0 is greedy.")]
TopPOpt = Annotated[
    Optional[float], typer.Option("--top-p", min=0.0, max=1.0, help="Nucleus sampling (with --temperature).")
]
SeedOpt = Annotated[Optional[int], typer.Option("--seed", help="Random seed for sampling.")]
PsaOpt = Annotated[
    bool, typer.Option("--psa", "--use-psa", help="Pyramid Sparse Attention in the language model's prefill.")
]
CacheDirOpt = Annotated[
    Optional[str],
    typer.Option("--cache-dir", help="Frame cache folder (default: frames/ under $QVL_CACHE_DIR or the user cache)."),
]
PsaPresetOpt = Annotated[
    str,
    typer.Option("--psa-preset", help="PSA budget: default (published bands), balanced (~35%), fast (~10%), dense."),
]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"qvl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Run Qwen2.5-VL on images and long videos from one machine."""


# --- describe ---------------------------------------------------------------------------------


@app.command()
def describe(
    images: Annotated[list[str], typer.Argument(help="Image paths, globs, directories, http(s) URLs or data URIs.")],
    prompt: PromptOpt = None,
    together: Annotated[bool, typer.Option("--together", help="Put all images in one prompt, one answer.")] = False,
    model: ModelOpt = None,
    max_tokens: MaxTokensOpt = 512,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    temperature: TemperatureOpt = 0.0,
    top_p: TopPOpt = None,
    seed: SeedOpt = None,
    psa: PsaOpt = False,
    psa_preset: PsaPresetOpt = "default",
    json_output: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Describe images (or answer --prompt about them), one answer per image unless --together."""
    from qvl.media.images import expand_image_inputs, open_image

    session = _Session(
        model, device, dtype, max_tokens, temperature, top_p, seed, _psa_config(psa, psa_preset), json_output, quiet
    )
    sources = expand_image_inputs(images)
    if together:
        opened = []
        for label, source in sources:
            try:
                opened.append(_open_or_raise(source, open_image))
            except QvlError as exc:
                session.fail(label, exc)
        # One answer about all the images: with any of them missing it would answer another question.
        if opened and session.exit_code == 0:
            session.run(
                ", ".join(label for label, _ in sources), prompt or DEFAULT_IMAGES_PROMPT, lambda: {"images": opened}
            )
    else:
        session.several = len(sources) > 1
        for label, source in sources:
            session.run(
                label,
                prompt or DEFAULT_IMAGE_PROMPT,
                lambda source=source: {"images": [_open_or_raise(source, open_image)]},
            )
    raise typer.Exit(session.exit_code)


# --- video ------------------------------------------------------------------------------------


@app.command()
def video(
    videos: Annotated[list[str], typer.Argument(help="Video paths or http(s) URLs.")],
    prompt: PromptOpt = None,
    frames: Annotated[
        Optional[int], typer.Option("--frames", "--preprocess-frames", "-n", help="Number of frames to sample (even).")
    ] = None,
    fps: Annotated[Optional[float], typer.Option("--fps", help="Frames per second to sample (default 2).")] = None,
    start: Annotated[Optional[float], typer.Option("--start", help="Start of the clip, seconds.")] = None,
    end: Annotated[Optional[float], typer.Option("--end", help="End of the clip, seconds.")] = None,
    min_frames: Annotated[int, typer.Option("--min-frames", help="Fewest frames to sample.")] = 4,
    max_frames: Annotated[int, typer.Option("--max-frames", help="Most frames to sample.")] = 768,
    min_pixels: Annotated[
        Optional[int], typer.Option("--min-pixels", help="Smallest frame, in pixels (default 128 tokens).")
    ] = None,
    max_pixels: Annotated[Optional[int], typer.Option("--max-pixels", help="Pixel budget per frame.")] = None,
    total_pixels: Annotated[
        Optional[int], typer.Option("--total-pixels", help="Pixel budget for the whole video.")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the frame plan and stop; loads no model.")] = False,
    seek: Annotated[
        str,
        typer.Option(
            "--seek",
            help="auto: a keyframe when one lies within half the frame spacing, else the exact frame; exact: always the exact frame.",
        ),
    ] = "auto",
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Do not read or fill the frame cache.")] = False,
    cache_dir: CacheDirOpt = None,
    strict_hash: Annotated[
        bool, typer.Option("--strict-hash", help="Key cache entries by a hash of every byte, not a 768 KiB sample.")
    ] = False,
    max_download_mb: Annotated[int, typer.Option("--max-download-mb", help="Size limit for video URLs.")] = 2048,
    model: ModelOpt = None,
    max_tokens: MaxTokensOpt = 512,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    temperature: TemperatureOpt = 0.0,
    top_p: TopPOpt = None,
    seed: SeedOpt = None,
    psa: PsaOpt = False,
    psa_preset: PsaPresetOpt = "default",
    json_output: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Answer --prompt about each video, sampling frames at their real timestamps."""
    from qvl.media import video as media_video

    psa_config = _psa_config(psa, psa_preset)

    try:
        options = media_video.VideoOptions(
            frames=frames,
            fps=fps,
            start=start,
            end=end,
            min_frames=min_frames,
            max_frames=max_frames,
            max_pixels=max_pixels,
            total_pixels=total_pixels,
            seek=seek,
            max_download_mb=max_download_mb,
            **({"min_pixels": min_pixels} if min_pixels is not None else {}),
        )
    except QvlError as exc:
        _fail_now(exc)
    if dry_run:
        raise typer.Exit(_dry_run(videos, options, json_output))
    cache = None if no_cache else _frame_cache(cache_dir, strict_hash)
    session = _Session(model, device, dtype, max_tokens, temperature, top_p, seed, psa_config, json_output, quiet)
    session.several = len(videos) > 1
    for source in videos:
        session.run(
            source, prompt or DEFAULT_VIDEO_PROMPT, lambda source=source: _load_clip(source, options, cache, quiet)
        )
    raise typer.Exit(session.exit_code)


def _load_clip(source, options, cache, quiet):
    from qvl.engine import VideoFrames
    from qvl.media.video import load_video

    with _progress(quiet) as progress:
        task = progress.add_task(f"frames of {source}", total=None) if progress else None

        def advance(done: int, total: int) -> None:
            if progress is not None:
                progress.update(task, completed=done, total=total)

        clip = load_video(source, options, cache=cache, progress=advance)
    extra = {
        "frames": len(clip.timestamps),
        "sampled_fps": round(clip.sampled_fps, 6),
        "frame_size": [clip.plan.width, clip.plan.height],
        "span": [round(clip.timestamps[0], 3), round(clip.timestamps[-1], 3)],
        "video_tokens": clip.plan.tokens,
        "from_cache": clip.from_cache,
        "cache": clip.cache,  # hit, miss, rebuilt (a damaged entry was replaced) or off
        "timestamps": [round(t, 3) for t in clip.timestamps],
    }
    return {"video": VideoFrames(clip.frames, clip.sampled_fps), "extra": extra}


def _dry_run(videos, options, json_output: bool) -> int:
    from qvl import output
    from qvl.media.video import plan_source

    exit_code = 0
    for source in videos:
        try:
            plan = plan_source(source, options)
        except QvlError as exc:
            _report_failure(source, exc, json_output)
            exit_code = exc.exit_code
            continue
        if json_output:
            output.json_line({"input": source, **plan.to_dict(), "error": None})
        else:
            _print_plan(source, plan)
    return exit_code


def _print_plan(source: str, plan) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=source, show_header=False, title_justify="left")
    table.add_row("frames", str(plan.frames))
    table.add_row("frame size", f"{plan.width} x {plan.height}")
    table.add_row("span", f"{plan.timestamps[0]:.3f} s .. {plan.timestamps[-1]:.3f} s of {plan.source_duration:.3f} s")
    table.add_row("sampled fps", f"{plan.sampled_fps:.4g}")
    table.add_row("LLM tokens", f"{plan.tokens:,}")
    for note in plan.notes:
        table.add_row("note", note)
    # The plan is the data this command was asked for, so it goes to stdout.
    Console(highlight=False).print(table)


def _frame_cache(cache_dir, strict_hash: bool = False):
    from pathlib import Path

    from qvl.media.cache import FrameCache

    return FrameCache(Path(cache_dir) if cache_dir else None, strict_hash=strict_hash)


# --- psa-profile ------------------------------------------------------------------------------


@app.command("psa-profile")
def psa_profile(
    video_path: Annotated[str, typer.Argument(metavar="VIDEO", help="Video path or http(s) URL.")],
    prompt: PromptOpt = None,
    frames: Annotated[Optional[int], typer.Option("--frames", "-n", help="Number of frames to sample.")] = None,
    fps: Annotated[Optional[float], typer.Option("--fps", help="Frames per second to sample.")] = None,
    start: Annotated[Optional[float], typer.Option("--start", help="Start of the clip, seconds.")] = None,
    end: Annotated[Optional[float], typer.Option("--end", help="End of the clip, seconds.")] = None,
    max_pixels: Annotated[Optional[int], typer.Option("--max-pixels", help="Pixel budget per frame.")] = None,
    psa_preset: PsaPresetOpt = "default",
    min_tokens: Annotated[int, typer.Option("--min-tokens", help="Prompts shorter than this keep SDPA.")] = 1024,
    repeat: Annotated[int, typer.Option("--repeat", min=1, help="Timed prefills of each kind (median).")] = 3,
    model: ModelOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    json_output: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Prefill one video with PSA and with SDPA: time both, and show PSA's density per layer."""
    from qvl import output
    from qvl.engine import Engine, Request
    from qvl.media.video import VideoOptions
    from qvl.psa import AttentionConfig
    from qvl.psa_profile import profile_prefill

    try:
        options = VideoOptions(frames=frames, fps=fps, start=start, end=end, max_pixels=max_pixels)
        config = AttentionConfig.preset(psa_preset, min_tokens=min_tokens)
        media = _load_clip(video_path, options, _frame_cache(None), quiet)
        engine = Engine(model, device=device, dtype=dtype, psa=config)
        if engine.is_tiny:
            output.warn("using the built-in tiny model: random weights, so its timings say little about real models")
        report = profile_prefill(engine, Request(prompt or DEFAULT_VIDEO_PROMPT, video=media["video"]), repeat=repeat)
    except QvlError as exc:
        _fail_now(exc)
    if json_output:
        output.json_line({"input": video_path, "model": engine.name, "preset": psa_preset, **media["extra"], **report})
        return
    _print_profile(video_path, psa_preset, report)


def _print_profile(source: str, preset: str, report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    psa = report["psa"]
    title = f"{source}: {report['tokens']:,} tokens, PSA preset {preset}"
    table = Table(title=title, title_justify="left")
    for column in ("layer", "density", "1x", "2x", "4x", "8x", "skipped"):
        table.add_column(column, justify="right")
    for layer, row in enumerate(report["per_layer"]):
        shares = row["level_fraction"]
        table.add_row(str(layer), f"{row['density']:.1%}", *(f"{shares[k]:.0%}" for k in ("1", "2", "4", "8", "0")))
    console = Console(highlight=False)
    console.print(table)
    if psa is None:
        console.print("PSA did not run: the prompt is shorter than --min-tokens")
        return
    console.print(
        f"prefill: PSA {report['prefill_ms']['psa']:.1f} ms, SDPA {report['prefill_ms']['sdpa']:.1f} ms "
        f"({report['speedup']:.2f}x); density {psa['density']:.1%} (sparsity {psa['sparsity']:.1%})"
    )


# --- download ---------------------------------------------------------------------------------


@app.command()
def download(
    model: Annotated[str, typer.Argument(help="Preset (3b, 7b, 72b, tiny) or Hub id.")],
    revision: Annotated[Optional[str], typer.Option("--revision", help="Branch, tag or commit on the Hub.")] = None,
    local_dir: Annotated[
        Optional[str], typer.Option("--local-dir", help="Download into this folder instead of the HF cache.")
    ] = None,
) -> None:
    """Download a model's weights (with progress) so later runs work offline."""
    from qvl import models

    try:
        path = models.download(model, revision=revision, local_dir=local_dir)
    except QvlError as exc:
        _fail_now(exc)
    typer.echo(str(path))


# --- seed-compatible entry point ----------------------------------------------------------------


@app.command("infer", hidden=True)
def infer(
    input: Annotated[str, typer.Option("--input", help="Image or video path or URL.")],
    type: Annotated[str, typer.Option("--type", help="image or video.")] = "image",
    prompt: PromptOpt = None,
    model: ModelOpt = None,
    max_tokens: MaxTokensOpt = 512,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    preprocess_frames: Annotated[Optional[int], typer.Option("--preprocess-frames")] = None,
    psa: PsaOpt = False,
    psa_log_dir: Annotated[Optional[str], typer.Option("--psa-log-dir", hidden=True)] = None,
) -> None:
    """The published example's flags (`--type image|video --input X`), mapped onto describe/video."""
    if psa_log_dir is not None:
        from qvl import output

        output.warn("--psa-log-dir is not used: PSA statistics are in the --json output of qvl describe/video")
    if type not in ("image", "video"):
        _fail_now(QvlError(f"--type must be image or video, not {type!r}"))
    if type == "image":
        describe([input], prompt=prompt, model=model, max_tokens=max_tokens, device=device, dtype=dtype, psa=psa)
    video(
        [input],
        prompt=prompt,
        frames=preprocess_frames,
        model=model,
        max_tokens=max_tokens,
        device=device,
        dtype=dtype,
        psa=psa,
    )


# --- preprocess and cache: the frame cache (media/preprocess.py, media/cache.py) ---------------


@app.command()
def preprocess(
    inputs: Annotated[
        list[str], typer.Argument(help="Video files, folders (searched recursively), globs or http(s) URLs.")
    ],
    frames: Annotated[Optional[int], typer.Option("--frames", "-n", help="Number of frames to sample (even).")] = None,
    fps: Annotated[Optional[float], typer.Option("--fps", help="Frames per second to sample (default 2).")] = None,
    start: Annotated[Optional[float], typer.Option("--start", help="Start of the clip, seconds.")] = None,
    end: Annotated[Optional[float], typer.Option("--end", help="End of the clip, seconds.")] = None,
    min_frames: Annotated[int, typer.Option("--min-frames", help="Fewest frames to sample.")] = 4,
    max_frames: Annotated[int, typer.Option("--max-frames", help="Most frames to sample.")] = 768,
    min_pixels: Annotated[
        Optional[int], typer.Option("--min-pixels", help="Smallest frame, in pixels (default 128 tokens).")
    ] = None,
    max_pixels: Annotated[Optional[int], typer.Option("--max-pixels", help="Pixel budget per frame.")] = None,
    total_pixels: Annotated[
        Optional[int], typer.Option("--total-pixels", help="Pixel budget for the whole video.")
    ] = None,
    seek: Annotated[
        str,
        typer.Option(
            "--seek",
            help="auto: a keyframe when one lies within half the frame spacing, else the exact frame; exact: always the exact frame.",
        ),
    ] = "auto",
    jobs: Annotated[int, typer.Option("--jobs", "-j", min=1, help="Videos decoded at once.")] = 1,
    cache_dir: CacheDirOpt = None,
    strict_hash: Annotated[
        bool, typer.Option("--strict-hash", help="Key entries by a hash of every byte, not a 768 KiB sample.")
    ] = False,
    max_download_mb: Annotated[int, typer.Option("--max-download-mb", help="Size limit for video URLs.")] = 2048,
    json_output: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Fill the frame cache for many videos so later `qvl video` runs skip decoding.

    Entries already present are skipped; a bad file is reported and the rest go on (the exit
    status is 1 if any failed). The same frame options as `qvl video` give the same entries.
    """
    from qvl import output
    from qvl.media.cache import FrameCache
    from qvl.media.preprocess import preprocess as run_preprocess
    from qvl.media.video import VideoOptions

    try:
        options = VideoOptions(
            frames=frames,
            fps=fps,
            start=start,
            end=end,
            min_frames=min_frames,
            max_frames=max_frames,
            max_pixels=max_pixels,
            total_pixels=total_pixels,
            seek=seek,
            max_download_mb=max_download_mb,
            **({"min_pixels": min_pixels} if min_pixels is not None else {}),
        )
    except QvlError as exc:
        _fail_now(exc)
    cache = FrameCache(cache_dir, strict_hash=strict_hash)
    failed: list = []
    counts = {"new": 0, "cached": 0, "error": 0}
    with _progress(quiet) as progress:
        overall = progress.add_task("videos", total=None) if progress else None
        tasks: dict[str, int] = {}

        def on_progress(src: str, done: int, total: int) -> None:
            if progress is None:
                return
            if src not in tasks:
                tasks[src] = progress.add_task(f"  {src}", total=total)
            progress.update(tasks[src], completed=done, total=total)

        try:
            for result in run_preprocess(inputs, options, cache, jobs=jobs, on_progress=on_progress):
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
                    output.write(
                        f"{result.status:<6}  {result.frames:>4} frames  {result.seconds:7.2f} s  {result.path}\n"
                    )
        except QvlError as exc:  # the cache itself is unusable: nothing was done
            _fail_now(exc)
    output.note(
        f"{counts['new']} new, {counts['cached']} already cached, {counts['error']} failed; cache: {cache.root}",
        quiet=quiet,
    )
    for result in failed:
        output.error(result.error)
    raise typer.Exit(1 if failed else 0)


cache_app = typer.Typer(help="Inspect and clear the frame cache.", no_args_is_help=True)
app.add_typer(cache_app, name="cache")


@cache_app.command("list")
def cache_list(cache_dir: CacheDirOpt = None, json_output: JsonOpt = False) -> None:
    """List cache entries: key, frames, frame size, bytes, age and source."""
    import time

    from qvl import output
    from qvl.media.cache import FrameCache

    entries = FrameCache(cache_dir).entries()
    if json_output:
        for e in entries:
            output.json_line(
                {
                    "key": e.key,
                    "source": e.source,
                    "frames": e.frames,
                    "width": e.width,
                    "height": e.height,
                    "bytes": e.size_bytes,
                    "created": round(e.created, 3),
                    "path": str(e.path),
                }
            )
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("key", "frames", "size", "MB", "age", "source", title_justify="left")
    now = time.time()
    for e in sorted(entries, key=lambda e: e.created):
        table.add_row(
            e.key[:12],
            str(e.frames),
            f"{e.width}x{e.height}",
            f"{e.size_bytes / 1e6:.1f}",
            _age(now - e.created),
            e.source,
        )
    Console(highlight=False).print(table)


@cache_app.command("size")
def cache_size(cache_dir: CacheDirOpt = None, json_output: JsonOpt = False) -> None:
    """Print the cache folder, its entry count and the bytes it uses."""
    from qvl import output
    from qvl.media.cache import FrameCache

    cache = FrameCache(cache_dir)
    entries, total = len(cache.entries()), cache.total_size()
    if json_output:
        output.json_line({"root": str(cache.root), "entries": entries, "bytes": total})
    else:
        output.write(f"{total / 1e6:.1f} MB in {entries} entries  {cache.root}\n")


@cache_app.command("clear")
def cache_clear(
    older_than: Annotated[
        Optional[float],
        typer.Option("--older-than", min=0.0, help="Only entries created more than DAYS ago.", metavar="DAYS"),
    ] = None,
    cache_dir: CacheDirOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Remove cache entries (all, or those older than --older-than DAYS)."""
    from qvl import output
    from qvl.media.cache import FrameCache

    cache = FrameCache(cache_dir)
    removed, freed = cache.clear(older_than_days=older_than)
    if json_output:
        output.json_line({"root": str(cache.root), "removed": removed, "bytes_freed": freed})
    else:
        output.write(f"removed {removed} entries, freed {freed / 1e6:.1f} MB  {cache.root}\n")


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


# --- shared plumbing ----------------------------------------------------------------------------


class _Session:
    """Loads the engine on first use and runs one request per input, reporting each on its own."""

    def __init__(self, model, device, dtype, max_tokens, temperature, top_p, seed, psa, json_output, quiet):
        self.model_spec, self.device, self.dtype, self.psa = model, device, dtype, psa
        self.max_tokens, self.temperature, self.top_p, self.seed = max_tokens, temperature, top_p, seed
        self.json_output, self.quiet = json_output, quiet
        self.engine = None
        self.exit_code = 0
        self.count = 0
        self.several = False  # several inputs: a header before each streamed answer

    def fail(self, label: str, exc: QvlError) -> None:
        _report_failure(label, exc, self.json_output)
        self.exit_code = self.exit_code or exc.exit_code

    def run(self, label: str, prompt: str, load_media) -> None:
        import time

        from qvl import output
        from qvl.engine import Request

        self.count += 1
        try:
            # Media first: a bad input is reported without waiting for a model to load.
            started = time.perf_counter()
            media = load_media()
            media_s = time.perf_counter() - started
            engine = self._engine()
            request = Request(
                prompt=prompt,
                images=media.get("images", ()),
                video=media.get("video"),
                max_new_tokens=self.max_tokens,
                temperature=self.temperature,
                top_p=self.top_p,
                seed=self.seed,
            )
            streaming = not self.json_output
            if streaming and self.count > 1:
                output.write("\n")
            if streaming and self.several:
                output.write(f"==> {label} <==\n")
            result = engine.generate(request, on_text=output.write if streaming else None)
        except QvlError as exc:
            self.fail(label, exc)
            if isinstance(exc, _FatalModelError):
                raise typer.Exit(exc.exit_code) from None
            return
        result.timings.media_s = media_s
        if streaming:
            output.write("\n")
            if result.psa is not None:
                output.note(
                    f"psa: {result.psa['density']:.0%} of dense attention cost over {result.psa['layers']} layers"
                    f" ({result.psa['tokens']:,} tokens)",
                    quiet=self.quiet,
                )
            elif self.psa is not None:  # asked for, but this prompt is too short for PSA to pay
                output.note(
                    f"psa: not used for this prompt ({result.prompt_tokens:,} tokens; PSA runs from "
                    f"{self.psa.min_tokens:,}): SDPA ran instead",
                    quiet=self.quiet,
                )
        else:
            output.json_line(
                {
                    "input": label,
                    "model": engine.name,
                    "prompt": prompt,
                    "text": result.text,
                    "tokens": {"prompt": result.prompt_tokens, "generated": result.generated_tokens},
                    "timings": result.timings.to_dict(),
                    **media.get("extra", {}),
                    **({"psa": result.psa} if self.psa is not None else {}),
                    "error": None,
                }
            )

    def _engine(self):
        if self.engine is None:
            from qvl import output
            from qvl.engine import Engine
            from qvl.errors import ModelError

            if self.quiet:
                from transformers.utils import logging as hf_logging

                hf_logging.disable_progress_bar()
            try:
                self.engine = Engine(self.model_spec, device=self.device, dtype=self.dtype, psa=self.psa)
            except ModelError as exc:
                # Without a model no input can succeed: stop after this one line.
                raise _FatalModelError(str(exc)) from None
            if self.engine.is_tiny:
                output.warn("using the built-in tiny model: random weights, so its answers are random text")
            output.note(
                f"loaded {self.engine.name} on {self.engine.device} in {self.engine.load_s:.1f} s", quiet=self.quiet
            )
        return self.engine


def _report_failure(label: str, exc: QvlError, json_output: bool) -> None:
    """One error line on stderr, and with --json the input's object carrying the error."""
    from qvl import output

    output.error(str(exc))
    if json_output:
        output.json_line({"input": label, "error": str(exc)})


class _FatalModelError(QvlError):
    exit_code = 2


def _open_or_raise(source, opener):
    if isinstance(source, QvlError):
        raise source
    return opener(source)


def _progress(quiet: bool):
    """A transient Rich progress bar on stderr, or a null context yielding None when quiet."""
    import contextlib

    from qvl import output

    # Off a terminal a live bar has nothing to redraw and would only leave blank lines.
    if quiet or not output.console().is_terminal:
        return contextlib.nullcontext()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=output.console(),
        transient=True,
    )


def _psa_config(psa: bool, preset: str):
    """The PSA configuration the flags ask for, or None (a bad preset is a one-line usage error)."""
    if not psa:
        return None
    from qvl.psa import AttentionConfig

    try:
        return AttentionConfig.preset(preset)
    except QvlError as exc:
        _fail_now(exc)


def _fail_now(exc: QvlError):
    from qvl import output

    output.error(str(exc))
    raise typer.Exit(exc.exit_code)


def main() -> None:
    """Console-script entry point: Click's usage errors become one line too."""
    # Typer may vendor Click; its exception classes are found through a public one.
    click_exception = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
    from qvl import output

    try:
        code = app(standalone_mode=False)
    except click_exception as exc:
        ctx = getattr(exc, "ctx", None)
        hint = f" (see: {ctx.command_path} --help)" if ctx is not None else ""
        output.error(exc.format_message() + hint)
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        output.error("interrupted")
        sys.exit(130)
    sys.exit(code or 0)
