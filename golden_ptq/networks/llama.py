"""A Llama-family decoder (Llama, SmolLM, Qwen2 shapes) built from MindSpore ops that run on CPU.

Parameter names follow MindFormers' ``LlamaForCausalLM``::

    model.tok_embeddings.embedding_weight
    model.layers.{i}.attention_norm.weight / ffn_norm.weight
    model.layers.{i}.attention.{wq,wk,wv,wo}.weight   (+ .bias on wq/wk/wv with qkv_bias)
    model.layers.{i}.feed_forward.{w1,w2,w3}.weight    (gate, down, up)
    model.norm_out.weight
    lm_head.weight                                      (shares the embedding table when tied)
"""
from __future__ import annotations

import logging
from typing import List, Optional, Tuple

import numpy as np
import mindspore as ms
from mindspore import Tensor, nn, ops

from golden_ptq.config.model_config import LlamaConfig
from golden_ptq.kernels.float_prefill import attention_supported, float_prefill_ops, to_heads_op
from golden_ptq.networks.compiled import CompiledDecodeStep, CompiledForward, GraphCompileError
from golden_ptq.parallel.context import TPContext, resolve
from golden_ptq.parallel.sharding import TPLayout, full_shape, shard_array
from golden_ptq.runtime import configure_cpu_runtime
from golden_ptq.networks.layers import (CacheMode, Embedding, KVCache, Linear, RMSNorm, add_eager, apply_rope,
                                        cache_slots, compiled_for_large_inputs, compiling_graph, prefill_kernel,
                                        rms_norm_eager, rope_tables, rotate_half_index, swiglu, swiglu_eager)
from golden_ptq.networks.token_ids import check_token_ids

logger = logging.getLogger(__name__)
_MASK_VALUE = -1e9
STATIC_CACHE_BLOCK = 256   # static KV caches grow in steps of this many positions (one graph per size)
FORWARD_LENGTH_STEP = 64   # compiled forwards pad prompts to a multiple of this length (one graph per size)
COMPILE_MIN_NEW_TOKENS = 64  # default of LlamaForCausalLM.compile_min_new_tokens


def _attention_core(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, num_kv_heads: int, head_dim: int,
                    fold=None) -> Tensor:
    """Softmax attention for query ``[B, T, H*D]`` (rope and 1/sqrt(D) applied) over ``k``/``v`` ``[B, Hkv, S, D]``.

    Query head ``h`` reads KV head ``h // group``: the group is folded into the query length, so no
    KV copies are made. ``mask`` ``[B, Hkv, group*T, S]`` is additive and already full-shape.

    ``fold``: None, or the factors ``(query, probabilities, context)`` (each None or a Tensor
    broadcasting over the query ``[B, Hkv, group*T, D]``, the probabilities ``[.., S]`` and the
    context) of an int8 cache whose ``k``/``v`` are its codes as floats
    (:meth:`~golden_ptq.networks.layers.KVCache.write_static_codes`); ``v`` may be wider than
    ``head_dim`` (the extra columns of the context are dropped).
    """
    batch, length, width = q.shape
    group = width // (num_kv_heads * head_dim)
    q = q.reshape(batch, length, num_kv_heads, group, head_dim).transpose(0, 2, 3, 1, 4)
    q = q.reshape(batch, num_kv_heads, group * length, head_dim)
    if fold is not None and fold[0] is not None:
        q = ops.mul(q, fold[0])
    scores = ops.add(ops.BatchMatMul(transpose_b=True)(q, k), mask)
    probs = ops.softmax(scores, -1)
    if fold is not None and fold[1] is not None:
        probs = ops.mul(probs, fold[1])
    context = ops.BatchMatMul()(probs, v)
    if v.shape[-1] != head_dim:
        context = context[..., :head_dim]
    if fold is not None and fold[2] is not None:
        context = ops.mul(context, fold[2])
    context = context.reshape(batch, num_kv_heads, group, length, head_dim).transpose(0, 3, 1, 2, 4)
    return context.reshape(batch, length, width)


# Decode steps grow the key length every call (a recompile each step if compiled) and are small:
# they run eagerly; full forwards and prefills run compiled.
_attention_core_auto = compiled_for_large_inputs(_attention_core)


def _to_heads(x: Tensor, heads: int, head_dim: int) -> Tensor:
    batch, length, _ = x.shape
    return x.reshape(batch, length, heads, head_dim).transpose(0, 2, 1, 3)


