"""``QuantKVCache``: int8 key/value history with static per-channel scales (C8)."""
from __future__ import annotations

from typing import Dict

import mindspore as ms
import numpy as np
from mindspore import Tensor, ops

from golden_ptq.networks.layers import KVCache, compiled_for_large_inputs
from golden_ptq.quant_cells.base import QuantCell
from golden_ptq.quant_math import MinMaxObserver, symmetric_scale


def _encode(x: Tensor, scale: Tensor) -> Tensor:
    return ops.clip_by_value(ops.round(ops.div(x, scale)), -127.0, 127.0).astype(ms.int8)


def _decode(q: Tensor, scale: Tensor) -> Tensor:
    return ops.mul(q.astype(ms.float32), scale)


# Keyed on the batch x heads rows of the 4-D cache tensors; decode steps stay eager.
_encode_auto = compiled_for_large_inputs(_encode)
_decode_auto = compiled_for_large_inputs(_decode)


class QuantKVCache(KVCache, QuantCell):
    """Keys/values stored as int8 ``[B, Hkv, S, D]``; ``key_scale``/``value_scale`` are ``[Hkv*D]``.

    Scales are per channel (KV head x head dim), symmetric, from the calibration max of the keys
    (after rotary embedding) and values.
    """

    def __init__(self, cache: KVCache, spec):
        QuantCell.__init__(self, spec)
        self.num_kv_heads, self.head_dim = cache.num_kv_heads, cache.head_dim
        self._history = {}
        self._static = []
        self._static_pool = {}
        self.observers = {"key": MinMaxObserver(), "value": MinMaxObserver()}

    def _scale4d(self, kind: str) -> Tensor:
        scale = self.key_scale if kind == "key" else self.value_scale
        return scale.reshape(1, self.num_kv_heads, 1, self.head_dim)

    def encode(self, x: Tensor, kind: str) -> Tensor:
        if not self.quantized:
            if self.observing:
                # channels = (head, dim): move heads next to dim, flatten the rest
                self.observers[kind].update(x.asnumpy().transpose(0, 2, 1, 3).reshape(-1, x.shape[1] * x.shape[3]))
            return x
        return _encode_auto(x, self._scale4d(kind))

    def stored_dtype(self) -> np.dtype:
        return np.dtype(np.int8 if self.quantized else np.float32)

    def decode(self, stored: Tensor, kind: str) -> Tensor:
        if not self.quantized:
            return stored
        return _decode_auto(stored, self._scale4d(kind))

    def quantize(self) -> None:
        self._set_param("key_scale", symmetric_scale(self.observers["key"].absmax()))
        self._set_param("value_scale", symmetric_scale(self.observers["value"].absmax()))
        self.quantized = True
        self.observing = False

    def deploy_placeholders(self) -> None:
        width = self.num_kv_heads * self.head_dim
        self._set_param("key_scale", np.ones(width, np.float32))
        self._set_param("value_scale", np.ones(width, np.float32))
        self.quantized = True

    def param_quant_types(self) -> Dict[str, str]:
        return {"key_scale": "C8", "value_scale": "C8"}
