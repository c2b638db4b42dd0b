"""The results document of ``baton-fast gpu-check``: what is in it, how it is written, how it is checked.

It is a ``baton-fast bench`` results file (:data:`baton_fast.bench.report.RESULTS_SCHEMA`, the same
``machine`` block and record format), so ``python -m baton_fast.bench.report`` renders it, with
``mode = "gpu-check"`` and three more keys:

- ``gpu``: the device torch ran on — ``name``, ``capability`` ``[major, minor]``, ``multiprocessors``,
  ``memory_bytes``;
- ``versions``: ``python``, ``torch``, ``torch_cuda``, ``triton`` as the running interpreter imported them;
- ``parts``: per part (``numerics``, ``cuda_graph``, ``timings``) its ``status`` (``running``, ``done``,
  ``partial``: the budget ran out, ``skipped``), ``budget_s``, ``wall_s``, ``items`` and ``items_done``,
  and the nvidia-ml-py ``telemetry`` (per GPU: clocks, temperature, power) read when it started and ended.

Records (one figure each, ``kind = "measured"``, ``device = "cuda:<GPU name>"``) by section:
``gpu_numerics`` (``metric = "max abs error"``, ``extra``: ``budget``, ``baseline``, ``ok``, ``output``,
``kernel``, ``config``), ``cuda_graph`` (graph replay against eager, and the time per guided
evaluation), ``kernels`` (the timings of :func:`baton_fast.bench.kernels_bench.measure_case`) and
``gpu_memory`` (peak allocator bytes of one call above its inputs).  A record whose ``metric`` is
``skipped`` or ``failed`` carries ``extra.reason``.

The file is rewritten after every item (write to a temporary file, then rename), so a run stopped at
any point leaves a complete document with the items done so far.
"""
from __future__ import annotations

import json
import os
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

from baton_fast.bench.report import (GPU_CHECK_MODE, GPU_GRAPH_SECTION, GPU_MEMORY_SECTION, GPU_NUMERICS_SECTION,
                                     RESULTS_SCHEMA)

__all__ = ["PARTS", "SECTIONS", "PART_STATUSES", "new_document", "record", "write_document", "validate_document"]

PARTS = ("numerics", "cuda_graph", "timings")
SECTIONS = (GPU_NUMERICS_SECTION, GPU_GRAPH_SECTION, "kernels", GPU_MEMORY_SECTION)
PART_STATUSES = ("running", "done", "partial", "skipped")
RECORD_KEYS = ("section", "case", "backend", "device", "kind", "metric", "value", "unit", "shape", "dtype", "extra")


def versions() -> dict:
    """Versions of the interpreter and of the torch and triton it imported."""
    import torch
    import triton
    return dict(python=platform.python_version(), torch=torch.__version__, torch_cuda=torch.version.cuda,
                triton=triton.__version__)


def gpu_description(device) -> dict:
    """Name, compute capability, multiprocessor count and memory of a CUDA device."""
    import torch
    props = torch.cuda.get_device_properties(device)
    return dict(name=props.name, capability=[props.major, props.minor], multiprocessors=props.multi_processor_count,
                memory_bytes=props.total_memory)


def new_document(gpu: dict, machine: dict, parts: dict, argv=None) -> dict:
    """An empty results document; ``parts`` maps each part to be run to its budget in seconds."""
    return dict(schema=RESULTS_SCHEMA, mode=GPU_CHECK_MODE,
                created_utc=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), device="cuda",
                sections=list(SECTIONS), argv=list(sys.argv if argv is None else argv), wall_s=0.0, gpu=gpu,
                versions=versions(), machine=machine,
                parts={name: dict(status="skipped", budget_s=budget, wall_s=0.0, items=0, items_done=0, telemetry=[])
                       for name, budget in parts.items()},
                records=[])


def record(section: str, case: str, backend: str, metric: str, value: Optional[float], unit: str, *, device: str,
           shape: Optional[dict] = None, dtype: str = "", **extra) -> dict:
    """One measured figure in the format of :mod:`baton_fast.bench.runner`."""
    return dict(section=section, case=case, backend=backend, device=device, kind="measured", metric=metric,
                value=value, unit=unit, shape=shape or {}, dtype=dtype, extra=extra)


def write_document(doc: dict, path) -> Path:
    """Write ``doc`` as JSON to ``path`` atomically (a reader never sees half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1, default=str))
    os.replace(tmp, path)
    return path


def validate_document(doc) -> None:
    """Raise ValueError naming the first key or record that does not follow the format above."""
    if not isinstance(doc, dict):
        raise ValueError(f"results: expected a JSON object, got {type(doc).__name__}")
    for key in ("schema", "mode", "created_utc", "device", "wall_s", "gpu", "versions", "machine", "parts", "records"):
        if key not in doc:
            raise ValueError(f"results: missing key {key!r}")
    if doc["schema"] != RESULTS_SCHEMA or doc["mode"] != GPU_CHECK_MODE:
        raise ValueError(f"results: expected schema {RESULTS_SCHEMA!r} and mode {GPU_CHECK_MODE!r}, "
                         f"got {doc['schema']!r} and {doc['mode']!r}")
    if not isinstance(doc["gpu"], dict) or not doc["gpu"].get("name"):
        raise ValueError("results.gpu: expected the GPU's name")
    for key in ("torch", "triton"):
        if not doc["versions"].get(key):
            raise ValueError(f"results.versions: missing {key!r}")
    for name, part in doc["parts"].items():
        if name not in PARTS or part.get("status") not in PART_STATUSES:
            raise ValueError(f"results.parts: expected parts of {PARTS} with a status in {PART_STATUSES}, "
                             f"got {name!r}: {part.get('status')!r}")
    for i, r in enumerate(doc["records"]):
        missing = [k for k in RECORD_KEYS if k not in r]
        if missing:
            raise ValueError(f"results.records[{i}]: missing {', '.join(missing)}")
        if r["section"] not in SECTIONS or r["kind"] != "measured" or not str(r["device"]).startswith("cuda:"):
            raise ValueError(f"results.records[{i}]: expected a measured record of a section in {SECTIONS} on a "
                             f"'cuda:<name>' device, got {r['section']!r}, {r['kind']!r}, {r['device']!r}")
        if r["metric"] in ("skipped", "failed"):
            if not r["extra"].get("reason"):
                raise ValueError(f"results.records[{i}]: a {r['metric']} record needs extra.reason")
        elif not isinstance(r["value"], (int, float)):
            raise ValueError(f"results.records[{i}]: expected a number for {r['metric']!r}, got {r['value']!r}")
