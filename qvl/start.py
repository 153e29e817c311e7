"""The `qvl` command's entry point: what a fresh process does before and after the command line.

Bytecode first (`paths.keep_bytecode`): where Python may not write it beside the sources, even
Typer's and Rich's modules would otherwise be compiled again on every call. Then the command, with
Click's usage errors and Ctrl-C as one line each, and an exit that does not make the user wait for
the interpreter to take apart what the model left.
"""

from __future__ import annotations

import errno
import gc
import os
import sys

from qvl.errors import Terminated


def main() -> None:
    from qvl import paths

    paths.keep_bytecode()
    sys.stdout = _Stdout(sys.stdout)
    import typer

    from qvl import cli, output

    # Typer may vendor Click; its exception classes are found through a public one.
    click_exception = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
    interrupted = _note_interrupts()
    try:
        code = cli.app(standalone_mode=False)
    except click_exception as exc:
        ctx = getattr(exc, "ctx", None)
        hint = f" (see: {ctx.command_path} --help)" if ctx is not None else ""
        if exc.format_message():  # none where the help was the answer (no command given)
            output.error(exc.format_message() + hint)
        code = exc.exit_code
    except (typer.Abort, KeyboardInterrupt):
        interrupted.append(True)
    except StdoutFailed as exc:
        code = _stdout_failed(exc)
    except Terminated:
        _end_line()
        output.error("terminated")
        code = 143
    if interrupted:
        _end_line()
        output.error("interrupted")
        code = 130
    # The interpreter's shutdown would walk every object torch and transformers made looking for
    # cycles (about a second after a model has loaded); frozen, they are left to the process's end.
    gc.freeze()
    if cli.ANSWERED and not interrupted:
        # describe, video and batch have written their answers and closed their files; tearing
        # down the modules, the threads' state and the CUDA context's objects would only delay the
        # prompt (and, in a batch, the next job on the GPU).
        try:
            sys.stdout.flush()
        except StdoutFailed as exc:
            code = _stdout_failed(exc)
        sys.stderr.flush()
        os._exit(code or 0)
    # Everywhere else files, threads and exit handlers (a Ray session's, a chat's history) are
    # closed, joined and run as always.
    sys.exit(code or 0)


def _end_line() -> None:
    """Close the line of an answer cut short (stdout may be the plain stream again after a failure)."""
    end_line = getattr(sys.stdout, "end_line", None)
    if end_line is not None:
        end_line()


class StdoutFailed(Exception):
    """Standard output took no more (a full disk, a closed pipe): `OSError` `error` of a write."""

    def __init__(self, error: OSError):
        super().__init__(error.strerror or str(error))
        self.errno = error.errno


class _Stdout:
    """sys.stdout, whose write and flush failures are told apart from any other file's: the
    answers, JSON lines, tables and help all go through it."""

    def __init__(self, stream):
        self._stream = stream  # None where the process started with its standard output closed
        self.mid_line = False  # an answer cut short leaves its line open: `end_line` closes it

    def write(self, text):
        if self._stream is None:
            raise StdoutFailed(OSError(errno.EBADF, "it is closed"))
        try:
            written = self._stream.write(text)
        except OSError as exc:
            raise StdoutFailed(exc) from None
        if text:
            self.mid_line = not text.endswith("\n")
        return written

    def end_line(self) -> None:
        """After an interruption: the answer being streamed ends its line, so that the shell's
        prompt (or a reader of lines) does not run on from it; a failing stdout is left as it is."""
        if self.mid_line:
            try:
                self.write("\n")
                self.flush()
            except StdoutFailed:
                pass

    def flush(self):
        if self._stream is None:
            return
        try:
            self._stream.flush()
        except OSError as exc:
            raise StdoutFailed(exc) from None

    def isatty(self) -> bool:
        return self._stream is not None and self._stream.isatty()

    def __getattr__(self, name):
        return getattr(self._stream, name)


def _stdout_failed(exc: StdoutFailed) -> int:
    """One line (none where the reader merely stopped reading, as `| head` does), and standard
    output pointed at the null device so that the interpreter's last flush cannot fail again."""
    if exc.errno != errno.EPIPE:
        from qvl import output

        output.error(f"cannot write to standard output: {exc}")
    stream = getattr(sys.stdout, "_stream", sys.stdout)
    if stream is not None:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, stream.fileno())
        os.close(null)
    sys.stdout = stream
    return 1


def _note_interrupts() -> list:
    """Ctrl-C still raises KeyboardInterrupt (so every `finally` and cleanup runs), and is also
    recorded in the returned list: Typer turns KeyboardInterrupt into a silent exit 130, which
    would otherwise leave the user no line saying why the run stopped. SIGTERM raises `Terminated`."""
    import signal

    seen: list = []

    def on_sigint(signum, frame):
        seen.append(True)
        raise KeyboardInterrupt

    def on_sigterm(signum, frame):
        raise Terminated

    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not when SIGINT is ignored
        signal.signal(signal.SIGINT, on_sigint)
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, on_sigterm)
    return seen
