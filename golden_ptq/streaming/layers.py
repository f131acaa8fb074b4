"""The streamed layer source: each calibration unit built from the float source when the driver
reaches it, and written as one shard of the output as soon as the driver is done with it.

Units, in order: the embedding (one shard), every decoder layer (one shard each), the final norm
with ``lm_head`` (one shard). Names, dtypes and shapes are those ``save_checkpoint`` writes for
the same network quantized in memory: each unit is a real cell tree named as in
:class:`~golden_ptq.networks.llama.LlamaForCausalLM`, whose ``parameters_and_names`` is what is written.
"""
from __future__ import annotations

import gc
from typing import Dict, Iterator, Optional, Sequence, Tuple

import numpy as np
from mindspore import Parameter, Tensor, nn

from golden_ptq.algorithm.driver import LayerSource
from golden_ptq.algorithm.modules.rotation import (RotationMatrices, rotate_embedding, rotate_head, rotate_layer,
                                                   set_online_transform)
from golden_ptq.algorithm.swap import quant_targets, share_tied_head
from golden_ptq.io.checkpoint import quant_desc
from golden_ptq.io.sharded_writer import ChunkedTensor, ShardedSafetensorsWriter
from golden_ptq.networks.layers import Embedding, Linear, RMSNorm, rope_tables, rotate_half_index
from golden_ptq.networks.llama import LlamaDecodeLayer, LlamaForCausalLM, _as_int_tensor, sync_parameter_names
from golden_ptq.networks.token_ids import check_token_ids
from golden_ptq.networks.loaders.common import MissingTensorError
from golden_ptq.parallel.context import TPContext, resolve
from golden_ptq.parallel.sharding import TPLayout, shard_array
from golden_ptq.quant_cells import QuantCell
from golden_ptq.streaming.boundary import BoundaryStore
from golden_ptq.streaming.float_source import FloatSource

EMBEDDING = "model.tok_embeddings"
EMBEDDING_TABLE = f"{EMBEDDING}.embedding_weight"
HEAD_TABLE = "lm_head.weight"
#: A written unit of at least this many bytes is freed at once (``gc.collect``: quantized cells hold
#: reference cycles); smaller ones are left to the collector, whose full pass costs ~0.3 s.
COLLECT_BYTES = 4 << 20


class NetworkShell(nn.Cell):
    """The parts of ``LlamaForCausalLM`` outside its decoder layers, under the same names, holding
    only the cells of the unit at hand (``model.tok_embeddings``, ``model.norm_out``, ``lm_head``).

    Modules and the structure see it as the network: ``embed`` and ``layer_inputs`` are the
    network's own methods (same rotary tables and masks, so the same activations)."""

    def __init__(self, config, tp: Optional[TPContext] = None):
        super().__init__()
        self.config = config
        self.tp = resolve(tp)
        self.tp_layout = TPLayout.for_config(config, self.tp)
        self.model = nn.Cell()
        self._cos_table, self._sin_table = rope_tables(config.head_dim, config.max_position_embeddings,
                                                       config.rope_theta)
        index_q, self._sign_q = rotate_half_index(self.tp_layout.local_heads, config.head_dim)
        index_k, self._sign_k = rotate_half_index(self.tp_layout.local_kv_heads, config.head_dim)
        self.index_q, self.index_k = Tensor(index_q), Tensor(index_k)
        #: sorted token ids whose rows alone the embedding holds (a float table, calibration tokens only)
        self.embedding_rows: Optional[np.ndarray] = None

    layer_inputs = LlamaForCausalLM.layer_inputs
    _layer_arrays = LlamaForCausalLM._layer_arrays

    def embed(self, input_ids) -> Tensor:
        """The network's ``embed``; through ``embedding_rows`` when only those rows are held (a gather of
        the same rows: the same values)."""
        ids = check_token_ids(input_ids, self.config.vocab_size)
        if self.embedding_rows is not None:
            local = np.minimum(np.searchsorted(self.embedding_rows, ids), self.embedding_rows.size - 1)
            if not np.array_equal(self.embedding_rows[local], ids):
                raise RuntimeError("streamed embedding: a token id outside the calibration tokens was embedded")
            ids = local
        return self.model.tok_embeddings(_as_int_tensor(ids))

    def clear(self) -> None:
        """Drop every cell of the last unit."""
        for name in list(self.model._cells):  # pylint: disable=protected-access
            delattr(self.model, name)
        if "lm_head" in self._cells:
            delattr(self, "lm_head")


