"""``baton-fast selftest``: every kernel against the float64 reference, or (``--static``) its machine code.

Without ``--static`` each kernel runs through the Triton backend of this machine (the interpreter on
CPU, ``TRITON_INTERPRET=1``, in float32, float16 and bfloat16, bf16 dots widened to fp32 there, see
``kernels/rope_attention.py``; on a GPU natively in float16 and bfloat16) on fresh random inputs with odd sizes, and is
held to DESIGN.md §5: its max error against the float64 reference must be at most twice the error of
the plain PyTorch implementation in the same dtype, plus a small floor (:mod:`baton_fast.numerics`).
With ``--static`` every shipped configuration is compiled for sm_90 and sm_80
(:mod:`baton_fast.static_check`).  Either way a table is printed, ``--json PATH`` writes the records,
and the exit code is 1 when any record fails.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from dataclasses import asdict, dataclass
from typing import Optional

import torch

from . import numerics, reference, static_check
from .rope import RopeTable

# CPU (interpreter): fp32, fp16 and bf16 (bf16 dots run widened to fp32 there: the interpreter would
# multiply raw bf16 bit patterns, see kernels/rope_attention.py); GPU: the kernels' 16-bit dtypes (fp32 on
# a GPU takes the PyTorch path, see ops._attention_on_triton).
DTYPES = {"cpu": (torch.float32, torch.float16, torch.bfloat16), "cuda": (torch.float16, torch.bfloat16)}


# --------------------------------------------------------------------------- cases
@dataclass(frozen=True)
class AttentionCase:
    """One rope_attention call: q ``[B, Nq, H, D]``, k/v ``[B, Nk, Hk, D]`` and the op's flags."""
    name: str
    family: str  # "wan", "ovi_av" or "ltx2_split"
    B: int
    Nq: int
    Nk: int
    H: int
    Hk: int
    D: int
    rotate_q: bool = True
    rotate_k: bool = True
    k_lens: Optional[tuple] = None
    return_lse: bool = False
    layout_groups: bool = False


@dataclass(frozen=True)
class RopeCase:
    """apply_rope (``norm=None``) or qk_rmsnorm_rope (``norm`` "across_heads" / "head") on ``[B, N, H, D]``."""
    name: str
    family: str
    B: int
    N: int
    H: int
    D: int
    norm: Optional[str] = None
    weight: bool = False
    Nk: int = 0
    Hk: int = 0


ATTENTION_CASES = (
    AttentionCase("wan self-attention", "wan", 2, 33, 33, 2, 2, 64),
    AttentionCase("plain: Q, K pre-rotated, no lse", "wan", 2, 40, 40, 4, 2, 128, rotate_q=False, rotate_k=False),
    AttentionCase("ltx2 cross, GQA, k_lens, lse", "ltx2_split", 2, 17, 45, 4, 2, 80, k_lens=(45, 20), return_lse=True),
    AttentionCase("ovi a->v, K pre-rotated, lse", "ovi_av", 1, 130, 17, 2, 1, 32, rotate_k=False, return_lse=True),
    AttentionCase("Q unrotated, empty key row", "wan", 2, 17, 9, 2, 2, 128, rotate_q=False, k_lens=(0, 9),
                  return_lse=True),
    AttentionCase("layout groups (SpA2V), lse", "wan", 1, 33, 33, 2, 2, 64, return_lse=True, layout_groups=True),
)
ROPE_CASES = (
    RopeCase("apply_rope wan", "wan", 2, 37, 3, 64),
    RopeCase("apply_rope ltx2 split", "ltx2_split", 1, 17, 4, 80),
    RopeCase("qk norm across heads + weight", "wan", 2, 17, 4, 64, norm="across_heads", weight=True, Nk=33, Hk=2),
    RopeCase("qk norm per head + weight", "ltx2_interleaved", 1, 19, 4, 32, norm="head", weight=True, Nk=7, Hk=4),
    RopeCase("qk norm across heads", "wan", 1, 1, 3, 128, norm="across_heads", Nk=130, Hk=3),
)


