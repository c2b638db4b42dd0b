"""The error budget every kernel is held to (docs/design.md §5).

A result in dtype X passes when its max abs error against the float64 reference is at
most twice the error of the plain PyTorch implementation computed in dtype X, plus a
small floor for rounding (scaled by the reference's magnitude, so an LSE of 8 gets the
floor of a few fp32 ulps at 8); NaN never passes.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

# bf16: one unit in the last place (ulp(x) <= 2^-7 |x|): a correctly accumulated bf16 result may round the other
# way than the plain one (measured: one output of a bf16 attention case moved by one ulp between two processes,
# the interpreter's fp32 dots differing in their last bits), which 1e-3 did not cover
FLOOR = {torch.float32: 1e-6, torch.float16: 1e-4, torch.bfloat16: 2.0 ** -7}


@dataclass(frozen=True)
class ErrorCheck:
    error: float     # max |result - reference64|
    baseline: float  # max |plain PyTorch in dtype X - reference64|
    budget: float    # 2 * baseline + floor

    @property
    def ok(self) -> bool:
        return self.error <= self.budget  # NaN compares False

    def __str__(self):
        return f"error {self.error:.3g} vs budget {self.budget:.3g} (plain PyTorch {self.baseline:.3g})"


def max_error(x: torch.Tensor, ref: torch.Tensor) -> float:
    """Max abs difference over finite reference entries; NaN if x has NaN/inf where ref is finite, or
    is finite where ref is infinite (an LSE of -inf must stay -inf)."""
    x, ref = x.double(), ref.double()
    finite = torch.isfinite(ref)
    if not torch.equal(x[~finite], ref[~finite]) or not bool(torch.isfinite(x[finite]).all()):
        return float("nan")
    return float((x[finite] - ref[finite]).abs().max()) if bool(finite.any()) else 0.0


def check(result: torch.Tensor, plain: torch.Tensor, reference64: torch.Tensor, dtype: torch.dtype) -> ErrorCheck:
    """Compare ``result`` (the kernel's, in ``dtype``) and ``plain`` (plain PyTorch in ``dtype``) with ``reference64``."""
    base = max_error(plain, reference64)
    return ErrorCheck(max_error(result, reference64), base, budget(base, reference64, dtype))


def budget(baseline: float, reference64: torch.Tensor, dtype: torch.dtype) -> float:
    """``2 * baseline + FLOOR[dtype] * max(1, max |reference|)``: the largest error a result in ``dtype`` may have."""
    finite = reference64[torch.isfinite(reference64)]
    magnitude = max(1.0, float(finite.abs().max())) if finite.numel() else 1.0
    return 2 * baseline + FLOOR[dtype] * magnitude
