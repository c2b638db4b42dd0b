"""Run the Triton kernels under the interpreter when there is no GPU (set before triton is imported)."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: a longer case (still run in CI); deselect with -m 'not slow'")
