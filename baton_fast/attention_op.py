"""The ``rope_attention`` op family: argument checks, the ``baton_fast::rope_attention`` custom op (Triton kernel or
the reference path beside it) and its fake implementation, and ``layout_tile_stats``.  The backward is registered
on the op by :mod:`baton_fast.autograd`."""
from __future__ import annotations

from typing import Optional

import torch

from . import reference
from .op_cache import _identity_table, _zero_coords
from .rope import RopeTable
from .validation import (_check_coords, _check_devices, _check_float, _check_groups, _check_head_dim, _check_scale,
                         _check_table, _check_tensor, _table_tensors, backend_for,
                         runs_directly)
from .value_checks import _check_values, _values_checked

__all__ = ["rope_attention", "layout_tile_stats"]


def _attention_on_triton(q: torch.Tensor) -> bool:
    """Whether the fused kernel runs.  fp32 on a GPU always takes the PyTorch path (RoPE, then SDPA in
    fp32): the kernel's shipped configurations are tuned and machine-code checked for fp16/bf16 (fp32
    tiles need twice the registers and shared memory; compiles showed spills).  Under the interpreter
    the kernel runs fp32 too (that is how its numerics are tested on CPU)."""
    return backend_for(q.device) == "triton" and not (q.device.type == "cuda" and q.dtype == torch.float32)


def _rotations(q_coords, q_freqs, q_axes, rotate_q, k_coords, k_freqs, k_axes, rotate_k) -> dict:
    """The ``rotations`` argument of :func:`_check_values` for the rotated sides of an attention."""
    sides = {"q_coords": (q_coords, q_freqs, q_axes, rotate_q), "k_coords": (k_coords, k_freqs, k_axes, rotate_k)}
    return {name: side[:3] for name, side in sides.items() if side[3]}


