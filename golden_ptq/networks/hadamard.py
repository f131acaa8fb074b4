"""Hadamard matrices and the orthogonal transforms the rotation method folds into a network.

``hadamard_matrix(n)`` builds a ±1 matrix with ``H Hᵀ = n I`` from Sylvester's doubling (orders
2^k) and Paley's first construction (order q + 1 for a prime q ≡ 3 mod 4: 4, 8, 12, 20, 24, 32,
44, 48, ...), as Kronecker products of those factors; e.g. 576 = 12 x 12 x 4 (SmolLM2's hidden
size) and 1536 = 12 x 128. Orders it cannot reach give None.

``random_rotation(n, seed)`` is the residual-stream rotation: a normalised Hadamard matrix with
its rows' signs flipped by a seeded ±1 diagonal (``D H / sqrt(n)``), or, when no Hadamard matrix
of order ``n`` is constructible here, the orthogonal factor of a seeded Gaussian matrix (QR with
the signs of R's diagonal moved into Q so the result is unique). It is a :class:`Rotation`, which
multiplies through the Kronecker factors of ``H`` (576 = 12 x 12 x 4: 28 multiply-adds per entry
instead of 576); ``random_orthogonal`` is the same matrix, dense.

``OnlineHadamard`` is the transform a network applies at run time before ``feed_forward.w2``:
a block-diagonal normalised Sylvester Hadamard (blocks of the largest power of two <= 128 that
divides the width), cheap enough to run per token: a native fast Walsh-Hadamard transform
(:mod:`golden_ptq.kernels.float_prefill`'s ``fwht``) where those kernels run, else a matmul per block.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Union

import numpy as np
from mindspore import Tensor, nn, ops

from golden_ptq.kernels.float_prefill import float_prefill_ops
from golden_ptq.networks.layers import compiling_graph

ONLINE_BLOCK = 128  # the widest block of the online transform


def sylvester(n: int) -> np.ndarray:
    """The ±1 Sylvester Hadamard matrix of order ``n`` (a power of two)."""
    if n < 1 or n & (n - 1):
        raise ValueError(f"sylvester: order {n} is not a power of two")
    h = np.ones((1, 1))
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return h


def _is_prime(q: int) -> bool:
    return q >= 2 and all(q % d for d in range(2, int(q ** 0.5) + 1))


def paley(order: int) -> np.ndarray:
    """Paley's construction I: the ±1 Hadamard matrix of order q + 1 for a prime q ≡ 3 (mod 4)."""
    q = order - 1
    if not (_is_prime(q) and q % 4 == 3):
        raise ValueError(f"paley: order {order} is not q + 1 for a prime q = 3 (mod 4)")
    squares = {(i * i) % q for i in range(1, q)}
    chi = np.array([0] + [1 if d in squares else -1 for d in range(1, q)], dtype=np.float64)
    jacobsthal = np.array([[chi[(j - i) % q] for j in range(q)] for i in range(q)])
    core = np.zeros((order, order))
    core[0, 1:] = 1.0
    core[1:, 0] = -1.0
    core[1:, 1:] = jacobsthal
    return np.eye(order) + core


