"""The `qvl` command's entry point: what a fresh process sets before it imports the command line.

Bytecode first (`paths.keep_bytecode`): where Python may not write it beside the sources, even
Typer's and Rich's modules would otherwise be compiled again on every call.
"""

from __future__ import annotations


def main() -> None:
    from qvl import paths

    paths.keep_bytecode()
    from qvl.cli import main as run_command_line

    run_command_line()
