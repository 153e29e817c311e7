"""The decorators that give a command a group of options (listed in `qvl.options`) and hand the
group to it built.

`with_video_options`: the frame-sampling options of `video`, `preprocess`, `psa-profile`, `chat`
and `batch`, as a `VideoOptions`. `with_frame_cache_options`: the frame cache's, as
`CacheSettings`. `with_answer_options`: the model, sampling and PSA options of the commands that
answer questions, as a `runner.Settings`. `with_terminal_options`: those, and --json, --quiet,
--stats and --server as `ReplySettings`, for the commands that answer at the terminal. Nothing
heavy is imported here either.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass

from qvl.errors import QvlError
from qvl.options import (
    ANSWER_OPTIONS,
    FRAME_CACHE_OPTIONS,
    REPLY_OPTIONS,
    VIDEO_OPTIONS,
    AnswersJsonOpt,
    fail,
    psa_config,
    run_settings,
    video_options,
)


def _with_options(command, options, receives: tuple[str, ...], position, build):
    """`command` with `options` ((name, annotation, default) triples) added to the signature Typer
    reads, before the parameter index `position(own)` gives among its own parameters (those from
    there on become keyword-only). A call's values of the options are taken out and passed to
    `build`, whose dict of keywords (the `receives` parameters, hidden from Typer) reaches `command`."""
    signature = inspect.signature(command, eval_str=True)
    own = [p for p in signature.parameters.values() if p.name not in receives]
    added = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=d, annotation=t) for name, t, d in options]
    at = position(own)
    own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) if i >= at else p for i, p in enumerate(own)]

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        given = {name: kwargs.pop(name, default) for name, _, default in options}
        return command(*args, **build(given), **kwargs)

    wrapper.__signature__ = signature.replace(parameters=own[:at] + added + own[at:])
    wrapper.__annotations__ = {p.name: p.annotation for p in wrapper.__signature__.parameters.values()}
    return wrapper


def _in_place_of(command, name: str):
    """The `position` that puts a group where `command`'s parameter `name` stands: the one
    parameter taken out, so the others keep their index."""
    at = list(inspect.signature(command, eval_str=True).parameters).index(name)
    return lambda own: at


def with_video_options(command):
    """Give `command` the frame-sampling options; it receives them built, as `video_options=`.

    The options are added to the command's signature after its `prompt` (else after its
    arguments), which is where Typer finds them. Impossible values are one error line and exit 2
    before the command runs.
    """

    def after_prompt(own) -> int:
        names = [p.name for p in own]
        return (
            names.index("prompt") + 1 if "prompt" in names else sum(p.default is inspect.Parameter.empty for p in own)
        )

    def build(given) -> dict:
        try:
            return {"video_options": video_options(**given)}
        except QvlError as exc:
            fail(exc)

    return _with_options(command, VIDEO_OPTIONS, ("video_options",), after_prompt, build)


@dataclass(frozen=True)
class CacheSettings:
    """The frame cache videos are read through: --cache-dir, --strict-hash, --no-cache."""

    folder: str | None = None
    strict_hash: bool = False
    enabled: bool = True

    def open(self):
        """The `FrameCache`, or None when it is off."""
        from qvl.runner import frame_cache

        return frame_cache(self.folder, strict_hash=self.strict_hash, enabled=self.enabled)

    def as_given(self) -> dict:
        """{flag: value} of the three options, for `--server` to refuse those given."""
        return {"--cache-dir": self.folder, "--no-cache": not self.enabled, "--strict-hash": self.strict_hash}


def with_frame_cache_options(command):
    """Give `command` --no-cache, --cache-dir and --strict-hash where its `cache_settings`
    parameter stands; it receives them as that `CacheSettings`."""

    def build(given) -> dict:
        cache = CacheSettings(given["cache_dir"], given["strict_hash"], enabled=not given["no_cache"])
        return {"cache_settings": cache}

    in_place = _in_place_of(command, "cache_settings")
    return _with_options(command, FRAME_CACHE_OPTIONS, ("cache_settings",), in_place, build)


# Of the answer options, the ones a server decides for itself (`--server` refuses them when given).
_SERVER_DECIDES = {"psa_preset": "--psa-preset", "psa_config_file": "--psa-config", "min_tokens": "--min-tokens"}


def with_answer_options(command):
    """Give `command` the model, sampling and PSA options; it receives them checked and built, as
    `settings=` (a `runner.Settings`, the PSA configuration in `settings.psa`) and `server_decides=`
    (those of the PSA flags a server decides for itself, as given: {"--psa-preset": value, ...}).

    The options go before the command's `json_output` (else last). Impossible values are one error
    line and exit 2 before the command runs.
    """

    def before_json(own) -> int:
        names = [p.name for p in own]
        return names.index("json_output") if "json_output" in names else len(own)

    def build(given) -> dict:
        attention = psa_config(
            given["psa"], given["psa_preset"], given["psa_config_file"], min_tokens=given["min_tokens"]
        )
        settings = run_settings(
            given["model"],
            given["device"],
            given["dtype"],
            attention,
            given["max_tokens"],
            given["temperature"],
            given["top_p"],
            given["seed"],
        )
        return {"settings": settings, "server_decides": {flag: given[name] for name, flag in _SERVER_DECIDES.items()}}

    return _with_options(command, ANSWER_OPTIONS, ("settings", "server_decides"), before_json, build)


@dataclass(frozen=True)
class ReplySettings:
    """How describe, video and chat answer: shown as --json, --quiet and --stats say, by the
    `qvl serve` at --server (None: by a model loaded here)."""

    json_output: bool = False
    quiet: bool = False
    stats: bool = False
    server: str | None = None

    def view(self, kind=None, **settings):
        """The `output.RunView` (or `kind`, a subclass of it) that shows the answers so; `settings`:
        its other keywords."""
        from qvl.output import RunView

        return (kind or RunView)(json_output=self.json_output, quiet=self.quiet, stats=self.stats, **settings)


def with_terminal_options(command=None, *, json_opt=AnswersJsonOpt):
    """Give `command` the options of the commands that answer at the terminal (describe, video,
    chat): `with_answer_options`' (received as it hands them over), then --json (`json_opt`: the
    command's own, where its output is not one object per input and question), --quiet, --stats
    and --server where the command's `reply` parameter stands (received as that `ReplySettings`).
    `with_terminal_options(json_opt=...)` is the decorator with the command's own --json."""
    if command is None:
        return functools.partial(with_terminal_options, json_opt=json_opt)

    def build(given) -> dict:
        return {"reply": ReplySettings(**given)}

    options = (("json_output", json_opt, False), *REPLY_OPTIONS)
    replying = _with_options(command, options, ("reply",), _in_place_of(command, "reply"), build)
    return with_answer_options(replying)  # its options go before --json
