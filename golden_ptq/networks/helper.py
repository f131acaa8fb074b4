"""``NetworkHelper``: builds the network and tokenizer described by a yaml network config.

A network config names where the weights come from and the run settings the samples read::

    model:
      source: gguf            # gguf | hf | ckpt | random | saved
      path: default           # 'default' = the embedded SmolLM2 GGUF; else a file / directory
                              # (ckpt: a full float .ckpt/.safetensors, with 'config:' as for random;
                              # saved: a quantized folder's structure, weights loaded afterwards)
      max_position_embeddings: 2048
    runtime:
      batch_size: 1
      seq_length: 512
      ...
"""
from __future__ import annotations

import copy
import os
from typing import Any, Dict, Optional, Tuple, Union

import numpy as np

from golden_ptq.config.model_config import LlamaConfig
from golden_ptq.networks.default_model import default_gguf_path
from golden_ptq.networks.llama import LlamaForCausalLM
from golden_ptq.networks.network_config import read_network_config
from golden_ptq.networks.tokenizer import Tokenizer


class NetworkHelper:
    """Creates the float network and tokenizer, and answers ``get_spec(name)`` for run settings."""

    def __init__(self, config: Union[str, Dict[str, Any]]):
        self.config_path: Optional[str] = config if isinstance(config, str) else None
        checked = read_network_config(copy.deepcopy(config))  # known keys, typed values: see network_config
        self._model, self._runtime = checked["model"], checked["runtime"]
        self._loaded: Optional[Tuple[LlamaForCausalLM, Tokenizer]] = None
        self._tokenizer: Optional[Tokenizer] = None

    # ----- public API ---------------------------------------------------------------------------
    def get_spec(self, name: str) -> Any:
        if name not in self._runtime:
            raise KeyError(f"unknown spec {name!r}; available: {sorted(self._runtime)}")
        value = self._runtime[name]
        if name == "pad_token_id" and value is None:
            value = self.create_tokenizer().pad_token_id
        return value

    def create_network(self) -> LlamaForCausalLM:
        """A fresh float network with the configured weights (each call builds a new one).

        Under ``msrun`` the communication group is initialised first, so the network is tensor
        parallel over the workers (each loads only its slice); in one process it is whole.
        """
        from golden_ptq.parallel import init_from_launcher
        init_from_launcher()
        network, tokenizer = self._build()
        self._tokenizer = self._tokenizer or tokenizer
        network.set_train(False)
        return network

    def create_tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            self._tokenizer = self._build_tokenizer()
        return self._tokenizer

    def generate(self, network: LlamaForCausalLM, prompts, max_new_tokens: Optional[int] = None,
                 **overrides) -> list:
        """Decode text prompts (a string or a list) with the configured sampling settings; returns new text."""
        tokenizer = self.create_tokenizer()
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        encoded = [tokenizer.encode(p) for p in prompts]
        pad = self.get_spec("pad_token_id")
        width = max(len(e) for e in encoded)
        ids = np.full((len(encoded), width), pad, dtype=np.int64)
        mask = np.zeros_like(ids)
        for row, e in enumerate(encoded):
            ids[row, width - len(e):] = e
            mask[row, width - len(e):] = 1
        settings = dict(do_sample=self.get_spec("do_sample"), top_k=self.get_spec("top_k"),
                        top_p=self.get_spec("top_p"), seed=self.get_spec("seed"),
                        max_new_tokens=(self.get_spec("max_decode_length") if max_new_tokens is None
                                        else max_new_tokens),
                        pad_token_id=pad, eos_token_id=tokenizer.eos_token_id)
        settings.update(overrides)
        outputs = network.generate(ids, attention_mask=mask, **settings)
        return [tokenizer.decode(out[width:].tolist()) for out in outputs]

    def weights_source(self) -> Tuple[str, Optional[LlamaConfig], Optional[int]]:
        """(weights file or folder, the LlamaConfig when the file has none, max_position_embeddings):
        what :func:`golden_ptq.streaming.quantize_streamed` reads instead of building the network."""
        source = self._model.get("source", "gguf")
        if source not in ("gguf", "hf", "ckpt"):
            where = self.config_path or "network config"
            raise ValueError(f"{where}: model.source {source!r} has no weights file to stream from; streaming "
                             f"reads gguf, hf or ckpt sources")
        config = LlamaConfig.from_dict(dict(self._model.get("config") or {})) if source == "ckpt" else None
        return self._path(), config, self._model.get("max_position_embeddings")

    # ----- internals ---------------------------------------------------------------------------
    def _path(self) -> str:
        path = self._model.get("path", "default")
        if path == "default":
            return default_gguf_path()
        if self.config_path and not os.path.isabs(path) and not os.path.exists(path):
            candidate = os.path.join(os.path.dirname(self.config_path), path)
            if os.path.exists(candidate):
                return candidate
        if not os.path.exists(path):
            raise FileNotFoundError(f"network config: model.path {path!r} does not exist")
        return path

    def _relative(self, path: str) -> str:
        """``path`` as written, or relative to the yaml's folder when that is where it exists."""
        if self.config_path and not os.path.isabs(path):
            candidate = os.path.join(os.path.dirname(os.path.abspath(self.config_path)), path)
            if os.path.exists(candidate):
                return candidate
        return path

    def _build(self) -> Tuple[LlamaForCausalLM, Tokenizer]:
        source = self._model.get("source", "gguf")
        max_pos = self._model.get("max_position_embeddings")
        if source == "gguf":
            from golden_ptq.networks.loaders import load_gguf
            return load_gguf(self._path(), max_position_embeddings=max_pos)
        if source == "hf":
            from golden_ptq.io.hf_config import hf_config
            from golden_ptq.networks.loaders.hf_loader import load_hf
            path = self._path()
            config = hf_config(path)
            if max_pos:
                config.max_position_embeddings = max_pos
            return load_hf(path, config), Tokenizer.from_hf_dir(path)
        config = LlamaConfig.from_dict(dict(self._model.get("config") or {}))
        if source == "ckpt":  # our own float checkpoint; each tensor-parallel rank loads its slice
            from golden_ptq.io.checkpoint import load_full_checkpoint
            network = LlamaForCausalLM(config)
            load_full_checkpoint(self._path(), network)
            return network, self.create_tokenizer()
        if source == "saved":  # placeholders: the quantized checkpoint fills them after PTQ's DEPLOY
            return LlamaForCausalLM(config), None
        network = LlamaForCausalLM(config, seed=int(self._model.get("seed", 0)))
        return network, self.create_tokenizer()   # built once per helper: every network shares it

    def _build_tokenizer(self) -> Tokenizer:
        source = self._model.get("source", "gguf")
        if source == "gguf":
            from golden_ptq.io.gguf_file import GGUFFile
            return Tokenizer.from_gguf_metadata(GGUFFile(self._path()).metadata)
        if source == "hf":
            return Tokenizer.from_hf_dir(self._path())
        tokenizer_path = self._model.get("tokenizer")
        if tokenizer_path is not None and tokenizer_path != "default":
            tokenizer_path = self._relative(tokenizer_path)
        if source == "saved" and tokenizer_path is None:
            raise ValueError(f"{self.config_path or 'network config'}: this saved model has no tokenizer "
                             f"(it was saved without one); pass a network config that names one")
        if tokenizer_path in (None, "default"):
            from golden_ptq.io.gguf_file import GGUFFile
            return Tokenizer.from_gguf_metadata(GGUFFile(default_gguf_path()).metadata)
        return Tokenizer.from_hf_dir(tokenizer_path)
