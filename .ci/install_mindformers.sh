#!/usr/bin/env bash
# Install the optional dependency mindformers into the Python environment given as $1.
#
#   python -m venv --system-site-packages .venv-mf      # sees the system's mindspore 2.10 and golden_ptq
#   bash .ci/install_mindformers.sh .venv-mf/bin/python
#   .venv-mf/bin/python -m pytest tests -k mindformers
#
# mindformers 1.9.0 declares mindspore~=2.9.0, so pip cannot install it beside mindspore 2.10 with
# its dependencies resolved (and no setup.py extra can say so). It is installed with --no-deps, then
# its other requirements as its 1.9.0 metadata lists them (mindspore left out), pinned to the
# versions this project verified, then numpy<2 and pandas<2.3 (a newer pandas needs numpy 2).
# golden_ptq.mindformers.shims holds what golden_ptq changes at run time for mindspore 2.10 on CPU.
set -euo pipefail
PY="${1:?usage: bash .ci/install_mindformers.sh PATH/TO/python}"
PIP=("$PY" -m pip install --quiet --disable-pip-version-check)

"${PIP[@]}" --no-deps "mindformers==1.9.0"
"${PIP[@]}" \
  "setuptools" "sentencepiece==0.2.3" "ftfy==6.3.1" "regex>=2022.10.31" "tqdm>=4.65.0" "pyyaml>=6.0" \
  "jieba==0.42.1" "rouge_chinese==1.0.3" "nltk==3.9.1" "mindpet==1.0.4" "opencv-python-headless==4.11.0.86" \
  "pyarrow==19.0.0" "tokenizers" "astunparse>=1.6.3" "tiktoken==0.14.0" "jinja2" "setproctitle" "safetensors" \
  "tensorboardX==2.6.5" "deprecated>=1.2.0" "pybind11" "transformers==4.57.1" "datasets==4.0.0" \
  "numpy<2" "pandas<2.3" "mindspore==2.10.0"

# The environment must still hold mindspore 2.10 and numpy 1.x, and mindformers must import.
"$PY" - <<'PYEOF'
import os, tempfile
os.environ.setdefault("LOCAL_DEFAULT_PATH", os.path.join(tempfile.gettempdir(), "golden_ptq-mindformers"))
os.environ["ENFORCE_EAGER"] = "True"
import mindspore, numpy
assert mindspore.__version__ == "2.10.0", mindspore.__version__
assert numpy.__version__.startswith("1."), numpy.__version__
import mindformers
assert mindformers.__version__ == "1.9.0", mindformers.__version__
from mindformers import LlamaConfig, LlamaForCausalLM  # noqa: F401
print(f"mindformers {mindformers.__version__} on mindspore {mindspore.__version__}, numpy {numpy.__version__}")
PYEOF
