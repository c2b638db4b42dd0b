"""Run from a source checkout without installing: map ``baton_fast.kernels`` and ``baton_fast.bench``.

``setup.py`` installs the top-level folders ``kernels/`` and ``bench/`` as ``baton_fast.kernels`` and
``baton_fast.bench`` (``package_dir``).  A plain checkout on ``sys.path`` (``python3 -m baton_fast.cli``
from the repository root, or ``PYTHONPATH=REPO``) has no such sub-packages, and neither has a legacy
``setup.py develop`` egg-link, which is what ``pip install -e . --no-build-isolation`` gave in a venv
here.  :func:`map_checkout_packages` imports each missing one from its folder, once, before anything
imports it; an installed package (regular or PEP 660 editable) is left alone.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import baton_fast

# sub-package of baton_fast -> folder of the repository root (setup.py's package_dir)
PACKAGE_DIRS = {"kernels": "kernels", "bench": "bench"}
REPO_ROOT = Path(baton_fast.__file__).resolve().parent.parent


def map_checkout_packages() -> list[str]:
    """Import ``baton_fast.<name>`` from ``REPO_ROOT/<folder>`` for each package that cannot be found
    otherwise; returns the names mapped (empty when installed)."""
    mapped = []
    for name, folder in PACKAGE_DIRS.items():
        full = f"baton_fast.{name}"
        init = REPO_ROOT / folder / "__init__.py"
        if full in sys.modules or importlib.util.find_spec(full) is not None or not init.is_file():
            continue
        spec = importlib.util.spec_from_file_location(full, init, submodule_search_locations=[str(init.parent)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[full] = module
        spec.loader.exec_module(module)
        setattr(baton_fast, name, module)
        mapped.append(full)
    return mapped
