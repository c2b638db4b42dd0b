"""Bad input raises ValueError / TypeError naming the argument, before any kernel launch, on both backends;
strided inputs give the contiguous result; rows with no key give zeros and lse = -inf."""
import pytest
import torch

import baton_fast as bf
import baton_fast.kernels.rope_attention
import baton_fast.kernels.rope_norm
from baton_fast import reference

B, NQ, NK, H, HK, D = 2, 5, 7, 4, 2, 32


class Launched(AssertionError):
    """Raised by the stubbed launchers: the op got past its checks."""


@pytest.fixture(params=["reference", "triton"])
def no_launch(request, monkeypatch):
    """Select a backend and make every launcher (Triton kernels and reference path) fail if called."""
    monkeypatch.setenv("BATON_FAST_BACKEND", request.param)

    def launched(*args, **kwargs):
        raise Launched("a kernel was launched")

    for module, name in ((baton_fast.kernels.rope_attention, "rope_attention_fwd"),
                         (baton_fast.kernels.rope_norm, "rmsnorm_rope_fwd"),
                         (reference, "rope_attention"), (reference, "sdpa_rope_attention"), (reference, "apply_rope"),
                         (reference, "rotate"), (reference, "rms_norm")):
        monkeypatch.setattr(module, name, launched)
    return request.param


def valid_attention_args():
    g = torch.Generator().manual_seed(0)
    return dict(
        q=torch.randn(B, NQ, H, D, generator=g), k=torch.randn(B, NK, HK, D, generator=g),
        v=torch.randn(B, NK, HK, D, generator=g), q_coords=torch.rand(B, NQ, 3, generator=g) * 10,
        k_coords=torch.rand(1, NK, 3, generator=g) * 10, table=bf.RopeTable.wan(D),
        k_lens=torch.tensor([NK, 3]), return_lse=True)


def per_head_table(heads: int, head_dim: int = D) -> bf.RopeTable:
    return bf.RopeTable.ltx2(heads * head_dim, heads, num_axes=3)


def bad_coords(value):
    c = torch.rand(B, NQ, 3)
    c[1, 2, 0] = value
    return c


def with_heads(Hk):
    return dict(k=torch.randn(B, NK, Hk, D), v=torch.randn(B, NK, Hk, D))


def with_dim(d):
    return dict(q=torch.randn(B, NQ, H, d), k=torch.randn(B, NK, HK, d), v=torch.randn(B, NK, HK, d),
                table=bf.RopeTable.from_bands([(0, torch.ones(2))], d) if d % 2 == 0 else bf.RopeTable.wan(D))


def with_dtype(dtype):
    return {n: torch.randn(s).to(dtype) for n, s in (("q", (B, NQ, H, D)), ("k", (B, NK, HK, D)), ("v", (B, NK, HK, D)))}


