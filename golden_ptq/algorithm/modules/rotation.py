"""Rotation (QuaRot style, ``PTQConfig.rotation: hadamard``): an equivalent float network with
fewer activation outliers, made before calibration.

With ``Q`` orthogonal (``Q Qᵀ = I``), a residual stream ``x`` carried as ``x Q`` computes the same
network if every Linear reading it takes ``W Q`` and every Linear writing it gives ``Qᵀ W``.
RMSNorm commutes with ``Q`` once its weight ``g`` is folded into the Linears it feeds
(``rms(x Q) = rms(x)``: the norm becomes ``x / rms(x)``). Steps, all offline in float64:

* every RMSNorm weight is folded into the input columns of the Linears after it (``wq/wk/wv``,
  ``w1/w3``, ``lm_head``) and set to ones;
* ``Q`` (:func:`~golden_ptq.networks.hadamard.random_rotation`: a Hadamard matrix of the
  hidden size with seeded random signs; SmolLM2's 576 = 12 x 12 x 4 is built from Paley's order
  12 and Sylvester's 4, and applied through those factors, not as a dense matrix) multiplies the
  embedding rows ``E Q``, the inputs of ``wq/wk/wv/w1/w3`` and ``lm_head`` (``W Q``) and the
  outputs of ``wo/w2`` (``Qᵀ W``);
* each value head is rotated by a second such matrix ``Hv`` of order head_dim: ``wv``'s rows per
  KV head ``Hvᵀ W`` (bias ``b Hv``), ``wo``'s input columns per query head ``W Hv`` (attention
  mixes positions, not channels, so it commutes); the stored values are rotated too (int8 KV);
* with ``algo_args['rotation_online']`` (default true), ``feed_forward.w2``'s input gets an online
  block Hadamard ``T`` (:class:`~golden_ptq.networks.hadamard.OnlineHadamard`,
  ``FeedForward.down_transform``) at run time and ``w2`` takes ``W T`` offline, so its
  1536-wide input (12 blocks of 128) is spread.

With that online transform, the smoothing methods that run after the rotation (``anti_method``)
see the layer structure without the ``feed_forward.w3 -> w2`` mapping: a per-channel scale moved across ``T`` would not
cancel (``T`` mixes the channels), so that pair is not smoothed (:class:`RotatedStructure`) — unless
``algo_args['rotation_online_smooth']``: then the mapping is kept with the transform named, and m1 /
m2 / m6 smooth the channels *before* ``T`` (w3 rows / s, w2 takes ``(W T) diag(s) T``; see
:mod:`golden_ptq.algorithm.modules.smooth_transform`). Nothing new is deployed: the fold changes
only float weights.

A tied ``lm_head`` (SmolLM2) is untied: it becomes ``W diag(g_out) Q``, no longer the embedding
table, so the network's config says ``tie_word_embeddings: False`` and a saved checkpoint carries
``lm_head.weight`` separately. DEPLOY re-creates the structure (online transforms, untied head)
from ``ptq_config.yaml``'s ``rotation`` and ``algo_args``; the rotated weights come from the checkpoint.
Before quantization the rotated network gives the float logits up to float32 rounding.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, List

import numpy as np
from mindspore import Parameter, Tensor, nn

from golden_ptq.algorithm.modules.base import WEIGHTS, AlgoModule, LayerContext, MethodDeclaration, config_arg
from golden_ptq.config.method_names import ROTATION, W8A8, WEIGHT_ONLY
from golden_ptq.networks.hadamard import OnlineHadamard, random_rotation, times_online
from golden_ptq.networks.llama import LlamaForCausalLM
from golden_ptq.quant_cells.base import QuantCell

METHOD = "rotation 'hadamard'"
ONLINE_TRANSFORMED = ("feed_forward.w2",)   # Linears whose input passes an online transform after rotation


ONLINE_TRANSFORM = "feed_forward.down_transform"   # the cell holding that transform


class RotatedStructure:
    """A layer structure as the methods after a rotation see it: the mappings whose balance layers
    read through the online transform are left out, or (``smooth_online``) kept with the transform
    named (``SmoothMapping.transform``: the scale acts before it); everything else is ``inner``'s."""

    def __init__(self, inner, smooth_online: bool = False):
        self.inner = inner
        mappings = []
        for m in inner.smooth_mappings:
            if not any(b in ONLINE_TRANSFORMED for b in m.balance):
                mappings.append(m)
            elif smooth_online:
                mappings.append(dataclasses.replace(m, transform=ONLINE_TRANSFORM))
        self.smooth_mappings = tuple(mappings)

    def __getattr__(self, name: str):
        if name == "inner":   # not set yet (a copy being built): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)


