"""Quantised attention (SageAttention-style): ``QuantizedTensor``, the quantising pre-pass and the attention ops.

Schemes (docs/quantization.md): ``"fp8"`` -- Q, K and V in fp8 e4m3, FP8 Q.K and P.V (sm_90); ``"int8"`` --
int8 Q and K, fp16 P.V (sm_80); ``"int8+fp8"`` -- int8 Q.K and fp8 P.V (SageAttention2's choice, sm_90).  Q and K carry one float32 scale per (token, head), ``scale [B, H, N]``; K is
smoothed by its per-head mean over tokens (in the rotated frame) before quantising, which the softmax does not
see (every score of a query row moves by the same ``q . mean``); V (fp8 P.V) carries one scale per (key block of
``V_BLOCK`` tokens, channel), ``scale [B, H, cdiv(N, V_BLOCK), D]``.  The int8 scheme's V is fp16.

Backends as in :mod:`baton_fast.ops`: the Triton kernels (``kernels/rope_attention_quant.py``) on CUDA or with
``BATON_FAST_BACKEND=triton``; otherwise the plain-PyTorch path of the same scheme: quantise, dequantise, fp32
attention (:func:`quantize_rows_reference`, :func:`quantize_v_reference`, :func:`dequantized_attention`).  The
quantised path is for inference: no gradient, no layout masks; the log-sum-exp (to merge partial attentions)
on pre-quantised q and k (``qk_rmsnorm_rope(..., quant=...)``, ``rmsnorm_rope(..., quant=...)`` for one side,
:func:`quant_attention`).

The model layer selects it with :func:`attention_quant` (a context: every ``rope_attention`` call inside it
without LSE, gradient or layout masks runs quantised), which the sampler's hybrid schedule uses.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Optional

import torch

from . import reference
from .kernels.quant_formats import FP8_PV, MAX_HEAD_DIM, QK_FORMAT, QMAX, SCHEMES, STORAGE, V_BLOCK
from .rope import RopeTable

__all__ = ["SCHEMES", "QuantizedTensor", "attention_quant", "active_scheme", "check_scheme", "quantize", "quantize_v",
           "quantize_rows_reference", "quantize_v_reference", "dequantized_attention", "quant_attention",
           "cosine_similarity"]


@dataclass(frozen=True)
class QuantizedTensor:
    """A quantised ``[B, N, H, D]`` tensor and the scales beside it.

    ``data``: int8 / float8_e4m3fn ``[B, N, H, D]``; ``scale``: float32, ``[B, H, N]`` (one per token and head,
    Q and K) or ``[B, H, cdiv(N, V_BLOCK), D]`` (one per key block and channel, V); ``scheme``: one of
    :data:`SCHEMES`, the attention it is for; ``mean``: float32 ``[B, H, D]``, the vector subtracted from every
    token before quantising (K's smoothing; zeros for Q and V); ``source_dtype``: the float dtype of the tensor it
    was quantised from (a quantised Q's sets the attention's output dtype).  ``dequantize()`` gives
    ``data * scale + mean`` in float32."""
    data: torch.Tensor
    scale: torch.Tensor
    scheme: str
    mean: Optional[torch.Tensor] = None
    source_dtype: Optional[torch.dtype] = None

    @property
    def shape(self):
        return self.data.shape

    @property
    def device(self):
        return self.data.device

    def dequantize(self) -> torch.Tensor:
        B, N, H, D = self.data.shape
        if self.scale.dim() == 3:  # per (token, head)
            scale = self.scale.permute(0, 2, 1)[..., None]
        else:  # per (key block, channel)
            scale = self.scale.repeat_interleave(V_BLOCK, dim=2)[:, :, :N].permute(0, 2, 1, 3)
        x = self.data.float() * scale
        return x if self.mean is None else x + self.mean[:, None]


def check_scheme(quant, device: Optional[torch.device] = None) -> str:
    """``quant`` if it names a scheme (and, on a CUDA ``device``, one the GPU has the tensor cores for: fp8 e4m3
    needs sm_89 or newer); else ValueError naming ``quant``."""
    if quant not in SCHEMES:
        raise ValueError(f"quant: expected None, {' or '.join(map(repr, SCHEMES))}, got {quant!r}")
    if device is not None and device.type == "cuda" and (QK_FORMAT[quant] == "fp8" or FP8_PV[quant]):
        major, minor = torch.cuda.get_device_capability(device)
        if (major, minor) < (8, 9):
            raise ValueError(f"quant: {quant!r} needs fp8 e4m3 tensor cores (sm_89 or newer); this GPU is "
                             f"sm_{major}{minor}: use 'int8'")
    return quant


# --------------------------------------------------------------------------- selection for the model layer
_ACTIVE: list = [None]


@contextlib.contextmanager
def attention_quant(scheme: Optional[str]):
    """Within the context, ``rope_attention`` calls without LSE, gradient or layout masks run with
    ``quant=scheme`` (None: full precision).  Nested contexts restore the outer choice on exit."""
    if scheme is not None:
        check_scheme(scheme)
    previous, _ACTIVE[0] = _ACTIVE[0], scheme
    try:
        yield
    finally:
        _ACTIVE[0] = previous


def active_scheme() -> Optional[str]:
    """The scheme :func:`attention_quant` selected (None outside it)."""
    return _ACTIVE[0]


# --------------------------------------------------------------------------- plain-PyTorch scheme
def _to_storage(y: torch.Tensor, fmt: str) -> torch.Tensor:
    """``y`` (float32, within ``[-QMAX, QMAX]``) to a storage format: int8 rounded half away from zero (as the
    kernel), or fp8 e4m3 (round to nearest even)."""
    if fmt == "int8":
        return (y.sign() * (y.abs() + 0.5).floor()).to(torch.int8)
    return y.to(torch.float8_e4m3fn)


def _scales(amax: torch.Tensor, fmt: str):
    """``(scale, 1/scale)`` for magnitudes ``amax`` in a storage format (1 where amax is 0: a zero row stays zero)."""
    has_range = amax > 0
    safe = torch.where(has_range, amax, torch.ones_like(amax))
    return torch.where(has_range, safe / QMAX[fmt], 1.0), torch.where(has_range, QMAX[fmt] / safe, 1.0)


def quantize_rows_reference(x: torch.Tensor, scheme: str, smooth: bool = False) -> QuantizedTensor:
    """Plain PyTorch: ``x [B, N, H, D]`` (already normalised and rotated) in float32, minus its per-head token mean
    when ``smooth``, quantised with one scale per (token, head)."""
    x = x.float()
    mean = x.mean(1) if smooth else torch.zeros(x.shape[0], x.shape[2], x.shape[3], device=x.device)
    x = x - mean[:, None]
    fmt = QK_FORMAT[scheme]
    scale, inv = _scales(x.abs().amax(-1), fmt)  # [B, N, H]
    data = _to_storage(x * inv[..., None], fmt)
    return QuantizedTensor(data, scale.permute(0, 2, 1).contiguous(), scheme, mean)


def quantize_v_reference(v: torch.Tensor, scheme: str = "fp8") -> QuantizedTensor:
    """Plain PyTorch: ``v [B, N, H, D]`` to fp8 e4m3 with one scale per (key block of ``V_BLOCK`` tokens, channel)."""
    B, N, H, D = v.shape
    blocks = -(-N // V_BLOCK)
    padded = torch.nn.functional.pad(v.float(), (0, 0, 0, 0, 0, blocks * V_BLOCK - N))
    scale, inv = _scales(padded.unflatten(1, (blocks, V_BLOCK)).abs().amax(2), "fp8")  # [B, blocks, H, D]
    data = _to_storage(padded * inv.repeat_interleave(V_BLOCK, dim=1), "fp8")[:, :N]
    return QuantizedTensor(data.contiguous(), scale.permute(0, 2, 1, 3).contiguous(), scheme)


def dequantized_attention(q: QuantizedTensor, k: QuantizedTensor, v, *, k_lens=None, scale=None,
                          return_lse: bool = False):
    """Plain PyTorch: dequantise, then fp32 attention (no rotation; float32 ``[B, Nq, H, D]``, and with
    ``return_lse`` the log-sum-exp float32 ``[B, H, Nq]`` of the scores of the dequantised q and k, K's mean
    added back)."""
    v = v.dequantize() if isinstance(v, QuantizedTensor) else v.float()
    return reference.rope_attention(q.dequantize(), k.dequantize(), v, rotate_q=False, rotate_k=False,
                                    k_lens=k_lens, scale=scale, return_lse=return_lse)


def cosine_similarity(x: torch.Tensor, ref: torch.Tensor) -> float:
    """Cosine similarity of two tensors, flattened (SageAttention's accuracy metric), in float64."""
    x, ref = x.double().flatten(), ref.double().flatten()
    return float(torch.dot(x, ref) / (x.norm() * ref.norm()).clamp_min(1e-300))


# --------------------------------------------------------------------------- ops
def _on_triton(x: torch.Tensor) -> bool:
    from .ops import backend_for
    return backend_for(x.device) == "triton"


@torch.library.custom_op("baton_fast::quantize_rows", mutates_args=())
def _quantize_rows_op(x: torch.Tensor, coords: torch.Tensor, freqs: torch.Tensor, axes: torch.Tensor,
                      interleaved: bool, weight: Optional[torch.Tensor], norm: int, eps: float, rotate: bool,
                      smooth: bool, scheme: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    B, N, H, D = x.shape
    if _on_triton(x) and x.numel():
        from .kernels.rope_attention_quant import quantize_rows_fwd
        data, scale, mean = quantize_rows_fwd(x, coords, freqs, axes, interleaved, scheme=scheme, norm=norm,
                                              weight=weight, eps=eps, rotate=rotate, smooth=smooth)
        return data, scale, mean if mean is not None else x.new_zeros((B, H, D), dtype=torch.float32)
    y = x.float()
    if norm:
        y = reference.rms_norm(y, weight, eps, across_heads=norm == 2)
    if rotate:
        y = reference.apply_rope(y, coords, RopeTable.trusted(freqs, axes, interleaved, coords.shape[2]))
    qt = quantize_rows_reference(y, scheme, smooth)
    return qt.data, qt.scale, qt.mean


@_quantize_rows_op.register_fake
def _(x, coords, freqs, axes, interleaved, weight, norm, eps, rotate, smooth, scheme):
    B, N, H, D = x.shape
    return (x.new_empty((B, N, H, D), dtype=STORAGE[QK_FORMAT[scheme]]), x.new_empty((B, H, N), dtype=torch.float32),
            x.new_empty((B, H, D), dtype=torch.float32))


@torch.library.custom_op("baton_fast::quantize_v", mutates_args=())
def _quantize_v_op(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if _on_triton(v) and v.numel():
        from .kernels.rope_attention_quant import quantize_v_fwd
        return quantize_v_fwd(v)
    qt = quantize_v_reference(v)
    return qt.data, qt.scale


@_quantize_v_op.register_fake
def _(v):
    B, N, H, D = v.shape
    return (v.new_empty(v.shape, dtype=torch.float8_e4m3fn),
            v.new_empty((B, H, -(-N // V_BLOCK), D), dtype=torch.float32))


@torch.library.custom_op("baton_fast::quant_attention", mutates_args=())
def _quant_attention_op(q: torch.Tensor, q_scale: torch.Tensor, k: torch.Tensor, k_scale: torch.Tensor,
                        v: torch.Tensor, v_scale: Optional[torch.Tensor], k_lens: Optional[torch.Tensor],
                        k_mean: Optional[torch.Tensor], scale: float, scheme: str,
                        out_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """``(out, lse)``; ``lse`` float32 ``[B, H, Nq]`` when ``k_mean`` (K's smoothing mean) is given, else empty."""
    B, n_q, H, _ = q.shape
    return_lse = k_mean is not None
    if _on_triton(q) and q.numel() and k.shape[1]:
        from .kernels.rope_attention_quant import quant_attention_fwd
        result = quant_attention_fwd(q, q_scale, k, k_scale, v, v_scale, scheme=scheme, k_lens=k_lens, scale=scale,
                                     out_dtype=out_dtype, return_lse=return_lse, k_mean=k_mean)
        return result if return_lse else (result, _no_lse(q))
    if k.shape[1] == 0:
        lse = q.new_full((B, H, n_q), float("-inf"), dtype=torch.float32) if return_lse else _no_lse(q)
        return q.new_zeros(q.shape, dtype=out_dtype), lse
    vq = QuantizedTensor(v, v_scale, scheme) if v_scale is not None else v
    out = dequantized_attention(QuantizedTensor(q, q_scale, scheme), QuantizedTensor(k, k_scale, scheme, k_mean), vq,
                                k_lens=k_lens, scale=scale, return_lse=return_lse)
    out, lse = out if return_lse else (out, _no_lse(q))
    return out.to(out_dtype).contiguous(), lse.contiguous()


def _no_lse(q: torch.Tensor) -> torch.Tensor:
    return q.new_empty((0,), dtype=torch.float32)


@_quant_attention_op.register_fake
def _(q, q_scale, k, k_scale, v, v_scale, k_lens, k_mean, scale, scheme, out_dtype):
    B, n_q, H, _ = q.shape
    return (q.new_empty(q.shape, dtype=out_dtype),
            q.new_empty((B, H, n_q) if k_mean is not None else (0,), dtype=torch.float32))


# --------------------------------------------------------------------------- public entry points
def quantize_rows(side: tuple, norm: int, eps: float, scheme: str, *, rotate: bool, smooth: bool) -> QuantizedTensor:
    """Quantise one checked side ``(x, coords, freqs, axes, interleaved, weight)`` (as :mod:`baton_fast.ops` builds
    them) after its RMSNorm (mode ``norm``) and rotation, in one pass (plus the mean pass when ``smooth``)."""
    x, coords, freqs, axes, interleaved, weight = side
    check_scheme(scheme, x.device)
    data, scale, mean = _quantize_rows_op(x, coords, freqs, axes, interleaved, weight, norm, eps, rotate, smooth,
                                          scheme)
    return QuantizedTensor(data, scale, scheme, mean, x.dtype)


def quantize(x: torch.Tensor, scheme: str, *, smooth: bool = False) -> QuantizedTensor:
    """An already normalised and rotated Q or K ``[B, N, H, D]`` (fp16/bf16/fp32) quantised for ``scheme`` (one
    scale per token and head; ``smooth``: minus its per-head token mean first, for K)."""
    from .ops import _check_float, _check_tensor, _identity_table, _zero_coords

    _check_tensor("x", x, 4, "[B, N, H, D]")
    _check_float("x", x)
    table = _identity_table(x.shape[3], x.device)
    side = (x, _zero_coords(x.shape[1], x.device), table.freqs, table.axes, table.interleaved, None)
    return quantize_rows(side, 0, 0.0, check_scheme(scheme), rotate=False, smooth=smooth)


def quantize_v(v: torch.Tensor, scheme: str):
    """V for a scheme: fp8 P.V -> :class:`QuantizedTensor` (per key block and channel), else an fp16 tensor."""
    check_scheme(scheme, v.device)
    if isinstance(v, QuantizedTensor):
        if v.scheme != scheme:
            raise ValueError(f"v: quantised for {v.scheme!r}, expected {scheme!r}")
        return v
    if not FP8_PV[scheme]:
        return v.to(torch.float16)
    return QuantizedTensor(*_quantize_v_op(v), scheme, source_dtype=v.dtype)


def quant_attention(q: QuantizedTensor, k: QuantizedTensor, v, *, k_lens: Optional[torch.Tensor] = None,
                    scale: Optional[float] = None, out_dtype: torch.dtype = torch.bfloat16, return_lse: bool = False):
    """Attention on pre-quantised, pre-rotated Q and K (``qk_rmsnorm_rope(..., quant=...)``).

    q ``[B, Nq, H, D]`` and k ``[B, Nk, Hk, D]`` :class:`QuantizedTensor` of one scheme; v ``[B, Nk, Hk, D]``: a
    float tensor (quantised here, :func:`quantize_v`) or an already quantised one; k_lens int ``[B]`` (values are
    not read here: check them once with :func:`baton_fast.check_key_lengths`).  Returns ``out_dtype``
    ``[B, Nq, H, D]``, and with ``return_lse`` also ``lse`` float32 ``[B, H, Nq]`` (natural log of the sum of
    ``exp(scale * q . k)`` over the keys, K's smoothing mean added back; ``-inf`` for a row without keys), to
    merge attentions over parts of the keys (sequence parallelism)."""
    for name, x in (("q", q), ("k", k)):
        if not isinstance(x, QuantizedTensor):
            raise TypeError(f"{name}: expected a QuantizedTensor (qk_rmsnorm_rope(..., quant=...)), "
                            f"got {type(x).__name__}")
        if x.scale.dim() != 3:
            raise ValueError(f"{name}: expected per-token scales [B, H, N], got {tuple(x.scale.shape)}")
    if k.scheme != q.scheme:
        raise ValueError(f"k: quantised for {k.scheme!r}, q for {q.scheme!r}")
    B, n_q, H, D = q.shape
    if D % 2 or not 2 <= D <= MAX_HEAD_DIM:
        raise ValueError(f"q: expected an even head dim between 2 and {MAX_HEAD_DIM} for quantised attention, got {D}")
    if k.shape[0] != B or k.shape[3] != D or H % k.shape[2]:
        raise ValueError(f"k: expected [B={B}, Nk, Hk dividing {H}, D={D}], got {tuple(k.shape)}")
    if tuple(v.shape) != tuple(k.shape):
        raise ValueError(f"v: expected the shape of k {tuple(k.shape)}, got {tuple(v.shape)}")
    if not isinstance(v, QuantizedTensor) and v.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"v: expected float16, bfloat16 or float32 (or a QuantizedTensor), got {v.dtype}")
    if k_lens is not None and (k_lens.dim() != 1 or k_lens.shape[0] != B or
                               k_lens.dtype not in (torch.int32, torch.int64)):
        raise ValueError(f"k_lens: expected int32/int64 [B={B}], got {k_lens.dtype} {tuple(k_lens.shape)}")
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    v = quantize_v(v, q.scheme)
    data, v_scale = (v.data, v.scale) if isinstance(v, QuantizedTensor) else (v, None)
    k_mean = None
    if return_lse:
        k_mean = k.mean if k.mean is not None else torch.zeros(B, k.shape[2], D, device=k.device)
    out, lse = _quant_attention_op(q.data, q.scale, k.data, k.scale, data, v_scale,
                                   k_lens.contiguous() if k_lens is not None else None,
                                   k_mean.float().contiguous() if return_lse else None, scale, q.scheme, out_dtype)
    return (out, lse) if return_lse else out


def scheme_for_call(quant: Optional[str], *, return_lse: bool, masked: bool, grad: bool) -> Optional[str]:
    """The scheme a ``rope_attention`` call runs: an explicit ``quant`` (refused with layout masks or a block mask
    (``masked``) or a gradient, which the quantised attention does not take), else the :func:`attention_quant`
    context's for a call that needs no LSE, mask or gradient, else None (full precision)."""
    if quant is None:
        return None if return_lse or masked or grad else active_scheme()
    check_scheme(quant)
    _refuse_masks_and_gradient(quant, masked, grad)
    return quant


def context_scheme(masked: bool, *tensors: torch.Tensor) -> Optional[str]:
    """The :func:`attention_quant` context's scheme for an attention that needs no LSE, computed from ``tensors``
    (its inputs, or the projections they come from), as :func:`scheme_for_call` decides: None with a mask
    (``masked``), with a gradient through ``tensors``, or outside the context.  Lets a QK pre-pass quantise in the
    same pass when its attention will run quantised."""
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    return scheme_for_call(None, return_lse=False, masked=masked, grad=grad)


def _refuse_masks_and_gradient(quant: str, masked: bool, grad: bool):
    for needed, what in ((masked, "q_groups/k_groups or block_mask"), (grad, "a gradient")):
        if needed:
            raise ValueError(f"quant: the quantised attention takes no layout masks and gives no gradient; "
                             f"got {what} with quant={quant!r}")


def prepass_scheme(quant, sides: list) -> str:
    """``quant`` for the quantising pre-pass of ``rmsnorm_rope`` / ``qk_rmsnorm_rope(..., quant=...)`` on its checked
    ``sides`` (as :func:`quantize_rows` takes them), checked before any launch: a scheme (ValueError naming
    ``quant`` otherwise), and no gradient through the inputs or weights (the quantised tensors carry none)."""
    scheme = check_scheme(quant)
    inputs = [t for side in sides for t in (side[0], side[5]) if t is not None]  # x and its weight
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in inputs)
    _refuse_masks_and_gradient(scheme, masked=False, grad=grad)
    return scheme


def quantize_prepass(sides: list, norm: int, eps: float, scheme: str, *, rotate: bool) -> tuple:
    """The quantising pre-pass (its scheme from :func:`prepass_scheme`): each ``(side, smooth)`` (``smooth`` for a
    K side) normalised, rotated and quantised in one pass; one :class:`QuantizedTensor` per side."""
    return tuple(quantize_rows(side, norm, eps, scheme, rotate=rotate, smooth=smooth) for side, smooth in sides)


def quantize_qk(q_side: tuple, k_side: tuple, norm: int, eps: float, scheme: str, *, rotate: bool):
    """``qk_rmsnorm_rope(..., quant=...)`` on its checked sides: ``(q, k)`` as :class:`QuantizedTensor`, K smoothed."""
    return quantize_prepass([(q_side, False), (k_side, True)], norm, eps, scheme, rotate=rotate)


def prequantized_attention(q, k, v, quant: Optional[str], *, rotate_q: bool, rotate_k: bool, k_lens, scale,
                           return_lse: bool, masked: bool) -> torch.Tensor:
    """``rope_attention`` on the :class:`QuantizedTensor` q and k of ``qk_rmsnorm_rope(..., quant=...)``: they are
    rotated already, and their scheme is the call's (``quant`` None or the same).  Returns the dtype q was quantised
    from (else v's float dtype, else bfloat16), and with ``return_lse`` the LSE (:func:`quant_attention`)."""
    if rotate_q or rotate_k:
        raise ValueError("rotate_q, rotate_k: quantised q and k are rotated by the pre-pass; pass "
                         "rotate_q=False, rotate_k=False")
    scheme = getattr(q, "scheme", None)
    if quant is not None and quant != scheme:
        raise ValueError(f"quant: expected None or q's scheme {scheme!r}, got {quant!r}")
    _refuse_masks_and_gradient(scheme or "fp8", masked, grad=False)
    out_dtype = getattr(q, "source_dtype", None) or (
        v.dtype if isinstance(v, torch.Tensor) and v.dtype.is_floating_point else torch.bfloat16)
    return quant_attention(q, k, v, k_lens=k_lens, scale=scale, out_dtype=out_dtype, return_lse=return_lse)


def rope_attention(args: tuple, scheme: str, return_lse: bool = False):
    """``rope_attention(..., quant=scheme)`` on its checked arguments (:func:`baton_fast.ops._attention_args`): Q
    rotated and quantised, K rotated, smoothed and quantised, V quantised, then the quantised kernel; returns q's
    dtype, and with ``return_lse`` the LSE as :func:`quant_attention` gives it."""
    q, k, v, q_coords, k_coords, qf, qa, kf, ka, layout, rotate_q, rotate_k, k_lens, scale = args
    qq = quantize_rows((q, q_coords, qf, qa, layout, None), 0, 0.0, scheme, rotate=rotate_q, smooth=False)
    kq = quantize_rows((k, k_coords, kf, ka, layout, None), 0, 0.0, scheme, rotate=rotate_k, smooth=True)
    return quant_attention(qq, kq, v, k_lens=k_lens, scale=scale, out_dtype=q.dtype, return_lse=return_lse)
