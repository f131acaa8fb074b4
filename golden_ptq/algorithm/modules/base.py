"""Algorithm modules: the steps PTQ runs, in order, on every decoder layer."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
from mindspore import nn

from golden_ptq.config.ptq_config import ALGO_ARGS
from golden_ptq.quant_cells.base import QuantCell
from golden_ptq.quant_math.input_sharing import shared

# what a method needs from calibration (MethodDeclaration.needs); all methods are gradient-free
ACTIVATION_RANGES = "activation ranges"    # the observers' per-channel min/max of the calibration pass
INPUT_ROWS = "input rows"                  # a row sample of each Linear's input (search_rows): ctx.inputs
INPUT_GRAM = "input gram"                  # x^T x over all calibration rows of each Linear (one more run_layer pass)
WEIGHTS = "weights"                        # the float weights only
NEEDS = (ACTIVATION_RANGES, INPUT_ROWS, INPUT_GRAM, WEIGHTS)


@dataclass(frozen=True)
class MethodDeclaration:
    """What an accuracy method is, declared by its module class (``AlgoModule.method``).

    ``name``/``alias``/``role``/``schemes`` are those of its row in
    :data:`golden_ptq.config.method_names.METHOD_NAMES` (a test checks they agree); ``needs`` lists
    what it reads (:data:`NEEDS`); ``algo_args`` the ``PTQConfig.algo_args`` keys it reads;
    ``tp`` whether it gives the TP=1 result under tensor parallelism, with ``tp_note`` saying on
    which layouts (or why not).
    """

    name: str
    alias: Optional[str]
    role: str
    schemes: Tuple[str, ...]
    needs: Tuple[str, ...]
    algo_args: Tuple[str, ...]
    tp: bool
    tp_note: str

    def __post_init__(self) -> None:
        unknown = [n for n in self.needs if n not in NEEDS] + [a for a in self.algo_args if a not in ALGO_ARGS]
        if unknown:
            raise ValueError(f"MethodDeclaration {self.name!r}: unknown needs/algo_args {unknown}")

    @property
    def label(self) -> str:
        return f"{self.alias} ({self.name})" if self.alias else self.name


def config_arg(config, name: str) -> Any:
    """``config.arg(name)``, or the default when there is no config."""
    return config.arg(name) if config is not None else ALGO_ARGS[name]


@dataclass
class LayerContext:
    """One unit of layer-wise calibration: a decoder layer (or a lone cell such as ``lm_head``).

    ``quant_cells`` maps names relative to ``layer`` to the quantized cells inside it, whose
    observers hold the statistics of the calibration pass just run. ``inputs`` holds, for modules
    with ``needs_layer_inputs``, a row sample of each quantized Linear's input from that same pass
    (``[rows, in_features]``, float32). ``run_layer()`` runs the unit again on its calibration
    batches (with the current weights) and returns its outputs; ``feed_layer()`` runs it only for
    what its recorders and observers see (no outputs, cheaper). ``grams`` holds, when the driver
    could record them in the calibration pass (the modules before the first that needs them change
    no weight, or rescale the grams with the weights), ``(sum x^T x, rows)`` of each
    weight-quantized Linear's input by relative name. ``range_parms`` is the PTQ's dict of full
    layer name -> range_parm, filled by the Quantize module.
    """

    name: str
    layer: Optional[nn.Cell]
    quant_cells: Dict[str, QuantCell]
    structure: object = None
    network: object = None
    log: list = field(default_factory=list)
    config: object = None
    inputs: Dict[str, np.ndarray] = field(default_factory=dict)
    runner: Optional[Callable[[], List]] = None
    range_parms: Dict[str, float] = field(default_factory=dict)
    feeder: Optional[Callable[[], None]] = None
    grams: Dict[str, Tuple[np.ndarray, int]] = field(default_factory=dict)

    def full_name(self, relative: str) -> str:
        """The network-wide name of a cell of this unit (units without ``layer`` use full names)."""
        return relative if self.layer is None else f"{self.name}.{relative}"

    def run_layer(self) -> List:
        """Run the unit on its calibration batches again; its outputs (one per batch)."""
        if self.runner is None:
            raise RuntimeError(f"{self.name}: this unit has no calibration batches to re-run")
        return self.runner()

    def feed_layer(self) -> None:
        """Run the unit on its calibration batches for its recorders and observers only: products
        nothing in the unit reads are skipped and no outputs are returned."""
        if self.feeder is None:
            self.run_layer()
        else:
            self.feeder()

    def refresh_observers(self) -> List[str]:
        """Observe again the activation observers made stale by a per-channel rescale (histograms).

        Returns the relative names re-observed; one extra pass over the calibration batches when
        any is stale, none otherwise.
        """
        stale = {rel: c for rel, c in self.quant_cells.items()
                 if not c.quantized and getattr(getattr(c, "input_observer", None), "stale", False)}
        if not stale:
            return []
        for cell in stale.values():
            cell.input_observer.reset()
            cell.observing = True
        try:
            self.feed_layer()
        finally:
            for cell in stale.values():
                cell.observing = False
        return sorted(stale)

    def find(self, relative: str) -> nn.Cell:
        """The cell at ``relative`` inside the layer (``"attention.wq"``); a clear error if absent."""
        cell = self.layer
        for part in relative.split("."):
            child = cell._cells.get(part) if cell is not None else None  # pylint: disable=protected-access
            if child is None:
                raise KeyError(f"{self.name}: no sub-cell '{relative}' (stopped at '{part}'); check the "
                               f"structure's mappings against the network")
            cell = child
        return cell


class AlgoModule:
    """A step of the PTQ pipeline.

    ``process(ctx)`` runs after the layer's calibration pass (observers filled) and before the
    layer's quantized outputs are computed for the next layer. Modules run in pipeline order;
    subclass and insert into ``PTQ.pipeline`` to add one without touching PTQ.
    """

    name = "module"
    needs_layer_inputs = False   # True: PTQ records the Linear inputs of the calibration pass into ctx.inputs
    keeps_layer_weights = False  # True: process() changes no float weight of the unit (so modules after it
                                 # may be given the calibration pass's input grams instead of a new pass)
    rescales_input_grams = False  # True: its weight changes only divide Linear inputs by per-channel scales,
                                  # and it rescales ctx.grams to match (dropping those it cannot)
    method: Optional[MethodDeclaration] = None   # set by the registered accuracy methods

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("method") is not None:   # what PTQ records follows from the declaration
            cls.name = cls.method.name
            cls.needs_layer_inputs = INPUT_ROWS in cls.method.needs

    @classmethod
    def from_config(cls, config=None) -> "AlgoModule":
        """The module sized by ``config.algo_args`` (defaults without a config)."""
        return cls()

    def process(self, ctx: LayerContext) -> None:
        raise NotImplementedError

    def prepare_deploy(self, ctx: LayerContext) -> None:
        """DEPLOY mode, before placeholders are made: set any structure the module's QUANTIZE run adds."""

    def prepare_network(self, network: nn.Cell, quantize: bool) -> None:
        """Before PTQ swaps any layer (both modes): a whole-network step, e.g. a rotation that changes
        the float weights (``quantize=True``) and the structure DEPLOY must rebuild (both)."""


