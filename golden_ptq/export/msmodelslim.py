"""Export to msModelSlim's layout (read by MindIE and vLLM-Ascend): Hugging Face names,
``quant_model_weight_<type>.safetensors`` and ``quant_model_description_<type>.json``.

Per quantized Linear (HF module name ``m``), as msModelSlim documents its format:

=============== ======================================================================================
W8A8            ``m.weight`` int8 [n, k], ``m.input_scale`` / ``m.input_offset`` [1] (model dtype),
                ``m.quant_bias`` int32 [n], ``m.deq_scale`` [n]: int64 holding the float32 bits for
                float16 models. Flow: ``xq = clip(round(x / input_scale) + input_offset)``,
                ``y = (xq @ weight.T + quant_bias) * deq_scale``.
W8A8_DYNAMIC    ``m.weight``, ``m.weight_scale`` / ``m.weight_offset`` float32 [n, 1]; per-token input scales.
W8A16, W4A16    ``m.weight`` int8 (W4: codes in [-8, 7]), ``m.weight_scale`` / ``m.weight_offset`` float32
                [n] or [n, k/g]; ``w = (weight - weight_offset) * weight_scale``.
C8              ``<k_proj|v_proj>.kv_cache_scale`` / ``kv_cache_offset`` float32 [Hkv*D]
                (``kv = (int - offset) * scale``), and ``"kv_cache_type": "C8"``.
=============== ======================================================================================

The description maps every tensor to its type (``FLOAT`` for untouched ones) beside
``"model_quant_type"``. Float tensors are float16. ``input_scale`` is stored in float16, so
``deq_scale`` is rescaled by ``float16(input_scale) / input_scale`` to dequantize with the very
scale the input is quantized with; activation codes near a rounding boundary may still round the
other way. Quantize with ``algo_args: {static_scale_dtype: float16}`` to make every static input
scale a float16 value at calibration time: the export then stores our scales exactly. A float bias of a W8A8 layer is folded into ``quant_bias``
(rounded to whole ``deq_scale`` steps), as the flow above has no float bias.
"""
from __future__ import annotations

import json
import os
from typing import Dict, List, Tuple

import numpy as np

from golden_ptq.export.hf_files import cast_float, write_hf_files, write_readme
from golden_ptq.export.saved_model import LinearLayer, NotRepresentableError, SavedModel
from golden_ptq.io.tensor_names import HF_GLOBAL, HF_PER_LAYER, hf_module_name, name_map


def quant_type(layer: LinearLayer) -> str:
    """msModelSlim's name of a layer's scheme."""
    if not layer.quantized:
        return "FLOAT"
    if layer.act_quantized:
        return "W8A8_DYNAMIC" if layer.dynamic else "W8A8"
    return f"W{layer.bits}A16"


def model_quant_type(layers: List[LinearLayer]) -> str:
    types = sorted({quant_type(layer) for layer in layers} - {"FLOAT"})
    if not types:
        raise NotRepresentableError("the saved model has no quantized Linear layer; msModelSlim's layout "
                                    "describes a quantized model")
    if len(types) > 1:
        raise NotRepresentableError(f"not representable in msModelSlim's layout: several schemes {types} in one "
                                    f"model (model_quant_type names one)")
    return types[0]


def float32_bits_as_int64(values: np.ndarray) -> np.ndarray:
    """The int64 form of float32 ``deq_scale`` that Ascend's fp16 quant kernels take."""
    return np.ascontiguousarray(values, np.float32).view(np.int32).astype(np.int64)


def int64_bits_as_float32(values: np.ndarray) -> np.ndarray:
    return np.asarray(values, np.int64).astype(np.int32).view(np.float32)


def w8a8_tensors(layer: LinearLayer) -> Dict[str, np.ndarray]:
    """The W8A8 tensors (local names) of a static layer, scales rounded as stored."""
    scale32 = np.float64(layer.tensors["input_scale"][0])
    scale16 = np.float16(scale32)
    deq = layer.tensors["deq_scale"].astype(np.float64) * (np.float64(scale16) / scale32)
    quant_bias = layer.tensors["quant_bias"].astype(np.int64)
    if layer.bias is not None:
        quant_bias = quant_bias + np.round(layer.bias.astype(np.float64) / deq).astype(np.int64)
    return {"weight": np.ascontiguousarray(layer.weight, np.int8),
            "input_scale": np.asarray([scale16], np.float16),
            "input_offset": layer.tensors["input_zp"].astype(np.float16).reshape(1),
            "quant_bias": quant_bias.astype(np.int32),
            "deq_scale": float32_bits_as_int64(deq.astype(np.float32))}


