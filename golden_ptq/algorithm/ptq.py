"""``PTQ``: post-training quantization of a network, layer by layer, through a pipeline of modules."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from mindspore import nn

from golden_ptq.algorithm.calibration_data import length_batches, token_rows
from golden_ptq.algorithm.comp_algo import CompAlgo
from golden_ptq.algorithm.modules import AlgoModule, LayerContext, QuantizeModule, SmoothModule
from golden_ptq.config import OutliersSuppressionType, PTQConfig, PTQMode, QuantGranularity
from golden_ptq.networks.llama import sync_parameter_names
from golden_ptq.networks.structure import LlamaStructure
from golden_ptq.quant_cells import LayerQuantSpec, QuantCell, QuantCellRegistry, default_registry
from golden_ptq.quant_cells.embedding import QuantEmbedding
from golden_ptq.quant_cells.linear import QuantLinear


@dataclass
class LayerRecord:
    name: str
    layer_type: str
    spec: LayerQuantSpec

    @property
    def became(self) -> str:
        if self.spec.skip_reason:
            return f"FLOAT ({self.spec.skip_reason})"
        return self.spec.label


class PTQ(CompAlgo):
    """Golden Stick's PTQ on any MindSpore CPU.

    QUANTIZE: ``apply(network, network_helper, datasets)`` swaps every registered layer type for its
    quantized Cell, then calibrates decoder layer by decoder layer: the first layer's inputs are
    captured once, each layer is observed on them, the pipeline (e.g. Smooth, Quantize) runs, and
    the *quantized* layer's outputs feed the next layer, so errors propagate as in deployment.
    ``convert`` checks that every quantized Cell was calibrated and drops calibration state.

    DEPLOY: ``apply(network)`` builds the same quantized structure with placeholder parameters for
    a checkpoint saved in QUANTIZE mode to fill.
    """

    def __init__(self, config: Optional[PTQConfig] = None, registry: Optional[QuantCellRegistry] = None,
                 pipeline: Optional[Sequence[AlgoModule]] = None, structure=None, calib_batch_size: int = 8):
        self.config = config if config is not None else PTQConfig()
        if not isinstance(self.config, PTQConfig):
            raise TypeError(f"PTQ(config=...) needs a PTQConfig, got {type(self.config).__name__}")
        self.config.validate()
        self.registry = registry if registry is not None else default_registry()
        self.pipeline: List[AlgoModule] = list(pipeline) if pipeline is not None else self.default_pipeline(self.config)
        self.structure = structure
        self.calib_batch_size = calib_batch_size
        self.records: List[LayerRecord] = []
        self.calibration_seconds: Optional[float] = None
        self.calibration_tokens = 0

    @staticmethod
    def default_pipeline(config: PTQConfig) -> List[AlgoModule]:
        modules: List[AlgoModule] = []
        if config.outliers_suppression is OutliersSuppressionType.SMOOTH:
            modules.append(SmoothModule(alpha=float(config.arg("smooth_alpha"))))
        modules.append(QuantizeModule())
        return modules

    # ----- per-layer decisions ------------------------------------------------------------------
    def layer_spec(self, name: str, kind: str) -> LayerQuantSpec:
        cfg = self.config
        blocked = [entry for entry in cfg.opname_blacklist if entry in name]
        if blocked:
            return LayerQuantSpec(skip_reason=f"opname_blacklist '{blocked[0]}'")
        if kind == "kvcache":
            if cfg.kvcache_quant_dtype is None:
                return LayerQuantSpec(skip_reason="kvcache_quant_dtype=None")
            return LayerQuantSpec(kvcache=True)
        if kind == "embedding":
            if cfg.embedding_quant_dtype is None:
                return LayerQuantSpec(skip_reason="embedding_quant_dtype=None")
            return LayerQuantSpec(weight=True)
        if cfg.weight_quant_dtype is None:
            return LayerQuantSpec(skip_reason="weight_quant_dtype=None")
        return LayerQuantSpec(weight=True, act=cfg.act_quant_dtype is not None,
                              act_dynamic=cfg.act_quant_granularity is QuantGranularity.PER_TOKEN,
                              act_symmetric=cfg.activation_symmetric, weight_symmetric=cfg.weight_symmetric,
                              group_size=cfg.group_size)

    # ----- apply / convert ----------------------------------------------------------------------
    def apply(self, network: nn.Cell, network_helper=None, datasets=None) -> nn.Cell:
        structure = self.structure or getattr(network_helper, "structure", None) or LlamaStructure()
        self._swap_in_quant_cells(network)
        if self.config.mode is PTQMode.DEPLOY:
            for cell in self._quant_cells(network).values():
                cell.deploy_placeholders()
        else:
            self._calibrate(network, structure, token_rows(datasets))
        self._share_tied_head(network)
        sync_parameter_names(network)
        return network

    def convert(self, network: nn.Cell, *args, **kwargs) -> nn.Cell:
        cells = self._quant_cells(network)
        if not cells:
            raise RuntimeError("PTQ.convert: the network has no quantized cells; call apply(network, ...) first")
        missing = [name for name, cell in cells.items() if not cell.quantized]
        if missing:
            raise RuntimeError(f"PTQ.convert: {len(missing)} layer(s) were never calibrated, first "
                               f"'{missing[0]}'; did the calibration data reach them?")
        for cell in cells.values():  # calibration state is not part of the deployed network
            for attr in ("input_observer", "observers"):
                if hasattr(cell, attr):
                    setattr(cell, attr, None)
        sync_parameter_names(network)
        return network

    def summary(self) -> str:
        if not self.records:
            return "PTQ.summary: apply() has not run yet"
        width = max(len(r.name) for r in self.records)
        lines = [f"{'layer'.ljust(width)}  {'type':<10}  became", "-" * (width + 40)]
        lines += [f"{r.name.ljust(width)}  {r.layer_type:<10}  {r.became}" for r in self.records]
        counts: Dict[str, int] = {}
        for r in self.records:
            key = "FLOAT" if r.spec.skip_reason else r.spec.label
            counts[key] = counts.get(key, 0) + 1
        lines.append("total: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
        if self.calibration_seconds is not None:
            lines.append(f"calibration: {self.calibration_tokens} tokens in {self.calibration_seconds:.1f} s")
        return "\n".join(lines)

    # ----- internals ----------------------------------------------------------------------------
    def _swap_in_quant_cells(self, network: nn.Cell) -> None:
        if self._quant_cells(network):
            raise RuntimeError("PTQ.apply: the network already holds quantized cells; build a fresh float network")
        targets: List[Tuple[str, nn.Cell, Dict]] = []
        for name, cell in network.cells_and_names():
            entry = self.registry.lookup(cell)
            if entry is not None and name:
                targets.append((name, cell, entry))
        unmatched = [b for b in self.config.opname_blacklist if not any(b in name for name, _, _ in targets)]
        if unmatched:
            examples = ", ".join(name for name, _, _ in targets[:4])
            raise ValueError(f"PTQConfig.opname_blacklist entry '{unmatched[0]}' matches no quantizable layer; "
                             f"names look like: {examples}")
        self.records = []
        replaced: List[str] = []
        for name, cell, entry in targets:
            if any(name.startswith(outer + ".") for outer in replaced):
                continue  # inside a layer that is itself quantized as a whole (a user's registered Cell)
            spec = self.layer_spec(name, entry["kind"])
            self.records.append(LayerRecord(name, type(cell).__name__, spec))
            if not spec.skip_reason:
                _replace_cell(network, name, entry["quant_type"](cell, spec))
                replaced.append(name)
        if not any(not r.spec.skip_reason for r in self.records):
            reasons = sorted({r.spec.skip_reason for r in self.records})
            raise ValueError(f"PTQ.apply: the config quantizes no layer of this network ({len(self.records)} "
                             f"candidates, all kept float: {reasons})")
        sync_parameter_names(network)

    @staticmethod
    def _quant_cells(network: nn.Cell) -> Dict[str, QuantCell]:
        return {name: cell for name, cell in network.cells_and_names() if isinstance(cell, QuantCell)}

    def _calibrate(self, network: nn.Cell, structure, rows: List[np.ndarray]) -> None:
        start = time.time()
        self.calibration_tokens = int(sum(r.size for r in rows))
        batches = length_batches(rows, self.calib_batch_size)
        layers = structure.decoder_layers(network)
        in_layers = {f"{lname}.{rel}" for lname, layer in layers for rel, c in layer.cells_and_names()
                     if isinstance(c, QuantCell)}
        outside = {n: c for n, c in self._quant_cells(network).items() if n not in in_layers}
        embeddings = {n: c for n, c in outside.items() if isinstance(c, QuantEmbedding)}
        self._run_pipeline(LayerContext("embedding", None, embeddings, structure, network))
        states = [structure.layer_inputs(network, batch) for batch in batches]
        hidden = [h for h, _ in states]
        inputs = [i for _, i in states]
        for lname, layer in layers:
            cells = {rel: c for rel, c in layer.cells_and_names() if isinstance(c, QuantCell)}
            if cells:
                self._observe(cells, lambda: [structure.run_layer(layer, h, i) for h, i in zip(hidden, inputs)])
                self._run_pipeline(LayerContext(lname, layer, cells, structure, network))
            hidden = [structure.run_layer(layer, h, i) for h, i in zip(hidden, inputs)]
        heads = {n: c for n, c in outside.items() if n not in embeddings}
        if heads:
            needs_data = [c for c in heads.values() if isinstance(c, QuantLinear) and c.spec.act
                          and not c.spec.act_dynamic]
            if needs_data:
                head_inputs = [structure.head_input(network, h) for h in hidden]
                self._observe(heads, lambda: [c(x) for c in needs_data for x in head_inputs])
            self._run_pipeline(LayerContext("head", None, heads, structure, network))
        self.calibration_seconds = time.time() - start

    @staticmethod
    def _observe(cells: Dict[str, QuantCell], run) -> None:
        for cell in cells.values():
            cell.observing = True
        try:
            run()
        finally:
            for cell in cells.values():
                cell.observing = False

    def _run_pipeline(self, ctx: LayerContext) -> None:
        if not ctx.quant_cells:
            return
        for module in self.pipeline:
            module.process(ctx)

    @staticmethod
    def _share_tied_head(network: nn.Cell) -> None:
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


def _replace_cell(network: nn.Cell, name: str, new: nn.Cell) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = network
    for part in parent_name.split(".") if parent_name else []:
        parent = parent._cells[part]  # pylint: disable=protected-access
    if isinstance(parent, nn.CellList):
        parent[int(attr)] = new
    else:
        setattr(parent, attr, new)