def hadamard_factors(n: int) -> Optional[List[int]]:
    """Orders of Paley / Sylvester factors whose Kronecker product has order ``n``, or None."""
    if n >= 1 and not n & (n - 1):
        return [n]
    for order in range(12, n + 1, 4):   # Paley orders; those that are powers of two are Sylvester's
        if n % order or not order & (order - 1) or not _is_prime(order - 1) or (order - 1) % 4 != 3:
            continue
        rest = hadamard_factors(n // order)
        if rest is not None:
            return [order] + rest
    return None


def _factor(order: int) -> np.ndarray:
    return sylvester(order) if not order & (order - 1) else paley(order)


def _apply_factors(orders: Sequence[int]) -> List[np.ndarray]:
    """The ±1 factors to apply a Kronecker product of these orders' matrices through: a Sylvester
    factor above order 32 is split into two (``S(ab) = S(a) ⊗ S(b)`` exactly), fewer multiply-adds."""
    factors = []
    for order in orders:
        if not order & (order - 1) and order > 32:
            half = 1 << ((order.bit_length() - 1) // 2)
            factors += [sylvester(half), sylvester(order // half)]
        else:
            factors.append(_factor(order))
    return factors


def hadamard_matrix(n: int) -> Optional[np.ndarray]:
    """A ±1 Hadamard matrix of order ``n`` (``H Hᵀ = n I``), or None if none is constructible here."""
    factors = hadamard_factors(n)
    if factors is None:
        return None
    h = np.ones((1, 1))
    for order in factors:
        h = np.kron(h, _factor(order))
    return h


APPLY_ROWS = 256     # rows per block of a structured product: the block's float64 passes stay in cache
DENSE_ROWS = 8192    # rows per block of a dense product (a large GEMM; bounds the float64 working set)
APPLY_COLUMNS = 4096  # columns per block of Qᵀ x (bounds the float64 working set)


class Rotation:
    """An orthogonal ``Q`` of order ``n`` and the products ``x Q`` / ``Qᵀ x`` with it, in float64.

    Structured (``D H / sqrt(n)``, ``H = F1 ⊗ F2 ⊗ ...`` the Kronecker product of Hadamard factors,
    ``D`` a ±1 diagonal on the rows): ``x Q`` scales ``x``'s columns by the signs, then views each row
    as an ``[f1, f2, ...]`` tensor and contracts one axis at a time with its factor, ``n (f1 + f2 +
    ...)`` multiply-adds a row instead of ``n²`` (576 = 12·12·4: 28 instead of 576). Otherwise
    (``matrix``) the products are dense. Either way :meth:`dense` is the matrix itself.
    """

    def __init__(self, signs: Optional[np.ndarray] = None, factors: Sequence[np.ndarray] = (),
                 matrix: Optional[np.ndarray] = None):
        if (matrix is None) == (signs is None):
            raise ValueError("Rotation: give either signs and factors, or a dense matrix")
        self.matrix = None if matrix is None else np.asarray(matrix, np.float64)
        self.signs = None if signs is None else np.asarray(signs, np.float64)
        self.factors = [np.asarray(f, np.float64) for f in factors]
        if self.signs is not None:
            self.n = len(self.signs)
            if int(np.prod([f.shape[0] for f in self.factors])) != self.n:
                raise ValueError(f"Rotation: factor orders {[f.shape[0] for f in self.factors]} do not multiply "
                                 f"to {self.n}")
            # 1/sqrt(n) folded into the first factor: one pass less
            self._scaled = [self.factors[0] / np.sqrt(self.n)] + self.factors[1:]
        else:
            self.n = self.matrix.shape[0]

    def dense(self) -> np.ndarray:
        """``Q`` as a dense ``[n, n]`` float64 matrix."""
        if self.matrix is not None:
            return self.matrix
        h = np.ones((1, 1))
        for f in self.factors:
            h = np.kron(h, f)
        return self.signs[:, None] * h / np.sqrt(self.n)

    def _rows(self, x: np.ndarray, gain: Optional[np.ndarray]) -> np.ndarray:
        """``(x * gain) Q`` for a block of rows ``x`` ``[r, n]`` (any float dtype), float64."""
        if self.matrix is not None:
            x = np.asarray(x, np.float64)
            return (x * gain if gain is not None else x) @ self.matrix
        y = np.multiply(x, self.signs if gain is None else self.signs * gain, order="C", dtype=np.float64)
        post = self.n
        for f in self._scaled:   # contract the Kronecker axes in order: [pre, k, post] with F over k
            k = f.shape[0]
            post //= k
            y = y.reshape(-1, k) @ f if post == 1 else np.matmul(f.T, y.reshape(-1, k, post))
        return y.reshape(x.shape)

    def _apply(self, x: np.ndarray, out: np.ndarray, gain: Optional[np.ndarray]) -> None:
        step = DENSE_ROWS if self.matrix is not None else APPLY_ROWS
        for start in range(0, x.shape[0], step):
            out[start:start + step] = self._rows(x[start:start + step], gain)

    def right(self, x: np.ndarray, gain: Optional[np.ndarray] = None, dtype=np.float64) -> np.ndarray:
        """``(x * gain) Q`` on the last axis (``gain`` an optional ``[n]`` column scale), computed in
        float64 block by block and stored as ``dtype``."""
        x = np.asarray(x)
        if x.shape[-1] != self.n:
            raise ValueError(f"Rotation.right: last axis {x.shape[-1]} != order {self.n}")
        out = np.empty(x.shape, dtype)
        self._apply(x.reshape(-1, self.n), out.reshape(-1, self.n), gain)
        return out

    def _columns(self, x: np.ndarray) -> np.ndarray:
        """``Qᵀ x`` for a block of columns ``x`` ``[n, c]`` (any float dtype), float64: the Kronecker
        axes lead, so each contraction is one wide matrix product per leading index."""
        if self.matrix is not None:
            return self.matrix.T @ np.asarray(x, np.float64)
        y = np.multiply(x, self.signs[:, None], order="C", dtype=np.float64)
        post = y.size
        for f in self._scaled:
            k = f.shape[0]
            post //= k
            y = np.matmul(f.T, y.reshape(-1, k, post))
        return y.reshape(x.shape)

    def left_t(self, x: np.ndarray, dtype=np.float64) -> np.ndarray:
        """``Qᵀ x`` on the first axis (``x`` ``[n, ...]``), computed in float64 block by block of
        columns and stored as ``dtype``."""
        x = np.asarray(x)
        if x.shape[0] != self.n:
            raise ValueError(f"Rotation.left_t: first axis {x.shape[0]} != order {self.n}")
        out = np.empty(x.shape, dtype)
        flat, flat_out = x.reshape(self.n, -1), out.reshape(self.n, -1)
        for start in range(0, flat.shape[1], APPLY_COLUMNS):
            flat_out[:, start:start + APPLY_COLUMNS] = self._columns(flat[:, start:start + APPLY_COLUMNS])
        return out


def random_rotation(n: int, seed: Union[int, np.random.RandomState]) -> Rotation:
    """The randomised Hadamard ``D H / sqrt(n)`` of order ``n`` (``D`` a random ±1 diagonal drawn
    from ``seed``, a seed or a RandomState to draw from) in its structured form, or a seeded random
    orthogonal matrix (QR of a Gaussian) when no Hadamard matrix of order ``n`` is at hand."""
    rng = seed if isinstance(seed, np.random.RandomState) else np.random.RandomState(seed)
    factors = hadamard_factors(n)
    if factors is None:
        q, r = np.linalg.qr(rng.randn(n, n))
        return Rotation(matrix=q * np.sign(np.diag(r))[None, :])
    signs = rng.randint(0, 2, size=n) * 2.0 - 1.0
    return Rotation(signs, _apply_factors(factors))


def random_orthogonal(n: int, seed: Union[int, np.random.RandomState]) -> np.ndarray:
    """:func:`random_rotation` as a dense float64 matrix."""
    return random_rotation(n, seed).dense()


def online_block(width: int) -> int:
    """Block size of the online transform of a ``width``-wide input: the largest power of two
    <= ONLINE_BLOCK dividing it."""
    block = 1
    while block < ONLINE_BLOCK and width % (block * 2) == 0:
        block *= 2
    return block


def online_matrix(width: int) -> np.ndarray:
    """The dense ``[width, width]`` matrix ``T`` of :class:`OnlineHadamard` (``y = x T``), float64."""
    block = online_block(width)
    return np.kron(np.eye(width // block), sylvester(block) / np.sqrt(block))


def times_online(x: np.ndarray) -> np.ndarray:
    """``x T`` on the last axis in float64, ``T = online_matrix(x.shape[-1])`` applied block by block
    (``T`` is block-diagonal: the dense product would do ``width / block`` times the work), each
    block through its Sylvester factors (:class:`Rotation` with no sign flips)."""
    x = np.asarray(x)
    block = online_block(x.shape[-1])
    return Rotation(np.ones(block), _apply_factors([block])).right(x.reshape(-1, block)).reshape(x.shape)


class OnlineHadamard(nn.Cell):
    """``y = x T`` on the last axis, ``T`` block-diagonal with normalised Sylvester blocks.

    Eager calls take the native fast Walsh-Hadamard transform when the float prefill kernels run
    (``log2(block)`` additions per entry instead of ``block`` multiply-adds; ~1e-7 relative from the
    matmul), else a matmul of each block with the Sylvester matrix. Compiled graphs cannot run the
    Python that decides per call: they take the route :meth:`bind_kernel` fixed before compiling.
    The block matrix is a constant Tensor, not a Parameter: it is rebuilt from the width, never saved.
    """

    def __init__(self, width: int):
        super().__init__()
        self.width = int(width)
        self.block = online_block(self.width)
        self.matrix = Tensor((sylvester(self.block) / np.sqrt(self.block)).astype(np.float32))
        self.block_size = Tensor(np.array([self.block], np.int32))   # the native operator's operand
        self.bound_kernel = None   # set by bind_kernel() for compiled graphs

    def construct(self, x: Tensor) -> Tensor:
        if compiling_graph():
            kernel = self.bound_kernel
        else:
            table = float_prefill_ops()
            kernel = None if table is None else table["fwht"]
        if kernel is not None:
            return kernel(x, self.block_size)
        shape = x.shape
        y = ops.matmul(x.reshape(-1, self.block), self.matrix)
        return y.reshape(shape)

    def bind_kernel(self) -> None:
        """Fix the route of compiled graphs: the native transform if the float prefill kernels run
        now, else the matmul."""
        table = float_prefill_ops()
        self.bound_kernel = None if table is None else table["fwht"]

    def apply_numpy(self, x: np.ndarray) -> np.ndarray:
        """``x T`` in float64 on the last axis (numpy; what ``construct`` computes). ``T`` is symmetric
        and orthogonal, so it is its own inverse: ``apply_numpy`` also undoes itself."""
        return times_online(x)
