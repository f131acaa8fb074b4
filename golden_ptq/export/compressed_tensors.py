"""Export to a compressed-tensors checkpoint (read by transformers and vLLM).

Per quantized Linear (Hugging Face module name ``m``), as the compressed-tensors formats store them:

================ ================= ==========================================================
W8A16 channel    naive-quantized   ``m.weight`` int8 [n, k], ``m.weight_scale`` [n, 1]
W8A16 group g    naive-quantized   ``m.weight_scale`` [n, k/g] (+ ``m.weight_zero_point`` int8 when asymmetric)
W4A16            pack-quantized    ``m.weight_packed`` int32 [n, k/8], ``m.weight_shape`` [2], ``m.weight_scale``
W8A8 static      int-quantized     ``m.weight``, ``m.weight_scale`` [n, 1], ``m.input_scale`` [1]
                                   (+ ``m.input_zero_point`` int8 [1] when asymmetric)
W8A8 dynamic     int-quantized     ``m.weight``, ``m.weight_scale`` [n, 1]; per-token input scales at run time
================ ================= ==========================================================

Dequantization there is ``(q - zero_point) * scale``, ours too; the int8 codes are copied as they
are. Static W8A8 keeps ``deq_scale = input_scale * weight_scale``; the weight scale is recovered by
one float64 division (exact to float32 rounding). Float layers go into ``ignore``.
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Tuple

import numpy as np

from golden_ptq.export.hf_files import cast_float, write_hf_files, write_readme
from golden_ptq.export.saved_model import LinearLayer, NotRepresentableError, SavedModel
from golden_ptq.io.tensor_names import HF_GLOBAL, HF_PER_LAYER, hf_module_name, name_map

WEIGHTS_FILE = "model.safetensors"


def pack_int4(q: np.ndarray) -> np.ndarray:
    """Signed 4-bit codes ``[n, k]`` (int8 container, k a multiple of 8) -> int32 ``[n, k/8]``: code
    ``j`` of each word, offset by 8, in bits ``4j .. 4j+3`` (compressed-tensors' packing)."""
    n, k = q.shape
    if k % 8:
        raise NotRepresentableError(f"4-bit packing needs in_features divisible by 8, got {k}")
    unsigned = (q.astype(np.int64) + 8).reshape(n, k // 8, 8)
    if unsigned.min() < 0 or unsigned.max() > 15:
        raise ValueError("4-bit codes out of [-8, 7]")
    words = np.zeros((n, k // 8), np.uint64)
    for j in range(8):
        words |= unsigned[:, :, j].astype(np.uint64) << np.uint64(4 * j)
    return words.astype(np.uint32).view(np.int32)


def unpack_int4(packed: np.ndarray, k: int) -> np.ndarray:
    """Inverse of :func:`pack_int4`."""
    words = packed.view(np.uint32).astype(np.uint64)
    codes = [((words >> np.uint64(4 * j)) & np.uint64(15)).astype(np.int64) - 8 for j in range(8)]
    return np.stack(codes, axis=-1).reshape(packed.shape[0], -1)[:, :k].astype(np.int8)


def _args(num_bits: int, symmetric: bool, strategy: str, group_size: Optional[int] = None,
          dynamic: bool = False) -> Dict:
    return {"num_bits": num_bits, "type": "int", "symmetric": symmetric, "group_size": group_size,
            "strategy": strategy, "block_structure": None, "dynamic": dynamic, "actorder": None,
            "observer": None if dynamic else "minmax", "observer_kwargs": {}}


def scheme_of(layer: LinearLayer) -> Tuple[str, Dict]:
    """(compressed-tensors format, {weights, input_activations}) of one quantized layer."""
    if layer.act_quantized:
        if layer.bits != 8:
            raise NotRepresentableError(f"layer '{layer.name}': {layer.scheme} with {layer.bits}-bit weights")
        weights = _args(8, True, "channel")
        if layer.dynamic:
            act = _args(8, True, "token", dynamic=True)
        else:
            symmetric = not np.any(layer.tensors["input_zp"])
            act = _args(8, symmetric, "tensor")
        return "int-quantized", {"weights": weights, "input_activations": act, "output_activations": None}
    group = layer.group_size
    if layer.bits == 4 and not layer.symmetric:
        raise NotRepresentableError(f"layer '{layer.name}': asymmetric 4-bit weights ({layer.scheme}) are not "
                                    f"exported to compressed-tensors; use symmetric W4A16")
    weights = _args(layer.bits, layer.symmetric, "group" if group else "channel", group or None)
    fmt = "pack-quantized" if layer.bits == 4 else "naive-quantized"
    return fmt, {"weights": weights, "input_activations": None, "output_activations": None}


def layer_tensors(layer: LinearLayer, module: str, dtype: str = "float32") -> Dict[str, np.ndarray]:
    """The compressed-tensors tensors of one quantized layer (names prefixed by its HF module name)."""
    out: Dict[str, np.ndarray] = {}
    n = layer.weight.shape[0]
    scale = layer.weight_scale()
    scale = scale.reshape(n, 1) if scale.ndim == 1 else scale
    if layer.bits == 4:
        out[f"{module}.weight_packed"] = pack_int4(layer.weight)
        out[f"{module}.weight_shape"] = np.asarray(layer.weight.shape, np.int64)
    else:
        out[f"{module}.weight"] = np.ascontiguousarray(layer.weight, np.int8)
    out[f"{module}.weight_scale"] = np.ascontiguousarray(scale, np.float32)
    zp = layer.weight_zero_point()
    if zp is not None:
        out[f"{module}.weight_zero_point"] = np.ascontiguousarray(zp.reshape(scale.shape), np.int8)
    if layer.act_quantized and not layer.dynamic:
        out[f"{module}.input_scale"] = layer.tensors["input_scale"].astype(np.float32).reshape(1)
        if np.any(layer.tensors["input_zp"]):
            out[f"{module}.input_zero_point"] = layer.tensors["input_zp"].astype(np.int8).reshape(1)
    if layer.bias is not None:
        out[f"{module}.bias"] = cast_float(layer.bias, dtype)
    return out


def export_compressed_tensors(model: SavedModel, folder: str, dtype: str = "float32",
                              float_kv_cache: bool = False) -> List[str]:
    """Write the checkpoint into ``folder`` (an empty temporary folder); returns README facts."""
    if model.has_kv_quant and not float_kv_cache:
        raise NotRepresentableError("not representable in compressed-tensors: C8 KV cache with per-channel static "
                                    "scales (compressed-tensors' kv_cache_scheme is per tensor); pass "
                                    "--float-kv-cache to export with a float KV cache")
    config = model.config
    names = name_map(config.num_layers, HF_PER_LAYER, HF_GLOBAL)
    tensors: Dict[str, np.ndarray] = {
        names["model.tok_embeddings.embedding_weight"]: cast_float(model.embedding(), dtype),
        names["model.norm_out.weight"]: cast_float(model.float_tensor("model.norm_out.weight"), dtype),
    }
    for i in range(config.num_layers):
        for local in ("attention_norm.weight", "ffn_norm.weight"):
            ours = f"model.layers.{i}.{local}"
            tensors[names[ours]] = cast_float(model.float_tensor(ours), dtype)
    groups: Dict[str, Dict] = {}
    members: Dict[str, List[str]] = {}
    ignore: List[str] = []
    formats = set()
    for layer in model.linears():
        module = hf_module_name(layer.name, config.num_layers)
        if not layer.quantized:
            ignore.append(module)
            tensors[f"{module}.weight"] = cast_float(layer.weight, dtype)
            if layer.bias is not None:
                tensors[f"{module}.bias"] = cast_float(layer.bias, dtype)
            continue
        fmt, scheme = scheme_of(layer)
        formats.add(fmt)
        key = repr(sorted((k, repr(v)) for k, v in scheme.items())) + fmt
        if key not in groups:
            groups[key] = {**scheme, "format": fmt}
            members[key] = []
        members[key].append(module)
        tensors.update(layer_tensors(layer, module, dtype))
    if not groups:
        raise NotRepresentableError("the saved model has no quantized Linear layer; nothing to export as "
                                    "compressed-tensors")
    if not model.head_is_separate:
        ignore.append("lm_head")
    config_groups = {}
    for index, (key, scheme) in enumerate(groups.items()):
        targets = ["Linear"] if len(groups) == 1 else members[key]
        config_groups[f"group_{index}"] = {"targets": targets, **scheme}
    quantization_config = {
        "quant_method": "compressed-tensors",
        "format": formats.pop() if len(formats) == 1 else "mixed-precision",
        "quantization_status": "compressed",
        "config_groups": config_groups,
        "ignore": ignore,
        "kv_cache_scheme": None,
        "global_compression_ratio": None,
        "sparsity_config": {},
    }
    from safetensors.numpy import save_file
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, os.path.join(folder, WEIGHTS_FILE),
              metadata={"format": "pt"})
    write_hf_files(folder, config, model.tokenizer, tied=not model.head_is_separate, dtype=dtype,
                   extra_config={"quantization_config": quantization_config})
    facts = [f"format: compressed-tensors ({quantization_config['format']}), float tensors {dtype}",
             f"ignored (float) Linear layers: {len(ignore)}"]
    if model.embedding_quantized:
        facts.append("the int8 embedding is stored dequantized (float): compressed-tensors quantizes Linear layers")
    if model.has_kv_quant:
        facts.append("C8 KV-cache scales dropped (--float-kv-cache): the KV cache runs in float")
    write_readme(os.path.join(folder, "README.md"), "compressed-tensors export", model.folder, model.schemes(), facts)
    return facts
