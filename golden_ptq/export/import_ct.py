"""Import a compressed-tensors checkpoint (ours or another tool's) into a golden_ptq DEPLOY network.

Schemes run here: int8 weights per channel (symmetric) with static per-tensor inputs (W8A8) or
dynamic per-token symmetric inputs (W8A8-dynamic); weight-only int8 per channel or group
(symmetric or not) and symmetric 4-bit packed (A16W8 / W4A16). Anything else is refused with the
scheme named. The int8 codes and scales are loaded as they are; static W8A8's ``quant_bias`` and
``deq_scale`` are derived as our quantizer derives them. Dynamic per-token inputs run with our
rule (``absmax / 127``; compressed-tensors divides by 127.5).
"""
from __future__ import annotations

import json
import os
from typing import Dict, List, Optional, Tuple

import numpy as np

from golden_ptq.export.compressed_tensors import unpack_int4
from golden_ptq.export.saved_model import LAYER_LINEARS
from golden_ptq.io.tensor_names import HF_GLOBAL, HF_PER_LAYER, hf_module_name, name_map


class UnsupportedSchemeError(ValueError):
    """A compressed-tensors scheme golden_ptq does not run."""


def _read_config(path: str) -> Dict:
    file = os.path.join(path, "config.json")
    if not os.path.isfile(file):
        raise FileNotFoundError(f"no config.json in {path}; expected a compressed-tensors model folder")
    with open(file, encoding="utf-8") as handle:
        data = json.load(handle)
    quant = data.get("quantization_config") or data.get("compression_config")
    if not quant or quant.get("quant_method") != "compressed-tensors":
        raise UnsupportedSchemeError(f"{file}: quantization_config.quant_method is "
                                     f"{(quant or {}).get('quant_method')!r}, not 'compressed-tensors'")
    return quant


def _scheme_kwargs(group: Dict, where: str) -> Dict:
    """PTQConfig fields of one config group, or UnsupportedSchemeError."""
    weights, inputs = group.get("weights"), group.get("input_activations")
    if group.get("output_activations"):
        raise UnsupportedSchemeError(f"{where}: output activation quantization is not supported")
    if not weights or weights.get("type", "int") != "int" or weights.get("num_bits") not in (4, 8):
        raise UnsupportedSchemeError(f"{where}: weights {weights!r}; supported: int, 4 or 8 bits")
    strategy, bits = weights.get("strategy"), weights["num_bits"]
    if weights.get("actorder") or weights.get("dynamic"):
        raise UnsupportedSchemeError(f"{where}: weights with actorder/dynamic are not supported")
    kwargs: Dict = {"weight_quant_dtype": "int8", "weight_bits": bits,
                    "weight_symmetric": bool(weights.get("symmetric", True))}
    if strategy == "group":
        kwargs.update(weight_quant_granularity="PER_GROUP", group_size=int(weights["group_size"]))
    elif strategy != "channel":
        raise UnsupportedSchemeError(f"{where}: weight strategy {strategy!r}; supported: 'channel', 'group'")
    if bits == 4 and not kwargs["weight_symmetric"]:
        raise UnsupportedSchemeError(f"{where}: asymmetric 4-bit weights are not supported")
    if inputs:
        if inputs.get("type", "int") != "int" or inputs.get("num_bits") != 8:
            raise UnsupportedSchemeError(f"{where}: input activations {inputs!r}; supported: int8")
        if strategy != "channel" or bits != 8 or not kwargs["weight_symmetric"]:
            raise UnsupportedSchemeError(f"{where}: W8A8 needs symmetric 8-bit per-channel weights")
        if inputs.get("strategy") == "token" and inputs.get("dynamic") is True and inputs.get("symmetric", True):
            kwargs.update(act_quant_dtype="int8", act_quant_granularity="PER_TOKEN")
        elif inputs.get("strategy") == "tensor" and not inputs.get("dynamic"):
            kwargs.update(act_quant_dtype="int8", act_quant_granularity="PER_TENSOR",
                          act_symmetric=bool(inputs.get("symmetric", True)))
        else:
            raise UnsupportedSchemeError(f"{where}: input activations strategy {inputs.get('strategy')!r} "
                                         f"dynamic={inputs.get('dynamic')!r}; supported: static 'tensor', dynamic "
                                         f"symmetric 'token'")
    return kwargs


def ptq_config_of(quant: Dict, layer_names: List[str], num_layers: int, where: str):
    """(DEPLOY PTQConfig, our names of the quantized layers)."""
    from golden_ptq.config import PTQConfig, PTQMode
    groups = quant.get("config_groups") or {}
    if quant.get("kv_cache_scheme"):
        raise UnsupportedSchemeError(f"{where}: kv_cache_scheme is not supported (golden_ptq's C8 is per channel)")
    if not groups:
        raise UnsupportedSchemeError(f"{where}: no config_groups")
    sparsity = quant.get("sparsity_config") or {}
    if sparsity.get("format") not in (None, "dense"):
        raise UnsupportedSchemeError(f"{where}: sparsity_config format {sparsity.get('format')!r} is not supported")
    kwargs, quantized = None, set()
    hf_names = {hf_module_name(name, num_layers): name for name in layer_names}
    for key, group in groups.items():
        group_kwargs = _scheme_kwargs(group, f"{where}: config_groups.{key}")
        if kwargs is not None and group_kwargs != kwargs:
            raise UnsupportedSchemeError(f"{where}: several schemes in config_groups; golden_ptq runs one scheme "
                                         f"per model (plus float layers)")
        kwargs = group_kwargs
        for target in group.get("targets") or []:
            if target == "Linear":
                quantized.update(layer_names)
            elif target in hf_names:
                quantized.add(hf_names[target])
            else:
                raise UnsupportedSchemeError(f"{where}: target {target!r} is neither 'Linear' nor a Linear module "
                                             f"name of this model")
    for entry in quant.get("ignore") or []:
        if entry.startswith("re:"):
            raise UnsupportedSchemeError(f"{where}: regex ignore entry {entry!r} is not supported")
        quantized.discard(hf_names.get(entry, entry))
    disabled = [name for name in layer_names if name not in quantized]
    return PTQConfig(mode=PTQMode.DEPLOY, disable_names=disabled, **kwargs), quantized


