"""Measure what PSA does to one prefill: time with PSA and with SDPA, density per layer."""

from __future__ import annotations

import statistics
import time


def profile_prefill(engine, request, *, repeat: int = 3) -> dict:
    """Prefill `request` (one forward pass, no decoding) `repeat` times with PSA and with SDPA.

    The engine must have been built with `psa=`; outside a PSA request scope its attention falls
    back to SDPA, so both runs use the same loaded model. Returns milliseconds (medians), the PSA
    summary of the prefill and per-layer rows.
    """
    import torch

    from qvl.psa import PSAStats, psa_request

    inputs = engine.prepare(request)
    config, text_length = engine.psa, engine.text_length(inputs["input_ids"])

    def prefill(with_psa: bool) -> tuple[float, PSAStats]:
        stats = PSAStats()
        _sync(engine)
        started = time.perf_counter()
        with torch.inference_mode():
            if with_psa:
                with psa_request(config, text_length, stats):
                    engine.model(**inputs)
            else:
                engine.model(**inputs)
        _sync(engine)
        return (time.perf_counter() - started) * 1000, stats

    prefill(True), prefill(False)  # warm-up: kernel compilation, allocator
    psa_ms, stats = zip(*(prefill(True) for _ in range(repeat)))
    sdpa_ms = [prefill(False)[0] for _ in range(repeat)]
    summary = stats[-1].summary()
    per_layer = []
    if summary is not None:
        from qvl_kernels.level_mask import LEVELS

        for _, density, fraction in stats[-1].layers:
            shares = fraction.float().mean(dim=(0, 1)).cpu()
            per_layer.append(
                {
                    "density": round(float(density.float().mean()), 4),
                    "level_fraction": {str(level): round(float(v), 4) for level, v in zip(LEVELS, shares)},
                }
            )
    psa_median, sdpa_median = statistics.median(psa_ms), statistics.median(sdpa_ms)
    return {
        "tokens": int(inputs["input_ids"].shape[1]),
        "prefill_ms": {"psa": round(psa_median, 3), "sdpa": round(sdpa_median, 3)},
        "speedup": round(sdpa_median / psa_median, 3) if psa_median > 0 else None,
        "psa": summary,
        "per_layer": per_layer,
    }


def _sync(engine) -> None:
    import torch

    if engine.model.device.type == "cuda":
        torch.cuda.synchronize()
