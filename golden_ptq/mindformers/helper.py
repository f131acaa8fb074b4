"""``MFLlamaHelper``: MindFormers' own ``LlamaForCausalLM`` from a run yaml, on CPU, for golden_ptq's PTQ.

In the style of Golden Stick's ``MFLlama2Helper``::

    helper = MFLlamaHelper("run_llama.yaml")          # its load_checkpoint: the float weights
    network = helper.create_network()                 # mindformers.LlamaForCausalLM, CPU settings applied
    ptq = PTQ(config)
    register_mindformers(ptq.registry)                # MindFormers' Linear and the KV cache stand-in
    ptq.apply(network, helper, datasets)              # quantized in place, layer by layer
    ptq.convert(network)
    save_quantized(network, ptq, "out")               # MindFormers parameter names
    network, ptq = helper.load_quantized("out")       # later, in any process: DEPLOY + strict load

Needs the optional dependency mindformers (see :mod:`golden_ptq.mindformers.shims`).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, List, Optional, Sequence, Union

import numpy as np

from golden_ptq.mindformers.checkpoint_io import load_mf_checkpoint
from golden_ptq.mindformers.run_config import MFRunConfig, read_run_config
from golden_ptq.mindformers.shims import (CACHE_MODE_ATTR, CPU_MODEL_CONFIG, attach_kv_caches, import_mindformers,
                                          use_cpu_argmax)
from golden_ptq.networks.layers import CacheMode
from golden_ptq.mindformers.structure import MFLlamaStructure


class MFLlamaHelper:
    """Builds MindFormers' network and a tokenizer from a run yaml; answers ``get_spec``; generates."""

    def __init__(self, run_yaml: str, checkpoint: Optional[str] = None):
        self.run: MFRunConfig = read_run_config(run_yaml)
        self.checkpoint = checkpoint or self.run.resolve(self.run.load_checkpoint)
        self.structure = MFLlamaStructure(self.run.qkv_concat)
        self._tokenizer = None

    # ----- Golden Stick's helper interface --------------------------------------------------------
    def get_spec(self, name: str) -> Any:
        cfg, llama = self.run.model_config, self.run.llama
        specs = {"seq_length": self.run.seq_length, "batch_size": int(cfg.get("batch_size", 1)),
                 "max_decode_length": int(cfg.get("max_decode_length", 64)), "vocab_size": llama.vocab_size,
                 "pad_token_id": llama.pad_token_id, "eos_token_id": llama.eos_token_id,
                 "ignore_token_id": int(cfg.get("ignore_token_id", -100)), "hidden_size": llama.hidden_size}
        if name not in specs:
            raise KeyError(f"unknown spec {name!r}; available: {sorted(specs)}")
        return specs[name]

    def create_network(self, load_weights: bool = True):
        """MindFormers' ``LlamaForCausalLM`` with the CPU settings of ``shims.CPU_MODEL_CONFIG``, a KV
        cache stand-in per attention and a CPU argmax for its own ``generate``; the checkpoint loaded
        strictly unless ``load_weights=False`` (DEPLOY: the quantized checkpoint fills it later)."""
        mindformers = import_mindformers()
        values = {k: v for k, v in self.run.model_config.items() if k != "type"}
        values.update(CPU_MODEL_CONFIG)
        values["max_position_embedding"] = self.run.llama.max_position_embeddings
        network = mindformers.LlamaForCausalLM(mindformers.LlamaConfig(**values))
        attach_kv_caches(network)
        use_cpu_argmax(network)
        network.set_train(False)
        if load_weights:
            if not self.checkpoint:
                raise ValueError(f"{self.run.path}: load_checkpoint is empty; pass MFLlamaHelper(..., checkpoint=...) "
                                 f"or create_network(load_weights=False)")
            load_mf_checkpoint(self.checkpoint, network, qkv_concat=self.run.qkv_concat)
        return network

    def create_tokenizer(self):
        """The tokenizer of ``processor.tokenizer``: ``tokenizer_file`` / ``vocab_file`` naming a Hugging
        Face ``tokenizer.json`` or a SentencePiece ``tokenizer.model``, or ``type: golden_ptq_default``
        for the embedded SmolLM2 tokenizer (see :func:`~golden_ptq.mindformers.tokenizer.tokenizer_from_run_yaml`)."""
        if self._tokenizer is None:
            from golden_ptq.mindformers.tokenizer import tokenizer_from_run_yaml
            self._tokenizer = tokenizer_from_run_yaml(self.run.tokenizer, self.run.resolve, str(self.run.path))
        return self._tokenizer

    def generate(self, network, prompts: Union[str, Sequence[str]], max_new_tokens: Optional[int] = None) -> List[str]:
        """Greedy continuation of each text prompt (one at a time: MindFormers' full forward has no left padding)."""
        tokenizer = self.create_tokenizer()
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        steps = max_new_tokens or self.get_spec("max_decode_length")
        outputs = []
        for prompt in prompts:
            ids = tokenizer.encode(prompt)
            out = self.generate_ids(network, np.asarray([ids]), steps, eos_token_id=tokenizer.eos_token_id)[0]
            outputs.append(tokenizer.decode(out[len(ids):].tolist()))
        return outputs

    # ----- helpers beyond Golden Stick's --------------------------------------------------------
    def logits(self, network, input_ids) -> np.ndarray:
        """Float32 logits ``[B, T, V]`` of MindFormers' network for unpadded ``input_ids`` ``[B, T]``."""
        from mindspore import Tensor
        ids = np.asarray(input_ids, dtype=np.int32)
        ids = ids[None] if ids.ndim == 1 else ids
        out = network(Tensor(ids))
        logits = out[0] if isinstance(out, tuple) else out
        return logits.asnumpy().reshape(ids.shape[0], ids.shape[1], -1)

    def generate_ids(self, network, input_ids, max_new_tokens: int,
                     eos_token_id: Optional[int] = None) -> List[np.ndarray]:
        """Greedy decoding with golden_ptq's generation loop and KV cache (MindFormers' own incremental
        path needs Ascend kernels): the prompt once, then one token per step. Rows must be unpadded."""
        from golden_ptq.networks.generation import generate
        view = _CachedDecoder(self, network)
        eos = self.run.llama.eos_token_id if eos_token_id is None else eos_token_id
        return generate(view, input_ids, max_new_tokens=max_new_tokens, eos_token_id=eos,
                        attention_mask=np.ones_like(np.asarray(input_ids)))

    def load_quantized(self, folder: str):
        """(network, ptq): MindFormers' network in DEPLOY mode with the quantized checkpoint written by
        :func:`golden_ptq.deploy.save_quantized` loaded strictly."""
        from golden_ptq.algorithm import PTQ
        from golden_ptq.io.checkpoint import load_checkpoint
        from golden_ptq.config import PTQConfig, PTQMode
        from golden_ptq.deploy import CONFIG_FILE, find_checkpoint
        from golden_ptq.io.folder_set import verify_folder_set
        from golden_ptq.mindformers.quant_cells import register_mindformers
        verify_folder_set(folder)  # every file as saved, before anything is built
        config = dataclasses.replace(PTQConfig.load(os.path.join(folder, CONFIG_FILE)), mode=PTQMode.DEPLOY)
        network = self.create_network(load_weights=False)
        ptq = PTQ(config)
        register_mindformers(ptq.registry)
        ptq.apply(network, self)
        ptq.convert(network)
        load_checkpoint(find_checkpoint(folder), network)
        return network, ptq


