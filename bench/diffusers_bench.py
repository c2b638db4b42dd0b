"""diffusers drop-in benchmark: diffusers' default attention processors vs ``baton_fast.integrations.diffusers``.

Two kinds of figures, as records for the benchmark runner (``section="diffusers"``):

- **measured** on this machine: time per forward (median of several runs after a warm-up) and peak
  tensor memory of one forward, same random-weight model and inputs, unpatched vs patched, at a
  mid-size configuration of LTX-2 at 768, 1,920 and 6,144 video tokens and of Wan at 768
  (:data:`MEASURED_CONFIGS`); the time ratio is reported per configuration (per size), on a CPU also
  the ratio of the process's CPU time (steadier than wall time on a shared machine).  On a CPU the baton-fast
  ops run their PyTorch path (RoPE from coordinates, then SDPA) against diffusers' processors, so
  the CPU ratio measures the integration's overhead on CPU, not the kernels.
  Peak memory: the torch profiler's allocation events of the CPU allocator (CUDA:
  ``torch.cuda.max_memory_allocated``), above what was allocated before the forward.  The two
  paths alternate forward by forward; on a loaded CPU, one torch thread (``--threads 1``) gives
  far steadier timings than oversubscribed cores.
- **modelled** HBM bytes of the attention part of one forward at the full LTX-2 and Wan shapes
  (:func:`modelled_hbm_bytes`), for diffusers' path, baton-fast from coordinates, and baton-fast
  given precomputed cos/sin (the fallback path).
"""
from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import dataclass, replace

import torch

from baton_fast.ops import backend_for

from .cost_model import FLOAT32_BYTES, TABLE_ENTRY_BYTES, AttentionShape, Pass, fused_cost, unfused_cost

__all__ = ["run", "modelled_hbm_bytes", "modelled_records", "measured_records", "ModelShape", "FULL_MODELS",
           "MEASURED_CONFIGS", "peak_allocated_bytes"]

SECTION = "diffusers"
DIFFUSERS = "diffusers (default processors)"
BATON = "baton-fast (from coordinates)"
BATON_COS_SIN = "baton-fast (precomputed cos/sin)"


# ------------------------------------------------------------------------------ modelled
@dataclass(frozen=True)
class ModelShape:
    """The attentions of one transformer block (``AttentionShape``, ``layers`` = blocks) at a full shape."""

    name: str
    notes: str
    attentions: tuple


def _ltx2_full() -> ModelShape:
    # diffusers' LTX2VideoTransformer3DModel defaults: 48 blocks, video 32 x 128, audio 32 x 64, interleaved rope.
    # 1280 x 704 px, 121 frames at 24 fps: latents (121 - 1) / 8 + 1 = 16 frames of 22 x 40 (32x spatial VAE);
    # audio 121 / 24 s at 16 kHz / 160 hop / 4 = 25 latents/s: 126 latents; text 1024 tokens (pipeline default).
    video, audio, text, layers = 16 * 22 * 40, 126, 1024, 48

    def attention(name, n_q, n_k, head_dim, q_axes, k_axes, shared):
        return AttentionShape(name, 1, n_q, n_k, 32, 32, head_dim, q_axes, k_axes, 32 if q_axes else 0,
                              32 if k_axes else 0, shared, layers)

    return ModelShape("LTX-2 (1280x704, 121 frames)", "48 blocks, batch 1, bf16, rope_type interleaved", (
        attention("video self-attn", video, video, 128, 3, 3, True),
        attention("audio self-attn", audio, audio, 64, 1, 1, True),
        attention("video-text cross-attn", video, text, 128, 0, 0, False),
        attention("audio-text cross-attn", audio, text, 64, 0, 0, False),
        attention("audio-to-video cross-attn", video, audio, 64, 1, 1, False),
        attention("video-to-audio cross-attn", audio, video, 64, 1, 1, False)))


def _wan_full() -> ModelShape:
    # Wan2.1 14B: 40 blocks, 40 heads x 128; 1280 x 720, 81 frames: latents 21 x 90 x 160, 1 x 2 x 2 patches.
    video, text, layers = 21 * 45 * 80, 512, 40
    return ModelShape("Wan2.1-14B (1280x720, 81 frames)", "40 blocks, batch 1, bf16", (
        AttentionShape("self-attn", 1, video, video, 40, 40, 128, 3, 3, 1, 1, True, layers),
        AttentionShape("text cross-attn", 1, video, text, 40, 40, 128, 0, 0, 0, 0, False, layers)))