class InputRecorder:
    """Keeps every ``stride``-th row of the inputs it is fed (``QuantLinear.recorder``), up to
    ``max_rows``; with ``gram=True`` also sums ``x^T x`` over every row (memory ``in^2``, not rows)."""

    def __init__(self, stride: int = 1, max_rows: Optional[int] = None, gram: bool = False):
        self.stride, self.max_rows = max(1, int(stride)), max_rows
        self.parts: List[np.ndarray] = []
        self.kept = 0
        self.gram: Optional[np.ndarray] = None   # with ``gram``: sum of x^T x over every row fed (float64)
        self.gram_rows = 0 if gram else None

    def __call__(self, x2: np.ndarray) -> None:
        if self.gram_rows is not None:
            x32 = np.asarray(x2, np.float32)
            # float32 GEMM per batch, summed in float64; once per input however many layers read it
            part = shared(x2, "gram", lambda: (x32.T @ x32).astype(np.float64))
            self.gram = part.copy() if self.gram is None else self.gram + part   # a copy: part may be shared
            self.gram_rows += x32.shape[0]
        if self.max_rows is not None and self.kept >= self.max_rows:
            return
        rows = np.asarray(x2, np.float32)[::self.stride]
        if self.max_rows is not None:
            rows = rows[: self.max_rows - self.kept]
        self.parts.append(np.array(rows, copy=True))   # a copy: a view would keep the whole batch alive
        self.kept += rows.shape[0]

    def rows(self) -> np.ndarray:
        if not self.parts:
            raise RuntimeError("InputRecorder: no input was recorded; did the layer run?")
        return np.concatenate(self.parts, axis=0)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def feed_linear_input(cell, x) -> None:
    """Give a QuantLinear's recorder and (while it observes) its input observer the input ``x``,
    exactly as its calibration forward pass would, without computing the output: the head's
    outputs are ``[tokens, vocab]`` per batch and nothing during calibration reads them."""
    x2 = x.reshape(-1, x.shape[-1]).asnumpy()
    if cell.recorder is not None:
        cell.recorder(x2)
    if cell.observing and not cell.quantized:
        cell.input_observer.update(x2 if cell.input_shift_value is None else x2 - cell.input_shift_value)
