"""Diffusers' own training tests for the Wan and LTX-2 transformers, with ``baton_fast.integrations.diffusers.apply``
in effect (the fused processors and RoPE modules), on the default backend (the reference ops on CPU).

Ported from huggingface/diffusers: the model configs and dummy inputs of ``WanTransformer3DTests``
(tests/models/transformers/test_models_transformer_wan.py) and ``LTX2TransformerTests``
(tests/models/transformers/test_models_transformer_ltx2.py); the tests ``test_training``,
``test_training_with_ema`` and ``test_gradient_checkpointing_equivalence`` of ``TrainingTesterMixin``
(tests/models/testing_utils/training.py) and ``test_layerwise_casting_training`` of
``LayerwiseCastingTesterMixin`` (tests/models/testing_utils/memory.py).  Diffusers' LTX-2 config sets
``rope_double_precision=False`` (every layer takes the cos/sin fallback); the LTX-2 cases also run with
``True``, so that the coordinate path is the one trained.  Unlike upstream, the bf16-compute layerwise
casting case is run on CPU too.
"""
import copy
from dataclasses import dataclass

import pytest
import torch
from diffusers import LTX2VideoTransformer3DModel, WanTransformer3DModel
from diffusers.training_utils import EMAModel

from baton_fast.integrations import diffusers as baton_diffusers


@dataclass(frozen=True)
class Case:
    model_class: type
    init: dict
    output_shape: tuple

    def model(self):
        torch.manual_seed(0)
        model = self.model_class(**self.init)
        baton_diffusers.apply(model)
        return model

    def inputs(self):
        g = torch.Generator().manual_seed(0)
        if self.model_class is WanTransformer3DModel:
            return dict(hidden_states=torch.randn(1, 4, 2, 16, 16, generator=g),
                        encoder_hidden_states=torch.randn(1, 12, 16, generator=g),
                        timestep=torch.randint(0, 1000, (1,), generator=g))
        return dict(hidden_states=torch.randn(2, 2 * 16 * 16, 4, generator=g),
                    audio_hidden_states=torch.randn(2, 9, 4, generator=g),
                    encoder_hidden_states=torch.randn(2, 16, 16, generator=g),
                    audio_encoder_hidden_states=torch.randn(2, 16, 16, generator=g),
                    timestep=torch.rand(2, generator=g) * 1000, encoder_attention_mask=torch.ones(2, 16).bool(),
                    num_frames=2, height=16, width=16, audio_num_frames=9, fps=25.0)


WAN = Case(WanTransformer3DModel, dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12,
                                       in_channels=4, out_channels=4, text_dim=16, freq_dim=256, ffn_dim=32,
                                       num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
                                       rope_max_seq_len=32), (4, 2, 16, 16))  # upstream's (4, 1, 16, 16) broadcasts
_LTX2 = dict(in_channels=4, out_channels=4, patch_size=1, patch_size_t=1, num_attention_heads=2, attention_head_dim=8,
             cross_attention_dim=16, audio_in_channels=4, audio_out_channels=4, audio_num_attention_heads=2,
             audio_attention_head_dim=4, audio_cross_attention_dim=8, num_layers=2, qk_norm="rms_norm_across_heads",
             caption_channels=16)
CASES = {"wan": WAN,
         "ltx2": Case(LTX2VideoTransformer3DModel, dict(_LTX2, rope_double_precision=False), (512, 4)),
         "ltx2_double_rope": Case(LTX2VideoTransformer3DModel, dict(_LTX2, rope_double_precision=True), (512, 4))}


@pytest.fixture(params=[pytest.param(name, marks=pytest.mark.slow) if name.startswith("ltx2") else name for name in CASES])
def case(request):
    return CASES[request.param]


def mse_to_noise(case, output):
    noise = torch.randn((output.shape[0],) + case.output_shape)
    return torch.nn.functional.mse_loss(output, noise.to(output.dtype))


def test_training(case):
    model = case.model().train()
    output = model(**case.inputs(), return_dict=False)[0]
    mse_to_noise(case, output).backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert any("norm_q" in n for n in grads) and all(bool(torch.isfinite(g).all()) for g in grads.values())


def test_training_with_ema(case):
    model = case.model().train()
    ema = EMAModel(model.parameters())
    output = model(**case.inputs(), return_dict=False)[0]
    mse_to_noise(case, output).backward()
    ema.step(model.parameters())
    assert ema.optimization_step == 1


def test_gradient_checkpointing_equivalence(case, loss_tolerance=1e-5, param_grad_tol=5e-5):
    inputs = case.inputs()
    model = case.model().train()
    out = model(**inputs, return_dict=False)[0]
    model.zero_grad()
    labels = torch.randn_like(out)
    loss = (out - labels).mean()
    loss.backward()

    model_2 = case.model().train()
    model_2.load_state_dict(model.state_dict())
    model_2.enable_gradient_checkpointing()
    assert model_2.is_gradient_checkpointing
    out_2 = model_2(**copy.deepcopy(inputs), return_dict=False)[0]
    model_2.zero_grad()
    loss_2 = (out_2 - labels).mean()
    loss_2.backward()

    assert (loss - loss_2).abs() < loss_tolerance
    params_2 = dict(model_2.named_parameters())
    checked = 0
    for name, p in model.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(p.grad, params_2[name].grad, atol=param_grad_tol, rtol=0, msg=name)
            checked += 1
    assert checked


@pytest.mark.parametrize("storage_dtype,compute_dtype", [
    (torch.float16, torch.float32), (torch.float8_e4m3fn, torch.float32), (torch.float8_e5m2, torch.float32),
    (torch.float8_e4m3fn, torch.bfloat16)])
def test_layerwise_casting_training(case, storage_dtype, compute_dtype):
    model = case.model().to(dtype=compute_dtype)
    model.enable_layerwise_casting(storage_dtype=storage_dtype, compute_dtype=compute_dtype)
    model.train()
    inputs = {k: v.to(compute_dtype) if isinstance(v, torch.Tensor) and v.dtype == torch.float32 else v
              for k, v in case.inputs().items()}
    with torch.amp.autocast(device_type="cpu"):
        output = model(**inputs, return_dict=False)[0]
        loss = mse_to_noise(case, output)
    loss.backward()
    assert bool(torch.isfinite(loss))
