"""`qvl chat MEDIA...`: a conversation about images or a video, the media prefilled once.

Each question is answered with the earlier questions and answers in view (`Runner.open_conversation`
over `Engine.session`): the session keeps the media's keys and values, and the last turn's, so a
follow-up prefills only its new tokens. Questions come from the terminal (readline editing, slash
commands) or, when stdin is not a terminal, one per line from stdin. Answers go to stdout, streamed
or one JSON object each with --json; notes, /stats and /help go to stderr.

Ctrl-C during an answer at the terminal stops that answer (it is not kept in the conversation) and
returns to the prompt; Ctrl-D or /quit ends the chat.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from pathlib import Path
from typing import Annotated

import typer

from qvl import output
from qvl.errors import OptionError, QvlError, counted
from qvl.option_groups import with_frame_cache_options, with_terminal_options, with_video_options
from qvl.options import HeadroomOpt, fail, json_opt
from qvl.options import video_options as default_frame_options
from qvl.paths import write_json_atomically

# A chat keeps more than one question's room: some fifteen turns of 512-token answers.
CHAT_HEADROOM = 8192
PROMPT = "> "
ChatJsonOpt = json_opt("one JSON object per question (its answer or its error)")
COMMANDS = (
    ("/reset", "forget the conversation (the media stays prefilled)"),
    ("/save FILE", "write the conversation to FILE as JSON"),
    ("/stats", "the last answer's stage timings and the kept cache's size"),
    ("/help", "this list"),
    ("/quit", "leave (Ctrl-D does too)"),
)
# Commands that take nothing after them (and /quit's other name): words there are a typo.
BARE_COMMANDS = {usage for usage, _ in COMMANDS if " " not in usage} | {"/exit"}


@with_video_options
@with_terminal_options(json_opt=ChatJsonOpt)
@with_frame_cache_options
def chat(
    media: Annotated[
        list[str],
        typer.Argument(
            metavar="MEDIA", help="Images and/or one video: paths or http(s) URLs (images also data: URIs)."
        ),
    ],
    headroom: HeadroomOpt = CHAT_HEADROOM,
    cache_settings=None,
    reply=None,
    video_options=None,
    settings=None,
    server_decides=None,
) -> None:
    """Talk about images or a video: each question sees the earlier ones and their answers.

    The media is read and prefilled once. Questions come from the terminal (/help lists the
    commands) or one per line from stdin; answers stream to stdout, or with --json one object each.
    """
    from qvl.runner import Runner

    max_tokens = settings.max_tokens
    try:
        images, video = split_media(media)
        if max_tokens >= headroom:
            raise OptionError(f"--max-tokens {max_tokens} leaves no room for a question in --headroom {headroom}")
    except QvlError as exc:
        fail(exc)
    interactive, quiet = sys.stdin.isatty(), reply.quiet
    default = default_frame_options()
    if video is None and dataclasses.replace(video_options, max_download_mb=default.max_download_mb) != default:
        output.warn("the frame options apply to a video, and these media are images: they are not used")
    if not interactive and _stdin_is_empty():
        _check_files(media)  # nothing to ask is no reason to pass over a mistyped path
        output.note("no questions on stdin: nothing to answer", quiet=quiet)
        raise typer.Exit(0)
    cache = cache_settings.open() if video else None
    view = reply.view(ChatView, interactive=interactive)
    runner = Runner(settings, view)
    load = media_loader(images, video, video_options, cache, quiet, on_plan=lambda plan: runner.load_in_background())
    if reply.server is not None:  # the server keeps the media prefilled, with its own headroom
        from qvl.serve.client import remote_runner

        local = {**server_decides, "--headroom": headroom != CHAT_HEADROOM, **cache_settings.as_given()}
        runner = remote_runner(reply.server, settings, view, quiet=quiet, local_only=local)
        load = runner.media_loader(images, video, video_options)
    label = ", ".join(media)
    conversation = runner.open_conversation(label, load, headroom=headroom)
    if conversation is None:
        runner.finish_loading()
        raise typer.Exit(runner.exit_code)
    code = Chat(conversation, interactive=interactive, quiet=quiet).run()
    # At a terminal each failure was seen as it happened, and Ctrl-D is a clean end; a script
    # feeding stdin learns from the exit code that something failed.
    raise typer.Exit(0 if interactive else runner.exit_code or code)


def _check_files(media: list[str]) -> None:
    """One error line and exit 1, as a question would have had, for a local file that is not there."""
    from qvl.errors import InputError
    from qvl.media.fetch import is_url
    from qvl.media.images import is_data_uri

    for item in media:
        path = Path(item).expanduser()
        if not (is_url(item) or is_data_uri(item) or path.is_file()):
            fail(InputError(f"{item}: {'is a directory, not a file' if path.is_dir() else 'no such file'}"))


def _stdin_is_empty() -> bool:
    """Whether stdin (not a terminal) is at its end already (`< /dev/null`, an empty file, a
    finished pipe): the chat then loads no model and prefills nothing. A pipe whose writer has not
    written yet is not at its end: the model loads meanwhile."""
    import select

    try:
        readable, _, _ = select.select([sys.stdin], [], [], 0)
        return bool(readable) and sys.stdin.buffer.peek(1) == b""
    except (OSError, ValueError, AttributeError):  # no real file behind stdin (a test's, an IDE's)
        return False


def split_media(sources: list[str]) -> tuple[list[str], str | None]:
    """The images and the video (or None) among `sources`, told apart by suffix; an `OptionError`
    for more than one video, which one conversation cannot hold."""
    from qvl.media.images import is_image_source

    videos = [s for s in sources if not is_image_source(s)]
    if len(videos) > 1:
        raise OptionError(f"qvl chat takes one video, not {len(videos)} ({', '.join(videos)})")
    return [s for s in sources if is_image_source(s)], (videos[0] if videos else None)


def media_loader(images: list[str], video: str | None, options, cache, quiet: bool, on_plan=None):
    """() -> `Media`: the images opened, the video's frames sampled with a progress bar on stderr
    (`on_plan` called with its `FramePlan` before they are read)."""
    from qvl.runner import Media, load_clip

    def load() -> Media:
        from qvl.media.images import open_image

        opened = [open_image(source) for source in images]
        if video is None:
            return Media(images=opened)
        with output.task_progress(f"frames of {video}", quiet) as advance:
            clip = load_clip(video, options, cache, progress=advance, on_plan=on_plan)
        output.plan_notes(video, clip.notes, quiet=quiet)
        return dataclasses.replace(clip, images=opened)

    return load


class ChatView(output.RunView):
    """`RunView` for a conversation: at a terminal the prompt separates the answers."""

    def __init__(self, *, interactive: bool, **kwargs):
        super().__init__(**kwargs)
        self.interactive = interactive

    def started(self, label: str, index: int) -> None:
        if not self.interactive:
            super().started(label, index)


class Chat:
    """Questions and slash commands, line by line, about one `qvl.conversation.Conversation`.

    run() -> the first failed command's exit code (answers that failed are the runner's), else 0.
    """

    def __init__(self, conversation, *, interactive: bool, quiet: bool):
        self.conversation, self.interactive, self.quiet = conversation, interactive, quiet
        self.exit_code = 0
        self._answering = False  # a question is being answered (what Ctrl-C stops)

    def run(self) -> int:
        # A line of bytes that are not UTF-8 is that question's error, whatever the locale says
        # (a UTF-8 locale's strict decoding would stop the chat at it).
        if hasattr(sys.stdin, "reconfigure"):
            sys.stdin.reconfigure(errors="surrogateescape")
        if self.interactive:
            _enable_line_editing()
            self._greet()
        with _interrupts_handled_here(self.interactive):
            while True:
                try:
                    line = self._read()
                    if line is None or not self._take(line.strip()):
                        break
                except KeyboardInterrupt:
                    if not self.interactive:
                        raise
                    self._interrupted()
        return self.exit_code

    def _read(self) -> str | None:
        """The next line, or None at the end of input."""
        if not self.interactive:
            line = sys.stdin.readline()
            return line if line else None
        try:
            if sys.stdout.isatty():
                return input(PROMPT)
            sys.stderr.write(PROMPT)  # stdout is a file or a pipe: it gets answers only
            sys.stderr.flush()
            return input()
        except EOFError:
            sys.stderr.write("\n")
            return None

    def _take(self, line: str) -> bool:
        """Answer a question or run a command; False when the line ends the chat."""
        if line.startswith("/") and not line.startswith("//"):
            return self._command(line)
        if line:
            self._answering = True  # until the answer is whole; a Ctrl-C meanwhile is `_interrupted`'s
            self.conversation.say(line[1:] if line.startswith("//") else line)
            self._answering = False
        return True

    def _interrupted(self) -> None:
        """Ctrl-C at a terminal: an answer stops (and is not kept), a line being typed is dropped."""
        if not self._answering:
            sys.stderr.write("\n")  # a new prompt on a line of its own, as a shell does
            return
        self._answering = False
        if not self.conversation.runner.view.json_output:
            output.write("\n")
        output.warn("stopped; this answer is not kept in the conversation")

    def _command(self, line: str) -> bool:
        """Run one slash command; False when it ends the chat."""
        name, _, argument = line.partition(" ")
        argument = argument.strip()
        if argument and name in BARE_COMMANDS:  # a typo must not end the chat
            self._failed(OptionError(f"{name} takes nothing after it; a question that starts with / begins with //"))
            return True
        if name in ("/quit", "/exit"):
            return False
        if name == "/reset":
            self.conversation.reset()
            output.note("the conversation is forgotten; the media stays", quiet=self.quiet)
        elif name == "/save" and argument:
            self._save(Path(argument).expanduser())
        elif name == "/stats":
            self._stats()
        elif name == "/help":
            for usage, meaning in COMMANDS:
                output.console().print(f"{usage:<12} {meaning}", soft_wrap=True, markup=False)
            output.console().print("A line starting with // is a question that starts with /.", markup=False)
        else:
            what = "/save needs a FILE" if name == "/save" else f"unknown command {name}"
            self._failed(OptionError(f"{what}; /help lists the commands"))
        return True

    def _save(self, path: Path) -> None:
        conversation = self.conversation
        keep = ("turn", "prompt", "text", "tokens", "timings")
        transcript = {
            "input": conversation.label,
            "model": conversation.engine.name,
            **conversation.media.record,
            "turns": [{key: turn[key] for key in keep} for turn in conversation.turns],
        }
        try:
            write_json_atomically(path, transcript)
        except OSError as exc:
            self._failed(QvlError(f"cannot write {path}: {exc.strerror or exc}"))
            return
        count = len(conversation.turns)
        output.note(f"saved the conversation ({counted(count, 'turn')}) to {path}", quiet=self.quiet)

    def _stats(self) -> None:
        """The last answer's stages and the kept cache, on stderr (asked for: shown even when quiet)."""
        conversation = self.conversation
        if conversation.turns:
            last = conversation.turns[-1]
            output.stage_timings(f"turn {last['turn']}", last["timings"])
        else:
            output.console().print("stats: no answer yet in this conversation", markup=False)
        session = conversation.session
        server = getattr(conversation.engine, "server", None)
        if server is not None:
            line = f"the server at {server} keeps the media prefilled (its /health counts the hits)"
        elif session is None:
            line = "no kept cache: the model is spread over several devices, so each turn prefills everything"
        else:
            t = session.timings
            line = (
                f"kept cache: {session.kept_tokens:,} of {session.capacity:,} tokens ({session.prefix_length:,} "
                f"the media's), {session.cache_bytes / 2**20:.1f} MiB; the media's prefill: processor "
                f"{t.preprocess_s:.3f} s, vision {t.vision_s:.3f} s, prefill {t.prefill_s:.3f} s"
            )
        output.console().print(line, style="cyan", soft_wrap=True, markup=False)

    def _failed(self, exc: QvlError) -> None:
        output.error(str(exc))
        self.exit_code = self.exit_code or exc.exit_code

    def _greet(self) -> None:
        session = self.conversation.session
        kept = (
            f"{session.prefix_length:,} media tokens kept ({session.cache_bytes / 2**20:.1f} MiB); " if session else ""
        )
        output.note(f"{kept}ask away, /help for commands, Ctrl-D to leave", quiet=self.quiet)


def _enable_line_editing() -> None:
    """Arrow keys, history and Emacs bindings for `input()` where Python has readline."""
    with contextlib.suppress(ImportError):
        import readline  # noqa: F401  (importing it is what switches input() over)


@contextlib.contextmanager
def _interrupts_handled_here(interactive: bool):
    """At a terminal, Ctrl-C is a plain KeyboardInterrupt that the chat handles (the answer stops,
    the chat goes on), not the run-ending interrupt `qvl.start.main` records and reports."""
    import signal

    if not interactive or signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