class Attention(nn.Cell):
    """Grouped-query attention with rotary embedding and a KV cache.

    Under tensor parallelism the rank computes its ``layout.local_heads`` query heads; KV heads are
    split with them, or (``num_kv_heads % tp != 0``) all kept and the used ones gathered per query head.
    ``num_heads`` / ``num_kv_heads`` are the rank's counts (the stored KV heads).
    """

    def __init__(self, config: LlamaConfig, layout: Optional[TPLayout] = None):
        super().__init__()
        layout = layout or TPLayout.for_config(config, TPContext())
        self.num_heads = layout.local_heads
        self.num_kv_heads = layout.local_kv_heads
        self.head_dim = config.head_dim
        hidden, kv_dim = config.hidden_size, config.num_kv_heads * config.head_dim
        tp, kv_mode = layout.ctx, ("column" if layout.kv_split else None)
        local_width = self.num_heads * self.head_dim  # heads are dealt unevenly when tp does not divide them
        self.wq = Linear(hidden, config.num_heads * self.head_dim, has_bias=config.qkv_bias, parallel="column", tp=tp,
                         local_features=local_width)
        self.wk = Linear(hidden, kv_dim, has_bias=config.qkv_bias, parallel=kv_mode, tp=tp)
        self.wv = Linear(hidden, kv_dim, has_bias=config.qkv_bias, parallel=kv_mode, tp=tp)
        self.wo = Linear(config.num_heads * self.head_dim, hidden, parallel="row", tp=tp, local_features=local_width)
        self.kv_cache = KVCache(self.num_kv_heads, self.head_dim)
        kv_index = layout.kv_index()
        self._kv_index = None if kv_index is None else Tensor(kv_index)
        self._core_kv_heads = self.num_kv_heads if kv_index is None else self.num_heads
        # the KV head of each query head, for a native decode-attention operator
        self._kv_map = Tensor(np.arange(self.num_heads, dtype=np.int32) // max(1, self.num_heads // self.num_kv_heads))
        self._kv_heads = Tensor(np.arange(self.num_kv_heads, dtype=np.int32))   # the native head-layout copy's order
        self.bound_rope = None   # set by bind_kernel() for compiled graphs

    def construct(self, x: Tensor, inputs: "LayerInputs") -> Tensor:
        return self.forward_eager(x, inputs)

    def forward_eager(self, x: Tensor, inputs: "LayerInputs") -> Tensor:
        """An eager call (full forward, prefill or eager decode step). Outside decode steps the float
        prefill kernels, where they run, apply rope and compute causal attention from
        ``inputs.key_mask`` (no full-shape mask, no head transposes of the query or context)."""
        kernels = None if inputs.mode == CacheMode.DECODE else float_prefill_ops()
        if kernels is None:
            q, k, v = self._project(x, inputs.cos_q, inputs.sin_q, inputs.cos_k, inputs.sin_k, inputs.index_q,
                                    inputs.index_k)
            k, v = self.kv_cache(k, v, inputs.mode)
            return self._attend(q, k, v, inputs.mask)
        rope, heads = kernels["rope"], to_heads_op(self.head_dim)
        q = rope(self.wq(x), inputs.cos_q, inputs.sin_q, inputs.index_q)
        k = heads(rope(self.wk(x), inputs.cos_k, inputs.sin_k, inputs.index_k), self._kv_heads)
        v = heads(self.wv(x), self._kv_heads)
        k, v = self.kv_cache(k, v, inputs.mode)
        if not attention_supported(self.head_dim):
            return self._attend(q, k, v, inputs.mask)
        if self._kv_index is not None:  # replicated KV heads: the one each local query head reads
            k, v = ops.gather(k, self._kv_index, 1), ops.gather(v, self._kv_index, 1)
        return self.wo(kernels["causal_attention"](q, k, v, inputs.key_mask))

    def decode_static(self, x: Tensor, cos_q: Tensor, sin_q: Tensor, cos_k: Tensor, sin_k: Tensor, index_q: Tensor,
                      index_k: Tensor, mask: Tensor, slots: Tensor) -> Tensor:
        """One compiled decode step: keys/values go into the static cache at ``slots``; attention
        reads the whole buffers (``mask`` hides the unfilled positions), or the cache's bound native
        operator (float or int8 buffers, where the native kernels run) reads the filled positions."""
        q, k, v = self._project(x, cos_q, sin_q, cos_k, sin_k, index_q, index_k)
        if self.kv_cache.bound_attention is not None:
            kv_map = self._kv_map if self._kv_index is None else self._kv_index
            return self.wo(self.kv_cache.decode_attention(q, k, v, slots, mask, kv_map))
        k, v, fold = self.kv_cache.write_static_codes(k, v, slots)
        return self._attend(q, k, v, mask, fold)

    def forward_static(self, x: Tensor, cos_q: Tensor, sin_q: Tensor, cos_k: Tensor, sin_k: Tensor, index_q: Tensor,
                       index_k: Tensor, mask: Tensor, slots: Tensor) -> Tensor:
        """A compiled prefill: attention over this call's keys/values (through the cache's
        encode/decode), which are also written into the static cache at ``slots``."""
        q, k, v = self._project(x, cos_q, sin_q, cos_k, sin_k, index_q, index_k)
        k, v = self.kv_cache.prefill_static(k, v, slots)
        return self._attend(q, k, v, mask)

    def bind_kernel(self) -> None:
        self.bound_rope = prefill_kernel("rope")

    def _rope(self, x, cos, sin, index):
        if compiling_graph() and self.bound_rope is not None:
            return self.bound_rope(x, cos, sin, index)
        return apply_rope(x, cos, sin, index)

    def _project(self, x, cos_q, sin_q, cos_k, sin_k, index_q, index_k):
        """Projections and rope for compiled graphs (the bound native rope if any) and the eager
        route without the float prefill kernels."""
        q = self._rope(self.wq(x), cos_q, sin_q, index_q)
        k = _to_heads(self._rope(self.wk(x), cos_k, sin_k, index_k), self.num_kv_heads, self.head_dim)
        v = _to_heads(self.wv(x), self.num_kv_heads, self.head_dim)
        return q, k, v

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor, fold=None) -> Tensor:
        if self._kv_index is not None:  # replicated KV heads: the one each local query head reads
            k, v = ops.gather(k, self._kv_index, 1), ops.gather(v, self._kv_index, 1)
            if fold is not None:
                fold = tuple(None if f is None else ops.gather(f, self._kv_index, 1) for f in fold)
        return self.wo(_attention_core_auto(q, k, v, mask, self._core_kv_heads, self.head_dim, fold))


