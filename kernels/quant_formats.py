"""The quantisation schemes of the quantised attention, as constants (no triton import: the model layer and the
CLI read them at start-up).  Kernels: ``rope_attention_quant.py``; docs: docs/quantization.md."""
import torch

SCHEMES = ("fp8", "int8", "int8+fp8")
QK_FORMAT = {"fp8": "fp8", "int8": "int8", "int8+fp8": "int8"}  # storage of Q and K per scheme
FP8_PV = {"fp8": True, "int8": False, "int8+fp8": True}          # P.V in fp8 (else fp16)
QMAX = {"fp8": 448.0, "int8": 127.0}  # largest magnitude of e4m3 / symmetric int8, per storage format
STORAGE = {"fp8": torch.float8_e4m3fn, "int8": torch.int8}
V_BLOCK = 64   # keys per V scale block (fp8): every attention BLOCK_N divides it
P_SCALE = 448.0  # P in [0, 1] times 448 uses e4m3's whole range (no subnormal flush of small weights)
MAX_HEAD_DIM = 128  # head dims of the shipped configurations (every model of the family: 64..128)
