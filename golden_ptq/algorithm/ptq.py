"""``PTQ``: post-training quantization of a network, layer by layer, through a pipeline of modules.

The parts live beside it: spec resolution and cell swapping (:mod:`.swap`), the layer loop over a
layer source (:mod:`.driver`), the float Cells kept for rollback (:mod:`.rollback_set`) and the
report (:mod:`.report`). PTQ is the public class tying them together, as Golden Stick's API has it.
"""
from __future__ import annotations

import logging
import time
from typing import Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
from mindspore import nn

import golden_ptq.algorithm.guards as guards
from golden_ptq.algorithm.calibration_data import token_rows
from golden_ptq.algorithm.comp_algo import CompAlgo
from golden_ptq.algorithm.driver import CalibrationDriver, InMemoryLayers, LayerSource
from golden_ptq.algorithm.modules import (AlgoModule, LayerContext, MethodRegistry, QuantizeModule,
                                          default_method_registry)
from golden_ptq.algorithm.report import LayerRecord, scheme_counts, summary_text
from golden_ptq.algorithm.rollback_set import RollbackSet, sensitivity_ranking
from golden_ptq.algorithm.swap import (Target, check_target_names, layer_spec, plan_swaps, quant_targets,
                                       replace_cell, share_tied_head)
from golden_ptq.algorithm.tp_support import check_tp_supported
from golden_ptq.config import PTQConfig, PTQMode
from golden_ptq.networks.llama import sync_parameter_names
from golden_ptq.networks.structure import LlamaStructure
from golden_ptq.quant_cells import LayerQuantSpec, QuantCell, QuantCellRegistry, default_registry
from golden_ptq.quant_cells.linear import QuantLinear
from golden_ptq.quant_math import make_act_observer

LOGGER = logging.getLogger("golden_ptq")

__all__ = ["LayerRecord", "PTQ"]


