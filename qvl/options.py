"""Every command-line option, declared once, and the builders that turn parsed values into configs.

Commands take these `Annotated` aliases as parameter types, so a flag has one name, one help text
and one default wherever it appears. The options that commands take as groups are listed here too
(`VIDEO_OPTIONS`, ...), and come to a command through the decorators of `qvl.option_groups`.
Nothing heavy is imported here: `qvl --help` must stay instant.
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from qvl.errors import OptionError, QvlError

# --- running a model ----------------------------------------------------------------------------

ModelOpt = Annotated[
    Optional[str],
    typer.Option(
        "--model", "-m", help="Preset (3b, 7b, 72b, tiny), Hub id or local folder. Default: $QVL_MODEL, else 7b."
    ),
]
PromptOpt = Annotated[Optional[str], typer.Option("--prompt", "-p", help="What to ask about the input.")]
# describe and video take several questions about the same media, which is then prefilled once.
QuestionsOpt = Annotated[
    Optional[list[str]],
    typer.Option(
        "--prompt", "-p", help="What to ask about the input; repeat it to ask several questions (media read once)."
    ),
]
MaxTokensOpt = Annotated[int, typer.Option("--max-tokens", help="Most tokens to generate per answer.")]
HeadroomOpt = Annotated[
    int,
    typer.Option(
        "--headroom", min=1, help="Tokens of conversation (questions and answers) kept past the media in the KV cache."
    ),
]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto (cuda if available), cuda or cpu.")]
DtypeOpt = Annotated[
    str, typer.Option("--dtype", help="auto (bf16 on GPU, fp32 on CPU), bfloat16, float16 or float32.")
]
TemperatureOpt = Annotated[float, typer.Option("--temperature", help="Sampling temperature; 0 is greedy.")]
TopPOpt = Annotated[Optional[float], typer.Option("--top-p", help="Nucleus sampling, in (0, 1] (with --temperature).")]
SeedOpt = Annotated[Optional[int], typer.Option("--seed", help="Random seed for sampling.")]
PsaOpt = Annotated[
    bool, typer.Option("--psa", "--use-psa", help="Pyramid Sparse Attention in the language model's prefill.")
]
PsaPresetOpt = Annotated[
    Optional[str],
    typer.Option(
        "--psa-preset",
        help="PSA budget (implies --psa): default (published bands; the default), balanced (~35%), fast (~10%), dense.",
    ),
]


def _psa_config_opt(implies: str):
    """--psa-config, saying what giving it `implies` ("" where PSA runs anyway)."""
    return Annotated[
        Optional[str],
        typer.Option(
            "--psa-config",
            metavar="FILE",
            help=f"PSA settings from a .json or .toml file{implies}; its fields override --psa-preset's. See docs/psa.md.",
        ),
    ]


def _min_tokens_opt(default: str):
    """--min-tokens, with the command's `default` when no --psa-config names one."""
    return Annotated[
        Optional[int],
        typer.Option(
            "--min-tokens",
            help="PSA only for prompts of at least this many tokens; shorter ones keep SDPA "
            f"(default {default}, or --psa-config's).",
        ),
    ]


PsaConfigOpt = _psa_config_opt(" (implies --psa)")
PsaMinTokensOpt = _min_tokens_opt("16384")
# psa-profile runs PSA whatever the flags (it has no --psa) and on any prompt's length.
ProfilePsaConfigOpt = _psa_config_opt("")
ProfileMinTokensOpt = _min_tokens_opt("0")
PsaLogDirOpt = Annotated[
    Optional[str],
    typer.Option(
        "--psa-log-dir",
        metavar="DIR",
        help="Append one JSON line per layer per PSA prefill to DIR/psa-YYYY-MM-DD.jsonl (needs --psa, --psa-preset or --psa-config).",
    ),
]

# --- the commands that answer through a running qvl serve ------------------------------------------

ServerOpt = Annotated[
    Optional[str],
    typer.Option(
        "--server",
        envvar="QVL_SERVER",
        metavar="URL",
        help="Answer through a running `qvl serve` at URL instead of loading a model (its key from $QVL_API_KEY).",
    ),
]

# --- qvl batch -----------------------------------------------------------------------------

