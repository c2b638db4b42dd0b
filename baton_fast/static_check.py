"""Machine-code check: compile every shipped kernel configuration for sm_90 and sm_80 with no GPU.

Each job is compiled ahead of time with ``triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32))``
with the signature, constants and alignment attributes the real launcher would produce: the launcher
(``rope_attention_fwd`` / ``rmsnorm_rope_fwd``) is called on small CPU tensors with a recording stand-in
for the jit kernel, and the recorded call goes through Triton's own argument specialisation.  The cubin
is then read with the tools shipped in the triton wheel:

- ``cuobjdump --dump-resource-usage``: registers and stack frame;
- ``cuobjdump -sass``: tensor-core instructions (``HGMMA`` on sm_90, ``HMMA`` on sm_80) and local
  memory instructions (``LDL``/``STL``);
- ``ptxas -v`` re-run on Triton's PTX with Triton's flags (it rebuilds the same cubin; registers
  and stack are cross-checked): spill bytes and "Potential Performance Loss" warnings, e.g. wgmma
  serialised by ptxas.

Address arithmetic is read from Triton's TTIR: the base (batch) offset added to every token-indexed
tensor (Q, K, V, the output, LSE, coordinates, layout masks; the pre-pass's input, output and coordinates)
must be i64, so ``b * stride_b`` cannot wrap at 2^31 elements (:func:`address_widths`).

Shared memory is Triton's dynamic shared memory request (``metadata.shared``).  Compiling needs real
jit functions, so the jobs run in spawned processes with ``TRITON_INTERPRET`` removed.
"""
from __future__ import annotations

import os
import re
import subprocess
import tempfile
import time
from dataclasses import dataclass
from typing import Iterable, Optional

__all__ = ["Job", "shipped_jobs", "backward_jobs", "bwd_kernels", "bwd_launches", "prepass_jobs", "quant_jobs", "check", "compile_job", "spawn_pool", "address_widths", "ARCHS", "TOKEN_TENSORS"]

ARCHS = (90, 80)
EXPECTED_MMA = {90: "HGMMA", 80: "HMMA"}
# Largest dynamic shared memory per block on every GPU that uses an arch's config list: the sm_8x
# list also serves sm_86/sm_89 (99 KiB), the sm_90 list H100 (227 KiB).
SMEM_LIMIT = {90: 227 * 1024, 80: 99 * 1024}

# Head dims compiled for each padded half dim of the attention kernel: one power of two each, plus
# D=80, which pads to 64 (24 masked pair columns; D=96 compiles to the same code with HALF=48).
ATTENTION_HEAD_DIMS = {16: (32,), 32: (64,), 64: (128, 80), 128: (256,)}
# Flag variants of the attention kernel.  Every flag is compiled on and off, both 16-bit dtypes are
# used, and the combinations are the heaviest of the real paths (measured: ROTATE_K with interleaved
# pairs needs more registers than with split pairs; HAS_GROUPS adds int64 bitmask tiles and, through
# the tile-skip branch, turns off software pipelining, so it does not cover the pipelined paths):
# fused family (the launcher picks it when the kernel rotates or masks): everything on; Q and K rotated
# in the kernel with interleaved pairs (cross-attention to audio / video keys); layout masks on Q and K
# pre-rotated by the QK-norm pre-pass (SpA2V's masked self-attention); Q rotated in the prologue, K
# pre-rotated, split pairs (cached plan K).  Plain family: Q and K pre-rotated (long self-attention),
# with and without key lengths and LSE.  Only 16-bit inputs: fp32 on a GPU takes the PyTorch path.
_ALL_OFF = dict(ROTATE_Q=False, ROTATE_K=False, INTERLEAVED=False, HAS_KLENS=False, RETURN_LSE=False,
                HAS_GROUPS=False, COUNT_SKIPPED=False)
