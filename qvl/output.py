"""Where things are printed: data on stdout (answers, JSON lines), everything else on stderr."""

from __future__ import annotations

import json
import sys
from functools import lru_cache
from typing import Any


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


def json_line(record: dict[str, Any]) -> None:
    """One JSON object on its own stdout line, flushed so pipelines see it at once."""
    sys.stdout.write(json.dumps(record, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()
