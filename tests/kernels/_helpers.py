"""Shared helpers for kernel tests: compare a fast op with its reference.

`assert_close_rel` is the one comparison every kernel test uses: relative RMSE
(||out - ref|| / ||ref||, computed in float64) below a tolerance, and any NaN or inf in the
output fails, whatever the tolerance. Outputs are poisoned with NaN before the call under test
(`poison`), so an element the kernel never writes shows up as a NaN here.
"""

from __future__ import annotations

import torch

# Typical tolerances for relative RMSE against an fp32/fp64 reference.
TOL = {torch.float32: 2e-3, torch.float16: 1e-2, torch.bfloat16: 3e-2}


def rel_rmse(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64 (0 when both are all zeros)."""
    o = out.detach().to(torch.float64)
    r = ref.detach().to(torch.float64)
    num = torch.linalg.vector_norm(o - r).item()
    den = torch.linalg.vector_norm(r).item()
    if den == 0.0:
        return num
    return num / den


def assert_close_rel(out: torch.Tensor, ref: torch.Tensor, tol: float, what: str = "output") -> float:
    """Fail on NaN/inf in `out`, on a shape mismatch, or when rel_rmse(out, ref) > tol."""
    assert out.shape == ref.shape, f"{what}: shape {tuple(out.shape)} != reference {tuple(ref.shape)}"
    bad = ~torch.isfinite(out)
    if bad.any():
        idx = bad.nonzero()[0].tolist()
        raise AssertionError(f"{what}: {int(bad.sum())} non-finite values (first at {idx})")
    err = rel_rmse(out, ref)
    assert err <= tol, f"{what}: relative RMSE {err:.3e} > {tol:.1e}"
    return err


def poison(*tensors: torch.Tensor) -> None:
    """Fill floating tensors with NaN (integers with -1) so unwritten elements fail a check."""
    for t in tensors:
        if t.is_floating_point():
            t.fill_(float("nan"))
        else:
            t.fill_(-1)


def randn(*shape: int, dtype=torch.float32, device="cpu", generator=None) -> torch.Tensor:
    """Standard normal values (never zeros), drawn in fp32 and cast."""
    return torch.randn(*shape, generator=generator, device=device, dtype=torch.float32).to(dtype)


class poisoned_allocations:
    """Context manager: torch.empty / torch.empty_like return NaN-filled (float) or -1-filled
    (integer) tensors, so outputs an op allocates internally are poisoned before its kernels run.

        with poisoned_allocations():
            out = op(x)
    """

    def __enter__(self):
        self._empty, self._empty_like = torch.empty, torch.empty_like
        empty, empty_like = self._empty, self._empty_like

        def _fill(t):
            if t.is_floating_point():
                t.fill_(float("nan"))
            elif t.dtype != torch.bool:
                t.fill_(-1)
            return t

        torch.empty = lambda *a, **k: _fill(empty(*a, **k))
        torch.empty_like = lambda *a, **k: _fill(empty_like(*a, **k))
        return self

    def __exit__(self, *exc):
        torch.empty, torch.empty_like = self._empty, self._empty_like
        return False