ATTENTION_VARIANTS = {
    "fused": (
        ("float16", {name: True for name in _ALL_OFF}),
        ("bfloat16", dict(_ALL_OFF, ROTATE_Q=True, ROTATE_K=True, INTERLEAVED=True)),
        ("bfloat16", dict(_ALL_OFF, HAS_GROUPS=True, INTERLEAVED=True)),  # masked self-attention after the pre-pass
        ("float16", dict(_ALL_OFF, ROTATE_Q=True)),
    ),
    # the plain family: nothing rotated, no masks; key lengths and LSE on and off; and the block-sparse kernel
    # (a BlockMask's visit lists, docs/sparsity.md) on the same tiles and stages, key lengths and LSE on
    "plain": (
        ("float16", dict(_ALL_OFF, HAS_KLENS=True, RETURN_LSE=True, INTERLEAVED=True)),
        ("bfloat16", dict(_ALL_OFF)),
        ("bfloat16", dict(_ALL_OFF, HAS_BLOCK_MASK=True, HAS_KLENS=True, RETURN_LSE=True)),
    ),
}
# RMSNorm + RoPE pre-pass: (name, heads, head dim, NORM, HAS_WEIGHT, INTERLEAVED), launched in bf16
# (the models' dtype) with the launcher's own num_warps.
NORM_CASES = (
    ("wan", 24, 128, 2, True, True),
    ("wan-14b", 40, 128, 2, True, True),
    ("ltx2", 32, 128, 2, True, False),
    ("per_head", 24, 128, 1, True, True),
    ("apply_rope", 24, 128, 0, False, True),
)


# Backward (kernels/rope_attention_bwd.py): the dK/dV and dQ kernels of every shipped configuration, in bf16, one
# head dim per padded half dim.  The kernels never rotate (the pre-pass rotates Q and K), so the variants are the
# loops and the grouped-query modes.  Grouped-query heads (group 2): the dense loop with key lengths and layout masks
# (the tile-skip branch, int64 bitmask tiles) in deterministic mode, and the visit lists of a BlockMask with the
# default 128 x 64 blocks and key lengths, with atomics and in deterministic mode; dK/dV are added into fp32
# buffers.  Plain multi-head attention (``MHA``, group 1: Wan, LTX-2): the dK/dV kernel stores its gradients in the
# output dtype (``ACCUMULATE`` off, a different compile), in the same two loops (deterministic and atomic are one
# launch there).  The dQ kernel does not depend on the group (``group`` is not specialised), so it is compiled for
# group 2 only.  ``FP32_GRADS``: the public op's default, which rotates Q and K itself (``rope_attention_bwd`` with
# ``rotate_q`` / ``rotate_k``), writes dQ and dK in fp32 to rotate them back: the dQ kernel (every group) and the
# MHA dK/dV kernel store fp32 there (GQA's dK is fp32 anyway), compiled in the MHA variants' two loops.  An
# output-split configuration's dK/dV kernel is compiled for each of its two launches (case "dV" and "dK",
# :func:`bwd_launches`).
BWD_KERNELS = ("attention_bwd_dkdv", "attention_bwd_dq")
BWD_HEAD_DIMS = {16: 32, 32: 64, 64: 128, 128: 256}
_BWD_DENSE = dict(HAS_KLENS=True, HAS_GROUPS=True, HAS_BLOCK_MASK=False)
_BWD_LISTS = dict(HAS_KLENS=True, HAS_GROUPS=False, HAS_BLOCK_MASK=True)
BWD_VARIANTS = (dict(_BWD_DENSE, DETERMINISTIC=True, MHA=False, FP32_GRADS=False),
                dict(_BWD_LISTS, DETERMINISTIC=False, MHA=False, FP32_GRADS=False),
                dict(_BWD_LISTS, DETERMINISTIC=True, MHA=False, FP32_GRADS=False),
                dict(_BWD_DENSE, DETERMINISTIC=False, MHA=True, FP32_GRADS=False),
                dict(_BWD_LISTS, DETERMINISTIC=False, MHA=True, FP32_GRADS=False),
                dict(_BWD_DENSE, DETERMINISTIC=False, MHA=True, FP32_GRADS=True),
                dict(_BWD_LISTS, DETERMINISTIC=False, MHA=True, FP32_GRADS=True))
