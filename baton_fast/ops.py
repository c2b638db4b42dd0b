"""Public ops: argument checking, backend dispatch and ``torch.library`` registration.

Each op is a ``torch.library.custom_op`` with a fake (meta) implementation, so
``torch.compile(fullgraph=True)`` traces through it.  Shape, dtype, device and scalar checks
run in the Python wrapper on host metadata (traceable, no device sync).  Checks that read
tensor values (finite coordinates, angles in the sin/cos range, key lengths in range) run
before the op when ``check_values=True`` (the default for direct calls): in eager mode in the
wrapper, with one read-back per call; under ``torch.compile`` inside the op
``baton_fast::check_values``, whose outputs (copies of the checked coordinates and key lengths)
feed the op, so that the compiled graph keeps it.  Callers that checked the values of a run once
(:func:`check_coords`, :func:`check_key_lengths`: the model's ``prepare``, the diffusers rope
modules) pass ``check_values=False``: the call then reads nothing back from the device.

Backend: CUDA tensors run the Triton kernels, CPU tensors the reference path;
``BATON_FAST_BACKEND=triton`` forces Triton (with ``TRITON_INTERPRET=1`` the kernels run
on CPU) and ``BATON_FAST_BACKEND=reference`` forces the reference.
"""
from __future__ import annotations

import collections
import math
import numbers
import os
import weakref
from typing import Optional

import torch

from . import reference
from .rope import RopeTable

__all__ = ["rope_attention", "apply_rope", "rmsnorm_rope", "qk_rmsnorm_rope", "layout_tile_stats", "backend_for",
           "check_coords", "check_key_lengths"]

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 256


def backend_for(device: torch.device) -> str:
    """``"triton"`` or ``"reference"`` for tensors on ``device`` (see module docstring)."""
    choice = os.environ.get("BATON_FAST_BACKEND", "auto")
    if choice not in ("auto", "triton", "reference"):
        raise ValueError(f"BATON_FAST_BACKEND: expected 'auto', 'triton' or 'reference', got {choice!r}")
    if choice == "auto":
        return "triton" if device.type == "cuda" else "reference"
    return choice


# --------------------------------------------------------------------------- checks
def _check_tensor(name, x, rank, shape_doc):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a tensor {shape_doc}, got {type(x).__name__}")
    if x.dim() != rank:
        raise ValueError(f"{name}: expected {shape_doc} ({rank} dims), got shape {tuple(x.shape)}")


def _check_float(name, x):
    if x.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{name}: expected float16, bfloat16 or float32, got {x.dtype}")


def _check_head_dim(name, d):
    if d % 2 or d < 2 or d > MAX_HEAD_DIM:
        raise ValueError(f"{name}: expected an even head dim between 2 and {MAX_HEAD_DIM}, got {d}")


def _check_coords(name, coords, batch, tokens, table: Optional[RopeTable]):
    _check_tensor(name, coords, 3, "[B or 1, N, A]")
    if coords.dtype != torch.float32:
        raise TypeError(f"{name}: expected float32 coordinates, got {coords.dtype}")
    if coords.shape[0] not in (1, batch) or coords.shape[1] != tokens:
        raise ValueError(f"{name}: expected shape [1 or {batch}, {tokens}, A], got {tuple(coords.shape)}")
    if table is not None and coords.shape[2] < table.num_axes:
        raise ValueError(f"{name}: the table reads axis {table.num_axes - 1}, but coordinates have "
                         f"{coords.shape[2]} axes")


def _check_table(name, table, heads, head_dim, coords):
    if not isinstance(table, RopeTable):
        raise TypeError(f"{name}: expected a RopeTable, got {type(table).__name__}")
    table.check(name, heads, head_dim, coords.shape[2])


def _check_number(name, value, doc):
    """Raise TypeError unless ``value`` is a real number (bool and tensors refused: their conversion would read
    a device value or hide a mistake), ValueError unless it is finite.  Returns it as a float.  Under
    torch.compile the number may be symbolic: its type is checked, its value in eager runs."""
    if isinstance(value, (torch.SymFloat, torch.SymInt)):
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        hint = " (pass float(x) for a one-element tensor)" if isinstance(value, torch.Tensor) else ""
        raise TypeError(f"{name}: expected a number ({doc}), got {type(value).__name__}{hint}")
    if torch.compiler.is_compiling():
        return value
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name}: expected a finite number ({doc}), got {value}")
    return value


