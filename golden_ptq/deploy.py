"""A quantized model on disk, as one folder that loads on its own.

``save_quantized(network, ptq, folder, tokenizer=...)`` after QUANTIZE writes, as one consistent
set (see :mod:`golden_ptq.io.folder_set`)::

    model.safetensors   the quantized parameters (or model.ckpt)
    quant_desc.json     every parameter's quant type (W8A8, W8A16, C8, FLOAT, ...)
    ptq_config.yaml     the DEPLOY config that rebuilds the quantized structure
    network.yaml        the network's shape (and run settings): no float weights needed to deploy
                        (golden_ptq's own network; another family, e.g. MindFormers', loads through its helper)
    tokenizer.json, tokenizer_config.json   when a tokenizer is given
    manifest.json       size and SHA-256 of every file, checked on load

``load_quantized(folder)`` in any later process builds the network from ``network.yaml``, applies
PTQ in DEPLOY mode with the saved settings and loads the checkpoint strictly. The weights may
also be sharded (``model.safetensors.index.json`` + ``model-0000i-of-0000N.safetensors``, as the
streaming quantizer writes them).

DEPLOY memory: building the network allocates no weights (parameters are placeholders until
their tensors arrive), the quantized cells declare their int8 parameters without allocating them,
and safetensors are read one tensor at a time, each replacing its placeholder. The process holds
the deployed parameters once -- int8 codes (1 byte per weight of a quantized Linear), their
scales, and the float parameters (embedding, norms, unquantized layers, 4 bytes per value) --
plus one tensor in flight and the run-time buffers.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Callable, Dict, Optional, Tuple, Union

import yaml

from golden_ptq.algorithm import PTQ
from golden_ptq.algorithm.modules.rotation import rotation_in
from golden_ptq.config import PTQConfig, PTQMode
from golden_ptq.config.model_config import LlamaConfig
from golden_ptq.io.checkpoint import load_checkpoint, load_full_checkpoint, save_checkpoint
from golden_ptq.io.folder_set import FolderSetError, recover, verify_folder_set, write_folder_set
from golden_ptq.io.tp_layout import WEIGHT_FILES
from golden_ptq.networks.helper import NetworkHelper

CONFIG_FILE = "ptq_config.yaml"
DESC_FILE = "quant_desc.json"
NETWORK_FILE = "network.yaml"


def save_quantized(network, ptq: PTQ, folder: str, fmt: str = "safetensors", tokenizer=None,
                   runtime: Optional[Dict[str, object]] = None,
                   extra_files: Optional[Dict[str, Callable[[str], None]]] = None,
                   weights: bool = True) -> str:
    """Write the folder (see the module docstring); returns the checkpoint path.

    ``extra_files``: name -> ``write(path)`` for files that belong to the same set (a report);
    ``weights=False`` leaves out the checkpoint (a caller that writes the weights another way).
    Under tensor parallelism each rank writes its own set to ``folder/rank_{i}/`` with ``tp_layout.json``.
    """
    if fmt not in ("ckpt", "safetensors"):
        raise ValueError(f"save_quantized: fmt {fmt!r} is not one of ['ckpt', 'safetensors']")
    tp = getattr(network, "tp", None)
    parallel = tp is not None and tp.parallel
    if parallel:
        from golden_ptq.io.tp_layout import rank_folder
        folder = rank_folder(folder, tp.rank)
    checkpoint = os.path.join(folder, f"model.{fmt}")

    def fill(tmp: str) -> None:
        if weights:
            save_checkpoint(network, os.path.join(tmp, f"model.{fmt}"), desc_path=os.path.join(tmp, DESC_FILE))
        else:
            from golden_ptq.io.atomic import atomic_write_text
            from golden_ptq.io.checkpoint import quant_desc
            import json
            atomic_write_text(os.path.join(tmp, DESC_FILE), json.dumps(quant_desc(network), indent=1, sort_keys=True))
        deploy_config(ptq).dump(os.path.join(tmp, CONFIG_FILE))
        if isinstance(getattr(network, "config", None), LlamaConfig):  # golden_ptq's own network
            write_network_yaml(os.path.join(tmp, NETWORK_FILE), network, runtime, tokenizer is not None)
        if tokenizer is not None:
            tokenizer.save(tmp)
        if parallel:
            from golden_ptq.io.tp_layout import layout_dict, write_layout
            write_layout(tmp, layout_dict(network))
        for name, write in (extra_files or {}).items():
            write(os.path.join(tmp, name))

    write_folder_set(folder, fill)
    if parallel:  # every rank's set is in place before any rank goes on (e.g. to load the folder)
        from golden_ptq.parallel import barrier
        barrier(tp)
    return checkpoint


def write_network_yaml(path: str, network, runtime: Optional[Dict[str, object]], has_tokenizer: bool) -> None:
    """The NetworkHelper config that rebuilds ``network``'s structure (``source: saved``)."""
    config = network.config
    model = {"source": "saved", "config": config.to_dict()}
    if has_tokenizer:
        model["tokenizer"] = "."
    data = {"model": model}
    if runtime:
        data["runtime"] = dict(runtime)
    with open(path, "w", encoding="utf-8") as handle:
        yaml.safe_dump(data, handle, sort_keys=False)


