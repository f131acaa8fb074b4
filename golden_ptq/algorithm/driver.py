"""The layer-by-layer calibration loop, run over a *layer source*.

A source hands the driver the quantized Cells of each calibration unit in order: the embedding,
every decoder layer, then the head (final norm + ``lm_head``). :class:`InMemoryLayers` walks a
network that is whole in memory (``PTQ.apply``); the streamed source
(:mod:`golden_ptq.streaming`) builds each decoder layer from a float checkpoint when the driver
asks for it and writes it out when the driver is done with it. The per-layer work is this one
code, which is what makes the two paths bit-identical.
"""
from __future__ import annotations

import contextlib
import time
from typing import Dict, Iterable, Iterator, List, Sequence, Tuple

import numpy as np
from mindspore import Tensor, nn
from tqdm import tqdm

import golden_ptq.algorithm.guards as guards
from golden_ptq.algorithm.calibration_data import length_batches
from golden_ptq.algorithm.modules import AlgoModule, InputRecorder, LayerContext
from golden_ptq.algorithm.modules.base import INPUT_GRAM, feed_linear_input
from golden_ptq.parallel.context import all_gather_numpy
from golden_ptq.quant_cells import QuantCell
from golden_ptq.quant_cells.embedding import QuantEmbedding
from golden_ptq.quant_cells.linear import QuantLinear
from golden_ptq.quant_math.input_sharing import sharing


class LayerSource:
    """What the driver walks. ``network`` is what modules and ``structure`` calls see as the network
    (``embed``, ``layer_inputs``, ``model.norm_out``, ``tp_layout``, ``config``)."""

    network: object = None
    structure: object = None

    def embedding_cells(self) -> Dict[str, QuantCell]:
        """Quantized Cells of the embedding unit (full names)."""
        raise NotImplementedError

    def embedding_done(self) -> None:
        """The first layer's inputs are computed: the embedding is no longer needed."""

    def num_layers(self) -> int:
        raise NotImplementedError

    def decoder_layers(self) -> Iterator[Tuple[str, nn.Cell]]:
        """``(name, layer)`` of each decoder layer in order, its quantized Cells swapped in."""
        raise NotImplementedError

    def layer_done(self, name: str, layer: nn.Cell) -> None:
        """Layer ``name`` is calibrated and quantized and its outputs computed."""

    def head_cells(self) -> Dict[str, QuantCell]:
        """Quantized Cells after the decoder layers (``lm_head``), full names."""
        raise NotImplementedError

    def head_done(self) -> None:
        """The head is calibrated and quantized."""

    def boundary(self, outputs: Iterable[Tensor], previous: Sequence[Tensor]) -> Sequence[Tensor]:
        """Hold one layer boundary's activations (every calibration batch); ``previous`` may be released."""
        return list(outputs)


class InMemoryLayers(LayerSource):
    """A whole network whose quantizable layers already hold their quantized Cells."""

    def __init__(self, network: nn.Cell, structure, quant_cells: Dict[str, QuantCell]):
        self.network, self.structure = network, structure
        self._layers = structure.decoder_layers(network)
        in_layers = {f"{lname}.{rel}" for lname, layer in self._layers for rel, c in layer.cells_and_names()
                     if isinstance(c, QuantCell)}
        outside = {n: c for n, c in quant_cells.items() if n not in in_layers}
        self._embeddings = {n: c for n, c in outside.items() if isinstance(c, QuantEmbedding)}
        self._heads = {n: c for n, c in outside.items() if n not in self._embeddings}

    def embedding_cells(self) -> Dict[str, QuantCell]:
        return self._embeddings

    def num_layers(self) -> int:
        return len(self._layers)

    def decoder_layers(self) -> Iterator[Tuple[str, nn.Cell]]:
        return iter(self._layers)

    def head_cells(self) -> Dict[str, QuantCell]:
        return self._heads


def grams_in_calibration_pass(pipeline: Sequence[AlgoModule]) -> bool:
    """Whether the calibration pass can record the input grams a module needs (INPUT_GRAM): the
    modules before it change no float weight, or only rescale inputs and the grams with them."""
    for module in pipeline:
        if INPUT_GRAM in getattr(module.method, "needs", ()):
            return True
        if not (module.keeps_layer_weights or module.rescales_input_grams):
            return False
    return False


