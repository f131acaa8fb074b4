"""Building blocks of the Llama network. ``Linear`` and ``KVCache`` are what quantization targets."""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops
from mindspore.common.initializer import Constant, initializer
from mindspore.ops import constexpr

from golden_ptq.kernels.float_prefill import float_prefill_ops
from golden_ptq.kernels.native import blas_gemm_op, native_ops
from golden_ptq.parallel.context import TPContext, all_reduce, current_context, shard_mode


_MS_DTYPES = {np.dtype(np.float32): ms.float32, np.dtype(np.float16): ms.float16, np.dtype(np.int8): ms.int8,
              np.dtype(np.int32): ms.int32, np.dtype(np.int64): ms.int64, np.dtype(np.uint8): ms.uint8}


def placeholder_tensor(shape: Tuple[int, ...], dtype=np.float32, fill: float = 0.0) -> Tensor:
    """A tensor of ``shape`` filled with ``fill`` whose storage is allocated only when first used.

    Float weights start as these, so building a network holds no weight memory until its values
    arrive (a loader's, ``init_random``'s or a quantized checkpoint's, which replace them whole).
    """
    init = "zeros" if fill == 0.0 else ("ones" if fill == 1.0 else Constant(fill))
    return initializer(init, tuple(int(d) for d in shape), _MS_DTYPES[np.dtype(dtype)])


@constexpr
def compiling_graph() -> bool:
    """True while a graph compiles (evaluated then, as a constant; golden_ptq compiles its graphs in
    GRAPH_MODE, :mod:`golden_ptq.networks.compiled`), False in an eager call."""
    return ms.get_context("mode") == ms.GRAPH_MODE


def prefill_kernel(name: str):
    """The float prefill kernels' operator ``name`` if they run now, else None (MindSpore ops). Cells
    that hold it for compiled graphs (``bound_*``, fixed by ``bind_kernel()`` before compiling) run the
    same operator in graphs as eagerly; decode steps then execute one operator where MindSpore's route
    had several (an RMSNorm: six)."""
    table = float_prefill_ops()
    return None if table is None else table[name]


_MATMUL_NT = ops.MatMul(transpose_b=True)


def on_rows(route, x: Tensor, *operands) -> Tensor:
    """``route`` (a product taking ``x [M, K]``) on ``x [..., K]``, the result ``[..., N]``: for the
    MindSpore-op products; the native ones take the leading dimensions themselves."""
    if len(x.shape) == 2:
        return route(x, *operands)
    y = route(x.reshape(-1, x.shape[-1]), *operands)
    return y.reshape(x.shape[:-1] + (y.shape[-1],))


def float_matmul(x: Tensor, weight: Tensor) -> Tensor:
    """``x [..., K] @ weight [N, K].T`` -> ``[..., N]``: in eager float32 calls the process's BLAS where the
    native kernels found one (:func:`golden_ptq.kernels.blas_gemm_op`: about twice MindSpore's CPU MatMul
    on 2 cores, the same product up to summation order), else MindSpore's MatMul. The BLAS operator takes
    ``x`` as it comes: a reshaped view would cost a copy before the call. Compiled graphs (decode steps)
    keep MindSpore's: bound there, the BLAS made batch-8 steps 0.75x as fast and batch-1 steps 1.04x
    (``benchmarks/native_float_kernels.py --switch blas``, 2026-12-03)."""
    if not compiling_graph() and x.dtype == ms.float32 and weight.dtype == ms.float32:
        op = blas_gemm_op()
        if op is not None:
            return op(x, weight)
    return on_rows(_MATMUL_NT, x, weight)


