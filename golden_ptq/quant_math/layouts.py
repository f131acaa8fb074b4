"""The deployed parameters of a quantized Linear, per scheme: the one table that quantizing, DEPLOY
placeholders, tensor-parallel sharding and MindFormers' qkv/ffn concatenation read.

=============== ======= ================ ===================== =============== ========================
name            dtype   shape            present when          column-parallel row-parallel
=============== ======= ================ ===================== =============== ========================
weight          int8    [out, in]        always                split rows      split columns
weight_scale    float32 [out] / [out,g]  not static W8A8       split rows      per group: split columns
weight_zp       float32 [out] / [out,g]  groups or asymmetric  split rows      per group: split columns
input_scale     float32 [1]              static W8A8           replicated      replicated
input_zp        float32 [1]              static W8A8           replicated      replicated
quant_bias      int32   [out]            static W8A8           split rows      partial sum per rank
deq_scale       float32 [out]            static W8A8           split rows      replicated
input_shift     float32 [in]             input shift (m4)      replicated      split
shift_bias      float32 [out]            input shift (m4)      split rows      partial sum per rank
bias            float32 [out]            the float layer's     split rows      replicated
=============== ======= ================ ===================== =============== ========================

(``[out, g]``: ``g`` weight groups of ``group_size`` input channels.) Static W8A8 folds the weight
scale into ``deq_scale``; W8A8 dynamic keeps ``weight`` and ``weight_scale`` and quantizes its input
per token at run time; W8A16 (and W4A16 in the int8 container) keeps ``weight``, ``weight_scale``
and, grouped or asymmetric, ``weight_zp``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Tuple

import numpy as np

# Tensor-parallel rules (see golden_ptq.parallel.sharding): "split0" / "split1" split that
# dimension, "replicate" keeps the whole tensor, "partial" holds this rank's partial sum,
# "groups" splits columns when per group (2-D) and replicates a per-channel (1-D) tensor.
SPLIT0, SPLIT1, REPLICATE, PARTIAL, GROUPS = "split0", "split1", "replicate", "partial", "groups"


@dataclass(frozen=True)
class LayoutEntry:
    """One deployed parameter of a quantized Linear."""

    name: str
    dtype: type
    shape: str                  # "out,in", "scale" ([out] or [out, groups]), "1", "out", "in"
    fill: float                 # placeholder value before a checkpoint fills it
    present: Callable[["SchemeKey"], bool]
    column: str                 # rule in a column-parallel layer
    row: str                    # rule in a row-parallel layer


@dataclass(frozen=True)
class SchemeKey:
    """What decides a quantized Linear's parameter set."""

    static_act: bool            # W8A8 with calibrated (per-tensor) input ranges
    weight_zp: bool             # grouped or asymmetric weights carry a zero point
    input_shift: bool           # outlier suppression m4: input_shift / shift_bias
    has_bias: bool = False      # the float layer's bias (stays float)


LINEAR_LAYOUT: Tuple[LayoutEntry, ...] = (
    LayoutEntry("weight", np.int8, "out,in", 0.0, lambda k: True, SPLIT0, SPLIT1),
    LayoutEntry("weight_scale", np.float32, "scale", 1.0, lambda k: not k.static_act, SPLIT0, GROUPS),
    LayoutEntry("weight_zp", np.float32, "scale", 0.0, lambda k: k.weight_zp, SPLIT0, GROUPS),
    LayoutEntry("input_scale", np.float32, "1", 1.0, lambda k: k.static_act, REPLICATE, REPLICATE),
    LayoutEntry("input_zp", np.float32, "1", 0.0, lambda k: k.static_act, REPLICATE, REPLICATE),
    LayoutEntry("quant_bias", np.int32, "out", 0.0, lambda k: k.static_act, SPLIT0, PARTIAL),
    LayoutEntry("deq_scale", np.float32, "out", 1.0, lambda k: k.static_act, SPLIT0, REPLICATE),
    LayoutEntry("input_shift", np.float32, "in", 0.0, lambda k: k.input_shift, REPLICATE, SPLIT0),
    LayoutEntry("shift_bias", np.float32, "out", 0.0, lambda k: k.input_shift, SPLIT0, PARTIAL),
)
BIAS = LayoutEntry("bias", np.float32, "out", 0.0, lambda k: k.has_bias, SPLIT0, REPLICATE)
_BY_NAME: Dict[str, LayoutEntry] = {entry.name: entry for entry in LINEAR_LAYOUT + (BIAS,)}


def scheme_key(spec, has_input_shift: bool, has_bias: bool = False) -> SchemeKey:
    """The key of a ``LayerQuantSpec`` (weight-quantized Linear)."""
    return SchemeKey(static_act=bool(spec.act and not spec.act_dynamic),
                     weight_zp=bool(spec.group_size or not spec.weight_symmetric),
                     input_shift=bool(has_input_shift), has_bias=bool(has_bias))


def quantized_entries(key: SchemeKey) -> List[LayoutEntry]:
    """The quantized parameters (bias excluded) a Linear of scheme ``key`` deploys, in table order."""
    return [entry for entry in LINEAR_LAYOUT if entry.present(key)]


def entry_shape(entry: LayoutEntry, out_features: int, in_features: int, groups: int) -> Tuple[int, ...]:
    """``entry``'s shape for a layer of these (local) sizes; ``groups`` 0 means per output channel."""
    return {"out,in": (out_features, in_features), "scale": (out_features, groups) if groups else (out_features,),
            "1": (1,), "out": (out_features,), "in": (in_features,)}[entry.shape]


def parallel_rule(local: str, mode: str, ndim: int) -> str:
    """How parameter ``local`` of a ``mode`` ("column" / "row") parallel quantized or float Linear
    is distributed: one of split0, split1, replicate, partial; KeyError for a name not in the table."""
    entry = _BY_NAME.get(local)
    if entry is None:
        raise KeyError(f"tensor parallel: no sharding rule for parameter '{local}' of a {mode}-parallel layer; "
                       f"known: {sorted(_BY_NAME)}")
    rule = entry.column if mode == "column" else entry.row
    if rule == GROUPS:
        return SPLIT1 if ndim == 2 else REPLICATE
    return rule


def names_by_column_rule(rule: str) -> Tuple[str, ...]:
    """Parameter names (bias included) with ``rule`` in a column-parallel layer, in table order."""
    return tuple(entry.name for entry in (LINEAR_LAYOUT[0], BIAS) + LINEAR_LAYOUT[1:] if entry.column == rule)