BatchOutOpt = Annotated[
    str,
    typer.Option(
        "--out", "-o", help="The results file: one JSON line per row, appended; rows already in it are skipped."
    ),
]
RetryFailedOpt = Annotated[
    bool, typer.Option("--retry-failed", help="Run again the rows whose record in --out is an error.")
]
GpusOpt = Annotated[
    Optional[int],
    typer.Option(
        "--gpus", help="Models to run, one per GPU, each in its own process (default 1; with --ray every GPU)."
    ),
]
WorkersOpt = Annotated[
    Optional[int],
    typer.Option(
        "--workers", help="CPU threads per model loading media and running the processor (default: cores, at most 4)."
    ),
]
PrefetchOpt = Annotated[
    Optional[int],
    typer.Option(
        "--prefetch",
        help="Rows held ready ahead of each model (default: twice --workers, or twice --batch-size where that is more).",
    ),
]
BatchSizeOpt = Annotated[
    Optional[int],
    typer.Option(
        "--batch-size",
        help="Answers decoded together, up to this many at a time (greedy, without PSA, not on Ray; default: 4 "
        "where those hold and the model is on a GPU, else 1); 1: one at a time, each answer as `qvl video` gives it.",
    ),
]
RayOpt = Annotated[
    Optional[str],
    typer.Option(
        "--ray",
        metavar="ADDRESS",
        help="Run on Ray: local (this machine), auto (the cluster `ray start` joined) or ray://HOST:PORT.",
    ),
]

# --- output ------------------------------------------------------------------------------------


def json_opt(what: str):
    """--json, for a command that then prints `what` on stdout."""
    return Annotated[bool, typer.Option("--json", help=f"Print {what} on stdout, nothing else.")]


JsonOpt = json_opt("one JSON object per input")
QuietOpt = Annotated[
    bool, typer.Option("--quiet", "-q", help="No progress or notes on stderr (warnings and errors still).")
]
StatsOpt = Annotated[
    bool,
    typer.Option(
        "--stats", help="After each answer, print its stage timings on stderr (media to decode), even with --quiet."
    ),
]

# describe's and video's --json (chat's is its own: one object per question).
AnswersJsonOpt = json_opt("one JSON object per input and question")

# (name, type, default) of the options of the commands that answer at the terminal (describe, video,
# chat), in `--help` order after their --json: how their answers are shown, and what gives them.
REPLY_OPTIONS = (
    ("quiet", QuietOpt, False),
    ("stats", StatsOpt, False),
    ("server", ServerOpt, None),
)

# --- the frame cache ---------------------------------------------------------------------------

CacheDirOpt = Annotated[
    Optional[str],
    typer.Option("--cache-dir", help="Frame cache folder (default: frames/ under $QVL_CACHE_DIR or the user cache)."),
]
NoCacheOpt = Annotated[bool, typer.Option("--no-cache", help="Do not read or fill the frame cache.")]
StrictHashOpt = Annotated[
    bool, typer.Option("--strict-hash", help="Key cache entries by a hash of every byte, not a 768 KiB sample.")
]

# (name, type, default) of the frame-cache options of the commands that read videos, in `--help` order.
FRAME_CACHE_OPTIONS = (
    ("no_cache", NoCacheOpt, False),
    ("cache_dir", CacheDirOpt, None),
    ("strict_hash", StrictHashOpt, False),
)


# --- sampling frames from a video ----------------------------------------------------------------

FramesOpt = Annotated[
    Optional[int], typer.Option("--frames", "--preprocess-frames", "-n", help="Number of frames to sample (even).")
]
FpsOpt = Annotated[Optional[float], typer.Option("--fps", help="Frames per second to sample (default 2).")]
StartOpt = Annotated[Optional[float], typer.Option("--start", help="Start of the clip, seconds.")]
EndOpt = Annotated[Optional[float], typer.Option("--end", help="End of the clip, seconds.")]
MinFramesOpt = Annotated[int, typer.Option("--min-frames", help="Fewest frames to sample.")]
MaxFramesOpt = Annotated[int, typer.Option("--max-frames", help="Most frames to sample.")]
MinPixelsOpt = Annotated[
    Optional[int], typer.Option("--min-pixels", help="Smallest frame, in pixels (default 128 tokens).")
]
MaxPixelsOpt = Annotated[Optional[int], typer.Option("--max-pixels", help="Pixel budget per frame.")]
TotalPixelsOpt = Annotated[Optional[int], typer.Option("--total-pixels", help="Pixel budget for the whole video.")]
SeekOpt = Annotated[
    str,
    typer.Option(
        "--seek",
        help="auto: a keyframe when one lies within half the frame spacing, else the exact frame; exact: always the exact frame.",
    ),
]
MaxDownloadOpt = Annotated[int, typer.Option("--max-download-mb", help="Size limit for video URLs.")]