def check_rotatable(network: nn.Cell) -> None:
    """Raise a clear error unless ``network`` is golden_ptq's float Llama at TP size 1."""
    if not isinstance(network, LlamaForCausalLM):
        raise NotImplementedError(f"{METHOD} supports golden_ptq's LlamaForCausalLM, not "
                                  f"{type(network).__name__}; set PTQConfig.rotation: none")
    tp = getattr(network, "tp", None)
    if tp is not None and tp.parallel:
        raise NotImplementedError(f"{METHOD} is not supported under tensor parallel size {tp.size} (neither "
                                  f"quantizing nor deploying); run the rotated model at TP size 1")
    if any(isinstance(cell, QuantCell) for _, cell in network.cells_and_names()):
        raise RuntimeError(f"{METHOD}: the network already holds quantized cells; rotate a fresh float network")


ROTATED_MARK = "rotated_by"   # attribute set on a rotated network: which rotation made it
INCOMPLETE = "incomplete"      # its value while the rotation runs (and after one that failed)


def _is_rotated(network: LlamaForCausalLM) -> bool:
    return getattr(network, ROTATED_MARK, None) is not None


def _np(param: Parameter) -> np.ndarray:
    return param.asnumpy().astype(np.float64)


class RotationMatrices:
    """``q`` (hidden size) and ``hv`` (head dim) of one seed, drawn in that order; each a
    :class:`~golden_ptq.networks.hadamard.Rotation` applied through its Hadamard factors
    (``.dense()`` gives the matrix)."""

    def __init__(self, config, seed: int):
        rng = np.random.RandomState(seed)
        self.q = random_rotation(config.hidden_size, rng)
        self.hv = random_rotation(config.head_dim, rng)
        self.head_dim = config.head_dim


def rotate_embedding(table: np.ndarray, mats: RotationMatrices) -> np.ndarray:
    """The embedding rows ``E Q`` (computed in float64, float32)."""
    return mats.q.right(table, dtype=np.float32)


def rotate_layer(arrays: Dict[str, np.ndarray], mats: RotationMatrices, online: bool = True) -> Dict[str, np.ndarray]:
    """One decoder layer's rotated float parameters (float32) from its float ones, both by name
    relative to the layer (``attention.wq.weight``, ``attention_norm.weight``, ...)."""
    q, hv, head_dim, f32 = mats.q, mats.hv, mats.head_dim, np.float32
    out: Dict[str, np.ndarray] = {}
    # the products read float32 and work in float64 a block of rows at a time (a small working set)
    g_att, g_ffn = (np.asarray(arrays[f"{norm}.weight"], np.float64) for norm in ("attention_norm", "ffn_norm"))
    for rel, gain in (("attention.wq", g_att), ("attention.wk", g_att), ("feed_forward.w1", g_ffn),
                      ("feed_forward.w3", g_ffn)):
        out[f"{rel}.weight"] = q.right(arrays[f"{rel}.weight"], gain, f32)
    wv = q.right(arrays["attention.wv.weight"], g_att)
    heads_v = wv.shape[0] // head_dim
    # Hvᵀ W per head: the heads side by side as columns, [head_dim, heads, in]
    wv_heads = hv.left_t(wv.reshape(heads_v, head_dim, -1).transpose(1, 0, 2), f32)
    out["attention.wv.weight"] = wv_heads.transpose(1, 0, 2).reshape(wv.shape)
    if "attention.wv.bias" in arrays:
        out["attention.wv.bias"] = hv.right(arrays["attention.wv.bias"].reshape(heads_v, head_dim)).reshape(-1)
    wo = arrays["attention.wo.weight"]
    wo = hv.right(wo.reshape(wo.shape[0], -1, head_dim)).reshape(wo.shape)
    out["attention.wo.weight"] = q.left_t(wo, f32)
    w2 = arrays["feed_forward.w2.weight"]
    out["feed_forward.w2.weight"] = q.left_t(times_online(w2) if online else w2, f32)
    for norm in ("attention_norm", "ffn_norm"):
        out[f"{norm}.weight"] = np.ones(q.n)
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


def rotate_head(head: np.ndarray, norm_out: np.ndarray, mats: RotationMatrices) -> Dict[str, np.ndarray]:
    """``lm_head.weight`` with the final norm folded in and rotated, and the norm's new weight (ones),
    by their network names (float32). ``head``: the float head (the embedding table when tied)."""
    return {"lm_head.weight": mats.q.right(head, np.asarray(norm_out, np.float64), np.float32),
            "model.norm_out.weight": np.ones(mats.q.n, np.float32)}


def set_online_transform(layer) -> None:
    """The online block Hadamard before a decoder layer's ``w2`` (its ``W T`` comes from the weights)."""
    layer.feed_forward.down_transform = OnlineHadamard(int(layer.feed_forward.w2.in_features))


def _set_structure(network: LlamaForCausalLM, online: bool) -> List[str]:
    """The rotated network's structure: online transforms before each ``w2`` (``online``), an untied head."""
    if online:
        for layer in network.model.layers:
            set_online_transform(layer)
    setattr(network, ROTATED_MARK, "hadamard+online" if online else "hadamard")
    changed = []
    if network.lm_head.weight is network.model.tok_embeddings.embedding_weight:
        network.lm_head.weight = Parameter(Tensor(np.zeros(network.lm_head.weight.shape, np.float32)), name="weight")
        changed.append("lm_head untied")
    if network.config.tie_word_embeddings:
        network.config = dataclasses.replace(network.config, tie_word_embeddings=False)
    return changed


