"""MindFormers checkpoints (``.ckpt``, safetensors files or folders; fp16/bf16/fp32), without mindformers.

MindFormers' legacy ``LlamaForCausalLM`` names its parameters as golden_ptq's network does, except
with ``qkv_concat`` (see :mod:`golden_ptq.mindformers.concat`).
"""
from __future__ import annotations

import json
import os
import struct
from typing import Dict, Iterable, Optional

import numpy as np

from golden_ptq.mindformers.concat import GATE_UP, QKV, join_concat, join_desc, split_concat


# ----- reading ---------------------------------------------------------------------------------
def _is_model_tensor(name: str) -> bool:
    """Network parameters; training state (optimizer moments, step counters, loss scale) is not."""
    return name.startswith(("model.", "lm_head."))


def read_mf_checkpoint(path: str) -> Dict[str, np.ndarray]:
    """All network tensors of a MindFormers checkpoint: a ``.ckpt`` or ``.safetensors`` file, or a
    folder of safetensors files (MindFormers' unified checkpoint). fp16/bf16 floats become float32;
    integer tensors keep their dtype; training state is left out."""
    from golden_ptq.io.safetensors_files import SafetensorsFiles, find_safetensors
    if os.path.isdir(path):
        files = find_safetensors(path)
        arrays = _read_safetensors(SafetensorsFiles(files))
    elif not os.path.isfile(path):
        raise FileNotFoundError(f"MindFormers checkpoint {path!r} does not exist")
    elif path.endswith(".safetensors"):
        arrays = _read_safetensors(SafetensorsFiles([path]))
    elif path.endswith(".ckpt"):
        arrays = _read_ckpt(path)
    else:
        raise ValueError(f"MindFormers checkpoint {path!r}: unknown extension; use a .ckpt or .safetensors file, "
                         f"or a folder of .safetensors files")
    arrays = {name: value for name, value in arrays.items() if _is_model_tensor(name)}
    if not arrays:
        raise ValueError(f"{path}: no network parameters (names starting with 'model.' or 'lm_head.')")
    return arrays


def _read_safetensors(files) -> Dict[str, np.ndarray]:
    out = {}
    for name in files.names():
        if _is_model_tensor(name):
            array = files.get(name)   # bf16 arrives as float32
            out[name] = array.astype(np.float32) if array.dtype == np.float16 else array
    return out


def _read_ckpt(path: str) -> Dict[str, np.ndarray]:
    import mindspore as ms
    try:
        params = ms.load_checkpoint(path)
    except (ValueError, RuntimeError) as err:
        raise ValueError(f"{path}: not a readable MindSpore checkpoint ({err})") from None
    out = {}
    for name, param in params.items():
        if not _is_model_tensor(name):
            continue
        if param.dtype in (ms.float16, ms.bfloat16, ms.float64):
            param = param.astype(ms.float32)
        out[name] = param.asnumpy()
    return out


def load_mf_checkpoint(path: str, network, qkv_concat: bool = False) -> None:
    """Strictly load a MindFormers checkpoint into golden_ptq's (float or DEPLOY-mode quantized)
    ``network`` (a tensor-parallel rank's slice under msrun), or into MindFormers' own (names kept as
    they are): every parameter must be there with its shape and dtype, and no network tensor may be
    left over (a tied ``lm_head.weight`` equal to the embedding excepted)."""
    from golden_ptq.io.checkpoint import load_state
    config = network.config
    arrays = read_mf_checkpoint(path)
    names = {name for name, _ in network.parameters_and_names()}
    network_concat = any(f".{QKV}." in n or f".{GATE_UP}." in n for n in names)  # MindFormers' own network
    if qkv_concat and not network_concat:
        arrays = split_concat(arrays, config, path)
    elif not qkv_concat and any(f".{QKV}." in n or f".{GATE_UP}." in n for n in arrays):
        raise ValueError(f"{path}: holds concatenated '{QKV}' / '{GATE_UP}' tensors but the run yaml has "
                         f"qkv_concat false; set model.model_config.qkv_concat: true")
    head, embedding = "lm_head.weight", "model.tok_embeddings.embedding_weight"
    if head in arrays and head not in names and config.tie_word_embeddings:
        if embedding in arrays and not np.array_equal(arrays[head], arrays[embedding]):
            raise ValueError(f"{path}: tie_word_embeddings is true but '{head}' differs from '{embedding}'")
        del arrays[head]
    tp, layout = getattr(network, "tp", None), getattr(network, "tp_layout", None)
    if tp is not None and tp.parallel:  # golden_ptq's network under msrun: each rank takes its slice
        from golden_ptq.parallel.sharding import split_state
        arrays = split_state(arrays, layout)
    load_state(arrays, network, path)