# (name, type, default) of each frame-sampling option, in the order `--help` lists them.
VIDEO_OPTIONS = (
    ("frames", FramesOpt, None),
    ("fps", FpsOpt, None),
    ("start", StartOpt, None),
    ("end", EndOpt, None),
    ("min_frames", MinFramesOpt, 4),
    ("max_frames", MaxFramesOpt, 768),
    ("min_pixels", MinPixelsOpt, None),
    ("max_pixels", MaxPixelsOpt, None),
    ("total_pixels", TotalPixelsOpt, None),
    ("seek", SeekOpt, "auto"),
    ("max_download_mb", MaxDownloadOpt, 2048),
)


def video_options(
    frames: int | None = None,
    fps: float | None = None,
    start: float | None = None,
    end: float | None = None,
    min_frames: int = 4,
    max_frames: int = 768,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    total_pixels: int | None = None,
    seek: str = "auto",
    max_download_mb: float = 2048,
):
    """The parsed frame-sampling options as a `VideoOptions` (an impossible one raises `OptionError`)."""
    from qvl.media.video import VideoOptions

    return VideoOptions(
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


# The options of every command that answers questions (describe, video, chat, batch).
ANSWER_OPTIONS = (
    ("model", ModelOpt, None),
    ("max_tokens", MaxTokensOpt, 512),
    ("device", DeviceOpt, "auto"),
    ("dtype", DtypeOpt, "auto"),
    ("temperature", TemperatureOpt, 0.0),
    ("top_p", TopPOpt, None),
    ("seed", SeedOpt, None),
    ("psa", PsaOpt, False),
    ("psa_preset", PsaPresetOpt, None),
    ("psa_config_file", PsaConfigOpt, None),
    ("min_tokens", PsaMinTokensOpt, None),
)


def run_settings(model, device, dtype, psa, max_tokens=512, temperature=0.0, top_p=None, seed=None):
    """The parsed model and generation options as a `runner.Settings`; an impossible value is one
    error line and exit 2 here, before any media is read or any model loads."""
    from qvl.runner import Settings

    try:
        settings = Settings(model, device, dtype, psa, max_tokens, temperature, top_p, seed)
    except QvlError as exc:
        fail(exc)
    idle = [name for name, value in (("--top-p", top_p), ("--seed", seed)) if value is not None]
    if idle and not temperature:
        from qvl import output

        does = "has" if len(idle) == 1 else "have"
        output.warn(f"{' and '.join(idle)} {does} no effect without --temperature above 0: the answer is greedy")
    return settings


def psa_config(psa: bool, preset: str | None, config_file: str | None = None, **overrides):
    """The PSA configuration the flags ask for, or None; a bad value is one error line and exit 2.

    config_file: a .json or .toml file of `AttentionConfig.from_dict`'s fields; it implies PSA.
    preset: --psa-preset, the preset to start from (None: "default"); it implies PSA too (asking
    for a budget and getting dense attention would be a silent surprise); with a file that names
    its own `preset`, a different --psa-preset is an error rather than a silent choice of one.
    overrides: settings of this command's own flags (--min-tokens), applied last.
    """
    overrides = {name: value for name, value in overrides.items() if value is not None}
    if not psa and config_file is None and preset is None:
        if overrides:
            fail(
                OptionError(f"--{next(iter(overrides)).replace('_', '-')} needs --psa (or --psa-preset, --psa-config)")
            )
        return None
    from pathlib import Path

    from qvl.psa import AttentionConfig, read_config_file

    try:
        if overrides.get("min_tokens", 0) < 0:  # named as the flag it came from
            raise OptionError(f"--min-tokens must be a whole number >= 0, not {overrides['min_tokens']}")
        if config_file is None:
            return AttentionConfig.preset(preset or "default", **overrides)
        source = f"PSA config {config_file}"
        data = read_config_file(config_file, source)
        if preset is not None and data.get("preset", preset) != preset:
            raise OptionError(
                f"--psa-preset {preset} and {config_file}'s preset {data['preset']!r} disagree: keep one of them"
            )
        config = AttentionConfig.from_dict({"preset": preset or "default", **data, **overrides}, source=source)
        config.preset_name = Path(config_file).name  # what records and logs call this configuration
        return config
    except QvlError as exc:
        fail(exc)


def fail(exc: QvlError):
    """Stop the command: the error as one red line on stderr, and its exit code."""
    from qvl import output

    output.error(str(exc))
    raise typer.Exit(exc.exit_code)
