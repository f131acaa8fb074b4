"""Everything golden_ptq changes to run MindFormers' legacy ``LlamaForCausalLM`` on MindSpore 2.10 CPU.

One place, one comment per shim. None of them edits mindformers' files or patches its classes:
environment variables set before the import, config values set when the network is built, and
one per-instance hook on each attention cell (:func:`attach_kv_caches`).
"""
from __future__ import annotations

import os
import tempfile
from typing import Any, Dict

#: mindformers releases this module was verified with (the [mindformers] extra installs 1.9.0).
SUPPORTED_VERSIONS = ("1.9.0",)

#: Config values the CPU needs, overriding the run yaml's (each names why).
CPU_MODEL_CONFIG: Dict[str, Any] = {
    "use_rope_slice": True,         # the default rope path calls a fused kernel with no CPU implementation
    "fused_rms_norm": False,        # "The kernel RmsNorm unregistered" on CPU: use MindFormers' own op-by-op norm
    "use_flash_attention": False,   # FlashAttentionScore is Ascend-only
    "use_past": False,              # MindFormers' incremental decoding calls ApplyRotaryPosEmb, ReshapeAndCache
                                    # and PagedAttention (Ascend-only); golden_ptq decodes through the
                                    # full-sequence path with its own KV cache (attach_kv_caches)
    "compute_dtype": "float32",     # CPU computes in float32 (fp16/bf16 matmuls are slow or missing there)
    "layernorm_compute_type": "float32",
    "softmax_compute_type": "float32",
    "rotary_dtype": "float32",
    "param_init_type": "float32",   # checkpoints in fp16/bf16 are upcast when read
    "embedding_init_type": "float32",
    "residual_dtype": "float32",
    "is_dynamic": False,
    "pad_token_id": -1,             # MindFormers masks keys whose token id equals pad_token_id; golden_ptq
                                    # passes unpadded batches, so no real token may be taken for padding
    "checkpoint_name_or_path": "",  # weights are loaded by golden_ptq, strictly, not by MindFormers
    "batch_size": 1,
}


def import_mindformers():
    """Import mindformers after the environment it reads at import/build time is set; check its version.

    * ``LOCAL_DEFAULT_PATH``: MindFormers writes logs under ``./output`` of the working directory;
      unless the user set it, they go to ``$TMPDIR/golden_ptq-mindformers``.
    * ``ENFORCE_EAGER=True``: MindFormers' eager switch. Without it the causal mask is built for
      ``seq_length`` tokens and a shorter input fails to broadcast; with it the mask is sliced to the
      input, and nothing is jit-compiled (PyNative, as golden_ptq runs).
    """
    os.environ.setdefault("LOCAL_DEFAULT_PATH", os.path.join(tempfile.gettempdir(), "golden_ptq-mindformers"))
    os.environ["ENFORCE_EAGER"] = "True"
    try:
        import mindformers
    except ImportError as err:
        raise ImportError(f"golden_ptq.mindformers needs the optional dependency mindformers "
                          f"{' or '.join(SUPPORTED_VERSIONS)} ({err}); install it with "
                          f"'bash .ci/install_mindformers.sh PYTHON'") from None
    version = getattr(mindformers, "__version__", "unknown")
    if version not in SUPPORTED_VERSIONS:
        raise ImportError(f"mindformers {version} is installed; golden_ptq.mindformers supports "
                          f"{list(SUPPORTED_VERSIONS)}")
    return mindformers


#: Attribute of each attention instance telling its KV cache stand-in the cache mode of the call.
CACHE_MODE_ATTR = "_golden_ptq_cache_mode"


def attach_kv_caches(network) -> None:
    """Give every attention of a MindFormers Llama a golden_ptq :class:`~golden_ptq.networks.layers.KVCache`
    at ``attention.kv_cache`` (golden_ptq's name), and pass its keys (after rotary embedding) and
    values ``[B, n_kv_heads, S, head_dim]`` through it.

    MindFormers keeps its KV cache in the Ascend-only paged attention of ``use_past``; the
    full-sequence path has none. The hook is the attention's ``_cat_prefix`` (which concatenates
    prefix keys/values, none here), replaced on each instance by a call that runs the cache cell
    looked up at call time, so PTQ can swap in ``QuantKVCache`` (C8) like in golden_ptq's network.
    The cache mode comes from the instance attribute :data:`CACHE_MODE_ATTR` (full recomputation
    unless golden_ptq's incremental decoder in :mod:`golden_ptq.mindformers.helper` sets it), so
    the history is kept, and with C8 stored as int8, as in golden_ptq's network.
    """
    from golden_ptq.networks.layers import CacheMode, KVCache
    for layer in network.model.layers:
        attention = layer.attention
        if "kv_cache" in attention._cells:  # pylint: disable=protected-access
            continue
        attention.kv_cache = KVCache(attention.n_kv_head, attention.head_dim)
        original = attention._cat_prefix  # pylint: disable=protected-access

        def cat_prefix(key, value, prefix_keys_values, attention=attention, original=original):
            key, value = original(key, value, prefix_keys_values)
            return attention.kv_cache(key, value, attention.__dict__.get(CACHE_MODE_ATTR, CacheMode.NONE))

        object.__setattr__(attention, "_cat_prefix", cat_prefix)


def use_cpu_argmax(network) -> None:
    """Let MindFormers' own ``network.generate`` pick greedy tokens on CPU.

    Its generation mixin keeps ``mint.argmax`` on each instance, whose ArgMaxExt kernel is not
    registered on CPU ("The kernel ArgMaxExt unregistered"); this instance gets a numpy argmax.
    """
    import numpy as np
    from mindspore import Tensor

    def argmax(logits, dim=-1):
        return Tensor(np.argmax(logits.asnumpy(), axis=dim).astype(np.int32))

    object.__setattr__(network, "argmax", argmax)
