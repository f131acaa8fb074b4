"""Copying a name -> array source into the network, with errors that name the offending tensor."""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np
from mindspore import Tensor, nn

# Our (MindFormers) parameter name pattern -> a source name pattern, per layer ``{i}``.
LAYER_PARAMS = (
    "attention_norm.weight", "ffn_norm.weight",
    "attention.wq.weight", "attention.wk.weight", "attention.wv.weight", "attention.wo.weight",
    "attention.wq.bias", "attention.wk.bias", "attention.wv.bias",
    "feed_forward.w1.weight", "feed_forward.w2.weight", "feed_forward.w3.weight",
)


class MissingTensorError(KeyError):
    """A tensor the network needs is not in the checkpoint."""

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


def load_into_network(network: nn.Cell, fetch: Callable[[str], Optional[np.ndarray]], source: str,
                      transform: Optional[Callable[[str, np.ndarray], np.ndarray]] = None) -> None:
    """Fill every parameter of ``network`` from ``fetch(our_name)``.

    ``fetch`` returns None when the source lacks the tensor. Shapes must match exactly; the error
    names the tensor, its shape and the expected one. ``transform`` may reshape/slice (tensor
    parallel) before the check.
    """
    params = dict(network.parameters_and_names())
    for name, param in params.items():
        array = fetch(name)
        if array is None:
            raise MissingTensorError(f"{source}: tensor for parameter '{name}' (expected shape "
                                     f"{tuple(param.shape)}) is missing")
        if transform is not None:
            array = transform(name, array)
        if tuple(array.shape) != tuple(param.shape):
            raise ValueError(f"{source}: tensor for parameter '{name}' has shape {tuple(array.shape)}, "
                             f"expected {tuple(param.shape)}")
        param.set_data(Tensor(np.ascontiguousarray(array, dtype=np.float32)))


def tp_transform(network: nn.Cell) -> Optional[Callable[[str, np.ndarray], np.ndarray]]:
    """The ``transform`` that keeps a tensor-parallel rank's slice of each full tensor (None at TP size 1)."""
    from golden_ptq.parallel.sharding import shard_array
    tp, layout = getattr(network, "tp", None), getattr(network, "tp_layout", None)
    if tp is None or not tp.parallel:
        return None
    return lambda name, array: np.ascontiguousarray(shard_array(name, array, layout))


def unpermute_rope_rows(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation (interleaved rope pairs -> rotate-half halves)."""
    out_features = weight.shape[0]
    head_dim = out_features // num_heads
    rest = weight.shape[1:]
    return (weight.reshape(num_heads, head_dim // 2, 2, *rest).swapaxes(1, 2).reshape(out_features, *rest))


def permute_rope_rows(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """llama.cpp's q/k row order (interleaved rope pairs) from the rotate-half order: the inverse of
    :func:`unpermute_rope_rows`."""
    out_features = weight.shape[0]
    head_dim = out_features // num_heads
    rest = weight.shape[1:]
    return (weight.reshape(num_heads, 2, head_dim // 2, *rest).swapaxes(1, 2).reshape(out_features, *rest))
