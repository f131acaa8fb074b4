"""A quantized model on disk: checkpoint + ``quant_desc.json`` + the ``ptq_config.yaml`` that rebuilds it.

``save_quantized(network, ptq, folder)`` after QUANTIZE; ``load_quantized(helper, folder)`` in any
later process builds the float network, applies PTQ in DEPLOY mode with the saved settings and
loads the checkpoint strictly.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Optional, Tuple, Union

from golden_ptq.algorithm import PTQ
from golden_ptq.io.checkpoint import load_checkpoint, load_full_checkpoint, save_checkpoint
from golden_ptq.config import PTQConfig, PTQMode
from golden_ptq.networks.helper import NetworkHelper

CONFIG_FILE = "ptq_config.yaml"


def save_quantized(network, ptq: PTQ, folder: str, fmt: str = "ckpt") -> str:
    """Write ``folder/model.<fmt>``, ``quant_desc.json`` and ``ptq_config.yaml``; returns the checkpoint path.

    Under tensor parallelism each rank writes its shard to ``folder/rank_{i}/`` with ``tp_layout.json``.
    """
    if fmt not in ("ckpt", "safetensors"):
        raise ValueError(f"save_quantized: fmt {fmt!r} is not one of ['ckpt', 'safetensors']")
    tp = getattr(network, "tp", None)
    if tp is not None and tp.parallel:
        from golden_ptq.io.tp_layout import layout_dict, rank_folder, write_layout
        folder = rank_folder(folder, tp.rank)
        os.makedirs(folder, exist_ok=True)
        write_layout(folder, layout_dict(network))
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"model.{fmt}")
    save_checkpoint(network, path)
    deploy_config(ptq).dump(os.path.join(folder, CONFIG_FILE))
    return path


def deploy_config(ptq: PTQ) -> PTQConfig:
    """The DEPLOY-mode config that rebuilds ``ptq``'s quantized network.

    DEPLOY cannot recompute range_parms, so layers that ``disable_level`` rolled back are written
    into ``disable_names`` (and ``disable_level`` becomes ``'L0'``): they stay float there too.
    """
    rolled = [name for name in ptq.rolled_back if name not in ptq.config.disable_names]
    return dataclasses.replace(ptq.config, mode=PTQMode.DEPLOY, disable_names=list(ptq.config.disable_names) + rolled,
                               disable_level="L0")


def find_checkpoint(folder: str) -> str:
    for name in ("model.ckpt", "model.safetensors"):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(f"{folder}: no model.ckpt or model.safetensors; was it written by save_quantized?")


def load_quantized(helper: Union[NetworkHelper, str], folder: Optional[str] = None,
                   quant_config: Optional[Union[PTQConfig, str]] = None,
                   checkpoint: Optional[str] = None) -> Tuple[object, PTQ]:
    """DEPLOY-mode network with the quantized checkpoint loaded.

    Give ``folder`` (as written by :func:`save_quantized`), or ``quant_config`` (a PTQConfig or its
    yaml; its mode is switched to DEPLOY) plus ``checkpoint``. Under tensor parallelism a folder may
    hold the full checkpoint (each rank loads its slice) or per-rank ones of the same TP size; a
    ``checkpoint`` file is taken as full.
    """
    from golden_ptq.io.tp_layout import deploy_source
    helper = NetworkHelper(helper) if isinstance(helper, str) else helper
    if quant_config is None and checkpoint is None and folder is None:
        raise ValueError("load_quantized needs a folder, or both quant_config and checkpoint")
    network = helper.create_network()
    full = True
    if folder is not None:
        source, full = deploy_source(folder, network) if checkpoint is None else (folder, True)
        quant_config = quant_config or os.path.join(source, CONFIG_FILE)
        checkpoint = checkpoint or find_checkpoint(source)
    if quant_config is None or checkpoint is None:
        raise ValueError("load_quantized needs a folder, or both quant_config and checkpoint")
    config = PTQConfig.load(quant_config) if isinstance(quant_config, str) else quant_config
    config = dataclasses.replace(config, mode=PTQMode.DEPLOY)
    ptq = PTQ(config)
    ptq.apply(network)
    ptq.convert(network)
    (load_full_checkpoint if full else load_checkpoint)(checkpoint, network)
    return network, ptq


def build_network(network_config: str, quant_config: Optional[str] = None, quant_ckpt: Optional[str] = None):
    """(network, tokenizer) for the samples: float, or quantized when ``quant_ckpt`` is given (a
    checkpoint file together with ``quant_config``, or a folder written by :func:`save_quantized`).

    Launched by msrun, the communication group is initialised first and the network is tensor parallel.
    """
    from golden_ptq.networks import helper as helper_module  # looked up per call: tests swap it
    from golden_ptq.parallel import init_from_launcher

    init_from_launcher()
    helper = helper_module.NetworkHelper(network_config)
    if not (quant_config or quant_ckpt):
        return helper.create_network(), helper.create_tokenizer()
    if quant_ckpt and os.path.isdir(quant_ckpt):
        network, _ = load_quantized(helper, quant_ckpt, quant_config=quant_config)
    elif quant_config and quant_ckpt:
        network, _ = load_quantized(helper, quant_config=quant_config, checkpoint=quant_ckpt)
    else:
        raise ValueError("--quant-ckpt is needed: a checkpoint file with --quant-config, or a save_quantized folder")
    return network, helper.create_tokenizer()


def add_network_arguments(parser) -> None:
    """The command-line options every evaluation sample shares."""
    parser.add_argument("--network-config", default="configs/smollm2_135m.yaml",
                        help="network yaml (default: %(default)s)")
    parser.add_argument("--quant-config", help="PTQConfig yaml the checkpoint was quantized with")
    parser.add_argument("--quant-ckpt", help="quantized checkpoint file, or a folder written by save_quantized")
    parser.add_argument("--output", help="also write the metrics to this json file")


def write_metrics(result: dict, path: Optional[str]) -> None:
    """Write ``result`` as json to ``path`` (atomically), when a path is given (rank 0 only under msrun)."""
    from golden_ptq.parallel import current_context
    if not path or current_context().rank != 0:
        return
    import json
    from golden_ptq.io.atomic import atomic_write_text
    atomic_write_text(path, json.dumps(result, indent=2))