ATTENTION_CASES = {  # name: (overrides, error, message fragment)
    "q rank": (dict(q=torch.randn(B, NQ, H * D)), ValueError, "q:"),
    "k rank": (dict(k=torch.randn(B, NK, HK, D, 1)), ValueError, "k:"),
    "q not a tensor": (dict(q=[[0.0]]), TypeError, "q:"),
    "v shape": (dict(v=torch.randn(B, NK + 1, HK, D)), ValueError, "v:"),
    "batch mismatch": (dict(k=torch.randn(B + 1, NK, HK, D), v=torch.randn(B + 1, NK, HK, D)), ValueError, "k:"),
    "head dim mismatch": (dict(k=torch.randn(B, NK, HK, D // 2), v=torch.randn(B, NK, HK, D // 2)), ValueError, "k:"),
    "H % Hk": (with_heads(3), ValueError, "Hk"),
    "odd D": (with_dim(31), ValueError, "q:.*head dim"),
    "D > 256": (with_dim(258), ValueError, "q:.*head dim"),
    "q float64": (with_dtype(torch.float64), TypeError, "q:.*float64"),
    "q int": (with_dtype(torch.int32), TypeError, "q:.*int32"),
    "k dtype differs": (dict(k=torch.randn(B, NK, HK, D).half()), TypeError, "k, v"),
    "q_coords float64": (dict(q_coords=torch.rand(B, NQ, 3, dtype=torch.float64)), TypeError, "q_coords"),
    "k_coords int": (dict(k_coords=torch.zeros(B, NK, 3, dtype=torch.int32)), TypeError, "k_coords"),
    "q_coords too few axes": (dict(q_coords=torch.rand(B, NQ, 2)), ValueError, "q_coords.*axis 2"),
    "k_coords too few axes": (dict(k_coords=torch.rand(B, NK, 1)), ValueError, "k_coords.*axis 2"),
    "q_coords tokens": (dict(q_coords=torch.rand(B, NQ + 1, 3)), ValueError, "q_coords"),
    "k_coords batch": (dict(k_coords=torch.rand(B + 1, NK, 3)), ValueError, "k_coords"),
    "q_coords rank": (dict(q_coords=torch.rand(NQ, 3)), ValueError, "q_coords"),
    "q_coords NaN": (dict(q_coords=bad_coords(float("nan"))), ValueError, "q_coords.*finite"),
    "q_coords inf": (dict(q_coords=bad_coords(float("inf"))), ValueError, "q_coords.*finite"),
    "k_coords -inf": (dict(k_coords=torch.full((1, NK, 3), float("-inf"))), ValueError, "k_coords.*finite"),
    "table not a RopeTable": (dict(table=torch.rand(1, D // 2)), TypeError, "table"),
    "k_table not a RopeTable": (dict(k_table="wan"), TypeError, "k_table"),
    "table head dim": (dict(table=bf.RopeTable.wan(2 * D)), ValueError, "table.*D/2"),
    "table rows != H": (dict(table=per_head_table(H + 1), k_table=bf.RopeTable.wan(D)), ValueError, "table.*rows"),
    "table axis out of range": (dict(table=bf.RopeTable.from_bands([(5, torch.ones(4))], D)), ValueError, "axis 5"),
    "grouped heads, H-row table as k_table": (dict(table=per_head_table(H)), ValueError, r"table \(used as k_table\).*rows"),
    "grouped heads, k_table rows": (dict(k_table=per_head_table(H)), ValueError, "k_table.*rows"),
    "pair layouts differ": (dict(k_table=bf.RopeTable.ltx2(HK * D, HK, interleaved=False)), ValueError, "k_table"),
    "k on another device": (dict(k=torch.randn(B, NK, HK, D, device="meta")), ValueError, "k on meta"),
    "q_coords on another device": (dict(q_coords=torch.rand(B, NQ, 3, device="meta")), ValueError, "q_coords on meta"),
    "k_lens on another device": (dict(k_lens=torch.tensor([1, 2], device="meta")), ValueError, "k_lens on meta"),
    "k_lens negative": (dict(k_lens=torch.tensor([3, -1])), ValueError, "k_lens"),
    "k_lens > Nk": (dict(k_lens=torch.tensor([NK + 1, 3])), ValueError, "k_lens"),
    "k_lens float": (dict(k_lens=torch.tensor([3.0, 2.0])), (ValueError, TypeError), "k_lens"),
    "k_lens shape": (dict(k_lens=torch.tensor([3, 2, 1])), ValueError, "k_lens"),
    "k_lens rank": (dict(k_lens=torch.tensor([[3, 2]])), ValueError, "k_lens"),
    "k_lens not a tensor": (dict(k_lens=[3, 2]), TypeError, "k_lens"),
    "scale not finite": (dict(scale=float("nan")), ValueError, "scale"),
    "scale a string": (dict(scale="abc"), TypeError, "scale: expected a number.*got str"),
    "scale a tensor": (dict(scale=torch.tensor([1.0, 2.0])), TypeError, r"scale: expected a number.*float\(x\)"),
    "scale a bool": (dict(scale=True), TypeError, "scale: expected a number.*got bool"),
    "table on meta": (dict(table=bf.RopeTable.wan(D).to("meta")), ValueError, "table: the RopeTable is on the meta"),
    "k_table on meta": (dict(k_table=bf.RopeTable.wan(D).to("meta")), ValueError, "k_table: the RopeTable is on the meta"),
}


@pytest.mark.parametrize("case", ATTENTION_CASES)
def test_rope_attention_rejects_bad_input(case, no_launch):
    overrides, error, match = ATTENTION_CASES[case]
    with pytest.raises(error, match=match):
        bf.rope_attention(**{**valid_attention_args(), **overrides})


def test_rmsnorm_rope_checks_like_the_others(no_launch):
    x = torch.randn(B, NQ, H, D)
    with pytest.raises(TypeError, match="eps: expected a number.*got bool"):
        bf.rmsnorm_rope(x, weight=torch.rand(H * D), eps=True)
    with pytest.raises(ValueError, match="coords.*finite"):
        bf.rmsnorm_rope(x, bad_coords(float("nan")), bf.RopeTable.wan(D))
    with pytest.raises(ValueError, match="weight: expected shape"):
        bf.rmsnorm_rope(x, weight=torch.rand(D))
    with pytest.raises(Launched):
        bf.rmsnorm_rope(x, torch.rand(1, NQ, 3), bf.RopeTable.wan(D), weight=torch.rand(H * D))


def test_valid_input_reaches_the_launcher(no_launch):
    """The stubs intercept the launch, so the rejections above did happen before it."""
    x = torch.randn(B, NQ, H, D)
    with pytest.raises(Launched):
        bf.rope_attention(**valid_attention_args())
    with pytest.raises(Launched):
        bf.apply_rope(x, torch.rand(1, NQ, 3), bf.RopeTable.wan(D))
    with pytest.raises(Launched):
        bf.qk_rmsnorm_rope(x, x, torch.rand(1, NQ, 3), torch.rand(1, NQ, 3), bf.RopeTable.wan(D))


def valid_rope_args():
    return dict(x=torch.randn(B, NQ, H, D), coords=torch.rand(B, NQ, 3), table=bf.RopeTable.wan(D))


APPLY_ROPE_CASES = {
    "x rank": (dict(x=torch.randn(NQ, H, D)), ValueError, "x:"),
    "x float64": (dict(x=torch.randn(B, NQ, H, D, dtype=torch.float64)), TypeError, "x:.*float64"),
    "x int": (dict(x=torch.zeros(B, NQ, H, D, dtype=torch.int64)), TypeError, "x:.*int64"),
    "odd D": (dict(x=torch.randn(B, NQ, H, 33)), ValueError, "x:.*head dim"),
    "D > 256": (dict(x=torch.randn(B, NQ, 1, 260)), ValueError, "x:.*head dim"),
    "coords float64": (dict(coords=torch.rand(B, NQ, 3, dtype=torch.float64)), TypeError, "coords"),
    "coords too few axes": (dict(coords=torch.rand(B, NQ, 2)), ValueError, "coords.*axis 2"),
    "coords tokens": (dict(coords=torch.rand(B, NQ - 1, 3)), ValueError, "coords"),
    "coords NaN": (dict(coords=bad_coords(float("nan"))), ValueError, "coords.*finite"),
    "coords inf": (dict(coords=bad_coords(float("inf"))), ValueError, "coords.*finite"),
    "table head dim": (dict(table=bf.RopeTable.wan(D + 2)), ValueError, "table"),
    "table rows != H": (dict(table=per_head_table(H - 1)), ValueError, "table.*rows"),
    "table not a RopeTable": (dict(table=None), TypeError, "table"),
    "x on another device": (dict(x=torch.randn(B, NQ, H, D, device="meta")), ValueError, "x on meta"),
    "table on meta": (dict(table=bf.RopeTable.wan(D).to("meta")), ValueError, "table: the RopeTable is on the meta"),
}


@pytest.mark.parametrize("case", APPLY_ROPE_CASES)
def test_apply_rope_rejects_bad_input(case, no_launch):
    overrides, error, match = APPLY_ROPE_CASES[case]
    with pytest.raises(error, match=match):
        bf.apply_rope(**{**valid_rope_args(), **overrides})


def valid_norm_args():
    return dict(q=torch.randn(B, NQ, H, D), k=torch.randn(B, NK, HK, D), q_coords=torch.rand(B, NQ, 3),
                k_coords=torch.rand(1, NK, 3), table=bf.RopeTable.wan(D),
                q_weight=torch.rand(H * D), k_weight=torch.rand(HK * D))


NORM_CASES = {
    "q_weight shape": (dict(q_weight=torch.rand(D)), ValueError, "q_weight.*expected shape"),
    "k_weight shape (H*D, not Hk*D)": (dict(k_weight=torch.rand(H * D)), ValueError, "k_weight.*expected shape"),
    "per-head weight shape": (dict(across_heads=False), ValueError, "q_weight.*expected shape"),
    "q_weight rank": (dict(q_weight=torch.rand(H, D)), ValueError, "q_weight"),
    "q_weight int": (dict(q_weight=torch.ones(H * D, dtype=torch.int32)), TypeError, "q_weight"),
    "k_weight float64": (dict(k_weight=torch.rand(HK * D, dtype=torch.float64)), TypeError, "k_weight"),
    "k_weight on another device": (dict(k_weight=torch.rand(HK * D, device="meta")), ValueError, "k_weight on meta"),
    "q rank": (dict(q=torch.randn(B, NQ, H * D)), ValueError, "q:"),
    "k float64": (dict(k=torch.randn(B, NK, HK, D, dtype=torch.float64)), TypeError, "k:"),
    "k_coords tokens": (dict(k_coords=torch.rand(1, NQ, 3)), ValueError, "k_coords"),
    "k_coords NaN": (dict(k_coords=torch.full((1, NK, 3), float("nan"))), ValueError, "k_coords.*finite"),
    "q_coords float16": (dict(q_coords=torch.rand(B, NQ, 3).half()), TypeError, "q_coords"),
    "grouped heads, k_table rows": (dict(k_table=per_head_table(H)), ValueError, "k_table.*rows"),
    "grouped heads, H-row table as k_table": (dict(table=per_head_table(H)), ValueError, r"table \(used as k_table\).*rows"),
    "eps a bool": (dict(eps=True), TypeError, "eps: expected a number.*got bool"),
    "eps a string": (dict(eps="1e-6"), TypeError, "eps: expected a number.*got str"),
    "eps negative": (dict(eps=-1e-6), ValueError, "eps: expected a finite number >= 0"),
    "eps NaN": (dict(eps=float("nan")), ValueError, "eps: expected a finite number"),
    "k_table on meta": (dict(k_table=bf.RopeTable.wan(D).to("meta")), ValueError, "k_table: the RopeTable is on the meta"),
    "k side on another device": (dict(k=torch.randn(B, NK, HK, D, device="meta"), k_coords=torch.rand(1, NK, 3, device="meta"),
                                      k_weight=torch.rand(HK * D, device="meta")), ValueError, "k on meta"),
}


@pytest.mark.parametrize("case", NORM_CASES)
def test_qk_rmsnorm_rope_rejects_bad_input(case, no_launch):
    overrides, error, match = NORM_CASES[case]
    with pytest.raises(error, match=match):
        bf.qk_rmsnorm_rope(**{**valid_norm_args(), **overrides})


# ------------------------------------------------------------------ strided inputs
def strided(x: torch.Tensor, how: str) -> torch.Tensor:
    """The same values as ``x`` in a non-contiguous tensor."""
    if how == "transposed":  # [B, N, H, D] viewed from a [B, H, N, D] buffer
        return x.transpose(1, 2).contiguous().transpose(1, 2)
    if how == "sliced":  # every other element of a wider buffer along the last dim
        wide = torch.zeros(*x.shape[:-1], 2 * x.shape[-1], dtype=x.dtype)
        wide[..., ::2] = x
        return wide[..., ::2]
    raise AssertionError(how)


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_strided_inputs_give_the_contiguous_result(backend, monkeypatch):
    monkeypatch.setenv("BATON_FAST_BACKEND", backend)
    a = dict(valid_attention_args(), k_lens=torch.tensor([NK, 3]))
    a["k_coords"] = a["k_coords"].repeat(B, 1, 1)
    s = dict(a, q=strided(a["q"], "transposed"), k=strided(a["k"], "sliced"), v=strided(a["v"], "transposed"),
             q_coords=strided(a["q_coords"], "sliced"), k_coords=a["k_coords"][:1].expand(B, NK, 3),  # batch stride 0
             k_lens=torch.tensor([NK, 99, 3, -5])[::2])
    assert not any(s[n].is_contiguous() for n in ("q", "k", "v", "q_coords", "k_coords", "k_lens"))
    for out, expected in zip(bf.rope_attention(**s), bf.rope_attention(**a)):
        torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)

    table = a["table"]
    torch.testing.assert_close(bf.apply_rope(s["q"], s["q_coords"], table), bf.apply_rope(a["q"], a["q_coords"], table),
                               rtol=1e-6, atol=1e-6)
    q_weight, k_weight = torch.rand(H * D), torch.rand(HK * D)
    strided_norm = bf.qk_rmsnorm_rope(s["q"], s["k"], s["q_coords"], s["k_coords"], table,
                                      q_weight=strided(q_weight, "sliced"), k_weight=strided(k_weight, "sliced"))
    contiguous_norm = bf.qk_rmsnorm_rope(a["q"], a["k"], a["q_coords"], a["k_coords"], table,
                                         q_weight=q_weight, k_weight=k_weight)
    for out, expected in zip(strided_norm, contiguous_norm):
        torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------- rows with no key
@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_fully_masked_rows_give_zeros_and_minus_inf_lse(backend, monkeypatch):
    monkeypatch.setenv("BATON_FAST_BACKEND", backend)
    a = dict(valid_attention_args(), k_lens=torch.tensor([0, 4]))
    out, lse = bf.rope_attention(**a)
    assert not out.isnan().any() and not lse.isnan().any()
    assert torch.equal(out[0], torch.zeros_like(out[0])) and (lse[0] == float("-inf")).all()
    expected, expected_lse = reference.rope_attention(
        a["q"][1:].double(), a["k"][1:, :4].double(), a["v"][1:, :4].double(), a["q_coords"][1:], a["k_coords"][:, :4],
        a["table"], return_lse=True)
    torch.testing.assert_close(out[1:].double(), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lse[1:].double(), expected_lse.double(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_empty_key_set_gives_zeros_and_minus_inf_lse(backend, monkeypatch):
    monkeypatch.setenv("BATON_FAST_BACKEND", backend)
    a = valid_attention_args()
    a.update(k=a["k"][:, :0], v=a["v"][:, :0], k_coords=a["k_coords"][:, :0], k_lens=None)
    out, lse = bf.rope_attention(**a)
    assert out.shape == a["q"].shape and lse.shape == (B, H, NQ)
    assert torch.equal(out, torch.zeros_like(out)) and (lse == float("-inf")).all()