def _check_scale(scale, head_dim):
    """The softmax scale to use: ``1/sqrt(D)`` for None, else a checked number."""
    if scale is None:
        return 1.0 / math.sqrt(head_dim)  # a SymFloat under torch.compile(dynamic=True)
    return _check_number("scale", scale, "the softmax scale")


def _check_eps(eps):
    eps = _check_number("eps", eps, "the RMSNorm epsilon, >= 0")
    if not torch.compiler.is_compiling() and eps < 0:
        raise ValueError(f"eps: expected a finite number >= 0, got {eps!r}")
    return eps


def _check_devices(**tensors):
    devices = {n: t.device for n, t in tensors.items() if isinstance(t, torch.Tensor)}
    if len(set(devices.values())) > 1:
        listing = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise ValueError(f"expected all tensors on one device, got {listing}")


def _check_groups(name, groups, batch, tokens):
    _check_tensor(name, groups, 2, f"[1 or {batch}, {tokens}]")
    if groups.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"{name}: expected int32 or int64 bitmasks, got {groups.dtype}")
    if groups.shape[0] not in (1, batch) or groups.shape[1] != tokens:
        raise ValueError(f"{name}: expected shape [1 or {batch}, {tokens}], got {tuple(groups.shape)}")


# Angles the kernels' sin/cos reduce exactly (kernels/rope_math.py: |phi| < 2**16 * pi/2).
MAX_ANGLE = 2 ** 16 * math.pi / 2


def _check_values(rotations, k_lens, n_k):
    """Value checks (they read tensor data, one transfer), before any launch.

    ``rotations``: ``{coords name: (coords, freqs, axes)}`` for every side that is rotated: coordinates
    must be finite and the angles ``|c[axis] * f|`` below :data:`MAX_ANGLE`.  Skipped while a CUDA graph
    is being captured: reading values synchronises, which capture forbids (the eager warm-up calls
    before the capture ran the checks on the same buffers)."""
    if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
        return
    # every statistic is reduced on the device and read back in one transfer (one sync per call)
    names = [name for name, (c, _, _) in rotations.items() if c.numel()]
    stats = []
    for name in names:
        c, freqs, axes = rotations[name]
        stats += [torch.isfinite(c).all().double(), (c.abs().amax(dim=(0, 1))[axes.long()] * freqs).max().double()]
    if k_lens is not None and k_lens.numel():
        stats += [k_lens.min().double(), k_lens.max().double()]
    if not stats or stats[0].is_meta:  # meta tensors (shape-only runs: FLOP counts) hold no values
        return
    values = torch.stack(stats).tolist()
    for i, name in enumerate(names):
        finite, reach = values[2 * i], values[2 * i + 1]
        if not finite:
            raise ValueError(f"{name}: expected finite coordinates, found NaN or inf")
        if reach >= MAX_ANGLE:
            raise ValueError(f"{name}: rotation angles reach {reach:.4g} rad; the kernels' sin/cos are exact below "
                             f"{MAX_ANGLE:.4g} rad (2^16 pi/2): map the coordinates affinely (e.g. 2c/max - 1) "
                             f"or lower the table's frequencies")
    if len(values) > 2 * len(names):
        lo, hi = int(values[-2]), int(values[-1])
        if lo < 0 or hi > n_k:
            raise ValueError(f"k_lens: expected values in [0, {n_k}] (number of keys), got range [{lo}, {hi}]")


@torch.library.custom_op("baton_fast::check_values", mutates_args=())
def _check_values_op(coords: list[torch.Tensor], freqs: list[torch.Tensor], axes: list[torch.Tensor], names: str,
                     k_lens: Optional[torch.Tensor], n_k: int) -> list[torch.Tensor]:
    """:func:`_check_values` as an op, for ``torch.compile``: returns copies of ``coords`` (then of ``k_lens``),
    which the caller passes on to the checked op, so that the graph cannot drop the check."""
    _check_values(dict(zip(names.split(",") if names else [], zip(coords, freqs, axes))), k_lens, n_k)
    return [c.clone() for c in coords] + ([k_lens.clone()] if k_lens is not None else [])


@_check_values_op.register_fake
def _(coords, freqs, axes, names, k_lens, n_k):
    return [torch.empty_like(c) for c in coords] + ([torch.empty_like(k_lens)] if k_lens is not None else [])


