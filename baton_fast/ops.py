"""Public ops: argument checking, backend dispatch and ``torch.library`` registration.

Each op is a ``torch.library.custom_op`` with a fake (meta) implementation, so
``torch.compile(fullgraph=True)`` traces through it.  Shape, dtype, device and scalar checks
run in the Python wrapper on host metadata (traceable, no device sync).  Checks that read
tensor values (finite coordinates, angles in the sin/cos range, key lengths in range) run
before the op when ``check_values=True`` (the default for direct calls); callers that checked
the values of a run once (:func:`check_coords`, :func:`check_key_lengths`: the model's
``prepare``, the diffusers rope modules) pass ``check_values=False``: the call then reads
nothing back from the device.

Backend: CUDA tensors run the Triton kernels, CPU tensors the reference path;
``BATON_FAST_BACKEND=triton`` forces Triton (with ``TRITON_INTERPRET=1`` the kernels run
on CPU) and ``BATON_FAST_BACKEND=reference`` forces the reference.

Layout, one module per job (this module gathers their public names, and the helpers that other
modules import from it):

- :mod:`baton_fast.validation`: host-metadata argument checks shared by every op, and :func:`backend_for`;
- :mod:`baton_fast.value_checks`: the checks that read values (``check_values=True``, ``check_coords``,
  ``check_key_lengths``, the op ``baton_fast::check_values``);
- :mod:`baton_fast.op_cache`: placeholders of unrotated sides and the PyTorch path's cos/sin cache;
- :mod:`baton_fast.attention_op`: ``rope_attention`` (op ``baton_fast::rope_attention``) and ``layout_tile_stats``;
- :mod:`baton_fast.norm_op`: ``apply_rope``, ``rmsnorm_rope``, ``qk_rmsnorm_rope`` (ops ``baton_fast::rmsnorm_rope``,
  ``baton_fast::qk_rmsnorm_rope``);
- :mod:`baton_fast.autograd`: the backward of every op.
"""
from __future__ import annotations

from .attention_op import _attention_args, _attention_on_triton, _check_layout_groups, layout_tile_stats, rope_attention
from .norm_op import NORM_MODES, apply_rope, qk_rmsnorm_rope, rmsnorm_rope
from .op_cache import _identity_table, _zero_coords
from .validation import MAX_HEAD_DIM, SUPPORTED_DTYPES, _check_float, _check_tensor, backend_for
from .value_checks import MAX_ANGLE, check_coords, check_key_lengths

__all__ = ["rope_attention", "apply_rope", "rmsnorm_rope", "qk_rmsnorm_rope", "layout_tile_stats", "backend_for",
           "check_coords", "check_key_lengths"]
