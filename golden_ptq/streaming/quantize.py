"""``quantize_streamed``: PTQ of a model read from disk one decoder layer at a time.

Resident while it runs (see the streaming notes for measured figures): one decoder layer in
float plus its quantized copy, the activations of all calibration batches at one layer boundary
twice (inputs and outputs of the layer at hand; spilled to a memory map above ``spill_bytes``),
the per-call rotary tables and masks, and the method's state for that layer. The embedding and
``lm_head`` are units of their own, resident only while they are calibrated; a vocabulary table
that stays float is never whole in memory (the embedding holds the calibration tokens' rows, and
both tables are copied to the output block by block from a safetensors source).
"""
from __future__ import annotations

import gc
import json
import os
import shutil
from dataclasses import replace
from typing import Callable, Dict, Optional, Union

import numpy as np
from mindspore import nn

import golden_ptq.algorithm.guards as guards
from golden_ptq.algorithm import PTQ
from golden_ptq.algorithm.calibration_data import token_rows
from golden_ptq.algorithm.modules.rotation import rotation_in
from golden_ptq.algorithm.swap import check_target_names, plan_swaps, quant_targets
from golden_ptq.algorithm.tp_support import check_tp_supported
from golden_ptq.config import PTQConfig, PTQMode
from golden_ptq.config.model_config import LlamaConfig
from golden_ptq.io.atomic import atomic_write_text
from golden_ptq.io.folder_set import write_folder_set
from golden_ptq.io.sharded_writer import ShardedSafetensorsWriter
from golden_ptq.networks.llama import LlamaDecodeLayer, LlamaForCausalLM
from golden_ptq.networks.structure import LlamaStructure
from golden_ptq.parallel.context import TPContext
from golden_ptq.streaming.boundary import BoundaryStore
from golden_ptq.streaming.float_source import FloatSource, open_float_source
from golden_ptq.streaming.layers import NetworkShell, StreamedLayers

DEFAULT_SPILL_BYTES = 1 << 30   # a layer boundary above 1 GiB goes to a memory-mapped file
SPILL_FOLDER = ".activations"