def _values_checked(rotations: dict, k_lens, n_k):
    """Check the values of one call before its op; returns ``(coords by name, k_lens)`` to pass to the op (under
    torch.compile, the check op's copies; else the inputs themselves)."""
    coords = {name: side[0] for name, side in rotations.items()}
    if not torch.compiler.is_compiling():
        _check_values(rotations, k_lens, n_k)
        return coords, k_lens
    if not rotations and k_lens is None:
        return coords, k_lens
    sides = list(rotations.values())
    checked = _check_values_op([c for c, _, _ in sides], [f for _, f, _ in sides], [a for _, _, a in sides],
                               ",".join(rotations), k_lens, n_k)
    return dict(zip(rotations, checked)), (checked[-1] if k_lens is not None else None)


def check_coords(coords: torch.Tensor, table: RopeTable, name: str = "coords") -> torch.Tensor:
    """The value checks of a rotated side, once: ``coords`` float32 ``[B or 1, N, A]`` must be finite and their
    angles under ``table`` below :data:`MAX_ANGLE`.  Reads one value pair back from the device.  Run it where a
    run is prepared, then call the ops with ``check_values=False`` on these coordinates.  Returns the
    coordinates to use (under torch.compile a copy made by the check op, which keeps the check in the graph)."""
    _check_coords(name, coords, coords.shape[0], coords.shape[1], table)
    freqs, axes = _table_tensors("table", table, coords.device)
    checked, _ = _values_checked({name: (coords, freqs, axes)}, None, 0)
    return checked[name]


def check_key_lengths(k_lens: torch.Tensor, n_keys: int) -> None:
    """The value check of key lengths, once: integer ``[B]`` values in ``[0, n_keys]`` (one read-back)."""
    _check_tensor("k_lens", k_lens, 1, "[B]")
    if k_lens.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"k_lens: expected int32/int64 key lengths, got {k_lens.dtype}")
    _check_values({}, k_lens, n_keys)


def _table_tensors(name, table: RopeTable, device):
    """``(freqs, axes)`` of a checked table on ``device`` (no copy when it is there already: move tables once)."""
    if table.freqs.device.type == "meta" and device.type != "meta":
        raise ValueError(f"{name}: the RopeTable is on the meta device (shapes only, no values); build it on "
                         f"{device} or move it there with .to(device)")
    return table.freqs.to(device).contiguous(), table.axes.to(device).contiguous()


# Placeholders of the sides that are not rotated, cached per device so that no call allocates them.  Under
# torch.compile they are built in the graph instead (the compiled graph owns its constants).
_PLACEHOLDERS: dict = {}


def _cached(key, build):
    if torch.compiler.is_compiling():
        return build()
    value = _PLACEHOLDERS.get(key)
    if value is None:
        value = _PLACEHOLDERS[key] = build()
    return value


def _zero_coords(tokens: int, device) -> torch.Tensor:
    """float32 ``[1, tokens, 1]`` zeros (a token that is not rotated): a zero-stride view of one cached zero."""
    return _cached(("zero", device), lambda: torch.zeros((1, 1, 1), device=device)).expand(1, tokens, 1)


def _identity_table(head_dim: int, device) -> RopeTable:
    """:meth:`RopeTable.identity` for ``head_dim``, cached per ``(head_dim, device)``."""
    return _cached(("identity", head_dim, device), lambda: RopeTable.identity(head_dim, device))


# ----------------------------------------------------------------- rope_attention op
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