class StreamedLayers(LayerSource):
    """A :class:`LayerSource` over a float source; ``ptq`` swaps in the quantized Cells and keeps
    the records; every unit goes to ``writer`` as one shard and into ``desc`` (quant_desc.json)."""

    def __init__(self, source: FloatSource, ptq, structure, shell: NetworkShell, writer: ShardedSafetensorsWriter,
                 boundaries: BoundaryStore, rotation=None, token_ids: Optional[np.ndarray] = None):
        """``rotation``: the pipeline's RotationModule, applied to each unit as it is read (the same
        per-unit functions the in-memory rotation uses; the shell's config is then untied).
        ``token_ids``: the calibration tokens; a float embedding then holds only their rows, and float
        vocabulary tables are copied to the output block by block, never whole in memory."""
        self.source, self.ptq, self.structure, self.network = source, ptq, structure, shell
        self.writer, self.boundaries = writer, boundaries
        self.config = source.config   # the source's: a tied source's head is read from the embedding
        self.rotation = None if rotation is None else (RotationMatrices(source.config, rotation.seed), rotation.online)
        self.desc: Dict[str, str] = {}
        self.written: set = set()
        self._bytes_since_collect = 0   # bytes written since the last gc.collect
        self._shared: Dict[int, np.ndarray] = {}   # data pointer -> the array a table Parameter shares
        self.token_ids = None if token_ids is None else np.unique(np.asarray(token_ids, dtype=np.int64))
        self._copies: Dict[str, ChunkedTensor] = {}   # float tables of the unit at hand, written from the source
        self._head_copied = False   # the head stayed float: its table (if written) is a copy, not the cell's

    # ----- loading ------------------------------------------------------------------------------
    def _load(self, cell: nn.Cell, prefix: str) -> None:
        """Fill every parameter of ``cell`` (named ``prefix.relative``) from the source, this rank's slice."""
        layout = self.network.tp_layout
        for rel, param in cell.parameters_and_names():
            name = f"{prefix}.{rel}" if prefix else rel
            array = self.source.get(name)
            if array is None:
                raise MissingTensorError(f"{self.source.path}: tensor for parameter '{name}' (expected shape "
                                         f"{tuple(param.shape)}) is missing")
            if self.network.tp.parallel:
                array = np.ascontiguousarray(shard_array(name, array, layout))
            if tuple(array.shape) != tuple(param.shape):
                raise ValueError(f"{self.source.path}: tensor for parameter '{name}' has shape {tuple(array.shape)}, "
                                 f"expected {tuple(param.shape)}")
            param.set_data(Tensor(np.ascontiguousarray(array, dtype=np.float32)))
            del array

    @property
    def _vocab_shape(self) -> Tuple[int, int]:
        """The shape of a vocabulary table (embedding, lm_head): replicated under TP, so whole."""
        return self.config.vocab_size, self.config.hidden_size

    def _check_table(self, name: str, stored: Optional[Tuple[int, ...]]) -> None:
        """One-line errors for a vocabulary table that the source lacks or holds in another shape."""
        if stored is None:
            raise MissingTensorError(f"{self.source.path}: tensor for parameter '{name}' (expected shape "
                                     f"{self._vocab_shape}) is missing")
        if tuple(stored) != self._vocab_shape:
            raise ValueError(f"{self.source.path}: tensor for parameter '{name}' has shape {tuple(stored)}, "
                             f"expected {self._vocab_shape}")

    def _read_table(self, name: str) -> np.ndarray:
        """A vocabulary-sized float table from the source, checked, as contiguous float32."""
        array = self.source.get(name)
        self._check_table(name, None if array is None else array.shape)
        return np.ascontiguousarray(array, dtype=np.float32)

    def _table(self, name: str) -> Parameter:
        """A vocabulary-sized float table as a Parameter made straight from the array read: building
        the cell at full size first would hold a zero table beside it (3 copies at the peak, not 2)."""
        return self._shared_parameter(self._read_table(name), name.rsplit(".", 1)[1])

    def _shared_parameter(self, array: np.ndarray, name: str) -> Parameter:
        """A Parameter holding ``array`` itself: ``set_data(Tensor.from_numpy(...))`` shares the memory
        (``Parameter(tensor)`` would copy it), and ``_write`` reads it back without a copy."""
        param = Parameter(Tensor(np.zeros(1, np.float32)), name=name)
        param.set_data(Tensor.from_numpy(array))
        self._shared[array.ctypes.data] = array
        return param

    def _stays_float(self, cell: nn.Cell, name: str) -> bool:
        """Nothing quantizes ``cell`` at ``name`` (not registered, or its spec skips it)."""
        entry = self.ptq.registry.lookup(cell)
        return entry is None or bool(self.ptq.layer_spec(name, entry["kind"]).skip_reason)

    def _copied_table(self, name: str) -> ChunkedTensor:
        """A float table written straight from the source, block by block (checked now)."""
        self._check_table(name, self.source.shape(name))
        return ChunkedTensor(self._vocab_shape, np.float32, lambda: (block for _, block in self.source.row_blocks(name)))

    def _table_rows(self, name: str, rows: np.ndarray) -> np.ndarray:
        """Rows ``rows`` (sorted, unique) of a float table, read block by block."""
        out = np.empty((rows.size, self.config.hidden_size), np.float32)
        for start, block in self.source.row_blocks(name):
            low, high = np.searchsorted(rows, [start, start + block.shape[0]])
            out[low:high] = block[rows[low:high] - start]
        return out

    def _embedding(self) -> Embedding:
        cell = Embedding(1, self.config.hidden_size)   # replicated under TP: the whole table
        cell.embedding_weight = self._table(EMBEDDING_TABLE)
        return cell

    def _head(self) -> Linear:
        cell = Linear(self.config.hidden_size, 1)      # replicated under TP: the whole table
        cell.out_features = self.config.vocab_size
        cell.weight = self._table(HEAD_TABLE)
        return cell

    # ----- writing ------------------------------------------------------------------------------
    def _write(self, root: nn.Cell, prefix: str = "", skip: Sequence[str] = ()) -> None:
        """Write ``root``'s parameters (but those under ``skip``) as the next shard, and their quant types."""
        sync_parameter_names(root)
        full = (lambda rel: f"{prefix}.{rel}") if prefix else (lambda rel: rel)
        arrays = {full(rel): np.ascontiguousarray(self._array_of(param)) for rel, param in root.parameters_and_names()
                  if not rel.startswith(tuple(skip))}
        self.desc.update({full(rel): kind for rel, kind in quant_desc(root).items() if not rel.startswith(tuple(skip))})
        self._bytes_since_collect += sum(int(v.nbytes) for v in arrays.values())
        arrays.update(self._copies)
        self.desc.update({name: "FLOAT" for name in self._copies})
        self._copies = {}
        again = [name for name in arrays if name in self.written]
        if again:
            raise RuntimeError(f"streamed quantization wrote parameter '{again[0]}' twice")
        self.writer.write_shard(arrays)
        self._shared.clear()   # the unit is written: its tables may be freed with it
        self.written.update(arrays)

    def _array_of(self, param: Parameter) -> np.ndarray:
        """The parameter's values: the very array it shares when it is a table made here (no copy of a
        vocabulary-sized table), else a copy."""
        shared = self._shared.get(param.data_ptr())
        if shared is not None and tuple(shared.shape) == tuple(param.shape):
            return shared
        return param.asnumpy()

    def _collect(self) -> None:
        """Free the cells of written units now when they were large (see COLLECT_BYTES)."""
        if self._bytes_since_collect >= COLLECT_BYTES:
            gc.collect()
            self._bytes_since_collect = 0

    def _drop_float_cells(self, prefix: str) -> None:
        """The float cells of a written unit are not needed again (streaming has no rollback)."""
        floats = self.ptq._float_cells  # pylint: disable=protected-access
        for name in [n for n in floats if n == prefix or n.startswith(prefix + ".")]:
            del floats[name]

    # ----- LayerSource --------------------------------------------------------------------------
    def embedding_cells(self) -> Dict[str, QuantCell]:
        probe = Embedding(1, self.config.hidden_size)
        if self.rotation is None and self.token_ids is not None and self._stays_float(probe, EMBEDDING):
            self._copies[EMBEDDING_TABLE] = self._copied_table(EMBEDDING_TABLE)
            probe.embedding_weight = self._shared_parameter(self._table_rows(EMBEDDING_TABLE, self.token_ids),
                                                            "embedding_weight")
            self.network.embedding_rows = self.token_ids
            self.network.model.tok_embeddings = probe
            self.ptq.swap_in(self.network, quant_targets(self.network, self.ptq.registry))   # records it, float
            return {}
        if self.rotation is None:
            embedding = self._embedding()
        else:   # rotated as read: E Q is the only table held
            embedding = Embedding(1, self.config.hidden_size)
            table = self._read_table(EMBEDDING_TABLE)
            embedding.embedding_weight = self._shared_parameter(rotate_embedding(table, self.rotation[0]),
                                                                "embedding_weight")
            del table
        self.network.model.tok_embeddings = embedding
        self.ptq.swap_in(self.network, quant_targets(self.network, self.ptq.registry))
        return {n: c for n, c in self.network.cells_and_names() if isinstance(c, QuantCell)}

    def embedding_done(self) -> None:
        if self.network.embedding_rows is not None:   # the held rows are not the table: it is copied through
            self._write(self.network, skip=(EMBEDDING + ".",))
            self.network.embedding_rows = None
        else:
            self._write(self.network)
        self._drop_float_cells(EMBEDDING)
        self.network.clear()
        self._collect()

    def num_layers(self) -> int:
        return self.config.num_layers

    def decoder_layers(self) -> Iterator[Tuple[str, nn.Cell]]:
        for index in range(self.config.num_layers):
            self._collect()   # the layer written last is unreferenced by now
            name = f"model.layers.{index}"
            layer = LlamaDecodeLayer(self.config, self.network.tp_layout)
            self._load(layer, name)
            if self.rotation is not None:
                self._rotate_layer(layer)
            layer.set_train(False)
            self.ptq.swap_in(layer, quant_targets(layer, self.ptq.registry, name), name)
            yield name, layer
            del layer

    def _rotate_layer(self, layer: nn.Cell) -> None:
        mats, online = self.rotation
        params = dict(layer.parameters_and_names())
        rotated = rotate_layer({rel: param.asnumpy() for rel, param in params.items()}, mats, online)
        for rel, array in rotated.items():
            params[rel].set_data(Tensor.from_numpy(array))
        if online:
            set_online_transform(layer)

    def layer_done(self, name: str, layer: nn.Cell) -> None:
        self._write(layer, name)
        self._drop_float_cells(name)

    def head_cells(self) -> Dict[str, QuantCell]:
        config, shell = self.config, self.network
        self._collect()
        self.source.check_head()
        shell.model.norm_out = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self._load(shell.model.norm_out, "model.norm_out")
        if self.rotation is not None:   # the rotated head is untied: the final norm folded in, then Q
            table = self._read_table(EMBEDDING_TABLE if config.tie_word_embeddings else HEAD_TABLE)
            rotated = rotate_head(table, shell.model.norm_out.weight.asnumpy(), self.rotation[0])
            del table
            shell.model.norm_out.weight.set_data(Tensor(rotated["model.norm_out.weight"]))
            shell.lm_head = Linear(config.hidden_size, 1)
            shell.lm_head.out_features = config.vocab_size
            shell.lm_head.weight = self._shared_parameter(rotated.pop(HEAD_TABLE), "weight")
        elif self.token_ids is not None and self._stays_float(Linear(config.hidden_size, 1), "lm_head"):
            # a float head is only copied through; tied to a float embedding, it *is* that table (written there)
            embedding_float = self._stays_float(Embedding(1, config.hidden_size), EMBEDDING)
            if not config.tie_word_embeddings or not embedding_float:
                self._copies[HEAD_TABLE] = self._copied_table(EMBEDDING_TABLE if config.tie_word_embeddings
                                                              else HEAD_TABLE)
            shell.lm_head = Linear(config.hidden_size, 1)   # a placeholder standing for the head in the records
            shell.lm_head.out_features = config.vocab_size
            self._head_copied = True
            self.ptq.swap_in(shell, quant_targets(shell, self.ptq.registry))
            return {}
        elif config.tie_word_embeddings:  # the head is the embedding table, as in LlamaForCausalLM
            embedding = self._embedding()
            shell.lm_head = Linear(config.hidden_size, 1)
            shell.lm_head.out_features = config.vocab_size
            shell.lm_head.weight = embedding.embedding_weight
            shell.model.tok_embeddings = self._embedding_as_written(embedding)
        else:
            shell.lm_head = self._head()
        targets = [t for t in quant_targets(shell, self.ptq.registry) if not t[0].startswith(EMBEDDING)]
        self.ptq.swap_in(shell, targets)
        return {n: c for n, c in shell.cells_and_names() if isinstance(c, QuantCell)
                and not n.startswith(EMBEDDING)}

    def _embedding_as_written(self, embedding: Embedding) -> nn.Cell:
        """The embedding in the form its shard holds (quantized again: deterministic), so that a tied
        head shares or keeps parameters exactly as in the in-memory network."""
        if self._stays_float(embedding, EMBEDDING):
            return embedding
        entry = self.ptq.registry.lookup(embedding)
        cell = entry["quant_type"](embedding, self.ptq.layer_spec(EMBEDDING, entry["kind"]))
        cell.quantize()
        return cell

    def head_done(self) -> None:
        share_tied_head(self.network)
        self._write(self.network, skip=(EMBEDDING + ".", "lm_head.") if self._head_copied else (EMBEDDING + ".",))
        self._drop_float_cells("lm_head")
        self.network.clear()
        self._collect()

    def boundary(self, outputs, previous):
        return self.boundaries.boundary(outputs, previous)
