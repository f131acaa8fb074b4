"""How PTQ walks MindFormers' ``LlamaForCausalLM`` layer by layer (the counterpart of ``LlamaStructure``)."""
from __future__ import annotations

from typing import List, Sequence, Tuple

import numpy as np
import mindspore as ms
from mindspore import Tensor, nn

from golden_ptq.networks.structure import LLAMA_SMOOTH_MAPPINGS, SmoothMapping

#: With ``qkv_concat`` the value and up projections live inside joined layers, so only the norms smooth.
CONCAT_SMOOTH_MAPPINGS: Tuple[SmoothMapping, ...] = (
    SmoothMapping("attention_norm", ("attention.w_qkv",)),
    SmoothMapping("ffn_norm", ("feed_forward.w_gate_hidden",)),
)


class MFLlamaStructure:
    """Layer-wise access to a MindFormers Llama built by :class:`~golden_ptq.mindformers.helper.MFLlamaHelper`."""

    def __init__(self, qkv_concat: bool = False):
        from golden_ptq.mindformers.shims import import_mindformers
        import_mindformers()
        from mindformers.models.llama.llama_layer import LlamaRMSNorm
        self.norm_types = (LlamaRMSNorm,)
        self.smooth_mappings: Sequence[SmoothMapping] = CONCAT_SMOOTH_MAPPINGS if qkv_concat else LLAMA_SMOOTH_MAPPINGS

    def decoder_layers(self, network) -> List[Tuple[str, nn.Cell]]:
        return [(f"model.layers.{i}", layer) for i, layer in enumerate(network.model.layers)]

    def layer_inputs(self, network, batch_ids: np.ndarray):
        """Embedded tokens and (rotary tables, causal mask) as MindFormers' LlamaModel makes them."""
        tokens = Tensor(np.asarray(batch_ids, dtype=np.int32))
        model = network.model
        hidden = model.tok_embeddings(tokens).astype(ms.float32)
        return hidden, (model.freqs_mgr(tokens.shape[1]), model.casual_mask(tokens))

    def run_layer(self, layer: nn.Cell, hidden: Tensor, inputs) -> Tensor:
        freqs_cis, mask = inputs
        return layer(hidden, freqs_cis, mask)

    def head_input(self, network, hidden: Tensor) -> Tensor:
        return network.model.norm_out(hidden)

    def num_heads(self, network) -> Tuple[int, int, int]:
        config = network.config
        kv_heads = config.n_kv_heads or config.num_heads
        return config.num_heads, kv_heads, config.hidden_size // config.num_heads
