from setuptools import setup

setup(
    name="baton-fast",
    version="0.1.0",
    description="Triton kernels fusing coordinate RoPE into attention for joint video+audio diffusion transformers",
    python_requires=">=3.10",
    packages=["baton_fast", "baton_fast.kernels"],
    package_dir={"baton_fast": "baton_fast", "baton_fast.kernels": "kernels"},
    install_requires=["torch>=2.5", "triton>=3.2", "numpy", "tqdm"],
    extras_require={
        "test": ["pytest", "pytest-benchmark", "diffusers>=0.36", "transformers"],
        "gpu": ["nvidia-ml-py", "flash-attn", "xformers"],
    },
    entry_points={"console_scripts": ["baton-fast=baton_fast.cli:main"]},
)
