"""pytest-benchmark settings for the CPU speed-regression suite (``pytest bench/ --benchmark-only``).

Timings run on one torch thread, like ``baton-fast bench``: on a shared machine multi-threaded
timings swing by an order of magnitude.  The machine info that pytest-benchmark stores with each
saved run gets this project's view of the machine (CPU model, library versions).
"""
import torch

from baton_fast.bench import machine


def pytest_configure(config):
    torch.set_num_threads(1)


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["baton_fast"] = machine.machine_info()
