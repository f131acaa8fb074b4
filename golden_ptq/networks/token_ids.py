"""Checking token ids where they enter the network, before anything is cast or computed.

MindSpore embeds int32 ids and its gather fails deep in C++ for an id >= vocab; a negative id or
one >= 2^31 would wrap when cast to int32 and read some other row. So every entry point checks
the ids in their own dtype first.
"""
from __future__ import annotations

import numpy as np


class TokenIdError(ValueError):
    """Token ids that are not integers in ``[0, vocab_size)``."""


def check_token_ids(ids, vocab_size: int, what: str = "input_ids") -> np.ndarray:
    """``ids`` as a numpy integer array, after checking every id is in ``[0, vocab_size)``.

    Raises :class:`TokenIdError` naming the first bad id (and its position) and the vocabulary size.
    """
    array = np.asarray(ids.asnumpy() if hasattr(ids, "asnumpy") else ids)
    if array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.integer):
        raise TokenIdError(f"{what}: token ids must be integers, got dtype {array.dtype} "
                           f"(vocabulary size {vocab_size})")
    if array.size == 0:
        raise TokenIdError(f"{what}: no token ids (shape {array.shape})")
    low, high = array.min(), array.max()
    if low < 0 or high >= vocab_size:
        bad = np.argwhere((array < 0) | (array >= vocab_size))[0]
        value = array[tuple(bad)]
        raise TokenIdError(f"{what}: token id {int(value)} at position {tuple(int(i) for i in bad)} is outside "
                           f"the vocabulary [0, {vocab_size}) (vocabulary size {vocab_size})")
    return array
