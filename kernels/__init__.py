"""Triton kernels of baton-fast (installed as ``baton_fast.kernels``).

One file per kernel family: the jit kernel and its single host launcher.  Launchers
assume validated inputs; validation lives in :mod:`baton_fast.ops`.
"""
