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
    typer.Option("--model", "-m", help="Preset (3b, 7b, 72b, tiny), Hub id or local folder. Default: $QVL_MODEL, else 7b."),
]
PromptOpt = Annotated[Optional[str], typer.Option("--prompt", "-p", help="What to ask about the input.")]
MaxTokensOpt = Annotated[int, typer.Option("--max-tokens", help="Most tokens to generate per answer.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto (cuda if available), cuda or cpu.")]
DtypeOpt = Annotated[str, typer.Option("--dtype", help="auto (bf16 on GPU, fp32 on CPU), bfloat16, float16 or float32.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object per input on stdout, nothing else.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress or notes on stderr (errors still).")]
TemperatureOpt = Annotated[float, typer.Option("--temperature", min=0.0, help="Sampling temperature; 0 is greedy.")]
TopPOpt = Annotated[Optional[float], typer.Option("--top-p", min=0.0, max=1.0, help="Nucleus sampling (with --temperature).")]
SeedOpt = Annotated[Optional[int], typer.Option("--seed", help="Random seed for sampling.")]
PsaOpt = Annotated[bool, typer.Option("--psa", "--use-psa", help="Pyramid Sparse Attention in the language model's prefill.")]
PsaPresetOpt = Annotated[
    str, typer.Option("--psa-preset", help="PSA budget: default (published bands), balanced (~35%), fast (~10%), dense.")
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

    session = _Session(model, device, dtype, max_tokens, temperature, top_p, seed, _psa_config(psa, psa_preset), json_output, quiet)
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
            session.run(", ".join(label for label, _ in sources), prompt or DEFAULT_IMAGES_PROMPT, lambda: {"images": opened})
    else:
        session.several = len(sources) > 1
        for label, source in sources:
            session.run(label, prompt or DEFAULT_IMAGE_PROMPT, lambda source=source: {"images": [_open_or_raise(source, open_image)]})
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
    min_pixels: Annotated[Optional[int], typer.Option("--min-pixels", help="Smallest frame, in pixels (default 128 tokens).")] = None,
    max_pixels: Annotated[Optional[int], typer.Option("--max-pixels", help="Pixel budget per frame.")] = None,
    total_pixels: Annotated[Optional[int], typer.Option("--total-pixels", help="Pixel budget for the whole video.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the frame plan and stop; loads no model.")] = False,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Do not read or fill the frame cache.")] = False,
    cache_dir: Annotated[Optional[str], typer.Option("--cache-dir", help="Frame cache folder (default: $QVL_CACHE_DIR or the user cache).")] = None,
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
            frames=frames, fps=fps, start=start, end=end, min_frames=min_frames, max_frames=max_frames,
            max_pixels=max_pixels, total_pixels=total_pixels, max_download_mb=max_download_mb,
            **({"min_pixels": min_pixels} if min_pixels is not None else {}),
        )
    except QvlError as exc:
        _fail_now(exc)
    if dry_run:
        raise typer.Exit(_dry_run(videos, options, json_output))
    cache = None if no_cache else _frame_cache(cache_dir)
    session = _Session(model, device, dtype, max_tokens, temperature, top_p, seed, psa_config, json_output, quiet)
    session.several = len(videos) > 1
    for source in videos:
        session.run(source, prompt or DEFAULT_VIDEO_PROMPT, lambda source=source: _load_clip(source, options, cache, quiet))
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
            output.error(str(exc))
            if json_output:
                output.json_line({"input": source, "error": str(exc)})
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


def _frame_cache(cache_dir):
    from pathlib import Path

    from qvl.media.cache import FrameCache

    return FrameCache(Path(cache_dir) if cache_dir else None)


# --- download ---------------------------------------------------------------------------------


@app.command()
def download(
    model: Annotated[str, typer.Argument(help="Preset (3b, 7b, 72b, tiny) or Hub id.")],
    revision: Annotated[Optional[str], typer.Option("--revision", help="Branch, tag or commit on the Hub.")] = None,
    local_dir: Annotated[Optional[str], typer.Option("--local-dir", help="Download into this folder instead of the HF cache.")] = None,
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
    video([input], prompt=prompt, frames=preprocess_frames, model=model, max_tokens=max_tokens, device=device, dtype=dtype, psa=psa)


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
        from qvl import output

        output.error(str(exc))
        if self.json_output:
            output.json_line({"input": label, "error": str(exc)})
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
                prompt=prompt, images=media.get("images", ()), video=media.get("video"),
                max_new_tokens=self.max_tokens, temperature=self.temperature, top_p=self.top_p, seed=self.seed,
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
                    f" ({result.psa['tokens']:,} tokens)", quiet=self.quiet,
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
            output.note(f"loaded {self.engine.name} on {self.engine.device} in {self.engine.load_s:.1f} s", quiet=self.quiet)
        return self.engine


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

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=output.console(), transient=True)


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