class PTQ(CompAlgo):
    """Golden Stick's PTQ on any MindSpore CPU.

    QUANTIZE: ``apply(network, network_helper, datasets)`` swaps every registered layer type for its
    quantized Cell, then calibrates decoder layer by decoder layer: the first layer's inputs are
    captured once, each layer is observed on them, the pipeline (e.g. Smooth, Quantize) runs, and
    the *quantized* layer's outputs feed the next layer, so errors propagate as in deployment.
    ``convert`` checks that every quantized Cell was calibrated and drops calibration state.

    DEPLOY: ``apply(network)`` builds the same quantized structure with placeholder parameters for
    a checkpoint saved in QUANTIZE mode to fill.

    Tuning (msModelSlim's recipe): ``config.anti_method`` picks the outlier-suppression module,
    ``config.act_method`` the activation observer; after calibration ``range_parms`` holds every
    observed Linear's range_parm and, with ``measure_sensitivity=True`` (or rollback by
    ``output_error``), ``output_errors`` its relative output MSE, quantized vs float, on a row
    sample of its calibration inputs. ``disable_level='Lx'`` then rolls the x most sensitive
    Linear layers back to float (``rolled_back`` lists them); they were quantized while later
    layers calibrated, so those saw slightly more error than the final network has.

    Rollback by hand: with ``keep_float_cells=True`` the float cell of every quantized layer stays
    held after calibration, so ``roll_back(network, names)`` / ``restore(network, names)`` swap
    layers between float and their already-deployed quantized Cells without recalibrating
    (:func:`golden_ptq.algorithm.rollback.search_rollback` builds on them); ``convert`` drops them.

    A model too large to hold in float is quantized with the same per-layer code by
    :func:`golden_ptq.streaming.quantize_streamed`, one decoder layer resident at a time.
    """

    def __init__(self, config: Optional[PTQConfig] = None, registry: Optional[QuantCellRegistry] = None,
                 pipeline: Optional[Sequence[AlgoModule]] = None, structure=None, calib_batch_size: int = 8,
                 measure_sensitivity: bool = False, keep_float_cells: bool = False, progress: bool = False,
                 methods: Optional[MethodRegistry] = None):
        """``keep_float_cells=True``: keep each quantized layer's float Cell after calibration (until
        ``convert``) for ``roll_back``/``restore`` and the rollback search. It costs the float weights
        of every quantized layer (4 bytes a weight, on top of their int8 copies) and implies
        ``measure_sensitivity`` (the float cells are what output errors are measured against, and a
        search can then rank by either signal). ``methods``: the registry the config's
        ``anti_method`` / ``precision_recovery`` are looked up in (default: the built-in methods)."""
        self.config = config if config is not None else PTQConfig()
        if not isinstance(self.config, PTQConfig):
            raise TypeError(f"PTQ(config=...) needs a PTQConfig, got {type(self.config).__name__}")
        self.config.validate()
        self.registry = registry if registry is not None else default_registry()
        self.methods = methods if methods is not None else default_method_registry()
        self.pipeline: List[AlgoModule] = (list(pipeline) if pipeline is not None
                                           else self.default_pipeline(self.config, self.methods))
        self.structure = structure
        self.calib_batch_size = calib_batch_size
        self.progress = progress  # a tqdm bar over the decoder layers while calibrating
        self.records: List[LayerRecord] = []
        self.calibration_seconds: Optional[float] = None
        self.calibration_tokens = 0
        self.keep_float_cells = keep_float_cells
        self.measure_sensitivity = measure_sensitivity or keep_float_cells
        self.range_parms: Dict[str, float] = {}
        self.output_errors: Dict[str, float] = {}
        self.rolled_back: List[str] = []
        self._rollback = RollbackSet()

    @staticmethod
    def default_pipeline(config: PTQConfig, methods: Optional[MethodRegistry] = None) -> List[AlgoModule]:
        """The config's accuracy methods (outlier suppression, then precision recovery), then Quantize."""
        return (methods or default_method_registry()).pipeline(config) + [QuantizeModule()]

    @property
    def _measuring(self) -> bool:
        cfg = self.config
        return self.measure_sensitivity or (cfg.rollback_level > 0 and cfg.rollback_signal == "output_error")

    @property
    def _float_cells(self) -> Dict[str, nn.Cell]:
        return self._rollback.float_cells

    # ----- per-layer decisions ------------------------------------------------------------------
    def layer_spec(self, name: str, kind: str) -> LayerQuantSpec:
        return layer_spec(self.config, name, kind)

    # ----- apply / convert ----------------------------------------------------------------------
    def apply(self, network: nn.Cell, network_helper=None, datasets=None) -> nn.Cell:
        structure = self.structure or getattr(network_helper, "structure", None) or LlamaStructure()
        check_tp_supported(self, network)
        guards.check_mode(self.config, datasets)
        rows = None
        if self.config.mode is PTQMode.QUANTIZE:  # bad calibration data fails before the network is touched
            rows = token_rows(datasets)
            net_config = getattr(network, "config", None)
            if getattr(net_config, "vocab_size", None) is not None:
                guards.check_calibration_rows(rows, net_config.vocab_size,
                                              getattr(net_config, "max_position_embeddings", None))
        self.range_parms, self.output_errors, self.rolled_back = {}, {}, []  # this network's only
        started = time.perf_counter()
        for module in self.pipeline:   # whole-network steps (rotation) before any layer is swapped
            module.prepare_network(network, quantize=self.config.mode is PTQMode.QUANTIZE)
        prepare_seconds = time.perf_counter() - started
        self._swap_in_quant_cells(network)
        if self.config.mode is PTQMode.DEPLOY:
            self._prepare_deploy(network, structure)
            for cell in self._quant_cells(network).values():
                cell.deploy_placeholders()
        else:
            try:
                self._calibrate(network, structure, rows)
                self.calibration_seconds += prepare_seconds   # the rotation is part of calibrating
            except BaseException as err:
                guards.mark_failed(network, f"PTQ.apply failed on this network ({type(err).__name__}: {err}); "
                                            f"it is half quantized: build a fresh float network")
                raise
        share_tied_head(network)
        sync_parameter_names(network)
        return network

    def convert(self, network: nn.Cell, *args, **kwargs) -> nn.Cell:
        cells = self._quant_cells(network)
        if not cells and not self.rolled_back:
            raise RuntimeError("PTQ.convert: the network has no quantized cells; call apply(network, ...) first")
        missing = [name for name, cell in cells.items() if not cell.quantized]
        if missing:
            raise RuntimeError(f"PTQ.convert: {len(missing)} layer(s) were never calibrated, first "
                               f"'{missing[0]}'; did the calibration data reach them?")
        for cell in cells.values():  # calibration state is not part of the deployed network
            drop_calibration_state(cell)
        self._rollback.clear()
        self._rollback.converted = True
        sync_parameter_names(network)
        return network

    def scheme_counts(self) -> Dict[str, int]:
        """How many layers became each scheme (``W8A8``, ``C8``, ``FLOAT``, ...)."""
        return scheme_counts(self.records)

    def summary(self) -> str:
        return summary_text(self.records, self.calibration_tokens, self.calibration_seconds)

    # ----- swapping -----------------------------------------------------------------------------
    def _swap_in_quant_cells(self, network: nn.Cell) -> None:
        if self._quant_cells(network):
            raise RuntimeError("PTQ.apply: the network already holds quantized cells; build a fresh float network")
        targets = quant_targets(network, self.registry)
        check_target_names(self.config, [name for name, _, _ in targets])
        self.records = []
        self.swap_in(network, targets)
        self.check_quantizes_something()
        sync_parameter_names(network)

    def swap_in(self, root: nn.Cell, targets: Sequence[Target], prefix: str = "") -> None:
        """Put the quantized Cell of each target (named ``prefix.relative`` in ``targets``) into
        ``root``, appending their records; every layer is decided and checked before any is swapped.
        The streamed path calls this once per unit (embedding, each decoder layer, head)."""
        plan = plan_swaps(self.config, targets)
        if self.config.mode is PTQMode.QUANTIZE:
            for name, cell, _, spec in plan:
                if not spec.skip_reason:
                    guards.check_weight(name, cell)
        for name, cell, entry, spec in plan:
            self.records.append(LayerRecord(name, type(cell).__name__, spec,
                                            self.config.weight_bits if entry["kind"] == "linear" else 8))
            if not spec.skip_reason:
                quant_cell = entry["quant_type"](cell, spec)
                self._configure_linear(quant_cell)
                replace_cell(root, name[len(prefix) + 1:] if prefix else name, quant_cell)
                if self.config.mode is PTQMode.QUANTIZE and (self.config.rollback_level or self._measuring):
                    self._float_cells[name] = cell  # holds the (smoothed) float weights for rollback / errors

    def check_quantizes_something(self) -> None:
        """The config quantizes at least one layer of the records."""
        if not any(not r.spec.skip_reason for r in self.records):
            reasons = sorted({r.spec.skip_reason for r in self.records})
            raise ValueError(f"PTQ.apply: the config quantizes no layer of this network ({len(self.records)} "
                             f"candidates, all kept float: {reasons})")

    def _configure_linear(self, cell: QuantCell) -> None:
        """Weight bits and the act_method observer of a new QuantLinear."""
        if not isinstance(cell, QuantLinear):
            return
        cell.weight_bits = self.config.weight_bits
        if cell.spec.act and not cell.spec.act_dynamic:
            cell.use_observer(make_act_observer(self.config.act_method, cell.spec.act_symmetric,
                                                int(self.config.arg("hist_bins"))))

    def _prepare_deploy(self, network: nn.Cell, structure) -> None:
        for lname, layer in structure.decoder_layers(network):
            cells = {rel: c for rel, c in layer.cells_and_names() if isinstance(c, QuantCell)}
            if cells:
                ctx = LayerContext(lname, layer, cells, structure, network, config=self.config)
                for module in self.pipeline:
                    module.prepare_deploy(ctx)

    @staticmethod
    def _quant_cells(network: nn.Cell) -> Dict[str, QuantCell]:
        return {name: cell for name, cell in network.cells_and_names() if isinstance(cell, QuantCell)}

    # ----- calibration --------------------------------------------------------------------------
    def calibration_driver(self) -> CalibrationDriver:
        """The layer loop, wired to this PTQ's pipeline and result dictionaries."""
        return CalibrationDriver(self.config, self.pipeline, self._float_cells, self.range_parms, self.output_errors,
                                 measuring=self._measuring, calib_batch_size=self.calib_batch_size,
                                 progress=self.progress,
                                 release_measured=not (self.keep_float_cells or self.config.rollback_level))

    def calibrate_source(self, source: LayerSource, rows: List[np.ndarray]) -> None:
        """Run the layer loop over ``source`` and record its timing (no rollback: see ``_calibrate``)."""
        driver = self.calibration_driver()
        driver.calibrate(source, rows)
        self.calibration_tokens = driver.calibration_tokens
        self.calibration_seconds = driver.calibration_seconds

    def _calibrate(self, network: nn.Cell, structure, rows: List[np.ndarray]) -> None:
        self.calibrate_source(InMemoryLayers(network, structure, self._quant_cells(network)), rows)
        seconds = self.calibration_seconds
        self._roll_back(network)
        if not self.keep_float_cells:
            self._rollback.clear()
        self.calibration_seconds = seconds

    def _roll_back(self, network: nn.Cell) -> None:
        """``disable_level='Lx'``: put the float cells of the x most sensitive Linear layers back."""
        cfg = self.config
        level = cfg.rollback_level
        self.rolled_back = []
        self._rollback.rolled_quant = {}
        self._rollback.converted = False  # a new calibration (a reused PTQ): its float cells are at hand again
        if not level:
            return
        signal = self.range_parms if cfg.rollback_signal == "range_parm" else self.output_errors
        ranked = self.sensitivity_ranking(cfg.rollback_signal)[:level]
        self.roll_back(network, ranked, {name: f"disable_level {cfg.disable_level}, {cfg.rollback_signal} "
                                               f"{signal[name]:.4g}" for name in ranked})
        LOGGER.info("disable_level=%s: rolled back %d of %d Linear layers by %s: %s", cfg.disable_level,
                    len(ranked), len(signal), cfg.rollback_signal, ", ".join(ranked))

    # ----- rollback by hand ---------------------------------------------------------------------
    def sensitivity_ranking(self, signal: str = "range_parm") -> List[str]:
        """Measured Linear layers, most sensitive first by ``signal`` (ties by name): the order in
        which ``disable_level`` rolls layers back."""
        return sensitivity_ranking(self.range_parms, self.output_errors, signal)

    def roll_back(self, network: nn.Cell, names: Sequence[str],
                  reason: Union[str, Mapping[str, str]] = "roll_back") -> List[str]:
        """Swap the float cells of ``names`` into ``network`` (layers already float are left as they
        are); their quantized Cells are kept so ``restore`` can undo it. ``reason`` (one text, or one
        per name) goes into ``records``/``summary()``. Returns the names newly rolled back."""
        return self._rollback.roll_back(network, names, reason, self.records, self.rolled_back, self.config.mode)

    def restore(self, network: nn.Cell, names: Sequence[str]) -> List[str]:
        """Undo ``roll_back`` for ``names``: their quantized Cells (as calibrated, already in deployed
        form) go back into ``network`` (layers already quantized are left as they are). Returns the
        names newly restored."""
        return self._rollback.restore(network, names, self.records, self.rolled_back, self.config.mode)

    def _check_swappable(self, network: nn.Cell, names: Sequence[str], what: str) -> List[str]:
        """The names as a list, after checking that their float and quantized Cells are both at hand."""
        return self._rollback.check_swappable(network, names, what, self.records, self.config.mode)


def drop_calibration_state(cell: QuantCell) -> None:
    """Observers are not part of the deployed network."""
    for attr in ("input_observer", "observers"):
        if hasattr(cell, attr):
            setattr(cell, attr, None)
