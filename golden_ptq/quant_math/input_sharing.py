"""One computation per shared calibration input.

A calibration pass feeds several Linears the very same input tensor (``wq``/``wk``/``wv`` read one
norm output, ``w1``/``w3`` another). While a pass runs inside :func:`sharing`, what is derived from
one input -- its host copy, its per-channel range, its gram ``x^T x`` -- is computed by the first
reader and handed to the others, so the values are exactly those each would compute. Outside
:func:`sharing` nothing is kept.

Keys are object identities: each slot holds its source object, so the id cannot be reused while
the slot lives. That is sound because the tensors flowing through a network are never changed in
place (every op makes a new tensor), and the derived arrays are not changed by their readers.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Dict, Iterator, Optional, Tuple, TypeVar

T = TypeVar("T")

_active: Optional[Dict[str, Tuple[object, object]]] = None   # what -> (source, value), the last source only


@contextlib.contextmanager
def sharing() -> Iterator[None]:
    """Share derived values between the readers of one input for the duration of the block."""
    global _active
    previous, _active = _active, {}
    try:
        yield
    finally:
        _active = previous


def shared(source: object, what: str, make: Callable[[], T]) -> T:
    """``make()``; inside :func:`sharing`, the value made for this very ``source`` object and
    ``what`` when it was the last source asked for ``what``."""
    slots = _active
    if slots is None:
        return make()
    held = slots.get(what)
    if held is not None and held[0] is source:
        return held[1]
    value = make()
    slots[what] = (source, value)
    return value
