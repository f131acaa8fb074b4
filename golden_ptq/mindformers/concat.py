"""MindFormers' ``qkv_concat`` layers: ``attention.w_qkv`` (wq/wk/wv) and ``feed_forward.w_gate_hidden`` (w1/w3).

Row orders (MindFormers' own, checked against its network):

* ``w_qkv`` rows, per KV head ``g``: the ``n_rep`` query heads reading ``g``, then key head ``g``,
  then value head ``g`` (``n_rep = num_heads / num_kv_heads``);
* ``w_gate_hidden`` rows: gate row ``i`` then up row ``i``, for every ``i``.

Quantized parameters follow their layer: per-output-row tensors (weight, scales, quant_bias,
deq_scale, bias, ...) are split/joined in that order; per-tensor and per-input ones (input_scale,
input_zp, input_shift) are one tensor shared by the joined layers, which see the same input.
"""
from __future__ import annotations

from typing import Dict, Tuple

import numpy as np

from golden_ptq.config.model_config import LlamaConfig
from golden_ptq.quant_math.layouts import REPLICATE, SPLIT0, names_by_column_rule

#: Parameters of a quantized Linear with one entry per output row (split/joined with the rows): the
#: ones a column-parallel split divides, in the layout table of golden_ptq.quant_math.layouts.
ROW_PARAMS = names_by_column_rule(SPLIT0)
#: Parameters shared by every output row (equal in the layers a concat joins: they read one input).
SHARED_PARAMS = names_by_column_rule(REPLICATE)
QKV, GATE_UP = "attention.w_qkv", "feed_forward.w_gate_hidden"
_QKV_PARTS, _GATE_UP_PARTS = ("attention.wq", "attention.wk", "attention.wv"), ("feed_forward.w1", "feed_forward.w3")


