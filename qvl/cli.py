"""The `qvl` command line: one function per command, each parse -> runner -> output.

Options are declared once in `qvl.options`, inputs become requests in `qvl.runner`, and everything
printed goes through `qvl.output`. Heavy imports (torch, transformers, the engine) happen inside the
commands, so `qvl --help` starts instantly. Errors the user can fix are `QvlError`s, printed as one
red line on stderr.
"""

from __future__ import annotations

import time
from typing import Annotated, Optional

import typer

from qvl import __version__, output
from qvl.bench_command import bench
from qvl.cache_commands import cache_app, preprocess
from qvl.chat import chat
from qvl.errors import OptionError, QvlError
from qvl.option_groups import with_answer_options, with_frame_cache_options, with_terminal_options, with_video_options
from qvl.options import (
    BatchOutOpt,
    BatchSizeOpt,
    DeviceOpt,
    DtypeOpt,
    GpusOpt,
    JsonOpt,
    MaxTokensOpt,
    ModelOpt,
    PrefetchOpt,
    ProfileMinTokensOpt,
    ProfilePsaConfigOpt,
    PromptOpt,
    PsaLogDirOpt,
    PsaOpt,
    PsaPresetOpt,
    QuestionsOpt,
    QuietOpt,
    RayOpt,
    RetryFailedOpt,
    WorkersOpt,
    fail,
    psa_config,
    run_settings,
)
from qvl.runner import Media, Runner, load_clip

app = typer.Typer(
    name="qvl",
    help="Run Qwen2.5-VL on images and long videos from one machine.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
    context_settings={"help_option_names": ["-h", "--help"]},
)

DEFAULT_IMAGE_PROMPT = "Describe this image."
DEFAULT_IMAGES_PROMPT = "Describe these images."
DEFAULT_VIDEO_PROMPT = "Describe this video."


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
@with_terminal_options
def describe(
    images: Annotated[list[str], typer.Argument(help="Image paths, globs, directories, http(s) URLs or data URIs.")],
    prompt: QuestionsOpt = None,
    together: Annotated[bool, typer.Option("--together", help="Put all images in one prompt, one answer.")] = False,
    psa_log_dir: PsaLogDirOpt = None,
    reply=None,
    settings=None,
    server_decides=None,
) -> None:
    """Describe images (or answer --prompt about them), one answer per image unless --together."""
    from qvl.media.images import expand_image_inputs, open_image

    sources = expand_image_inputs(images)
    questions = _questions(prompt, DEFAULT_IMAGES_PROMPT if together else DEFAULT_IMAGE_PROMPT)
    several = (not together and len(sources) > 1) or len(questions) > 1
    runner = _runner(settings, reply, several, psa_log_dir, server_decides)
    if reply.server is not None:
        open_image = runner.open_image
    if together:
        opened, started = [], time.perf_counter()
        for label, source in sources:
            try:
                opened.append(_open_or_raise(source, open_image))
            except QvlError as exc:
                runner.fail_questions(label, exc, questions)
        # One answer about all the images: with any of them missing it would answer another question.
        if opened and runner.exit_code == 0:
            labels = ", ".join(label for label, _ in sources)
            media_s = time.perf_counter() - started  # the images were opened here, before the run
            runner.run_questions(labels, questions, lambda: Media(images=opened, media_s=media_s))
    else:
        for label, source in sources:
            runner.run_questions(
                label, questions, lambda source=source: Media(images=[_open_or_raise(source, open_image)])
            )
    ANSWERED.append(True)
    raise typer.Exit(runner.exit_code)


def _runner(settings, reply, several: bool, psa_log_dir, local_only: dict):
    """The runner that answers, shown as `reply` says (`several`: more than one answer): here,
    logging PSA to --psa-log-dir; or with --server the server's model, where --psa-log-dir and the
    options only a local run honours ({flag: value}) are one error line where given."""
    from qvl.psa_log import psa_log_for

    try:  # checked first, whichever runner answers
        log = psa_log_for(psa_log_dir, settings.psa)
    except QvlError as exc:
        fail(exc)
    view = reply.view(several=several)
    if reply.server is None:
        return Runner(settings, view, psa_log=log)
    from qvl.serve.client import remote_runner

    local_only = {**local_only, "--psa-log-dir": psa_log_dir}
    return remote_runner(reply.server, settings, view, quiet=reply.quiet, local_only=local_only)


def _questions(prompts: list[str] | None, default: str) -> list[str]:
    """The --prompt values in order, or the command's default question; one the model may not be
    asked is one error line and exit 2 here, before any input is read or any model loads."""
    from qvl.questions import check_given_question

    try:
        for question in prompts or ():
            check_given_question(question, "--prompt")
    except QvlError as exc:
        fail(exc)
    return list(prompts) if prompts else [default]