class _CachedDecoder:
    """``prefill`` / ``decode_step`` / ``reset_cache`` over MindFormers' layers with the KV cache stand-ins,
    for golden_ptq's ``generate``: the prompt runs once, then each step runs one token per row."""

    def __init__(self, helper: MFLlamaHelper, network):
        self.helper, self.network = helper, network
        self.config = helper.run.llama
        self._length: Optional[int] = None

    def _set_mode(self, mode: int) -> None:
        for layer in self.network.model.layers:
            layer.attention.__dict__[CACHE_MODE_ATTR] = mode

    def _head(self, hidden):
        from mindspore import ops
        logits = self.network.lm_head(self.network.model.norm_out(hidden[:, -1:]))
        return ops.cast(logits, ms_float32())[:, 0]

    def prefill(self, input_ids, attention_mask=None, new_tokens=None):
        del new_tokens  # how many tokens follow: a hint for compiled decoding, which this view does not do
        ids = np.asarray(input_ids, dtype=np.int64)
        if attention_mask is not None and not np.all(np.asarray(attention_mask) == 1):
            raise ValueError("MFLlamaHelper.generate_ids: rows must be unpadded (MindFormers' forward counts "
                             "positions from the first column)")
        self.reset_cache()
        structure = self.helper.structure
        hidden, inputs = structure.layer_inputs(self.network, ids)
        self._set_mode(CacheMode.PREFILL)
        try:
            for _, layer in structure.decoder_layers(self.network):
                hidden = structure.run_layer(layer, hidden, inputs)
        finally:
            self._set_mode(CacheMode.NONE)
        self._length = ids.shape[1]
        return self._head(hidden)

    def decode_step(self, token_ids):
        from mindspore import Tensor
        if self._length is None:
            raise RuntimeError("decode_step called before prefill")
        tokens = Tensor(np.asarray(token_ids, dtype=np.int32).reshape(-1, 1))
        model, position = self.network.model, self._length
        freqs = model.freqs_mgr
        if position >= freqs.freqs_cos.shape[0]:
            raise ValueError(f"sequence length {position + 1} exceeds the rotary table "
                             f"({freqs.freqs_cos.shape[0]} positions: seq_length / max_position_embedding)")
        width = freqs.freqs_cos.shape[1]
        freqs_cis = (freqs.freqs_cos[position:position + 1].reshape(1, 1, 1, width),
                     freqs.freqs_sin[position:position + 1].reshape(1, 1, 1, width), freqs.swap_mask)
        mask = Tensor(np.zeros((tokens.shape[0], 1, 1, position + 1), np.float32))  # the new token sees all
        hidden = model.tok_embeddings(tokens).astype(ms_float32())
        self._set_mode(CacheMode.DECODE)
        try:
            for layer in model.layers:
                hidden = layer(hidden, freqs_cis, mask)
        finally:
            self._set_mode(CacheMode.NONE)
        self._length = position + 1
        return self._head(hidden)

    def reset_cache(self) -> None:
        for layer in self.network.model.layers:
            layer.attention.kv_cache.reset()
        self._length = None


def ms_float32():
    import mindspore as ms
    return ms.float32