def split_qkv(joined: np.ndarray, num_heads: int, num_kv_heads: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``w_qkv`` rows (first axis) -> (q, k, v) rows in plain head order."""
    rep = num_heads // num_kv_heads
    rest = joined.shape[1:]
    head_dim = joined.shape[0] // (num_heads + 2 * num_kv_heads)
    grouped = joined.reshape(num_kv_heads, (rep + 2) * head_dim, *rest)
    q = grouped[:, :rep * head_dim].reshape(num_heads * head_dim, *rest)
    k = grouped[:, rep * head_dim:(rep + 1) * head_dim].reshape(num_kv_heads * head_dim, *rest)
    v = grouped[:, (rep + 1) * head_dim:].reshape(num_kv_heads * head_dim, *rest)
    return q, k, v


def join_qkv(q: np.ndarray, k: np.ndarray, v: np.ndarray, num_heads: int, num_kv_heads: int) -> np.ndarray:
    """Inverse of :func:`split_qkv`."""
    rep = num_heads // num_kv_heads
    head_dim = q.shape[0] // num_heads
    rest = q.shape[1:]
    parts = (q.reshape(num_kv_heads, rep * head_dim, *rest), k.reshape(num_kv_heads, head_dim, *rest),
             v.reshape(num_kv_heads, head_dim, *rest))
    return np.concatenate(parts, axis=1).reshape(-1, *rest)


def split_gate_up(joined: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """``w_gate_hidden`` rows -> (w1, w3) rows."""
    pairs = joined.reshape(joined.shape[0] // 2, 2, *joined.shape[1:])
    return pairs[:, 0], pairs[:, 1]


def join_gate_up(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    """Inverse of :func:`split_gate_up`."""
    return np.stack([gate, up], axis=1).reshape(-1, *gate.shape[1:])


def _param_kind(name: str, where: str) -> str:
    leaf = name.rsplit(".", 1)[-1]
    if leaf in ROW_PARAMS:
        return "row"
    if leaf in SHARED_PARAMS:
        return "shared"
    raise ValueError(f"{where}: parameter '{name}' of a concatenated layer is not one golden_ptq knows how to "
                     f"split or join; known: {sorted(ROW_PARAMS + SHARED_PARAMS)}")


def split_concat(arrays: Dict[str, np.ndarray], config: LlamaConfig, where: str) -> Dict[str, np.ndarray]:
    """MindFormers ``qkv_concat`` names -> golden_ptq's (wq/wk/wv, w1/w3); other names pass through."""
    out: Dict[str, np.ndarray] = {}
    for name, array in arrays.items():
        for joined, parts in ((QKV, _QKV_PARTS), (GATE_UP, _GATE_UP_PARTS)):
            marker = f".{joined}."
            if marker in name:
                prefix, leaf = name.split(marker)
                if _param_kind(name, where) == "shared":
                    pieces = [array] * len(parts)
                elif joined == QKV:
                    pieces = split_qkv(array, config.num_heads, config.num_kv_heads)
                else:
                    pieces = split_gate_up(array)
                for part, piece in zip(parts, pieces):
                    out[f"{prefix}.{part}.{leaf}"] = np.ascontiguousarray(piece)
                break
        else:
            out[name] = array
    return out


def join_concat(arrays: Dict[str, np.ndarray], config: LlamaConfig, where: str) -> Dict[str, np.ndarray]:
    """golden_ptq names -> MindFormers ``qkv_concat`` names (inverse of :func:`split_concat`)."""
    out: Dict[str, np.ndarray] = {}
    consumed = set()
    for name, array in arrays.items():
        if name in consumed:
            continue
        for joined, parts in ((QKV, _QKV_PARTS), (GATE_UP, _GATE_UP_PARTS)):
            marker = f".{parts[0]}."
            if marker not in name:
                continue
            prefix, leaf = name.split(marker)
            names = [f"{prefix}.{part}.{leaf}" for part in parts]
            missing = [n for n in names if n not in arrays]
            if missing:
                raise ValueError(f"{where}: cannot join '{name}' into {joined}: '{missing[0]}' is missing (the "
                                 f"joined layers must be quantized alike)")
            pieces = [arrays[n] for n in names]
            if _param_kind(name, where) == "shared":
                if any(not np.array_equal(pieces[0], p) for p in pieces[1:]):
                    raise ValueError(f"{where}: cannot join '{name}' into {joined}: the parts hold different "
                                     f"values; MindFormers' concatenated layer has one")
                value = pieces[0]
            elif joined == QKV:
                value = join_qkv(*pieces, config.num_heads, config.num_kv_heads)
            else:
                value = join_gate_up(*pieces)
            out[f"{prefix}.{joined}.{leaf}"] = value
            consumed.update(names)
            break
        else:
            if any(f".{p}." in name for p in _QKV_PARTS[1:] + _GATE_UP_PARTS[1:]):
                raise ValueError(f"{where}: cannot join '{name}': its '{_QKV_PARTS[0]}' / '{_GATE_UP_PARTS[0]}' "
                                 f"counterpart is missing")
            out[name] = array
    return out


def join_desc(desc: Dict[str, str]) -> Dict[str, str]:
    """``quant_desc`` entries under ``qkv_concat`` names (the joined layers carry one quant type)."""
    out: Dict[str, str] = {}
    for name, kind in desc.items():
        for joined, parts in ((QKV, _QKV_PARTS), (GATE_UP, _GATE_UP_PARTS)):
            hits = [p for p in parts if f".{p}." in name]
            if hits:
                if hits[0] == parts[0]:
                    prefix, leaf = name.split(f".{parts[0]}.")
                    kinds = {desc.get(f"{prefix}.{p}.{leaf}") for p in parts}
                    if len(kinds) != 1:
                        raise ValueError(f"quant_desc: the parts of '{prefix}.{joined}.{leaf}' are quantized "
                                         f"differently ({sorted(map(str, kinds))}); MindFormers' concatenated "
                                         f"layer has one quant type")
                    out[f"{prefix}.{joined}.{leaf}"] = kind
                break
        else:
            out[name] = kind
    return out