def deploy_config(ptq: PTQ) -> PTQConfig:
    """The DEPLOY-mode config that rebuilds ``ptq``'s quantized network.

    DEPLOY cannot recompute range_parms, so layers that ``disable_level`` rolled back are written
    into ``disable_names`` (and ``disable_level`` becomes ``'L0'``): they stay float there too.
    """
    rotations = rotation_in(ptq.pipeline)
    if bool(rotations) != (ptq.config.rotation_method is not None):
        raise ValueError(f"save_quantized: PTQConfig.rotation is {ptq.config.rotation!r} but the PTQ's pipeline has "
                         f"{len(rotations)} rotation module(s); DEPLOY rebuilds the network from the config, so "
                         f"they must agree (use the default pipeline, or set rotation to match)")
    rolled = [name for name in ptq.rolled_back if name not in ptq.config.disable_names]
    return dataclasses.replace(ptq.config, mode=PTQMode.DEPLOY, disable_names=list(ptq.config.disable_names) + rolled,
                               disable_level="L0")


def find_checkpoint(folder: str) -> str:
    """The one weight file of a saved folder (``model.safetensors``, ``model.ckpt``, or the index of
    sharded ``model-0000i-of-0000N.safetensors``); none or more than one of them is an error."""
    found = [os.path.join(folder, name) for name in WEIGHT_FILES if os.path.isfile(os.path.join(folder, name))]
    if len(found) > 1:
        names = " and ".join(os.path.basename(path) for path in found)
        raise FolderSetError(f"{folder}: holds both {names}; which one is meant is ambiguous — remove the stale one")
    if not found:
        raise FileNotFoundError(f"{folder}: no {' or '.join(WEIGHT_FILES)}; was it written by save_quantized?")
    return found[0]


def load_quantized(folder: Optional[str] = None, helper: Optional[Union[NetworkHelper, str]] = None,
                   quant_config: Optional[Union[PTQConfig, str]] = None,
                   checkpoint: Optional[str] = None, verify: bool = True) -> Tuple[object, PTQ]:
    """(DEPLOY-mode network with the quantized checkpoint loaded, its PTQ).

    ``folder`` alone is enough for a folder written by :func:`save_quantized`: its files are checked
    against the manifest (``verify``), the network is built from its ``network.yaml``. ``helper``
    (a NetworkHelper or its yaml) overrides how the network is built. Without a folder give
    ``quant_config`` (a PTQConfig or its yaml; its mode is switched to DEPLOY) and ``checkpoint``.
    Under tensor parallelism a folder may hold the full checkpoint (each rank loads its slice) or
    per-rank ones of the same TP size; a ``checkpoint`` file is taken as full.
    """
    from golden_ptq.io.tp_layout import deploy_source
    from golden_ptq.parallel import init_from_launcher
    if folder is None and (quant_config is None or checkpoint is None):
        raise ValueError("load_quantized needs a folder, or both quant_config and checkpoint")
    full = True
    if folder is not None:
        if not os.path.isdir(folder):
            recover(folder)  # a writer killed mid-swap leaves the complete old set beside it
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"quantized model folder {folder!r} does not exist")
        source, full = deploy_source(folder, init_from_launcher()) if checkpoint is None else (folder, True)
        if verify and checkpoint is None:
            verify_folder_set(source)
        quant_config = quant_config or os.path.join(source, CONFIG_FILE)
        checkpoint = checkpoint or find_checkpoint(source)
        if helper is None:
            helper = os.path.join(source, NETWORK_FILE)
            if not os.path.isfile(helper):
                raise FileNotFoundError(f"{source}: no {NETWORK_FILE}; pass the network's helper (or its yaml)")
    if helper is None:
        raise ValueError("load_quantized without a folder needs helper= (how to build the network)")
    helper = NetworkHelper(helper) if isinstance(helper, str) else helper
    network = helper.create_network()
    config = PTQConfig.load(quant_config) if isinstance(quant_config, str) else quant_config
    config = dataclasses.replace(config, mode=PTQMode.DEPLOY)
    ptq = PTQ(config)
    ptq.apply(network)
    ptq.convert(network)
    (load_full_checkpoint if full else load_checkpoint)(checkpoint, network)
    return network, ptq


