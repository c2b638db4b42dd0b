"""Cost model of one attention with RoPE: FLOPs, minimal HBM bytes and a roofline time ("modelled").

Three paths compute the same ``softmax(R(q) R(k)^T * scale) v``:

- ``fused`` (baton-fast ``rope_attention``): one kernel reads Q, K, V once, writes O, and reads
  ``A`` float32 coordinates per rotated token plus the rope table (float32 frequency and int32 axis
  per pair); Q is rotated in the prologue, K inside the key loop, i.e. once per query block and
  head (``cdiv(Nq, block_m) * H`` times).
- ``fused, K pre-rotated``: K is rotated once by a pre-pass (in the model, fused into the QK RMSNorm
  pass that exists anyway) and the attention kernel runs with ``rotate_k=False``.  Keys fixed for
  the whole sampling run (Baton plan tokens) are rotated once per run, so no pre-pass is counted.
- ``unfused`` (diffusers-style): per-token float32 cos and sin tables over ``rows x D`` (``rows`` = 1
  for a table shared by the heads, ``H`` for LTX-2's per-head tables), generated once per forward
  and shared by the model's ``layers`` blocks (their generation is divided by ``layers``); one rotate
  pass per rotated side that reads x, cos and sin and writes x; then attention on rotated Q, K.

Bytes are the compulsory traffic of each pass (every tensor read or written once; re-reads of K/V
tiles by the query blocks are served by L2 in every path and are not counted), so they are lower
bounds; eager PyTorch's rotate (several elementwise kernels with float32 temporaries) moves more
than the single rotate pass counted here, so the unfused path is modelled generously.

Arithmetic is split into matrix FLOPs (tensor cores: ``QK^T`` and ``PV``, ``4 B H Nq Nk D``) and
vector operations on the CUDA cores (angles, sin/cos, rotations).  The softmax (identical in every
path) is not modelled.  The roofline time of a pass is ``max(matrix / tensor peak, vector /
FP32 peak, bytes / HBM bandwidth)``; a path's time is the sum over its passes (launch overhead
ignored).  Coordinates are shared by the batch (``[1, N, A]``), as the ops accept.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from baton_fast.kernels.rope_attention import shipped_configs

__all__ = ["AttentionShape", "Pass", "PathCost", "Device", "DEVICES", "PATHS", "attention_flops", "fused_cost",
           "fused_prerotated_k_cost", "unfused_cost", "roofline_seconds", "model_records",
           "SINCOS_OPS", "FUSED_PAIR_OPS", "UNFUSED_ELEMENT_OPS", "BLOCK_M", "FLOAT32_BYTES", "TABLE_ENTRY_BYTES",
           "Link", "LINKS", "SP_DEGREES", "SP_SCHEMES", "sp_traffic", "sp_records"]

# Vector operations per rotary pair in the fused kernels (kernels/rope_math.py, counted by hand):
# angle c * f (1), sincos (SINCOS_OPS), rotation x1 cos - x2 sin, x1 sin + x2 cos (6).
SINCOS_OPS = 38  # range reduction 10, sin polynomial 7, cos polynomial 9, quadrant fix-up 12
FUSED_PAIR_OPS = 1 + SINCOS_OPS + 6
# diffusers' rotate: x * cos + rotate_half(x) * sin, per element, with cos/sin read from memory
UNFUSED_ELEMENT_OPS = 3
# Query rows per program of the fused attention kernel (the first sm_90 "fused" shipped configuration
# for D=128, kernels/rope_attention.py SHIPPED_CONFIGS); sets how often K is rotated in the loop.
BLOCK_M = shipped_configs(9, 128, "fused")[0][0]
FLOAT32_BYTES = 4
TABLE_ENTRY_BYTES = 8  # float32 frequency + int32 axis per pair


@dataclass(frozen=True)
class AttentionShape:
    """Integer description of one attention.

    ``q_axes`` / ``k_axes``: float32 coordinates per token read by the rotation (0: side not rotated).
    ``q_table_rows`` / ``k_table_rows``: rows of the rope table (1 shared, H per head, 0 none).
    ``shared_table``: queries and keys use the same coordinates and table (self-attention), so the
    unfused path materialises one cos/sin table for both.  ``layers``: blocks sharing that table.
    ``k_static``: K/V fixed for the sampling run.  ``dtype_bytes``: 2 for bf16/fp16, 4 for fp32.
    """

    name: str
    batch: int
    n_q: int
    n_k: int
    heads: int
    kv_heads: int
    head_dim: int
    q_axes: int
    k_axes: int
    q_table_rows: int
    k_table_rows: int
    shared_table: bool
    layers: int
    dtype_bytes: int = 2
    k_static: bool = False

    def __post_init__(self):
        for field in ("batch", "n_q", "n_k", "heads", "kv_heads", "head_dim", "layers", "dtype_bytes"):
            if int(getattr(self, field)) < 1:
                raise ValueError(f"{field}: expected a positive integer, got {getattr(self, field)}")
        if self.head_dim % 2 or self.heads % self.kv_heads:
            raise ValueError(f"head_dim / kv_heads: expected an even head dim and kv_heads dividing heads, got "
                             f"head_dim={self.head_dim}, heads={self.heads}, kv_heads={self.kv_heads}")
        for side in ("q", "k"):
            axes, rows = getattr(self, f"{side}_axes"), getattr(self, f"{side}_table_rows")
            if axes < 0 or rows < 0 or (axes > 0) != (rows > 0):
                raise ValueError(f"{side}_axes / {side}_table_rows: expected both 0 (not rotated) or both positive, "
                                 f"got {axes} / {rows}")

    @property
    def rotate_q(self) -> bool:
        return self.q_axes > 0

    @property
    def rotate_k(self) -> bool:
        return self.k_axes > 0

    @property
    def q_elements(self) -> int:
        return self.batch * self.n_q * self.heads * self.head_dim

    @property
    def k_elements(self) -> int:
        return self.batch * self.n_k * self.kv_heads * self.head_dim


@dataclass(frozen=True)
class Pass:
    """One kernel launch: matrix FLOPs, vector operations and minimal HBM bytes."""

    name: str
    matrix_flops: float
    vector_ops: float
    bytes: float


@dataclass(frozen=True)
class PathCost:
    path: str
    passes: tuple

    @property
    def matrix_flops(self) -> float:
        return sum(p.matrix_flops for p in self.passes)

    @property
    def vector_ops(self) -> float:
        return sum(p.vector_ops for p in self.passes)

    @property
    def bytes(self) -> float:
        return sum(p.bytes for p in self.passes)


@dataclass(frozen=True)
class Device:
    """Datasheet ceilings: dense BF16 tensor-core FLOP/s, FP32 (non-tensor) FLOP/s, HBM bytes/s."""

    name: str
    matrix_flops_per_s: float
    vector_ops_per_s: float
    hbm_bytes_per_s: float
    source: str


# NVIDIA H100 Tensor Core GPU datasheet (H100 SXM column): BF16 Tensor Core 1,979 TFLOP/s *with
# sparsity* (dense is half: 989.4), FP32 67 TFLOP/s, HBM3 3.35 TB/s.  NVIDIA H200 datasheet (H200
# SXM): the same GH100 compute (BF16 1,979 sparse / 989.4 dense, FP32 67), HBM3e 4.8 TB/s.
DEVICES = {
    "H100 SXM": Device("H100 SXM", 989.4e12, 66.9e12, 3.35e12,
                       "NVIDIA H100 datasheet: BF16 dense 989.4 TFLOP/s (1,979 sparse), FP32 67 TFLOP/s, HBM3 3.35 TB/s"),
    "H200 SXM": Device("H200 SXM", 989.4e12, 66.9e12, 4.8e12,
                       "NVIDIA H200 datasheet: BF16 dense 989.4 TFLOP/s (1,979 sparse), FP32 67 TFLOP/s, HBM3e 4.8 TB/s"),
}


# --------------------------------------------------------------------------- building blocks
def attention_flops(s: AttentionShape) -> float:
    """Matrix FLOPs of ``QK^T`` and ``PV``: ``4 B H Nq Nk D``."""
    return 4.0 * s.batch * s.heads * s.n_q * s.n_k * s.head_dim


def _qkvo_bytes(s: AttentionShape) -> float:
    return s.dtype_bytes * (2 * s.q_elements + 2 * s.k_elements)


def _rope_inputs_bytes(tokens: int, axes: int, table_rows: int, head_dim: int) -> float:
    """Coordinates ``[1, N, A]`` float32 plus the table (frequency and axis per pair and row)."""
    return FLOAT32_BYTES * tokens * axes + TABLE_ENTRY_BYTES * table_rows * head_dim // 2


def _rotation_ops(rows: int, head_dim: int) -> float:
    """Vector operations to rotate ``rows`` vectors of ``head_dim`` in a fused kernel."""
    return float(rows) * (head_dim // 2) * FUSED_PAIR_OPS


def _attention_pass(s: AttentionShape, name: str, rotate_q: bool, rotate_k_in_loop: bool) -> Pass:
    nbytes = _qkvo_bytes(s)
    vector = 0.0
    if rotate_q:
        nbytes += _rope_inputs_bytes(s.n_q, s.q_axes, s.q_table_rows, s.head_dim)
        vector += _rotation_ops(s.batch * s.heads * s.n_q, s.head_dim)
    if rotate_k_in_loop:
        nbytes += _rope_inputs_bytes(s.n_k, s.k_axes, s.k_table_rows, s.head_dim)
        programs = math.ceil(s.n_q / BLOCK_M) * s.batch * s.heads
        vector += _rotation_ops(programs * s.n_k, s.head_dim)
    return Pass(name, attention_flops(s), vector, nbytes)


# --------------------------------------------------------------------------- the three paths
def fused_cost(s: AttentionShape) -> PathCost:
    """baton-fast ``rope_attention``: Q rotated in the prologue, K in the key loop."""
    return PathCost("fused", (_attention_pass(s, "fused attention", s.rotate_q, s.rotate_k),))


def fused_prerotated_k_cost(s: AttentionShape) -> PathCost:
    """A K pre-pass (skipped for static keys), then ``rope_attention(rotate_k=False)``."""
    passes = []
    if s.rotate_k and not s.k_static:
        nbytes = 2 * s.dtype_bytes * s.k_elements + _rope_inputs_bytes(s.n_k, s.k_axes, s.k_table_rows, s.head_dim)
        passes.append(Pass("rotate K (pre-pass)", 0.0, _rotation_ops(s.batch * s.kv_heads * s.n_k, s.head_dim), nbytes))
    passes.append(_attention_pass(s, "fused attention, K pre-rotated", s.rotate_q, False))
    return PathCost("fused, K pre-rotated", tuple(passes))


def unfused_cost(s: AttentionShape) -> PathCost:
    """diffusers-style: cos/sin tables (amortised over ``layers``), rotate passes, then attention."""
    sides = [("Q", s.n_q, s.heads, s.q_axes, s.q_table_rows)] if s.rotate_q else []
    if s.rotate_k:
        sides.append(("K", s.n_k, s.kv_heads, s.k_axes, s.k_table_rows))
    tables = sides[:1] if s.shared_table else sides
    passes = []
    for name, tokens, _, axes, rows in tables:
        width = rows * s.head_dim  # cos (and sin) entries per token: every pair's value stored twice
        passes.append(Pass(f"cos/sin table for {name} (1/{s.layers} of one per forward)", 0.0,
                           tokens * rows * (s.head_dim // 2) * (1 + SINCOS_OPS) / s.layers,
                           (FLOAT32_BYTES * tokens * axes + 2 * FLOAT32_BYTES * tokens * width) / s.layers))
    for name, tokens, heads, _, rows in sides:
        elements = s.batch * tokens * heads * s.head_dim
        table_bytes = 2 * FLOAT32_BYTES * tokens * rows * s.head_dim
        passes.append(Pass(f"rotate {name}", 0.0, UNFUSED_ELEMENT_OPS * elements,
                           2 * s.dtype_bytes * elements + table_bytes))
    passes.append(Pass("attention", attention_flops(s), 0.0, _qkvo_bytes(s)))
    return PathCost("unfused", tuple(passes))


PATHS = {"fused": fused_cost, "fused, K pre-rotated": fused_prerotated_k_cost, "unfused": unfused_cost}


def roofline_seconds(cost: PathCost, device: Device) -> float:
    """Sum over passes of ``max(matrix / tensor peak, vector / FP32 peak, bytes / bandwidth)``."""
    return sum(max(p.matrix_flops / device.matrix_flops_per_s, p.vector_ops / device.vector_ops_per_s,
                   p.bytes / device.hbm_bytes_per_s) for p in cost.passes)


def model_records(s: AttentionShape, dtype: str = "bfloat16") -> list[dict]:
    """Benchmark records (``kind="modelled"``) of every path of one attention: FLOPs, bytes, roofline
    time per device, and the unfused / fused ratios of bytes and roofline time."""
    shape = dict(B=s.batch, Nq=s.n_q, Nk=s.n_k, H=s.heads, Hk=s.kv_heads, D=s.head_dim)
    costs = {name: build(s) for name, build in PATHS.items()}

    def record(backend, metric, value, unit, **extra):
        return dict(section="cost_model", case=s.name, backend=backend, device="modelled", kind="modelled",
                    metric=metric, value=value, unit=unit, shape=shape, dtype=dtype, extra=extra)

    out = []
    for name, cost in costs.items():
        passes = [p.name for p in cost.passes]
        out.append(record(name, "matrix FLOPs", cost.matrix_flops, "FLOP", passes=passes))
        out.append(record(name, "vector ops", cost.vector_ops, "op", passes=passes))
        out.append(record(name, "HBM bytes", cost.bytes, "B", passes=passes))
        for device in DEVICES.values():
            out.append(record(name, f"roofline time {device.name}", roofline_seconds(cost, device) * 1e6, "us",
                              ceilings=device.source))
    out.append(record("unfused / fused", "HBM bytes ratio", costs["unfused"].bytes / costs["fused"].bytes, "x"))
    for device in DEVICES.values():
        ratio = roofline_seconds(costs["unfused"], device) / roofline_seconds(costs["fused"], device)
        out.append(record("unfused / fused", f"roofline time ratio {device.name}", ratio, "x", ceilings=device.source))
    return out


# --------------------------------------------------------------------------- sequence parallelism
# Communication of one DiT evaluation (one Euler step: the CFG batch [cond; uncond]) with the video tokens and
# the video plan tokens split over ``degree`` ranks (baton_fast.distributed, docs/distributed.md); audio and
# text replicated.  Bytes are what each rank sends; a link moves them at its per-direction bandwidth (an ideal
# switch: all-to-all and ring traffic never share a link).  Compute is the DiT forward's FLOPs split over the
# ranks at the dense BF16 peak (a lower bound: real kernels reach a fraction of it; the replicated audio
# branch, ~1% of the FLOPs, is counted as split too).


@dataclass(frozen=True)
class Link:
    """A GPU-to-GPU link: bytes/s in one direction, with its source."""

    name: str
    bytes_per_s: float
    source: str


LINKS = {
    "NVLink 4": Link("NVLink 4", 450e9, "NVIDIA H100/H200 SXM datasheet: NVLink 900 GB/s bidirectional, "
                                        "450 GB/s per direction"),
    "PCIe 5.0 x16": Link("PCIe 5.0 x16", 64e9, "PCIe 5.0 x16: 128 GB/s bidirectional, 64 GB/s per direction"),
}
SP_DEGREES = (1, 2, 4, 8)
SP_SCHEMES = ("ulysses", "ring")


def sp_traffic(cfg, seconds: float, degree: int, scheme: str, batch: int = 2, dtype_bytes: int = 2) -> dict:
    """Bytes one rank sends per DiT evaluation, by collective, for ``scheme`` (``"ulysses"`` or ``"ring"``).

    Per block: the video self-attention (Ulysses: all-to-all of q, k, v in and o out; ring: the K/V block
    sent ``degree - 1`` times), the plan cross-attention (Ulysses: q in and o out, the plan K/V cached split
    by heads once per run, not counted; ring: the plan K/V block passed around every step), the audio
    queries' attention to the video
    keys (each rank's partial output and LSE all-gathered); once per evaluation the video output tokens are
    all-gathered.  ``batch`` rows (2: classifier-free guidance), ``dtype_bytes`` per element.
    """
    if scheme not in SP_SCHEMES:
        raise ValueError(f"scheme: expected one of {SP_SCHEMES}, got {scheme!r}")
    if degree < 1 or (scheme == "ulysses" and cfg.video.num_heads % degree):
        raise ValueError(f"degree: expected a positive integer (dividing {cfg.video.num_heads} heads for Ulysses), "
                         f"got {degree}")
    shape, P, dim, layers = cfg.shape(seconds), degree, cfg.video.dim, cfg.video.num_layers
    plan_tokens = shape.keyframes * cfg.planner.grid ** 2 if cfg.planner is not None else 0
    audio_tokens = shape.audio_latents // cfg.audio.patch[0]
    video_shard, plan_shard = math.ceil(shape.video_tokens / P), math.ceil(plan_tokens / P)

    def tokens(n):  # bytes of n tokens of the full width, all rows
        return batch * n * dim * dtype_bytes

    others = (P - 1) / P  # share of a shard an all-to-all sends away
    if scheme == "ulysses":
        self_attn, plan_attn = 4 * others * tokens(video_shard), 2 * others * tokens(video_shard)
    else:
        self_attn, plan_attn = 2 * (P - 1) * tokens(video_shard), 2 * (P - 1) * tokens(plan_shard)
    audio_partials = (P - 1) * (tokens(audio_tokens) + batch * cfg.audio.num_heads * audio_tokens * FLOAT32_BYTES)
    patch_values = cfg.video.latent_channels * cfg.video.patch_volume
    return {"video self-attention": layers * self_attn,
            "plan cross-attention": layers * plan_attn if plan_tokens else 0.0,
            "audio -> video cross-attention": layers * audio_partials,
            "video output gather": (P - 1) * batch * video_shard * patch_values * dtype_bytes}


def sp_records(cfg, seconds: float, forward_flops: float, device: Device = DEVICES["H200 SXM"]) -> list[dict]:
    """Modelled records of every scheme and degree of :data:`SP_DEGREES`: bytes sent per rank per step,
    communication time per link, compute time (``forward_flops / degree`` at ``device``'s peak) and the step
    time without and with ideal overlap of communication and compute."""
    out = []
    for scheme in SP_SCHEMES:
        for degree in SP_DEGREES:
            traffic = sp_traffic(cfg, seconds, degree, scheme)
            sent = sum(traffic.values())
            compute = forward_flops / degree / device.matrix_flops_per_s

            def record(metric, value, unit, **extra):
                return dict(section="sp_model", case=f"{cfg.name} {seconds:g} s", backend=f"{scheme} x{degree}",
                            device="modelled", kind="modelled", metric=metric, value=value, unit=unit,
                            shape=dict(degree=degree, video_tokens=cfg.shape(seconds).video_tokens),
                            dtype="bfloat16", extra=extra)

            out.append(record("bytes sent per rank per step", sent, "B", by_collective=traffic))
            out.append(record(f"compute per step at {device.name} peak", compute * 1e3, "ms", ceilings=device.source))
            for link in LINKS.values():
                comm = sent / link.bytes_per_s
                out.append(record(f"communication per step, {link.name}", comm * 1e3, "ms", link=link.source))
                out.append(record(f"step, {link.name}, no overlap", (compute + comm) * 1e3, "ms", link=link.source))
                out.append(record(f"step, {link.name}, ideal overlap", max(compute, comm) * 1e3, "ms",
                                  link=link.source))
    return out


# --------------------------------------------------------------------------- block-sparse attention
# Sliding-tile (STA-like) video self-attention at full size: the kernel computes the visited blocks
# (partial ones whole, masked lanes included) of baton_fast.BlockMask.sliding_tile in tile-major order,
# with its default (128, 64) blocks; Q, K, V and O still cross HBM once.  Published figures of the
# sparse-attention methods, quoted beside the model (published by their authors, not measured here).
SPARSE_CASES = (
    # name, grid (T, H, W) latent tokens, heads, head dim, tile (t, h, w), windows in tiles
    ("Ovi-720p-5s video self-attn", (31, 22, 22), 24, 128, (4, 8, 8), ((3, 3, 3), (5, 3, 3))),
    ("Wan-14B-720p video self-attn", (21, 45, 80), 40, 128, (4, 8, 8), ((3, 3, 3), (3, 5, 5))),
)
PUBLISHED_SPARSE = (
    "STA (FastVideo, Zhang et al. 2025): sliding-tile attention 2.8-17x over FlashAttention-2, HunyuanVideo "
    "end to end 945 s -> 501 s training-free; VSA: 6x attention speedup on Wan-1.3B at 85 % of FA3's MFU; "
    "Radial Attention: 1.8x end to end on Wan-14B; Sparse VideoGen: 1.5-2x (published figures as cited in issue 12)")


def sparse_records(device: Device = DEVICES["H200 SXM"]) -> list[dict]:
    """Modelled records of :data:`SPARSE_CASES`: block density, matrix FLOPs, roofline time dense and sparse,
    and the modelled speedup, per window; the published figures ride along in ``extra``."""
    from baton_fast.block_mask import DEFAULT_BLOCK, sliding_tile_block_counts

    out = []
    for name, grid, heads, head_dim, tile, windows in SPARSE_CASES:
        tokens = grid[0] * grid[1] * grid[2]
        s = AttentionShape(name, 1, tokens, tokens, heads, heads, head_dim, 0, 0, 0, 0, True, 1)
        dense_flops = attention_flops(s)
        dense_time = max(dense_flops / device.matrix_flops_per_s, _qkvo_bytes(s) / device.hbm_bytes_per_s)
        for window in windows:
            counts = sliding_tile_block_counts(grid, tile, window, *DEFAULT_BLOCK)
            density = counts["visited"] / counts["total"]
            flops = 4.0 * heads * counts["visited"] * DEFAULT_BLOCK[0] * DEFAULT_BLOCK[1] * head_dim
            sparse_time = max(flops / device.matrix_flops_per_s, _qkvo_bytes(s) / device.hbm_bytes_per_s)

            def record(metric, value, unit, **extra):
                return dict(section="sparse_model", case=name, backend=f"tile {tile}, window {window}",
                            device="modelled", kind="modelled", metric=metric, value=value, unit=unit,
                            shape=dict(B=1, Nq=tokens, Nk=tokens, H=heads, Hk=heads, D=head_dim), dtype="bfloat16",
                            extra=dict(extra, grid=grid, blocks=DEFAULT_BLOCK, published=PUBLISHED_SPARSE))

            out += [record("block density", density, "", full_blocks=counts["full"], visited_blocks=counts["visited"]),
                    record("matrix FLOPs", flops, "FLOP", dense=dense_flops),
                    record(f"roofline time {device.name}", sparse_time * 1e3, "ms", dense_ms=dense_time * 1e3,
                           ceilings=device.source),
                    record(f"speedup over dense {device.name}", dense_time / sparse_time, "x")]
    return out


# --------------------------------------------------------------------------- quantised attention (FP8 vs BF16)
# Long self-attention after the QK-norm + RoPE pre-pass, bf16 against the quantised path of baton_fast.quant
# (docs/quantization.md): the pre-pass also quantises Q and K (fp8 / int8, one float32 scale per token and head)
# and reads K a second time for its smoothing mean; V is quantised in a pass of its own (fp8, one scale per 64
# keys and channel); the attention reads 1-byte Q, K, V and writes bf16 O.  Matrix FLOPs run at the dense FP8 /
# INT8 tensor-core peak.  NVIDIA H100 datasheet (SXM): FP8 Tensor Core 3,958 TFLOP/s and INT8 3,958 TOPS *with
# sparsity*, dense 1,979; H200 SXM: the same GH100 figures.
LOW_PRECISION_PEAK = {"H100 SXM": 1979e12, "H200 SXM": 1979e12}
LOW_PRECISION_SOURCE = "NVIDIA H100/H200 datasheets: FP8 / INT8 dense 1,979 TFLOP/s (3,958 sparse)"
SCALE_BYTES = 4
QUANT_CASES = (  # name, tokens, heads (head dim 128): Ovi 720p 5 s, Wan2.1-14B 720p 81 frames, LTX-2
    ("Ovi video self-attn", 15004, 24),
    ("Wan2.1-14B 720p video self-attn", 75600, 40),
    ("LTX-2 video self-attn", 14080, 32),
)


def quant_passes(s: AttentionShape, quantized: bool) -> tuple:
    """``(pass, matrix precision)`` of a self-attention after the pre-pass: bf16 (``quantized=False``), or the
    pre-pass quantising Q and K, a V quantise pass and the 8-bit attention."""
    q, k = s.q_elements, s.k_elements
    rotation = _rotation_ops(s.batch * (s.heads * s.n_q + s.kv_heads * s.n_k), s.head_dim)
    if not quantized:
        return ((Pass("QK norm + RoPE pre-pass", 0.0, rotation, 2 * s.dtype_bytes * (q + k)), "bf16"),
                (Pass("attention", attention_flops(s), 0.0, _qkvo_bytes(s)), "bf16"))
    token_scales = SCALE_BYTES * s.batch * (s.heads * s.n_q + s.kv_heads * s.n_k)
    v_scales = SCALE_BYTES * k // 64
    prepass = Pass("QK norm + RoPE + quantise pre-pass (K read twice)", 0.0, rotation,
                   s.dtype_bytes * (q + 2 * k) + (q + k) + token_scales)
    v_pass = Pass("V quantise", 0.0, 0.0, s.dtype_bytes * k + k + v_scales)
    attention = Pass("8-bit attention", attention_flops(s), 0.0, (q + 2 * k) + token_scales + v_scales
                     + s.dtype_bytes * q)
    return (prepass, "bf16"), (v_pass, "bf16"), (attention, "fp8")


def _quant_seconds(passes, device: Device) -> float:
    return sum(max(p.matrix_flops / (LOW_PRECISION_PEAK[device.name] if precision == "fp8" else
                                     device.matrix_flops_per_s),
                   p.vector_ops / device.vector_ops_per_s, p.bytes / device.hbm_bytes_per_s)
               for p, precision in passes)


def quant_records() -> list[dict]:
    """Modelled records of :data:`QUANT_CASES`: matrix FLOPs, HBM bytes and roofline time of the bf16 and the
    8-bit path (fp8 and int8+fp8 alike: same peak, same bytes) per device, and the modelled speed-up."""
    out = []
    for name, tokens, heads in QUANT_CASES:
        s = AttentionShape(name, 1, tokens, tokens, heads, heads, 128, 0, 0, 0, 0, True, 1)
        shape = dict(B=1, Nq=tokens, Nk=tokens, H=heads, Hk=heads, D=128)
        paths = {"bf16": quant_passes(s, False), "fp8 / int8+fp8": quant_passes(s, True)}

        def record(backend, metric, value, unit, **extra):
            return dict(section="quant_model", case=name, backend=backend, device="modelled", kind="modelled",
                        metric=metric, value=value, unit=unit, shape=shape, dtype=backend, extra=extra)

        for backend, passes in paths.items():
            names = [p.name for p, _ in passes]
            out.append(record(backend, "matrix FLOPs", sum(p.matrix_flops for p, _ in passes), "FLOP", passes=names))
            out.append(record(backend, "HBM bytes", sum(p.bytes for p, _ in passes), "B", passes=names))
            for device in DEVICES.values():
                out.append(record(backend, f"roofline time {device.name}", _quant_seconds(passes, device) * 1e3, "ms",
                                  ceilings=f"{device.source}; {LOW_PRECISION_SOURCE}"))
        for device in DEVICES.values():
            ratio = _quant_seconds(paths["bf16"], device) / _quant_seconds(paths["fp8 / int8+fp8"], device)
            out.append(record("bf16 / fp8", f"roofline speed-up {device.name}", ratio, "x"))
    return out


def quant_table() -> str:
    """:func:`quant_records` as a markdown table (labelled modelled)."""
    rows = {}
    for r in quant_records():
        rows.setdefault(r["case"], {})[(r["backend"], r["metric"])] = r["value"]
    lines = ["| case (modelled) | bf16 GFLOP | HBM MB bf16 / 8-bit | H100 ms bf16 / 8-bit | H200 ms bf16 / 8-bit "
             "| speed-up H100 / H200 |", "|---|---|---|---|---|---|"]
    for case, v in rows.items():
        b, q = "bf16", "fp8 / int8+fp8"
        lines.append(f"| {case} | {v[(b, 'matrix FLOPs')] / 1e9:,.0f} | {v[(b, 'HBM bytes')] / 1e6:,.0f} / "
                     f"{v[(q, 'HBM bytes')] / 1e6:,.0f} | {v[(b, 'roofline time H100 SXM')]:.2f} / "
                     f"{v[(q, 'roofline time H100 SXM')]:.2f} | {v[(b, 'roofline time H200 SXM')]:.2f} / "
                     f"{v[(q, 'roofline time H200 SXM')]:.2f} | {v[('bf16 / fp8', 'roofline speed-up H100 SXM')]:.2f}x"
                     f" / {v[('bf16 / fp8', 'roofline speed-up H200 SXM')]:.2f}x |")
    return "\n".join(lines)