@contextlib.contextmanager
def unread_outputs(cells: Dict[str, QuantCell], names: Sequence[str]) -> Iterator[None]:
    """The QuantLinears of ``cells`` named in ``names`` (relative) skip their product in the block:
    a pass that only feeds observers and recorders reads none of their outputs."""
    chosen = [c for rel, c in cells.items() if rel in names and isinstance(c, QuantLinear)]
    for cell in chosen:
        cell.output_unread = True
    try:
        yield
    finally:
        for cell in chosen:
            cell.output_unread = False


class CalibrationDriver:
    """Calibrates every unit of a source through ``pipeline``: the first layer's inputs are captured
    once, each layer is observed on them, the pipeline runs, and the *quantized* layer's outputs feed
    the next layer. Fills ``range_parms`` (through the Quantize module) and, when ``measuring``,
    ``output_errors`` against ``float_cells``."""

    def __init__(self, config, pipeline: List[AlgoModule], float_cells: Dict[str, nn.Cell],
                 range_parms: Dict[str, float], output_errors: Dict[str, float], *, measuring: bool,
                 calib_batch_size: int = 8, progress: bool = False, release_measured: bool = False):
        """``release_measured``: drop a layer's float cell once its output error is measured (nothing
        will roll it back)."""
        self.config, self.pipeline = config, pipeline
        self.release_measured = release_measured
        self.float_cells, self.range_parms, self.output_errors = float_cells, range_parms, output_errors
        self.measuring, self.calib_batch_size, self.progress = measuring, calib_batch_size, progress
        self.calibration_tokens = 0
        self.calibration_seconds = None

    def calibrate(self, source: LayerSource, rows: List[np.ndarray]) -> None:
        start = time.time()
        self.calibration_tokens = int(sum(r.size for r in rows))
        batches = length_batches(rows, self.calib_batch_size)
        structure, network = source.structure, source.network
        embeddings = source.embedding_cells()
        self._run_pipeline(LayerContext("embedding", None, embeddings, structure, network))
        states = [structure.layer_inputs(network, batch) for batch in batches]
        source.embedding_done()
        hidden = source.boundary((h for h, _ in states), [])
        inputs = [i for _, i in states]
        del states
        needs_inputs = any(m.needs_layer_inputs for m in self.pipeline)
        early_grams = grams_in_calibration_pass(self.pipeline)
        unread = tuple(getattr(structure, "unread_output_linears", ()))
        keep_rows = int(self.config.arg("search_rows"))
        stride = max(1, -(-self.calibration_tokens // keep_rows))  # ceil: the sample spans every batch
        one_pass = self.config.arg("calibration_inputs") == "float"
        for lname, layer in tqdm(source.decoder_layers(), total=source.num_layers(), desc="calibrate",
                                 unit="layer", disable=not self.progress, leave=False, dynamic_ncols=True):
            cells = {rel: c for rel, c in layer.cells_and_names() if isinstance(c, QuantCell)}

            def run(layer=layer, hidden=hidden):
                return [structure.run_layer(layer, h, i) for h, i in zip(hidden, inputs)]

            def feed(layer=layer, hidden=hidden, cells=cells) -> None:
                with sharing(), unread_outputs(cells, unread):
                    for h, i in zip(hidden, inputs):
                        structure.run_layer(layer, h, i)

            float_outputs: List[Tensor] = []

            def feed_and_keep(layer=layer, hidden=hidden) -> None:
                """The observing pass of ``calibration_inputs: float``: its float outputs feed the next layer."""
                with sharing():
                    float_outputs.extend(structure.run_layer(layer, h, i) for h, i in zip(hidden, inputs))

            recorders: Dict[str, InputRecorder] = {}
            if cells:
                recorders = (self._attach_recorders(cells, stride, keep_rows if needs_inputs else 0, grams=early_grams)
                             if needs_inputs or early_grams else {})
                try:
                    self._observe(cells, feed_and_keep if one_pass else feed)
                finally:
                    self._attach_recorders(cells, 0, 0, detach=True)
                self._run_pipeline(LayerContext(
                    lname, layer, cells, structure, network, config=self.config,
                    inputs={rel: r.rows() for rel, r in recorders.items()} if needs_inputs else {},
                    runner=run, feeder=feed, range_parms=self.range_parms,
                    grams={rel: (r.gram, r.gram_rows) for rel, r in recorders.items() if r.gram is not None}))
            if one_pass:
                if not cells:   # nothing to observe: the float outputs only
                    feed_and_keep()
                # output errors are measured on the quantized layer's own inputs (after any smoothing
                # rescale), so measuring costs this mode one more pass
                measured = self._recorded(cells, stride, keep_rows, feed) if cells and self.measuring else {}
                hidden = source.boundary(float_outputs, hidden)
            else:
                measured = self._attach_recorders(cells, stride, keep_rows) if cells and self.measuring else {}
                try:
                    with sharing():
                        hidden = source.boundary((structure.run_layer(layer, h, i) for h, i in zip(hidden, inputs)),
                                                 hidden)
                finally:
                    self._attach_recorders(cells, 0, 0, detach=True)
            self._measure_errors({f"{lname}.{rel}": (cells[rel], r.rows()) for rel, r in measured.items()})
            del run, cells, recorders, measured
            source.layer_done(lname, layer)
            del layer
        heads = source.head_cells()
        if heads:
            needs_data = [c for c in heads.values() if isinstance(c, QuantLinear) and c.spec.act
                          and not c.spec.act_dynamic]
            reruns = any(INPUT_GRAM in getattr(m.method, "needs", ()) for m in self.pipeline)
            head_inputs = ([structure.head_input(network, h) for h in hidden]
                           if needs_data or self.measuring or reruns else [])
            linears = [c for c in heads.values() if isinstance(c, QuantLinear)]

            def run_heads() -> List:
                """A pass over the head that feeds recorders and observers only: its outputs are
                [tokens, vocab] per batch and nothing reads them."""
                for cell in linears:
                    for x in head_inputs:
                        feed_linear_input(cell, x)
                return []

            if needs_data:
                self._observe(heads, lambda: [feed_linear_input(c, x) for c in needs_data for x in head_inputs])
            self._run_pipeline(LayerContext("head", None, heads, structure, network, config=self.config,
                                            range_parms=self.range_parms, runner=run_heads if head_inputs else None))
            if self.measuring and head_inputs:
                sample = np.concatenate([x.asnumpy().reshape(-1, x.shape[-1]) for x in head_inputs])[::stride][:keep_rows]
                self._measure_errors({n: (c, sample) for n, c in heads.items() if isinstance(c, QuantLinear)})
        source.boundary((), hidden)
        source.head_done()
        self.calibration_seconds = time.time() - start

    @staticmethod
    def _attach_recorders(cells, stride: int, rows: int, detach: bool = False,
                          grams: bool = False) -> Dict[str, InputRecorder]:
        """Give each QuantLinear of ``cells`` an InputRecorder (or take them away with ``detach``);
        ``grams``: those that quantize weights also sum their input's gram."""
        recorders: Dict[str, InputRecorder] = {}
        for rel, cell in cells.items():
            if isinstance(cell, QuantLinear):
                cell.recorder = None if detach else InputRecorder(stride, rows, gram=grams and cell.spec.weight)
                if not detach:
                    recorders[rel] = cell.recorder
        return recorders

    def _recorded(self, cells, stride: int, rows: int, run) -> Dict[str, InputRecorder]:
        """The inputs each QuantLinear of ``cells`` sees while ``run()`` runs (every ``stride``-th row,
        up to ``rows``)."""
        recorders = self._attach_recorders(cells, stride, rows)
        try:
            run()
        finally:
            self._attach_recorders(cells, 0, 0, detach=True)
        return recorders

    def _measure_errors(self, samples: Dict[str, Tuple[QuantCell, np.ndarray]]) -> None:
        """Relative output MSE of each quantized Linear against its float cell on its recorded inputs."""
        for full, (cell, x) in samples.items():
            float_cell = self.float_cells.get(full)
            if float_cell is None or not cell.quantized:
                continue
            x_t = Tensor(np.ascontiguousarray(x, dtype=np.float32))
            y_q = cell(x_t).asnumpy().astype(np.float64)
            y_f = float_cell(x_t).asnumpy().astype(np.float64)
            sums = np.array([((y_q - y_f) ** 2).sum(), (y_f ** 2).sum()])
            if getattr(cell, "shard", None) == "column":
                sums = all_gather_numpy(sums, cell.tp).sum(axis=0)  # each rank holds some output columns
            self.output_errors[full] = float(sums[0] / max(sums[1], 1e-30))
            if self.release_measured:
                del self.float_cells[full]  # measured, and nothing rolls back: its float weight can go

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