def _rope_attention_impl(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_coords: torch.Tensor,
                         k_coords: torch.Tensor, q_freqs: torch.Tensor, q_axes: torch.Tensor, k_freqs: torch.Tensor,
                         k_axes: torch.Tensor, interleaved: bool, rotate_q: bool, rotate_k: bool,
                         k_lens: Optional[torch.Tensor], scale: float, return_lse: bool,
                         q_groups: Optional[torch.Tensor], k_groups: Optional[torch.Tensor]
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """The implementation of ``baton_fast::rope_attention`` (the op, or called directly: :func:`runs_directly`) on
    :func:`rope_attention`'s checked arguments: ``(out [B, Nq, H, D] contiguous in q's dtype, lse)``, ``lse``
    float32 ``[B, H, Nq]`` with ``return_lse``, else empty."""
    B, n_q, H, _ = q.shape
    if _attention_on_triton(q) and q.numel() and k.shape[1]:
        from .kernels.rope_attention import rope_attention_fwd
        out, lse = rope_attention_fwd(q, k, v, q_coords, k_coords, q_freqs, q_axes, k_freqs, k_axes, interleaved,
                                      rotate_q=rotate_q, rotate_k=rotate_k, k_lens=k_lens, scale=scale,
                                      return_lse=return_lse, q_groups=q_groups, k_groups=k_groups)
    elif k.shape[1] == 0:  # no key at all: every row is empty, as with k_lens = 0
        out = torch.zeros_like(q, memory_format=torch.contiguous_format)
        lse = torch.full((B, H, n_q), float("-inf"), device=q.device)
    else:
        qt = RopeTable.trusted(q_freqs, q_axes, interleaved, q_coords.shape[2]) if rotate_q else None
        kt = RopeTable.trusted(k_freqs, k_axes, interleaved, k_coords.shape[2]) if rotate_k else None
        rope = dict(k_table=kt, rotate_q=rotate_q, rotate_k=rotate_k, k_lens=k_lens, scale=scale)
        if return_lse or q_groups is not None:
            out, lse = reference.rope_attention(q, k, v, q_coords, k_coords, qt, return_lse=True, q_groups=q_groups,
                                                k_groups=k_groups, **rope)
        else:
            out = reference.sdpa_rope_attention(q, k, v, q_coords, k_coords, qt, **rope)
        out = out.to(q.dtype).contiguous()  # the fake impl promises a contiguous output
    return out, (lse.contiguous() if return_lse else q.new_empty((0,), dtype=torch.float32))


_rope_attention_op = torch.library.custom_op("baton_fast::rope_attention", _rope_attention_impl, mutates_args=())


@_rope_attention_op.register_fake
def _(q, k, v, q_coords, k_coords, q_freqs, q_axes, k_freqs, k_axes, interleaved, rotate_q, rotate_k, k_lens, scale,
      return_lse, q_groups, k_groups):
    B, n_q, H, _ = q.shape
    lse = q.new_empty((B, H, n_q) if return_lse else (0,), dtype=torch.float32)
    return torch.empty_like(q, memory_format=torch.contiguous_format), lse


def rope_attention(q, k, v, q_coords=None, k_coords=None, table: Optional[RopeTable] = None, *,
                   k_table: Optional[RopeTable] = None,
                   rotate_q: bool = True, rotate_k: bool = True, k_lens: Optional[torch.Tensor] = None,
                   scale: Optional[float] = None, return_lse: bool = False,
                   q_groups: Optional[torch.Tensor] = None, k_groups: Optional[torch.Tensor] = None,
                   check_values: bool = True, quant: Optional[str] = None, block_mask=None):
    """Attention with coordinate RoPE fused into the kernel.

    Args:
        q: ``[B, Nq, H, D]``, float16 / bfloat16 / float32, any strides.
        k, v: ``[B, Nk, Hk, D]`` with ``H % Hk == 0`` (grouped-query); ``Nk`` may differ from ``Nq``.
        q_coords, k_coords: float32 ``[B or 1, N, A]`` token coordinates; may be None for a side that is not rotated.
        table: query-side :class:`RopeTable` (``[1 or H, D/2]``); ``k_table`` the key side (``[1 or Hk, D/2]``),
            defaulting to ``table``.  Both must use the same pair layout.  None when neither side is rotated.
        rotate_q, rotate_k: set False when that side is already rotated (cached plan K, pre-pass).
        k_lens: optional integer ``[B]``: keys at index ``>= k_lens[b]`` are masked (padded text / plan tokens).
        scale: softmax scale, default ``1/sqrt(D)``.
        return_lse: also return the log-sum-exp, float32 ``[B, H, Nq]``, natural log.
        q_groups, k_groups: optional int32/int64 ``[B or 1, Nq]`` / ``[B or 1, Nk]`` group bitmasks (SpA2V
            layout attention): query ``i`` attends to key ``j`` only when ``q_groups[i] & k_groups[j] != 0``.
            Key tiles with no allowed pair are skipped by the kernel, not computed.
        check_values: read the coordinates and key lengths back to check their values (finite, angles in range,
            lengths in ``[0, Nk]``; one device sync).  Pass False for values checked once per run
            (:func:`check_coords`, :func:`check_key_lengths`): the call then never synchronises.
        quant: None (full precision), ``"fp8"``, ``"int8"`` or ``"int8+fp8"``: quantised attention
            (:mod:`baton_fast.quant`; no gradient or layout masks).  q and k may also be the
            :class:`~baton_fast.quant.QuantizedTensor` results of ``qk_rmsnorm_rope(..., quant=...)``
            (``rotate_q=rotate_k=False``).
        block_mask: optional :class:`~baton_fast.block_mask.BlockMask` for ``[B or 1, H or 1]``, ``Nq`` queries
            and ``Nk`` keys, on q's device (build it once per run): only its listed key blocks are visited, full
            blocks without a per-token mask (:mod:`baton_fast.block_sparse_op`).  Not with ``q_groups``
            (``BlockMask.from_groups`` turns layout masks into one).  On a GPU its block sizes must be a shipped
            tile of the kernel.  Not with ``quant``.
    Returns:
        ``out [B, Nq, H, D]`` in q's dtype, or ``(out, lse)``.  Rows with no key give zeros and ``lse = -inf``.
    """
    from . import quant as _quant

    if isinstance(q, _quant.QuantizedTensor) or isinstance(k, _quant.QuantizedTensor):
        return _quant.prequantized_attention(q, k, v, quant, rotate_q=rotate_q, rotate_k=rotate_k, k_lens=k_lens,
                                             scale=scale, return_lse=return_lse,
                                             masked=q_groups is not None or block_mask is not None)
    args = _attention_args(q, k, v, q_coords, k_coords, table, k_table, rotate_q, rotate_k, k_lens, scale)
    _check_layout_groups(q, k, q_groups, k_groups)
    scheme = _quant.scheme_for_call(quant, return_lse=return_lse, masked=q_groups is not None or block_mask is not None,
                                    grad=torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)))
    if block_mask is not None:
        _check_block_mask(block_mask, q, k, q_groups, scheme)
    if check_values:
        args = _attention_values_checked(args)
    if scheme is not None:
        return _quant.rope_attention(args, scheme, return_lse)
    if block_mask is not None:
        from .block_sparse_op import block_sparse_rope_attention
        out, lse = block_sparse_rope_attention(args, return_lse, block_mask)
        return (out, lse) if return_lse else out
    # the backward (baton_fast/autograd.py) recomputes scores from the LSE: compute it when a gradient is wanted
    need_lse = return_lse or (torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)))
    op = _rope_attention_impl if runs_directly(*args[:9], args[12], q_groups, k_groups) else _rope_attention_op
    out, lse = op(*args, need_lse, q_groups, k_groups)
    return (out, lse) if return_lse else out