# ----- writing ---------------------------------------------------------------------------------
def mf_state(network, qkv_concat: bool = False, param_dtype: Optional[str] = None,
             float_names: Optional[Iterable[str]] = None) -> Dict[str, np.ndarray]:
    """The network's parameters under MindFormers' names (joined with ``qkv_concat``).

    ``param_dtype`` ("float16", "bfloat16", "float32"; None keeps float32) is applied to the
    parameters named in ``float_names`` (default: every float32 parameter) — the weights and norms
    a float MindFormers checkpoint holds in ``param_init_type``; quantization scales stay float32.
    bfloat16 arrays are returned as their ``uint16`` bit patterns (numpy has no bfloat16).
    """
    arrays = {name: param.asnumpy() for name, param in network.parameters_and_names()}
    if param_dtype not in (None, "float16", "bfloat16", "float32"):
        raise ValueError(f"param_dtype {param_dtype!r} is not one of [None, 'float16', 'bfloat16', 'float32']")
    if param_dtype not in (None, "float32"):
        cast = set(float_names) if float_names is not None else {n for n, a in arrays.items() if a.dtype == np.float32}
        for name in cast:
            arrays[name] = (float32_to_bf16_bits(arrays[name]) if param_dtype == "bfloat16"
                            else arrays[name].astype(np.float16))
    if qkv_concat:
        arrays = join_concat(arrays, network.config, "mf_state")
    return arrays


def float32_to_bf16_bits(array: np.ndarray) -> np.ndarray:
    """Round float32 to bfloat16 (nearest, ties to even) and return the bit patterns as uint16."""
    bits = np.ascontiguousarray(array, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return rounded.astype(np.uint16)


def save_mf_checkpoint(network, path: str, qkv_concat: bool = False, param_dtype: Optional[str] = None) -> str:
    """Write the network as a MindFormers checkpoint (``.ckpt`` or ``.safetensors``, atomically);
    see :func:`mf_state` for names and dtypes (``param_dtype`` applies to the parameters that stay
    float). With a quantized network, ``quant_desc.json`` (under the same names) is written beside
    it. Returns ``path``."""
    from golden_ptq.io.atomic import atomic_write, atomic_write_text
    from golden_ptq.io.checkpoint import quant_desc
    from golden_ptq.quant_cells.base import QuantCell
    if not path.endswith((".ckpt", ".safetensors")):
        raise ValueError(f"save_mf_checkpoint: {path!r} must end with .ckpt or .safetensors")
    quantized = any(isinstance(c, QuantCell) for _, c in network.cells_and_names())
    desc = quant_desc(network) if quantized else None
    float_names = None
    if desc is not None:
        params = network.parameters_dict()
        float_names = [n for n, kind in desc.items() if kind == "FLOAT" and params[n].dtype == _ms_float32()]
    arrays = mf_state(network, qkv_concat, param_dtype, float_names)
    bf16_names = {n for n, a in arrays.items() if a.dtype == np.uint16} if param_dtype == "bfloat16" else set()
    writer = _write_ckpt if path.endswith(".ckpt") else write_safetensors
    atomic_write(path, lambda tmp: writer(arrays, bf16_names, tmp))
    if desc is not None:
        desc = join_desc(desc) if qkv_concat else desc
        folder = os.path.dirname(os.path.abspath(path))
        atomic_write_text(os.path.join(folder, "quant_desc.json"), json.dumps(desc, indent=1, sort_keys=True))
    return path


def _ms_float32():
    import mindspore as ms
    return ms.float32


def _write_ckpt(arrays: Dict[str, np.ndarray], bf16_names, path: str) -> None:
    import mindspore as ms
    entries = []
    for name, array in arrays.items():
        if name in bf16_names:
            tensor = ms.Tensor((array.astype(np.uint32) << 16).view(np.float32)).astype(ms.bfloat16)
        else:
            tensor = ms.Tensor(np.ascontiguousarray(array))
        entries.append({"name": name, "data": tensor})
    ms.save_checkpoint(entries, path)


_ST_DTYPES = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16", np.dtype(np.int8): "I8",
              np.dtype(np.int32): "I32", np.dtype(np.int64): "I64", np.dtype(np.uint8): "U8"}


def write_safetensors(arrays: Dict[str, np.ndarray], bf16_names, path: str) -> None:
    """A safetensors file; the arrays in ``bf16_names`` are uint16 bfloat16 bit patterns, stored as BF16."""
    header, offset, blobs = {}, 0, []
    for name, array in arrays.items():
        array = np.ascontiguousarray(array)
        if name in bf16_names:
            dtype = "BF16"
        elif array.dtype in _ST_DTYPES:
            dtype = _ST_DTYPES[array.dtype]
        else:
            raise ValueError(f"write_safetensors: tensor '{name}' has dtype {array.dtype}, not one of "
                             f"{sorted(str(d) for d in _ST_DTYPES)} or bfloat16")
        data = array.tobytes()
        header[name] = {"dtype": dtype, "shape": list(array.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(text)))
        handle.write(text)
        for data in blobs:
            handle.write(data)
