"""Everything a person or a pipe sees: data on stdout (answers, JSON lines, plans, tables), the rest
(progress, notes, warnings, errors) on stderr."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from functools import lru_cache
from typing import Any, Callable, Iterator

from qvl.errors import counted


@lru_cache(maxsize=1)
def console():
    """The Rich console for progress, notes and errors: always stderr."""
    from rich.console import Console

    return Console(stderr=True, highlight=False)


def error(message: str) -> None:
    """One red line on stderr. Messages are plain text, never Rich markup."""
    from rich.text import Text

    console().print(Text("qvl: error: ", style="bold red") + Text(str(message), style="red"), soft_wrap=True)


def warn(message: str) -> None:
    from rich.text import Text

    console().print(Text("qvl: ", style="yellow") + Text(message, style="yellow"), soft_wrap=True)


def note(message: str, *, quiet: bool = False) -> None:
    if not quiet:
        from rich.text import Text

        console().print(Text(message, style="dim"), soft_wrap=True)


def first_compile(seconds: float, *, quiet: bool = False) -> None:
    """Say that this load compiled the GPU kernels, which later runs on this machine reuse."""
    if seconds:
        note(
            f"compiled qvl's GPU kernels for this machine in {seconds:.1f} s, once: later runs reuse them", quiet=quiet
        )


def plan_notes(source: str, notes, *, quiet: bool = False) -> None:
    """What a video's frame plan changed from what was asked, one stderr line each (never stdout,
    which carries only answers)."""
    for line in notes:
        note(f"{source}: {line}", quiet=quiet)


def json_line(record: dict[str, Any]) -> None:
    """One JSON object on its own stdout line, flushed so pipelines see it at once. Text that
    came in as bytes that are not UTF-8 (a file's name, a question, as the shell passed them)
    holds U+FFFD where those bytes were, so the line is always valid UTF-8 JSON."""
    line = json.dumps(record, ensure_ascii=False)
    try:
        line = line.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:  # a lone surrogate from elsewhere (a JSON "\\ud800")
        line = line.encode("utf-8", "replace").decode("utf-8")
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def tiny_model(consequence: str) -> None:
    warn(f"using the built-in tiny model: random weights, so {consequence}")


def tiny_timings(engine) -> None:
    """Once a model has loaded for timing: a warning if it is the tiny one."""
    if engine.is_tiny:
        tiny_model("its timings say little about real models")


def progress(quiet: bool):
    """A transient Rich progress bar on stderr, or a null context yielding None when quiet."""
    import contextlib

    # Off a terminal a live bar has nothing to redraw and would only leave blank lines.
    if quiet or not console().is_terminal:
        return contextlib.nullcontext()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console(),
        transient=True,
    )


@contextmanager
def task_progress(description: str, quiet: bool) -> Iterator[Callable[[int, int], None]]:
    """One progress bar for one job; yields `advance(done, total)`, which moves the bar (where there
    is one)."""
    with progress(quiet) as bar:
        task = bar.add_task(description, total=None) if bar else None

        def advance(done: int, total: int) -> None:
            if bar is not None:
                bar.update(task, completed=done, total=total)

        yield advance


class RunView:
    """What a person or a pipe sees of a `qvl.runner.Runner`: answers streamed as text, or JSON lines.

    several: more than one input, so each streamed answer gets a `==> input <==` header.
    stats: after each answer, its stage timings on stderr (asked for, so shown even when quiet).
    """

    def __init__(self, *, json_output: bool, quiet: bool, several: bool = False, stats: bool = False):
        self.json_output, self.quiet, self.several, self.stats = json_output, quiet, several, stats
        # The engine streams its answer here as tokens arrive; with --json only the record is printed.
        self.on_text = None if json_output else self._stream
        self._heading: str | None = None  # the next answer's separator and header, written with its text
        self._answers = 0  # answers written to stdout so far

    def _stream(self, piece: str) -> None:
        self._open_answer()
        write(piece)

    def _open_answer(self) -> None:
        """The separator and header of the answer now streaming, once: a question that fails
        before its first token leaves no header without an answer on stdout."""
        if self._heading is not None:
            write(self._heading)
            self._heading = None
            self._answers += 1

    def load_progress(self, background: bool) -> bool:
        # A load beside the frames' progress bar would draw its own bar into it.
        return not (self.quiet or background)

    def loaded(self, engine) -> None:
        if engine.is_tiny:
            tiny_model("its answers are random text")
        server = getattr(engine, "server", None)  # a qvl serve answering for the command line
        where = f"answering with {engine.name} on {engine.device} at {server}" if server else None
        note(where or f"loaded {engine.name} on {engine.device} in {engine.load_s:.1f} s", quiet=self.quiet)
        first_compile(getattr(engine, "compiled_s", 0.0), quiet=self.quiet)

    def started(self, label: str, index: int) -> None:
        """The answer to input number `index` (from 1) is about to stream."""
        if self.json_output:
            return
        separator = "\n" if self._answers else ""
        self._heading = separator + (f"==> {label} <==\n" if self.several else "")

    def answered(self, record: dict[str, Any], psa) -> None:
        """One input's record; `psa` is the attention config the run asked for, or None."""
        if self.json_output:
            json_line(record)
            if self.stats:
                stage_timings(record["input"], record["timings"])
            return
        self._open_answer()  # an empty answer still gets its header
        write("\n")
        if self.stats:
            stage_timings(record["input"], record["timings"])
        if record.get("psa") is not None:
            stats = record["psa"]
            note(
                f"psa: {stats['density']:.0%} of dense attention cost over {stats['layers']} layers"
                f" ({stats['tokens']:,} tokens)",
                quiet=self.quiet,
            )
            if stats.get("compiled"):
                note(
                    f"psa: this first PSA prompt on this GPU compiled and tuned its kernels (prefill "
                    f"{record['timings']['prefill_s']:.1f} s), once: later runs reuse them",
                    quiet=self.quiet,
                )
        elif psa is not None:  # asked for, but this prompt is too short for PSA to pay
            note(
                f"psa: not used for this prompt ({record['tokens']['prompt']:,} tokens; PSA runs from "
                f"{psa.min_tokens:,}): SDPA ran instead",
                quiet=self.quiet,
            )

    def failed(self, record: dict[str, Any]) -> None:
        self._heading = None
        failure(record, self.json_output, named=self.several)

    def failed_again(self, record: dict[str, Any]) -> None:
        """Another question's record of the input that just failed: its error line is out already."""
        self._heading = None
        if self.json_output:
            json_line(record)

    def warned(self, message: str) -> None:
        warn(message)


def stage_timings(label: str, timings: dict[str, float]) -> None:
    """One request's stages as one stderr line (`timings` is `Timings.to_dict()`).

    Vision is measured where qvl runs the tower (the fast path, a session's media prefill), and
    is part of the time to the first token, as warm-up (cache allocation, graph capture) is part
    of decode; total is the request without the model's load.
    """
    from rich.text import Text

    t = timings
    total = t["media_s"] + t["preprocess_s"] + t["prefill_s"] + t["decode_s"]
    vision = f"{t['vision_s']:.3f} s" if t["vision_s"] > 0 else "n/a"
    rate = f"{t['tokens_per_s']:.1f} tokens/s" if t["tokens_per_s"] > 0 else "n/a"
    parts = [
        f"media {t['media_s']:.3f} s",
        f"processor {t['preprocess_s']:.3f} s",
        f"vision {vision}",
        f"prefill/TTFT {t['prefill_s']:.3f} s",
        f"decode {rate}",
        f"warmup {t['warmup_s']:.3f} s",
        f"total {total:.3f} s",
    ]
    console().print(Text(f"stats {label}: " + ", ".join(parts), style="cyan"), soft_wrap=True)


def failure(record: dict[str, Any], json_output: bool, *, named: bool = True) -> None:
    """One error line on stderr, and with --json the input's object carrying the error. named: the
    line names the input (`named_error`), where there are several."""
    error(named_error(record["error"], record["input"]) if named else record["error"])
    if json_output:
        json_line(record)


def named_error(message: str, source: str, row_id: Any = None) -> str:
    """An input's error message led by the input it is about (and a batch row's id, where the id is
    not the input), unless it names it first already: with many inputs, an error line about an
    option that a video cannot meet ("--frames 40 asks for more frames than ...") must say which."""
    name = str(source) if row_id is None or str(row_id) == str(source) else f"{source} (id {row_id})"
    return message if message.startswith(f"{name}:") else f"{name}: {message.removeprefix(f'{source}: ')}"


def frame_plan(source: str, plan) -> None:
    """A video's frame plan as a table; it is the data `--dry-run` asked for, so it goes to stdout."""
    from rich.console import Console
    from rich.table import Table

    table = Table(show_header=False)
    table.add_row("frames", str(plan.frames))
    table.add_row("frame size", f"{plan.width} x {plan.height}")
    table.add_row("span", f"{plan.timestamps[0]:.3f} s .. {plan.timestamps[-1]:.3f} s of {plan.source_duration:.3f} s")
    table.add_row("sampled fps", f"{plan.sampled_fps:.4g}")
    table.add_row("LLM tokens", f"{plan.tokens:,}")
    for line in plan.notes:
        table.add_row("note", line)
    out = Console(highlight=False)
    out.print(source, soft_wrap=True, markup=False)  # whole, to copy: a table's title wraps at its width
    out.print(table)


def psa_profile(source: str, preset: str, report: dict) -> None:
    """`qvl psa-profile`'s report, the data the command was asked for (stdout): a table of layers
    (density, level shares, attention time both ways, error against SDPA), then the totals."""
    from rich.console import Console
    from rich.table import Table

    psa = report["psa"]
    table = Table()
    for column in ("layer", "density", "1x", "2x", "4x", "8x", "skip", "SDPA ms", "PSA ms", "error"):
        table.add_column(column, justify="right")
    for row in report["per_layer"]:
        ms = row["attention_ms"]
        if row["density"] is None:
            table.add_row(str(row["layer"]), "-", *("" for _ in range(5)), f"{ms['sdpa']:.2f}", "-", "-")
            continue
        shares = row["level_fraction"]
        table.add_row(
            str(row["layer"]),
            f"{row['density']:.1%}",
            *(f"{shares[k]:.0%}" for k in ("1", "2", "4", "8", "0")),
            f"{ms['sdpa']:.2f}",
            f"{ms['psa']:.2f}",
            f"{row['rel_error']:.1e}",
        )
    out = Console(highlight=False)
    # Title and caption go on lines of their own: Rich wraps a table's title and caption to the
    # table's width, which put the end of a long one (a long path, the caption at 80 columns) on a
    # stray line. markup=False: a path may hold brackets.
    out.print(f"{source}: {report['tokens']:,} tokens, PSA preset {preset}", soft_wrap=True, markup=False)
    out.print(table)
    out.print("error: relative RMSE of PSA's attention output against SDPA on the same layer input", soft_wrap=True)
    prefill, ttft, generated = report["prefill_ms"], report["ttft_ms"], report["generated"]
    count = max(len(generated["psa"]), len(generated["sdpa"]))
    where = generated["first_difference"]
    tokens = f"the same {count} tokens" if where is None else f"tokens differ from index {where}"
    if psa is None:
        out.print(
            f"PSA did not run: the prompt ({report['tokens']:,} tokens) is shorter than --min-tokens "
            f"({report['min_tokens']:,}); prefill {prefill['sdpa']:.1f} ms",
            soft_wrap=True,
        )
        return
    fidelity = report["fidelity"]
    out.print(
        f"prefill: PSA {prefill['psa']:.1f} ms, SDPA {prefill['sdpa']:.1f} ms ({report['speedup']:.2f}x); "
        f"TTFT: PSA {ttft['psa']:.1f} ms, SDPA {ttft['sdpa']:.1f} ms; density {psa['density']:.1%} "
        f"(sparsity {psa['sparsity']:.1%}); rel. error max {fidelity['max_rel_error']:.2e}; "
        f"greedy answers: {tokens}",
        soft_wrap=True,
    )


# (label, key, whether more is better, format) of each row of `qvl bench`'s table: stages both paths share,
# then those measured on each.
BENCH_SHARED = (("frame extraction s", "extract_s"), ("processor s", "processor_s"))
BENCH_PATHS = (
    ("vision tower s", "vision_s", False, ".3f"),
    ("time to first token s", "ttft_s", False, ".3f"),
    ("  the same from decoded frames s", "frames_ttft_s", False, ".3f"),
    ("decode tokens/s", "tokens_per_s", True, ".1f"),
    ("whole answer s", "answer_s", False, ".3f"),
    ("first answer: TTFT s", "cold_ttft_s", False, ".3f"),
    ("first answer: whole s", "cold_answer_s", False, ".3f"),
    ("peak GPU memory GB", "peak_gpu_gb", None, ".2f"),
)


def bench_table(record: dict) -> None:
    """One frame count of `qvl bench`: stage x stock / qvl / speed-up. It is the data the command was
    asked for, so it goes to stdout."""
    from rich.console import Console
    from rich.table import Table

    width, height = record["frame_size"]
    title = (
        f"{record['frames']} frames ({width}x{height}, {record['prompt_tokens']:,} prompt tokens): "
        f"{record['model']} on {record['card']}, {record['dtype']}"
    )
    greedy = record["greedy"]
    caption = (
        f"warm: median of {record['repeat']}; greedy tokens: the first {greedy['same_leading_tokens']} the same "
        f"(stock {greedy['stock_tokens']}, qvl {greedy['qvl_tokens']}); "
        f"torch {record['torch']}, transformers {record['transformers']}"
    )
    if "vision_qvl_vs_fp32" in record:
        caption += f"; vision tower vs fp32: stock {record['vision_stock_vs_fp32']:.2e}, qvl {record['vision_qvl_vs_fp32']:.2e}"
    table = Table(title=title, caption=caption, title_justify="left", caption_justify="left")
    table.add_column("stage")
    for column in ("stock", "qvl", "speed-up"):
        table.add_column(column, justify="right")
    for label, key in BENCH_SHARED:
        table.add_row(label, f"{record[key]:.3f}", f"{record[key]:.3f}", "shared")
    stock, qvl = record["stock"], record["qvl"]
    for label, key, more_is_better, spec in BENCH_PATHS:
        a, b = stock[key], qvl[key]
        if a is None or b is None:
            table.add_row(label, "n/a", "n/a", "")
            continue
        ratio = "" if more_is_better is None or not (a and b) else f"{(b / a if more_is_better else a / b):.2f}x"
        table.add_row(label, format(a, spec), format(b, spec), ratio)
    Console(highlight=False).print(table)


def preprocessed(result) -> None:
    """One line per video `qvl preprocess` cached (or found cached)."""
    write(f"{result.status:<6}  {result.frames:>4} frames  {result.seconds:7.2f} s  {result.path}\n")


def cache_entries(entries, json_output: bool) -> None:
    """`qvl cache list`: one JSON line per entry, or a table oldest first."""
    if json_output:
        for e in entries:
            json_line(
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
    import time

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
            age(now - e.created),
            e.source,
        )
    Console(highlight=False).print(table)


def cache_size(root, entries: int, total: int, stale: int, json_output: bool) -> None:
    """`qvl cache size`: `total` bytes include `stale`, the leftovers of interrupted runs."""
    if json_output:
        json_line({"root": str(root), "entries": entries, "bytes": total, "stale_bytes": stale})
        return
    line = f"{total / 1e6:.1f} MB in {counted(entries, 'entry', 'entries')}"
    if stale > 0:
        line += f" ({stale / 1e6:.1f} MB left over by interrupted runs; qvl cache clear removes it)"
    write(f"{line}  {root}\n")


def cache_cleared(root, removed: int, freed: int, json_output: bool) -> None:
    if json_output:
        json_line({"root": str(root), "removed": removed, "bytes_freed": freed})
    else:
        write(f"removed {counted(removed, 'entry', 'entries')}, freed {freed / 1e6:.1f} MB  {root}\n")


def age(seconds: float) -> str:
    """A duration the way `ls` users read it: 45s, 12m, 3h, 2d."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"
