"""Spec resolution and cell swapping: which scheme each quantizable layer gets, and putting its
quantized Cell in its place (the whole network in memory, or one streamed decoder layer)."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

from mindspore import nn

from golden_ptq.config import PTQConfig, QuantGranularity
from golden_ptq.quant_cells import LayerQuantSpec, QuantCellRegistry
from golden_ptq.quant_cells.embedding import QuantEmbedding
from golden_ptq.quant_cells.linear import QuantLinear

#: (full name, float cell, registry entry) of one quantizable layer
Target = Tuple[str, nn.Cell, Dict]


def layer_spec(config: PTQConfig, name: str, kind: str) -> LayerQuantSpec:
    """The scheme ``config`` gives layer ``name`` of kind ``linear`` / ``kvcache`` / ``embedding``."""
    blocked = [entry for entry in config.opname_blacklist if entry in name]
    if blocked:
        return LayerQuantSpec(skip_reason=f"opname_blacklist '{blocked[0]}'")
    if name in config.disable_names:
        return LayerQuantSpec(skip_reason="disable_names")
    if kind == "kvcache":
        if config.kvcache_quant_dtype is None:
            return LayerQuantSpec(skip_reason="kvcache_quant_dtype=None")
        return LayerQuantSpec(kvcache=True, kvcache_scheme=config.arg("kvcache_scheme"))
    if kind == "embedding":
        if config.embedding_quant_dtype is None:
            return LayerQuantSpec(skip_reason="embedding_quant_dtype=None")
        return LayerQuantSpec(weight=True)
    if config.weight_quant_dtype is None:
        return LayerQuantSpec(skip_reason="weight_quant_dtype=None")
    act = config.act_quant_dtype is not None and not any(entry in name for entry in config.weight_only_names)
    return LayerQuantSpec(weight=True, act=act,
                          act_dynamic=act and config.act_quant_granularity is QuantGranularity.PER_TOKEN,
                          act_symmetric=config.activation_symmetric, weight_symmetric=config.weight_symmetric,
                          group_size=config.group_size)


def quant_targets(root: nn.Cell, registry: QuantCellRegistry, prefix: str = "") -> List[Target]:
    """Every registered (quantizable) cell below ``root``, named ``prefix.relative`` (in tree order)."""
    targets: List[Target] = []
    for name, cell in root.cells_and_names():
        entry = registry.lookup(cell)
        if entry is not None and name:
            targets.append((f"{prefix}.{name}" if prefix else name, cell, entry))
    return targets


def check_target_names(config: PTQConfig, names: Sequence[str]) -> None:
    """Every ``opname_blacklist`` / ``weight_only_names`` entry matches a quantizable layer and every
    ``disable_names`` entry is one."""
    for field_name in ("opname_blacklist", "weight_only_names"):
        unmatched = [b for b in getattr(config, field_name) if not any(b in name for name in names)]
        if unmatched:
            examples = ", ".join(names[:4])
            raise ValueError(f"PTQConfig.{field_name} entry '{unmatched[0]}' matches no quantizable layer; "
                             f"names look like: {examples}")
    known = set(names)
    unknown = [n for n in config.disable_names if n not in known]
    if unknown:
        examples = ", ".join(names[:4])
        raise ValueError(f"PTQConfig.disable_names entry '{unknown[0]}' is not the exact name of a quantizable "
                         f"layer; names look like: {examples}")


def plan_swaps(config: PTQConfig, targets: Sequence[Target]) -> List[Tuple[str, nn.Cell, Dict, LayerQuantSpec]]:
    """Each target with its spec; cells inside a layer that is itself quantized as a whole (a user's
    registered Cell) are left out."""
    plan = []
    replaced: List[str] = []
    for name, cell, entry in targets:
        if any(name.startswith(outer + ".") for outer in replaced):
            continue
        spec = layer_spec(config, name, entry["kind"])
        if not spec.skip_reason:
            replaced.append(name)
        plan.append((name, cell, entry, spec))
    return plan


def cell_at(root: nn.Cell, name: str) -> Optional[nn.Cell]:
    """The cell at dotted ``name`` below ``root``, or None."""
    cell = root
    for part in name.split("."):
        cell = cell._cells.get(part) if cell is not None else None  # pylint: disable=protected-access
    return cell


def replace_cell(root: nn.Cell, name: str, new: nn.Cell) -> None:
    """Put ``new`` at dotted ``name`` below ``root``."""
    parent_name, _, attr = name.rpartition(".")
    parent = root
    for part in parent_name.split(".") if parent_name else []:
        parent = parent._cells[part]  # pylint: disable=protected-access
    if isinstance(parent, nn.CellList):
        parent[int(attr)] = new
    else:
        setattr(parent, attr, new)


def share_tied_head(network: nn.Cell) -> None:
    """A tied lm_head quantized weight-only per channel equals the per-row int8 embedding: share it."""
    head = getattr(network, "lm_head", None)
    embed = getattr(getattr(network, "model", None), "tok_embeddings", None)
    config = getattr(network, "config", None)
    if not (isinstance(head, QuantLinear) and isinstance(embed, QuantEmbedding)
            and getattr(config, "tie_word_embeddings", False)):
        return
    spec = head.spec
    if spec.act or spec.group_size or not spec.weight_symmetric or not (head.quantized and embed.quantized):
        return
    head.weight = embed.embedding_weight
    head.weight_scale = embed.embedding_scale
