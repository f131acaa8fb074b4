"""``QuantKVCache``: int8 key/value history (C8), in one of two layouts (``KV_SCHEMES``).

``static`` (msModelSlim's C8 layout): keys and values ``[B, Hkv, S, D]`` int8 with static symmetric
per-channel (KV head x head dim) scales ``key_scale`` / ``value_scale`` ``[Hkv*D]`` from the
calibration abs-max.

``token_values``: keys as above but asymmetric (``key_scale`` and integer ``key_zero_point``
``[Hkv*D]`` from the calibration min/max); values get one scale per token and head, set as they are
written, so a token with large values no longer coarsens every other token's codes (measured on
SmolLM2: the KL to FP32 of C8 drops from 1.0e-3 to about 4e-4, most of what is left being the keys).
A value row is stored as ``D + 1`` int8: ``D`` symmetric codes and an exponent ``e`` giving the
row's scale ``value_token_base[head] * 2**(e/16) / 127`` (the smallest step of 2**(1/16) that covers
the row's abs-max). ``value_token_base`` ``[Hkv]`` is the head's calibration abs-max (times
``2**(1/32)``); it only places the exponent's range (``2**-8 .. 2**7.9`` times it), so values beyond
calibration are not clipped until about 245x the calibrated abs-max.
"""
from __future__ import annotations

from typing import Dict, Tuple

import mindspore as ms
import numpy as np
from mindspore import Tensor

from golden_ptq.config.ptq_config import KVCACHE_SCHEMES as KV_SCHEMES
from golden_ptq.kernels import native_ops
from golden_ptq.networks.layers import KVCache
import golden_ptq.quant_cells.kv_codecs as codecs
from golden_ptq.quant_cells.base import QuantCell
from golden_ptq.quant_math import MinMaxObserver, asymmetric_params, symmetric_scale


_TOKEN_STEPS = Tensor(codecs.TOKEN_STEPS)   # the native operators' exponent table operand


