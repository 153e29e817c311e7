"""`qvl bench`: the command over `qvl.bench`'s measurements, a table or JSON lines each."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from qvl import output
from qvl.bench import BenchConfig, run
from qvl.errors import QvlError
from qvl.options import (
    DeviceOpt,
    DtypeOpt,
    MaxTokensOpt,
    PsaOpt,
    PsaPresetOpt,
    QuietOpt,
    fail,
    json_opt,
    psa_config,
)

BenchModelOpt = Annotated[
    Optional[str],
    typer.Option(
        "--model", "-m", help="Preset, random:3b|7b|72b, Hub id or local folder. Default: random:7b on CUDA, else tiny."
    ),
]
BenchFramesOpt = Annotated[
    str, typer.Option("--frames", "-n", help="Frame counts to measure, comma-separated (even numbers).")
]
RepeatOpt = Annotated[int, typer.Option("--repeat", help="Warm runs of each timing after the first (median).")]
BenchJsonOpt = json_opt("one JSON object per frame count")


def bench(
    model: BenchModelOpt = None,
    frames: BenchFramesOpt = "64,256",
    max_tokens: MaxTokensOpt = 256,
    repeat: RepeatOpt = 2,
    psa: PsaOpt = False,
    psa_preset: PsaPresetOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    json_output: BenchJsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Time each stage of a video question, transformers' stock path against qvl's fast path.

    A synthetic 448x448 video is written once; for each --frames count: frame extraction, the
    processor, the vision tower alone, and whole answers (the first request apart from the median
    of --repeat warm ones): time to first token, decode rate, peak GPU memory, and whether both
    paths give the same greedy tokens. A table per frame count, or with --json one object each.
    """
    try:
        config = BenchConfig.parse(
            model=model,
            frames=frames,
            max_tokens=max_tokens,
            repeat=repeat,
            device=device,
            dtype=dtype,
            psa=psa_config(psa, psa_preset),
        )
        for record in run(config, note=lambda message: output.note(message, quiet=quiet), progress=not quiet):
            if json_output:
                output.json_line(record)
            else:
                output.bench_table(record)
    except QvlError as exc:
        fail(exc)
