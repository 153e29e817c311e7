"""`triton.autotune` with its choices kept on disk, where this Triton can keep them."""

from __future__ import annotations

import inspect

import triton

# Triton 3.2 added cache_results: the timings of each tuning key go to Triton's cache beside the
# compiled kernels, so a new process reads the choice instead of timing every config again (seconds
# per kernel on a first PSA call). Older Tritons time the configs once per process, as before.
_CACHE = {"cache_results": True} if "cache_results" in inspect.signature(triton.autotune).parameters else {}


def autotune(configs, key, prune_configs_by=None):
    """`triton.autotune(configs, key, prune_configs_by)`, remembered across processes."""
    return triton.autotune(configs=configs, key=key, prune_configs_by=prune_configs_by, **_CACHE)
