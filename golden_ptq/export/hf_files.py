"""The Hugging Face files every exported model folder carries: config.json, generation_config.json,
the tokenizer and a short README of what was exported."""
from __future__ import annotations

import json
import os
from typing import Dict, List, Optional

import numpy as np

from golden_ptq.config.model_config import LlamaConfig

# numpy dtype names -> config.json ``torch_dtype`` names
TORCH_DTYPES = {"float32": "float32", "float16": "float16"}


def architecture(config: LlamaConfig) -> str:
    """``qwen2`` for q/k/v biases (Qwen2 shape), else ``llama``."""
    return "qwen2" if config.qkv_bias else "llama"


def hf_config(config: LlamaConfig, tied: bool, dtype: str, extra: Optional[Dict[str, object]] = None) -> Dict:
    """``config.json`` of the network (``tied``: the head reads the embedding table)."""
    arch = architecture(config)
    data = {
        "architectures": ["Qwen2ForCausalLM" if arch == "qwen2" else "LlamaForCausalLM"],
        "model_type": arch,
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": config.max_position_embeddings,
        "rms_norm_eps": config.rms_norm_eps,
        "rope_theta": config.rope_theta,
        "rope_scaling": None,
        "tie_word_embeddings": bool(tied),
        "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_id,
        "pad_token_id": config.pad_token_id,
        "torch_dtype": TORCH_DTYPES[dtype],
        "use_cache": True,
    }
    if arch == "llama":
        data.update(attention_bias=False, mlp_bias=False)
    data.update(extra or {})
    return data


def write_json(path: str, data: Dict) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2)
        handle.write("\n")


def write_hf_files(folder: str, config: LlamaConfig, tokenizer, tied: bool, dtype: str,
                   extra_config: Optional[Dict[str, object]] = None) -> None:
    """config.json, generation_config.json and (when there is one) the tokenizer, into ``folder``."""
    write_json(os.path.join(folder, "config.json"), hf_config(config, tied, dtype, extra_config))
    generation = {"bos_token_id": config.bos_token_id, "eos_token_id": config.eos_token_id, "do_sample": False}
    if config.pad_token_id is not None:
        generation["pad_token_id"] = config.pad_token_id
    write_json(os.path.join(folder, "generation_config.json"), generation)
    if tokenizer is not None:
        write_tokenizer(folder, tokenizer, config.max_position_embeddings)


def write_tokenizer(folder: str, tokenizer, max_length: int) -> None:
    """``tokenizer.json`` and a ``tokenizer_config.json`` that ``AutoTokenizer`` reads."""
    tokenizer.backend.save(os.path.join(folder, "tokenizer.json"))
    data: Dict[str, object] = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": max_length,
                               "add_bos_token": tokenizer.add_bos_token, "add_eos_token": False,
                               "clean_up_tokenization_spaces": False}
    for key in ("bos", "eos", "pad"):
        token_id = getattr(tokenizer, f"{key}_token_id")
        if token_id is not None:
            data[f"{key}_token"] = tokenizer.backend.id_to_token(int(token_id))
    write_json(os.path.join(folder, "tokenizer_config.json"), data)


def write_readme(path: str, title: str, source: str, schemes: Dict[str, int], lines: List[str]) -> None:
    """A short README: where the model came from and what each layer became."""
    scheme_text = ", ".join(f"{k} x{v}" for k, v in sorted(schemes.items(), key=lambda kv: (-kv[1], kv[0])))
    body = [f"# {title}", "", f"Exported by `golden-ptq export` from the golden_ptq quantized folder `{source}`.", "",
            f"- Linear layers: {scheme_text}", *[f"- {line}" for line in lines], ""]
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(body))


def cast_float(array: np.ndarray, dtype: str) -> np.ndarray:
    """A float tensor in the export dtype (numpy has no bfloat16, so float32 or float16)."""
    if dtype == "float32":
        return np.ascontiguousarray(array, dtype=np.float32)
    if dtype == "float16":
        return np.ascontiguousarray(array, dtype=np.float16)
    raise ValueError(f"float dtype {dtype!r} is not one of ['float32', 'float16']")
