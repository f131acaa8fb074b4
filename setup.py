"""Packaging for golden_ptq."""
from setuptools import find_packages, setup

setup(
    name="golden_ptq",
    version="0.1.0",
    description="Post-training quantization (W8A8, W8A16, KV-cache int8) of Llama-family LLMs on MindSpore, CPU first.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.9",
    packages=find_packages(include=["golden_ptq", "golden_ptq.*"]),
    # The default configs, the calibration / evaluation text and the int8 kernel source (compiled at
    # first use, golden_ptq.kernels.native) ship inside the package.
    package_data={"golden_ptq": ["configs/*.yaml", "configs/ptq/*.yaml", "data/*.txt.gz", "kernels/*.cc", "kernels/*.h"]},
    install_requires=[
        "mindspore==2.10.0",
        "numpy<2",
        "pyyaml",
        "safetensors",
        "gguf",
        "tokenizers",
        "tqdm",
        "psutil",
        "scipy",
    ],
    extras_require={"test": ["pytest", "pytest-xdist", "matplotlib"], "report": ["matplotlib"],
                    # benchmarks/speed.py's side-by-side column: SmolLM2 in transformers on CPU
                    # (torch pinned: 2.13.0 is the CPU build; an unpinned torch pulls a CUDA build of several GB)
                    "bench": ["transformers", "torch==2.13.0", "accelerate"],
                    # consumer-library checks of `golden-ptq export`
                    "export-check": ["torch==2.13.0", "transformers", "accelerate", "compressed-tensors", "gguf"]},
    entry_points={"console_scripts": ["golden-ptq=golden_ptq.cli:main"]},
)
