"""Export to one GGUF file (llama.cpp and every GGUF runtime).

``Q8_0`` is symmetric int8 in blocks of 32 weights along the input dimension with one fp16 scale
each: exactly our A16W8 group-32 symmetric layers. Their int8 codes are copied bit for bit; the
scales are rounded to fp16 (GGUF's scale type). Float tensors are F32 (or F16 with
``dtype="float16"``; norms stay F32 as llama.cpp keeps them). Other schemes have no GGUF form
that computes what ours do, and are refused.

For the ``llama`` architecture llama.cpp expects q/k rows in its interleaved rope order; ours are
in Hugging Face's rotate-half order, so those rows are permuted (codes and scales alike: whole
rows move, blocks along the input dimension are unchanged).
"""
from __future__ import annotations

import json
import os
from typing import Dict, List, Optional, Tuple

import numpy as np

from golden_ptq.export.hf_files import architecture, cast_float
from golden_ptq.export.saved_model import LinearLayer, NotRepresentableError, SavedModel
from golden_ptq.io.tensor_names import GGUF_GLOBAL, GGUF_PER_LAYER, name_map
from golden_ptq.networks.loaders.common import permute_rope_rows

QK8_0 = 32
FILE_TYPE_MOSTLY_Q8_0 = 7
FILE_TYPE_ALL_F32 = 0