# Quantising pre-pass (kernels/rope_attention_quant.py, through quantize_rows_fwd / quantize_v_fwd), bf16 in, on
# the arch of its scheme: (case, kernel, scheme, heads, head dim, NORM, smooth, which launch of the launcher).
# Wan's Q and K (RMSNorm across heads): K smoothed by its token mean (the mean pass, then the quantising pass).
PREPASS_CASES = (
    ("q_int8", "quantize_rows", "int8", 24, 128, 2, False, 0),
    ("k_fp8_mean", "quantize_rows", "fp8", 24, 128, 2, True, 0),
    ("k_fp8", "quantize_rows", "fp8", 24, 128, 2, True, 1),
    ("v_fp8", "quantize_v", "fp8", 24, 128, 0, False, 0),
)
# Kernels whose dots must use tensor cores (EXPECTED_MMA); the rest have no dot.
MMA_KERNELS = ("rope_attention",) + BWD_KERNELS

# Quantised attention (kernels/rope_attention_quant.py): each scheme on the arch it is for, and the matrix
# instructions its dots must use there (fp8 wgmma: QGMMA; int8 wgmma: IGMMA; int8 mma.sync: IMMA).
QUANT_ARCH_MMA = {"fp8": (90, ("QGMMA",)), "int8": (80, ("IMMA",)), "int8+fp8": (90, ("IGMMA", "QGMMA"))}
QUANT_HEAD_DIMS = {64: 64, 128: 128}  # padded head dim -> head dim compiled
MMA_OPCODES = ("HGMMA", "QGMMA", "IGMMA", "HMMA", "IMMA")


@dataclass(frozen=True)
class Job:
    """One compilation: ``kernel`` ("rope_attention", "rmsnorm_rope", "quant_attention", one of
    :data:`BWD_KERNELS` or a quantising pre-pass), ``arch`` (90 or 80), ``config`` ((BLOCK_M, BLOCK_N, num_warps,
    num_stages) for attention; the backward's six-tuple; None for the pre-passes, whose launchers pick num_warps),
    torch ``dtype`` name, head dim ``D``, ``heads`` and kernel or launcher ``flags``."""
    kernel: str
    arch: int
    config: Optional[tuple]
    dtype: str
    D: int
    heads: int
    flags: tuple  # sorted (name, value) pairs
    case: str = ""

    @property
    def flag_dict(self) -> dict:
        return dict(self.flags)


def shipped_jobs(archs: Iterable[int] = ARCHS) -> list[Job]:
    """Every shipped configuration x representative head dims x flag variants, plus the pre-pass cases."""
    from .kernels.rope_attention import SHIPPED_CONFIGS

    jobs = []
    for arch in archs:
        for (major, half_pad, family), configs in sorted(SHIPPED_CONFIGS.items()):
            if major != arch // 10:
                continue
            for config in configs:
                for D in ATTENTION_HEAD_DIMS[half_pad]:
                    for dtype, flags in ATTENTION_VARIANTS[family]:
                        jobs.append(Job("rope_attention", arch, tuple(config), dtype, D, 2, tuple(sorted(flags.items()))))
        for case, heads, D, norm, has_weight, interleaved in NORM_CASES:
            flags = dict(NORM=norm, HAS_WEIGHT=has_weight, INTERLEAVED=interleaved)
            jobs.append(Job("rmsnorm_rope", arch, None, "bfloat16", D, heads, tuple(sorted(flags.items())), case))
    return jobs + backward_jobs(archs) + prepass_jobs(archs)


def backward_jobs(archs: Iterable[int] = ARCHS) -> list[Job]:
    """The backward kernels (:func:`bwd_kernels`) of every shipped backward configuration x :data:`BWD_VARIANTS`,
    each launch of the kernel (:func:`bwd_launches`)."""
    from .kernels.rope_attention_bwd import BWD_CONFIGS

    return [Job(kernel, arch, tuple(config), "bfloat16", BWD_HEAD_DIMS[half_pad], 2, tuple(sorted(flags.items())),
                case)
            for arch in archs for (major, half_pad), config in sorted(BWD_CONFIGS.items()) if major == arch // 10
            for flags in BWD_VARIANTS for kernel in bwd_kernels(flags) for case in bwd_launches(kernel, config)]


def bwd_kernels(flags: dict) -> tuple:
    """The backward kernels compiled in variant ``flags``: both, or with ``MHA`` in the output dtype the dK/dV kernel
    alone (the dQ kernel's code does not depend on the group; its fp32 store, ``FP32_GRADS``, is compiled with MHA)."""
    return BWD_KERNELS[:1] if flags["MHA"] and not flags["FP32_GRADS"] else BWD_KERNELS