def _tables(family: str, D: int, H: int, Hk: int):
    """(q table, k table, coordinate span) of a RoPE family; coordinates are drawn in [-span, span]."""
    if family == "wan":
        return RopeTable.wan(D), RopeTable.wan(D), 20.0
    if family == "ovi_av":  # audio queries (scaled temporal) against video keys (frame index)
        return RopeTable.ovi_temporal(D, scale=0.19676), RopeTable.ovi_temporal(D), 150.0
    table = RopeTable.ltx2(H * D, H, 3, interleaved=family == "ltx2_interleaved")
    k_table = RopeTable(table.freqs[:Hk].contiguous(), table.axes[:Hk].contiguous(), table.interleaved)
    return table, k_table, 1.0


def _device() -> str:
    """Where the kernels run natively: the GPU when there is one, else the CPU (interpreter)."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def run_mode() -> str:
    """One line saying how the kernels run here: natively on the GPU, or under the Triton interpreter."""
    dtypes = ", ".join(str(d).replace("torch.", "") for d in DTYPES[_device()])
    if _device() == "cuda":
        major, minor = torch.cuda.get_device_capability()
        return f"Triton kernels run natively on {torch.cuda.get_device_name()} (sm_{major}{minor}); dtypes {dtypes}"
    return (f"Triton kernels run under the interpreter (TRITON_INTERPRET=1, CPU; no GPU here); dtypes {dtypes} "
            f"(bf16 dots widened to fp32, exact)")


def _rand(g, *shape, dtype=torch.float32):
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(device=_device(), dtype=dtype)


def _coords(g, B, N, span):
    return ((torch.rand(B, N, 3, generator=g, dtype=torch.float64) * 2 - 1) * span).to(_device(), torch.float32)


def _attention_outputs(case: AttentionCase, dtype, g):
    """``[(output name, kernel result, plain PyTorch in dtype, float64 reference)]`` for one case."""
    from . import ops

    table, k_table, span = _tables(case.family, case.D, case.H, case.Hk)
    q = _rand(g, case.B, case.Nq, case.H, case.D, dtype=dtype)
    k = _rand(g, case.B, case.Nk, case.Hk, case.D, dtype=dtype)
    v = _rand(g, case.B, case.Nk, case.Hk, case.D, dtype=dtype)
    q_coords, k_coords = _coords(g, case.B, case.Nq, span), _coords(g, case.B, case.Nk, span)
    kwargs = dict(k_table=k_table, rotate_q=case.rotate_q, rotate_k=case.rotate_k,
                  k_lens=torch.tensor(case.k_lens, device=_device()) if case.k_lens else None)
    if case.layout_groups:  # 3 groups; some tokens in none (their rows / columns are masked out)
        kwargs["q_groups"] = torch.randint(0, 8, (case.B, case.Nq), generator=g).to(_device())
        kwargs["k_groups"] = torch.randint(0, 8, (case.B, case.Nk), generator=g).to(_device())
    result = ops.rope_attention(q, k, v, q_coords, k_coords, table, return_lse=case.return_lse, **kwargs)
    out, lse = result if case.return_lse else (result, None)
    plain = reference.rope_attention(q, k, v, q_coords, k_coords, table, return_lse=True, **kwargs)
    ref64 = reference.rope_attention(q.double(), k.double(), v.double(), q_coords, k_coords, table, return_lse=True,
                                     **kwargs)
    results = [("out", out, plain[0], ref64[0])]
    if case.return_lse:
        results.append(("lse", lse, plain[1], ref64[1]))
    return results


def _rope_outputs(case: RopeCase, dtype, g):
    """``[(output name, kernel result, plain PyTorch in dtype, float64 reference)]`` for one case."""
    from . import ops

    table, k_table, span = _tables(case.family, case.D, case.H, case.Hk or case.H)
    x = _rand(g, case.B, case.N, case.H, case.D, dtype=dtype)
    coords = _coords(g, case.B, case.N, span)
    if case.norm is None:
        return [("x", ops.apply_rope(x, coords, table), reference.apply_rope(x, coords, table),
                 reference.apply_rope(x.double(), coords, table))]
    k = _rand(g, case.B, case.Nk, case.Hk, case.D, dtype=dtype)
    k_coords = _coords(g, case.B, case.Nk, span)
    across = case.norm == "across_heads"
    weights = {}
    if case.weight:
        weights = dict(q_weight=1 + 0.5 * _rand(g, case.H * case.D if across else case.D, dtype=dtype),
                       k_weight=1 + 0.5 * _rand(g, case.Hk * case.D if across else case.D, dtype=dtype))
    kwargs = dict(k_table=k_table, across_heads=across)
    result = ops.qk_rmsnorm_rope(x, k, coords, k_coords, table, **weights, **kwargs)
    plain = reference.qk_rmsnorm_rope(x, k, coords, k_coords, table, **weights, **kwargs)
    ref64 = reference.qk_rmsnorm_rope(x.double(), k.double(), coords, k_coords, table,
                                      **{n: w.double() for n, w in weights.items()}, **kwargs)
    return [(name, *tensors) for name, *tensors in zip(("q", "k"), result, plain, ref64)]


def _shape(case) -> str:
    if isinstance(case, AttentionCase):
        return f"B{case.B} Nq{case.Nq} Nk{case.Nk} H{case.H}/{case.Hk} D{case.D}"
    k_part = f" Nk{case.Nk} Hk{case.Hk}" if case.norm else ""
    return f"B{case.B} N{case.N} H{case.H}{k_part} D{case.D}"


def case_records(index: int, seed: int) -> list[dict]:
    """Run case ``index`` of ``ATTENTION_CASES + ROPE_CASES`` in every dtype through the Triton backend
    of this process (its kernels must be runnable here); one record per (dtype, output)."""
    case = (ATTENTION_CASES + ROPE_CASES)[index]
    if isinstance(case, AttentionCase):
        kernel, outputs = "rope_attention", _attention_outputs
    else:
        kernel, outputs = ("apply_rope" if case.norm is None else "qk_rmsnorm_rope"), _rope_outputs
    g = torch.Generator().manual_seed(seed * 1000 + index)
    previous = os.environ.get("BATON_FAST_BACKEND")
    os.environ["BATON_FAST_BACKEND"] = "triton"
    try:
        records = []
        for dtype in DTYPES[_device()]:
            for output, result, plain, ref64 in outputs(case, dtype, g):
                err = numerics.check(result, plain, ref64, dtype)
                records.append(dict(kernel=kernel, case=case.name, dtype=str(dtype).replace("torch.", ""),
                                    output=output, shape=_shape(case), params=asdict(case), error=err.error,
                                    baseline=err.baseline, budget=err.budget, ok=err.ok))
        return records
    finally:
        if previous is None:
            del os.environ["BATON_FAST_BACKEND"]
        else:
            os.environ["BATON_FAST_BACKEND"] = previous


def _interpreter_process():
    """Initialiser of the fallback process: interpret the kernels (no GPU)."""
    os.environ["TRITON_INTERPRET"] = "1"


def _kernels_runnable_in_process() -> bool:
    """On a GPU always; on CPU when no kernel module was already imported with compiled (not interpreted)
    jit functions.  Sets ``TRITON_INTERPRET=1`` on CPU, so kernel modules imported from now on interpret."""
    if torch.cuda.is_available():
        return True
    os.environ["TRITON_INTERPRET"] = "1"
    from triton.runtime.jit import JITFunction

    loaded = [m for name, m in list(sys.modules.items()) if name.startswith("baton_fast.kernels.") and m is not None]
    return not any(isinstance(obj, JITFunction) for module in loaded for obj in vars(module).values())


def numeric_records(seed: int = 0, progress: bool = False) -> list[dict]:
    """One record per (case, dtype, output): kernel, case, dtype, output, shape, params, error (max abs vs
    float64), baseline (plain PyTorch's), budget and ok.  Runs in a spawned process with the interpreter
    when this process has no GPU and already holds compiled jit kernels (which cannot run on CPU)."""
    indices = range(len(ATTENTION_CASES + ROPE_CASES))
    with contextlib.ExitStack() as stack:
        if _kernels_runnable_in_process():
            per_case = map(case_records, indices, [seed] * len(indices))
        else:
            pool = stack.enter_context(static_check.spawn_pool(1, _interpreter_process))
            per_case = pool.map(case_records, indices, [seed] * len(indices))
        if progress:
            from tqdm import tqdm
            per_case = tqdm(per_case, total=len(indices), desc="kernels vs float64", unit="case")
        return [record for records in per_case for record in records]


# --------------------------------------------------------------------------- tables
def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_numeric_table(records: list[dict]) -> str:
    rows = [["kernel", "case", "shape", "dtype", "output", "max err", "plain torch", "budget", "result"]]
    rows += [[r["kernel"], r["case"], r["shape"], r["dtype"], r["output"], f"{r['error']:.2e}",
              f"{r['baseline']:.2e}", f"{r['budget']:.2e}", "pass" if r["ok"] else "FAIL"] for r in records]
    return _table(rows)


# attention kernel flags as printed in the static table (MHA: a backward job with grouped-query group 1; FP32_GRADS:
# one with fp32 dQ and dK, the op's own rotation)
FLAG_CODES = {"ROTATE_Q": "rq", "ROTATE_K": "rk", "INTERLEAVED": "il", "HAS_KLENS": "klens", "RETURN_LSE": "lse",
              "HAS_GROUPS": "groups", "COUNT_SKIPPED": "count", "HAS_BLOCK_MASK": "bm", "DETERMINISTIC": "det",
              "MHA": "mha", "FP32_GRADS": "fp32"}


def _flag_summary(record: dict) -> str:
    """Attention (forward and backward): the flags that are on (FLAG_CODES), and the launch of a split backward
    kernel (its case, "dV" or "dK"); pre-passes: case, heads and NORM."""
    flags = record["flags"]
    if record["kernel"] in ("rmsnorm_rope", "quantize_rows", "quantize_v"):
        return f"{record['case']} H{record['heads']} NORM={flags['NORM']}"
    codes = [code for name, code in FLAG_CODES.items() if flags.get(name)]
    return ",".join(codes + ([record["case"]] if record["case"] else [])) or "-"


def format_static_table(records: list[dict]) -> str:
    rows = [["kernel", "arch", "config", "dtype", "D", "flags", "regs", "spill st/ld", "stack", "smem",
             "mma", "LDL/STL", "addr", "result"]]
    for r in records:
        rows.append([r["kernel"], r["arch"], "x".join(map(str, r["config"])), r["dtype"], str(r["D"]), _flag_summary(r),
                     str(r["regs"]), f"{r['spill_stores']}/{r['spill_loads']}", str(r["stack"]), str(r["smem"]),
                     f"{r['mma']}x{r['mma_count']}" if r["mma"] != "none" else "none", str(r["local_mem_ops"]),
                     "i64" if r["addr64"] else "i32", "ok" if r["ok"] else "FAIL: " + "; ".join(r["problems"])])
    legend = ", ".join(f"{code} = {name}" for name, code in FLAG_CODES.items())
    wide = sum(r["addr64"] for r in records)
    return (_table(rows) + "\n\nconfig: BLOCK_M x BLOCK_N x warps x stages (backward: dK/dV BLOCK_M x BLOCK_N x "
            f"dQ BLOCK_M x BLOCK_N x warps x stages x output split; pre-passes: warps x stages); flags: {legend}; "
            f"addr: width of the offsets of the token-indexed tensors in the TTIR\n"
            f"64-bit address arithmetic: {wide}/{len(records)} kernels (the base offset of every token-indexed "
            f"tensor is i64 in the TTIR)")


# --------------------------------------------------------------------------- command
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--static", action="store_true",
                        help="compile every shipped kernel configuration for sm_90 and sm_80 (no GPU needed) and "
                             "report registers, spills, stack, shared memory and tensor-core instructions")
    parser.add_argument("--json", metavar="PATH", help="also write the records as JSON to PATH")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default 0)")


def run(args) -> int:
    if args.json:  # before the work, not after it
        from .outputs import check_outputs
        check_outputs("--json", [args.json])
    if args.static:
        records = static_check.check(static_check.shipped_jobs() + static_check.quant_jobs(), progress=True)
        print(format_static_table(records))
    else:
        print(run_mode())
        records = numeric_records(args.seed, progress=True)
        print(format_numeric_table(records))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(records, f, indent=1)
    failed = sum(not r["ok"] for r in records)
    print(f"\n{len(records) - failed}/{len(records)} passed" + (f", {failed} FAILED" if failed else ""))
    return 1 if failed else 0
