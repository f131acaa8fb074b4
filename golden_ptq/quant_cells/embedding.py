"""``QuantEmbedding``: weight-only int8 token embedding with one scale per vocabulary row."""
from __future__ import annotations

from typing import Dict

import mindspore as ms
import numpy as np
from mindspore import Tensor, ops

from golden_ptq.networks.layers import Embedding
from golden_ptq.quant_cells.base import QuantCell
from golden_ptq.quant_math import quantize_weight


class QuantEmbedding(QuantCell):
    """Rows are int8 ``embedding_weight`` [V, D] times ``embedding_scale`` [V].

    Per-row scales are per-output-channel scales of a tied ``lm_head``, so a tied head can
    share the very same int8 table (see ``QuantLinear`` sharing in the PTQ algorithm).
    """

    def __init__(self, embedding: Embedding, spec):
        super().__init__(spec)
        self.embedding_weight = embedding.embedding_weight

    def construct(self, input_ids: Tensor) -> Tensor:
        rows = ops.gather(self.embedding_weight, input_ids, 0)
        if not self.quantized:
            return rows
        scale = ops.gather(self.embedding_scale, input_ids, 0)
        return ops.mul(rows.astype(ms.float32), ops.expand_dims(scale, -1))

    def quantize(self) -> None:
        q, scale, _ = quantize_weight(self.embedding_weight.asnumpy())
        self._set_param("embedding_weight", q)
        self._set_param("embedding_scale", scale)
        self.quantized = True

    def deploy_placeholders(self) -> None:
        vocab, dim = self.embedding_weight.shape
        self._declare_param("embedding_weight", (vocab, dim), np.int8)
        self._declare_param("embedding_scale", (vocab,), np.float32, 1.0)
        self.quantized = True

    def param_quant_types(self) -> Dict[str, str]:
        return {"embedding_weight": "W8A16", "embedding_scale": "W8A16"}