def bwd_launches(kernel: str, config: tuple) -> tuple:
    """The cases of a backward kernel's launches under ``config``, in launch order: the dK/dV kernel of an
    output-split configuration (``config[6]``) runs twice, "dV" then "dK"; every other launch is case ""."""
    return ("dV", "dK") if kernel == BWD_KERNELS[0] and config[6] else ("",)


def prepass_jobs(archs: Iterable[int] = ARCHS) -> list[Job]:
    """The quantising pre-pass cases (:data:`PREPASS_CASES`) on the arch of their scheme."""
    return [Job(kernel, QUANT_ARCH_MMA[scheme][0], None, "bfloat16", D, heads,
                tuple(sorted(dict(SCHEME=scheme, NORM=norm, SMOOTH=smooth, LAUNCH=launch).items())), case)
            for case, kernel, scheme, heads, D, norm, smooth, launch in PREPASS_CASES
            if QUANT_ARCH_MMA[scheme][0] in archs]


def quant_jobs() -> list[Job]:
    """Every shipped configuration of the quantised attention on its scheme's arch (:data:`QUANT_ARCH_MMA`), with
    key lengths (the flag that changes the loop); ``dtype`` holds the scheme."""
    from .kernels.rope_attention_quant import SHIPPED_CONFIGS as QUANT_CONFIGS

    return [Job("quant_attention", QUANT_ARCH_MMA[scheme][0], tuple(config), scheme, QUANT_HEAD_DIMS[pad], 2,
                (("HAS_KLENS", True),))
            for (scheme, pad), configs in sorted(QUANT_CONFIGS.items()) for config in configs]


# --------------------------------------------------------------------------- launch recording
_RECORDED_TOKENS = 17  # tokens of every recording (no other size of the small tensors equals it)


class _RecordingKernel:
    """Stands in for a jit kernel: ``kernel[grid](*args, **kwargs)`` records the call."""

    def __init__(self):
        self.calls = []

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.calls.append((args, kwargs))