def _check_block_mask(block_mask, q, k, q_groups, scheme) -> None:
    from .block_mask import BlockMask

    if not isinstance(block_mask, BlockMask):
        raise TypeError(f"block_mask: expected a baton_fast.BlockMask, got {type(block_mask).__name__}")
    if q_groups is not None:
        raise ValueError("block_mask, q_groups: pass one of them (BlockMask.from_groups turns layout masks into a "
                         "block mask)")
    if scheme is not None:
        raise ValueError("block_mask, quant: block-sparse attention runs unquantised; pass one of them")
    block_mask.check(q.shape[0], q.shape[2], q.shape[1], k.shape[1])
    if block_mask.device != q.device:
        raise ValueError(f"block_mask: expected it on q's device {q.device} (move it once per run with .to), "
                         f"got {block_mask.device}")


def _attention_values_checked(args: tuple) -> tuple:
    """The value checks of one attention call (see :func:`_values_checked`); returns the op's leading arguments."""
    q, k, v, q_coords, k_coords, qf, qa, kf, ka, layout, rotate_q, rotate_k, k_lens, scale = args
    coords, k_lens = _values_checked(_rotations(q_coords, qf, qa, rotate_q, k_coords, kf, ka, rotate_k), k_lens,
                                     k.shape[1])
    q_coords, k_coords = coords.get("q_coords", q_coords), coords.get("k_coords", k_coords)
    return q, k, v, q_coords, k_coords, qf, qa, kf, ka, layout, rotate_q, rotate_k, k_lens, scale


def _attention_args(q, k, v, q_coords, k_coords, table, k_table, rotate_q, rotate_k, k_lens, scale):
    """Check rope_attention's arguments; return the op's leading arguments."""
    _check_tensor("q", q, 4, "[B, Nq, H, D]")
    _check_tensor("k", k, 4, "[B, Nk, Hk, D]")
    _check_tensor("v", v, 4, "[B, Nk, Hk, D]")
    for name, x in (("q", q), ("k", k), ("v", v)):
        _check_float(name, x)
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"k, v: expected q's dtype {q.dtype}, got k {k.dtype}, v {v.dtype}")
    B, n_q, H, D = q.shape
    _, n_k, Hk, _ = k.shape
    if v.shape != k.shape:
        raise ValueError(f"v: expected the shape of k {tuple(k.shape)}, got {tuple(v.shape)}")
    if k.shape[0] != B or k.shape[3] != D:
        raise ValueError(f"k: expected [B={B}, Nk, Hk, D={D}] to match q, got {tuple(k.shape)}")
    _check_head_dim("q", D)
    if Hk < 1 or H % Hk:
        raise ValueError(f"k: expected a number of heads Hk dividing H={H} (grouped-query), got Hk={Hk}")
    # a side that is not rotated needs neither coordinates nor a table: pass identity placeholders
    if not rotate_q and q_coords is None:
        q_coords = _zero_coords(n_q, q.device)
    if not rotate_k and k_coords is None:
        k_coords = _zero_coords(n_k, q.device)
    if not (rotate_q or rotate_k) and table is None and k_table is None:
        table = _identity_table(D, q.device)
    elif not rotate_q and table is None:
        table = k_table  # only K is rotated: the query side's table is never read
    k_table_name = "k_table" if k_table is not None else "table (used as k_table)"
    k_table = table if k_table is None else k_table
    for name, t, used in (("table", table, rotate_q), (k_table_name, k_table, rotate_k)):
        if not isinstance(t, RopeTable):
            needed = "" if used else " (or None for both tables when neither side is rotated)"
            raise TypeError(f"{name}: expected a RopeTable{needed}, got {type(t).__name__}")
    _check_coords("q_coords", q_coords, B, n_q, table if rotate_q else None)
    _check_coords("k_coords", k_coords, B, n_k, k_table if rotate_k else None)
    if rotate_q:
        _check_table("table", table, H, D, q_coords)
    if rotate_k:
        _check_table(k_table_name, k_table, Hk, D, k_coords)
    if rotate_q and rotate_k and table.interleaved != k_table.interleaved:
        raise ValueError("k_table: expected the same pair layout (interleaved) as table")
    if k_lens is not None:
        _check_tensor("k_lens", k_lens, 1, f"[B={B}]")
        if k_lens.dtype not in (torch.int32, torch.int64) or k_lens.shape[0] != B:
            raise ValueError(f"k_lens: expected int32/int64 [B={B}], got {k_lens.dtype} {tuple(k_lens.shape)}")
        k_lens = k_lens.contiguous()  # the kernel reads k_lens[b] at unit stride
    _check_devices(q=q, k=k, v=v, q_coords=q_coords, k_coords=k_coords, k_lens=k_lens)
    scale = _check_scale(scale, D)
    layout = table.interleaved if rotate_q else k_table.interleaved
    qf, qa = _table_tensors("table", table, q.device)
    kf, ka = _table_tensors(k_table_name, k_table, q.device)
    return q, k, v, q_coords, k_coords, qf, qa, kf, ka, layout, rotate_q, rotate_k, k_lens, scale


