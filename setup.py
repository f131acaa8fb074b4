"""Packaging for golden_ptq."""
import importlib.util
import os

from setuptools import Distribution, find_packages, setup
from setuptools.command.build_py import build_py


class BuildWithKernels(build_py):
    """Copies the package, then compiles its native kernels into the copy (golden_ptq/kernels/prebuilt),
    so the first run does not wait for the compiler. Without a compiler the install still succeeds:
    the first use compiles (or falls back to MindSpore ops) and says why."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):   # pip install -e: the package runs from the checkout
            return
        kernels = os.path.join(self.build_lib, "golden_ptq", "kernels")
        spec = importlib.util.spec_from_file_location("golden_ptq_kernel_build", os.path.join(kernels, "build.py"))
        build = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(build)   # by path: importing golden_ptq would import MindSpore
        try:
            for path in build.build_prebuilt(kernels):
                print(f"golden_ptq: compiled {os.path.relpath(path, self.build_lib)}")
        except (OSError, RuntimeError) as error:
            print(f"golden_ptq: native kernels not compiled at install ({error}); the first use will try again")


class PlatformDistribution(Distribution):
    """The wheel holds compiled libraries: tag it for this platform, not as pure Python."""

    def has_ext_modules(self):
        return True


setup(
    name="golden_ptq",
    version="0.1.0",
    description="Post-training quantization (W8A8, W8A16, KV-cache int8) of Llama-family LLMs on MindSpore, CPU first.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.9",
    packages=find_packages(include=["golden_ptq", "golden_ptq.*"]),
    # The default configs, the calibration / evaluation text and the kernel sources ship inside the
    # package; the kernels are compiled at install (BuildWithKernels) or at first use.
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
    cmdclass={"build_py": BuildWithKernels},
    distclass=PlatformDistribution,
)