def _record_launch(job: Job):
    """Run the job's real launcher on small CPU tensors; return ``(jit kernel, args, kwargs)`` it launches."""
    import torch

    from .kernels import rope_attention, rope_attention_quant, rope_norm

    if job.kernel == "quant_attention":
        return _record_quant_launch(job, rope_attention_quant)
    if job.kernel in BWD_KERNELS:
        return _record_backward_launch(job)
    if job.kernel in ("quantize_rows", "quantize_v"):
        return _record_prepass_launch(job, rope_attention_quant)
    dtype = getattr(torch, job.dtype)
    flags = job.flag_dict
    n, heads, D = 17, job.heads, job.D
    x = torch.randn(1, n, heads, D, dtype=dtype)
    coords = torch.zeros(1, n, 3)
    freqs = torch.ones(1, D // 2)
    axes = torch.zeros(1, D // 2, dtype=torch.int32)
    groups = torch.ones(1, n, dtype=torch.int64)
    module = rope_attention if job.kernel == "rope_attention" else rope_norm
    name = "_rope_attention_fwd" if job.kernel == "rope_attention" else "_rmsnorm_rope"
    kernel, recorder = getattr(module, name), _RecordingKernel()
    setattr(module, name, recorder)
    try:
        if job.kernel == "rope_attention":
            rope_attention.rope_attention_fwd(
                x, x, x, coords, coords, freqs, axes, freqs, axes, flags["INTERLEAVED"],
                rotate_q=flags["ROTATE_Q"], rotate_k=flags["ROTATE_K"],
                k_lens=torch.full((1,), n, dtype=torch.int32) if flags["HAS_KLENS"] else None,
                scale=D ** -0.5, return_lse=flags["RETURN_LSE"],
                q_groups=groups if flags["HAS_GROUPS"] else None, k_groups=groups if flags["HAS_GROUPS"] else None,
                skipped=torch.zeros(heads * n, dtype=torch.int32) if flags["COUNT_SKIPPED"] else None,
                block_mask=_compile_block_mask(n, job.config) if flags.get("HAS_BLOCK_MASK") else None,
                config=job.config)
        else:
            weight_size = heads * D if flags["NORM"] == rope_norm.NORM_ACROSS_HEADS else D
            weight = torch.ones(weight_size, dtype=dtype) if flags["HAS_WEIGHT"] else None
            rope_norm.rmsnorm_rope_fwd(x, coords, freqs, axes, flags["INTERLEAVED"], norm=flags["NORM"],
                                       weight=weight)
    finally:
        setattr(module, name, kernel)
    (args, kwargs), = recorder.calls
    return kernel, args, kwargs


def _compile_block_mask(n: int, config):
    """A :class:`~baton_fast.BlockMask` with partial and full blocks of the tile ``config[:2]`` for ``n`` tokens."""
    import torch

    from .block_mask import BlockMask

    return BlockMask.from_dense(torch.ones(n, n, dtype=torch.bool).tril(), *config[:2])


def _recorded(module, names, pick, launcher, *args, **kwargs):
    """Call ``launcher(*args, **kwargs)`` with the jit kernels ``names`` of ``module`` replaced by recorders; returns
    ``(kernel, args, kwargs)`` of launch number ``pick[1]`` of kernel ``names[pick[0]]``."""
    kernels = {name: getattr(module, name) for name in names}
    recorders = {name: _RecordingKernel() for name in names}
    for name in names:
        setattr(module, name, recorders[name])
    try:
        launcher(*args, **kwargs)
    finally:
        for name, kernel in kernels.items():
            setattr(module, name, kernel)
    name = names[pick[0]]
    return (kernels[name], *recorders[name].calls[pick[1]])


def _record_backward_launch(job: Job):
    """The gradient launcher (``attention_bwd``, on already rotated Q and K) on small CPU tensors, grouped-query
    group 2 or with ``MHA`` group 1, with ``FP32_GRADS`` fp32 dQ and dK (the op's own rotation): the launch of the
    job's kernel."""
    import torch

    from .block_mask import DEFAULT_BLOCK
    from .kernels import rope_attention_bwd

    flags, n, D = job.flag_dict, _RECORDED_TOKENS, job.D
    group = 1 if flags["MHA"] else 2
    q = torch.zeros(1, n, job.heads, D, dtype=getattr(torch, job.dtype))
    kv = torch.zeros(1, n, job.heads // group, D, dtype=q.dtype)
    groups = torch.ones(1, n, dtype=torch.int64) if flags["HAS_GROUPS"] else None
    # the deterministic mode launches the dK/dV kernel once per group member (the same code): the first of them
    members = group if flags["DETERMINISTIC"] and job.kernel == BWD_KERNELS[0] else 1
    pick = (BWD_KERNELS.index(job.kernel), bwd_launches(job.kernel, job.config).index(job.case) * members)
    return _recorded(rope_attention_bwd, ("_bwd_dkdv", "_bwd_dq", "_bwd_delta"), pick,
                     rope_attention_bwd.attention_bwd, q, q, kv, kv, q, torch.zeros(1, job.heads, n),
                     k_lens=torch.full((1,), n, dtype=torch.int32) if flags["HAS_KLENS"] else None, scale=D ** -0.5,
                     q_groups=groups, k_groups=groups,
                     block_mask=_compile_block_mask(n, DEFAULT_BLOCK) if flags["HAS_BLOCK_MASK"] else None,
                     deterministic=flags["DETERMINISTIC"], config=job.config,
                     fp32_grads=(flags["FP32_GRADS"], flags["FP32_GRADS"]))


def _record_prepass_launch(job: Job, module):
    """``quantize_rows_fwd`` / ``quantize_v_fwd`` on small CPU tensors: the job's launch (``LAUNCH``) of its kernel."""
    import torch

    flags, n, D = job.flag_dict, _RECORDED_TOKENS, job.D
    x = torch.zeros(1, n, job.heads, D, dtype=getattr(torch, job.dtype))
    pick = (0, flags["LAUNCH"])
    if job.kernel == "quantize_v":
        return _recorded(module, ("_quantize_v",), pick, module.quantize_v_fwd, x)
    return _recorded(module, ("_quantize_rows",), pick, module.quantize_rows_fwd, x, torch.zeros(1, n, 3),
                     torch.ones(1, D // 2), torch.zeros(1, D // 2, dtype=torch.int32), True, scheme=flags["SCHEME"],
                     norm=flags["NORM"], weight=torch.ones(job.heads * D, dtype=x.dtype) if flags["NORM"] else None,
                     smooth=flags["SMOOTH"])


def _record_quant_launch(job: Job, module):
    """:func:`_record_launch` for the quantised attention (scheme in ``job.dtype``)."""
    import torch

    n, heads, D, scheme = 17, job.heads, job.D, job.dtype
    qk = torch.zeros(1, n, heads, D, dtype=module.STORAGE[module.QK_FORMAT[scheme]])
    fp8_pv = module.FP8_PV[scheme]
    v = torch.zeros(1, n, heads, D, dtype=torch.float8_e4m3fn if fp8_pv else torch.float16)
    scales = torch.ones(1, heads, n)
    v_scale = torch.ones(1, heads, 1, D) if fp8_pv else None
    kernel, recorder = module._quant_attention_fwd, _RecordingKernel()
    module._quant_attention_fwd = recorder
    try:
        module.quant_attention_fwd(qk, scales, qk, scales, v, v_scale, scheme=scheme,
                                   k_lens=torch.full((1,), n, dtype=torch.int32) if job.flag_dict["HAS_KLENS"]
                                   else None,
                                   scale=D ** -0.5, out_dtype=torch.bfloat16, config=job.config)
    finally:
        module._quant_attention_fwd = kernel
    (args, kwargs), = recorder.calls
    return kernel, args, kwargs


# --------------------------------------------------------------------------- compile + inspect
def _tool(name: str) -> str:
    """Path of a CUDA tool shipped in the triton wheel (``ptxas``, ``cuobjdump``)."""
    import triton
    return getattr(triton.knobs.nvidia, name).path


def _compile(job: Job):
    """Compile the job with Triton for its arch; returns ``(CompiledKernel, token-indexed argument names, how many
    of the first of them every variant uses)``: :data:`TOKEN_TENSORS` where listed, else the recorded launch's
    tensors with a token dimension (``_RECORDED_TOKENS``), of which the first (the input) is always read."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    kernel, args, kwargs = _record_launch(job)
    if not isinstance(kernel, triton.runtime.JITFunction):
        raise RuntimeError(f"{job.kernel}: expected a jit function, got {type(kernel).__name__} "
                           "(TRITON_INTERPRET must be unset in the compiling process)")
    target = GPUTarget("cuda", job.arch, 32)
    backend = make_backend(target)
    # Triton's own specialisation of a launch: constexprs, ints equal to 1, 16-byte alignment
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound, specialization, options)
    compiled = triton.compile(ASTSource(kernel, signature, constexprs, attrs), target=target, options=options.__dict__)
    if job.kernel in TOKEN_TENSORS:
        return compiled, TOKEN_TENSORS[job.kernel], ALWAYS_USED[job.kernel]
    return compiled, [name for name, a in zip(kernel.arg_names, args)
                      if hasattr(a, "shape") and _RECORDED_TOKENS in a.shape], 1


_PTXAS_SPILLS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_PTXAS_REGS = re.compile(r"Used (\d+) registers")
_RESOURCE = re.compile(r"REG:(\d+) STACK:(\d+)")
# "/*0a30*/  @!P0 HGMMA.64x64x16.F32 ..." -> opcode "HGMMA"
_SASS_OPCODE = re.compile(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P[0-9T]+\s+)?([A-Z][A-Z0-9_]*)")


def _ptxas_report(ptx: str, arch: int) -> dict:
    """Re-run the wheel's ptxas with Triton's flags (``-lineinfo -v --regAllocOptLevel=2``) for its log."""
    from triton.backends.nvidia.compiler import sm_arch_from_capability

    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "kernel.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        log = subprocess.run([_tool("ptxas"), "-lineinfo", "-v", "--regAllocOptLevel=2",
                              f"--gpu-name={sm_arch_from_capability(arch)}", src, "-o", src + ".o"],
                             check=True, capture_output=True, text=True).stderr
    stack, stores, loads = map(int, _PTXAS_SPILLS.search(log).groups())
    warnings = [line.split("Potential Performance Loss:")[1].strip()
                for line in log.splitlines() if "Potential Performance Loss" in line]
    return dict(regs=int(_PTXAS_REGS.search(log).group(1)), stack=stack, spill_stores=stores,
                spill_loads=loads, ptxas_warnings=warnings)


# Kernel arguments indexed by token (they reach 2^31 elements at real sizes); the first ones of each list
# are read or written by every variant.  The rest (rope tables, key lengths, tile counters) are indexed by
# head, batch or program.
TOKEN_TENSORS = {"rope_attention": ("Q", "K", "V", "Out", "Lse", "QC", "KC", "QG", "KG"),
                 "rmsnorm_rope": ("X", "Out", "C"),
                 "quant_attention": ("Q", "K", "V", "Out", "QS", "KS", "VS")}
ALWAYS_USED = {"rope_attention": 4, "rmsnorm_rope": 3, "quant_attention": 6}
# "%q_rows_57 = tt.addptr %Q, %q_rows_56 : !tt.ptr<f16>, i64" -> base "%Q", offset type "i64"
_TTIR_ADDPTR = re.compile(r"= tt\.addptr (%[\w.]+), %[\w.]+ : [^,]+, (\S+)")
_TTIR_SPLAT = re.compile(r"(%[\w.]+) = tt\.splat (%[\w.]+) :")


def address_widths(ttir: str, names) -> dict:
    """``{argument: set of offset widths}`` ("i32" / "i64") of the offsets the TTIR adds directly to each
    pointer argument in ``names`` or to a splat of it (the base offset of every address computed from it)."""
    owner = {f"%{name}": name for name in names}
    owner.update({m.group(1): owner[m.group(2)] for m in _TTIR_SPLAT.finditer(ttir) if m.group(2) in owner})
    widths = {name: set() for name in names}
    for base, offset_type in _TTIR_ADDPTR.findall(ttir):
        if base in owner:
            widths[owner[base]].add("i64" if re.search(r"i64>?$", offset_type) else "i32")
    return widths


def _address_problems(kernel: str, ttir: str, tokens=None) -> list:
    """Problems of the TTIR's address arithmetic: ``tokens = (names, always used)``, default
    :data:`TOKEN_TENSORS` / :data:`ALWAYS_USED` of ``kernel``."""
    names, always = tokens or (TOKEN_TENSORS[kernel], ALWAYS_USED[kernel])
    widths = address_widths(ttir, names)
    problems = [f"address arithmetic: no offset of {n} found in the TTIR" for n in names[:always] if not widths[n]]
    narrow = [n for n in names if "i32" in widths[n]]
    if narrow:
        problems.append(f"address arithmetic: 32-bit offsets on {', '.join(narrow)}")
    return problems


def _cubin_report(cubin: bytes) -> dict:
    """Registers, stack, tensor-core and local-memory instruction counts from the cubin."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        usage = subprocess.run([_tool("cuobjdump"), "--dump-resource-usage", path],
                               check=True, capture_output=True, text=True).stdout
        sass = subprocess.run([_tool("cuobjdump"), "-sass", path], check=True, capture_output=True, text=True).stdout
    regs, stack = map(int, _RESOURCE.search(usage).groups())
    opcodes = _SASS_OPCODE.findall(sass)
    mma = "HGMMA" if "HGMMA" in opcodes else "HMMA" if "HMMA" in opcodes else "none"
    return dict(regs=regs, stack=stack, mma=mma, mma_count=opcodes.count(mma) if mma != "none" else 0,
                mma_ops={op: opcodes.count(op) for op in MMA_OPCODES if op in opcodes},
                local_mem_ops=opcodes.count("LDL") + opcodes.count("STL"))


def expected_mma_of(job: Job) -> str:
    """The matrix instruction a (non-quantised) job must use: :data:`EXPECTED_MMA` for its arch, "none" for the
    kernels without a dot."""
    return EXPECTED_MMA[job.arch] if job.kernel in MMA_KERNELS else "none"


def compile_job(job: Job) -> dict:
    """Compile one job and return its record (see :func:`check`)."""
    start = time.perf_counter()
    compiled, *tokens = _compile(job)
    cubin = _cubin_report(compiled.asm["cubin"])
    ptxas = _ptxas_report(compiled.asm["ptx"], job.arch)
    if (ptxas["regs"], ptxas["stack"]) != (cubin["regs"], cubin["stack"]):
        raise RuntimeError(f"{job}: ptxas log ({ptxas['regs']} regs, {ptxas['stack']} B stack) does not describe "
                           f"Triton's cubin ({cubin['regs']} regs, {cubin['stack']} B stack)")
    meta = compiled.metadata
    expected_mma = expected_mma_of(job)
    problems = []
    if ptxas["spill_stores"] or ptxas["spill_loads"] or cubin["local_mem_ops"] or cubin["stack"]:
        problems.append(f"local memory: {ptxas['spill_stores']} B spill stores, {ptxas['spill_loads']} B spill loads, "
                        f"{cubin['local_mem_ops']} LDL/STL, {cubin['stack']} B stack")
    if job.kernel == "quant_attention":  # every instruction its scheme needs (fp8 and int8 wgmma: QGMMA, IGMMA)
        required = QUANT_ARCH_MMA[job.dtype][1]
        cubin["mma"] = "+".join(cubin["mma_ops"]) or "none"
        cubin["mma_count"] = sum(cubin["mma_ops"].get(op, 0) for op in required)
        missing = [op for op in required if op not in cubin["mma_ops"]]
        if missing:
            problems.append(f"matrix instructions: expected {'+'.join(required)}, found {cubin['mma']}")
    elif cubin["mma"] != expected_mma:
        problems.append(f"matrix instructions: expected {expected_mma}, found {cubin['mma']}")
    if meta.shared > SMEM_LIMIT[job.arch]:
        problems.append(f"shared memory {meta.shared} B > {SMEM_LIMIT[job.arch]} B")
    problems += [f"ptxas: {w}" for w in ptxas["ptxas_warnings"]]
    address = _address_problems(job.kernel, compiled.asm["ttir"], tokens)
    return dict(
        kernel=job.kernel, case=job.case, arch=f"sm_{job.arch}",
        config=list(job.config) if job.config else [meta.num_warps, meta.num_stages],
        dtype=job.dtype, D=job.D, heads=job.heads, flags=job.flag_dict,
        regs=cubin["regs"], spill_stores=ptxas["spill_stores"], spill_loads=ptxas["spill_loads"],
        stack=cubin["stack"], smem=meta.shared, mma=cubin["mma"], mma_count=cubin["mma_count"],
        mma_ops=cubin["mma_ops"], local_mem_ops=cubin["local_mem_ops"], addr64=not address,
        compile_s=round(time.perf_counter() - start, 2), problems=problems + address, ok=not (problems or address))


# --------------------------------------------------------------------------- driver
def _compiler_process():
    """Initialiser of the compiling processes: real jit functions need TRITON_INTERPRET unset."""
    os.environ.pop("TRITON_INTERPRET", None)


def spawn_pool(workers: int, initializer):
    """A pool of fresh (spawned) Python processes: none of this process's imported kernels or env
    decisions leak in, and ``initializer`` sets the environment before anything imports triton."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=initializer)


_memo: dict = {}


def check(jobs: Optional[list[Job]] = None, progress: bool = False) -> list[dict]:
    """Compile ``jobs`` (default :func:`shipped_jobs`) and return one plain-dict record per job.

    Record keys: kernel, case, arch ("sm_90"/"sm_80"), config (attention: [BLOCK_M, BLOCK_N, num_warps,
    num_stages]; pre-pass: [num_warps, num_stages]), dtype, D, heads, flags, regs, spill_stores /
    spill_loads / stack / smem (bytes), mma ("HGMMA", "HMMA" or "none"; quantised attention: the matrix
    instructions found, e.g. "QGMMA+IGMMA"), mma_count, mma_ops ({opcode: count} of every matrix instruction),
    local_mem_ops
    (LDL + STL instructions), addr64 (the base offsets of the token-indexed tensors are i64 in the TTIR), compile_s,
    problems (list of str) and ok (no problem).  Results are
    memoised per process.  Compilation runs in spawned processes (one per CPU core) without
    ``TRITON_INTERPRET``.
    """
    jobs = shipped_jobs() if jobs is None else list(jobs)
    todo = [job for job in dict.fromkeys(jobs) if job not in _memo]
    if todo:
        with spawn_pool(min(len(todo), os.cpu_count() or 1), _compiler_process) as pool:
            records = pool.map(compile_job, todo)
            if progress:
                from tqdm import tqdm
                records = tqdm(records, total=len(todo), desc="compiling for sm_90/sm_80", unit="kernel")
            for job, record in zip(todo, records):
                _memo[job] = record
    return [_memo[job] for job in jobs]