@torch.library.custom_op("baton_fast::rope_attention", mutates_args=())
def _rope_attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_coords: torch.Tensor,
                       k_coords: torch.Tensor, q_freqs: torch.Tensor, q_axes: torch.Tensor, k_freqs: torch.Tensor,
                       k_axes: torch.Tensor, interleaved: bool, rotate_q: bool, rotate_k: bool,
                       k_lens: Optional[torch.Tensor], scale: float, return_lse: bool,
                       q_groups: Optional[torch.Tensor], k_groups: Optional[torch.Tensor]
                       ) -> tuple[torch.Tensor, torch.Tensor]:
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
        qt = RopeTable.trusted(q_freqs, q_axes, interleaved, q_coords.shape[2])
        kt = RopeTable.trusted(k_freqs, k_axes, interleaved, k_coords.shape[2])
        rope = dict(k_table=kt, rotate_q=rotate_q, rotate_k=rotate_k, k_lens=k_lens, scale=scale)
        if return_lse or q_groups is not None:
            out, lse = reference.rope_attention(q, k, v, q_coords, k_coords, qt, return_lse=True, q_groups=q_groups,
                                                k_groups=k_groups, **rope)
        else:
            out = reference.sdpa_rope_attention(q, k, v, q_coords, k_coords, qt, **rope)
        out = out.to(q.dtype).contiguous()  # the fake impl promises a contiguous output
    return out, (lse.contiguous() if return_lse else q.new_empty((0,), dtype=torch.float32))


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
            (:mod:`baton_fast.quant`; no LSE, gradient or layout masks).  q and k may also be the
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
        return _quant.rope_attention(args, scheme)
    if block_mask is not None:
        from .block_sparse_op import block_sparse_rope_attention
        out, lse = block_sparse_rope_attention(args, return_lse, block_mask)
        return (out, lse) if return_lse else out
    # the backward (baton_fast/autograd.py) recomputes scores from the LSE: compute it when a gradient is wanted
    need_lse = return_lse or (torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)))
    out, lse = _rope_attention_op(*args, need_lse, q_groups, k_groups)
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


# ------------------------------------------------------------- rmsnorm + rope op
NORM_MODES = {"none": 0, "head": 1, "across_heads": 2}


def _rmsnorm_rope_run(sides, norm, eps):
    """RMSNorm (mode ``norm``) then RoPE of each checked side ``(x, coords, freqs, axes, interleaved, weight)``, on
    the selected backend.  The PyTorch path (torch's fused RMSNorm, then the reference rotation) takes cos/sin from
    :data:`_COS_SIN` and skips the rotation by the cached identity table (RMSNorm alone)."""
    outs = []
    for x, coords, freqs, axes, interleaved, weight in sides:
        if backend_for(x.device) == "triton" and x.numel():
            from .kernels.rope_norm import rmsnorm_rope_fwd
            outs.append(rmsnorm_rope_fwd(x, coords, freqs, axes, interleaved, norm=norm, weight=weight, eps=eps))
            continue
        if norm:
            x = reference.fused_rms_norm(x, weight, eps, across_heads=norm == 2)
        if not _is_identity(freqs):
            x = reference.rotate(x, *_COS_SIN.get(coords, freqs, axes, interleaved, x.dtype), interleaved)
        outs.append(x.contiguous())
    return outs


class _CosSinCache:
    """cos/sin of the PyTorch path for the coordinates of the last few calls.  The layers of a forward rotate by
    the same coordinate tensors (and q and k of a self-attention by the same ones), so the CPU path computes
    their cos/sin once per forward, as diffusers does.  An entry is reused only while its coordinate and table
    tensors are alive and unchanged (same objects, same version counters); inference-mode tensors, which have no
    version counter, are not cached.  Entries of dead coordinates are dropped at the next miss."""

    SIZE = 8

    def __init__(self):
        self._entries = collections.OrderedDict()

    def get(self, coords, freqs, axes, interleaved: bool, dtype):
        """``(cos, sin)`` ``[B or 1, N, Ht, D/2]`` in ``dtype`` of ``coords`` under the table ``(freqs, axes)``."""
        try:
            key = (id(coords), coords._version, id(freqs), freqs._version, id(axes), axes._version, dtype)
        except RuntimeError:  # inference tensor
            return reference.rope_cos_sin(coords, RopeTable.trusted(freqs, axes, interleaved, coords.shape[2]), dtype)
        entry = self._entries.get(key)
        if entry is not None and all(ref() is t for ref, t in zip(entry[0], (coords, freqs, axes))):
            self._entries.move_to_end(key)
            return entry[1]
        for stale in [k for k, (refs, _) in self._entries.items() if any(ref() is None for ref in refs)]:
            del self._entries[stale]
        value = reference.rope_cos_sin(coords, RopeTable.trusted(freqs, axes, interleaved, coords.shape[2]), dtype)
        self._entries[key] = (tuple(weakref.ref(t) for t in (coords, freqs, axes)), value)
        if len(self._entries) > self.SIZE:
            self._entries.popitem(last=False)
        return value


_COS_SIN = _CosSinCache()