class Linear(nn.Cell):
    """``y = x @ weight.T + bias`` with MindFormers' layout: ``weight`` is ``[out_features, in_features]``.

    Tensor parallel (``parallel``): ``"column"`` holds ``out / tp.size`` output rows (bias too);
    ``"row"`` holds ``in / tp.size`` input columns and sums the partial outputs over the ranks
    before adding the (replicated) bias; None is replicated. ``in_features`` / ``out_features``
    are the local sizes (``local_features`` sets the split one when ranks get unequal parts). At TP
    size 1 all three compute the same as a plain Linear.
    """

    def __init__(self, in_features: int, out_features: int, has_bias: bool = False,
                 parallel: Optional[str] = None, tp: Optional[TPContext] = None,
                 local_features: Optional[int] = None):
        super().__init__()
        if parallel not in (None, "column", "row"):
            raise ValueError(f"Linear: parallel {parallel!r} is not one of [None, 'column', 'row']")
        self.parallel = parallel
        self.tp = TPContext() if parallel is None else (tp if tp is not None else current_context())
        split = out_features if parallel == "column" else in_features
        if parallel and local_features is None and split % self.tp.size:
            raise ValueError(f"Linear: {parallel}-parallel split of {split} features is not divisible by TP size "
                             f"{self.tp.size}; pass local_features for an uneven split")
        local = (local_features or split // self.tp.size) if parallel else split
        self.in_features = local if parallel == "row" else in_features
        self.out_features = local if parallel == "column" else out_features
        self.weight = Parameter(placeholder_tensor((self.out_features, self.in_features)), name="weight")
        self.bias = Parameter(placeholder_tensor((self.out_features,)), name="bias") if has_bias else None

    @property
    def shard(self) -> Optional[str]:
        """``"column"`` / ``"row"`` when this layer is split over more than one rank, else None."""
        return shard_mode(self.parallel, self.tp)

    def reduce_output(self, y: Tensor) -> Tensor:
        """Sum a row-parallel layer's partial outputs over the ranks (identity otherwise)."""
        return all_reduce(y, self.tp) if self.parallel == "row" else y

    def construct(self, x: Tensor) -> Tensor:
        y = self.reduce_output(float_matmul(x, self.weight))
        if self.bias is not None:
            y = y + self.bias
        return y


def _rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    variance = ops.mean(ops.square(x), -1, keep_dims=True)
    return ops.mul(ops.mul(x, ops.rsqrt(variance + eps)), weight)


def _swiglu(gate: Tensor, up: Tensor) -> Tensor:
    return ops.mul(ops.silu(gate), up)


def _rope(x: Tensor, cos: Tensor, sin: Tensor, index: Tensor) -> Tensor:
    return ops.add(ops.mul(x, cos), ops.mul(ops.gather(x, index, 2), sin))


# Graph compilation of the elementwise blocks (``set_compile_elementwise(True)``). Measured on 2 cores with
# SmolLM2 (30 layers, 4 x 512 tokens): compiled 8.3 s per forward but 4.6 GB resident, eager 12 s
# at 1.9 GB; every new input shape also costs a compile (seconds) and grows memory further
# (batch 8: 11 GB vs 2.7 GB). Eager is the default because calibration must fit beside big models.
# Compiled calls also have a fixed cost that makes single-token decode steps ~2x slower, so small
# calls stay eager even when compilation is on.
COMPILE = False


def set_compile_elementwise(on: bool) -> None:
    """Compile the elementwise blocks (norm, SwiGLU, rope, attention core) of large calls; off by default."""
    global COMPILE
    COMPILE = bool(on)

COMPILE_MIN_ROWS = 32


def compiled_for_large_inputs(fn, always: bool = False):
    """Run ``fn`` as a compiled graph when compilation is on (or ``always``) and its first argument
    has many rows."""
    compiled = ms.jit(fn)

    def call(x: Tensor, *args):
        if not (COMPILE or always):
            return fn(x, *args)
        rows = x.shape[0] * x.shape[1] if len(x.shape) > 2 else x.shape[0]
        if rows < COMPILE_MIN_ROWS:
            return fn(x, *args)
        # Parameters go in as plain tensors: a compiled graph specialises on each distinct
        # Parameter object, which would compile (and keep) one graph per layer.
        return compiled(x, *(a.value() if isinstance(a, Parameter) else a for a in args))

    call.__name__ = fn.__name__
    call.__doc__ = fn.__doc__
    return call


_rms_norm_auto = compiled_for_large_inputs(_rms_norm)
swiglu = compiled_for_large_inputs(_swiglu)
#: Rotary embedding on ``x`` ``[B, T, heads*head_dim]``; ``sin`` carries the rotate-half sign and
#: ``cos``/``sin`` have ``x``'s shape (pre-tiled per head) so no op broadcasts.
apply_rope = compiled_for_large_inputs(_rope)


class RMSNorm(nn.Cell):
    """Root-mean-square layer norm built from plain ops (no Ascend-only ``RmsNorm`` kernel)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = Parameter(Tensor(np.ones((dim,), np.float32)), name="weight")
        self.eps_tensor = Tensor(np.array([eps], np.float32))   # the native operator's operand
        self.bound_kernel = None   # set by bind_kernel() for compiled graphs

    def bind_kernel(self) -> None:
        self.bound_kernel = prefill_kernel("rms_norm")

    def construct(self, x: Tensor) -> Tensor:
        if compiling_graph() and self.bound_kernel is not None:
            return self.bound_kernel(x, self.weight, self.eps_tensor)
        return _rms_norm_auto(x, self.weight, self.eps)


def rms_norm_eager(norm: nn.Cell, x: Tensor) -> Tensor:
    """``norm(x)`` outside compiled graphs: for an :class:`RMSNorm` where the float prefill kernels run
    (:mod:`golden_ptq.kernels.float_prefill`), one native operator (statistics and scaling; the row
    sums in another order than MindSpore's ReduceMean, so last-bit differences), else the cell itself."""
    kernel = prefill_kernel("rms_norm")
    if kernel is None or type(norm) is not RMSNorm:
        return norm(x)
    return kernel(x, norm.weight, norm.eps_tensor)


def add_eager(x: Tensor, y: Tensor) -> Tensor:
    """``x + y`` of equal shapes outside compiled graphs (the residual connections): the native operator
    where the float prefill kernels run (MindSpore's bits; a MindSpore elementwise op between two
    MatMuls slowed the next MatMul on the 2-core Xeon), else ``ops.add``."""
    kernel = prefill_kernel("add")
    return ops.add(x, y) if kernel is None else kernel(x, y)


def swiglu_eager(gate: Tensor, up: Tensor) -> Tensor:
    """:func:`swiglu` outside compiled graphs: one native pass where the float prefill kernels run
    (~5e-6 relative from MindSpore's SiLU, whose exp is another approximation), else MindSpore's ops."""
    kernel = prefill_kernel("swiglu")
    return swiglu(gate, up) if kernel is None else kernel(gate, up)


class Embedding(nn.Cell):
    """Token embedding; the table is named ``embedding_weight`` as in MindFormers."""

    def __init__(self, vocab_size: int, dim: int):
        super().__init__()
        self.embedding_weight = Parameter(placeholder_tensor((vocab_size, dim)), name="embedding_weight")

    def construct(self, input_ids: Tensor) -> Tensor:
        return ops.gather(self.embedding_weight, input_ids, 0)


def rope_tables(head_dim: int, max_positions: int, base: float) -> Tuple[np.ndarray, np.ndarray]:
    """cos/sin tables ``[max_positions, head_dim]`` in Hugging Face's rotate-half layout."""
    inv_freq = 1.0 / (base ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    angles = np.outer(np.arange(max_positions, dtype=np.float64), inv_freq)
    angles = np.concatenate([angles, angles], axis=-1)
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def rotate_half_index(num_heads: int, head_dim: int) -> Tuple[np.ndarray, np.ndarray]:
    """Gather index and sign that turn ``[.., heads*head_dim]`` into its rotate-half partner.

    ``rotate_half(x) = x[..., index] * sign`` per head: ``(-x2, x1)`` for halves ``x1, x2``.
    """
    half = head_dim // 2
    within = np.concatenate([np.arange(half, head_dim), np.arange(half)])
    index = (np.arange(num_heads)[:, None] * head_dim + within[None]).reshape(-1)
    sign = np.tile(np.concatenate([-np.ones(half), np.ones(half)]), num_heads).astype(np.float32)
    return index.astype(np.int32), sign


class CacheMode:
    """How attention uses its :class:`KVCache` in one forward call."""

    NONE = 0      # full recomputation, nothing kept
    PREFILL = 1   # start a new history with this call's keys/values
    DECODE = 2    # append this call's keys/values to the history


class StaticKVBuffers(nn.Cell):
    """Preallocated key/value buffers ``[B, num_kv_heads, capacity, width]`` (the stored dtype and widths),
    written in place one slot range per call; for compiled decoding."""

    def __init__(self, key_shape: Tuple[int, ...], value_shape: Tuple[int, ...], dtype, name: str):
        super().__init__()
        # graph names must be unique
        self.key = Parameter(Tensor(np.zeros(key_shape, dtype)), name=f"{name}.key", requires_grad=False)
        self.value = Parameter(Tensor(np.zeros(value_shape, dtype)), name=f"{name}.value", requires_grad=False)
        self.length = 0               # filled slots (host side)
        self.scatter = ops.ScatterNdUpdate()

    def write(self, key: Tensor, value: Tensor, slots: Tensor) -> Tuple[Tensor, Tensor]:
        """Store ``key``/``value`` ``[B, Hkv, T, D]`` at ``slots`` ``[B, Hkv, T, 3]`` (b, head, position
        triples); returns the whole buffers."""
        self.scatter(self.key, slots, key)
        self.scatter(self.value, slots, value)
        return self.key, self.value


def cache_slots(batch: int, heads: int, start: int, count: int) -> np.ndarray:
    """``[B, heads, count, 3]`` int32 (b, head, position) triples for positions ``start ..``."""
    grid = np.meshgrid(np.arange(batch), np.arange(heads), np.arange(start, start + count), indexing="ij")
    return np.stack(grid, -1).astype(np.int32)


class KVCache(nn.Cell):
    """One attention layer's key/value history, ``[B, num_kv_heads, S, head_dim]``.

    Subclasses change how entries are stored by overriding :meth:`encode` and :meth:`decode`
    (the int8 cache stores integers and decodes them on read); keys and values always pass
    through encode/decode, with or without caching, so a full forward sees exactly what
    incremental decoding sees.

    Compiled decoding moves the history into preallocated :class:`StaticKVBuffers`
    (:meth:`to_static`) and appends with :meth:`write_static_codes`. Buffers are kept per (batch,
    capacity) and reused by later prompts, because a compiled graph holds the very Parameter objects
    it was compiled with; they sit in plain containers, so they are not parameters of the network
    (never saved, never loaded). :meth:`release_static` frees them.
    """

    def __init__(self, num_kv_heads: int, head_dim: int):
        super().__init__()
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self._history = {}
        self._static = []
        self._static_pool = {}
        self.bound_attention = None   # a native decode-attention operator, set by bind_kernel()

    def reset(self) -> None:
        self._history = {}
        self._static = []

    def release_static(self) -> None:
        self.reset()
        self._static_pool = {}

    # ----- static buffers (compiled decoding) ---------------------------------------------------
    def stored_dtype(self) -> np.dtype:
        """dtype of the stored history (the int8 cache overrides)."""
        return np.dtype(np.float32)

    def stored_widths(self) -> Tuple[int, int]:
        """Last-axis widths of the stored keys and values (the int8 cache may store more than ``head_dim``)."""
        return self.head_dim, self.head_dim

    def _pooled_buffers(self, batch: int, capacity: int, dtype: np.dtype) -> StaticKVBuffers:
        key_width, value_width = self.stored_widths()
        pool_key = (batch, capacity, key_width, value_width, dtype.str)
        if pool_key not in self._static_pool:
            name = f"static_kv_{id(self)}_{batch}x{capacity}_{dtype.name}"
            rows = (batch, self.num_kv_heads, capacity)
            self._static_pool[pool_key] = StaticKVBuffers(rows + (key_width,), rows + (value_width,), dtype, name)
        return self._static_pool[pool_key]

    def start_static(self, batch: int, capacity: int) -> None:
        """Begin a history in static buffers (a compiled prefill writes it); the old one is dropped."""
        buffers = self._pooled_buffers(batch, capacity, self.stored_dtype())
        buffers.length = 0
        self._static = [buffers]
        self._history = {}

    def to_static(self, capacity: int) -> None:
        """Move the history (from prefill, or smaller buffers) into buffers of ``capacity`` positions."""
        if self._static:
            old = self._static[0]
            key, value, length = old.key.asnumpy(), old.value.asnumpy(), old.length
            key, value = key[:, :, :length], value[:, :, :length]
        elif self._history:
            key, value = self._history["key"].asnumpy(), self._history["value"].asnumpy()
            length = key.shape[2]
        else:
            raise RuntimeError("KVCache: decode step before prefill; call prefill first")
        if capacity < length:
            raise ValueError(f"KVCache.to_static: capacity {capacity} < {length} cached positions")
        buffers = self._pooled_buffers(key.shape[0], capacity, key.dtype)
        # In place (the graphs read these Parameters); slots past ``length`` keep stale values that
        # the attention mask hides until decoding overwrites them.
        buffers.write(Tensor(key), Tensor(value), Tensor(cache_slots(key.shape[0], key.shape[1], 0, length)))
        buffers.length = length
        self._static = [buffers]
        self._history = {}

    def from_static(self) -> None:
        """Back from static buffers to an eager history (eager decoding after a compiled prefill)."""
        if self._static:
            buffers = self._static[0]
            self._history = {"key": buffers.key[:, :, :buffers.length].copy(),
                             "value": buffers.value[:, :, :buffers.length].copy()}
            self._static = []

    def bind_kernel(self) -> None:
        """Fix the route of compiled decode steps: the native attention over the float buffers
        where the native kernels run (one operator for the two cache writes, two batched products,
        the mask and softmax, reading only the filled positions), else None (MindSpore ops)."""
        table = native_ops()
        self.bound_attention = None if table is None else table["kv_attention_float_write"]

    def decode_attention(self, q: Tensor, key: Tensor, value: Tensor, slots: Tensor, mask: Tensor,
                         kv_map: Tensor) -> Tensor:
        """A compiled decode step's attention by :attr:`bound_attention`: the operator stores this
        step's keys/values ``[B, Hkv, 1, D]`` into the static buffers at ``slots`` in place (no
        ScatterNdUpdate), then attends over them. ``q`` ``[B, 1, H*D]`` (rope and 1/sqrt(D)
        applied), ``mask`` ``[B, Hm, Gm, capacity]`` with row ``h`` for query head ``h``, ``kv_map``
        int32 ``[H]`` the stored KV head each query head reads. Returns the context ``[B, 1, H*D]``."""
        buffers = self._static[0]
        return self.bound_attention(q, buffers.key, buffers.value, mask, kv_map, key, value, slots)

    @property
    def static_buffers(self) -> Optional[StaticKVBuffers]:
        return self._static[0] if self._static else None

    def prefill_static(self, key: Tensor, value: Tensor, slots: Tensor) -> Tuple[Tensor, Tensor]:
        """Encode and store a prompt's keys/values in place; returns them decoded (this call's only)."""
        k_stored, v_stored = self.encode_in_graph(key, "key"), self.encode_in_graph(value, "value")
        self._static[0].write(k_stored, v_stored, slots)
        return self.decode_in_graph(k_stored, "key"), self.decode_in_graph(v_stored, "value")

    def write_static_codes(self, key: Tensor, value: Tensor, slots: Tensor):
        """Encode and store a compiled decode step's keys/values in place; returns the whole buffers
        as ``(keys, values, fold)``: decoded here (``fold`` None). An int8 cache may return its
        codes instead (cast to float, no per-element scaling) with the factors that attention
        applies to the query, probabilities and context (``fold``, see
        ``golden_ptq.networks.llama._attention_core``)."""
        k_all, v_all = self._static[0].write(self.encode_in_graph(key, "key"), self.encode_in_graph(value, "value"),
                                             slots)
        return self.decode_in_graph(k_all, "key"), self.decode_in_graph(v_all, "value"), None

    def encode(self, x: Tensor, kind: str) -> Tensor:
        """Stored form of ``x`` (eager calls: :meth:`construct`)."""
        return x

    def decode(self, stored: Tensor, kind: str) -> Tensor:
        return stored

    def encode_in_graph(self, x: Tensor, kind: str) -> Tensor:
        """:meth:`encode` with graph-compilable ops only (the static-buffer calls of compiled
        graphs); must give the same bits."""
        return self.encode(x, kind)

    def decode_in_graph(self, stored: Tensor, kind: str) -> Tensor:
        return self.decode(stored, kind)

    def construct(self, key: Tensor, value: Tensor, mode: int = CacheMode.NONE) -> Tuple[Tensor, Tensor]:
        k_stored = self.encode(key, "key")
        v_stored = self.encode(value, "value")
        if mode == CacheMode.DECODE:
            if not self._history:
                raise RuntimeError("KVCache: decode step before prefill; call prefill first")
            k_stored = ops.concat((self._history["key"], k_stored), 2)
            v_stored = ops.concat((self._history["value"], v_stored), 2)
        if mode in (CacheMode.PREFILL, CacheMode.DECODE):
            self._history = {"key": k_stored, "value": v_stored}
        return self.decode(k_stored, "key"), self.decode(v_stored, "value")

    def cached_length(self) -> int:
        if self._static:
            return self._static[0].length
        return 0 if not self._history else int(self._history["key"].shape[2])

    def history_bytes(self) -> int:
        """Bytes the stored history occupies (what KV-cache quantization shrinks); of static
        buffers, the filled positions."""
        if self._static:
            buffers = self._static[0]
            return (int(buffers.key.nbytes) + int(buffers.value.nbytes)) * buffers.length // int(buffers.key.shape[2])
        return sum(int(t.nbytes) for t in self._history.values())
