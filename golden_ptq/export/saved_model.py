"""A saved quantized folder (as :func:`golden_ptq.deploy.save_quantized` writes it), read as plain numpy.

The exporters work from this view only: no network is built, the integer tensors are taken as
they are. Each Linear layer becomes a :class:`LinearLayer` holding its scheme (from
``quant_desc.json``) and its tensors under their local names (``weight``, ``weight_scale``, ...).
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np
import yaml

from golden_ptq.config.model_config import LlamaConfig
from golden_ptq.io.checkpoint import read_checkpoint
from golden_ptq.io.folder_set import FolderSetError, verify_folder_set

LAYER_LINEARS = ("attention.wq", "attention.wk", "attention.wv", "attention.wo",
                 "feed_forward.w1", "feed_forward.w2", "feed_forward.w3")
_LABEL = re.compile(r"^W(?P<bits>[48])A(?P<act>8|16)(?P<dyn>-dynamic)?(?P<asym>-asym)?(?:-g(?P<group>\d+))?$")


class NotRepresentableError(ValueError):
    """The saved model uses a scheme the target format cannot hold."""


@dataclass
class LinearLayer:
    """One Linear layer of a saved model: ``name`` is ours (``model.layers.0.attention.wq``)."""

    name: str
    scheme: str                      # quant_desc label: FLOAT, W8A8, W8A8-dynamic, W8A16[-asym][-gN], W4A16...
    tensors: Dict[str, np.ndarray]   # local name -> array

    @property
    def quantized(self) -> bool:
        return self.scheme != "FLOAT"

    def _part(self, key: str) -> Optional[str]:
        match = _LABEL.match(self.scheme)
        if not match:
            raise ValueError(f"layer '{self.name}': unknown quant type {self.scheme!r} in quant_desc.json")
        return match.group(key)

    @property
    def bits(self) -> int:
        return int(self._part("bits")) if self.quantized else 16

    @property
    def act_quantized(self) -> bool:
        return self.quantized and self._part("act") == "8"

    @property
    def dynamic(self) -> bool:
        return self.quantized and self._part("dyn") is not None

    @property
    def symmetric(self) -> bool:
        return not self.quantized or self._part("asym") is None

    @property
    def group_size(self) -> int:
        """0 for per output channel (and for float layers)."""
        if not self.quantized or self.act_quantized:
            return 0
        scale = self.tensors["weight_scale"]
        return 0 if scale.ndim == 1 else self.tensors["weight"].shape[1] // scale.shape[1]

    @property
    def weight(self) -> np.ndarray:
        return self.tensors["weight"]

    @property
    def bias(self) -> Optional[np.ndarray]:
        return self.tensors.get("bias")

    def weight_scale(self) -> np.ndarray:
        """Per output channel ``[n]`` or per group ``[n, groups]`` float32 scales. Static W8A8 keeps only
        ``deq_scale = input_scale * weight_scale``; the weight scale is recovered from it."""
        if "weight_scale" in self.tensors:
            return self.tensors["weight_scale"].astype(np.float32)
        deq = self.tensors["deq_scale"].astype(np.float64)
        return (deq / np.float64(self.tensors["input_scale"][0])).astype(np.float32)

    def weight_zero_point(self) -> Optional[np.ndarray]:
        """Integer-valued zero points (shape of the scales) for asymmetric weights, else None."""
        zp = self.tensors.get("weight_zp")
        return None if zp is None or self.symmetric else zp

    def dequantized_weight(self) -> np.ndarray:
        """The float32 weight this layer multiplies by (what the deployed cell computes with)."""
        if not self.quantized:
            return self.weight.astype(np.float32)
        q = self.weight.astype(np.float32)
        n, k = q.shape
        scale = self.weight_scale().reshape(n, -1)
        zp = self.weight_zero_point()
        groups = scale.shape[1]
        q = q.reshape(n, groups, k // groups)
        if zp is not None:
            q = q - zp.reshape(n, groups, 1).astype(np.float32)
        return (q * scale.reshape(n, groups, 1)).reshape(n, k)


class SavedModel:
    """Config, quant types, tensors and tokenizer of a saved quantized folder."""

    def __init__(self, folder: str, verify: bool = True):
        from golden_ptq.deploy import CONFIG_FILE, DESC_FILE, NETWORK_FILE, find_checkpoint
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"quantized model folder {folder!r} does not exist")
        if os.path.isfile(os.path.join(folder, "tp_layout.json")) or os.path.isdir(os.path.join(folder, "rank_0")):
            raise NotImplementedError(f"{folder}: a tensor-parallel (per-rank) folder; export reads a folder saved "
                                      f"at TP size 1 (quantize without msrun, or reload and save it whole)")
        if verify:
            verify_folder_set(folder)
        self.folder = folder
        network_file = os.path.join(folder, NETWORK_FILE)
        if not os.path.isfile(network_file):
            raise FolderSetError(f"{folder}: no {NETWORK_FILE}; was it written by save_quantized?")
        with open(network_file, encoding="utf-8") as handle:
            model = (yaml.safe_load(handle) or {}).get("model") or {}
        if model.get("source") != "saved" or not isinstance(model.get("config"), dict):
            raise FolderSetError(f"{network_file}: model.source must be 'saved' with a config; got "
                                 f"source={model.get('source')!r}")
        self.config = LlamaConfig.from_dict(dict(model["config"]))
        with open(os.path.join(folder, DESC_FILE), encoding="utf-8") as handle:
            self.desc: Dict[str, str] = json.load(handle)
        from golden_ptq.config import PTQConfig
        self.ptq_config = PTQConfig.load(os.path.join(folder, CONFIG_FILE))
        if self.ptq_config.rotation_method is not None and self.ptq_config.arg("rotation_online"):
            # an offline rotation is only other float weights; the online transform is a new op
            raise NotRepresentableError(f"{folder}: quantized with rotation {self.ptq_config.rotation!r} and "
                                        f"algo_args rotation_online: true, whose online Hadamard before "
                                        f"feed_forward.w2 no export format holds; quantize with algo_args "
                                        f"{{rotation_online: false}} (the rotation then folds into the weights) "
                                        f"or rotation: none")
        self.tensors: Dict[str, np.ndarray] = read_checkpoint(find_checkpoint(folder))
        missing = sorted(set(self.desc) ^ set(self.tensors))
        if missing:
            raise FolderSetError(f"{folder}: quant_desc.json and the checkpoint disagree on '{missing[0]}'")
        self.tokenizer = None
        if os.path.isfile(os.path.join(folder, "tokenizer.json")):
            from golden_ptq.networks.tokenizer import Tokenizer
            self.tokenizer = Tokenizer.from_hf_dir(folder)

    # ----- layers -------------------------------------------------------------------------------
    def linear_names(self) -> List[str]:
        """Our names of every Linear layer, in network order; ``lm_head`` only when it has its own weight."""
        names = [f"model.layers.{i}.{local}" for i in range(self.config.num_layers) for local in LAYER_LINEARS]
        return names + (["lm_head"] if self.head_is_separate else [])

    @property
    def head_is_separate(self) -> bool:
        """False when ``lm_head`` reads the embedding table (tied and neither side quantized apart)."""
        return "lm_head.weight" in self.tensors

    def linear(self, name: str) -> LinearLayer:
        prefix = name + "."
        tensors = {key[len(prefix):]: value for key, value in self.tensors.items()
                   if key.startswith(prefix) and "." not in key[len(prefix):]}
        if "weight" not in tensors:
            raise FolderSetError(f"{self.folder}: no weight for layer '{name}'")
        layer = LinearLayer(name, self.desc[f"{name}.weight"], tensors)
        if "input_shift" in tensors:
            raise NotRepresentableError(f"layer '{name}' carries an input shift (anti_method m4: input_shift / "
                                        f"shift_bias), which no export format holds; quantize without m4")
        return layer

    def linears(self) -> List[LinearLayer]:
        return [self.linear(name) for name in self.linear_names()]

    def kv_scales(self, layer: int) -> Optional[Tuple[np.ndarray, np.ndarray]]:
        """(key_scale, value_scale) ``[Hkv*D]`` of a C8 layer, or None; the 'static' layout only
        (:attr:`kv_cache_scheme`: the exporters refuse the others before reading)."""
        base = f"model.layers.{layer}.attention.kv_cache."
        if base + "key_scale" not in self.tensors:
            return None
        return self.tensors[base + "key_scale"], self.tensors[base + "value_scale"]

    @property
    def kv_cache_scheme(self) -> str:
        """The int8 KV cache layout (``algo_args['kvcache_scheme']``): 'static' is per-channel key/value scales."""
        return str(self.ptq_config.arg("kvcache_scheme"))

    @property
    def has_kv_quant(self) -> bool:
        return any(v == "C8" for v in self.desc.values())

    def embedding(self) -> np.ndarray:
        """The float32 embedding table (an int8 per-row table dequantized exactly as the deployed cell does)."""
        table = self.tensors["model.tok_embeddings.embedding_weight"]
        scale = self.tensors.get("model.tok_embeddings.embedding_scale")
        if scale is None:
            return table.astype(np.float32)
        return table.astype(np.float32) * scale.astype(np.float32)[:, None]

    @property
    def embedding_quantized(self) -> bool:
        return "model.tok_embeddings.embedding_scale" in self.tensors

    def float_tensor(self, name: str) -> np.ndarray:
        return self.tensors[name].astype(np.float32)

    def schemes(self) -> Dict[str, int]:
        """Linear layers per scheme label."""
        counts: Dict[str, int] = {}
        for name in self.linear_names():
            label = self.desc[f"{name}.weight"]
            counts[label] = counts.get(label, 0) + 1
        return counts