def _open_or_raise(source, opener):
    if isinstance(source, QvlError):
        raise source
    return opener(source)


# --- video ------------------------------------------------------------------------------------


@app.command()
@with_video_options
@with_terminal_options
@with_frame_cache_options
def video(
    videos: Annotated[list[str], typer.Argument(help="Video paths or http(s) URLs.")],
    prompt: QuestionsOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the frame plan and stop; loads no model.")] = False,
    cache_settings=None,
    psa_log_dir: PsaLogDirOpt = None,
    reply=None,
    video_options=None,
    settings=None,
    server_decides=None,
) -> None:
    """Answer --prompt about each video, sampling frames at their real timestamps."""
    if dry_run:
        raise typer.Exit(_dry_run(videos, video_options, reply.json_output))
    questions = _questions(prompt, DEFAULT_VIDEO_PROMPT)
    several = len(videos) > 1 or len(questions) > 1
    runner = _runner(settings, reply, several, psa_log_dir, {**server_decides, **cache_settings.as_given()})
    if reply.server is None:
        single = len(questions) == 1

        def on_plan(plan) -> None:  # the model loads while the first video decodes (with its cache, for one question)
            runner.load_in_background(plan.tokens if single else None)

        load = _clip_loader(video_options, cache_settings.open(), reply.quiet, on_plan=on_plan)
    else:
        load = runner.video_loader(video_options)
    for source in videos:
        runner.run_questions(source, questions, lambda source=source: load(source))
    runner.finish_loading()
    ANSWERED.append(True)
    raise typer.Exit(runner.exit_code)


def _clip_loader(options, cache, quiet: bool, on_plan=None):
    """source -> `Media`: its frames sampled with a progress bar on stderr, then the plan's notes.
    on_plan: called with each video's `FramePlan` before its frames are read."""

    def load(source: str):
        with output.task_progress(f"frames of {source}", quiet) as advance:
            media = load_clip(source, options, cache, progress=advance, on_plan=on_plan)
        output.plan_notes(source, media.notes, quiet=quiet)
        return media

    return load


def _dry_run(videos, options, json_output: bool) -> int:
    from qvl.media.video import plan_source

    exit_code = 0
    for source in videos:
        try:
            plan = plan_source(source, options)
        except QvlError as exc:
            output.failure({"input": source, "error": str(exc)}, json_output, named=len(videos) > 1)
            exit_code = exc.exit_code
            continue
        if json_output:
            output.json_line({"input": source, **plan.to_dict(), "error": None})
        else:
            output.frame_plan(source, plan)
    return exit_code


app.command()(chat)  # qvl chat: a conversation about images or a video (qvl/chat.py)

# --- batch: qvl/batch/ -------------------------------------------------------------------------


@app.command()
@with_video_options
@with_answer_options
@with_frame_cache_options
def batch(
    inputs: Annotated[
        list[str], typer.Argument(help="Files, folders, globs, URLs or JSONL manifests (docs/batch.md).")
    ],
    out: BatchOutOpt,
    prompt: PromptOpt = None,
    retry_failed: RetryFailedOpt = False,
    gpus: GpusOpt = None,
    workers: WorkersOpt = None,
    prefetch: PrefetchOpt = None,
    batch_size: BatchSizeOpt = None,
    ray: RayOpt = None,
    cache_settings=None,
    quiet: QuietOpt = False,
    video_options=None,
    settings=None,
    server_decides=None,
) -> None:
    """Answer --prompt about many images and videos, one JSON line per input in --out; run it again to resume."""
    from qvl import batch as job
    from qvl.batch.inputs import expand
    from qvl.batch_view import ProgressView

    prompts = {"image": DEFAULT_IMAGE_PROMPT, "video": DEFAULT_VIDEO_PROMPT}
    try:
        rows = expand(inputs, video_options, prompts=prompts, prompt=prompt, out=out)
        options = job.BatchOptions(out, retry_failed, gpus, workers, prefetch, ray, cache_settings, batch_size)
        with ProgressView(quiet=quiet) as view:
            code = job.run(rows, settings, options, view)
    except QvlError as exc:
        fail(exc)
    if ray is None:  # the results file is closed and the workers joined; a Ray session has exit handlers
        ANSWERED.append(True)
    raise typer.Exit(code)


# --- psa-profile ------------------------------------------------------------------------------