def build_network(network_config: Optional[str], quant_config: Optional[str] = None, quant_ckpt: Optional[str] = None):
    """(network, tokenizer) for the samples: float, or quantized when ``quant_ckpt`` is given (a
    folder written by :func:`save_quantized`, or a checkpoint file together with ``quant_config``).

    Launched by msrun, the communication group is initialised first and the network is tensor parallel.
    """
    from golden_ptq.networks import helper as helper_module  # looked up per call: tests swap it
    from golden_ptq.parallel import init_from_launcher

    init_from_launcher()
    if quant_ckpt and os.path.isdir(quant_ckpt):
        helper = helper_module.NetworkHelper(network_config) if network_config else None
        network, _ = load_quantized(quant_ckpt, helper, quant_config=quant_config)
        tokenizer_source = helper or _folder_helper(quant_ckpt)
        return network, tokenizer_source.create_tokenizer()
    helper = helper_module.NetworkHelper(network_config or default_network_config())
    if not (quant_config or quant_ckpt):
        return helper.create_network(), helper.create_tokenizer()
    if quant_config and quant_ckpt:
        network, _ = load_quantized(helper=helper, quant_config=quant_config, checkpoint=quant_ckpt)
        return network, helper.create_tokenizer()
    raise ValueError("--quant-ckpt is needed: a folder written by save_quantized, or a checkpoint file with "
                     "--quant-config")


def _folder_helper(folder: str) -> NetworkHelper:
    from golden_ptq.io.tp_layout import deploy_source
    from golden_ptq.parallel import current_context
    source, _ = deploy_source(folder, current_context())
    return NetworkHelper(os.path.join(source, NETWORK_FILE))


def default_network_config() -> str:
    """Path of the packaged network yaml of the embedded default model."""
    from importlib import resources
    return str(resources.files("golden_ptq").joinpath("configs", "smollm2_135m.yaml"))


def shipped_quant_configs() -> list:
    """Names of the PTQConfig yamls that ship with golden_ptq (``golden_ptq/configs/ptq/``)."""
    from importlib import resources
    folder = resources.files("golden_ptq").joinpath("configs", "ptq")
    return sorted(entry.name[:-5] for entry in folder.iterdir() if entry.name.endswith(".yaml"))


def packaged_quant_config(name: str) -> str:
    """A ``PTQConfig`` yaml path: an existing file, or the name of a shipped config (``a8w8_dynamic``)."""
    from importlib import resources
    if os.path.isfile(name):
        return name
    folder = resources.files("golden_ptq").joinpath("configs", "ptq")
    stem = os.path.basename(name)
    stem = stem[:-5] if stem.endswith(".yaml") else stem
    candidate = folder.joinpath(f"{stem}.yaml")
    if candidate.is_file():
        return str(candidate)
    raise FileNotFoundError(f"quant config {name!r} is neither a file nor a shipped config; shipped: "
                            f"{shipped_quant_configs()}")


def add_network_arguments(parser) -> None:
    """The command-line options every evaluation sample shares."""
    parser.add_argument("--network-config", default=None,
                        help="network yaml (default: the embedded SmolLM2, or the saved folder's network.yaml)")
    parser.add_argument("--quant-config", help="PTQConfig yaml the checkpoint was quantized with")
    parser.add_argument("--quant-ckpt", help="a folder written by save_quantized, or a checkpoint file")
    parser.add_argument("--output", help="also write the metrics to this json file")


def write_metrics(result: dict, path: Optional[str]) -> None:
    """Write ``result`` as json to ``path`` (atomically), when a path is given (rank 0 only under msrun)."""
    from golden_ptq.parallel import current_context
    if not path or current_context().rank != 0:
        return
    import json
    from golden_ptq.io.atomic import atomic_write_text
    atomic_write_text(path, json.dumps(result, indent=2))
