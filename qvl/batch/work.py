"""What every way of running a batch does with one row: load its media, then answer it with a Runner.

The local runner, the GPU worker processes and the Ray tasks and actors all call these, so a row
gets the same frames, the same request and the same record wherever it runs.
"""

from __future__ import annotations

import os
import time
from typing import Any

from qvl.errors import InputError, QvlError, first_line
from qvl.runner import Media, Runner, View, load_clip


def load(row, cache, workers: int | None = None) -> Media:
    """The row's media: its image opened, or its video's frames sampled (`workers` decoding threads)."""
    if row.kind == "image":
        from qvl.media.images import open_image

        return Media(images=[open_image(row.input, video_hint='a manifest row with "type": "video" reads it as one')])
    media = load_clip(row.input, row.video, cache, workers=workers)
    if row.keys:  # the plan's notes about the row's own frame options name its keys, as its errors do
        from qvl.batch.inputs import by_keys

        media.notes = [by_keys(line, row.keys) for line in media.notes]
        media.record["notes"] = list(media.notes)
    return media


class WorkerView(View):
    """The view of a runner in a worker (a process per GPU, a Ray actor): its model's load draws no
    progress bar, which would land in the middle of the job's own."""

    def load_progress(self, background: bool) -> bool:
        return False


class CoreShare:
    """torch's CPU threads for the workers that run the processor beside a model on a GPU: the
    cores shared out among them, as their decoding threads are. Each processor would otherwise
    start a thread per core, and several at once crowd each other and the thread feeding the GPU
    (docs/benchmarks.md, `qvl batch`). Beside a model on the CPU the workers keep torch's count:
    one thread each made the job slower there. torch gives a thread its count when it first runs
    an op: the last count set in any thread. So entering the share (`with CoreShare(n) as cores:`
    around the workers, in the thread that will run the model) fixes that thread's count first,
    and leaving it puts the count back for threads started later."""

    def __init__(self, threads: int):
        self.threads = threads
        self._found: int | None = None

    def take(self, engine) -> None:
        """In a worker, before its processor runs: this thread's share, where `engine` is on a GPU."""
        if engine.device == "cuda":
            import torch

            torch.set_num_threads(self.threads)

    def __enter__(self) -> CoreShare:
        import torch

        self._found = torch.get_num_threads()  # this thread's count, fixed before any worker sets its own
        return self

    def __exit__(self, *exc) -> None:
        """Threads started from now on get the count there was before (the workers are done)."""
        import torch

        torch.set_num_threads(self._found)


def ready(
    row, cache, *, runner: Runner | None = None, workers: int | None = None, cores: CoreShare | None = None
) -> Media | QvlError:
    """The row's media, timed, with its processor inputs made on the CPU when a `runner` (with its
    engine loaded) is given, on this thread's share of the `cores`; or the error that stopped it,
    to be that row's record."""
    started = time.perf_counter()
    try:
        media = load(row, cache, workers)
        media.media_s = time.perf_counter() - started
        if runner is None:
            return media
        if cores is not None:
            cores.take(runner.engine())
        return runner.prepare(row.prompt, media)
    except QvlError as exc:
        return exc
    except Exception as exc:  # one odd file (a decoder's or the processor's surprise) fails its row only
        return InputError(f"{row.input}: {type(exc).__name__}: {first_line(exc)}")


def answer(runner: Runner, row, media: Media | QvlError) -> dict[str, Any]:
    """The row's record (its `id` first, then the runner's record): an answer, or its error."""

    def loaded() -> Media:
        if isinstance(media, QvlError):
            raise media
        return media

    try:
        record = runner.run(row.input, row.prompt, loaded, max_tokens=row.max_tokens)
    except Exception as exc:  # a row the model cannot take (out of GPU memory) must not end a long job
        record = runner.fail(row.input, InputError(f"{row.input}: {type(exc).__name__}: {first_line(exc)}"), row.prompt)
    return {"id": row.id, **record}


def answer_together(runner: Runner, items: list) -> list[dict[str, Any]]:
    """The records of `items` ((row, media or its error) pairs), in order: the rows whose media
    loaded decoded together (`Engine.generate_batch`), the others as `answer` reports them; where
    the batch itself fails (out of GPU memory, say), each row alone, with its own outcome."""
    loaded = [(row, media) for row, media in items if not isinstance(media, QvlError)]
    records: dict[int, dict[str, Any]] = {}
    if len(loaded) > 1 and not runner.stopped:
        try:
            engine = runner.engine()
            requests = [runner.request(row.prompt, media, row.max_tokens) for row, media in loaded]
            results = engine.generate_batch(requests, [media.inputs for _, media in loaded])
        except Exception:  # noqa: BLE001 - each row then runs alone and reports what stops it
            results = []
        for (row, media), result in zip(loaded, results):
            runner.started(row.input)
            record = runner.answered(engine, row.input, row.prompt, media, result, media.media_s or 0.0)
            records[id(row)] = {"id": row.id, **record}
    return [records.get(id(row)) or answer(runner, row, media) for row, media in items]


def engine_info(engine) -> dict[str, Any]:
    """What a person is told about a loaded engine (it may live in another process)."""
    return {
        "name": engine.name,
        "device": engine.device,
        "load_s": engine.load_s,
        "is_tiny": engine.is_tiny,
        "compiled_s": engine.compiled_s,
    }


def decode_threads(workers: int) -> int:
    """Decoding threads per video when `workers` videos are decoded at once: the cores shared out."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, workers))