FULL_MODELS = (_ltx2_full(), _wan_full())


def _qk_norm_pass(s: AttentionShape, with_rope: bool) -> Pass:
    """RMSNorm of Q and K (read and write each), fused with RoPE from coordinates when ``with_rope``."""
    nbytes = 2 * s.dtype_bytes * (s.q_elements + s.k_elements)
    if with_rope:
        for tokens, axes, rows in ((s.n_q, s.q_axes, s.q_table_rows), (s.n_k, s.k_axes, s.k_table_rows)):
            nbytes += FLOAT32_BYTES * tokens * axes + TABLE_ENTRY_BYTES * rows * s.head_dim // 2
    name = "QK RMSNorm + RoPE (fused)" if with_rope and (s.rotate_q or s.rotate_k) else "QK RMSNorm"
    return Pass(name, 0.0, 0.0, nbytes)


def _unrotated(s: AttentionShape) -> AttentionShape:
    return replace(s, q_axes=0, k_axes=0, q_table_rows=0, k_table_rows=0)


def attention_paths(s: AttentionShape) -> dict:
    """Passes of one attention layer per path.

    diffusers: QK RMSNorm, then the cos/sin path of the cost model (per-forward cos/sin tables shared
    by the blocks, a rotate pass per side that reads x, cos and sin, then attention).  baton-fast:
    one pass per tensor for RMSNorm + RoPE from coordinates, then attention of rotated Q, K.  Given
    precomputed cos/sin, baton-fast runs diffusers' norm and rotate passes before its attention kernel,
    which reads the same Q, K, V, O bytes: the same bytes as diffusers.
    """
    diffusers = (_qk_norm_pass(s, with_rope=False),) + unfused_cost(s).passes
    return {DIFFUSERS: diffusers,
            BATON: (_qk_norm_pass(s, with_rope=True),) + fused_cost(_unrotated(s)).passes,
            BATON_COS_SIN: diffusers}


def modelled_hbm_bytes(model: ModelShape) -> dict:
    """Modelled HBM bytes of the attention part (QK norm, RoPE, attention; projections excluded, identical in
    both) of one forward: ``{path: {"total": bytes, attention name: bytes per forward}}``."""
    out = {}
    for s in model.attentions:
        for path, passes in attention_paths(s).items():
            per_forward = s.layers * sum(p.bytes for p in passes)
            out.setdefault(path, {"total": 0.0})[s.name] = per_forward
            out[path]["total"] += per_forward
    return out


def _record(case, backend, metric, value, unit, *, measured, shape, dtype, notes, **extra) -> dict:
    return dict(section=SECTION, name=case, case=case, backend=backend, device="modelled" if not measured else "",
                kind="measured" if measured else "modelled", measured=measured, metric=metric, value=value,
                unit=unit, shape=shape, dtype=dtype, notes=notes, extra=extra)


def modelled_records() -> list:
    records = []
    for model in FULL_MODELS:
        totals = modelled_hbm_bytes(model)
        shape = {s.name: dict(Nq=s.n_q, Nk=s.n_k, H=s.heads, D=s.head_dim) for s in model.attentions}
        common = dict(measured=False, shape=shape, dtype="bfloat16", notes=model.notes)
        for path, parts in totals.items():
            breakdown = {k: v / 1e9 for k, v in parts.items() if k != "total"}
            records.append(_record(model.name, path, "HBM bytes per forward (attention part)", parts["total"] / 1e9,
                                   "GB", **common, per_attention_GB=breakdown))
        ratio = totals[DIFFUSERS]["total"] / totals[BATON]["total"]
        records.append(_record(model.name, f"{DIFFUSERS} / {BATON}", "HBM bytes ratio", ratio, "x", **common))
        extra = (totals[BATON_COS_SIN]["total"] - totals[BATON]["total"]) / 1e9
        records.append(_record(model.name, BATON_COS_SIN, "extra HBM bytes vs coordinates", extra, "GB", **common))
    return records


