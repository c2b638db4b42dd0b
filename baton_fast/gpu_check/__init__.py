"""``baton-fast gpu-check``: the one prepared command for a lent GPU (see docs/gpu_check.md).

Parts: :mod:`.native` (every kernel against float64 in fp16 and bf16, every shipped tile),
:mod:`.graph` (a tiny-preset denoise step captured in a CUDA graph and replayed against eager),
:mod:`.timings` (the fused kernels against SDPA + RoPE, FlexAttention, flash-attn, xformers at the
Ovi, Wan and LTX-2 shapes); :mod:`.results` is the JSON they fill, :mod:`.command` runs them within a
time budget.  Importing this package first maps ``kernels/`` and ``bench/`` of a source checkout
(:mod:`.checkout`), so the command also runs without ``pip install``.
"""
from .checkout import map_checkout_packages

map_checkout_packages()
