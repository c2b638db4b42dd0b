"""Machine code of every shipped kernel configuration, compiled for sm_90 and sm_80 with no GPU."""
import pytest

from baton_fast import static_check
from baton_fast.kernels.rope_attention import SHIPPED_CONFIGS


@pytest.fixture(scope="module")
def records():
    return static_check.check()


def test_every_compiled_variant_is_a_path_the_launcher_takes():
    """Each flag variant belongs to the family whose configurations it is compiled with."""
    from baton_fast.kernels.rope_attention import kernel_family

    for family, variants in static_check.ATTENTION_VARIANTS.items():
        for _, flags in variants:
            assert kernel_family(flags["ROTATE_Q"], flags["ROTATE_K"], flags["HAS_GROUPS"]) == family, flags


def test_every_shipped_config_is_compiled(records):
    compiled = {(int(r["arch"][3:]) // 10, tuple(r["config"]), r["D"], r["dtype"], tuple(sorted(r["flags"].items())))
                for r in records if r["kernel"] == "rope_attention"}
    for (major, half_pad, family), configs in SHIPPED_CONFIGS.items():
        for config in configs:
            for D in static_check.ATTENTION_HEAD_DIMS[half_pad]:
                for dtype, flags in static_check.ATTENTION_VARIANTS[family]:
                    assert (major, tuple(config), D, dtype, tuple(sorted(flags.items()))) in compiled
    norm_cases = {(r["arch"], r["case"]) for r in records if r["kernel"] == "rmsnorm_rope"}
    assert norm_cases == {(f"sm_{a}", c[0]) for a in static_check.ARCHS for c in static_check.NORM_CASES}


def test_every_backward_config_and_quantising_prepass_is_compiled(records):
    """Both gradient kernels of every shipped backward configuration, in every loop variant, and the dK/dV kernel of
    plain multi-head attention (group 1) in both of its loops, in bf16 and (with the dQ kernel) with the fp32 dQ / dK
    of the op's own rotation; the quantising pre-pass launches (issue 14) on the arch of their scheme."""
    from baton_fast.kernels.rope_attention_bwd import BWD_CONFIGS

    compiled = {(r["kernel"], r["case"], int(r["arch"][3:]) // 10, tuple(r["config"]),
                 tuple(sorted(r["flags"].items()))) for r in records if r["kernel"] in static_check.BWD_KERNELS}
    expected = {(kernel, case, major, config, tuple(sorted(flags.items())))
                for (major, _), config in BWD_CONFIGS.items() for flags in static_check.BWD_VARIANTS
                for kernel in static_check.bwd_kernels(flags) for case in static_check.bwd_launches(kernel, config)}
    assert compiled == expected
    # every configuration in the loop variants (block mask, deterministic, group 1, fp32 dQ / dK): GQA layout masks
    # (deterministic), a BlockMask with atomics and in deterministic mode (issue 10); MHA layout masks and BlockMask,
    # in bf16 (dK/dV only: the dQ kernel is one for every group) and with fp32 dQ / dK (both kernels)
    variants = {}
    for r in records:
        if r["kernel"] in static_check.BWD_KERNELS:
            flags = r["flags"]
            variants.setdefault((r["arch"], r["D"], r["kernel"]), set()).add(
                (flags["HAS_BLOCK_MASK"], flags["DETERMINISTIC"], flags["MHA"], flags["FP32_GRADS"]))
    assert len(variants) == 2 * len(BWD_CONFIGS)
    gqa = {(False, True, False, False), (True, False, False, False), (True, True, False, False)}
    fp32 = {(False, False, True, True), (True, False, True, True)}
    mha = {(False, False, True, False), (True, False, True, False)}
    assert all(v == (gqa | fp32 | mha if kernel == "attention_bwd_dkdv" else gqa | fp32)
               for (_, _, kernel), v in variants.items()), variants
    # both launches of the output-split dK/dV kernel (sm_90, D = 256), with grouped-query heads and without, the
    # latter also with fp32 dK
    assert {(r["case"], r["flags"]["MHA"], r["flags"]["FP32_GRADS"]) for r in records
            if r["kernel"] == "attention_bwd_dkdv" and r["D"] == 256 and r["arch"] == "sm_90"} == {
        (case, mha, fp32) for case in ("dV", "dK") for mha, fp32 in ((False, False), (True, False), (True, True))}
    prepass = {(r["kernel"], r["case"], r["arch"]) for r in records if r["kernel"].startswith("quantize")}
    assert prepass == {(c[1], c[0], f"sm_{static_check.QUANT_ARCH_MMA[c[2]][0]}") for c in static_check.PREPASS_CASES}


def _launch_keys(kernel: str, group: int, deterministic: bool, fp32_grads: bool = False):
    """(In a compiling process.) The ``member`` arguments (dK/dV kernel) and Triton's specialisation keys of every
    launch of backward kernel ``kernel`` (sm_90, D = 128, 4 query heads in groups of ``group``, no key lengths;
    ``fp32_grads``: fp32 dQ and dK, as when the op rotates Q and K itself)."""
    import torch
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    from baton_fast.kernels import rope_attention_bwd

    n, D = 17, 128
    q = torch.zeros(1, n, 4, D, dtype=torch.bfloat16)
    kv = torch.zeros(1, n, 4 // group, D, dtype=q.dtype)
    index = static_check.BWD_KERNELS.index(kernel)
    launches = [static_check._recorded(rope_attention_bwd, ("_bwd_dkdv", "_bwd_dq", "_bwd_delta"), (index, i),
                                       rope_attention_bwd.attention_bwd, q, q, kv, kv, q, torch.zeros(1, 4, n),
                                       k_lens=None, scale=D ** -0.5, deterministic=deterministic,
                                       config=rope_attention_bwd.BWD_CONFIGS[(9, 64)],
                                       fp32_grads=(fp32_grads, fp32_grads))
                for i in range(group if deterministic and index == 0 else 1)]
    fn = launches[0][0]
    binder = create_function_from_signature(fn.signature, fn.params, make_backend(GPUTarget("cuda", 90, 32)))
    members = [args[fn.arg_names.index("member")] for _, args, _ in launches] if index == 0 else []
    return members, [str(binder(*args, **kwargs)[1]) for _, args, kwargs in launches]


def _launch_keys_of(*cases):
    """:func:`_launch_keys` of each ``(kernel, group, deterministic[, fp32_grads])`` case, in a compiling process."""
    with static_check.spawn_pool(1, static_check._compiler_process) as pool:
        return [pool.submit(_launch_keys, *case).result() for case in cases]


def test_deterministic_launches_of_a_group_compile_to_one_kernel():
    """The deterministic mode launches the dK/dV kernel once per member of a grouped-query group (4 here, so
    members 0 and 1, which Triton would specialise, are among them); the member is not specialised, so the compiled
    launch (the first) stands for all of them."""
    (members, keys), = _launch_keys_of((static_check.BWD_KERNELS[0], 4, True))
    assert members == [0, 1, 2, 3] and len(set(keys)) == 1, keys


def test_group_1_compiles_one_dkdv_kernel_in_both_modes_and_the_dq_kernel_of_every_group():
    """Why the MHA (group 1) variants are the dK/dV kernel in two loops only: with group 1 the deterministic and the
    atomic mode make the same single launch, a kernel other than the grouped-query ones (it stores instead of
    adding into fp32); and the dQ kernel compiles to one kernel for groups 1, 2 and 4 (``group`` not specialised)."""
    dkdv, dq = static_check.BWD_KERNELS
    mha_det, mha_atomic, gqa_det, gqa_atomic, *dq_keys = _launch_keys_of(
        (dkdv, 1, True), (dkdv, 1, False), (dkdv, 2, True), (dkdv, 2, False), (dq, 1, False), (dq, 2, False),
        (dq, 4, True))
    assert mha_det == mha_atomic and len(mha_det[1]) == 1, (mha_det, mha_atomic)
    assert len({mha_det[1][0], gqa_det[1][0], gqa_atomic[1][0]}) == 3
    assert len({key for _, keys in dq_keys for key in keys}) == 1, dq_keys


def test_fp32_gradients_of_the_ops_rotation_are_other_compiles():
    """Why the ``FP32_GRADS`` variants are MHA's dK/dV kernel and the dQ kernel: the op rotating Q and K itself
    writes fp32 dQ (one kernel for groups 1 and 2, not the bf16 one) and fp32 dK, which makes group 1's dK/dV kernel
    another compile, while grouped-query heads add into fp32 either way (the same kernel)."""
    dkdv, dq = static_check.BWD_KERNELS
    dq_fp32_1, dq_fp32_2, dq_bf16, mha_fp32, mha_bf16, gqa_fp32, gqa_bf16 = (keys for _, keys in _launch_keys_of(
        (dq, 1, False, True), (dq, 2, False, True), (dq, 2, False), (dkdv, 1, False, True), (dkdv, 1, False),
        (dkdv, 2, False, True), (dkdv, 2, False)))
    assert dq_fp32_1 == dq_fp32_2 != dq_bf16
    assert mha_fp32 != mha_bf16 and gqa_fp32 == gqa_bf16


def test_no_spills_and_no_local_memory(records):
    for r in records:
        assert (r["spill_stores"], r["spill_loads"], r["stack"], r["local_mem_ops"]) == (0, 0, 0, 0), r


def test_tensor_core_instructions(records):
    """HGMMA (wgmma) on sm_90 and HMMA on sm_80 in every attention kernel, forward and backward (the D = 256
    backward on sm_90 through its output split); the pre-passes have no dot."""
    for r in records:
        expected = {"sm_90": "HGMMA", "sm_80": "HMMA"}[r["arch"]] if r["kernel"] in static_check.MMA_KERNELS else "none"
        assert r["mma"] == expected, r
        assert (r["mma_count"] > 0) == (expected != "none"), r


def test_shared_memory_fits_every_gpu_of_the_arch(records):
    for r in records:
        assert 0 <= r["smem"] <= static_check.SMEM_LIMIT[int(r["arch"][3:])], r


def test_no_ptxas_performance_warnings(records):
    for r in records:
        assert r["ok"] and not r["problems"], r


def test_the_check_sees_spills_and_missing_wgmma():
    """Too big a tile for the register file spills, and two warps cannot issue wgmma on sm_90 (Triton
    falls back to HMMA): the check flags both."""
    dtype, flags = static_check.ATTENTION_VARIANTS["fused"][1]  # Q and K rotated in the kernel
    flags = tuple(sorted(flags.items()))
    too_big = static_check.Job("rope_attention", 80, (128, 128, 4, 2), dtype, 32, 2, flags)
    two_warps = static_check.Job("rope_attention", 90, (64, 64, 2, 2), dtype, 32, 2, flags)
    spilling, no_wgmma = static_check.check([too_big, two_warps])
    assert spilling["spill_stores"] > 0 and spilling["local_mem_ops"] > 0 and not spilling["ok"]
    assert any("local memory" in p for p in spilling["problems"])
    assert no_wgmma["mma"] == "HMMA" and not no_wgmma["ok"]
    assert "matrix instructions: expected HGMMA, found HMMA" in no_wgmma["problems"]


def test_address_arithmetic_is_64_bit(records):
    """The base (batch) offset of every token-indexed tensor is i64 in the TTIR of every kernel."""
    for r in records:
        assert r["addr64"], r


# The pre-pass's TTIR before its program id was cast to int64 (triton 3.8, sm_80): X's base offset
# b * stride_xb + n * stride_xn was an i32, so batch 2 of a [3, 2^24 + 1, 1, 64] tensor wrapped.
TTIR_32_BIT = """
    %x_row = arith.addi %0, %1 : i32 loc(#loc14)
    %x_row_23 = tt.addptr %X, %x_row : !tt.ptr<bf16>, i32 loc(#loc150)
    %2 = tt.splat %Out : !tt.ptr<bf16> -> tensor<32x64x!tt.ptr<bf16>> loc(#loc1)
    %3 = tt.addptr %2, %offs : tensor<32x64x!tt.ptr<bf16>>, tensor<32x64xi32> loc(#loc2)
    %4 = tt.addptr %C, %c_off : !tt.ptr<f32>, i64 loc(#loc3)
"""


def test_the_check_sees_32_bit_offsets():
    widths = static_check.address_widths(TTIR_32_BIT, ("X", "Out", "C"))
    assert widths == {"X": {"i32"}, "Out": {"i32"}, "C": {"i64"}}
    assert static_check._address_problems("rmsnorm_rope", TTIR_32_BIT) == ["address arithmetic: 32-bit offsets on X, Out"]