def q8_0_bytes(codes: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """``[n, k]`` int8 codes and ``[n, k/32]`` scales -> ``[n, k/32*34]`` uint8 Q8_0 blocks (fp16 d, 32 x int8)."""
    n, k = codes.shape
    blocks = k // QK8_0
    d = np.ascontiguousarray(scales.astype(np.float16)).view(np.uint8).reshape(n, blocks, 2)
    q = np.ascontiguousarray(codes.astype(np.int8)).view(np.uint8).reshape(n, blocks, QK8_0)
    return np.concatenate([d, q], axis=2).reshape(n, blocks * (QK8_0 + 2))


def check_q8_0(layer: LinearLayer) -> None:
    if not layer.quantized:
        return
    if layer.act_quantized or layer.bits != 8 or not layer.symmetric or layer.group_size != QK8_0:
        group = f"group {layer.group_size}" if layer.group_size else "per channel"
        raise NotRepresentableError(
            f"not representable in GGUF: layer '{layer.name}' is {layer.scheme} ({group}); GGUF's Q8_0 is symmetric "
            f"8-bit weight-only in groups of 32 — quantize with a16w8 and weight_quant_granularity PER_GROUP, "
            f"group_size 32")


def _rope_permute(ours: str, array: np.ndarray, model: SavedModel) -> np.ndarray:
    if architecture(model.config) != "llama":
        return array
    if ours.endswith(("attention.wq.weight", "attention.wq.bias")):
        return permute_rope_rows(array, model.config.num_heads)
    if ours.endswith(("attention.wk.weight", "attention.wk.bias")):
        return permute_rope_rows(array, model.config.num_kv_heads)
    return array


def gguf_tensors(model: SavedModel, dtype: str) -> List[Tuple[str, np.ndarray, Optional[int]]]:
    """(GGUF name, data, raw GGML type or None) of every tensor, in file order."""
    import gguf
    config = model.config
    names = name_map(config.num_layers, GGUF_PER_LAYER, GGUF_GLOBAL)
    out: List[Tuple[str, np.ndarray, Optional[int]]] = [
        (names["model.tok_embeddings.embedding_weight"], cast_float(model.embedding(), dtype), None)]
    layers = {layer.name: layer for layer in model.linears()}
    for layer in layers.values():
        check_q8_0(layer)
    if model.has_kv_quant:
        raise NotRepresentableError("not representable in GGUF: C8 KV cache with static per-channel scales "
                                    "(llama.cpp quantizes its KV cache at run time); export a model without C8")
    for i in range(config.num_layers):
        prefix = f"model.layers.{i}."
        out.append((names[prefix + "attention_norm.weight"], model.float_tensor(prefix + "attention_norm.weight"), None))
        for local in ("attention.wq", "attention.wk", "attention.wv", "attention.wo",
                      "feed_forward.w1", "feed_forward.w2", "feed_forward.w3"):
            out.extend(_linear_tensors(layers[prefix + local], names, model, dtype, gguf))
        out.append((names[prefix + "ffn_norm.weight"], model.float_tensor(prefix + "ffn_norm.weight"), None))
    out.append((names["model.norm_out.weight"], model.float_tensor("model.norm_out.weight"), None))
    if model.head_is_separate:
        out.extend(_linear_tensors(layers["lm_head"], names, model, dtype, gguf))
    return out


def _linear_tensors(layer: LinearLayer, names: Dict[str, str], model: SavedModel, dtype: str, gguf):
    ours = f"{layer.name}.weight"
    if layer.quantized:
        codes = _rope_permute(ours, layer.weight, model)
        scales = _rope_permute(ours, layer.weight_scale(), model)
        data, raw = q8_0_bytes(codes, scales), gguf.GGMLQuantizationType.Q8_0
    else:
        data, raw = cast_float(_rope_permute(ours, layer.weight, model), dtype), None
    items = [(names[ours], data, raw)]
    if layer.bias is not None:
        bias_name = f"{layer.name}.bias"
        items.append((names[bias_name], _rope_permute(bias_name, layer.bias.astype(np.float32), model), None))
    return items


def tokenizer_metadata(tokenizer, vocab_size: int) -> Dict[str, object]:
    """llama.cpp's ``tokenizer.ggml.*`` of a byte-level BPE tokenizer."""
    data = json.loads(tokenizer.backend.to_str())
    model = data.get("model") or {}
    if model.get("type") != "BPE":
        raise NotRepresentableError(f"not representable in GGUF: tokenizer model {model.get('type')!r}; the "
                                    f"exporter writes byte-level BPE ('gpt2') tokenizers")
    tokens = [None] * vocab_size
    for token, index in model["vocab"].items():
        if index < vocab_size:
            tokens[index] = token
    special = set()
    for added in data.get("added_tokens") or []:
        if added["id"] < vocab_size:
            tokens[added["id"]] = added["content"]
            if added.get("special"):
                special.add(added["id"])
    types = [3 if i in special else 1 for i in range(vocab_size)]
    for i, token in enumerate(tokens):
        if token is None:  # the network's vocabulary is larger than the tokenizer's
            tokens[i], types[i] = f"[PAD{i}]", 5
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    digits = "individual_digits" in json.dumps(data.get("pre_tokenizer"))
    meta: Dict[str, object] = {"model": "gpt2", "pre": "smollm" if digits else "gpt-2", "tokens": tokens,
                               "types": types, "merges": merges, "add_bos": tokenizer.add_bos_token}
    for key in ("bos", "eos", "pad"):
        meta[key] = getattr(tokenizer, f"{key}_token_id")
    return meta


def export_gguf(model: SavedModel, folder: str, dtype: str = "float32", name: Optional[str] = None) -> List[str]:
    """Write ``model.gguf`` into ``folder``; returns README facts."""
    import gguf
    config = model.config
    tensors = gguf_tensors(model, dtype)  # refuses what GGUF cannot hold first
    if model.tokenizer is None:
        raise ValueError(f"{model.folder}: the saved model has no tokenizer; a GGUF file carries one")
    arch = architecture(config)
    path = os.path.join(folder, "model.gguf")
    writer = gguf.GGUFWriter(path, arch)
    writer.add_name(name or os.path.basename(os.path.abspath(model.folder)))
    quantized = any(raw is not None for _, _, raw in tensors)
    writer.add_file_type(FILE_TYPE_MOSTLY_Q8_0 if quantized else FILE_TYPE_ALL_F32)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_heads)
    writer.add_head_count_kv(config.num_kv_heads)
    writer.add_rope_dimension_count(config.head_dim)
    writer.add_rope_freq_base(config.rope_theta)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    meta = tokenizer_metadata(model.tokenizer, config.vocab_size)
    writer.add_tokenizer_model(meta["model"])
    writer.add_tokenizer_pre(meta["pre"])
    writer.add_token_list(meta["tokens"])
    writer.add_token_types(meta["types"])
    writer.add_token_merges(meta["merges"])
    for key, add in (("bos", writer.add_bos_token_id), ("eos", writer.add_eos_token_id),
                     ("pad", writer.add_pad_token_id)):
        if meta[key] is not None:
            add(int(meta[key]))
    writer.add_add_bos_token(bool(meta["add_bos"]))
    for tensor_name, data, raw in tensors:
        writer.add_tensor(tensor_name, data, raw_dtype=raw)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    from golden_ptq.export.hf_files import write_readme
    facts = [f"format: GGUF ({arch}), quantized Linear layers Q8_0 (int8 codes as ours, scales fp16), "
             f"float tensors {dtype}", f"file: model.gguf ({os.path.getsize(path) / 1e6:.1f} MB)"]
    if model.embedding_quantized:
        facts.append("the int8 per-row embedding is stored dequantized (float): Q8_0 groups are 32 wide")
    write_readme(os.path.join(folder, "README.md"), "GGUF export", model.folder, model.schemes(), facts)
    return facts
