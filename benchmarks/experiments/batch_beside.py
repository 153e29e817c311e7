"""Whether the CPU work beside the GPU is what it waits for in `qvl batch`: one loaded model
answers groups of rows (4 decoded together, as the batch does) with every row's media and inputs
made before the clock starts, then as the batch runs them, CPU workers decoding and preparing
the rows ahead meanwhile, with each worker's torch CPU threads, its decoding threads and its
inputs page-locked (the copy to the GPU then by DMA, not staged by the driver) varied, and the
rows made in worker processes instead (a prototype: each process holds the model's tree on the
meta device for `Engine.prepare`, and the inputs come back through shared memory). No
profiler (CUPTI slows the GPU's kernels enough to hide a host that keeps up only just); each
variant's seconds per row and NVML's busy reading over its seconds (sampled every 0.1 s).

    PYTHONPATH=. python3 benchmarks/experiments/batch_beside.py [--rows 48] [--workers 4]
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing
import os
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
from batch_gaps import request_options, video_rows  # noqa: E402


class Nvml:
    """NVML's utilisation every 0.1 s on a thread; `mean(start, end)` over perf_counter seconds."""

    def __init__(self, cuda: bool):
        self.samples, self.stop = [], threading.Event()
        if cuda:
            threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while not self.stop.is_set():
            self.samples.append((time.perf_counter(), torch.cuda.utilization(0) / 100))
            time.sleep(0.1)

    def mean(self, start: float, end: float) -> float:
        read = [u for t, u in self.samples if start + 0.2 <= t <= end]
        return statistics.fmean(read) if read else float("nan")


_PREPARER = None  # in a worker process: an engine without weights, for `prepare` alone


def _start_process(model_name: str, threads: int) -> None:
    """A worker process's preparer: qvl's module tree on the meta device (no weights, no GPU),
    its processor and chat template; what `Engine.prepare(request, device="cpu")` reads."""
    global _PREPARER
    import json

    from qvl.engine import Engine, native
    from qvl.engine.load import random_config
    from qvl.engine.native_inputs import NativeProcessor
    from qvl.models import resolve_model

    torch.set_num_threads(threads)
    resolved = resolve_model(model_name)
    made = random_config(resolved.random, resolved.path) if resolved.random else None
    config = native.config_from_dict(made or json.loads((resolved.path / "config.json").read_text()))
    with torch.device("meta"):
        model = native.NativeModel(config, native.read_generation_config(resolved.path))
    engine = Engine.__new__(Engine)
    engine.model, engine.native, engine.fast_path_problem = model, True, None
    engine.processor = NativeProcessor(resolved.path, config.image_token_id, config.video_token_id)
    engine._inputs = engine.processor.inputs
    _PREPARER = engine


