"""What a person sees of `qvl batch`: a progress bar over the rows and a summary line (stderr)."""

from __future__ import annotations

import time
from typing import Any

from qvl.batch import BatchView
from qvl.errors import Terminated, counted
from qvl.output import console, error, first_compile, named_error, note, tiny_model, warn

# Frame-plan notes said on stderr, each different one once; the rest are in the records' "notes".
NOTES_SAID = 3


class ProgressView(BatchView):
    """What a person sees of `qvl batch`: a progress bar with the rate and
    the time left, one error line per failed row, and the totals; all on stderr, since the records
    go to the results file. Use it as a context manager, so the bar is taken down however the job
    ends."""

    def __init__(self, *, quiet: bool):
        self.quiet = quiet
        self.bar = None
        self.task = None
        self.log = None  # where stderr is no terminal (a log file, a scheduler's): a line every tenth
        self.out, self.written = None, 0  # the results file, and the records this run wrote to it
        self.notes: set[str] = set()  # the frame plans' notes seen so far

    def loaded(self, info: dict[str, Any]) -> None:
        if info["is_tiny"]:
            tiny_model("its answers are random text")
        note(f"loaded {info['name']} on {info['device']} in {info['load_s']:.1f} s", quiet=self.quiet)
        first_compile(info.get("compiled_s", 0.0), quiet=self.quiet)

    def started(self, total: int, done: int, out: str) -> None:
        self.out = out
        if done:
            note(f"{counted(done, 'row')} already in {out}; {total} to run", quiet=self.quiet)
        if not total or self.quiet:
            return
        if not console().is_terminal:
            self.log = _TenthsLog(total)
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(
            TextColumn("rows"),
            BarColumn(),
            MofNCompleteColumn(),
            _rate_column(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console(),
            transient=True,
        )
        self.bar.start()
        self.task = self.bar.add_task("rows", total=total)

    def answered(self, record: dict[str, Any]) -> None:
        self.written += 1
        if record["error"] is not None:
            error(named_error(record["error"], record["input"], record["id"]))
        self._plan_notes(record)
        if self.bar is not None:
            self.bar.advance(self.task)
        elif self.log is not None:
            self.log.advance()

    def _plan_notes(self, record: dict[str, Any]) -> None:
        """What the row's frame plan changed from what was asked (`--frames 3` rounded up): each
        different note once, the first few of them, as `qvl video` says them."""
        for line in record.get("notes") or ():
            if line in self.notes:
                continue
            self.notes.add(line)
            if len(self.notes) <= NOTES_SAID:
                note(f"{record['input']}: {line}", quiet=self.quiet)
            elif len(self.notes) == NOTES_SAID + 1:
                note(
                    "more rows' frame plans changed what was asked: each record's \"notes\" says how", quiet=self.quiet
                )

    def finished(self, answered: int, failed: int, total: int) -> None:
        self.close()
        if failed:  # the reason for the exit code: said even when quiet
            warn(f"{answered} of {total} rows answered, {failed} failed; --retry-failed runs the failed ones again")
        else:
            note(f"{answered} of {total} rows answered, {failed} failed", quiet=self.quiet)

    def warned(self, message: str) -> None:
        warn(message)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None

    def __enter__(self) -> BatchView:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.close()
        if self.out is not None and exc_type is not None and issubclass(exc_type, (KeyboardInterrupt, Terminated)):
            note(
                f"stopped with {counted(self.written, 'row')} answered into {self.out} by this run; "
                "the same command goes on from there",
                quiet=self.quiet,
            )


class _TenthsLog:
    """Progress as plain lines for a log: one each time another tenth of the rows is done (the
    last tenth is the summary's)."""

    def __init__(self, total: int):
        self.total, self.done, self.started = total, 0, time.monotonic()

    def advance(self) -> None:
        before, self.done = self.done, self.done + 1
        if self.done >= self.total or self.done * 10 // self.total == before * 10 // self.total:
            return
        per_row = (time.monotonic() - self.started) / self.done
        left = round(per_row * (self.total - self.done))
        note(
            f"rows: {self.done:,} of {self.total:,} ({100 * self.done // self.total}%), "
            f"{60 / per_row:.1f} rows/min, about {left // 3600}:{left // 60 % 60:02d}:{left % 60:02d} left"
        )


def _rate_column():
    """A progress column: rows per minute, from Rich's running estimate."""
    from rich.progress import ProgressColumn
    from rich.text import Text

    class Rate(ProgressColumn):
        def render(self, task) -> Text:
            speed = task.finished_speed or task.speed
            return Text("-- rows/min" if speed is None else f"{speed * 60:.1f} rows/min", style="cyan")

    return Rate()