def _is_identity(freqs: torch.Tensor) -> bool:
    """Whether ``freqs`` are those of the cached identity table (checked by identity: no value read)."""
    identity = _PLACEHOLDERS.get(("identity", 2 * freqs.shape[1], freqs.device))
    return identity is not None and freqs is identity.freqs


@torch.library.custom_op("baton_fast::rmsnorm_rope", mutates_args=())
def _rmsnorm_rope_op(x: torch.Tensor, coords: torch.Tensor, freqs: torch.Tensor, axes: torch.Tensor,
                     interleaved: bool, weight: Optional[torch.Tensor], norm: int, eps: float) -> torch.Tensor:
    return _rmsnorm_rope_run([(x, coords, freqs, axes, interleaved, weight)], norm, eps)[0]


@_rmsnorm_rope_op.register_fake
def _(x, coords, freqs, axes, interleaved, weight, norm, eps):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


# q and k in one op: one dispatch, and the reference path shares cos/sin between them
@torch.library.custom_op("baton_fast::qk_rmsnorm_rope", mutates_args=())
def _qk_rmsnorm_rope_op(q: torch.Tensor, q_coords: torch.Tensor, q_freqs: torch.Tensor, q_axes: torch.Tensor,
                        q_interleaved: bool, q_weight: Optional[torch.Tensor], k: torch.Tensor, k_coords: torch.Tensor,
                        k_freqs: torch.Tensor, k_axes: torch.Tensor, k_interleaved: bool,
                        k_weight: Optional[torch.Tensor], norm: int, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    q, k = _rmsnorm_rope_run([(q, q_coords, q_freqs, q_axes, q_interleaved, q_weight),
                              (k, k_coords, k_freqs, k_axes, k_interleaved, k_weight)], norm, eps)
    return q, k


@_qk_rmsnorm_rope_op.register_fake
def _(q, q_coords, q_freqs, q_axes, q_interleaved, q_weight, k, k_coords, k_freqs, k_axes, k_interleaved, k_weight,
      norm, eps):
    return (torch.empty_like(q, memory_format=torch.contiguous_format),
            torch.empty_like(k, memory_format=torch.contiguous_format))


def _rmsnorm_rope_args(name, x, coords, table, norm, weight, coords_name, weight_name, table_name):
    """Check one side's arguments; return ``(x, coords, freqs, axes, interleaved, weight)`` for the ops."""
    _check_tensor(name, x, 4, "[B, N, H, D]")
    _check_float(name, x)
    B, N, H, D = x.shape
    _check_head_dim(name, D)
    _check_coords(coords_name, coords, B, N, table if isinstance(table, RopeTable) else None)
    _check_table(table_name, table, H, D, coords)
    if weight is not None:
        _check_tensor(weight_name, weight, 1, "[D] or [H*D]")
        expected = H * D if norm == 2 else D
        if weight.shape[0] != expected:
            raise ValueError(f"{weight_name}: expected shape [{expected}], got {tuple(weight.shape)}")
        _check_float(weight_name, weight)
        weight = weight.contiguous()  # the kernel indexes the weight at unit stride
    _check_devices(**{name: x, coords_name: coords, weight_name: weight})
    freqs, axes = _table_tensors(table_name, table, x.device)
    return x, coords, freqs, axes, table.interleaved, weight


def _norm_only_placeholders(name, x, coords, table):
    """``(coords, table)`` of a side: the given ones, or, when neither is given (RMSNorm alone), a zero coordinate
    and the identity table; the third value says whether the side is rotated."""
    if coords is not None or table is not None:
        return coords, table, True
    _check_tensor(name, x, 4, "[B, N, H, D]")
    _check_head_dim(name, x.shape[3])
    return _zero_coords(x.shape[1], x.device), _identity_table(x.shape[3], x.device), False


def _sides_values_checked(named_sides, check_values):
    """The value checks of the rotated sides of a norm/rope call; returns the sides with their checked coords.
    ``named_sides``: ``(coords name, side args, rotated)`` per side."""
    if not check_values:
        return [side for _, side, _ in named_sides]
    rotations = {name: (side[1], side[2], side[3]) for name, side, rotated in named_sides if rotated}
    coords, _ = _values_checked(rotations, None, 0)
    return [side[:1] + (coords.get(name, side[1]),) + side[2:] for name, side, _ in named_sides]


def apply_rope(x: torch.Tensor, coords: torch.Tensor, table: RopeTable, *, check_values: bool = True
               ) -> torch.Tensor:
    """Rotate ``x [B, N, H, D]`` (fp16/bf16/fp32) by float32 coordinates ``[B or 1, N, A]``.

    Returns a contiguous tensor of x's shape and dtype.  ``check_values`` as in :func:`rope_attention`."""
    args = _rmsnorm_rope_args("x", x, coords, table, 0, None, "coords", "weight", "table")
    (args,) = _sides_values_checked([("coords", args, True)], check_values)
    return _rmsnorm_rope_op(*args, NORM_MODES["none"], 0.0)


def rmsnorm_rope(x: torch.Tensor, coords: Optional[torch.Tensor] = None, table: Optional[RopeTable] = None, *,
                 weight: Optional[torch.Tensor] = None, eps: float = 1e-6, across_heads: bool = True,
                 check_values: bool = True) -> torch.Tensor:
    """RMSNorm then RoPE of one tensor ``x [B, N, H, D]`` in one pass (a query whose keys were rotated once and
    cached, e.g. the plan cross-attention).  ``weight``: ``[H*D]`` (``across_heads``) or ``[D]``; coordinates and
    table as :func:`apply_rope`, or neither (RMSNorm alone).  Returns a contiguous tensor of x's shape and dtype."""
    norm = NORM_MODES["across_heads" if across_heads else "head"]
    eps = _check_eps(eps)
    coords, table, rotated = _norm_only_placeholders("x", x, coords, table)
    args = _rmsnorm_rope_args("x", x, coords, table, norm, weight, "coords", "weight", "table")
    (args,) = _sides_values_checked([("coords", args, rotated)], check_values)
    return _rmsnorm_rope_op(*args, norm, eps)


def qk_rmsnorm_rope(q, k, q_coords=None, k_coords=None, table: Optional[RopeTable] = None, *, q_weight=None,
                    k_weight=None, k_table: Optional[RopeTable] = None, eps: float = 1e-6, across_heads: bool = True,
                    check_values: bool = True, quant: Optional[str] = None):
    """RMSNorm then RoPE for q ``[B, N, H, D]`` and k ``[B, Nk, Hk, D]``, one pass each.

    ``across_heads=True`` normalises over the whole inner dim ``H*D`` (Wan, LTX-2; weights ``[H*D]``),
    ``False`` per head (weights ``[D]``).  Returns ``(q_rot, k_rot)``, contiguous, in the inputs' dtypes;
    pass ``k_rot`` to :func:`rope_attention` with ``rotate_k=False``.  With no table (and no coordinates)
    it is the RMSNorm alone (text cross-attention).  ``check_values`` as in :func:`rope_attention`.
    ``quant="fp8"`` / ``"int8"`` / ``"int8+fp8"``: the same pass also quantises (K smoothed by its token mean first)
    and returns two :class:`~baton_fast.quant.QuantizedTensor` for ``rope_attention`` (:mod:`baton_fast.quant`).
    """
    norm = NORM_MODES["across_heads" if across_heads else "head"]
    eps = _check_eps(eps)
    rotated = True
    if table is None and k_table is None and q_coords is None and k_coords is None:
        q_coords, table, rotated = _norm_only_placeholders("q", q, None, None)
        _check_tensor("k", k, 4, "[B, Nk, Hk, D]")
        if k.shape[3] != q.shape[3]:
            raise ValueError(f"k: expected head dim {q.shape[3]} (q's), got {k.shape[3]}")
        k_coords = _zero_coords(k.shape[1], k.device)
    k_table_name = "k_table" if k_table is not None else "table (used as k_table)"
    k_table = table if k_table is None else k_table
    q_args = _rmsnorm_rope_args("q", q, q_coords, table, norm, q_weight, "q_coords", "q_weight", "table")
    k_args = _rmsnorm_rope_args("k", k, k_coords, k_table, norm, k_weight, "k_coords", "k_weight", k_table_name)
    _check_devices(q=q, k=k)
    q_args, k_args = _sides_values_checked([("q_coords", q_args, rotated), ("k_coords", k_args, rotated)],
                                           check_values)
    if quant is not None:
        from . import quant as _quant
        return _quant.quantize_qk(q_args, k_args, norm, eps, quant, rotate=rotated)
    return _qk_rmsnorm_rope_op(*q_args, *k_args, norm, eps)
