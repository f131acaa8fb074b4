"""Float weights read one tensor at a time, under our (MindFormers) parameter names.

Sources: a Hugging Face folder (``config.json`` + single or sharded safetensors, bf16/fp16/fp32),
MindFormers-named safetensors or MindSpore ``.ckpt`` (the network's shape given as a LlamaConfig, or
by a ``config.json`` beside them), and GGUF files (llama.cpp; the default SmolLM2 model). Nothing is read before it
is asked for: a streamed quantization holds one decoder layer of float weights at a time.
"""
from __future__ import annotations

import os
from typing import Callable, Iterator, Optional, Tuple

import numpy as np

from golden_ptq.config.model_config import LlamaConfig
from golden_ptq.io.safetensors_files import INDEX_SUFFIX, open_safetensors
from golden_ptq.io.tensor_names import HF_GLOBAL, HF_PER_LAYER, name_map

HF_EMBEDDING = HF_GLOBAL["model.tok_embeddings.embedding_weight"]
OUR_EMBEDDING = "model.tok_embeddings.embedding_weight"


#: Rows per block when a vocabulary table is copied through: about this many bytes of float32.
BLOCK_BYTES = 64 << 20


class FloatSource:
    """``get(name)`` -> float array (or None) by our parameter name; ``config``; ``tokenizer()``.

    ``shape_of`` gives a tensor's shape from the file's index or header (without it, :meth:`shape`
    reads the tensor); a source that reads a tensor's rows alone (safetensors) also gives
    ``fetch_rows``, and then :meth:`row_blocks` never holds more than one block of a table."""

    def __init__(self, path: str, config: LlamaConfig, fetch: Callable[[str], Optional[np.ndarray]],
                 tokenizer: Callable[[], object], check_head: Callable[[], None] = lambda: None,
                 shape_of: Optional[Callable[[str], Optional[Tuple[int, ...]]]] = None,
                 fetch_rows: Optional[Callable[[str, int, int], np.ndarray]] = None):
        self.path, self.config = path, config
        self._fetch, self._tokenizer, self._check_head = fetch, tokenizer, check_head
        self._shape_of, self._fetch_rows = shape_of, fetch_rows

    def get(self, name: str) -> Optional[np.ndarray]:
        return self._fetch(name)

    def shape(self, name: str) -> Optional[Tuple[int, ...]]:
        """The stored shape of ``name`` (None when absent); a source without shapes reads the tensor."""
        if self._shape_of is not None:
            return self._shape_of(name)
        array = self._fetch(name)
        return None if array is None else tuple(array.shape)

    def row_blocks(self, name: str, block_bytes: Optional[int] = None) -> Iterator[Tuple[int, np.ndarray]]:
        """``(first row, float32 block)`` over a present 2-D tensor, in order. Sources without row reads
        (GGUF, ``.ckpt``) read it whole and give it as one block."""
        if self._fetch_rows is None:
            yield 0, np.ascontiguousarray(self._fetch(name), dtype=np.float32)
            return
        rows, cols = self.shape(name)
        step = max(1, (block_bytes or BLOCK_BYTES) // (4 * max(1, cols)))
        for start in range(0, rows, step):
            yield start, np.ascontiguousarray(self._fetch_rows(name, start, min(rows, start + step)), dtype=np.float32)

    def tokenizer(self):
        """The source's tokenizer, or None when it has none."""
        return self._tokenizer()

    def check_head(self) -> None:
        """Raise when ``tie_word_embeddings`` disagrees with the weights (read at the head, not before)."""
        self._check_head()


def open_float_source(path: str, model_config: Optional[LlamaConfig] = None,
                      max_position_embeddings: Optional[int] = None) -> FloatSource:
    """The float weights at ``path``: a GGUF file, a MindSpore ``.ckpt``, a safetensors file / index /
    folder (HF or MindFormers names). ``model_config`` describes a source that carries no config of its own."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"quantize_streamed: model path {path!r} does not exist")
    if os.path.isfile(path) and _is_gguf(path):
        source = _gguf_source(path)
    elif os.path.isfile(path) and path.endswith(".ckpt"):
        from golden_ptq.io.ckpt_files import CkptFiles
        source = _named_source(path, CkptFiles(path), model_config)
    elif os.path.isdir(path) or path.endswith((".safetensors", INDEX_SUFFIX)):
        source = _named_source(path, open_safetensors(path), model_config)
    else:
        raise ValueError(f"{path}: not a model streaming can read; give a GGUF file, a MindSpore .ckpt, a "
                         f"safetensors file or index, or a folder holding safetensors")
    if max_position_embeddings:
        source.config.max_position_embeddings = int(max_position_embeddings)
    return source


def _is_gguf(path: str) -> bool:
    with open(path, "rb") as handle:
        return handle.read(4) == b"GGUF"


def _gguf_source(path: str) -> FloatSource:
    from golden_ptq.io.gguf_file import GGUFFile, gguf_config
    from golden_ptq.networks.loaders.gguf_loader import gguf_fetcher, gguf_shapes
    from golden_ptq.networks.tokenizer import Tokenizer
    file = GGUFFile(path)
    config = gguf_config(file)
    return FloatSource(path, config, gguf_fetcher(file, config), lambda: Tokenizer.from_gguf_metadata(file.metadata),
                       shape_of=gguf_shapes(file, config))


def _named_source(path: str, tensors, model_config: Optional[LlamaConfig]) -> FloatSource:
    """Tensors by name (safetensors or ckpt reader), in Hugging Face or MindFormers names."""
    from golden_ptq.networks.tokenizer import Tokenizer
    folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    has_config = os.path.isfile(os.path.join(folder, "config.json"))
    if model_config is None and not has_config:
        raise ValueError(f"{path}: no config.json beside the weights; pass model_config=LlamaConfig(...) "
                         f"describing the network")
    if model_config is None:
        from golden_ptq.io.hf_config import hf_config
        model_config = hf_config(folder)
    config = LlamaConfig.from_dict(model_config.to_dict())  # a copy: max_position_embeddings may be changed
    has_tokenizer = os.path.isfile(os.path.join(folder, "tokenizer.json"))
    tokenizer = (lambda: Tokenizer.from_hf_dir(folder)) if has_tokenizer else (lambda: None)
    if HF_EMBEDDING in tensors:
        mapping = name_map(config.num_layers, HF_PER_LAYER, HF_GLOBAL)

        def check_head() -> None:
            from golden_ptq.networks.loaders.hf_loader import check_tied_head
            check_tied_head(tensors, config, path)

        return FloatSource(path, config, lambda name: tensors.get(mapping.get(name, name)), tokenizer, check_head,
                           **_row_reads(tensors, lambda name: mapping.get(name, name)))
    if OUR_EMBEDDING in tensors:
        return FloatSource(path, config, tensors.get, tokenizer, **_row_reads(tensors, lambda name: name))
    raise ValueError(f"{path}: neither '{HF_EMBEDDING}' (Hugging Face names) nor '{OUR_EMBEDDING}' (MindFormers "
                     f"names) is among its tensors; names look like: {', '.join(tensors.names()[:4])}")


def _row_reads(tensors, stored: Callable[[str], str]) -> dict:
    """``shape_of`` from a reader's index, and ``fetch_rows`` when it reads row ranges (safetensors)."""
    reads = {"shape_of": lambda name: tensors.shape(stored(name)) if stored(name) in tensors else None}
    if hasattr(tensors, "get_rows"):
        reads["fetch_rows"] = lambda name, start, stop: tensors.get_rows(stored(name), start, stop)
    return reads