def _ready_in_process(row, decoding: int, max_tokens: int):
    """What `qvl.batch.work.ready` makes of `row` (its media loaded, its inputs prepared), made
    in a worker process; its tensors come back through shared memory."""
    from qvl.batch.work import load
    from qvl.engine import Request
    from qvl.runner import frame_cache

    started = time.perf_counter()
    media = load(row, frame_cache(enabled=False), decoding)
    media.media_s = time.perf_counter() - started
    request = Request(prompt=row.prompt, images=media.images, video=media.video, max_new_tokens=max_tokens)
    started = time.perf_counter()
    media.inputs = _PREPARER.prepare(request, device="cpu")
    media.preprocess_s = time.perf_counter() - started
    return media


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    request_options(parser, frames=16, max_tokens=64)
    parser.add_argument("--rows", type=int, default=48)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--side", type=int, default=448)
    args = parser.parse_args()
    cuda = torch.cuda.is_available()

    from qvl.batch.local import answer_rows
    from qvl.batch.work import answer_together, decode_threads, ready
    from qvl.bench import default_model
    from qvl.runner import Runner, Settings, frame_cache

    folder = Path(tempfile.mkdtemp(prefix="qvl-batch-beside-"))
    seeds = itertools.count()

    def fresh_rows():  # new files each time: nothing decoded before is reused
        return video_rows(folder, itertools.islice(seeds, args.rows), args.frames, args.side)

    model = args.model or default_model("cuda" if cuda else "cpu")
    runner = Runner(Settings(model=model, max_tokens=args.max_tokens))
    runner.engine()
    cache = frame_cache(enabled=False)
    nvml = Nvml(cuda)
    results = []

    def measure(name: str, answer_all) -> None:
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        count = answer_all()
        if cuda:
            torch.cuda.synchronize()
        end = time.perf_counter()
        results.append((name, (end - start) / count, nvml.mean(start, end)))
        print(f"{name}: {(end - start) / count:.4f} s/row, NVML {nvml.mean(start, end):.1%}", flush=True)

    # Warm: the batch decoder's graph for 4 rows, the processor's first calls.
    list(answer_rows(runner, fresh_rows()[:8], cache, workers=args.workers, prefetch=8, batch_size=4))

    def ahead() -> int:
        rows = fresh_rows()
        with ThreadPoolExecutor(args.workers) as pool:
            media = list(
                pool.map(lambda row: ready(row, cache, runner=runner, workers=decode_threads(args.workers)), rows)
            )
        items = list(zip(rows, media))

        def answer_all() -> int:
            for i in range(0, len(items), 4):
                answer_together(runner, items[i : i + 4])
            return len(items)

        return answer_all

    def beside(rows, workers: int = args.workers):
        def answer_all() -> int:
            return sum(1 for _ in answer_rows(runner, rows, cache, workers=workers, prefetch=2 * workers, batch_size=4))

        return answer_all

    import qvl.batch.local as local

    default_threads = torch.get_num_threads()

    def patched(threads: int | None = None, pinned: bool = False, decoding: int | None = None):
        """answer_rows's workers with their own torch CPU threads, their inputs page-locked, or
        `decoding` threads per video."""

        def prepared(*a, cores=None, **k):
            # This worker thread's OpenMP threads (instead of the batch's share of the cores); the
            # call also sets the count that threads made later start with, so every variant sets its own.
            torch.set_num_threads(threads or default_threads)
            media = ready(*a, **k)
            inputs = getattr(media, "inputs", None)
            if pinned and cuda and inputs is not None:
                for key, value in list(inputs.items()):
                    if isinstance(value, torch.Tensor):
                        inputs[key] = value.pin_memory()
            return media

        local.ready = prepared
        local.decode_threads = (lambda workers: decoding) if decoding else decode_threads

    measure("ready before the clock (nothing beside the GPU)", ahead())
    measure(f"{args.workers} workers beside (as qvl batch)", beside(fresh_rows()))
    for name, kwargs in (
        ("workers beside, torch's count each (qvl batch before)", dict()),
        ("workers beside, 1 torch thread each", dict(threads=1)),
        ("workers beside, 1 torch thread, 1 decoding thread", dict(threads=1, decoding=1)),
        ("workers beside, inputs page-locked", dict(pinned=True)),
        ("workers beside, 1 torch thread, page-locked", dict(threads=1, pinned=True)),
    ):
        patched(**kwargs)
        measure(name, beside(fresh_rows()))
    torch.set_num_threads(default_threads)
    for threads in (max(1, (os.cpu_count() or 1) // args.workers), 1):
        pool = ProcessPoolExecutor(
            args.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_process,
            initargs=(model, threads),
        )

        def via_processes(row, cache, *, runner=None, workers=None, cores=None, pool=pool):
            return pool.submit(_ready_in_process, row, decode_threads(args.workers), args.max_tokens).result()

        local.ready = via_processes
        list(answer_rows(runner, fresh_rows()[:8], cache, workers=args.workers, prefetch=8, batch_size=4))  # started
        measure(f"{args.workers} worker processes beside, torch threads {threads} each", beside(fresh_rows()))
        pool.shutdown()
    local.ready, local.decode_threads = ready, decode_threads
    measure(f"{args.workers} workers beside, again (as qvl batch)", beside(fresh_rows()))
    measure("ready before the clock, again", ahead())
    nvml.stop.set()
    card = torch.cuda.get_device_name() if cuda else "the CPU"
    print(f"\n{model} on {card}, {args.rows} rows a variant, torch threads {default_threads}")
    print(f"{'variant':<52} {'s/row':>8} {'NVML busy':>10}")
    for name, per_row, busy in results:
        print(f"{name:<52} {per_row:>8.4f} {busy:>10.1%}")


if __name__ == "__main__":
    main()
