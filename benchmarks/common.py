"""What the benchmarks share: the model shapes, timing (CUDA events, the profiler), the inputs
(random and video-like), SDPA baselines, fixed level masks and the request options.

Scripts import it as `from common import ...` (the script's folder is first on sys.path; those
under experiments/ put this folder there). Importing it also puts the repository root on
sys.path, so `qvl_kernels` resolves without PYTHONPATH.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

MODELS = {"7b": (28, 4, 128), "3b": (16, 2, 128)}  # HQ, HKV, D
BLOCK = 128
DEV = "cuda" if torch.cuda.is_available() else "cpu"  # the CPU only for a smoke test of the helpers


def timed(fn, budget_ms: float = 300.0, min_reps: int = 3, max_reps: int = 40) -> float:
    """Median ms of fn() over CUDA events, after a warm-up call; rep count from a first estimate."""
    fn()
    torch.cuda.synchronize()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record()
    fn()
    e.record()
    torch.cuda.synchronize()
    est = s.elapsed_time(e)
    reps = int(min(max_reps, max(min_reps, budget_ms / max(est, 1e-3))))
    times = []
    for _ in range(reps):
        s.record()
        fn()
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e))
    times.sort()
    return times[len(times) // 2]


def timed_queued(fn, reps: int = 15, lead_ms: float = 20.0) -> tuple[float, float]:
    """(GPU ms, host ms) of fn() when the CPU runs ahead of the GPU, as inside a model's forward.

    A busy-wait kernel of ~lead_ms goes first, so fn's launches are all queued before the GPU
    reaches them: the events then time the GPU work alone, without the Python launch overhead
    that `timed` (one call on an idle GPU) includes. host ms: the enqueue itself (perf_counter).
    Medians over reps."""
    fn()
    torch.cuda.synchronize()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record()
    torch.cuda._sleep(1_000_000)  # calibrate: cycles per ms of this card's clock
    e.record()
    torch.cuda.synchronize()
    cycles = int(lead_ms * 1_000_000 / max(s.elapsed_time(e), 1e-3))
    gpu, host = [], []
    for _ in range(reps):
        torch.cuda._sleep(cycles)
        s.record()
        t0 = time.perf_counter()
        fn()
        host.append((time.perf_counter() - t0) * 1e3)
        e.record()
        torch.cuda.synchronize()
        gpu.append(s.elapsed_time(e))
    gpu.sort()
    host.sort()
    return gpu[reps // 2], host[reps // 2]


def kernel_ms(fn, reps: int = 20) -> float:
    """Median ms of the GPU kernels fn() launches, from the profiler's (CUPTI) kernel records.

    Kernel time alone: neither the host's launch work nor the idle GPU waiting for it counts, and
    the calls run back to back (the power state of `timed`, unlike `timed_queued`'s busy-waits).
    For targets about a kernel's own time; `timed` stays the time a caller waits."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    kernels = sorted((e for e in prof.events() if e.device_type == DeviceType.CUDA), key=lambda e: e.time_range.start)
    per = len(kernels) // reps
    if per == 0 or len(kernels) % reps:
        raise RuntimeError(f"kernel_ms: {len(kernels)} kernel records for {reps} calls")
    calls = sorted(sum(e.time_range.elapsed_us() for e in kernels[i * per : (i + 1) * per]) for i in range(reps))
    return calls[reps // 2] / 1e3


def dense_causal_flops(B, HQ, L, D) -> float:
    return 4.0 * B * HQ * D * L * (L + 1) / 2  # QK^T and PV over the visible (lower) triangle


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    num = den = 0.0
    for i in range(a.shape[1]):  # per head: no fp32 copy of the whole tensor
        x, y = a[:, i].float(), b[:, i].float()
        num += (x - y).pow(2).sum().item()
        den += y.pow(2).sum().item()
    return math.sqrt(num / max(den, 1e-30))


def random_inputs(B, HQ, HKV, L, D, seed):
    g = torch.Generator(device=DEV).manual_seed(seed)
    return [
        torch.randn(B, h, L, D, device=DEV, generator=g, dtype=torch.float32).to(torch.bfloat16) for h in (HQ, HKV, HKV)
    ]


def _features(pos, D, g, scale):
    # Random Fourier features: phi(p) . phi(p') ~ D * exp(-|p - p'|^2 / 2) in the scaled units.
    w = torch.randn(D // 2, pos.shape[1], device=DEV, generator=g) * scale
    b = torch.rand(D // 2, device=DEV, generator=g) * 2 * math.pi
    a = pos @ w.T + b
    return torch.cat([a.cos(), a.sin()], -1) * math.sqrt(2.0)  # [L, D], |phi|^2 = D


def video_inputs(B, HQ, HKV, L, D, seed, grid=16, sigma_t=1.5, n_sinks=4):
    """Synthetic video-like q, k, v over a frames x grid x grid token order (t, y, x).

    q and k of a KV head share random-Fourier features of the token's scaled (t, y, x), so that
    q.k falls off with spatio-temporal distance (an RBF kernel). Even KV heads are smooth in space
    (spatial length scale 10 tokens: neighbouring keys nearly equal, pooling allowed up to 8x),
    odd ones detailed (3 tokens: the similarity cap keeps them at 1x-4x). Temporal length scale
    1.5 frames. The first n_sinks keys share a direction every query leans on (attention sinks).
    """
    g = torch.Generator(device=DEV).manual_seed(seed)
    i = torch.arange(L, device=DEV)
    per = grid * grid
    G = HQ // HKV
    qs, ks, vs = [], [], []
    for _b in range(B):
        qh, kh, vh = [], [], []
        for h in range(HKV):
            sigma_s = 10.0 if h % 2 == 0 else 3.0
            pos = torch.stack([(i // per) / sigma_t, ((i % per) // grid) / sigma_s, (i % grid) / sigma_s], -1).float()
            phi = _features(pos, D, g, 1.0)
            u = torch.randn(D, device=DEV, generator=g)
            u = u / u.norm() * math.sqrt(D)
            k = phi + 0.2 * torch.randn(L, D, device=DEV, generator=g)
            k[:n_sinks] += 2.0 * u
            kh.append(k)
            vh.append(_features(pos, D, g, 0.7) + 0.3 * torch.randn(L, D, device=DEV, generator=g))
            for _g in range(G):
                qh.append(
                    phi * (0.8 + 0.4 * torch.rand(1, device=DEV, generator=g))
                    + 0.5 * torch.randn(L, D, device=DEV, generator=g)
                    + 0.3 * u
                )
        qs.append(torch.stack(qh))
        ks.append(torch.stack(kh))
        vs.append(torch.stack(vh))
    return [torch.stack(t).to(torch.bfloat16).contiguous() for t in (qs, ks, vs)]


# ----------------------------------------------------------------------------- methods


def sdpa(backend):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    b = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION}[backend]

    def run(q, k, v):
        with sdpa_kernel([b]):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)

    return run


def level_density(levels: torch.Tensor) -> float:
    nb = levels.shape[-1]
    vis = torch.ones(nb, nb, dtype=torch.bool, device=levels.device).tril()
    lv = levels.float()
    inv = torch.where(lv > 0, 1.0 / lv.clamp(min=1), torch.zeros_like(lv))
    return (inv[..., vis].sum() / (vis.sum() * levels.shape[0] * levels.shape[1])).item()


def fixed_levels(B, HQ, L, density, pyramid, seed):
    """A fixed level mask of about `density`: binary (level 1 or 0) or a pyramid mix."""
    nb = math.ceil(L / BLOCK)
    g = torch.Generator(device=DEV).manual_seed(seed)
    u = torch.rand(B, HQ, nb, nb, device=DEV, generator=g)
    if not pyramid:
        lev = (u < density).to(torch.int8)
    else:  # equal shares of 1, 2, 4, 8 among kept blocks: density = keep * (1 + 1/2 + 1/4 + 1/8) / 4
        keep = min(1.0, density * 4 / 1.875)
        choice = torch.tensor([1, 2, 4, 8], device=DEV, dtype=torch.int8)[
            torch.randint(0, 4, (B, HQ, nb, nb), device=DEV, generator=g)
        ]
        lev = torch.where(u < keep, choice, torch.zeros_like(choice))
    idx = torch.arange(nb, device=DEV)
    lev[..., idx, idx] = 1
    lev[..., :, 0] = 1
    return lev.tril()


# Band widths of the topk presets ({level: width}, in rank order 1, 2, 4, 8); "fast-v1" is the
# fast preset's shape before session 5 (4/4/8/16 %), kept as a row for comparison.
_BAND_SHAPES = {
    "fast": ((1, 0.016), (2, 0.024), (4, 0.024), (8, 0.32)),
    "balanced": ((1, 0.18), (2, 0.20), (4, 0.20), (8, 0.20)),
    "fast-v1": ((1, 0.04), (2, 0.04), (4, 0.08), (8, 0.16)),
}


def calibrated_topk(q, k, target: float, shape: str):
    """A topk PSAConfig whose achieved density on (q, k) is ~target (full-block equivalents).

    The preset's bands scaled by one factor, found by bisection on the levels alone: the forced
    diagonal/sink blocks and the similarity cap make the achieved density differ from the bands'
    nominal one, so a "10% budget" row must be measured at 10%, not at the preset's 14%."""
    from qvl_kernels.psa import PSAConfig, psa_levels

    def make(f):
        ratios, a = {}, 0.0
        for lvl, w in _BAND_SHAPES[shape]:
            b = min(1.0, a + w * f)
            ratios[lvl] = (a, b)
            a = b
        ratios[0] = (a, 1.0)
        return PSAConfig(mode="topk", ratios=ratios)

    lo, hi, best = 0.0, 1.0 / sum(w for _, w in _BAND_SHAPES[shape]), None
    for _ in range(14):
        f = (lo + hi) / 2
        d = level_density(psa_levels(q, k, make(f)))
        if best is None or abs(d - target) < abs(best[1] - target):
            best = (f, d)
        lo, hi = (lo, f) if d > target else (f, hi)
    return make(best[0]), best[1]


def synthetic_video(frames: int, side: int = 448, fps: float = 2.0, seed: int = 0):
    """A `qvl.engine.VideoFrames` of `frames` random 28x28 pictures blown up to side x side (the
    engine's input after frame extraction; speed depends on the size, not on the content)."""
    import numpy as np

    from qvl.engine import VideoFrames

    small = np.random.default_rng(seed).integers(0, 255, (frames, side // 16, side // 16, 3), dtype=np.uint8)
    return VideoFrames(np.repeat(np.repeat(small, 16, axis=1), 16, axis=2), fps)


def request_options(parser, *, frames: int, max_tokens: int, model: str | None = None) -> None:
    """--model, --frames and --max-tokens, which every end-to-end script takes; model None: the
    script picks random:7b on CUDA and the tiny model elsewhere (`qvl.bench.default_model`)."""
    parser.add_argument("--model", default=model, help=f"default: {model or 'random:7b on CUDA, else tiny'}")
    parser.add_argument("--frames", type=int, default=frames, help="frames a video")
    parser.add_argument("--max-tokens", type=int, default=max_tokens, help="new tokens an answer")


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def write_results(path, rows: list, **meta) -> None:
    """Write {"meta": {date (UTC), card, torch, triton, **meta}, "rows": rows} as JSON to `path`."""
    import triton

    meta = dict(
        date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        card=torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        torch=torch.__version__,
        triton=triton.__version__,
        transformers=_version("transformers"),
        **meta,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dict(meta=meta, rows=rows), indent=1) + "\n")


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None
