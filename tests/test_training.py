"""Training through the product: one fine-tuning step of the tiny-preset DiT (full, and LoRA-style on the
attention projections) on the Triton kernels (interpreter) gives the gradients and updated weights of the
reference backend.

The DiT keeps the tiny preset's widths (2 heads of 32, 64-wide branches) with one fusion block instead of
two, so that the interpreter runs it in seconds; every attention kind of the block is on the path (QK-norm
+ RoPE pre-pass and self-attention, text cross-attention with key lengths, cross-modal and plan
cross-attention with RoPE in the kernel).
"""
import dataclasses

import pytest
import torch
from torch import nn

from baton_fast.model.dit import DualBranchDiT
from test_model_dit import CFG, prepare, random_plan, random_text

pytestmark = pytest.mark.slow

ONE_BLOCK = dataclasses.replace(CFG, video=dataclasses.replace(CFG.video, num_layers=1),
                                audio=dataclasses.replace(CFG.audio, num_layers=1))


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(1)
    shape = CFG.shape(0.5)
    video_text, video_lens = random_text(2, 5, g)  # padded text: key lengths
    audio_text, audio_lens = random_text(2, 5, g)
    x0 = (torch.randn(2, *shape.video_latent, generator=g),
          torch.randn(2, shape.audio_latents, CFG.audio.latent_channels, generator=g))
    noise = tuple(torch.randn(x.shape, generator=g) for x in x0)
    return dict(shape=shape, plan=random_plan(CFG, shape, 2, g), video_text=video_text, video_lens=video_lens,
                audio_text=audio_text, audio_lens=audio_lens, x0=x0, noise=noise, t=torch.tensor([0.8, 0.3]))


class LoRALinear(nn.Module):
    """``base(x) + x A^T B^T * scale`` with ``base`` frozen: the adapter a LoRA fine-tune trains."""

    def __init__(self, base: nn.Linear, rank: int = 4):
        super().__init__()
        self.base = base.requires_grad_(False)
        self.a = nn.Parameter(torch.randn(rank, base.in_features) / base.in_features ** 0.5)
        self.b = nn.Parameter(torch.randn(base.out_features, rank) * 0.01)  # nonzero: both factors get gradients

    def forward(self, x):
        return self.base(x) + x @ self.a.t() @ self.b.t()


def add_lora(model: nn.Module) -> nn.Module:
    """Freeze ``model`` and wrap the q/k/v/o projections of every attention (and K/V of the cross-attentions)."""
    model.requires_grad_(False)
    for module in list(model.modules()):
        for name in ("q", "k", "v", "o"):
            child = getattr(module, name, None)
            if isinstance(child, nn.Linear):
                setattr(module, name, LoRALinear(child))
    return model


def training_step(model, batch, backend, monkeypatch):
    """One flow-matching step (SGD: Adam would turn a 1e-9 gradient, exactly 0 on the other backend, into a
    full-size update): returns ``({name: grad}, {name: updated parameter})``."""
    monkeypatch.setenv("BATON_FAST_BACKEND", backend)
    model = model.train()
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    saved = {n: p.detach().clone() for n, p in params.items()}
    opt = torch.optim.SGD(params.values(), lr=1e-2, momentum=0.9)
    opt.zero_grad()
    t = batch["t"]
    noisy = [(1 - t.view(-1, *[1] * (x.dim() - 1))) * x + t.view(-1, *[1] * (x.dim() - 1)) * n
             for x, n in zip(batch["x0"], batch["noise"])]
    velocity = model(*noisy, t * 1000, prepare(model, batch))
    loss = sum(((v - (n - x)) ** 2).mean() for v, n, x in zip(velocity, batch["noise"], batch["x0"]))
    loss.backward()
    opt.step()
    grads = {n: p.grad.detach().clone() for n, p in params.items()}
    updated = {n: p.detach().clone() for n, p in params.items()}
    with torch.no_grad():  # restore, so the next backend starts from the same weights
        for n, p in params.items():
            p.copy_(saved[n])
    return grads, updated


def assert_same_gradients(got: dict, want: dict, rtol=1e-4):
    """Per parameter: max |got - want| <= rtol * (its largest gradient, at least 1e-3 x the model's largest):
    a parameter whose gradient is exactly zero in one (a bias the softmax cancels) is held to the model's scale."""
    assert got.keys() == want.keys() and got
    scale = max(float(g.abs().max()) for g in want.values())
    for name, g in want.items():
        err = float((got[name] - g).abs().max())
        assert err <= rtol * max(float(g.abs().max()), 1e-3 * scale), f"{name}: error {err:.3g}"


def test_full_and_lora_fine_tuning_step_matches_the_reference_backend(batch, monkeypatch):
    """One run covers both: the base weights' gradients are those of full fine-tuning (the adapters only add
    a term to each projection), the adapters' those of a LoRA step (freezing the base changes which weight
    gradients are kept, not the activations' gradients the kernels compute)."""
    torch.manual_seed(0)
    model = add_lora(DualBranchDiT(ONE_BLOCK)).requires_grad_(True)
    grads_ref, updated_ref = training_step(model, batch, "reference", monkeypatch)
    grads, updated = training_step(model, batch, "triton", monkeypatch)
    assert len(grads) == len(list(model.parameters()))
    assert any(name.endswith(".a") for name in grads) and any(name.endswith("patch_embed.weight") for name in grads)
    assert_same_gradients(grads, grads_ref)
    for name, p in updated.items():
        torch.testing.assert_close(p, updated_ref[name], rtol=1e-5, atol=1e-6, msg=name)


def test_lora_freezes_the_base():
    model = add_lora(DualBranchDiT(ONE_BLOCK))
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(name.endswith((".a", ".b")) for name in trainable)
