"""Saving and strictly loading (quantized) networks: MindSpore ``.ckpt`` or safetensors, plus ``quant_desc.json``."""
from __future__ import annotations

import json
import os
from typing import Dict, Optional

import mindspore as ms
import numpy as np
from mindspore import Tensor, nn

from golden_ptq.io.atomic import atomic_write, atomic_write_text
from golden_ptq.io.safetensors_files import INDEX_SUFFIX, CorruptFileError, open_safetensors, read_header

FORMATS = {".ckpt": "ckpt", ".safetensors": "safetensors"}
_STORED_DTYPES = {"F32": ms.float32, "F16": ms.float16, "F64": ms.float64, "I8": ms.int8, "U8": ms.uint8,
                  "I32": ms.int32, "I64": ms.int64, "BF16": ms.bfloat16, "BOOL": ms.bool_}


class CheckpointMismatchError(ValueError):
    """A checkpoint does not fit the network it is loaded into."""


def quant_desc(network: nn.Cell) -> Dict[str, str]:
    """Every parameter name -> its quant type (W8A8, W8A8-dynamic, W8A16[-gN], C8 or FLOAT)."""
    owned: Dict[int, str] = {}
    for _, cell in network.cells_and_names():
        if hasattr(cell, "param_quant_types"):  # a golden_ptq QuantCell
            for local, param in cell.parameters_and_names(expand=False):
                owned[id(param)] = cell.param_quant_types().get(local, "FLOAT")
    return {name: owned.get(id(param), "FLOAT") for name, param in network.parameters_and_names()}


def _format(path: str) -> str:
    ext = os.path.splitext(path)[1]
    if ext not in FORMATS:
        raise ValueError(f"checkpoint {path!r}: unknown extension {ext!r}; use one of {sorted(FORMATS)}")
    return FORMATS[ext]


def _arrays(network: nn.Cell) -> Dict[str, np.ndarray]:
    return {name: param.asnumpy() for name, param in network.parameters_and_names()}


def check_fits_float16(arrays: Dict[str, np.ndarray], path: str) -> None:
    """Refuse to narrow to float16 values beyond its range (they would become inf), naming the count and
    the first parameter that overflows."""
    limit = float(np.finfo(np.float16).max)
    total, first = 0, None
    for name, array in arrays.items():
        count = int(np.count_nonzero(np.abs(array) > limit))
        if count:
            total += count
            first = first or (name, float(np.abs(array).max()))
    if total:
        raise ValueError(f"{path}: float_dtype='float16' would turn {total} value(s) into inf: they exceed float16's "
                         f"range (+-{limit:g}); first parameter '{first[0]}' (max |value| {first[1]:g}); save "
                         f"with float_dtype=None (float32)")


def save_checkpoint(network: nn.Cell, path: str, desc_path: Optional[str] = None,
                    float_dtype: Optional[str] = None) -> str:
    """Write ``path`` (``.ckpt`` or ``.safetensors``) atomically, and ``quant_desc.json`` beside it
    (or at ``desc_path``). Returns the path of the description.

    ``float_dtype="float16"`` stores the parameters that stay float (norms, float layers, biases,
    scales excepted) in half precision, as an fp16 deployment would hold them; loading casts them
    back to float32, so such a checkpoint reproduces the QUANTIZE-process logits only to fp16
    rounding of those parameters. The default keeps them bit-exact.
    """
    fmt = _format(path)
    if float_dtype not in (None, "float16"):
        raise ValueError(f"save_checkpoint: float_dtype {float_dtype!r} is not one of [None, 'float16']")
    arrays = _arrays(network)
    if float_dtype:
        desc = quant_desc(network)
        narrowed = [k for k, v in arrays.items() if desc[k] == "FLOAT" and v.dtype == np.float32]
        check_fits_float16({k: arrays[k] for k in narrowed}, path)
        arrays = {k: (v.astype(np.float16) if k in narrowed else v) for k, v in arrays.items()}
    if fmt == "ckpt":
        entries = [{"name": k, "data": Tensor(v)} for k, v in arrays.items()]
        atomic_write(path, lambda tmp: ms.save_checkpoint(entries, tmp))
    else:
        from safetensors.numpy import save_file
        arrays = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
        atomic_write(path, lambda tmp: save_file(arrays, tmp))
    desc_path = desc_path or os.path.join(os.path.dirname(os.path.abspath(path)), "quant_desc.json")
    atomic_write_text(desc_path, json.dumps(quant_desc(network), indent=1, sort_keys=True))
    return desc_path