def import_compressed_tensors(path: str, output: Optional[str] = None) -> Tuple[object, object, object]:
    """(DEPLOY network with the checkpoint's tensors, its PTQ, the tokenizer or None) for a
    compressed-tensors folder; with ``output``, also saved there as a golden_ptq quantized folder."""
    from golden_ptq.algorithm import PTQ
    from golden_ptq.io.checkpoint import load_state
    from golden_ptq.io.hf_config import hf_config
    from golden_ptq.io.safetensors_files import SafetensorsFiles, find_safetensors
    from golden_ptq.networks.llama import LlamaForCausalLM
    if output and os.path.abspath(output) == os.path.abspath(path):
        raise ValueError(f"output {output!r} is the compressed-tensors folder itself; import writes a new folder")
    quant = _read_config(path)
    config = hf_config(path)
    files = SafetensorsFiles(find_safetensors(path))
    tied = config.tie_word_embeddings and files.get("lm_head.weight") is None
    layer_names = [f"model.layers.{i}.{local}" for i in range(config.num_layers) for local in LAYER_LINEARS]
    layer_names.append("lm_head")
    ptq_config, quantized = ptq_config_of(quant, layer_names, config.num_layers, path)
    if tied and "lm_head" in quantized:
        raise UnsupportedSchemeError(f"{path}: a quantized lm_head tied to the embedding without its own tensors")
    network = LlamaForCausalLM(config)
    ptq = PTQ(ptq_config)
    ptq.apply(network)
    ptq.convert(network)
    params = dict(network.parameters_and_names())
    arrays: Dict[str, np.ndarray] = {}
    names = name_map(config.num_layers, HF_PER_LAYER, HF_GLOBAL)

    def need(name: str) -> np.ndarray:
        array = files.get(name)
        if array is None:
            raise KeyError(f"{path}: tensor '{name}' is missing")
        return array

    for ours, theirs in names.items():
        if ours in params and not any(ours == f"{layer}.weight" for layer in quantized):
            arrays[ours] = need(theirs).astype(np.float32)
    for layer in quantized:
        module = hf_module_name(layer, config.num_layers)
        arrays.update(_layer_arrays(layer, module, need, files, params))
        bias = files.get(f"{module}.bias")
        if bias is not None:
            arrays[f"{layer}.bias"] = bias.astype(np.float32)
    for name, param in params.items():  # remaining placeholders (e.g. a zero weight_zp of symmetric groups)
        if name not in arrays and name.endswith(".weight_zp"):
            arrays[name] = np.zeros(tuple(param.shape), np.float32)
    load_state(arrays, network, path)
    tokenizer = None
    if os.path.isfile(os.path.join(path, "tokenizer.json")):
        from golden_ptq.networks.tokenizer import Tokenizer
        tokenizer = Tokenizer.from_hf_dir(path)
    if output:
        from golden_ptq.deploy import save_quantized
        save_quantized(network, ptq, output, tokenizer=tokenizer)
    return network, ptq, tokenizer


def _layer_arrays(layer: str, module: str, need, files, params) -> Dict[str, np.ndarray]:
    out: Dict[str, np.ndarray] = {}
    packed = files.get(f"{module}.weight_packed")
    if packed is not None:
        shape = need(f"{module}.weight_shape").astype(np.int64)
        q = unpack_int4(packed, int(shape[1]))
    else:
        q = need(f"{module}.weight")
        if q.dtype != np.int8:
            raise UnsupportedSchemeError(f"tensor '{module}.weight' is {q.dtype}, expected int8 (compressed)")
    out[f"{layer}.weight"] = q
    scale = need(f"{module}.weight_scale").astype(np.float32)
    n = q.shape[0]
    zp = files.get(f"{module}.weight_zero_point")
    if f"{layer}.weight_scale" in params:
        shape = tuple(params[f"{layer}.weight_scale"].shape)
        out[f"{layer}.weight_scale"] = scale.reshape(shape)
        if f"{layer}.weight_zp" in params:
            out[f"{layer}.weight_zp"] = (np.zeros(shape, np.float32) if zp is None
                                         else zp.astype(np.float32).reshape(shape))
    if f"{layer}.deq_scale" in params:  # static W8A8
        x_scale = need(f"{module}.input_scale").astype(np.float32).reshape(1)
        x_zp = files.get(f"{module}.input_zero_point")
        x_zp = np.zeros(1, np.float32) if x_zp is None else x_zp.astype(np.float32).reshape(1)
        out[f"{layer}.input_scale"] = x_scale
        out[f"{layer}.input_zp"] = x_zp
        out[f"{layer}.quant_bias"] = (-x_zp[0].astype(np.int64) * q.astype(np.int64).sum(axis=1)).astype(np.int32)
        out[f"{layer}.deq_scale"] = (x_scale[0].astype(np.float64) * scale.reshape(n)).astype(np.float32)
    return out