class QuantKVCache(KVCache, QuantCell):
    """Keys/values stored as int8 ``[B, Hkv, S, D]`` (values ``D + 1`` wide in ``token_values``);
    the scheme (``spec.kvcache_scheme``, one of ``KV_SCHEMES``) is described in the module docstring."""

    def __init__(self, cache: KVCache, spec):
        QuantCell.__init__(self, spec)
        self.num_kv_heads, self.head_dim = cache.num_kv_heads, cache.head_dim
        self.scheme = spec.kvcache_scheme
        if self.scheme not in KV_SCHEMES:
            raise ValueError(f"QuantKVCache: kvcache_scheme {self.scheme!r} not allowed; allowed: {list(KV_SCHEMES)}")
        self._history = {}
        self._static = []
        self._static_pool = {}
        self.bound_attention = None
        self.bound_codecs = None   # native (encode key, encode value, decode key, decode value), for graphs
        self.observers = {"key": MinMaxObserver(), "value": MinMaxObserver()}

    def _codec_params(self, kind: str):
        """This scheme's parameters for ``kind``, shaped to broadcast over ``[B, Hkv, S, D]``."""
        heads, dim = self.num_kv_heads, self.head_dim
        if self.scheme == "static":
            scale = self.key_scale if kind == "key" else self.value_scale
            return (scale.reshape(1, heads, 1, dim),)
        if kind == "key":
            return self.key_scale.reshape(1, heads, 1, dim), self.key_zero_point.reshape(1, heads, 1, dim)
        return (self.value_token_base.reshape(1, heads, 1, 1),)

    def _codec(self, kind: str) -> str:
        if self.scheme == "static":
            return "symmetric"
        return "asymmetric" if kind == "key" else "tokens"

    def _native_operands(self, kind: str):
        """The codec's parameters as the native operators take them (flat), with the exponent table."""
        if self.scheme == "static":
            return (self.key_scale if kind == "key" else self.value_scale,)
        if kind == "key":
            return self.key_scale, self.key_zero_point
        return self.value_token_base, _TOKEN_STEPS

    def encode(self, x: Tensor, kind: str) -> Tensor:
        if not self.quantized:
            if self.observing:
                # channels = (head, dim): move heads next to dim, flatten the rest
                self.observers[kind].update(x.asnumpy().transpose(0, 2, 1, 3).reshape(-1, x.shape[1] * x.shape[3]))
            return x
        native = native_ops()   # one pass over the tensor (the numpy twin takes several)
        if native is not None:
            return native["kv_encode_" + self._codec(kind)](x, *self._native_operands(kind))
        encode = getattr(codecs, "np_encode_" + self._codec(kind))
        return Tensor(encode(x.asnumpy(), *(p.asnumpy() for p in self._codec_params(kind))))

    def decode(self, stored: Tensor, kind: str) -> Tensor:
        if not self.quantized:
            return stored
        native = native_ops()
        if native is not None:
            return native["kv_decode_" + self._codec(kind)](stored, *self._native_operands(kind))
        decode = getattr(codecs, "np_decode_" + self._codec(kind))
        return Tensor(decode(stored.asnumpy(), *(p.asnumpy() for p in self._codec_params(kind))))

    def encode_in_graph(self, x: Tensor, kind: str) -> Tensor:
        if not self.quantized:
            return x
        if self.bound_codecs is not None:
            return self.bound_codecs[0 if kind == "key" else 1](x, *self._native_operands(kind))
        if self.scheme == "static":
            return codecs.encode_symmetric(x, *self._codec_params(kind))
        if kind == "key":
            return codecs.encode_asymmetric(x, *self._codec_params(kind))
        return codecs.encode_tokens(x, *self._codec_params(kind))

    def decode_in_graph(self, stored: Tensor, kind: str) -> Tensor:
        if not self.quantized:
            return stored
        if self.bound_codecs is not None:
            return self.bound_codecs[2 if kind == "key" else 3](stored, *self._native_operands(kind))
        if self.scheme == "static":
            return codecs.decode_symmetric(stored, *self._codec_params(kind))
        if kind == "key":
            return codecs.decode_asymmetric(stored, *self._codec_params(kind))
        return codecs.decode_tokens(stored, *self._codec_params(kind))

    def write_static_codes(self, key: Tensor, value: Tensor, slots: Tensor):
        """The MindSpore-op route of a compiled decode step (native kernels off or unavailable; else
        :meth:`decode_attention`). The whole buffers as float codes and the factors attention applies
        instead of decoding them: dequantizing ``[B, Hkv, capacity, D]`` every decode step cost more than the attention itself
        (MindSpore's broadcasting multiply). Keys: the query is scaled by ``key_scale``; an asymmetric
        key's zero point adds the same ``-q.(scale*zero_point)`` to every score of a query, which
        softmax ignores, so it is left out. Values: the context is scaled by ``value_scale``, or the
        probabilities by each position's token scale. Same math as decoding; the float rounding
        differs (logits agree to ~1e-6 relative, not bit for bit)."""
        if not self.quantized:
            return KVCache.write_static_codes(self, key, value, slots)
        k_all, v_all = self._static[0].write(self.encode_in_graph(key, "key"), self.encode_in_graph(value, "value"),
                                             slots)
        # cast before any slicing: see kv_codecs.decode_tokens
        k_codes, v_codes = k_all.astype(ms.float32), v_all.astype(ms.float32)
        query_scale = self._codec_params("key")[0]
        if self.scheme == "static":
            return k_codes, v_codes, (query_scale, None, self._codec_params("value")[0])
        scales = codecs.token_scales(v_codes, *self._codec_params("value"))      # [B, Hkv, S, 1]
        probs_scale = scales.reshape(scales.shape[0], scales.shape[1], 1, scales.shape[2])
        return k_codes, v_codes, (query_scale, probs_scale, None)

    def bind_kernel(self) -> None:
        """Fix the routes of compiled graphs (they cannot run the Python that picks them): the native
        operators for encoding, decoding and decode-step attention straight from the int8 buffers
        where available, else None (MindSpore ops; attention over :meth:`write_static_codes`)."""
        self.unbind_kernel()
        if not self.quantized or self.observing:
            return
        native = native_ops()
        if native is not None:
            self.bound_attention = native["kv_attention_static_write" if self.scheme == "static"
                                          else "kv_attention_tokens_write"]
            key, value = self._codec("key"), self._codec("value")
            self.bound_codecs = (native["kv_encode_" + key], native["kv_encode_" + value],
                                 native["kv_decode_" + key], native["kv_decode_" + value])

    def unbind_kernel(self) -> None:
        self.bound_attention = self.bound_codecs = None

    def decode_attention(self, q: Tensor, key: Tensor, value: Tensor, slots: Tensor, mask: Tensor,
                         kv_map: Tensor) -> Tensor:
        """:meth:`KVCache.decode_attention` over the int8 buffers: this step's keys/values are
        encoded before the operator stores them; it folds the scales in
        (``golden_ptq/kernels/kv_attention.cc``)."""
        k_new, v_new = self.encode_in_graph(key, "key"), self.encode_in_graph(value, "value")
        buffers = self._static[0]
        scales = ((self.key_scale, self.value_scale) if self.scheme == "static"
                  else (self.key_scale, self.value_token_base, _TOKEN_STEPS))
        return self.bound_attention(q, buffers.key, buffers.value, mask, kv_map, *scales, k_new, v_new, slots)

    def stored_dtype(self) -> np.dtype:
        return np.dtype(np.int8 if self.quantized else np.float32)

    def stored_widths(self) -> Tuple[int, int]:
        if self.quantized and self.scheme == "token_values":
            return self.head_dim, self.head_dim + 1
        return self.head_dim, self.head_dim

    def quantize(self) -> None:
        keys, values = self.observers["key"], self.observers["value"]
        if self.scheme == "static":
            self._set_param("key_scale", symmetric_scale(keys.absmax()))
            self._set_param("value_scale", symmetric_scale(values.absmax()))
        else:
            scale, zero_point = asymmetric_params(keys.minimum, keys.maximum)
            self._set_param("key_scale", scale)
            self._set_param("key_zero_point", zero_point)
            head_absmax = values.absmax().reshape(self.num_kv_heads, self.head_dim).max(axis=1)
            # half an exponent step above the abs-max: rows as large as calibration's largest are then
            # not on an exponent boundary, where rounding noise would flip a whole row's scale (in the
            # first layer values depend on the token alone, so such rows recur exactly)
            half_step = 2.0 ** (0.5 / codecs.EXPONENT_STEPS)
            self._set_param("value_token_base", (symmetric_scale(head_absmax) * (127.0 * half_step)).astype(np.float32))
        self.quantized = True
        self.observing = False

    def deploy_placeholders(self) -> None:
        width = self.num_kv_heads * self.head_dim
        for name, shape in self._param_shapes(width).items():
            self._set_param(name, np.ones(shape, np.float32))
        self.quantized = True

    def _param_shapes(self, width: int) -> Dict[str, Tuple[int, ...]]:
        if self.scheme == "static":
            return {"key_scale": (width,), "value_scale": (width,)}
        return {"key_scale": (width,), "key_zero_point": (width,), "value_token_base": (self.num_kv_heads,)}

    def param_quant_types(self) -> Dict[str, str]:
        return {name: "C8" for name in self._param_shapes(0)}