def read_checkpoint(path: str) -> Dict[str, np.ndarray]:
    """Every array of a ``.ckpt`` / ``.safetensors`` file; an empty, truncated or corrupt file is a
    :class:`CorruptFileError` naming the path and what is wrong."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    if path.endswith(INDEX_SUFFIX):
        reader = open_safetensors(path)
        return {name: reader.get(name) for name in reader.names()}
    fmt = _format(path)
    size = os.path.getsize(path)
    if size == 0:
        raise CorruptFileError(f"{path}: the checkpoint file is empty (0 bytes); it was never written completely")
    if fmt == "ckpt":
        try:
            params = ms.load_checkpoint(path)
        except (ValueError, RuntimeError, OSError) as err:
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise CorruptFileError(f"{path}: not a readable MindSpore checkpoint ({size} bytes; truncated or "
                                   f"corrupt): {reason}") from None
        if not params:
            raise CorruptFileError(f"{path}: the checkpoint holds no parameters ({size} bytes)")
        return {name: param.asnumpy() for name, param in params.items()}
    from safetensors.numpy import load_file
    read_header(path)  # complete file, or an error that says what is missing
    try:
        return load_file(path)
    except Exception as err:  # safetensors raises its own SafetensorError (not a ValueError)
        raise CorruptFileError(f"{path}: not a readable safetensors file ({size} bytes): {err}") from None


def load_checkpoint(path: str, network: nn.Cell) -> None:
    """Load every parameter of ``network`` from ``path``; any mismatch is an error.

    Names, shapes and dtypes must agree both ways, so a checkpoint made with other quantization
    settings fails on the first parameter that differs instead of loading half a network.
    Safetensors (one file or a ``*.safetensors.index.json`` with its shards) are checked from their
    headers first and then read one tensor at a time (see :func:`load_streamed`); ``.ckpt`` whole.
    """
    if _streamable(path):
        load_streamed(path, network)
    else:
        load_state(read_checkpoint(path), network, path)


def load_full_checkpoint(path: str, network: nn.Cell) -> None:
    """Strictly load a full (TP size 1) checkpoint into ``network``, each tensor-parallel rank taking its slice."""
    from golden_ptq.parallel.sharding import split_state
    tp, layout = getattr(network, "tp", None), getattr(network, "tp_layout", None)
    split = layout if tp is not None and tp.parallel else None
    if _streamable(path):
        load_streamed(path, network, split)
        return
    arrays = read_checkpoint(path)
    if split is not None:
        arrays = split_state(arrays, layout)
    load_state(arrays, network, path)


def _streamable(path: str) -> bool:
    return path.endswith(INDEX_SUFFIX) or path.endswith(".safetensors")


def _tensor_label(tag: str, shape) -> str:
    """How a stored tensor's dtype tag and shape read in errors, as MindSpore names dtypes."""
    dtype = _STORED_DTYPES.get(tag)
    return f"{dtype if dtype is not None else tag} {tuple(shape)}"


def load_streamed(path: str, network: nn.Cell, split_layout=None) -> None:
    """Strict load of a safetensors file or index (``path``) into ``network``, one tensor at a time.

    Every name, shape and dtype is checked against the headers before any parameter changes (the
    same errors as :func:`load_state`); then each tensor is read, sliced for this rank when
    ``split_layout`` (a TPLayout) is given, and replaces its parameter, so the process holds the
    network plus one tensor, never a second copy of the model.
    """
    from golden_ptq.parallel.sharding import full_shape, local_state_array
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    reader = open_safetensors(path)
    params = dict(network.parameters_and_names())
    for name, param in params.items():
        if name not in reader:
            raise _missing(path, name, param)
        shape = tuple(param.shape)
        if split_layout is not None:
            shape = full_shape(name, shape, split_layout)
        tag = reader.dtype(name)
        dtype_ok = _STORED_DTYPES.get(tag) == param.dtype or (tag == "F16" and param.dtype == ms.float32)
        if tuple(reader.shape(name)) != shape or not dtype_ok:
            raise CheckpointMismatchError(f"{path}: parameter '{name}' is {_tensor_label(tag, reader.shape(name))} "
                                          f"in the checkpoint, the network expects {param.dtype} {shape}")
    _check_no_extra(path, reader.names(), params)
    for name, param in params.items():
        array = reader.get(name) if split_layout is None else local_state_array(name, reader.get, split_layout)
        if array.dtype == np.float16:
            array = array.astype(np.float32)  # saved with float_dtype="float16"
        param.set_data(Tensor.from_numpy(_compact(array)))  # shares the array: no second copy
        del array


def _compact(array: np.ndarray) -> np.ndarray:
    """``array`` contiguous and not pinning a larger buffer: a rank's row slice of a full tensor is a
    contiguous view, and handing the view over would keep the whole tensor alive."""
    array = np.ascontiguousarray(array)
    base = array.base
    while isinstance(base, np.ndarray) and base.base is not None:
        base = base.base
    if isinstance(base, np.ndarray) and base.nbytes > array.nbytes:
        return array.copy()
    return array


def load_state(arrays: Dict[str, np.ndarray], network: nn.Cell, path: str) -> None:
    """Strict load of name -> array ``arrays`` (read from ``path``, named in errors) into ``network``."""
    params = dict(network.parameters_and_names())
    for name, param in params.items():
        expected = f"{param.dtype} {tuple(param.shape)}"
        if name not in arrays:
            raise _missing(path, name, param)
        array = arrays[name]
        if array.dtype == np.float16 and param.dtype == ms.float32:
            array = arrays[name] = array.astype(np.float32)  # saved with float_dtype="float16"
        if tuple(array.shape) != tuple(param.shape) or Tensor(array[:0]).dtype != param.dtype:
            raise CheckpointMismatchError(f"{path}: parameter '{name}' is {Tensor(array[:0]).dtype} "
                                          f"{tuple(array.shape)} in the checkpoint, the network expects {expected}")
    _check_no_extra(path, arrays, params)
    for name, param in params.items():
        param.set_data(Tensor(arrays[name]))


def _missing(path: str, name: str, param) -> CheckpointMismatchError:
    return CheckpointMismatchError(f"{path}: no parameter '{name}' (the network expects {param.dtype} "
                                   f"{tuple(param.shape)}); was it saved with other quantization settings?")


def _check_no_extra(path: str, names, params) -> None:
    """Every checkpoint name is a network parameter (the first unexpected one, in checkpoint order, is named)."""
    extra = [name for name in names if name not in params]
    if extra:
        raise CheckpointMismatchError(f"{path}: parameter '{extra[0]}' is in the checkpoint but not in the network "
                                      f"({len(extra)} unexpected); was it saved with other quantization settings?")
