#!/usr/bin/env bash
# Install golden_ptq with its optional `export-check` extra (CPU torch, transformers, compressed-tensors,
# gguf) into the Python given, e.g. a venv made with `python -m venv --system-site-packages DIR`, so that
# tests/test_export_consumers.py runs instead of skipping. The extra's list lives in setup.py only.
#   usage: .ci/install_export_check.sh VENV_PYTHON
set -euo pipefail
python_bin=${1:?usage: .ci/install_export_check.sh VENV_PYTHON}
cd "$(dirname "$0")/.."
# torch is pinned in setup.py: 2.13.0 is the CPU wheel this machine keeps on disk (an unpinned torch
# would pull a multi-GB CUDA build).
"$python_bin" -m pip install --quiet --disable-pip-version-check -e ".[export-check]"
"$python_bin" -c "import torch, transformers, compressed_tensors, gguf; print('export-check: torch', torch.__version__, \
'transformers', transformers.__version__, 'compressed-tensors', compressed_tensors.__version__)"
