"""Device helpers shared by the RoPE kernels: range-reduced sin/cos and pair rotation.

``tl.sin``/``tl.cos`` lower to libdevice calls whose slow path (Payne-Hanek, for huge
arguments) keeps a table in local memory; angles here are at most ~1e5 rad (LTX-2:
``theta * pi/2`` at coordinate 1), so a three-constant Cody-Waite reduction to
``[-pi/4, pi/4]`` and cephes' single-precision polynomials (|err| < 2e-7) cover them
without any local memory, and the same code runs under the interpreter.
"""
import triton
import triton.language as tl


@triton.jit
def sincos(phi):
    """``(sin(phi), cos(phi))`` for fp32 ``phi`` with ``|phi| < 2**16 * pi/2``."""
    k = tl.floor(phi * 0.6366197723675814 + 0.5)  # nearest multiple of pi/2
    # pi/2 = 1.5703125 + 4.837512969970703125e-4 + 7.54978995489188216e-8; the first
    # two parts have few mantissa bits so k * part is exact for |k| < 2**16.
    r = phi - k * 1.5703125
    r = r - k * 4.837512969970703125e-4
    r = r - k * 7.54978995489188216e-8
    r2 = r * r
    s = r + r * r2 * (-1.6666654611e-1 + r2 * (8.3321608736e-3 + r2 * -1.9515295891e-4))
    c = 1.0 - 0.5 * r2 + r2 * r2 * (4.166664568298827e-2 + r2 * (-1.388731625493765e-3 + r2 * 2.443315711809948e-5))
    quadrant = k.to(tl.int32) & 3
    swap = (quadrant & 1) != 0
    sin = tl.where(swap, c, s)
    cos = tl.where(swap, s, c)
    sin = tl.where((quadrant & 2) != 0, -sin, sin)
    cos = tl.where(((quadrant + 1) & 2) != 0, -cos, cos)
    return sin, cos


@triton.jit
def rotate_pairs(x1, x2, coords_ptrs, axes, freqs, mask):
    """Rotate pairs ``(x1, x2)`` (fp32, same 2-D shape) by ``coords[axes] * freqs``.

    ``coords_ptrs`` points at each row's coordinate 0 (shape broadcastable to x1, stride
    of the axis folded into ``axes``); ``axes``/``freqs`` broadcast along rows.
    """
    c = tl.load(coords_ptrs + axes, mask=mask, other=0.0)
    sin, cos = sincos(c * freqs)
    return x1 * cos - x2 * sin, x1 * sin + x2 * cos


@triton.jit
def pair_offsets(offs_j, HALF: tl.constexpr, INTERLEAVED: tl.constexpr):
    """Element offsets (in units of the dim stride) of the two halves of pair ``j``."""
    if INTERLEAVED:
        return 2 * offs_j, 2 * offs_j + 1
    else:
        return offs_j, offs_j + HALF


@triton.jit
def rope_table(F, A, head, stride_h, offs_j, mask_j, ENABLED: tl.constexpr):
    """``(freq float32, axis int32)`` ``[HALF_PAD]`` of ``head``'s row of a RoPE table (``F``/``A`` ``[1 or H,
    D/2]``, row stride ``stride_h``, 0 for a shared row); zeros when not ``ENABLED`` (nothing rotated)."""
    freq = tl.load(F + head * stride_h + offs_j, mask=mask_j & ENABLED, other=0.0)
    axis = tl.load(A + head * stride_h + offs_j, mask=mask_j & ENABLED, other=0)
    return freq, axis


@triton.jit
def key_length(KLens, b, n_k, HAS_KLENS: tl.constexpr):
    """Keys batch item ``b`` attends to: ``min(KLens[b], n_k)`` with ``HAS_KLENS``, else ``n_k``."""
    if HAS_KLENS:
        return tl.minimum(tl.load(KLens + b).to(tl.int32), n_k)
    else:
        return n_k
