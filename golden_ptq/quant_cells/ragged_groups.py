"""Run-time math of per-group weights whose group size does not divide the input width.

A row of ``in`` input channels splits into ``ceil(in / group_size)`` groups; the last one is
shorter (576 channels in groups of 128: four of 128 and one of 64). The deployed parameters are
the ordinary per-group ones (``weight`` int8 ``[out, in]``, ``weight_scale``/``weight_zp``
``[out, groups]``); only the dequantization needs the group size to know where groups end.

This is the MindSpore-op route (a float copy of the weight per call), used where the native
kernel (``GpWgGemm`` in :mod:`golden_ptq.kernels`, which takes the group size as an operand)
cannot run; :func:`golden_ptq.quant_cells.linear_kernels.w8a16_group` chooses.
"""
from __future__ import annotations

import mindspore as ms
from mindspore import Tensor, ops


def w8a16_dequant_ragged(x: Tensor, wq: Tensor, weight_scale: Tensor, weight_zp: Tensor,
                         group_size: int) -> Tensor:
    """``x @ dequant(wq).T`` with ``weight_scale``/``weight_zp`` ``[out, groups]`` per ``group_size``
    input channels (zero-padded to whole groups, then cut back)."""
    out_features, in_features = wq.shape
    groups = weight_scale.shape[1]
    pad = groups * group_size - in_features
    w = wq.astype(ms.float32)
    if pad:
        w = ops.concat((w, ops.zeros((out_features, pad), ms.float32)), axis=1)
    w = w.reshape(out_features, groups, group_size)
    w = ops.mul(ops.sub(w, weight_zp.reshape(out_features, groups, 1)), weight_scale.reshape(out_features, groups, 1))
    w = w.reshape(out_features, groups * group_size)[:, :in_features]
    return ops.MatMul(transpose_b=True)(x, w)
