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
    """Both gradient kernels of every shipped backward configuration, in both loop variants; the quantising
    pre-pass launches (issue 14) on the arch of their scheme."""
    from baton_fast.kernels.rope_attention_bwd import BWD_CONFIGS

    compiled = {(r["kernel"], r["case"], int(r["arch"][3:]) // 10, tuple(r["config"]),
                 tuple(sorted(r["flags"].items()))) for r in records if r["kernel"] in static_check.BWD_KERNELS}
    expected = {(kernel, case, major, config, tuple(sorted(flags.items())))
                for (major, _), config in BWD_CONFIGS.items() for flags in static_check.BWD_VARIANTS
                for kernel in static_check.BWD_KERNELS for case in static_check.bwd_launches(kernel, config)}
    assert compiled == expected
    # every configuration in three loop variants: layout masks (deterministic), a BlockMask with atomics and a
    # BlockMask in deterministic mode (issue 10)
    variants = {}
    for r in records:
        if r["kernel"] in static_check.BWD_KERNELS:
            flags = r["flags"]
            variants.setdefault((r["arch"], r["D"]), set()).add((flags["HAS_BLOCK_MASK"], flags["DETERMINISTIC"]))
    assert len(variants) == len(BWD_CONFIGS)
    assert all(v == {(False, True), (True, False), (True, True)} for v in variants.values()), variants
    # both launches of the output-split dK/dV kernel (sm_90, D = 256)
    assert {r["case"] for r in records if r["kernel"] == "attention_bwd_dkdv" and r["D"] == 256
            and r["arch"] == "sm_90"} == {"dV", "dK"}
    prepass = {(r["kernel"], r["case"], r["arch"]) for r in records if r["kernel"].startswith("quantize")}
    assert prepass == {(c[1], c[0], f"sm_{static_check.QUANT_ARCH_MMA[c[2]][0]}") for c in static_check.PREPASS_CASES}


def _member_launches(group: int):
    """(In a compiling process.) The ``member`` argument and Triton's specialisation key of every dK/dV launch of a
    deterministic backward with grouped-query group ``group`` (sm_90, D = 128)."""
    import torch
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    from baton_fast.kernels import rope_attention_bwd

    n, D = 17, 128
    q = torch.zeros(1, n, group, D, dtype=torch.bfloat16)
    kv = torch.zeros(1, n, 1, D, dtype=q.dtype)
    launches = [static_check._recorded(rope_attention_bwd, ("_bwd_dkdv", "_bwd_dq", "_bwd_delta"), (0, member),
                                       rope_attention_bwd.attention_bwd, q, q, kv, kv, q, torch.zeros(1, group, n),
                                       k_lens=None, scale=D ** -0.5, deterministic=True,
                                       config=rope_attention_bwd.BWD_CONFIGS[(9, 64)])
                for member in range(group)]
    kernel = launches[0][0]
    binder = create_function_from_signature(kernel.signature, kernel.params, make_backend(GPUTarget("cuda", 90, 32)))
    return ([args[kernel.arg_names.index("member")] for _, args, _ in launches],
            {str(binder(*args, **kwargs)[1]) for _, args, kwargs in launches})


def test_deterministic_launches_of_a_group_compile_to_one_kernel():
    """The deterministic mode launches the dK/dV kernel once per member of a grouped-query group (4 here, so
    members 0 and 1, which Triton would specialise, are among them); the member is not specialised, so the compiled
    launch (the first) stands for all of them."""
    with static_check.spawn_pool(1, static_check._compiler_process) as pool:
        members, specialisations = pool.submit(_member_launches, 4).result()
    assert members == [0, 1, 2, 3] and len(specialisations) == 1, specialisations


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
