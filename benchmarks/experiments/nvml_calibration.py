"""Experiment: how NVML's GPU utilization (what bench_batch.py samples every 0.1 s) reads known
duty cycles: a stream of matrix products with the host stopping for `gap` ms after each `busy` ms
of work (synchronised), sampled as bench_batch samples, against the duty cycle the CUDA events
measure, and a CUDA graph of small products replayed back to back (a decode step's kind of
work). If NVML reads a 100%-busy stream as less, the batch's busy figure is low by as much."""

from __future__ import annotations

import statistics
import threading
import time

import torch


def measured(work, gap_ms: float = 0.0, seconds: float = 3.0) -> tuple[float, float]:
    """(the duty cycle CUDA events measure, NVML's mean reading) of calling `work` (which queues
    GPU work) again and again for `seconds`, synchronised after each call, then `gap_ms` idle."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    samples, stop = [], threading.Event()

    def sample():
        while not stop.is_set():
            samples.append(torch.cuda.utilization(0))
            time.sleep(0.1)

    sampler = threading.Thread(target=sample)
    kernel_ms, t0 = 0.0, time.perf_counter()
    sampler.start()
    while time.perf_counter() - t0 < seconds:
        start.record()
        work()
        end.record()
        end.synchronize()
        kernel_ms += start.elapsed_time(end)
        if gap_ms:
            time.sleep(gap_ms / 1000)
    wall = time.perf_counter() - t0
    stop.set()
    sampler.join()
    return kernel_ms / 1000 / wall, statistics.fmean(samples[3:]) / 100


def products(busy_ms: float, gap_ms: float) -> tuple[float, float]:
    """Large matrix products for `busy_ms`, then the host idle for `gap_ms`."""
    a = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(10):
        a @ a
    end.record()
    torch.cuda.synchronize()
    count = max(1, round(busy_ms / (start.elapsed_time(end) / 10)))

    def work():
        for _ in range(count):
            a @ a

    return measured(work, gap_ms)


def graph_stream(kernels: int = 400) -> tuple[float, float]:
    """A decode step's kind of work: a CUDA graph of `kernels` small memory-bound products
    ([4, 4096] x [4096, 4096]), replayed back to back; the host syncs once per 20 replays."""
    x = torch.randn(4, 4096, device="cuda", dtype=torch.bfloat16)
    weights = [torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16) for _ in range(8)]
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        for w in weights:
            x @ w
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(kernels):
            x @ weights[i % len(weights)]

    def work():
        for _ in range(20):
            graph.replay()

    return measured(work)


if __name__ == "__main__":
    print(f"{'busy ms':>8} {'gap ms':>7} {'duty (events)':>14} {'NVML mean':>10}")
    for busy, gap in ((20, 0), (20, 2), (5, 0.5), (5, 2), (1, 0.1), (20, 20)):
        duty, nvml = products(busy, gap)
        print(f"{busy:>8} {gap:>7} {duty:>14.3f} {nvml:>10.3f}")
    duty, nvml = graph_stream()
    print(f"{'graph of 400 small products':>17} {duty:>14.3f} {nvml:>10.3f}")
