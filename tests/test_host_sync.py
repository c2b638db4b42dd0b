"""No host synchronisation in a prepared step: a prepared DiT forward reads no tensor value back to the host from
baton-fast code (the run's values are checked once, by ``prepare``); a direct op call still checks its values."""
import os
import traceback

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import baton_fast
import baton_fast.kernels.rope_attention
import baton_fast.kernels.rope_norm
from baton_fast.model.config import get_preset
from baton_fast.model.dit import DualBranchDiT
from baton_fast.model.layout import LayoutGuidance
from baton_fast.model.planner import PlannedTokens, rs_rope_coords

CFG = get_preset("tiny")
PACKAGE_DIRS = tuple(os.path.dirname(m.__file__) + os.sep for m in (baton_fast, baton_fast.kernels))
aten = torch.ops.aten


class HostReads(TorchDispatchMode):
    """Records every read of a tensor value by the host made from baton-fast code: the scalar reads of the
    dispatcher (``item``, ``bool(t)``, ``int(t)``), device-to-host copies, and the Python conversions that bypass
    the dispatcher (``tolist``, ``numpy``; patched while the mode is on)."""

    SCALAR_READS = {aten._local_scalar_dense.default, aten.is_nonzero.default, aten.equal.default,
                    aten.nonzero.default}
    PYTHON_READS = ("tolist", "numpy", "item", "__bool__", "__int__", "__float__", "__index__")

    def __init__(self):
        super().__init__()
        self.reads = []
        self._originals = {}

    def _record(self, what):
        frames = [f for f in traceback.extract_stack()[:-2] if f.filename.startswith(PACKAGE_DIRS)]
        if frames:
            self.reads.append(f"{what} at {frames[-1].filename}:{frames[-1].lineno}")

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        to_host = (func in (aten._to_copy.default, aten.copy_.default)
                   and any(isinstance(a, torch.Tensor) and a.device.type != "cpu" for a in args)
                   and (kwargs.get("device") == torch.device("cpu")
                        or (func is aten.copy_.default and args[0].device.type == "cpu")))
        if func in self.SCALAR_READS or to_host:
            self._record(str(func))
        return func(*args, **kwargs)

    def __enter__(self):
        for name in self.PYTHON_READS:
            original = self._originals[name] = getattr(torch.Tensor, name)

            def patched(tensor, *args, _name=name, _original=original, **kwargs):
                self._record(f"Tensor.{_name}")
                return _original(tensor, *args, **kwargs)

            setattr(torch.Tensor, name, patched)
        return super().__enter__()

    def __exit__(self, *exc):
        for name, original in self._originals.items():
            setattr(torch.Tensor, name, original)
        return super().__exit__(*exc)


@pytest.fixture(scope="module")
def run():
    """A tiny prepared run: model, context, latents, timesteps and a layout (bit 1 on the first frame)."""
    torch.manual_seed(0)
    dit = DualBranchDiT(CFG).eval()
    g = torch.Generator().manual_seed(1)
    shape = CFG.shape(0.5)
    pc = CFG.planner
    plan = PlannedTokens(torch.randn(2, shape.keyframes * pc.grid ** 2, pc.video_feature_dim, generator=g),
                         torch.randn(2, shape.chunks * pc.audio_tokens_per_chunk, pc.audio_feature_dim, generator=g),
                         *rs_rope_coords(CFG, shape))
    text = torch.randn(2, 5, CFG.text_dim, generator=g)
    lens = torch.tensor([5, 3], dtype=torch.int32)
    ctx = dit.prepare(shape, text, lens, text, lens, plan)
    video_groups = torch.ones(1, shape.video_tokens, dtype=torch.int64)
    video_groups[0, : shape.video_tokens // 2] = 2
    layout = LayoutGuidance(video_groups, torch.full((2, 5), -1, dtype=torch.int64))
    return dict(dit=dit, ctx=ctx, plan=plan, video=torch.randn(2, *shape.video_latent, generator=g),
                audio=torch.randn(2, shape.audio_latents, CFG.audio.latent_channels, generator=g),
                timesteps=torch.tensor([900.0, 250.0]), layout=layout)


@pytest.fixture
def stubbed_launchers(monkeypatch):
    """The Triton backend with its launchers replaced by allocations, as on a GPU (where a launch is queued)."""
    monkeypatch.setenv("BATON_FAST_BACKEND", "triton")

    def attention(q, k, v, *args, return_lse, **kwargs):
        B, n_q, H, _ = q.shape
        return torch.empty_like(q), (q.new_empty((B, H, n_q)) if return_lse else None)

    monkeypatch.setattr(baton_fast.kernels.rope_attention, "rope_attention_fwd", attention)
    monkeypatch.setattr(baton_fast.kernels.rope_norm, "rmsnorm_rope_fwd", lambda x, *a, **k: torch.empty_like(x))


def forward_reads(run, layout) -> list:
    with torch.no_grad(), HostReads() as reads:
        run["dit"](run["video"], run["audio"], run["timesteps"], run["ctx"], layout)
    return reads.reads


@pytest.mark.parametrize("masked", [False, True], ids=["unmasked", "layout"])
def test_prepared_forward_reads_nothing_back_on_the_gpu_path(run, stubbed_launchers, masked):
    assert forward_reads(run, run["layout"] if masked else None) == []


def test_prepared_forward_reads_nothing_back_on_the_cpu_path(run, monkeypatch):
    monkeypatch.setenv("BATON_FAST_BACKEND", "reference")
    assert forward_reads(run, run["layout"]) == []


def test_direct_calls_check_values_and_opting_out_reads_nothing(stubbed_launchers):
    """The counter sees the value checks of a direct call (one read-back each), and none with check_values=False."""
    q = torch.randn(1, 9, 2, 32)
    coords = baton_fast.video_grid_coords(1, 3, 3)[None]
    table = baton_fast.RopeTable.wan(32)
    lens = torch.tensor([5], dtype=torch.int32)
    calls = {
        "rope_attention": lambda **kw: baton_fast.rope_attention(q, q, q, coords, coords, table, k_lens=lens, **kw),
        "apply_rope": lambda **kw: baton_fast.apply_rope(q, coords, table, **kw),
        "rmsnorm_rope": lambda **kw: baton_fast.rmsnorm_rope(q, coords, table, **kw),
        "qk_rmsnorm_rope": lambda **kw: baton_fast.qk_rmsnorm_rope(q, q, coords, coords, table, **kw),
    }
    for name, call in calls.items():
        with HostReads() as checked:
            call()
        with HostReads() as trusted:
            call(check_values=False)
        assert checked.reads and trusted.reads == [], name


def test_prepare_checks_the_run_values(run):
    """What the steps no longer check is checked once by prepare (here: text lengths beyond the text)."""
    dit, ctx = run["dit"], run["ctx"]
    text = torch.randn(2, 5, CFG.text_dim)
    with pytest.raises(ValueError, match=r"k_lens: expected values in \[0, 5\]"):
        dit.prepare(ctx.shape, text, torch.tensor([6, 1]), text, torch.tensor([5, 5]), run["plan"])
