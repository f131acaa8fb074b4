"""``PTQ``: post-training quantization of a network, layer by layer, through a pipeline of modules."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from mindspore import Tensor, nn
from tqdm import tqdm

import golden_ptq.algorithm.guards as guards
from golden_ptq.algorithm.calibration_data import length_batches, token_rows
from golden_ptq.algorithm.comp_algo import CompAlgo
from golden_ptq.algorithm.modules import (AlgoModule, InputRecorder, LayerContext, MethodRegistry, QuantizeModule,
                                          default_method_registry)
from golden_ptq.algorithm.modules.base import INPUT_GRAM
from golden_ptq.config import PTQConfig, PTQMode, QuantGranularity
from golden_ptq.networks.llama import sync_parameter_names
from golden_ptq.networks.structure import LlamaStructure
from golden_ptq.parallel.context import all_gather_numpy
from golden_ptq.algorithm.tp_support import check_tp_supported
from golden_ptq.quant_cells import LayerQuantSpec, QuantCell, QuantCellRegistry, default_registry
from golden_ptq.quant_cells.embedding import QuantEmbedding
from golden_ptq.quant_cells.linear import QuantLinear
from golden_ptq.quant_math import make_act_observer

LOGGER = logging.getLogger("golden_ptq")


@dataclass
class LayerRecord:
    name: str
    layer_type: str
    spec: LayerQuantSpec
    weight_bits: int = 8

    @property
    def label(self) -> str:
        label = self.spec.label
        return label.replace("W8", "W4", 1) if self.weight_bits == 4 and label.startswith("W8") else label

    @property
    def became(self) -> str:
        if self.spec.skip_reason:
            return f"FLOAT ({self.spec.skip_reason})"
        return self.label


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
        self._float_cells: Dict[str, nn.Cell] = {}
        self._rolled_quant: Dict[str, Tuple[QuantCell, LayerRecord]] = {}  # rolled back: its quant cell, record
        self._converted = False

    @staticmethod
    def default_pipeline(config: PTQConfig, methods: Optional[MethodRegistry] = None) -> List[AlgoModule]:
        """The config's accuracy methods (outlier suppression, then precision recovery), then Quantize."""
        return (methods or default_method_registry()).pipeline(config) + [QuantizeModule()]

    @property
    def _measuring(self) -> bool:
        cfg = self.config
        return self.measure_sensitivity or (cfg.rollback_level > 0 and cfg.rollback_signal == "output_error")

    # ----- per-layer decisions ------------------------------------------------------------------
    def layer_spec(self, name: str, kind: str) -> LayerQuantSpec:
        cfg = self.config
        blocked = [entry for entry in cfg.opname_blacklist if entry in name]
        if blocked:
            return LayerQuantSpec(skip_reason=f"opname_blacklist '{blocked[0]}'")
        if name in cfg.disable_names:
            return LayerQuantSpec(skip_reason="disable_names")
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
        for module in self.pipeline:   # whole-network steps (rotation) before any layer is swapped
            module.prepare_network(network, quantize=self.config.mode is PTQMode.QUANTIZE)
        self._swap_in_quant_cells(network)
        if self.config.mode is PTQMode.DEPLOY:
            self._prepare_deploy(network, structure)
            for cell in self._quant_cells(network).values():
                cell.deploy_placeholders()
        else:
            try:
                self._calibrate(network, structure, rows)
            except BaseException as err:
                guards.mark_failed(network, f"PTQ.apply failed on this network ({type(err).__name__}: {err}); "
                                            f"it is half quantized: build a fresh float network")
                raise
        self._share_tied_head(network)
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
            for attr in ("input_observer", "observers"):
                if hasattr(cell, attr):
                    setattr(cell, attr, None)
        self._float_cells = {}
        self._rolled_quant = {}
        self._converted = True
        sync_parameter_names(network)
        return network

    def scheme_counts(self) -> Dict[str, int]:
        """How many layers became each scheme (``W8A8``, ``C8``, ``FLOAT``, ...)."""
        counts: Dict[str, int] = {}
        for r in self.records:
            key = "FLOAT" if r.spec.skip_reason else r.label
            counts[key] = counts.get(key, 0) + 1
        return counts

    def summary(self) -> str:
        if not self.records:
            return "PTQ.summary: apply() has not run yet"
        width = max(len(r.name) for r in self.records)
        lines = [f"{'layer'.ljust(width)}  {'type':<10}  became", "-" * (width + 40)]
        lines += [f"{r.name.ljust(width)}  {r.layer_type:<10}  {r.became}" for r in self.records]
        lines.append("total: " + ", ".join(f"{k} {v}" for k, v in sorted(self.scheme_counts().items())))
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
        names = {name for name, _, _ in targets}
        unknown = [n for n in self.config.disable_names if n not in names]
        if unknown:
            examples = ", ".join(name for name, _, _ in targets[:4])
            raise ValueError(f"PTQConfig.disable_names entry '{unknown[0]}' is not the exact name of a quantizable "
                             f"layer; names look like: {examples}")
        self.records = []
        plan: List[Tuple[str, nn.Cell, Dict, LayerQuantSpec]] = []  # every layer decided and checked first
        replaced: List[str] = []
        for name, cell, entry in targets:
            if any(name.startswith(outer + ".") for outer in replaced):
                continue  # inside a layer that is itself quantized as a whole (a user's registered Cell)
            spec = self.layer_spec(name, entry["kind"])
            if not spec.skip_reason:
                replaced.append(name)
                if self.config.mode is PTQMode.QUANTIZE:
                    guards.check_weight(name, cell)
            plan.append((name, cell, entry, spec))
        replaced = []
        for name, cell, entry, spec in plan:
            self.records.append(LayerRecord(name, type(cell).__name__, spec,
                                            self.config.weight_bits if entry["kind"] == "linear" else 8))
            if not spec.skip_reason:
                quant_cell = entry["quant_type"](cell, spec)
                self._configure_linear(quant_cell)
                _replace_cell(network, name, quant_cell)
                replaced.append(name)
                if self.config.mode is PTQMode.QUANTIZE and (self.config.rollback_level or self._measuring):
                    self._float_cells[name] = cell  # holds the (smoothed) float weights for rollback / errors
        if not any(not r.spec.skip_reason for r in self.records):
            reasons = sorted({r.spec.skip_reason for r in self.records})
            raise ValueError(f"PTQ.apply: the config quantizes no layer of this network ({len(self.records)} "
                             f"candidates, all kept float: {reasons})")
        sync_parameter_names(network)

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
        needs_inputs = any(m.needs_layer_inputs for m in self.pipeline)
        keep_rows = int(self.config.arg("search_rows"))
        stride = max(1, -(-self.calibration_tokens // keep_rows))  # ceil: the sample spans every batch
        for lname, layer in tqdm(layers, desc="calibrate", unit="layer", disable=not self.progress,
                                 leave=False, dynamic_ncols=True):
            cells = {rel: c for rel, c in layer.cells_and_names() if isinstance(c, QuantCell)}

            def run(layer=layer):
                return [structure.run_layer(layer, h, i) for h, i in zip(hidden, inputs)]

            if cells:
                recorders = self._attach_recorders(cells, stride, keep_rows) if needs_inputs else {}
                try:
                    self._observe(cells, run)
                finally:
                    self._attach_recorders(recorders, 0, 0, detach=True)
                self._run_pipeline(LayerContext(lname, layer, cells, structure, network, config=self.config,
                                                inputs={rel: r.rows() for rel, r in recorders.items()},
                                                runner=run, range_parms=self.range_parms))
            recorders = self._attach_recorders(cells, stride, keep_rows) if cells and self._measuring else {}
            try:
                hidden = run()
            finally:
                self._attach_recorders(recorders, 0, 0, detach=True)
            self._measure_errors({f"{lname}.{rel}": (cells[rel], r.rows()) for rel, r in recorders.items()})
        heads = {n: c for n, c in outside.items() if n not in embeddings}
        if heads:
            needs_data = [c for c in heads.values() if isinstance(c, QuantLinear) and c.spec.act
                          and not c.spec.act_dynamic]
            reruns = any(INPUT_GRAM in getattr(m.method, "needs", ()) for m in self.pipeline)
            head_inputs = ([structure.head_input(network, h) for h in hidden]
                           if needs_data or self._measuring or reruns else [])
            linears = [c for c in heads.values() if isinstance(c, QuantLinear)]

            def run_heads() -> List:
                """The head's outputs are discarded ([tokens, vocab] per batch): a pass that only
                records inputs (a recorder attached, not observing) feeds the recorder and skips the matmul."""
                for cell in linears:
                    for x in head_inputs:
                        if cell.recorder is not None and not cell.observing:
                            cell.recorder(x.reshape(-1, x.shape[-1]).asnumpy())
                        else:
                            cell(x)
                return []

            if needs_data:
                self._observe(heads, lambda: [c(x) for c in needs_data for x in head_inputs])
            self._run_pipeline(LayerContext("head", None, heads, structure, network, config=self.config,
                                            range_parms=self.range_parms, runner=run_heads if head_inputs else None))
            if self._measuring and head_inputs:
                sample = np.concatenate([x.asnumpy().reshape(-1, x.shape[-1]) for x in head_inputs])[::stride][:keep_rows]
                self._measure_errors({n: (c, sample) for n, c in heads.items() if isinstance(c, QuantLinear)})
        self._roll_back(network)
        if not self.keep_float_cells:
            self._float_cells = {}
            self._rolled_quant = {}
        self.calibration_seconds = time.time() - start

    @staticmethod
    def _attach_recorders(cells, stride: int, rows: int, detach: bool = False) -> Dict[str, InputRecorder]:
        """Give each QuantLinear of ``cells`` an InputRecorder (or take them away with ``detach``)."""
        recorders: Dict[str, InputRecorder] = {}
        for rel, cell in cells.items():
            if isinstance(cell, QuantLinear):
                cell.recorder = None if detach else InputRecorder(stride, rows)
                if not detach:
                    recorders[rel] = cell.recorder
        return recorders

    def _measure_errors(self, samples: Dict[str, Tuple[QuantCell, np.ndarray]]) -> None:
        """Relative output MSE of each quantized Linear against its float cell on its recorded inputs."""
        for full, (cell, x) in samples.items():
            float_cell = self._float_cells.get(full)
            if float_cell is None or not cell.quantized:
                continue
            x_t = Tensor(np.ascontiguousarray(x, dtype=np.float32))
            y_q = cell(x_t).asnumpy().astype(np.float64)
            y_f = float_cell(x_t).asnumpy().astype(np.float64)
            sums = np.array([((y_q - y_f) ** 2).sum(), (y_f ** 2).sum()])
            if getattr(cell, "shard", None) == "column":
                sums = all_gather_numpy(sums, cell.tp).sum(axis=0)  # each rank holds some output columns
            self.output_errors[full] = float(sums[0] / max(sums[1], 1e-30))

    def _roll_back(self, network: nn.Cell) -> None:
        """``disable_level='Lx'``: put the float cells of the x most sensitive Linear layers back."""
        cfg = self.config
        level = cfg.rollback_level
        self.rolled_back = []
        self._rolled_quant = {}
        self._converted = False  # a new calibration (a reused PTQ): its float cells are at hand again
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
        if signal not in ("range_parm", "output_error"):
            raise ValueError(f"PTQ.sensitivity_ranking: signal {signal!r} not allowed; allowed: "
                             f"['range_parm', 'output_error']")
        values = self.range_parms if signal == "range_parm" else self.output_errors
        if signal == "output_error" and not values and self.range_parms:
            raise ValueError("PTQ.sensitivity_ranking: no output errors were measured; create "
                             "PTQ(config, measure_sensitivity=True) (or keep_float_cells=True)")
        return sorted(values, key=lambda n: (-values[n], n))

    def roll_back(self, network: nn.Cell, names: Sequence[str],
                  reason: Union[str, Mapping[str, str]] = "roll_back") -> List[str]:
        """Swap the float cells of ``names`` into ``network`` (layers already float are left as they
        are); their quantized Cells are kept so ``restore`` can undo it. ``reason`` (one text, or one
        per name) goes into ``records``/``summary()``. Returns the names newly rolled back."""
        names = self._check_swappable(network, names, "PTQ.roll_back")
        done = []
        for name in names:
            if name in self._rolled_quant:
                continue
            cell = self._cell_at(network, name)
            index = self._record_index(name)
            self._rolled_quant[name] = (cell, self.records[index])
            _replace_cell(network, name, self._float_cells[name])
            text = reason if isinstance(reason, str) else reason[name]
            self.records[index] = LayerRecord(name, self.records[index].layer_type, LayerQuantSpec(skip_reason=text))
            self.rolled_back.append(name)
            done.append(name)
        if done:
            sync_parameter_names(network)
        return done

    def restore(self, network: nn.Cell, names: Sequence[str]) -> List[str]:
        """Undo ``roll_back`` for ``names``: their quantized Cells (as calibrated, already in deployed
        form) go back into ``network`` (layers already quantized are left as they are). Returns the
        names newly restored."""
        names = self._check_swappable(network, names, "PTQ.restore")
        done = []
        for name in names:
            if name not in self._rolled_quant:
                continue
            cell, record = self._rolled_quant.pop(name)
            _replace_cell(network, name, cell)
            self.records[self._record_index(name)] = record
            self.rolled_back.remove(name)
            done.append(name)
        if done:
            sync_parameter_names(network)
        return done

    def _check_swappable(self, network: nn.Cell, names: Sequence[str], what: str) -> List[str]:
        """The names as a list, after checking that their float and quantized Cells are both at hand
        (``what`` names the caller in the errors)."""
        if isinstance(names, str):
            raise TypeError(f"{what}: names must be a list of layer names, got the string {names!r}")
        names = list(names)
        if self._converted:
            raise RuntimeError(f"{what}: convert() has run and dropped the float cells; roll layers back "
                               f"(or search) between apply() and convert()")
        if self.config.mode is PTQMode.DEPLOY:
            raise RuntimeError(f"{what}: a DEPLOY network has no float cells; list the layers in "
                               f"PTQConfig.disable_names instead")
        if not self._float_cells:
            if not self.records:
                raise RuntimeError(f"{what}: apply(network, helper, datasets) has not run yet")
            raise RuntimeError(f"{what}: the float cells were dropped after calibration; create "
                               f"PTQ(config, keep_float_cells=True) to roll layers back after apply()")
        for name in names:
            if name not in self._float_cells:
                record = next((r for r in self.records if r.name == name), None)
                why = (f"it was never quantized ({record.spec.skip_reason})" if record is not None
                       else "it is not the name of a quantized layer")
                examples = ", ".join(list(self._float_cells)[:4])
                raise ValueError(f"{what}: cannot swap '{name}': {why}; quantized layers look like: {examples}")
            current = self._cell_at(network, name)
            rolled = name in self._rolled_quant
            if not (current is self._float_cells[name] if rolled else isinstance(current, QuantCell)):
                raise RuntimeError(f"{what}: '{name}' in this network is not the cell this PTQ calibrated; "
                                   f"pass the network given to apply()")
        return names

    def _record_index(self, name: str) -> int:
        return next(i for i, r in enumerate(self.records) if r.name == name)

    @staticmethod
    def _cell_at(network: nn.Cell, name: str) -> Optional[nn.Cell]:
        cell = network
        for part in name.split("."):
            cell = cell._cells.get(part) if cell is not None else None  # pylint: disable=protected-access
        return cell

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
        for rel, cell in ctx.quant_cells.items():
            guards.check_observed(ctx.full_name(rel), cell)
        try:
            for module in self.pipeline:
                module.process(ctx)
                if ctx.runner is not None:
                    ctx.refresh_observers()  # histogram observers made stale by a per-channel rescale
        except guards.NonFiniteError as err:
            raise guards.NonFiniteError(f"{ctx.name}: {err}") from None
        for rel, cell in ctx.quant_cells.items():
            if cell.quantized:
                guards.check_scales(ctx.full_name(rel), cell)

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
