"""What a question may hold: checked by the engine on every request, and by the commands on their
questions before any model loads, since the answer depends on the text alone. Nothing heavy is
imported here.
"""

from __future__ import annotations

from qvl.errors import InputError, OptionError, QvlError

# The chat template's marks around and inside an image's or a video's place: the media's tokens
# are counted from them, so a question may not write them itself.
MEDIA_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")
# How much of a refused question its error line quotes: enough to tell it from the others.
_QUOTED_CHARS = 60
# Room in a session's cache past the media: a question and its answer, or a conversation.
DEFAULT_HEADROOM = 4096
# The chat template's tokens around a question and before its answer, with some to spare.
_TEMPLATE_TOKENS = 64


def headroom_for(questions, max_new_tokens: int) -> int:
    """A session's room past the media for answering each of `questions` on its own: the longest
    one (a token per UTF-8 byte at most), the template's marks and the answer; DEFAULT_HEADROOM
    where that is more."""
    longest = max((len(q.encode("utf-8", "surrogateescape")) for q in questions), default=0)
    return max(DEFAULT_HEADROOM, longest + _TEMPLATE_TOKENS + max_new_tokens)


def check_question(question: str, name: str = "the question", error: type[QvlError] = InputError) -> None:
    """An `error` naming `question` as `name` (the flag or field it came from) when the model may
    not be asked it: it holds bytes that are not UTF-8 text (as a shell or a pipe passes them on),
    or one of the media's own marks."""
    try:
        question.encode("utf-8")
    except UnicodeEncodeError:
        raise error(f"{name} {_quoted(question)} holds bytes that are not UTF-8 text") from None
    placed = next((token for token in MEDIA_TOKENS if token in question), None)
    if placed is not None:
        raise error(f"{name} {_quoted(question)} holds {placed}, which only the media's place in the prompt may hold")


def check_given_question(question: str, name: str) -> None:
    """`check_question` for a question a person gave as an option, which may not be blank either
    (most likely a shell variable that expanded to nothing): an `OptionError` naming `name`."""
    if not question.strip():
        raise OptionError(f"{name} is empty: write a question, or leave {name} out to ask the default one")
    check_question(question, name, OptionError)


def _quoted(question: str) -> str:
    """The question as one line of plain characters (repr escapes newlines and stray bytes), cut short."""
    if len(question) > _QUOTED_CHARS:
        question = question[: _QUOTED_CHARS - 3] + "..."
    return repr(question)