class FeedForward(nn.Cell):
    """SwiGLU MLP: ``w2(silu(w1 x) * w3 x)``.

    ``down_transform`` (None, or a Cell such as :class:`~golden_ptq.networks.hadamard.OnlineHadamard`
    set by the rotation method) transforms ``w2``'s input at run time: ``w2(T(silu(w1 x) * w3 x))``.
    """

    def __init__(self, config: LlamaConfig, tp: Optional[TPContext] = None):
        super().__init__()
        tp = tp or TPContext()
        self.w1 = Linear(config.hidden_size, config.intermediate_size, parallel="column", tp=tp)
        self.w3 = Linear(config.hidden_size, config.intermediate_size, parallel="column", tp=tp)
        self.w2 = Linear(config.intermediate_size, config.hidden_size, parallel="row", tp=tp)
        self.down_transform = None
        self.bound_swiglu = None   # set by bind_kernel() for compiled graphs

    def bind_kernel(self) -> None:
        self.bound_swiglu = prefill_kernel("swiglu")

    def construct(self, x: Tensor) -> Tensor:
        """Compiled graphs (decode steps, compiled prefill) run the bound native SwiGLU if one is bound;
        eager decode steps MindSpore's SiLU and Mul."""
        gate, up = self.w1(x), self.w3(x)
        if compiling_graph() and self.bound_swiglu is not None:
            return self._down(self.bound_swiglu(gate, up))
        return self._down(swiglu(gate, up))

    def forward_eager(self, x: Tensor) -> Tensor:
        """:meth:`construct` for a full forward or prefill: the gate goes through the native SwiGLU
        where it runs."""
        return self._down(swiglu_eager(self.w1(x), self.w3(x)))

    def _down(self, hidden: Tensor) -> Tensor:
        if self.down_transform is not None:
            hidden = self.down_transform(hidden)
        return self.w2(hidden)