# ------------------------------------------------------------------------------ measured
@dataclass(frozen=True)
class MeasuredConfig:
    """One measured model and input size; ``latents``: LTX-2 ``(frames, height, width, audio latents)``, Wan
    ``(frames, height, width)`` of the latent video."""

    name: str
    model_kwargs: dict
    shape: dict
    notes: str
    latents: tuple


LTX2_KWARGS = dict(in_channels=32, out_channels=32, num_attention_heads=4, attention_head_dim=64,
                   cross_attention_dim=256, audio_in_channels=16, audio_out_channels=16, audio_num_attention_heads=4,
                   audio_attention_head_dim=32, audio_cross_attention_dim=128, num_layers=2, caption_channels=64)


def _ltx2_config(frames: int, height: int, width: int, audio: int) -> MeasuredConfig:
    tokens = frames * height * width
    return MeasuredConfig(
        f"LTX-2 mid-size, {tokens:,} video tokens", LTX2_KWARGS,
        dict(B=2, video_tokens=tokens, audio_tokens=audio, text_tokens=128, blocks=2),
        f"2 blocks, video 4 x 64 heads, audio 4 x 32, batch 2, video latents {frames} x {height} x {width} ({tokens} "
        f"tokens), {audio} audio latents, 128 text tokens padded (one row right-, one left-padded), fp32, random weights",
        (frames, height, width, audio))


MEASURED_CONFIGS = (
    _ltx2_config(4, 12, 16, 64),
    _ltx2_config(5, 16, 24, 80),
    _ltx2_config(8, 24, 32, 128),
    MeasuredConfig("Wan mid-size", dict(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=128, in_channels=16, out_channels=16,
        text_dim=64, freq_dim=64, ffn_dim=1024, num_layers=2),
        dict(B=2, video_tokens=768, text_tokens=128, blocks=2),
        "2 blocks, 2 x 128 heads, batch 2, latents 4 x 24 x 32 (768 tokens after 1 x 2 x 2 patches), "
        "128 text tokens, fp32, random weights", (4, 24, 32)),
)


def _model_and_inputs(config: MeasuredConfig, device, dtype):
    from diffusers import LTX2VideoTransformer3DModel, WanTransformer3DModel

    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=g).to(device, dtype)

    if config.name.startswith("LTX-2"):
        frames, height, width, audio = config.latents
        model = LTX2VideoTransformer3DModel(**config.model_kwargs)
        keep = torch.arange(128)
        mask = torch.stack([keep < 96, keep >= 40]).long().to(device)
        inputs = dict(hidden_states=randn(2, frames * height * width, 32), audio_hidden_states=randn(2, audio, 16),
                      encoder_hidden_states=randn(2, 128, 64), audio_encoder_hidden_states=randn(2, 128, 64),
                      timestep=torch.tensor([300.0, 700.0], device=device), num_frames=frames, height=height,
                      width=width, audio_num_frames=audio, encoder_attention_mask=mask,
                      audio_encoder_attention_mask=mask, return_dict=False)
    else:
        model = WanTransformer3DModel(**config.model_kwargs)
        inputs = dict(hidden_states=randn(2, 16, *config.latents), timestep=torch.tensor([300, 700], device=device),
                      encoder_hidden_states=randn(2, 128, 64), return_dict=False)
    model = model.to(device) if dtype == torch.float32 else model.to(device, dtype)
    return model.eval(), inputs


def peak_allocated_bytes(fn, device: str) -> int:
    """Peak bytes of tensors allocated on ``device`` while ``fn()`` runs, above those allocated before it."""
    if device == "cuda":
        torch.cuda.synchronize()
        start = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - start
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    allocations = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        if node.tag == _EventType.Allocation and node.extra_fields.device.type == device:
            allocations.append((node.start_time_ns, node.extra_fields.alloc_size, node.extra_fields.total_allocated))
        stack.extend(node.children)
    if not allocations:
        return 0
    allocations.sort()
    before = allocations[0][2] - allocations[0][1]
    return max(total for _, _, total in allocations) - before


def _seconds(fn, cuda: bool) -> tuple:
    """``(wall seconds, CPU seconds of this process)`` of ``fn()``."""
    if cuda:
        torch.cuda.synchronize()
    start, cpu_start = time.perf_counter(), time.process_time()
    fn()
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start, time.process_time() - cpu_start


