"""Native numerics: every kernel against float64 in fp16 and bf16, and every shipped attention tile.

Two lists of items, each checked with DESIGN.md §5's rule (:mod:`baton_fast.numerics`: max error at most
twice plain PyTorch's in the same dtype, plus a floor):

- :func:`selftest_items`: the ``baton-fast selftest`` cases (all three ops, their flag combinations,
  odd sizes) through the public ops, which on a GPU run the Triton kernels with the configuration the
  op picks itself (:func:`baton_fast.selftest.case_records`; fp16 and bf16 there);
- :func:`config_items`: the fused attention kernel launched directly in each configuration of
  ``SHIPPED_CONFIGS`` for this GPU's arch, both families (``plain``: nothing rotated, key lengths,
  LSE; ``fused``: Q and K rotated in the kernel with key lengths and LSE, and once per padded head
  dim with layout bitmasks), at odd sizes (``Nq = 257`` over several query tiles, ``Nk = 130`` with
  one batch row cut to 17 keys), grouped-query heads, interleaved and split pair layouts.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable, Optional

import torch

from baton_fast import numerics, reference, selftest
from baton_fast.bench.report import GPU_NUMERICS_SECTION

from .results import record

__all__ = ["DTYPES", "HEAD_DIMS", "ConfigCase", "config_cases", "selftest_items", "config_items"]

DTYPES = (torch.float16, torch.bfloat16)
# padded half head dim -> the head dims checked with the first and the second shipped configuration
# (the second one not a power of two where the padded width allows it: masked lanes)
HEAD_DIMS = {16: (32, 24), 32: (64, 48), 64: (128, 80), 128: (256, 160)}
SHAPE = dict(B=2, Nq=257, Nk=130, H=4, Hk=2)  # batch row 1 sees only K_LEN_CUT keys
K_LEN_CUT = 17
SHAPE_KEYS = ("B", "N", "Nq", "Nk", "H", "Hk", "D")


@dataclass(frozen=True)
class ConfigCase:
    """One direct launch of the attention kernel in a shipped ``config`` (BLOCK_M, BLOCK_N, warps, stages)."""

    family: str        # "plain" or "fused" (kernels.rope_attention.kernel_family)
    config: tuple
    D: int
    dtype: torch.dtype
    rotate_q: bool
    rotate_k: bool
    groups: bool       # layout bitmasks
    rope: str          # "wan" (interleaved, shared table) or "ltx2_split" (per-head split tables)

    @property
    def name(self) -> str:
        flags = [f for f, on in (("rotate Q", self.rotate_q), ("rotate K", self.rotate_k), ("groups", self.groups))
                 if on] or ["pre-rotated"]
        return (f"{self.family} {'x'.join(map(str, self.config))} D{self.D} {self.rope}: "
                f"{', '.join(flags)}, k_lens, lse")


def config_cases(arch_major: int, dtypes=DTYPES) -> list[ConfigCase]:
    """Every shipped configuration of the arch (SM major ``>= 9``: the sm_90 list) in each dtype."""
    from baton_fast.kernels.rope_attention import SHIPPED_CONFIGS

    arch = 9 if arch_major >= 9 else 8
    cases = []
    for (cfg_arch, half_pad, family), configs in SHIPPED_CONFIGS.items():
        if cfg_arch != arch:
            continue
        for index, config in enumerate(configs):
            D, rope = HEAD_DIMS[half_pad][index % 2], ("wan", "ltx2_split")[index % 2]
            if family == "plain":
                variants = [(False, False, False)]
            else:  # layout bitmasks once per padded head dim (their code path does not depend on the tile)
                variants = [(True, True, False)] + ([(True, False, True)] if index == 0 else [])
            cases += [ConfigCase(family, tuple(config), D, dtype, rq, rk, groups, rope)
                      for rq, rk, groups in variants for dtype in dtypes]
    return cases


def _check_config_case(case: ConfigCase, device, seed: int, shape: dict, launch: Optional[Callable] = None) -> list:
    """``[(output, ErrorCheck)]`` of one direct launch against the float64 reference."""
    from baton_fast.kernels.rope_attention import rope_attention_fwd

    launch = launch or rope_attention_fwd
    B, n_q, n_k, H, Hk, D = shape["B"], shape["Nq"], shape["Nk"], shape["H"], shape["Hk"], case.D
    g = torch.Generator().manual_seed(seed)
    table, k_table, span = selftest._tables(case.rope, D, H, Hk)
    table, k_table = table.to(device), k_table.to(device)

    def rand(*size):
        return torch.randn(*size, generator=g, dtype=torch.float64).to(device, case.dtype)

    def coords(n):
        return ((torch.rand(B, n, 3, generator=g, dtype=torch.float64) * 2 - 1) * span).to(device, torch.float32)

    q, k, v = rand(B, n_q, H, D), rand(B, n_k, Hk, D), rand(B, n_k, Hk, D)
    q_coords, k_coords = coords(n_q), coords(n_k)
    k_lens = torch.tensor([n_k, min(K_LEN_CUT, n_k)][:B] + [n_k] * (B - 2), device=device, dtype=torch.int32)
    groups = {}
    if case.groups:  # 3 group bits; some tokens in none
        groups = dict(q_groups=torch.randint(0, 8, (B, n_q), generator=g).to(device),
                      k_groups=torch.randint(0, 8, (B, n_k), generator=g).to(device))
    rope = dict(rotate_q=case.rotate_q, rotate_k=case.rotate_k, k_lens=k_lens)
    out, lse = launch(q, k, v, q_coords, k_coords, table.freqs, table.axes, k_table.freqs, k_table.axes,
                      table.interleaved, scale=1 / math.sqrt(D), return_lse=True, config=case.config, **rope, **groups)
    plain = reference.rope_attention(q, k, v, q_coords, k_coords, table, k_table=k_table, return_lse=True, **rope,
                                     **groups)
    ref64 = reference.rope_attention(q.double(), k.double(), v.double(), q_coords, k_coords, table, k_table=k_table,
                                     return_lse=True, **rope, **groups)
    return [("out", numerics.check(out, plain[0], ref64[0], case.dtype)),
            ("lse", numerics.check(lse, plain[1], ref64[1], case.dtype))]


def config_items(arch_major: int, device, where: str, seed: int = 0, shape: dict = SHAPE, dtypes=DTYPES,
                 launch: Optional[Callable] = None) -> list[tuple[str, Callable[[], list]]]:
    """``(label, task)`` per shipped configuration case; a task returns its records (one per output).
    ``launch`` replaces the kernel's launcher (tests)."""
    def task(case: ConfigCase, index: int):
        checks = _check_config_case(case, device, seed * 1000 + index, shape, launch)
        params = dict(asdict(case), dtype=str(case.dtype).removeprefix("torch."))
        return [record(GPU_NUMERICS_SECTION, f"rope_attention: {case.name}", "triton, shipped config", "max abs error",
                       check.error, "", device=where, shape=dict(shape, D=case.D), dtype=params["dtype"],
                       kernel="rope_attention", output=output, budget=check.budget, baseline=check.baseline,
                       ok=check.ok, config=list(case.config), family=case.family, params=params)
                for output, check in checks]

    cases = config_cases(arch_major, dtypes)
    return [(case.name, lambda case=case, i=i: task(case, i)) for i, case in enumerate(cases)]


def selftest_items(where: str, seed: int = 0) -> list[tuple[str, Callable[[], list]]]:
    """``(label, task)`` per selftest case (every kernel through its op, fp16 and bf16 on a GPU)."""
    def task(index: int):
        return [record(GPU_NUMERICS_SECTION, f"{r['kernel']}: {r['case']}", "op (config picked by the op)",
                       "max abs error", r["error"], "", device=where,
                       shape={k: v for k, v in r["params"].items() if k in SHAPE_KEYS}, dtype=r["dtype"],
                       kernel=r["kernel"], output=r["output"], budget=r["budget"], baseline=r["baseline"], ok=r["ok"],
                       config=None)
                for r in selftest.case_records(index, seed)]

    cases = selftest.ATTENTION_CASES + selftest.ROPE_CASES
    return [(case.name, lambda i=i: task(i)) for i, case in enumerate(cases)]
