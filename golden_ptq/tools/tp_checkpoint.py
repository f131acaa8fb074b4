"""Merge per-rank tensor-parallel checkpoints into one full checkpoint, or split a full one.

    # rank_0/ .. rank_{N-1}/ (as save_quantized writes under msrun) -> one full folder
    python -m golden_ptq.tools.tp_checkpoint merge runs/a8w8c8_tp2 runs/a8w8c8_full

    # a full folder (TP size 1, or merged) -> rank_0/ .. rank_{N-1}/ for N ranks
    python -m golden_ptq.tools.tp_checkpoint split runs/a8w8c8_full runs/a8w8c8_tp4 --tp-size 4 \\
        [--num-heads 9 --num-kv-heads 3]     # needed when the input has no tp_layout.json

A merged folder reproduces the TP=1 checkpoint (same names, shapes, dtypes); ``quant_desc.json``
and ``ptq_config.yaml`` are copied from rank 0 (identical on every rank).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from typing import Dict, List, Optional

import numpy as np

from golden_ptq.io.checkpoint import read_checkpoint
from golden_ptq.io.tp_layout import (has_full_checkpoint, rank_folder, rank_folders, read_layout,
                                               write_layout)
from golden_ptq.parallel.context import TPContext
from golden_ptq.parallel.sharding import TPLayout, merge_states, split_state

#: The files of a saved folder that are the same on every rank and in the full form.
SIDE_FILES = ("quant_desc.json", "ptq_config.yaml", "network.yaml", "tokenizer.json", "tokenizer_config.json")


def _checkpoint_file(folder: str) -> str:
    from golden_ptq.deploy import find_checkpoint
    return find_checkpoint(folder)


def _format(checkpoint: str) -> str:
    """The format written for a checkpoint read from ``checkpoint`` (a sharded index writes one safetensors)."""
    return "ckpt" if checkpoint.endswith(".ckpt") else "safetensors"


def _write(arrays: Dict[str, np.ndarray], folder: str, fmt: str, source: str, layout: Dict[str, object]) -> str:
    """Write one folder set: the checkpoint, the side files of ``source``, and ``tp_layout.json``."""
    from golden_ptq.io.folder_set import write_folder_set

    def fill(tmp: str) -> None:
        path = os.path.join(tmp, f"model.{fmt}")
        if fmt == "ckpt":
            import mindspore as ms
            from mindspore import Tensor
            ms.save_checkpoint([{"name": k, "data": Tensor(np.ascontiguousarray(v))} for k, v in arrays.items()], path)
        else:
            from safetensors.numpy import save_file
            save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, path)
        for name in SIDE_FILES:
            if os.path.isfile(os.path.join(source, name)):
                shutil.copyfile(os.path.join(source, name), os.path.join(tmp, name))
        write_layout(tmp, layout)

    write_folder_set(folder, fill)
    return os.path.join(folder, f"model.{fmt}")


def merge(input_folder: str, output_folder: str) -> str:
    """Merge ``input_folder/rank_{i}`` into a full checkpoint in ``output_folder``; returns its path."""
    ranks = rank_folders(input_folder)
    if not ranks:
        raise FileNotFoundError(f"merge: {input_folder} holds no rank_<i> folders")
    if sorted(ranks) != list(range(len(ranks))):
        raise ValueError(f"merge: {input_folder} has rank folders {sorted(ranks)}; expected 0..{len(ranks) - 1}")
    layouts = [read_layout(path) for path in ranks.values()]
    if any(layout is None for layout in layouts):
        raise FileNotFoundError(f"merge: a rank folder of {input_folder} lacks tp_layout.json")
    sizes = {layout["tp_size"] for layout in layouts}
    if sizes != {len(ranks)}:
        raise ValueError(f"merge: {input_folder} has {len(ranks)} rank folders but tp_layout.json says TP size {sizes}")
    files = [_checkpoint_file(path) for path in ranks.values()]
    states = [read_checkpoint(path) for path in files]
    merged = merge_states(states, bool(layouts[0]["kv_split"]))
    layout = dict(layouts[0], tp_size=1, rank=0, kv_split=True)
    return _write(merged, output_folder, _format(files[0]), ranks[0], layout)


def split(input_folder: str, output_folder: str, tp_size: int, num_heads: Optional[int] = None,
          num_kv_heads: Optional[int] = None) -> List[str]:
    """Split the full checkpoint of ``input_folder`` into ``output_folder/rank_{i}``; returns their paths."""
    if not has_full_checkpoint(input_folder):
        raise FileNotFoundError(f"split: {input_folder} has no full model.ckpt / model.safetensors (merge first?)")
    saved = read_layout(input_folder) or {}
    num_heads = num_heads or saved.get("num_heads")
    num_kv_heads = num_kv_heads or saved.get("num_kv_heads")
    if not num_heads or not num_kv_heads:
        raise ValueError(f"split: {input_folder} has no tp_layout.json; give --num-heads and --num-kv-heads")
    if not 1 <= tp_size <= num_heads:
        raise ValueError(f"split: --tp-size {tp_size} must be between 1 and num_heads {num_heads}")
    source = _checkpoint_file(input_folder)
    full = read_checkpoint(source)
    wq = [a for n, a in full.items() if n.endswith("attention.wq.weight")]
    if not wq:
        raise ValueError(f"split: {source} has no '*.attention.wq.weight' to take head_dim from")
    geometry = TPLayout(TPContext(tp_size, 0), num_heads, num_kv_heads, wq[0].shape[0] // num_heads)
    kv_split = geometry.kv_split
    paths = []
    for rank in range(tp_size):
        state = split_state(full, geometry.with_rank(TPContext(tp_size, rank)))
        layout = {"tp_size": tp_size, "rank": rank, "num_heads": num_heads, "num_kv_heads": num_kv_heads,
                  "kv_split": kv_split}
        paths.append(_write(state, rank_folder(output_folder, rank), _format(source), input_folder, layout))
    return paths


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("merge", help="rank_<i> folders -> one full checkpoint folder")
    m.add_argument("input")
    m.add_argument("output")
    s = sub.add_parser("split", help="one full checkpoint folder -> rank_<i> folders")
    s.add_argument("input")
    s.add_argument("output")
    s.add_argument("--tp-size", type=int, required=True)
    s.add_argument("--num-heads", type=int)
    s.add_argument("--num-kv-heads", type=int)
    args = parser.parse_args(argv)
    if args.command == "merge":
        print(merge(args.input, args.output))
    else:
        print("\n".join(split(args.input, args.output, args.tp_size, args.num_heads, args.num_kv_heads)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
