"""What a benchmark ran on: CPU, memory, GPU (via nvidia-ml-py) and library versions.

Everything here is read without importing the libraries it reports (versions come from the
installed distributions' metadata), and every field that cannot be read is ``None``.
"""
from __future__ import annotations

import os
import platform
from importlib import metadata
from typing import Optional

__all__ = ["machine_info", "cpu_model", "gpu_info", "library_versions", "LIBRARIES"]

# distribution names (as pip knows them) of the libraries whose versions a result depends on
LIBRARIES = ("torch", "triton", "flash-attn", "flash-attn-3", "xformers", "diffusers", "transformers", "numpy",
             "nvidia-ml-py")


def cpu_model() -> Optional[str]:
    """The CPU's model name from ``/proc/cpuinfo`` (Linux), else ``platform.processor()``."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _memory_bytes() -> Optional[int]:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def library_versions(names=LIBRARIES) -> dict:
    """``{distribution: version or None}`` for the distributions ``names`` (default :data:`LIBRARIES`)."""
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _nvml(fn, *args):
    """One NVML query; ``None`` when the GPU or driver does not support it."""
    import pynvml
    try:
        value = fn(*args)
    except pynvml.NVMLError:
        return None
    return value.decode() if isinstance(value, bytes) else value


def gpu_info() -> list[dict]:
    """One dict per NVIDIA GPU: name, driver, clocks (MHz), power (W), memory (bytes), temperature (C).

    Empty when there is no GPU, no driver or no nvidia-ml-py."""
    try:
        import pynvml
        pynvml.nvmlInit()
    except Exception:  # no driver / library: no GPU to describe
        return []
    try:
        driver = _nvml(pynvml.nvmlSystemGetDriverVersion)
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(index)
            memory = _nvml(pynvml.nvmlDeviceGetMemoryInfo, h)
            power_limit = _nvml(pynvml.nvmlDeviceGetEnforcedPowerLimit, h)
            power_draw = _nvml(pynvml.nvmlDeviceGetPowerUsage, h)
            gpus.append(dict(
                index=index, name=_nvml(pynvml.nvmlDeviceGetName, h), driver=driver,
                sm_clock_mhz=_nvml(pynvml.nvmlDeviceGetClockInfo, h, pynvml.NVML_CLOCK_SM),
                sm_clock_max_mhz=_nvml(pynvml.nvmlDeviceGetMaxClockInfo, h, pynvml.NVML_CLOCK_SM),
                memory_clock_mhz=_nvml(pynvml.nvmlDeviceGetClockInfo, h, pynvml.NVML_CLOCK_MEM),
                memory_clock_max_mhz=_nvml(pynvml.nvmlDeviceGetMaxClockInfo, h, pynvml.NVML_CLOCK_MEM),
                power_limit_w=power_limit / 1e3 if power_limit is not None else None,
                power_draw_w=power_draw / 1e3 if power_draw is not None else None,
                memory_total_bytes=memory.total if memory is not None else None,
                memory_used_bytes=memory.used if memory is not None else None,
                temperature_c=_nvml(pynvml.nvmlDeviceGetTemperature, h, pynvml.NVML_TEMPERATURE_GPU)))
        return gpus
    finally:
        pynvml.nvmlShutdown()


def machine_info() -> dict:
    """Host, CPU, memory, load, GPUs and library versions, as JSON-ready values."""
    try:
        usable_cores = len(os.sched_getaffinity(0))
    except AttributeError:
        usable_cores = os.cpu_count()
    try:
        load = list(os.getloadavg())
    except OSError:
        load = None
    import torch
    return dict(
        hostname=platform.node(), os=platform.platform(), python=platform.python_version(),
        cpu_model=cpu_model(), cpu_cores=os.cpu_count(), usable_cores=usable_cores,
        torch_threads=torch.get_num_threads(), memory_bytes=_memory_bytes(), load_average_1_5_15=load,
        cuda_available=torch.cuda.is_available(), cuda_runtime=torch.version.cuda, gpus=gpu_info(),
        versions=library_versions())