def rotate_network(network: LlamaForCausalLM, seed: int = 0, online: bool = True) -> LlamaForCausalLM:
    """Rotate a float ``network`` in place (see the module docstring); returns it. ``online=False``
    leaves out the online Hadamard before ``w2`` (``algo_args['rotation_online']``).

    The head and embedding are computed first, then each decoder layer's new parameters replace its
    old ones before the next layer is computed: the working set stays one layer. (Computing every
    array first took 3-5x longer on the 2-core development VMs, where touching hundreds of MB of new
    memory is slow.) An error half way is raised as one saying the weights are partly rotated, and
    the network, marked, refuses another rotation."""
    check_rotatable(network)
    if _is_rotated(network):
        raise RuntimeError(f"{METHOD}: the network is already rotated; rotate a fresh float network")
    mats = RotationMatrices(network.config, seed)
    head = rotate_head(network.lm_head.weight.asnumpy(), _np(network.model.norm_out.weight), mats)
    table = rotate_embedding(network.model.tok_embeddings.embedding_weight.asnumpy(), mats)
    setattr(network, ROTATED_MARK, INCOMPLETE)
    try:
        for layer in network.model.layers:
            params = dict(layer.parameters_and_names())
            rotated = rotate_layer({rel: param.asnumpy() for rel, param in params.items()}, mats, online)
            for rel, value in rotated.items():
                params[rel].set_data(Tensor(value))
    except Exception as err:   # (an interrupt stays one; the mark stays too)
        raise RuntimeError(f"{METHOD} stopped half way ({type(err).__name__}: {err}); the network's weights are "
                           f"partly rotated: build a fresh float network") from err
    _set_structure(network, online)   # unties the head: its parameter is new
    network.model.tok_embeddings.embedding_weight.set_data(Tensor(table))
    network.lm_head.weight.set_data(Tensor(head["lm_head.weight"]))
    network.model.norm_out.weight.set_data(Tensor(head["model.norm_out.weight"]))
    network.set_compiled(network.compiled_decode, network.compiled_forward)  # drop graphs of the old weights
    return network


def rotation_in(pipeline) -> List["RotationModule"]:
    """The rotation modules of a PTQ pipeline (at most one in any pipeline built from a config)."""
    return [m for m in pipeline if getattr(getattr(m, "method", None), "role", None) == ROTATION]


class RotationModule(AlgoModule):
    """``rotation: hadamard``: rotates the float network before PTQ swaps in quantized cells
    (QUANTIZE), or rebuilds the rotated structure for a checkpoint to fill (DEPLOY)."""

    method = MethodDeclaration(
        name="hadamard", alias=None, role=ROTATION, schemes=(WEIGHT_ONLY, W8A8), needs=(WEIGHTS,),
        algo_args=("rotation_seed", "rotation_online", "rotation_online_smooth"), tp=False,
        tp_note="not implemented for sharded networks, in QUANTIZE or DEPLOY; run rotated models at TP size 1")

    keeps_layer_weights = True   # the weights are rotated before calibration; per layer it changes none

    def __init__(self, seed: int = 0, online: bool = True, online_smooth: bool = False):
        if online_smooth and not online:
            raise ValueError("RotationModule: online_smooth (algo_args.rotation_online_smooth) smooths through the "
                             "online transform and needs online=True (algo_args.rotation_online)")
        self.seed, self.online, self.online_smooth = int(seed), bool(online), bool(online_smooth)

    @classmethod
    def from_config(cls, config=None) -> "RotationModule":
        return cls(seed=int(config_arg(config, "rotation_seed")), online=bool(config_arg(config, "rotation_online")),
                   online_smooth=bool(config_arg(config, "rotation_online_smooth")))

    def prepare_network(self, network: nn.Cell, quantize: bool) -> None:
        if quantize:
            rotate_network(network, self.seed, self.online)
            return
        check_rotatable(network)
        if not _is_rotated(network):
            _set_structure(network, self.online)

    def _restrict(self, ctx: LayerContext) -> None:
        if self.online and ctx.structure is not None and not isinstance(ctx.structure, RotatedStructure):
            ctx.structure = RotatedStructure(ctx.structure, self.online_smooth)

    def process(self, ctx: LayerContext) -> None:
        """The weights were rotated before calibration; per layer, the modules after this one (it
        runs first) get the structure without the mappings the online transform breaks."""
        self._restrict(ctx)

    def prepare_deploy(self, ctx: LayerContext) -> None:
        self._restrict(ctx)

    def __repr__(self) -> str:
        return f"RotationModule(seed={self.seed}, online={self.online}, online_smooth={self.online_smooth})"