class LlamaDecodeLayer(nn.Cell):
    """Pre-norm transformer block."""

    def __init__(self, config: LlamaConfig, layout: Optional[TPLayout] = None):
        super().__init__()
        self.attention_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.attention = Attention(config, layout)
        self.ffn_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.feed_forward = FeedForward(config, layout.ctx if layout else None)

    def construct(self, x: Tensor, inputs: "LayerInputs") -> Tensor:
        return self.forward_eager(x, inputs)

    def forward_eager(self, x: Tensor, inputs: "LayerInputs") -> Tensor:
        """An eager call; outside decode steps the norms use the float prefill kernel where it runs
        (compiled graphs call :meth:`decode_static` / :meth:`forward_static`)."""
        if inputs.mode == CacheMode.DECODE:
            h = ops.add(x, self.attention(self.attention_norm(x), inputs))
            return ops.add(h, self.feed_forward(self.ffn_norm(h)))
        h = add_eager(x, self.attention(rms_norm_eager(self.attention_norm, x), inputs))
        return add_eager(h, self.feed_forward.forward_eager(rms_norm_eager(self.ffn_norm, h)))

    def decode_static(self, x: Tensor, cos_q: Tensor, sin_q: Tensor, cos_k: Tensor, sin_k: Tensor, index_q: Tensor,
                      index_k: Tensor, mask: Tensor, slots: Tensor) -> Tensor:
        """:meth:`construct` for a compiled decode step (see :meth:`Attention.decode_static`)."""
        h = ops.add(x, self.attention.decode_static(self.attention_norm(x), cos_q, sin_q, cos_k, sin_k, index_q,
                                                    index_k, mask, slots))
        return ops.add(h, self.feed_forward(self.ffn_norm(h)))

    def forward_static(self, x: Tensor, cos_q: Tensor, sin_q: Tensor, cos_k: Tensor, sin_k: Tensor, index_q: Tensor,
                       index_k: Tensor, mask: Tensor, slots: Tensor) -> Tensor:
        """:meth:`construct` for a compiled prefill (see :meth:`Attention.forward_static`)."""
        h = ops.add(x, self.attention.forward_static(self.attention_norm(x), cos_q, sin_q, cos_k, sin_k, index_q,
                                                     index_k, mask, slots))
        return ops.add(h, self.feed_forward(self.ffn_norm(h)))


class LlamaModel(nn.Cell):
    """Embedding, decoder layers and final norm."""

    def __init__(self, config: LlamaConfig, layout: Optional[TPLayout] = None):
        super().__init__()
        self.tok_embeddings = Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.CellList([LlamaDecodeLayer(config, layout) for _ in range(config.num_layers)])
        self.norm_out = RMSNorm(config.hidden_size, config.rms_norm_eps)


class LayerInputs:
    """Per-call tensors every decoder layer needs, built once per forward in numpy.

    Rotary tables are pre-tiled to the projection widths (and the query's carry 1/sqrt(head_dim)),
    and the additive mask is full-shape, because broadcasting ops are slow on CPU. ``mask`` may be
    given as a function that builds it, called on first use (the native attention kernel reads
    ``key_mask``, the ``[B, S]`` attention mask as int32, instead).
    """

    def __init__(self, cos_q, sin_q, cos_k, sin_k, index_q, index_k, mask, mode: int, key_mask=None):
        self.cos_q, self.sin_q, self.cos_k, self.sin_k = cos_q, sin_q, cos_k, sin_k
        self.index_q, self.index_k, self.mode, self.key_mask = index_q, index_k, mode, key_mask
        self._mask = mask

    @property
    def mask(self) -> Tensor:
        if callable(self._mask):
            self._mask = self._mask()
        return self._mask


