"""The small set of errors qvl raises on bad input.

The CLI catches `QvlError` at the command boundary and prints its message as one line on stderr,
exiting with `exit_code`; anything else is a bug and keeps its traceback.
"""

import contextlib


class QvlError(Exception):
    """Base class: a problem the user can fix, reported without a traceback."""

    exit_code = 1


class InputError(QvlError):
    """A missing, unreadable, corrupt or unsupported input file or URL."""


class OptionError(QvlError):
    """An impossible combination or value of options."""

    exit_code = 2


class PlanError(OptionError):
    """Options one video cannot meet (more frames than it holds, a start past its end, more tokens
    than its budget): that input fails, as a corrupt file would, and the options stay usable."""

    exit_code = 1


class ModelError(QvlError):
    """A model that cannot be resolved or loaded (unknown preset, missing weights, no network)."""

    exit_code = 2


class CacheError(QvlError):
    """The frame cache cannot be used (an entry that cannot be written, for instance)."""


class CacheDirError(CacheError):
    """The frame cache's folder cannot be used at all: an option (--cache-dir, QVL_CACHE_DIR) to change."""

    exit_code = 2


class Terminated(BaseException):
    """SIGTERM (`timeout`, `kill`, a scheduler): raised where the main thread is, so that every
    `finally` runs (half-written cache entries and temporary files go) before the exit. Not an
    `Exception` nor a `KeyboardInterrupt`: nothing that handles those (a chat's Ctrl-C) keeps it."""


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """`n` and the noun in the number it takes, for messages: "1 entry", "5 entries" (plural:
    noun + "s")."""
    return f"{n:,} {noun if n == 1 else plural or noun + 's'}"


def first_line(exc: BaseException) -> str:
    """An exception's message cut to its first line (its type's name when it has none): what an
    error line quotes of a library's failure. A first line that only announces what follows
    ("Validation error for field 'x':") takes the next line along."""
    text = str(exc).strip() or type(exc).__name__
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].endswith(":"):
        return f"{lines[0]} {lines[1]}"
    return lines[0]


@contextlib.contextmanager
def memory_errors():
    """Running out of memory on one input (the machine's or the GPU's) as that input's error:
    one line, and the next input runs."""
    try:
        yield
    except MemoryError:
        raise InputError(f"out of memory for this input; {_SMALLER}") from None
    except RuntimeError as exc:  # torch's allocators, CUDA's OutOfMemoryError included
        text = str(exc)
        if "out of memory" not in text.lower() and "can't allocate memory" not in text:
            raise
        where = "on the GPU" if "CUDA" in text else "on this machine"
        raise InputError(f"out of memory {where} for this input; {_SMALLER}") from None


_SMALLER = "try fewer or smaller frames (--frames, --max-pixels), a lower --max-tokens or a smaller model"
