"""Hadamard matrices and the orthogonal transforms the rotation method folds into a network.

``hadamard_matrix(n)`` builds a ±1 matrix with ``H Hᵀ = n I`` from Sylvester's doubling (orders
2^k) and Paley's first construction (order q + 1 for a prime q ≡ 3 mod 4: 4, 8, 12, 20, 24, 32,
44, 48, ...), as Kronecker products of those factors; e.g. 576 = 12 x 12 x 4 (SmolLM2's hidden
size) and 1536 = 12 x 128. Orders it cannot reach give None.

``random_orthogonal(n, seed)`` is the residual-stream rotation: a normalised Hadamard matrix with
its rows' signs flipped by a seeded ±1 diagonal (``D H / sqrt(n)``), or, when no Hadamard matrix
of order ``n`` is constructible here, the orthogonal factor of a seeded Gaussian matrix (QR with
the signs of R's diagonal moved into Q so the result is unique).

``OnlineHadamard`` is the transform a network applies at run time before ``feed_forward.w2``:
a block-diagonal normalised Sylvester Hadamard (blocks of the largest power of two <= 128 that
divides the width), cheap enough to run per token.
"""
from __future__ import annotations

from typing import List, Optional, Union

import numpy as np
from mindspore import Tensor, nn, ops

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


def hadamard_matrix(n: int) -> Optional[np.ndarray]:
    """A ±1 Hadamard matrix of order ``n`` (``H Hᵀ = n I``), or None if none is constructible here."""
    factors = hadamard_factors(n)
    if factors is None:
        return None
    h = np.ones((1, 1))
    for order in factors:
        h = np.kron(h, sylvester(order) if not order & (order - 1) else paley(order))
    return h


def random_orthogonal(n: int, seed: Union[int, np.random.RandomState]) -> np.ndarray:
    """The randomised Hadamard ``D H / sqrt(n)`` of order ``n`` (float64; ``D`` a random ±1
    diagonal drawn from ``seed``, a seed or a RandomState to draw from), or a seeded random
    orthogonal matrix (QR of a Gaussian) when no Hadamard matrix of order ``n`` is at hand."""
    rng = seed if isinstance(seed, np.random.RandomState) else np.random.RandomState(seed)
    h = hadamard_matrix(n)
    if h is None:
        q, r = np.linalg.qr(rng.randn(n, n))
        return q * np.sign(np.diag(r))[None, :]
    signs = rng.randint(0, 2, size=n) * 2.0 - 1.0
    return signs[:, None] * h / np.sqrt(n)


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
    (``T`` is block-diagonal: the dense product would do ``width / block`` times the work)."""
    x = np.asarray(x, np.float64)
    block = online_block(x.shape[-1])
    return (x.reshape(-1, block) @ (sylvester(block) / np.sqrt(block))).reshape(x.shape)


class OnlineHadamard(nn.Cell):
    """``y = x T`` on the last axis, ``T`` block-diagonal with normalised Sylvester blocks.

    The block matrix is a constant Tensor, not a Parameter: it is rebuilt from the width, never saved.
    """

    def __init__(self, width: int):
        super().__init__()
        self.width = int(width)
        self.block = online_block(self.width)
        self.matrix = Tensor((sylvester(self.block) / np.sqrt(self.block)).astype(np.float32))

    def construct(self, x: Tensor) -> Tensor:
        shape = x.shape
        y = ops.matmul(x.reshape(-1, self.block), self.matrix)
        return y.reshape(shape)

    def apply_numpy(self, x: np.ndarray) -> np.ndarray:
        """``x T`` in float64 on the last axis (numpy; what ``construct`` computes). ``T`` is symmetric
        and orthogonal, so it is its own inverse: ``apply_numpy`` also undoes itself."""
        return times_online(x)
