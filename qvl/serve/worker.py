"""The engine's one thread: requests wait in a bounded first-in first-out queue and are answered one
at a time, through a kept session where one holds their media.

The asyncio side never waits on the engine: it submits a `Job` (a full queue is `QueueFull` at
once) and reads the job's events (text pieces, then the answer or an error), which this thread
posts into the event loop.
"""

from __future__ import annotations

import asyncio
import queue
import sys
import threading
import time
import traceback
from typing import Any

from qvl.errors import OptionError, QvlError
from qvl.serve.protocol import Answer, ApiError, ChatRequest, api_error
from qvl.serve.sessions import SessionCache

# Room a kept session leaves past its media for a conversation and its answer (Session's headroom,
# as qvl chat's); a request whose max_tokens leaves less than QUESTION_ROOM is answered without one.
SESSION_HEADROOM = 8192
QUESTION_ROOM = 512


class QueueFull(Exception):
    """The queue holds as many waiting requests as it may."""


class Cancelled(Exception):
    """The client went away: the answer is dropped where it stands."""


class Job:
    """One request between the app and the worker. Made on the event loop's thread."""

    def __init__(self, request: ChatRequest, staged):
        self.request, self.staged = request, staged
        self.loop = asyncio.get_running_loop()
        self.events: asyncio.Queue = asyncio.Queue()
        self.cancelled = threading.Event()
        self.queued_at = time.perf_counter()
        self.streamed = False  # some of the answer has gone out

    def cancel(self) -> None:
        self.cancelled.set()

    def post(self, kind: str, value: Any = None) -> None:
        """Hand ("text", piece), ("done", Answer) or ("error", ApiError) to the event loop."""
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))
        except RuntimeError:  # the loop has closed (a forced stop): nobody is listening
            self.cancel()

    def on_text(self, piece: str) -> None:
        if self.cancelled.is_set():
            raise Cancelled
        if self.request.stream:  # the engine's pieces join to exactly the answer's text
            self.streamed = True
            self.post("text", piece)


class Worker:
    """Owns `engine` on one thread. queue_size: requests that may wait (the one being answered
    apart); sessions: the kept media prefixes; frame_cache: for video paths and URLs (or None)."""

    def __init__(self, engine, *, queue_size: int, sessions: SessionCache, frame_cache=None):
        from qvl.engine.generate import eos_ids
        from qvl.runner import keeps_sessions

        self.engine, self.queue_size, self.sessions, self.frame_cache = engine, queue_size, sessions, frame_cache
        self.keeps_sessions = sessions.enabled and keeps_sessions(engine)
        self.eos = eos_ids(engine.model, engine.processor.tokenizer)
        self.answered = self.failed = 0
        self.busy = False
        self._queue: queue.Queue = queue.Queue()
        self._waiting = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="qvl-engine", daemon=True)

    @property
    def waiting(self) -> int:
        return self._waiting

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Answer what is queued, then end the thread."""
        self._queue.put(None)
        self._thread.join()

    def submit(self, job: Job) -> None:
        with self._lock:
            if self._waiting >= self.queue_size:
                raise QueueFull
            self._waiting += 1
        self._queue.put(job)

    def _run(self) -> None:
        while (job := self._queue.get()) is not None:
            with self._lock:
                self._waiting -= 1
            if not job.cancelled.is_set():
                self.busy = True
                self._serve(job)
                self.busy = False
            job.staged.close()

    def _serve(self, job: Job) -> None:
        try:
            answer = self._answer_retrying(job)
        except Cancelled:
            return
        except ApiError as exc:
            self.failed += 1
            job.post("error", exc)
            return
        except QvlError as exc:
            self.failed += 1
            job.post("error", api_error(exc))
            return
        except Exception as exc:  # a bug or the device failing: this request fails, the server goes on
            self.failed += 1
            traceback.print_exc(file=sys.stderr)
            job.post("error", ApiError(500, f"internal error: {type(exc).__name__}: {exc}", code="internal_error"))
            return
        self.answered += 1
        job.post("done", answer)

    def _answer_retrying(self, job: Job) -> Answer:
        """`answer`, once more with the kept sessions dropped if the device ran out of memory first."""
        import torch

        try:
            return self.answer(job)
        except torch.cuda.OutOfMemoryError:
            if not len(self.sessions) or job.streamed:
                raise ApiError(503, "out of device memory for this request", code="out_of_memory") from None
        self.sessions.clear()
        torch.cuda.empty_cache()
        return self.answer(job)

    def _keep(self, key: str, media):
        """A kept session of `media` (LRU), or None where its cache does not fit in memory."""
        try:
            session = self.engine.session(images=media.images, video=media.video, headroom=SESSION_HEADROOM)
        except OptionError:  # too large for the memory left: this request is answered without one
            return None
        return self.sessions.put(key, session, media.record)

    def answer(self, job: Job) -> Answer:
        """Answer one job on this thread: through a kept session of its media (found, or made and
        kept), else as a request of its own."""
        from qvl.engine import Request

        request, staged, engine = job.request, job.staged, self.engine
        if request.psa and engine.psa is None:
            raise OptionError("this server runs without PSA: start it with --psa to ask for it")
        psa = engine.psa is not None and request.psa is not False
        queue_s = time.perf_counter() - job.queued_at
        sampling = dict(
            max_new_tokens=request.max_tokens, temperature=request.temperature, top_p=request.top_p, seed=request.seed
        )
        started = time.perf_counter()
        fits = request.max_tokens <= SESSION_HEADROOM - QUESTION_ROOM
        use_session = staged.key is not None and self.keeps_sessions and fits and psa == (engine.psa is not None)
        kept, status, media_s, media, result = None, "off", staged.seconds, None, None
        if use_session:
            kept, status = self.sessions.get(staged.key), "hit"
        if kept is None:
            media = staged.load(self.frame_cache)
            media_s += time.perf_counter() - started
            if use_session:
                kept = self._keep(staged.key, media)
                status = "new" if kept is not None else "off"
        if kept is not None:
            try:
                result = kept.session.ask(request.prompt, history=request.history, on_text=job.on_text, **sampling)
            except OptionError:  # the conversation outgrew the session's room: answered without it
                status = "off"
            record = kept.record
            if status == "new":  # the media's prefill was this request's wait too
                made = kept.session.timings
                result.timings.preprocess_s += made.preprocess_s
                result.timings.prefill_s += made.prefill_s
                result.timings.vision_s = made.vision_s
        if result is None:
            if media is None:
                media = staged.load(self.frame_cache)
                media_s += time.perf_counter() - started
            request_ = Request(
                request.prompt, images=media.images, video=media.video, history=request.history, **sampling
            )
            result = engine.generate(request_, on_text=job.on_text, psa=psa)
            record = media.record
        result.timings.media_s = media_s
        # Prompt tokens this answer did not prefill: the media's, and the turns the session kept.
        cached = result.prompt_tokens - kept.session.last_prefilled if status == "hit" else 0
        stopped = result.tokens and result.tokens[-1] in self.eos
        return Answer(
            text=result.text,
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.generated_tokens,
            finish_reason="length" if result.generated_tokens >= request.max_tokens and not stopped else "stop",
            cached_tokens=cached,
            qvl={
                "timings": result.timings.to_dict(),
                "media": record,
                **({"psa": result.psa} if psa else {}),
                "session": status,
                "cached_prefix_tokens": cached,
                "queue_s": round(queue_s, 4),
            },
        )
