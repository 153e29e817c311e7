"""Turning inputs into requests: media first, then the engine (loaded once), one record per input.

    runner = Runner(Settings(model="tiny", max_tokens=64), view=output.RunView(json_output=True, quiet=False))
    for path in paths:
        runner.run(path, "Describe this image.", lambda path=path: Media(images=[open_image(path)]))
    sys.exit(runner.exit_code)

A bad input is reported (through the view) and the run goes on with the next one; a model that
cannot be loaded stops the run, since no input could succeed without it. The runner knows nothing
of Typer or of how things are printed: the view decides that. Nothing heavy is imported here.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

from qvl.errors import ModelError, OptionError, QvlError, memory_errors
from qvl.questions import headroom_for

if TYPE_CHECKING:
    from qvl.conversation import Conversation

SEED_MAX = 2**63 - 1  # torch.manual_seed's largest seed as a signed 64-bit integer
# Tokens a video prompt holds besides the video's own (chat template, question): room enough that
# a cache sized ahead of the request (`Runner.load_in_background`) is the one it uses.
TEXT_ALLOWANCE = 128


@dataclass(frozen=True)
class Settings:
    """The model a run loads and how it generates; `psa` is a `qvl.psa.AttentionConfig` or None.

    An impossible value raises `OptionError` here, when the settings are made: before any media
    is read or any model loads, so a mistyped flag costs nothing.
    """

    model: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    psa: Any = None
    max_tokens: int = 512
    temperature: float = 0.0
    top_p: float | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        from qvl.engine import check_sampling  # light: no torch
        from qvl.engine.load import check_device, check_dtype

        check_device(self.device)
        check_dtype(self.dtype)
        check_sampling(self.max_tokens, self.temperature, self.top_p)
        if self.seed is not None and not 0 <= self.seed <= SEED_MAX:
            raise OptionError(f"--seed must be between 0 and {SEED_MAX}, not {self.seed}")


@dataclass
class Media:
    """What one request shows the model, and what its record says about it.

    images: PIL images; video: a `qvl.engine.VideoFrames`; record: keys added to the input's record;
    notes: what the frame plan changed from what was asked (`--frames 3` rounded up, `--end`
    clamped), for a person to read.

    Media loaded ahead of `Runner.run` (by a worker, while the model answers another input) says
    how long that took in `media_s` (None: `run` times `load_media` itself), and may carry the
    processor's `inputs` for the one question it will be asked (`Runner.prepare`), made in
    `preprocess_s`.
    """

    images: Sequence[Any] = ()
    video: Any = None
    record: dict[str, Any] = field(default_factory=dict)
    notes: Sequence[str] = ()
    media_s: float | None = None
    inputs: Any = None
    preprocess_s: float = 0.0


def error_record(label: str, message: str, *, model: str | None = None, prompt: str | None = None) -> dict[str, Any]:
    """A failed input's record: every key an answer's record has (README's schema), null where
    the failure left it unknown, so a pipeline reads one shape whatever happened."""
    unknown = dict.fromkeys(("text", "tokens", "timings"))
    return {"input": label, "model": model, "prompt": prompt, **unknown, "error": message}


def clip_record(clip) -> dict[str, Any]:
    """What a record says about a `VideoClip`: the frames the model saw and where they came from."""
    return {
        "frames": len(clip.timestamps),
        "sampled_fps": round(clip.sampled_fps, 6),
        "frame_size": [clip.plan.width, clip.plan.height],
        "span": [round(clip.timestamps[0], 3), round(clip.timestamps[-1], 3)],
        "video_tokens": clip.plan.tokens,
        "from_cache": clip.from_cache,
        "cache": clip.cache,  # hit, miss, rebuilt (a damaged entry was replaced) or off
        "timestamps": [round(t, 3) for t in clip.timestamps],
        "notes": list(clip.plan.notes),  # what the plan changed from what was asked, as stderr says it
    }


def clip_media(clip) -> Media:
    """A `VideoClip` as the engine takes it (frames at their real sampled fps), with its record."""
    from qvl.engine import VideoFrames

    return Media(video=VideoFrames(clip.frames, clip.sampled_fps), record=clip_record(clip), notes=clip.plan.notes)


def load_clip(
    source: str,
    options,
    cache=None,
    progress: Callable[[int, int], None] | None = None,
    workers: int | None = None,
    on_plan: Callable[[Any], None] | None = None,
) -> Media:
    """Sample `source` as `options` (a `VideoOptions`) say, through `cache` (a `FrameCache` or None);
    workers: decoding threads (default: one per core); on_plan: called with the `FramePlan` before
    any frame is read."""
    from qvl.media.video import load_video

    return clip_media(load_video(source, options, cache=cache, progress=progress, workers=workers, on_plan=on_plan))


def frame_cache(cache_dir=None, *, strict_hash: bool = False, enabled: bool = True):
    """The frame cache in `cache_dir` (default: frames/ under $QVL_CACHE_DIR or the user cache), or
    None when not `enabled`."""
    if not enabled:
        return None
    from pathlib import Path

    from qvl.media.cache import FrameCache

    return FrameCache(Path(cache_dir) if cache_dir else None, strict_hash=strict_hash)


class View:
    """What a runner tells whoever watches it; this one shows nothing (`qvl.output.RunView` prints).

    on_text: called with each piece of an answer as it is generated, or None not to stream.
    """

    on_text: Callable[[str], None] | None = None

    def load_progress(self, background: bool) -> bool:
        """Whether the engine's load may draw transformers' progress bar on stderr; `background`:
        it loads on a thread while the main one decodes frames (and draws their bar)."""
        return not background

    def loaded(self, engine) -> None:
        """The engine has loaded."""

    def started(self, label: str, index: int) -> None:
        """The answer to input number `index` (from 1) is about to be generated."""

    def answered(self, record: dict[str, Any], psa) -> None:
        """One input's record; `psa` is the attention config the run asked for, or None."""

    def failed(self, record: dict[str, Any]) -> None:
        """One input failed: `record` is `error_record`'s (input, model, prompt, error; text, tokens
        and timings null)."""

    def failed_again(self, record: dict[str, Any]) -> None:
        """The failure just told, for another of the input's questions: by default told again."""
        self.failed(record)

    def warned(self, message: str) -> None:
        """Something went wrong beside the answer (a PSA log line could not be written)."""


class Runner:
    """Runs one request per input with one engine, loaded on first use.

    exit_code: 0 while every input has succeeded, else the first failure's code. stopped: the model
    could not be loaded; later `run` calls do nothing and return None. psa_log: a
    `qvl.psa_log.PSALog` that receives each PSA prefill's per-layer statistics, or None.
    """

    def __init__(self, settings: Settings, view: View | None = None, psa_log=None):
        self.settings = settings
        self.view = view or View()
        self.psa_log = psa_log
        self.exit_code = 0
        self.stopped = False
        self.count = 0
        self._engine = None
        self._loading = None  # (thread, {"engine" or "error": ...}) of `load_in_background`
        self._engine_lock = threading.Lock()

    def engine(self):
        """The engine, loaded on the first call (a `ModelError` if it cannot be). Threads may call
        it at once (a batch's workers run the processor): one loads, the others wait for it."""
        with self._engine_lock:
            if self._engine is None:
                self._engine = self._loaded_engine()
                self.view.loaded(self._engine)
            return self._engine

    def _loaded_engine(self):
        if self._loading is None:
            return load_engine(self.settings, progress=self.view.load_progress(background=False))
        thread, outcome = self._loading
        thread.join()
        if "error" in outcome:  # kept, so that every later call raises it rather than loading again
            raise outcome["error"]
        self._loading = None
        return outcome["engine"]

    def load_in_background(self, media_tokens: int | None = None) -> None:
        """Start loading the engine on a thread (`engine()` waits for it), so that the model's load
        and a first video's decoding, planned already, overlap. media_tokens: the planned video's
        tokens, where one request about it follows: the load then also makes that request's KV
        cache and decode graph (`Engine.warm_up`)."""
        if self._engine is not None or self._loading is not None or self.stopped:
            return
        outcome: dict[str, Any] = {}
        reserve = None if media_tokens is None else media_tokens + TEXT_ALLOWANCE + self.settings.max_tokens

        def load() -> None:
            try:
                outcome["engine"] = load_engine(self.settings, reserve, progress=self.view.load_progress(True))
            except BaseException as exc:  # raised in the main thread by engine()
                outcome["error"] = exc

        thread = threading.Thread(target=load, name="qvl-load-model", daemon=True)  # Ctrl-C need not wait
        self._loading = (thread, outcome)
        thread.start()

    def finish_loading(self) -> None:
        """Wait for a load that `load_in_background` started and no input used (each failed
        first), so that the process does not end in the middle of copying weights."""
        if self._loading is not None:
            self._loading[0].join()

    def fail(self, label: str, exc: QvlError, prompt: str | None = None, **fields) -> dict[str, Any]:
        """Report one input's failure and return its record (`error_record`, plus `fields`: the
        keys a caller's answers add, such as a chat's `turn`)."""
        return self.fail_questions(label, exc, [prompt], **fields)[0]

    def fail_questions(
        self, label: str, exc: QvlError, prompts: Sequence[str | None], **fields
    ) -> list[dict[str, Any]]:
        """Report an input that failed before any of `prompts` was answered: a record each, told once."""
        model = self._engine.name if self._engine is not None else self.settings.model
        records = []
        for prompt in prompts:
            record = error_record(label, str(exc), model=model, prompt=prompt)
            error = record.pop("error")  # last, as in answers, after the keys the caller's answers add
            records.append({**record, **fields, "error": error})
        self.view.failed(records[0])
        for record in records[1:]:
            self.view.failed_again(record)
        self.exit_code = 2 if self.stopped else self.exit_code or exc.exit_code  # stopped: no model
        return records

    def run(
        self, label: str, prompt: str, load_media: Callable[[], Media], max_tokens: int | None = None
    ) -> dict[str, Any] | None:
        """Load the media, then answer `prompt` about it; the input's record, an error record on failure."""
        records = self.run_questions(label, [prompt], load_media, max_tokens)
        return records[0] if records else None

    def run_questions(
        self, label: str, prompts: Sequence[str], load_media: Callable[[], Media], max_tokens: int | None = None
    ) -> list[dict[str, Any]]:
        """Load the media once, then answer each of `prompts` about it: one record per question.

        Several questions share one prefill of the media (`Engine.session`) where the engine can
        keep it; otherwise each is a request of its own. max_tokens: this input's own limit
        (default: the settings').
        """
        if self.stopped:
            return []
        try:
            engine, media, media_s = self._load(load_media)
            session = None
            if len(prompts) > 1:  # room for the longest question and its answer
                room = headroom_for(prompts, self._sampling(max_tokens)["max_new_tokens"])
                with memory_errors():
                    session = self._session(engine, media, headroom=room)
            # Inputs prepared ahead (qvl batch) are for one question: several take the session.
            inputs = media.inputs if len(prompts) == 1 else None
            answer = self.answerer(engine, media, session, max_tokens=max_tokens, inputs=inputs)
        except QvlError as exc:
            return self.fail_questions(label, exc, prompts)
        records = []
        shared = session.timings if session is not None else None  # the media's one prefill
        for prompt in prompts:
            self.started(label if len(prompts) == 1 else f"{label}: {prompt}")
            try:
                with memory_errors():
                    result = answer(prompt)
            except QvlError as exc:
                records.append(self.fail(label, exc, prompt))
                continue
            if shared is not None:  # the first answer waited for it: its timings carry it
                result.timings.add_media_prefill(shared)
                shared = None
            records.append(self.answered(engine, label, prompt, media, result, media_s))
            media_s = 0.0  # loaded for the first answer
        return records

    def started(self, label: str) -> None:
        self.count += 1
        self.view.started(label, self.count)

    def answered(
        self, engine, label: str, prompt: str, media: Media, result, media_s: float, **extra
    ) -> dict[str, Any]:
        """The record of `result` about `media` (with `extra` fields), reported: `media_s` (the
        media's load) added to what the answer itself spent on media (a server's), and the
        processor's run made ahead."""
        result.timings.media_s += media_s
        result.timings.preprocess_s += media.preprocess_s  # prepared ahead: one question only
        record = {
            "input": label,
            "model": engine.name,
            "prompt": prompt,
            "text": result.text,
            "tokens": {"prompt": result.prompt_tokens, "generated": result.generated_tokens},
            "timings": result.timings.to_dict(),
            **media.record,
            **({"psa": result.psa} if self.settings.psa is not None else {}),
            **extra,
            "error": None,
        }
        self._log_psa(label, engine.name, result)
        self.view.answered(record, self.settings.psa)
        return record

    def _log_psa(self, label: str, model: str, result) -> None:
        if self.psa_log is None or not result.psa_layers:
            return
        from qvl.psa_log import request_id

        try:
            self.psa_log.write(
                request=request_id(),
                label=label,
                model=model,
                config=self.settings.psa.preset_name,
                tokens=result.psa["tokens"],
                layers=result.psa_layers,
            )
        except OSError as exc:  # the answer stands; the log line is what was lost
            self.view.warned(f"PSA log of {label} not written: {exc.strerror or exc}")

    def open_conversation(self, label: str, load_media: Callable[[], Media], **session_options) -> Conversation | None:
        """Load the media, then the engine, then prefill the media once (`Engine.session`, with
        `session_options` such as `headroom`) for a conversation about it; None when any of these
        failed (reported as `run` reports a failed input)."""
        if self.stopped:
            return None
        try:
            engine, media, media_s = self._load(load_media)
            session = self._session(engine, media, **session_options)
        except QvlError as exc:
            self.fail(label, exc)
            return None
        from qvl.conversation import Conversation

        return Conversation(self, engine, label, media, media_s, session)

    def _load(self, load_media: Callable[[], Media]):
        """(engine, media, seconds the media took): the media first, so a bad input is reported
        without waiting for a model."""
        started = time.perf_counter()
        with memory_errors():  # the input's frames; the model's own load reports itself
            media = load_media()
        media_s = time.perf_counter() - started if media.media_s is None else media.media_s
        try:
            engine = self.engine()
        except ModelError:
            self.stopped = True  # without a model no input can succeed
            raise
        return engine, media, media_s

    @staticmethod
    def _session(engine, media: Media, **options):
        """A session over `media` where the engine can keep one (a single device), else None."""
        if keeps_sessions(engine):
            return engine.session(images=media.images, video=media.video, **options)
        return None

    def prepare(self, prompt: str, media: Media) -> Media:
        """`media` with the processor's inputs for `prompt` made now, on the CPU (the engine must
        be loaded): a worker thread calls this while the model answers other inputs, so that
        `run` only moves the inputs to the model's device."""
        started = time.perf_counter()
        media.inputs = self.engine().prepare(self.request(prompt, media), device="cpu")
        media.preprocess_s = time.perf_counter() - started
        return media

    def request(self, prompt: str, media: Media, max_tokens: int | None = None, history=()):
        """The engine's `Request` for `prompt` about `media` with the settings' sampling."""
        from qvl.engine import Request

        sampling = self._sampling(max_tokens)
        return Request(prompt=prompt, images=media.images, video=media.video, history=history, **sampling)

    def _sampling(self, max_tokens: int | None) -> dict[str, Any]:
        """The settings' sampling, as `Request` and `Session.ask` take it (`max_tokens` first)."""
        s = self.settings
        return dict(max_new_tokens=max_tokens or s.max_tokens, temperature=s.temperature, top_p=s.top_p, seed=s.seed)

    def answerer(self, engine, media: Media, session, max_tokens: int | None = None, inputs=None) -> Callable[..., Any]:
        """(prompt, history=()) -> Result about `media` after the conversation `history`: through
        `session` (`Engine.session`'s, or None), else as a request of its own (with `inputs`, the
        processor's output prepared ahead for the first question, where given)."""
        sampling = self._sampling(max_tokens)
        on_text = self.view.on_text
        if session is not None:
            return lambda prompt, history=(): session.ask(prompt, history=history, on_text=on_text, **sampling)
        return lambda prompt, history=(): engine.generate(
            self.request(prompt, media, max_tokens, history),
            on_text=on_text,
            inputs=None if history else inputs,
        )


def load_engine(settings: Settings, tokens: int | None = None, *, progress: bool = True, native: bool | None = None):
    """The `qvl.engine.Engine` that `settings` names (model, device, dtype, PSA; `progress`: its load's
    progress bar; `native`: as `Engine` takes it), warmed up: the first request's one-time costs
    are paid here, which `Runner.load_in_background` overlaps with the first video's decoding
    (tokens: that request's, where known; `Engine.warm_up`)."""
    from qvl.engine import Engine

    named = {"device": settings.device, "dtype": settings.dtype, "psa": settings.psa}
    engine = Engine(settings.model, **named, progress=progress, native=native)
    engine.warm_up(tokens)
    return engine


def keeps_sessions(engine) -> bool:
    """Whether `engine.session` can keep media prefilled: one device (a model spread over several
    GPUs answers each question as a request of its own)."""
    return engine.fast_path_problem is None or engine.device == "cpu"
