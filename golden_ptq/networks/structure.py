"""How PTQ walks a network layer by layer, and the smoothing rules of the Llama block, declared."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
from mindspore import Tensor, nn

from golden_ptq.networks.layers import rms_norm_eager


@dataclass(frozen=True)
class SmoothMapping:
    """Divide the output channels of ``smooth`` by ``s`` and multiply the matching input channels of
    every ``balance`` layer by ``s`` — the network computes the same function, with activation
    outliers moved into weights.

    ``kv_grouped``: ``smooth`` produces KV-head channels that feed ``num_heads / num_kv_heads``
    query heads each (``wv`` -> ``wo`` under GQA), so one scale serves each group.
    ``value_cache``: the KV cache whose stored values ``smooth`` produces (their statistics
    change with the fold). ``transform``: a run-time transform cell between ``smooth`` and the
    balance layers (an orthogonal ``T`` with ``apply_numpy``, e.g. the rotation's online Hadamard
    before ``w2``): the balance layers read ``(smooth output) T``, and the scale is applied on the
    channels before ``T`` (balance weights become ``W Tᵀ diag(s) T``).
    """

    smooth: str
    balance: Tuple[str, ...]
    kv_grouped: bool = False
    value_cache: Optional[str] = None
    transform: Optional[str] = None


LLAMA_SMOOTH_MAPPINGS: Tuple[SmoothMapping, ...] = (
    SmoothMapping("attention_norm", ("attention.wq", "attention.wk", "attention.wv")),
    SmoothMapping("ffn_norm", ("feed_forward.w1", "feed_forward.w3")),
    SmoothMapping("attention.wv", ("attention.wo",), kv_grouped=True, value_cache="attention.kv_cache"),
    SmoothMapping("feed_forward.w3", ("feed_forward.w2",)),
)


class LlamaStructure:
    """Layer-wise access to :class:`~golden_ptq.networks.llama.LlamaForCausalLM`."""

    smooth_mappings: Sequence[SmoothMapping] = LLAMA_SMOOTH_MAPPINGS
    #: Linears whose output nothing in the layer reads but its residual add: a calibration pass that
    #: only feeds observers and recorders skips their product (w2: a quarter of the layer's products)
    unread_output_linears: Tuple[str, ...] = ("feed_forward.w2",)

    def decoder_layers(self, network) -> List[Tuple[str, nn.Cell]]:
        return [(f"model.layers.{i}", layer) for i, layer in enumerate(network.model.layers)]

    def layer_inputs(self, network, batch_ids: np.ndarray):
        """Embedded tokens and per-call layer inputs for a ``[B, T]`` batch without padding."""
        mask = np.ones_like(batch_ids)
        return network.embed(batch_ids), network.layer_inputs(mask, batch_ids.shape[1])

    def run_layer(self, layer: nn.Cell, hidden: Tensor, inputs) -> Tensor:
        return layer(hidden, inputs)

    def head_input(self, network, hidden: Tensor) -> Tensor:
        """What ``lm_head`` sees: the final norm of the last layer's output (as ``network.head`` norms it)."""
        return rms_norm_eager(network.model.norm_out, hidden)

    def num_heads(self, network) -> Tuple[int, int, int]:
        """Query heads, stored KV heads and head dim of this rank (the whole model at TP size 1)."""
        layout = network.tp_layout
        return layout.local_heads, layout.local_kv_heads, network.config.head_dim