@app.command("psa-profile")
@with_video_options
@with_frame_cache_options
def psa_profile(
    source: Annotated[str, typer.Argument(metavar="IMAGE|VIDEO", help="Image or video path or http(s) URL.")],
    prompt: PromptOpt = None,
    cache_settings=None,
    psa_preset: PsaPresetOpt = None,
    psa_config_file: ProfilePsaConfigOpt = None,
    min_tokens: ProfileMinTokensOpt = None,
    repeat: Annotated[int, typer.Option("--repeat", help="Timed prefills of each kind (median).")] = 3,
    tokens: Annotated[
        int, typer.Option("--tokens", "--max-tokens", help="Greedy tokens generated each way, to compare.")
    ] = 16,
    out: Annotated[
        Optional[str], typer.Option("--out", help="Write profile.json and PNG pictures (with matplotlib) here.")
    ] = None,
    layers: Annotated[
        str, typer.Option("--layers", help="Layers whose level masks --out draws: indices or first, middle, last.")
    ] = "first,middle,last",
    heads: Annotated[str, typer.Option("--heads", help="Query heads whose level masks --out draws.")] = "0",
    model: ModelOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    json_output: JsonOpt = False,
    quiet: QuietOpt = False,
    video_options=None,
) -> None:
    """Prefill one image or video with PSA and with SDPA, and compare them.

    Per layer: PSA's density, level mix, attention time and error against SDPA on the same layer
    input. In total: prefill times, time to first token and where the greedy answers part."""
    from qvl.psa_plots import out_folder
    from qvl.psa_profile import ProfileOptions, profile_media

    if min_tokens is None and psa_config_file is None:
        min_tokens = 0  # a profile of PSA runs PSA, whatever the prompt's length
    attention = psa_config(True, psa_preset, psa_config_file, min_tokens=min_tokens)
    settings = run_settings(model, device, dtype, attention)
    psa_preset = attention.preset_name  # the preset, or the config file's name
    _questions([prompt] if prompt else None, "")
    try:
        options = ProfileOptions.parse(repeat=repeat, tokens=tokens, layers=layers, heads=heads)
        out_dir = out_folder(out)
        options.check_model(model)
    except QvlError as exc:
        fail(exc)
    try:
        from qvl.media.images import is_image_source, open_image

        if is_image_source(source):
            media, default_prompt = Media(images=[open_image(source)]), DEFAULT_IMAGE_PROMPT
        else:
            load = _clip_loader(video_options, cache_settings.open(), quiet)
            media, default_prompt = load(source), DEFAULT_VIDEO_PROMPT
        engine, report, masks = profile_media(
            settings, prompt or default_prompt, media, options, on_loaded=output.tiny_timings
        )
    except QvlError as exc:
        fail(exc)
    report = {"input": source, "model": engine.name, "preset": psa_preset, **media.record, **report}
    if json_output:
        output.json_line(report)
    else:
        output.psa_profile(source, psa_preset, report)
    if out_dir is not None:
        from qvl.psa_plots import PLOTS_HINT, write_profile

        try:
            written, drawn = write_profile(out_dir, report, masks)
        except QvlError as exc:
            fail(exc)
        output.note(f"wrote {len(written)} files to {out_dir}: {', '.join(p.name for p in written)}", quiet=quiet)
        if not drawn:
            output.warn(PLOTS_HINT)


app.command()(bench)  # qvl bench: qvl/bench_command.py

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
        fail(exc)
    typer.echo(str(path))


# --- seed-compatible entry point ----------------------------------------------------------------


@app.command("infer", hidden=True)
def infer(
    input: Annotated[str, typer.Option("--input", help="Image or video path or URL.")],
    type: Annotated[
        Optional[str],
        typer.Option("--type", help="image or video (default: image for an image file's extension, else video)."),
    ] = None,
    prompt: PromptOpt = None,
    model: ModelOpt = None,
    max_tokens: MaxTokensOpt = 512,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    preprocess_frames: Annotated[
        Optional[int], typer.Option("--preprocess-frames", help="Number of frames to sample from a video (even).")
    ] = None,
    psa: PsaOpt = False,
    psa_log_dir: PsaLogDirOpt = None,
) -> None:
    """The published example's flags (`--type image|video --input X`), mapped onto describe/video."""
    if type is None:
        from qvl.batch.inputs import kind_of  # as `qvl batch` tells its rows apart

        type = kind_of(input)
    if type not in ("image", "video"):
        fail(OptionError(f"--type must be image or video, not {type!r}"))
    common = dict(
        prompt=[prompt] if prompt else None, model=model, max_tokens=max_tokens, device=device, dtype=dtype, psa=psa
    )
    if type == "image":
        describe([input], **common, psa_log_dir=psa_log_dir)
    video([input], frames=preprocess_frames, **common, psa_log_dir=psa_log_dir)


# --- preprocess and cache: qvl/cache_commands.py ------------------------------------------------

app.command()(preprocess)
app.add_typer(cache_app, name="cache")

from qvl.serve.command import serve  # noqa: E402 (its own module: the server is a room of its own)

app.command()(serve)


# Set by the answer commands (describe, video, a batch off Ray) once every answer is out and their
# files are closed: `qvl.start` then ends the process without the interpreter's teardown.
ANSWERED: list = []