def quantize_streamed(model_path: Union[str, FloatSource], config: Union[PTQConfig, str], datasets,
                      output: str, *,
                      progress: bool = True, model_config: Optional[LlamaConfig] = None,
                      max_position_embeddings: Optional[int] = None, tokenizer=None, calib_batch_size: int = 8,
                      spill_bytes: int = DEFAULT_SPILL_BYTES, measure_sensitivity: bool = False,
                      runtime: Optional[Dict[str, object]] = None, tp: Optional[TPContext] = None,
                      extra_files: Optional[Callable[[PTQ], Dict[str, Callable[[str], None]]]] = None) -> PTQ:
    """Quantize the float model at ``model_path`` (a Hugging Face or MindFormers-named safetensors
    folder / file / index, a MindSpore ``.ckpt``, or a GGUF file; or a FloatSource already opened)
    with ``config`` (a PTQConfig or its yaml) on ``datasets`` (as ``PTQ.apply`` takes them) and write the quantized folder ``output`` (the folder set of
    ``save_quantized``, weights as one safetensors shard per unit). Returns the PTQ that did it
    (``records``, ``summary()``, ``range_parms``, ...).

    The result is bit-identical to ``PTQ.apply`` on the same network in memory followed by
    ``save_quantized``. ``disable_level`` rollback is refused (a layer is written before later ones
    are measured); ``disable_names`` keeps named layers float. ``model_config`` describes a source
    without its own config (MindFormers-named safetensors or ckpt). ``tokenizer``: saved into the folder
    (default: the source's, when it has one). Under tensor parallelism (``tp``, default the
    communication group) each rank reads and writes its own slices into ``output/rank_{i}/``.
    ``extra_files(ptq)``: after calibration, name -> ``write(path)`` of files that belong to the set
    (a report), as ``save_quantized`` takes them.
    """
    config = PTQConfig.load(config) if isinstance(config, str) else config
    if not isinstance(config, PTQConfig):
        raise TypeError(f"quantize_streamed: config must be a PTQConfig or its yaml path, got {type(config).__name__}")
    guards.check_mode(config, datasets)
    if config.mode is not PTQMode.QUANTIZE:
        raise ValueError("quantize_streamed: the config's mode must be QUANTIZE")
    if config.rollback_level:
        raise ValueError(f"quantize_streamed: PTQConfig.disable_level {config.disable_level!r} is not supported when "
                         f"streaming (each layer is written before later layers are measured); keep layers float "
                         f"with disable_names, or quantize in memory with PTQ.apply")
    source = (model_path if isinstance(model_path, FloatSource)   # already opened (the CLI reads its config first)
              else open_float_source(model_path, model_config, max_position_embeddings))
    net_config = source.config
    rows = token_rows(datasets)
    guards.check_calibration_rows(rows, net_config.vocab_size, net_config.max_position_embeddings)
    from golden_ptq.parallel import init_from_launcher
    init_from_launcher()
    ptq = PTQ(config, calib_batch_size=calib_batch_size, measure_sensitivity=measure_sensitivity, progress=progress)
    rotation = next(iter(rotation_in(ptq.pipeline)), None)
    # a rotated network has an untied head (see golden_ptq.algorithm.modules.rotation)
    shell = NetworkShell(replace(net_config, tie_word_embeddings=False) if rotation is not None else net_config, tp)
    _check_before_reading(ptq, net_config, shell)
    if tokenizer is None:
        tokenizer = source.tokenizer()
    folder = output
    if shell.tp.parallel:
        from golden_ptq.io.tp_layout import rank_folder
        folder = rank_folder(output, shell.tp.rank)

    def fill(tmp: str) -> None:
        from golden_ptq.deploy import CONFIG_FILE, DESC_FILE, NETWORK_FILE, deploy_config, write_network_yaml
        writer = ShardedSafetensorsWriter(tmp)
        spill = os.path.join(tmp, SPILL_FOLDER)
        layers = StreamedLayers(source, ptq, LlamaStructure(), shell, writer, BoundaryStore(spill, spill_bytes),
                                rotation, token_ids=np.concatenate([row.reshape(-1) for row in rows]))
        ptq.records, ptq.range_parms, ptq.output_errors, ptq.rolled_back = [], {}, {}, []
        try:
            ptq.calibrate_source(layers, rows)
        finally:
            shutil.rmtree(spill, ignore_errors=True)
        ptq._rollback.clear()  # pylint: disable=protected-access
        ptq.check_quantizes_something()
        writer.finish()
        atomic_write_text(os.path.join(tmp, DESC_FILE), json.dumps(layers.desc, indent=1, sort_keys=True))
        deploy_config(ptq).dump(os.path.join(tmp, CONFIG_FILE))
        write_network_yaml(os.path.join(tmp, NETWORK_FILE), shell, runtime, tokenizer is not None)
        if tokenizer is not None:
            tokenizer.save(tmp)
        if shell.tp.parallel:
            from golden_ptq.io.tp_layout import layout_dict, write_layout
            write_layout(tmp, layout_dict(shell))
        for name, write in (extra_files(ptq) if extra_files else {}).items():
            write(os.path.join(tmp, name))

    gc.collect()
    gc.freeze()   # what exists now (the source's metadata, modules) is not rescanned by each layer's collection
    try:
        write_folder_set(folder, fill)
    finally:
        gc.unfreeze()
    if shell.tp.parallel:  # every rank's set is in place before any rank goes on
        from golden_ptq.parallel import barrier
        barrier(shell.tp)
    return ptq


class _LayerView(nn.Cell):
    """A decoder layer skeleton standing in for the network in the up-front TP check."""

    def __init__(self, layer: nn.Cell, tp: TPContext):
        super().__init__()
        self.layer, self.tp = layer, tp


def _check_before_reading(ptq: PTQ, net_config: LlamaConfig, shell: NetworkShell) -> None:
    """What ``PTQ.apply`` checks before touching a network, from the layer names alone: names in the
    config match layers, something is quantized, the settings are TP-correct."""
    tiny = replace(net_config, vocab_size=2, hidden_size=2 * net_config.num_heads, intermediate_size=2,
                   extra=dict(net_config.extra))
    skeleton = LlamaForCausalLM(tiny, tp=TPContext())   # same cell names, next to no memory
    targets = quant_targets(skeleton, ptq.registry)
    check_target_names(ptq.config, [name for name, _, _ in targets])
    if all(spec.skip_reason for _, _, _, spec in plan_swaps(ptq.config, targets)):
        reasons = sorted({spec.skip_reason for _, _, _, spec in plan_swaps(ptq.config, targets)})
        raise ValueError(f"PTQ.apply: the config quantizes no layer of this network ({len(targets)} "
                         f"candidates, all kept float: {reasons})")
    if shell.tp.parallel:
        check_tp_supported(ptq, _LayerView(LlamaDecodeLayer(net_config, shell.tp_layout), shell.tp))
