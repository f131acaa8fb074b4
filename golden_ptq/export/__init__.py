"""Export a saved quantized folder to the formats serving engines read, and import compressed-tensors.

``export_model(folder, fmt, output)`` reads a folder written by ``golden-ptq quantize`` /
:func:`golden_ptq.deploy.save_quantized` and writes, as one atomic folder set, a complete model
folder for the engine:

- ``compressed-tensors``: transformers, vLLM (:mod:`golden_ptq.export.compressed_tensors`)
- ``msmodelslim``: MindIE, vLLM-Ascend (:mod:`golden_ptq.export.msmodelslim`)
- ``gguf``: llama.cpp and every GGUF runtime (:mod:`golden_ptq.export.gguf_export`)
"""
from __future__ import annotations

from typing import List

from golden_ptq.export.saved_model import NotRepresentableError, SavedModel

FORMATS = ("compressed-tensors", "msmodelslim", "gguf")
DEFAULT_DTYPES = {"compressed-tensors": "float32", "msmodelslim": "float16", "gguf": "float32"}


def export_model(folder: str, fmt: str, output: str, dtype: str = None, float_kv_cache: bool = False) -> List[str]:
    """Write ``folder``'s model as ``fmt`` into ``output`` (replaced as a whole); returns the facts
    written into its README. ``dtype``: of the tensors that stay float (default per format)."""
    import os
    from golden_ptq.io.folder_set import write_folder_set
    if fmt not in FORMATS:
        raise ValueError(f"export format {fmt!r} is not one of {list(FORMATS)}")
    if os.path.abspath(output) == os.path.abspath(folder):
        raise ValueError(f"--output {output!r} is the quantized folder itself; export writes a new folder")
    model = SavedModel(folder)
    dtype = dtype or DEFAULT_DTYPES[fmt]
    facts: List[str] = []

    def fill(tmp: str) -> None:
        if fmt == "compressed-tensors":
            from golden_ptq.export.compressed_tensors import export_compressed_tensors
            facts.extend(export_compressed_tensors(model, tmp, dtype, float_kv_cache))
        elif fmt == "msmodelslim":
            from golden_ptq.export.msmodelslim import export_msmodelslim
            facts.extend(export_msmodelslim(model, tmp, dtype))
        else:
            from golden_ptq.export.gguf_export import export_gguf
            facts.extend(export_gguf(model, tmp, dtype))

    write_folder_set(output, fill)
    return facts


__all__ = ["FORMATS", "NotRepresentableError", "SavedModel", "export_model"]