def measured_records(quick: bool = True) -> list:
    """Time per forward and peak memory, unpatched vs patched, per :data:`MEASURED_CONFIGS`.

    The two paths alternate forward by forward (patching is outside the timed region; the order flips every
    round), so that a change of machine load hits both; a warm-up forward of each comes first.
    """
    from baton_fast.integrations import diffusers as baton_diffusers

    cuda = torch.cuda.is_available()
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    dtype_name = str(dtype).replace("torch.", "")
    rounds = 4 if quick else 10
    records = []
    for config in MEASURED_CONFIGS:
        model, inputs = _model_and_inputs(config, device, dtype)

        def forward():
            with torch.no_grad():
                return model(**inputs)[0]

        def patched(backend):
            return baton_diffusers.apply(model) if backend == BATON else contextlib.nullcontext()

        seconds, cpu_seconds, peak, output = {DIFFUSERS: [], BATON: []}, {DIFFUSERS: [], BATON: []}, {}, {}
        for backend in (DIFFUSERS, BATON):
            with patched(backend):
                output[backend] = forward()  # warm-up
                peak[backend] = peak_allocated_bytes(forward, device)
        for i in range(rounds):  # alternating which path goes first (ABBA), so that neither always runs warm
            for backend in (DIFFUSERS, BATON) if i % 2 == 0 else (BATON, DIFFUSERS):
                with patched(backend):
                    wall, cpu = _seconds(forward, cuda)
                seconds[backend].append(wall)
                cpu_seconds[backend].append(cpu)

        common = dict(measured=True, shape=config.shape, dtype=dtype_name, notes=config.notes,
                      torch_threads=torch.get_num_threads())
        for backend in (DIFFUSERS, BATON):
            label = backend if backend == DIFFUSERS else f"{backend}, {backend_for(torch.device(device))} backend"
            records.append(dict(_record(config.name, label, "time per forward (median)",
                                        statistics.median(seconds[backend]) * 1e3, "ms", **common,
                                        runs_ms=[t * 1e3 for t in seconds[backend]]), device=device))
            records.append(dict(_record(config.name, label, "peak tensor memory per forward", peak[backend] / 2**20,
                                        "MiB", **common), device=device))
        reference = output[DIFFUSERS].float()
        error = ((output[BATON].float() - reference).abs().max() / reference.abs().max()).item()
        pair_ratios = [b / d for b, d in zip(seconds[BATON], seconds[DIFFUSERS])]
        ratio_name = f"{BATON} / {DIFFUSERS}"
        records.append(dict(_record(config.name, ratio_name, "time ratio (median of paired runs)",
                                    statistics.median(pair_ratios), "x", **common,
                                    max_relative_output_difference=error), device=device))
        if not cuda:  # CPU time of the process: far steadier than wall time on a shared machine
            cpu_ratios = [b / d for b, d in zip(cpu_seconds[BATON], cpu_seconds[DIFFUSERS])]
            records.append(dict(_record(config.name, ratio_name, "CPU-time ratio (median of paired runs)",
                                        statistics.median(cpu_ratios), "x", **common,
                                        cpu_runs_ms={b: [t * 1e3 for t in cpu_seconds[b]] for b in cpu_seconds}),
                                device=device))
        records.append(dict(_record(config.name, ratio_name, "peak memory ratio",
                                    peak[BATON] / peak[DIFFUSERS] if peak[DIFFUSERS] else None, "x", **common),
                            device=device))
    return records


def run(quick: bool = True) -> list:
    """All records of this benchmark: modelled bytes at full shapes, then the measured comparison."""
    return modelled_records() + measured_records(quick)


def main(argv=None) -> None:
    """``python -m baton_fast.bench.diffusers_bench [--full] [--threads N]``: print the records."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="10 paired rounds per size (default: 4, as bench --quick)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: steadier timings)")
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error(f"--threads: expected a positive integer, got {args.threads}")
    torch.set_num_threads(args.threads)
    for r in run(quick=not args.full):
        value = "-" if r["value"] is None else f"{r['value']:.4g}"
        print(f"[{r['kind']}] {r['case']} | {r['backend']} | {r['metric']}: {value} {r['unit']}")


if __name__ == "__main__":
    main()