def _check_layout_groups(q, k, q_groups, k_groups):
    if (q_groups is None) != (k_groups is None):
        raise ValueError("q_groups, k_groups: expected both layout bitmasks or neither")
    if q_groups is not None:
        _check_groups("q_groups", q_groups, q.shape[0], q.shape[1])
        _check_groups("k_groups", k_groups, k.shape[0], k.shape[1])
        _check_devices(q=q, q_groups=q_groups, k_groups=k_groups)


def layout_tile_stats(q, k, v, q_coords=None, k_coords=None, table: Optional[RopeTable] = None, *,
                      q_groups: torch.Tensor,
                      k_groups: torch.Tensor, k_table: Optional[RopeTable] = None, rotate_q: bool = True,
                      rotate_k: bool = True, k_lens: Optional[torch.Tensor] = None) -> dict:
    """Run the fused Triton kernel with its tile counter on and report how many key tiles it skipped.

    Same arguments as :func:`rope_attention` (layout bitmasks required).  Needs a CUDA device or
    ``TRITON_INTERPRET=1``.  Returns ``{"skipped": int, "visited": int, "block_m": int, "block_n": int}``,
    counted by the kernel itself (one counter per program).
    """
    from .kernels.rope_attention import _interpreting, launch_config, rope_attention_fwd

    (q, k, v, q_coords, k_coords, qf, qa, kf, ka, layout, rotate_q, rotate_k, k_lens, scale) = _attention_args(
        q, k, v, q_coords, k_coords, table, k_table, rotate_q, rotate_k, k_lens, None)
    _check_layout_groups(q, k, q_groups, k_groups)
    if q_groups is None:
        raise ValueError("q_groups, k_groups: layout_tile_stats needs the layout bitmasks")
    _check_values(_rotations(q_coords, qf, qa, rotate_q, k_coords, kf, ka, rotate_k), k_lens, k.shape[1])
    if q.device.type != "cuda" and not _interpreting():
        raise RuntimeError("layout_tile_stats runs the Triton kernel: needs a CUDA device or TRITON_INTERPRET=1")
    # the configuration the real call (no tile counter) launches: tuned on first use outside capture
    config = launch_config(q, k, v, q_coords, k_coords, qf, qa, kf, ka, layout, rotate_q=rotate_q, rotate_k=rotate_k,
                           k_lens=k_lens, scale=scale, return_lse=False, q_groups=q_groups, k_groups=k_groups)
    B, n_q, H, _ = q.shape
    block_m, block_n = config[:2]
    programs_m = -(-n_q // block_m)
    skipped = torch.zeros(B * H * programs_m, dtype=torch.int32, device=q.device)
    rope_attention_fwd(q, k, v, q_coords, k_coords, qf, qa, kf, ka, layout, rotate_q=rotate_q, rotate_k=rotate_k,
                       k_lens=k_lens, scale=scale, return_lse=False, q_groups=q_groups, k_groups=k_groups, skipped=skipped, config=config)
    lens = k_lens.long() if k_lens is not None else torch.full((B,), k.shape[1], dtype=torch.long)
    tiles_per_program = (-(-lens.cpu() // block_n)).repeat_interleave(H * programs_m)
    total = int(tiles_per_program.sum())
    n_skipped = int(skipped.sum())
    return {"skipped": n_skipped, "visited": total - n_skipped, "block_m": block_m, "block_n": block_n}