def weight_only_tensors(layer: LinearLayer, column: bool) -> Dict[str, np.ndarray]:
    """``weight``, ``weight_scale``, ``weight_offset`` (zeros when symmetric); ``column``: shapes [n, 1]."""
    scale = layer.weight_scale()
    zp = layer.weight_zero_point()
    offset = np.zeros_like(scale) if zp is None else zp.reshape(scale.shape).astype(np.float32)
    if column and scale.ndim == 1:
        scale, offset = scale.reshape(-1, 1), offset.reshape(-1, 1)
    return {"weight": np.ascontiguousarray(layer.weight, np.int8), "weight_scale": scale.astype(np.float32),
            "weight_offset": offset.astype(np.float32)}


def file_names(kind: str) -> Tuple[str, str]:
    suffix = kind.lower()
    return f"quant_model_weight_{suffix}.safetensors", f"quant_model_description_{suffix}.json"


def export_msmodelslim(model: SavedModel, folder: str, dtype: str = "float16") -> List[str]:
    """Write the layout into ``folder``; returns README facts."""
    if dtype != "float16":
        raise ValueError(f"msmodelslim export: float dtype {dtype!r} is not supported; 'float16' (deq_scale as "
                         f"int64-encoded float32, as for fp16 models) is")
    if model.has_kv_quant and model.kv_cache_scheme != "static":
        raise NotRepresentableError(f"not representable in msModelSlim's C8: the KV cache layout kvcache_scheme "
                                    f"{model.kv_cache_scheme!r} has per-token value scales, C8 holds per-channel "
                                    f"kv_cache_scale/kv_cache_offset only; quantize with algo_args "
                                    f"{{kvcache_scheme: static}}")
    config = model.config
    names = name_map(config.num_layers, HF_PER_LAYER, HF_GLOBAL)
    layers = model.linears()
    kind = model_quant_type(layers)
    tensors: Dict[str, np.ndarray] = {}
    desc: Dict[str, str] = {"model_quant_type": kind}

    def put(name: str, array: np.ndarray, label: str) -> None:
        tensors[name] = np.ascontiguousarray(array)
        desc[name] = label

    put(names["model.tok_embeddings.embedding_weight"], cast_float(model.embedding(), dtype), "FLOAT")
    put(names["model.norm_out.weight"], cast_float(model.float_tensor("model.norm_out.weight"), dtype), "FLOAT")
    for i in range(config.num_layers):
        for local in ("attention_norm.weight", "ffn_norm.weight"):
            ours = f"model.layers.{i}.{local}"
            put(names[ours], cast_float(model.float_tensor(ours), dtype), "FLOAT")
    for layer in layers:
        module = hf_module_name(layer.name, config.num_layers)
        label = quant_type(layer)
        if label == "FLOAT":
            parts = {"weight": cast_float(layer.weight, dtype)}
        elif label == "W8A8":
            parts = w8a8_tensors(layer)
        else:
            parts = weight_only_tensors(layer, column=label == "W8A8_DYNAMIC")
        if layer.bias is not None and label != "W8A8":
            parts["bias"] = cast_float(layer.bias, dtype)
        for local, array in parts.items():
            put(f"{module}.{local}", array, label)
    if model.has_kv_quant:
        desc["kv_cache_type"] = "C8"
        for i in range(config.num_layers):
            scales = model.kv_scales(i)
            if scales is None:
                continue
            for proj, scale in (("k_proj", scales[0]), ("v_proj", scales[1])):
                base = f"model.layers.{i}.self_attn.{proj}"
                put(f"{base}.kv_cache_scale", scale.astype(np.float32), kind)
                put(f"{base}.kv_cache_offset", np.zeros_like(scale, np.float32), kind)
    weight_file, desc_file = file_names(kind)
    from safetensors.numpy import save_file
    save_file(tensors, os.path.join(folder, weight_file), metadata={"format": "pt"})
    for name in (desc_file, "quant_model_description.json"):
        with open(os.path.join(folder, name), "w", encoding="utf-8") as handle:
            json.dump(desc, handle, indent=2)
            handle.write("\n")
    write_hf_files(folder, config, model.tokenizer, tied=not model.head_is_separate, dtype=dtype,
                   extra_config={"quantize": kind.lower()})
    facts = [f"format: msModelSlim layout, model_quant_type {kind}"
             + (", kv_cache_type C8" if model.has_kv_quant else "") + f", float tensors {dtype}",
             f"files: {weight_file}, {desc_file} (MindIE) and the same description as "
             f"quant_model_description.json (vLLM-Ascend)"]
    if model.embedding_quantized:
        facts.append("the int8 per-row embedding is stored dequantized (float16)")
    write_readme(os.path.join(folder, "README.md"), "msModelSlim-layout export", model.folder, model.schemes(), facts)
    return facts
