"""The whole network's decode step as one compiled graph.

Eager (PyNative) decoding launches some fifty small operators per layer and token, and their
launch cost, not the arithmetic, sets the speed at batch 1. The compiled step runs embedding,
every decoder layer (each writing its keys/values into a preallocated static cache in place, see
:class:`golden_ptq.networks.layers.StaticKVBuffers`), the final norm and the head as one graph. The
graph depends only on the batch size and the cache capacity, so tokens after the first reuse it.

The step runs with the context switched to GRAPH_MODE for the call only (about 0.2 ms). A
``mindspore.jit``-decorated construct would be the obvious alternative, but on MindSpore 2.10 it
keeps the parameter values it was compiled with: a ``set_data`` or ``assign`` afterwards (loading
a checkpoint, say) would silently not reach it. Under GRAPH_MODE the graph reads the parameters.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import mindspore as ms
from mindspore import Tensor, nn


class GraphCompileError(RuntimeError):
    """MindSpore could not compile a golden_ptq graph; the network falls back to PyNative."""


@contextlib.contextmanager
def graph_mode() -> Iterator[None]:
    """GRAPH_MODE for the duration of the block, then the previous mode again."""
    previous = ms.get_context("mode")
    if previous == ms.GRAPH_MODE:
        yield
        return
    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        yield
    finally:
        ms.set_context(mode=previous)


class _NetworkGraph(nn.Cell):
    """A whole-network graph over ``network``; :meth:`run` compiles on the first call for each input shape."""

    def __init__(self, network: nn.Cell):
        super().__init__()
        self.network = network

    @property
    def compile_phase(self):
        return self._compile_phase

    @compile_phase.setter
    def compile_phase(self, value: str) -> None:
        # MindSpore sets the phase on every call, and the base setter walks every sub-cell (~4 ms a
        # call for SmolLM2's ~800 cells, a tenth of a decode step). The sub-cells already hold the
        # phase when it is this cell's own; a new one (a first compile) still reaches them all.
        if value != self._compile_phase:
            nn.Cell.compile_phase.fset(self, value)

    def run(self, *inputs: Tensor) -> Tensor:
        return _run_graph(self, inputs)


class CompiledDecodeStep(_NetworkGraph):
    """``step(ids [B, 1], cos_q, sin_q, cos_k, sin_k, mask, slots) -> logits [B, V]`` for ``network``
    (a :class:`golden_ptq.networks.llama.LlamaForCausalLM` whose caches hold static buffers)."""

    def construct(self, ids: Tensor, cos_q: Tensor, sin_q: Tensor, cos_k: Tensor, sin_k: Tensor, mask: Tensor,
                  slots: Tensor) -> Tensor:
        net = self.network
        hidden = net.model.tok_embeddings(ids)
        for layer in net.model.layers:
            hidden = layer.decode_static(hidden, cos_q, sin_q, cos_k, sin_k, net.index_q, net.index_k, mask, slots)
        # [B, 1, D] -> [B, D] before the head: a reshape is free, where slicing the [B, 1, V] logits
        # is a per-element StridedSlice (~1.2 ms for SmolLM2's 49k vocabulary)
        return net.lm_head(net.model.norm_out(hidden).reshape(ids.shape[0], -1))


class CompiledForward(_NetworkGraph):
    """``forward(ids [B, T], cos_q, sin_q, cos_k, sin_k, mask, slots) -> hidden [B, T, D]`` as one
    graph: a prefill that writes every layer's keys/values into its static cache at ``slots``."""

    def construct(self, ids: Tensor, cos_q: Tensor, sin_q: Tensor, cos_k: Tensor, sin_k: Tensor, mask: Tensor,
                  slots: Tensor) -> Tensor:
        net = self.network
        hidden = net.model.tok_embeddings(ids)
        for layer in net.model.layers:
            hidden = layer.forward_static(hidden, cos_q, sin_q, cos_k, sin_k, net.index_q, net.index_k, mask, slots)
        return hidden


def _run_graph(cell: nn.Cell, inputs) -> Tensor:
    """Run ``cell`` in GRAPH_MODE; a failure to compile becomes :class:`GraphCompileError` (MindSpore
    2.10's graph parser has been seen to resolve a cell to another one's code in long processes
    that build and drop many networks)."""
    with graph_mode():
        try:
            return cell(*inputs)
        except (TypeError, AttributeError, ValueError, RuntimeError) as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise GraphCompileError(f"{type(cell).__name__}: {first}") from error