class LlamaForCausalLM(nn.Cell):
    """Causal LM with full-sequence forward, prefill/decode through the KV caches, and ``generate``.

    ``network(input_ids, attention_mask)`` returns logits ``[B, T, V]``. Left padding is handled by
    ``attention_mask`` (1 = token, 0 = pad): pads are never attended to and positions count from
    each row's first real token.

    Tensor parallel: ``tp`` (default: the communication group, size 1 without one) splits heads and
    MLP columns over the ranks (see :mod:`golden_ptq.parallel.sharding`); embedding, norms and
    ``lm_head`` are replicated, every rank returns the full logits.
    """

    def __init__(self, config: LlamaConfig, seed: Optional[int] = None, tp: Optional[TPContext] = None):
        super().__init__()
        configure_cpu_runtime()
        config.validate()
        self.config = config
        self.tp = resolve(tp)
        self.tp_layout = TPLayout.for_config(config, self.tp)
        self.model = LlamaModel(config, self.tp_layout)
        self.lm_head = Linear(config.hidden_size, config.vocab_size)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.tok_embeddings.embedding_weight
        cos, sin = rope_tables(config.head_dim, config.max_position_embeddings, config.rope_theta)
        self._cos_table, self._sin_table = cos, sin
        layout = self.tp_layout
        index_q, self._sign_q = rotate_half_index(layout.local_heads, config.head_dim)
        index_k, self._sign_k = rotate_half_index(layout.local_kv_heads, config.head_dim)
        self.index_q, self.index_k = Tensor(index_q), Tensor(index_k)
        self._decode_mask: Optional[np.ndarray] = None
        # Compiled inference (set_compiled): decode steps by default; full forwards and prefills on request.
        self.compiled_decode = True
        self.compiled_forward = False
        # A generation this short (new_tokens given to prefill) decodes eagerly unless a graph for its
        # shape exists: compiling SmolLM2's step takes ~10 s, and it saves tens of ms per token.
        self.compile_min_new_tokens = COMPILE_MIN_NEW_TOKENS
        self._decode_shapes: set = set()   # (batch, capacity) with a compiled decode graph
        self._graphs: list = []        # [(structure signature, CompiledDecodeStep, CompiledForward)], not child cells
        self._compiled_session = False
        if seed is not None:
            self.init_random(seed)
        sync_parameter_names(self)

    # ----- parameters -------------------------------------------------------------------------
    @classmethod
    def from_arrays(cls, config: LlamaConfig, arrays) -> "LlamaForCausalLM":
        """A network whose parameters are copied from ``{name: numpy array}`` (e.g. a snapshot of
        another network's ``parameters_and_names()``), set to inference mode."""
        network = cls(config)
        for name, param in network.parameters_and_names():
            if name not in arrays:
                raise KeyError(f"from_arrays: no array for parameter '{name}'")
            param.set_data(Tensor(arrays[name]))
        network.set_train(False)
        return network

    def init_random(self, seed: int, std: float = 0.02) -> None:
        """Fill every parameter deterministically (norm weights near 1): for tests and toy runs.

        Under tensor parallelism each rank draws the full (TP=1) tensors and keeps its slice, so a
        sharded random network is the TP=1 one.
        """
        rng = np.random.RandomState(seed)
        for name, param in sorted(self.parameters_and_names(), key=lambda item: item[0]):
            shape = full_shape(name, tuple(param.shape), self.tp_layout)
            if name.endswith("norm.weight") or name.endswith("norm_out.weight"):
                value = 1.0 + 0.1 * rng.randn(*shape)
            else:
                value = std * rng.randn(*shape)
            value = shard_array(name, value.astype(np.float32), self.tp_layout)
            param.set_data(Tensor(np.ascontiguousarray(value)))

    # ----- inputs -----------------------------------------------------------------------------
    def layer_inputs(self, attention_mask: np.ndarray, new_tokens: int, mode: int = CacheMode.NONE) -> LayerInputs:
        """Rotary tables and additive mask for the last ``new_tokens`` columns of ``attention_mask``.

        ``attention_mask`` ``[B, S]`` covers the cached history plus the new tokens.
        """
        lazy = mode != CacheMode.DECODE and float_prefill_ops() is not None   # the kernel reads key_mask
        arrays = self._layer_arrays(attention_mask, new_tokens, with_mask=not lazy)
        tensors = [Tensor(a) for a in arrays[:4]]
        if lazy:
            mask = lambda: Tensor(self._layer_arrays(attention_mask, new_tokens)[4])   # noqa: E731
        else:
            mask = Tensor(arrays[4])
        key_mask = Tensor((np.asarray(attention_mask) > 0).astype(np.int32)) if lazy else None
        return LayerInputs(*tensors, self.index_q, self.index_k, mask, mode, key_mask)

    def _layer_arrays(self, attention_mask: np.ndarray, new_tokens: int, with_mask: bool = True):
        """``(cos_q, sin_q, cos_k, sin_k, mask)`` as contiguous float32 arrays (see :meth:`layer_inputs`);
        ``mask`` None unless ``with_mask``."""
        attention_mask = np.asarray(attention_mask, dtype=np.int64)
        batch, total = attention_mask.shape
        if total > self.config.max_position_embeddings:
            raise ValueError(f"sequence length {total} exceeds max_position_embeddings "
                             f"{self.config.max_position_embeddings}")
        cfg = self.config
        positions = np.clip(np.cumsum(attention_mask, axis=1) - 1, 0, None)[:, total - new_tokens:]
        cos, sin = self._cos_table[positions], self._sin_table[positions]  # [B, T, D]
        scale = np.float32(1.0 / np.sqrt(cfg.head_dim))
        heads, kv_heads = self.tp_layout.local_heads, self.tp_layout.local_kv_heads
        cos_q = np.tile(cos, (1, 1, heads)) * scale
        sin_q = np.tile(sin, (1, 1, heads)) * self._sign_q * scale
        cos_k = np.tile(cos, (1, 1, kv_heads))
        sin_k = np.tile(sin, (1, 1, kv_heads)) * self._sign_k
        tables = [np.ascontiguousarray(a, dtype=np.float32) for a in (cos_q, sin_q, cos_k, sin_k)]
        if not with_mask:
            return tables + [None]
        query_index = np.arange(total - new_tokens, total)[:, None]
        allowed = (np.arange(total)[None, :] <= query_index)[None] & (attention_mask[:, None, :] > 0)
        core_kv = kv_heads if self.tp_layout.kv_split else heads  # replicated KV: gathered per query head
        group = heads // core_kv
        mask = np.where(allowed, np.float32(0.0), np.float32(_MASK_VALUE))[:, None, None]  # [B,1,1,T,S]
        mask = np.broadcast_to(mask, (batch, core_kv, group, new_tokens, total))
        mask = mask.reshape(batch, core_kv, group * new_tokens, total)
        return tables + [np.ascontiguousarray(mask, dtype=np.float32)]

    def embed(self, input_ids) -> Tensor:
        return self.model.tok_embeddings(_as_int_tensor(check_token_ids(input_ids, self.config.vocab_size)))

    def head(self, hidden: Tensor) -> Tensor:
        """Logits of ``hidden`` outside compiled graphs (which hold their own head)."""
        return self.lm_head(rms_norm_eager(self.model.norm_out, hidden))

    def _run(self, input_ids, attention_mask: np.ndarray, mode: int) -> Tensor:
        ids = _as_int_tensor(check_token_ids(input_ids, self.config.vocab_size))
        inputs = self.layer_inputs(attention_mask, ids.shape[1], mode)
        hidden = self.embed(ids)
        for layer in self.model.layers:
            hidden = layer(hidden, inputs)
        return hidden

    # ----- forward ----------------------------------------------------------------------------
    def construct(self, input_ids, attention_mask=None) -> Tensor:
        # The graph parser reads this method whenever a compiled graph reaches the network cell (the
        # graphs hold it), and it cannot parse ``try``: the body lives in a plain method.
        return self.logits(input_ids, attention_mask)

    def logits(self, input_ids, attention_mask=None) -> Tensor:
        """Logits ``[B, T, V]`` of a full forward (compiled when ``set_compiled(forward=True)``)."""
        ids = _as_numpy(input_ids)
        mask = np.ones_like(ids) if attention_mask is None else _as_numpy(attention_mask)
        if self.compiled_forward and self._compilable():
            try:
                hidden, _ = self._forward_compiled(ids, mask)   # the prefill graph; its cache writes are dropped
                self.reset_cache()
                return self.head(hidden[:, hidden.shape[1] - ids.shape[1]:])
            except GraphCompileError as error:
                self._give_up_compiling(error)
        return self.head(self._run(ids, mask, CacheMode.NONE))

    def reset_cache(self) -> None:
        for cache in self._kv_caches():
            cache.reset()
        self._decode_mask = None
        self._compiled_session = False

    def set_compiled(self, decode: bool = True, forward: bool = False) -> None:
        """Run decode steps / full forwards and prefills as compiled graphs (GRAPH_MODE, one per input
        shape) or op by op in PyNative (False: for debugging, and where compiling would not pay).

        Decode (default on): one graph per batch size and cache capacity, reused by every token.
        Forward (default off): prompt lengths are left-padded up to a multiple of
        ``FORWARD_LENGTH_STEP`` so few shapes compile (the padding counts against
        ``max_position_embeddings`` while decoding), but each costs seconds to compile and keeps
        graph memory (SmolLM2 1 x 512: ~1.4 GB) -- it pays for repeated same-shape work such as
        evaluation or serving. Takes effect at the next call; the cache is reset and compiled graphs
        and their static cache buffers are released (also the way to make a graph see weights
        changed in place, see :meth:`_prepare_graphs`)."""
        self.compiled_decode, self.compiled_forward = bool(decode), bool(forward)
        self._graphs = []
        self._decode_shapes = set()
        for cache in self._kv_caches():
            cache.release_static()
        self.reset_cache()

    def prefill(self, input_ids, attention_mask=None, new_tokens: Optional[int] = None) -> Tensor:
        """Run the prompt, keep keys/values, return last-position logits ``[B, V]``.

        ``new_tokens``: how many decode steps will follow, when known; fewer than
        ``compile_min_new_tokens`` decode eagerly unless a compiled graph for the shape exists.
        """
        ids = _as_numpy(input_ids)
        mask = np.ones_like(ids) if attention_mask is None else _as_numpy(attention_mask)
        self.reset_cache()
        compilable = self._compilable()
        hidden = None
        if self.compiled_forward and compilable:
            try:
                hidden, mask = self._forward_compiled(ids, mask)
            except GraphCompileError as error:
                self._give_up_compiling(error)
                compilable = False
                self.reset_cache()
        if hidden is None:
            hidden = self._run(ids, mask, CacheMode.PREFILL)
        self._decode_mask = mask.astype(np.int64)
        worth = (new_tokens is None or new_tokens >= self.compile_min_new_tokens
                 or (ids.shape[0], self._static_capacity(mask.shape[1] + 1)) in self._decode_shapes)
        self._compiled_session = self.compiled_decode and compilable and worth
        if self._compiled_session:
            self._prepare_graphs()
        else:
            for cache in self._kv_caches():
                cache.from_static()
        return self.head(hidden[:, -1:, :])[:, 0, :]

    def decode_step(self, token_ids) -> Tensor:
        """Append one token per row, return its logits ``[B, V]``."""
        if self._decode_mask is None:
            raise RuntimeError("decode_step called before prefill")
        ids = _as_numpy(token_ids).reshape(-1, 1)
        self._decode_mask = np.concatenate([self._decode_mask, np.ones_like(ids)], axis=1)
        if self._compiled_session:
            try:
                return self._decode_compiled(ids)
            except GraphCompileError as error:   # before any write: the history is intact
                self._give_up_compiling(error)
                for cache in self._kv_caches():
                    cache.from_static()
        hidden = self._run(ids, self._decode_mask, CacheMode.DECODE)
        return self.head(hidden)[:, 0, :]

    # ----- compiled decoding ------------------------------------------------------------------
    def _give_up_compiling(self, error: Exception) -> None:
        """Switch this network to PyNative for good, saying why once."""
        logger.warning("golden_ptq: compiled inference failed (%s); this network now runs op by op", error)
        self.compiled_decode = self.compiled_forward = False
        self._compiled_session = False
        self._graphs = []

    def _kv_caches(self) -> List[KVCache]:
        return [layer.attention.kv_cache for layer in self.model.layers]

    def _compilable(self) -> bool:
        """Nothing in the network needs Python during a forward (observers, input recorders)."""
        return not any(getattr(cell, "observing", False) or getattr(cell, "recorder", None) is not None
                       for _, cell in self.cells_and_names())

    def _prepare_graphs(self) -> None:
        """Keep the compiled graphs while cells, parameters and their storage are the same; rebuild
        them (and fix each quantized layer's kernel) when any was replaced (quantization,
        ``set_data``, loading a checkpoint). A graph packs its matmul weights when it first runs, so
        it would not see new values written into the old storage (``ops.assign``): call
        :meth:`set_compiled` after such an edit."""
        signature = (tuple(id(cell) for _, cell in self.cells_and_names()),
                     tuple((id(param), param.data_ptr()) for param in self.get_parameters()))
        if self._graphs and self._graphs[0][0] == signature:
            return
        self._decode_shapes = set()
        for _, cell in self.cells_and_names():
            if hasattr(cell, "bind_kernel"):
                cell.bind_kernel()
        self._graphs = [(signature, CompiledDecodeStep(self), CompiledForward(self))]

    def _static_capacity(self, positions: int) -> int:
        return min(self.config.max_position_embeddings, -(-positions // STATIC_CACHE_BLOCK) * STATIC_CACHE_BLOCK)

    def _forward_compiled(self, ids: np.ndarray, mask: np.ndarray) -> Tuple[Tensor, np.ndarray]:
        """A compiled prefill: fills the static caches and returns the hidden states of the prompt
        left-padded to a multiple of ``FORWARD_LENGTH_STEP`` ``[B, T', D]`` and the padded mask."""
        batch, length = ids.shape
        if length > self.config.max_position_embeddings:
            raise ValueError(f"sequence length {length} exceeds max_position_embeddings "
                             f"{self.config.max_position_embeddings}")
        padded = -(-length // FORWARD_LENGTH_STEP) * FORWARD_LENGTH_STEP
        if padded >= self.config.max_position_embeddings:   # no room to spare for padding: the exact length
            padded = length
        pad = ((0, 0), (padded - length, 0))   # left padding: positions count from each row's first token
        ids_p, mask_p = np.pad(ids, pad), np.pad(mask, pad)
        self._prepare_graphs()
        caches = self._kv_caches()
        for cache in caches:
            cache.start_static(batch, self._static_capacity(padded + 1))
        arrays = [Tensor(a) for a in self._layer_arrays(mask_p, padded)]
        slots = Tensor(cache_slots(batch, caches[0].num_kv_heads, 0, padded))
        hidden = self._graphs[0][2].run(_as_int_tensor(ids_p), *arrays, slots)
        for cache in caches:
            cache.static_buffers.length = padded
        return hidden, mask_p

    def _decode_compiled(self, ids: np.ndarray) -> Tensor:
        caches = self._kv_caches()
        length = caches[0].cached_length()
        buffers = caches[0].static_buffers
        if buffers is None or int(buffers.key.shape[2]) <= length:
            capacity = self._static_capacity(length + 1)
            for cache in caches:
                cache.to_static(capacity)
        capacity = int(caches[0].static_buffers.key.shape[2])
        cos_q, sin_q, cos_k, sin_k, mask = self._layer_arrays(self._decode_mask, 1)
        mask = np.pad(mask, ((0, 0), (0, 0), (0, 0), (0, capacity - mask.shape[3])), constant_values=_MASK_VALUE)
        slots = cache_slots(ids.shape[0], caches[0].num_kv_heads, length, 1)
        logits = self._graphs[0][1].run(_as_int_tensor(ids), Tensor(cos_q), Tensor(sin_q), Tensor(cos_k),
                                           Tensor(sin_k), Tensor(mask), Tensor(slots))
        for cache in caches:
            cache.static_buffers.length = length + 1
        self._decode_shapes.add((ids.shape[0], capacity))
        return logits

    def generate(self, input_ids, do_sample: bool = False, max_length: Optional[int] = None, top_p: float = 1.0,
                 top_k: int = 0, max_new_tokens: Optional[int] = None, pad_token_id: Optional[int] = None,
                 eos_token_id: Optional[int] = None, temperature: float = 1.0, seed: Optional[int] = None,
                 attention_mask=None) -> List[np.ndarray]:
        """Greedy or sampled continuation; see :func:`golden_ptq.networks.generation.generate`."""
        from golden_ptq.networks.generation import generate
        return generate(self, input_ids, do_sample=do_sample, max_length=max_length, top_p=top_p, top_k=top_k,
                        max_new_tokens=max_new_tokens, pad_token_id=pad_token_id, eos_token_id=eos_token_id,
                        temperature=temperature, seed=seed, attention_mask=attention_mask)


def _as_numpy(values) -> np.ndarray:
    if isinstance(values, Tensor):
        values = values.asnumpy()
    array = np.asarray(values)
    if array.ndim == 1:
        array = array[None]
    return array


def _as_int_tensor(values) -> Tensor:
    if isinstance(values, Tensor):
        return values.astype(ms.int32)
    return Tensor(np.asarray(values, dtype=np.int32))


def sync_parameter_names(network: nn.Cell) -> None:
    """Name every parameter by its place in the cell tree (``model.layers.0.attention.wq.weight``).

    MindSpore prefixes names only with the attribute a cell is assigned to, so a cell swapped in
    later (a quantized Linear) would otherwise be saved under a short, clashing name. A parameter
    reachable under two paths (tied embeddings) keeps the first path.
    """
    seen = set()
    for cell_name, cell in network.cells_and_names():
        for attr, param in cell.parameters_and_names(expand=False):
            if id(param) in seen:
                continue
            seen.add(id(param))
            param.name = f"{cell_name}.{attr}" if cell_name else attr
