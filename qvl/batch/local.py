"""Running a batch on this machine: CPU workers get rows ready while the model answers, one model
per GPU.

`answer_rows` is one model's loop: a pool of `workers` threads loads each row's media (PyAV and
Pillow release the GIL) and runs the processor on the CPU, at most `prefetch` rows ahead, while
the model answers the row before (the first rows decode while the model loads); records come
back in the rows' order. `answer_on_gpus` starts one process per GPU (spawned, each seeing only
its own card through CUDA_VISIBLE_DEVICES), each running `answer_rows` on rows it takes from a
shared queue, and yields their records to the one process that writes the results file.
"""

from __future__ import annotations

import os
import queue
import signal
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from typing import Any, Callable, Iterable, Iterator

from qvl.batch.work import (
    CoreShare,
    WorkerView,
    answer,
    answer_together,
    decode_threads,
    engine_info,
    ready,
)
from qvl.errors import ModelError, OptionError, QvlError, counted
from qvl.runner import Runner

# Rows decoded together by default on a GPU: one decode step reads every weight once for all of
# them, so a few answers cost little more than one (docs/benchmarks.md, `qvl batch`).
ROWS_TOGETHER_ON_GPU = 4
# Longer prompts answer alone: their prefill, which runs row by row anyway, is most of their time,
# and a shared cache would hold every row at the longest one's length.
LONGEST_PROMPT_TOGETHER = 16_384


def answer_rows(
    runner: Runner, rows: Iterable, cache, *, workers: int, prefetch: int, batch_size: int | None = 1
) -> Iterator[dict[str, Any]]:
    """Each row's record, in order; the runner's engine loads while the first rows decode (a
    `ModelError` before any record if it cannot). With `batch_size` above 1 the next row and those
    after it that are ready already, up to `batch_size`, are answered together (never waiting for
    a row to fill a batch; prompts over `LONGEST_PROMPT_TOGETHER` tokens alone); None: as
    `rows_together` says for the loaded engine."""
    runner.load_in_background()
    threads = decode_threads(workers)
    rows = iter(rows)
    # The pool closes first, its workers done, then the cores' share ends.
    with CoreShare(threads) as cores, ThreadPoolExecutor(workers, thread_name_prefix="qvl-prefetch") as pool:

        def submit(row):  # the worker's processor waits for the engine
            return row, pool.submit(ready, row, cache, runner=runner, workers=threads, cores=cores)

        pending = deque(submit(row) for row in islice(rows, max(prefetch, 1)))
        try:
            batch_size = batch_size or rows_together(runner.engine())
            while pending:
                group = [pending.popleft()]
                if _short(group[0][1].result()):  # the next row's media, which it waits for anyway
                    while len(group) < batch_size and pending and pending[0][1].done():
                        if not _short(pending[0][1].result()):
                            break
                        group.append(pending.popleft())
                pending.extend(submit(row) for row in islice(rows, len(group)))
                if len(group) == 1:
                    yield answer(runner, group[0][0], group[0][1].result())
                else:
                    yield from answer_together(runner, [(row, future.result()) for row, future in group])
            runner.finish_loading()  # every row failed before it needed the model: the process ends next
        finally:  # stopped early (interrupted): drop the rows not started
            for _, future in pending:
                future.cancel()


def _short(media) -> bool:
    """Whether a ready row may share a decode with others: its inputs are made (a failed row's
    error is reported on its own) and its prompt is short enough."""
    inputs = getattr(media, "inputs", None)
    return inputs is not None and inputs["input_ids"].shape[1] <= LONGEST_PROMPT_TOGETHER


def rows_together(engine) -> int:
    """Rows decoded together where the job leaves it to the engine: several on a GPU where qvl's
    fast path serves the model (not one spread over several GPUs, say), else one."""
    return ROWS_TOGETHER_ON_GPU if engine.device == "cuda" and engine.fast_path_problem is None else 1


def check_gpus(gpus: int, device: str) -> None:
    """`OptionError` unless this machine can run `gpus` models, one per CUDA device."""
    if gpus < 1:
        raise OptionError(f"--gpus must be at least 1, not {gpus}")
    if gpus == 1:
        return
    if device == "cpu":
        raise OptionError(f"--gpus {gpus} runs one model per CUDA device, and --device cpu asks for none")
    import torch

    count = torch.cuda.device_count()
    if gpus > count:
        raise OptionError(f"--gpus {gpus}: this machine has {counted(count, 'CUDA device')}")


def answer_on_gpus(
    settings,
    rows: list,
    cache,
    *,
    gpus: int,
    workers: int,
    prefetch: int,
    batch_size: int | None = 1,
    on_loaded: Callable[[dict], None],
) -> Iterator[dict[str, Any]]:
    """Records of `rows` as `gpus` worker processes answer them (not in order)."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")  # CUDA cannot be used in a forked child
    tasks, results = context.Queue(), context.Queue()
    procs = [
        context.Process(
            target=_gpu_worker,
            args=(device, settings, cache, workers, prefetch, batch_size, tasks, results),
            name=f"qvl-gpu-{device}",
            daemon=True,
        )
        for device in visible_devices(gpus)
    ]
    for proc in procs:
        proc.start()
    try:
        for row in rows:
            tasks.put(row)
        for _ in procs:
            tasks.put(None)
        running = {proc.name for proc in procs}
        while running:
            try:
                kind, name, payload = results.get(timeout=1.0)
            except queue.Empty:
                for proc in procs:
                    if proc.name in running and not proc.is_alive():
                        raise QvlError(
                            f"the model process on GPU {proc.name.removeprefix('qvl-gpu-')} stopped "
                            f"(exit code {proc.exitcode}); run the same command again to resume"
                        ) from None
                continue
            if kind == "record":
                yield payload
            elif kind == "loaded":
                on_loaded(payload)
            elif kind == "failed":
                raise ModelError(payload)
            else:
                running.discard(name)
    finally:
        tasks.cancel_join_thread()
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
        for proc in procs:
            proc.join(timeout=10)


def visible_devices(gpus: int) -> list[str]:
    """The CUDA_VISIBLE_DEVICES entry of each of the first `gpus` cards this process sees."""
    seen = os.environ.get("CUDA_VISIBLE_DEVICES")
    names = [d.strip() for d in seen.split(",") if d.strip()] if seen else [str(i) for i in range(gpus)]
    return names[:gpus]


def _gpu_worker(
    device: str, settings, cache, workers: int, prefetch: int, batch_size: int | None, tasks, results
) -> None:
    """One GPU's process: load the model, answer rows from `tasks` until None, report on `results`."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent stops us
    os.environ["CUDA_VISIBLE_DEVICES"] = device  # before torch is imported: this card alone
    runner = Runner(settings, WorkerView())
    try:
        info = engine_info(runner.engine())
    except QvlError as exc:
        results.put(("failed", f"qvl-gpu-{device}", str(exc)))
        return
    name = f"qvl-gpu-{device}"
    results.put(("loaded", name, {**info, "device": f"{info['device']} (GPU {device})"}))
    rows = iter(tasks.get, None)
    for record in answer_rows(runner, rows, cache.open(), workers=workers, prefetch=prefetch, batch_size=batch_size):
        results.put(("record", name, record))
    results.put(("done", name, None))
