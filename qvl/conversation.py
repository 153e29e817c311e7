"""A chat about one input's media, turn after turn, through a `qvl.runner.Runner`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from qvl.errors import QvlError

if TYPE_CHECKING:
    from qvl.runner import Media, Runner


class Conversation:
    """A chat about one input's media (`Runner.open_conversation`): `say(prompt)` answers with the
    earlier turns in view and returns the answer's record (as `run`'s, plus `turn` and
    `cache_bytes`); `reset()` forgets the turns.

    session: the engine's `Session` keeping the media's prefill (and the last turn's), or None
    where the engine cannot keep one (a model spread over several GPUs): each turn is then a request
    of its own with the whole conversation. turns: the records of the conversation so far.
    """

    def __init__(self, runner: Runner, engine, label: str, media: Media, media_s: float, session):
        self.runner, self.engine, self.label, self.media, self.session = runner, engine, label, media, session
        self.media_s = media_s  # reported with the first answer, as `run` does
        self.media_prefill = session.timings if session is not None else None  # likewise
        self.turns: list[dict[str, Any]] = []
        self._answer = runner.answerer(engine, media, session)

    def say(self, prompt: str) -> dict[str, Any]:
        """Answer `prompt` and add it to the conversation; an error record (the conversation left
        as it was) when it cannot be answered."""
        runner = self.runner
        runner.started(self.label)
        history = [(turn["prompt"], turn["text"]) for turn in self.turns]
        cache_bytes = self.session.cache_bytes if self.session is not None else None
        try:
            result = self._answer(prompt, history)
        except QvlError as exc:  # an answer's keys (the media's known), and no turn's number
            return runner.fail(self.label, exc, prompt, **self.media.record, turn=None, cache_bytes=cache_bytes)
        if self.media_prefill is not None:
            result.timings.add_media_prefill(self.media_prefill)
            self.media_prefill = None
        record = runner.answered(
            self.engine,
            self.label,
            prompt,
            self.media,
            result,
            self.media_s,
            turn=len(self.turns) + 1,
            cache_bytes=cache_bytes,
        )
        self.media_s = 0.0  # reported with the first answer
        self.turns.append(record)
        return record

    def reset(self) -> None:
        """Start again from the media alone."""
        self.turns.clear()
        if self.session is not None:
            self.session.reset()
