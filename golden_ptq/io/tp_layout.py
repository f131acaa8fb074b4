"""Per-rank quantized checkpoint folders, and finding the right form for a tensor-parallel DEPLOY.

``save_quantized`` at TP size N writes ``folder/rank_{i}/`` (``model.ckpt``, ``quant_desc.json``,
``ptq_config.yaml``) plus ``tp_layout.json`` (size, rank, head counts, whether KV heads are
split) per rank. ``golden_ptq.tools.tp_checkpoint`` merges such a folder into the full form
(what TP size 1 writes) and splits a full one for another size.
"""
from __future__ import annotations

import json
import os
from typing import Dict, Optional, Tuple

LAYOUT_FILE = "tp_layout.json"
RANK_PREFIX = "rank_"


def rank_folder(folder: str, rank: int) -> str:
    return os.path.join(folder, f"{RANK_PREFIX}{rank}")


def layout_dict(network) -> Dict[str, object]:
    """What ``tp_layout.json`` records about ``network``'s sharding."""
    layout = network.tp_layout
    return {"tp_size": layout.ctx.size, "rank": layout.ctx.rank, "num_heads": layout.num_heads,
            "num_kv_heads": layout.num_kv_heads, "kv_split": layout.kv_split}


def write_layout(folder: str, layout: Dict[str, object]) -> None:
    from golden_ptq.io.atomic import atomic_write_text
    atomic_write_text(os.path.join(folder, LAYOUT_FILE), json.dumps(layout, indent=1, sort_keys=True))


def read_layout(folder: str) -> Optional[Dict[str, object]]:
    path = os.path.join(folder, LAYOUT_FILE)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def rank_folders(folder: str) -> Dict[int, str]:
    """``rank -> path`` of the ``rank_{i}`` sub-folders of ``folder`` (empty when it holds none)."""
    found = {}
    if os.path.isdir(folder):
        for entry in os.listdir(folder):
            if entry.startswith(RANK_PREFIX) and entry[len(RANK_PREFIX):].isdigit():
                found[int(entry[len(RANK_PREFIX):])] = os.path.join(folder, entry)
    return dict(sorted(found.items()))


#: The weight files a saved folder may hold (exactly one of them): one file, or the index of sharded safetensors.
WEIGHT_FILES = ("model.safetensors", "model.ckpt", "model.safetensors.index.json")


def has_full_checkpoint(folder: str) -> bool:
    """Whether ``folder`` holds weights itself (one file, or the index of sharded safetensors)."""
    return any(os.path.isfile(os.path.join(folder, name)) for name in WEIGHT_FILES)


def deploy_source(folder: str, ctx) -> Tuple[str, bool]:
    """The folder to DEPLOY this rank (``ctx``: the TPContext) from, and whether it holds the full (unsplit) checkpoint.

    A full checkpoint in ``folder`` serves every TP size (each rank slices it); else ``folder`` must
    hold per-rank folders written at this TP size.
    """
    if has_full_checkpoint(folder):
        return folder, True
    ranks = rank_folders(folder)
    if not ranks:
        raise FileNotFoundError(f"{folder}: no {' / '.join(WEIGHT_FILES)} and no {RANK_PREFIX}<i> folders; was it "
                                f"written by save_quantized?")
    size, rank = ctx.size, ctx.rank
    saved = read_layout(next(iter(ranks.values()))) or {}
    if len(ranks) != size or saved.get("tp_size") != size:
        raise ValueError(f"{folder}: holds per-rank checkpoints for TP size {saved.get('tp_size', len(ranks))}, "
                         f"this run has TP size {size}; convert with `python -m golden_ptq.tools.tp_checkpoint "
                         f"merge {folder} OUT` (then split OUT for size {size} if wanted)")
    return ranks[rank], False
