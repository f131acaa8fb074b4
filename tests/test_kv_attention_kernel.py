"""The native operators of the KV cache: decode-step attention (golden_ptq/kernels/kv_attention.cc)
over the int8 and the float buffers against float64 attention over the decoded cache, and encode /
decode (kv_codec.cc) against the numpy twins bit for bit, on every instruction set the CPU has and
both cache layouts; compiled C8 decoding with them agreeing with eager decoding on the numpy route
(and with the MindSpore-op route they replace when native kernels are off)."""
from types import SimpleNamespace

import numpy as np
import pytest
import mindspore as ms
from mindspore import Tensor

from golden_ptq import PTQ, PTQConfig, kernels
from golden_ptq.kernels.float_prefill import set_float_prefill_kernels
from golden_ptq.networks.llama import LlamaForCausalLM
from golden_ptq.quant_cells import kv_codecs as codecs
from golden_ptq.quant_cells.kvcache import QuantKVCache
from test_kernels import _isas, isa  # noqa: F401  (the ISA list and the fixture that pins one)

INFO = kernels.kernel_info()
needs_native = pytest.mark.skipif(not INFO.available, reason=f"native kernels unavailable here: {INFO.reason}")
MASKED = np.float32(-1e9)

# (batch, kv heads, group, capacity, head dim): GQA groups 1, 2 and 3; head dims with tails past the
# 8- and 16-wide vectors (20, 40) and without (8, 64).
CASES = [(1, 2, 1, 37, 20), (3, 2, 3, 64, 64), (3, 1, 3, 50, 40), (2, 3, 2, 17, 8), (1, 1, 3, 9, 16)]


def _mask(rng, batch, heads, capacity):
    """``[B, H, capacity]``: each row left-padded (0 .. 4 positions), filled to an odd length short of
    the capacity, and in one row one position inside the span masked too."""
    mask = np.full((batch, heads, capacity), MASKED, np.float32)
    for b in range(batch):
        pad = int(rng.randint(0, 5))
        end = capacity - 1 - 2 * int(rng.randint(0, min(4, (capacity - pad) // 2 - 1)))
        mask[b, :, pad:end] = 0.0
        if b == 1 and end - pad > 3:
            mask[b, :, pad + 1] = MASKED
    return mask


def _operands(rng, batch, kv_heads, group, capacity, dim, scheme):
    heads = kv_heads * group
    q = (rng.randn(batch, 1, heads * dim) * 0.5).astype(np.float32)
    if scheme == "float":   # the float cache: unit scales for the reference
        k, v = (rng.randn(2, batch, kv_heads, capacity, dim) * 2).astype(np.float32)
        ones = np.ones(kv_heads * dim, np.float32)
        return q, k, v, _mask(rng, batch, heads, capacity), ones, ones
    key_scale = (rng.rand(kv_heads * dim) * 0.05 + 0.01).astype(np.float32)
    k = rng.randint(-128 if scheme == "tokens" else -127, 128, (batch, kv_heads, capacity, dim)).astype(np.int8)
    v = rng.randint(-127, 128, (batch, kv_heads, capacity, dim)).astype(np.int8)
    if scheme == "tokens":
        exponent = rng.randint(-40, 30, (batch, kv_heads, capacity, 1)).astype(np.int8)
        v = np.concatenate([v, exponent], -1)
        value_param = (rng.rand(kv_heads) * 2 + 0.5).astype(np.float32)
    else:
        value_param = (rng.rand(kv_heads * dim) * 0.05 + 0.01).astype(np.float32)
    return q, k, v, _mask(rng, batch, heads, capacity), key_scale, value_param


def _reference(q, k, v, mask, kv_map, key_scale, value_param, scheme, zero_point=None):
    """Float64 attention over the decoded cache (keys with their zero point, which softmax cancels)."""
    batch, kv_heads, _, dim = k.shape
    heads = kv_map.shape[0]
    keys = k.astype(np.float64)
    if zero_point is not None:
        keys = keys - zero_point.reshape(1, kv_heads, 1, dim)
    keys = keys * key_scale.reshape(1, kv_heads, 1, dim)
    if scheme == "tokens":
        values = codecs.np_decode_tokens(v, value_param.reshape(1, kv_heads, 1, 1)).astype(np.float64)
    else:
        values = v.astype(np.float64) * value_param.reshape(1, kv_heads, 1, dim)
    out = np.zeros((batch, heads, dim))
    qh = q.reshape(batch, heads, dim).astype(np.float64)
    for b in range(batch):
        for h in range(heads):
            scores = keys[b, kv_map[h]] @ qh[b, h] + mask[b, h]
            p = np.exp(scores - scores.max())
            out[b, h] = (p / p.sum()) @ values[b, kv_map[h]]
    return out.reshape(batch, 1, heads * dim)


def _run(q, k, v, mask, kv_map, key_scale, value_param, scheme, group_rows=1):
    batch, heads, capacity = mask.shape
    mask4 = mask.reshape(batch, heads // group_rows, group_rows, capacity)
    ops = kernels.native_ops()
    args = [Tensor(q), Tensor(k), Tensor(v), Tensor(mask4), Tensor(kv_map), Tensor(key_scale), Tensor(value_param)]
    if scheme == "tokens":
        return ops["kv_attention_tokens"](*args, Tensor(codecs.TOKEN_STEPS)).asnumpy()
    if scheme == "float":
        return ops["kv_attention_float"](*args[:5]).asnumpy()
    return ops["kv_attention_static"](*args).asnumpy()


@needs_native
@pytest.mark.parametrize("isa", _isas(), indirect=True)
@pytest.mark.parametrize("scheme", ["static", "tokens", "float"])
def test_kernel_matches_float_attention_over_the_decoded_cache(isa, scheme):
    rng = np.random.RandomState(3)
    for batch, kv_heads, group, capacity, dim in CASES:
        q, k, v, mask, key_scale, value_param = _operands(rng, batch, kv_heads, group, capacity, dim, scheme)
        kv_map = (np.arange(kv_heads * group) // group).astype(np.int32)
        zero_point = rng.randint(-20, 20, kv_heads * dim).astype(np.float32) if scheme == "tokens" else None
        want = _reference(q, k, v, mask, kv_map, key_scale, value_param, scheme, zero_point)
        got = _run(q, k, v, mask, kv_map, key_scale, value_param, scheme, group_rows=group)
        scale = np.abs(want).max()
        assert np.abs(got - want).max() <= 1e-5 * scale, \
            f"{isa} {scheme} {(batch, kv_heads, group, capacity, dim)}: max diff {np.abs(got - want).max()} ({scale})"


@needs_native
@pytest.mark.parametrize("isa", _isas(), indirect=True)
def test_kernel_follows_any_query_to_kv_head_map(isa):
    """Replicated KV heads under TP: the mask has one row per query head and the map is arbitrary."""
    rng = np.random.RandomState(4)
    q, k, v, mask, key_scale, value_param = _operands(rng, 2, 3, 2, 21, 16, "static")
    kv_map = np.array([2, 2, 0, 1, 1, 0], np.int32)
    want = _reference(q, k, v, mask, kv_map, key_scale, value_param, "static")
    got = _run(q, k, v, mask, kv_map, key_scale, value_param, "static")
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


@needs_native
def test_kernel_reads_only_the_unmasked_span():
    """Codes outside a row's unmasked span (stale slots, left padding) do not reach the result, however
    large: the operator skips them rather than weighting them by zero."""
    rng = np.random.RandomState(5)
    q, k, v, mask, key_scale, value_param = _operands(rng, 2, 2, 2, 30, 16, "tokens")
    kv_map = np.array([0, 0, 1, 1], np.int32)
    base = _run(q, k, v, mask, kv_map, key_scale, value_param, "tokens", group_rows=2)
    outside = np.broadcast_to((mask[:, ::2] <= -1e8)[..., None], v.shape)   # per KV head (rows equal in a group)
    v2 = np.where(outside, np.int8(127), v)
    v2[..., -1] = np.where(outside[..., -1], np.int8(127), v[..., -1])    # the largest exponent too
    np.testing.assert_array_equal(_run(q, k, v2, mask, kv_map, key_scale, value_param, "tokens", group_rows=2), base)


@needs_native
def test_kernel_rejects_mismatched_shapes():
    rng = np.random.RandomState(6)
    q, k, v, mask, key_scale, value_param = _operands(rng, 1, 2, 2, 8, 8, "tokens")
    kv_map = np.array([0, 0, 1, 1], np.int32)
    with pytest.raises(RuntimeError, match="GpKvAttnTokens"):   # a static-layout value buffer (no exponents)
        _run(q, k, v[..., :-1].copy(), mask, kv_map, key_scale, value_param, "tokens", group_rows=2)


# ----- encode / decode ----------------------------------------------------------------------------
def _codec_case(rng, codec, shape):
    heads, dim = shape[1], shape[3]
    x = (rng.randn(*shape) * rng.choice([1e-4, 0.3, 1.0, 50.0], shape[:3] + (1,))).astype(np.float32)
    x[0, 0, :2] = 0.0
    x[..., 1] = np.float32(0.5) * np.float32(0.25)   # halfway cases for some scales
    if codec == "tokens":
        return x, (rng.rand(1, heads, 1, 1).astype(np.float32) * 4 + 0.1,)
    params = ((rng.rand(1, heads, 1, dim) * 0.2 + 1e-3).astype(np.float32),)
    if codec == "asymmetric":
        params += (np.round(rng.uniform(-60, 60, (1, heads, 1, dim))).astype(np.float32),)
    return x, params


@needs_native
@pytest.mark.parametrize("isa", _isas(), indirect=True)
@pytest.mark.parametrize("codec", ["symmetric", "asymmetric", "tokens"])
def test_native_codec_gives_the_numpy_twins_bits(isa, codec):
    rng = np.random.RandomState(10)
    ops = kernels.native_ops()
    extra = (Tensor(codecs.TOKEN_STEPS),) if codec == "tokens" else ()
    # one row per head (decode step), rows not a multiple of the vector width, a prefill-sized tensor
    for shape in [(2, 3, 1, 16), (1, 2, 37, 20), (4, 3, 300, 64)]:
        x, params = _codec_case(rng, codec, shape)
        flat = tuple(Tensor(p.reshape(-1)) for p in params) + extra
        want = getattr(codecs, "np_encode_" + codec)(x, *params)
        # the cache's keys/values arrive transposed ([B, T, H, D] -> [B, H, T, D]), maybe as a view
        xt = Tensor(np.ascontiguousarray(x.transpose(0, 2, 1, 3))).transpose(0, 2, 1, 3)
        for given in (Tensor(x), xt):
            np.testing.assert_array_equal(ops["kv_encode_" + codec](given, *flat).asnumpy(), want,
                                          err_msg=f"{isa} {codec} {shape}")
        decoded = getattr(codecs, "np_decode_" + codec)(want, *params)
        np.testing.assert_array_equal(ops["kv_decode_" + codec](Tensor(want), *flat).asnumpy(), decoded,
                                      err_msg=f"{isa} {codec} {shape}")


# ----- compiled decoding on a tiny network --------------------------------------------------------
def _c8_network(config, scheme):
    network = LlamaForCausalLM(config, seed=2)
    network.set_train(False)
    rng = np.random.RandomState(0)
    ptq = PTQ(PTQConfig(weight_quant_dtype=None, kvcache_quant_dtype=ms.int8,
                        algo_args={"kvcache_scheme": scheme}))
    ptq.apply(network, None, [rng.randint(0, config.vocab_size, 16) for _ in range(2)])
    ptq.convert(network)
    return network


def _decode(network, ids, mask, prompt, compiled, forward=False):
    network.set_compiled(decode=compiled, forward=forward)
    out = [network.prefill(ids[:, :prompt], mask[:, :prompt]).asnumpy()]
    for t in range(prompt, ids.shape[1]):
        out.append(network.decode_step(ids[:, t]).asnumpy())
    network.reset_cache()
    return np.stack(out)


@pytest.mark.parametrize("scheme,group", [("static", 1), ("token_values", 3)])
def test_compiled_c8_decoding_with_the_kernel_equals_eager(tiny_config, scheme, group):
    tiny_config.num_layers = 1
    tiny_config.num_kv_heads = 2
    tiny_config.num_heads = 2 * group
    tiny_config.hidden_size = 16 * tiny_config.num_heads
    network = _c8_network(tiny_config, scheme)
    rng = np.random.RandomState(9)
    ids = rng.randint(0, tiny_config.vocab_size, (3, 12))
    mask = np.ones_like(ids)
    mask[1, :3] = 0          # left padding
    mask[2, :1] = 0
    kernels.set_native_kernels(False)
    try:
        eager = _decode(network, ids, mask, 5, compiled=False)    # the numpy codecs, MindSpore-op attention
    finally:
        kernels.set_native_kernels(True)
    routes = {}
    for native in ([True, False] if INFO.available else [False]):
        kernels.set_native_kernels(native)
        try:
            for forward in (False, True):    # eager prefill, or compiled (prefill_static)
                routes[native, forward] = _decode(network, ids, mask, 5, compiled=True, forward=forward)
                caches = [m for _, m in network.cells_and_names() if isinstance(m, QuantKVCache)]
                assert network.compiled_decode and network.compiled_forward == forward and caches
                for cache in caches:
                    assert (cache.bound_attention is not None) == native
                    assert (cache.bound_codecs is not None) == native
            if native:   # native codecs; the float prefill kernels and the BLAS off: the same attention ops and products
                set_float_prefill_kernels(False)
                kernels.set_blas_gemm(False)
                try:
                    routes["eager", native] = _decode(network, ids, mask, 5, compiled=False)
                finally:
                    set_float_prefill_kernels(True)
                    kernels.set_blas_gemm(True)
        finally:
            kernels.set_native_kernels(True)
    network.set_compiled(decode=True)
    if INFO.available:   # the same codes, the same attention ops: the same logits
        np.testing.assert_array_equal(routes["eager", True], eager)
    for what, got in routes.items():
        scale = np.abs(eager).max()
        assert np.abs(got - eager).max() <= 1e-4 * scale, f"{what}: max diff {np.abs(got - eager).max()}"
        np.testing.assert_array_equal(got.argmax(-1), eager.argmax(-1))


@needs_native
@pytest.mark.parametrize("group,replicated", [(1, False), (3, False), (2, True)])
def test_compiled_float_decoding_with_the_kernel_equals_the_op_route(tiny_config, group, replicated):
    """The float cache's compiled decode step attends with the native operator; MindSpore's ops
    (native kernels off) and eager decoding give the same logits to rounding, with left padding,
    grouped query heads, and the replicated-KV layout of a TP rank (query head h reads h // group)."""
    tiny_config.num_layers = 1
    tiny_config.num_kv_heads = 2
    tiny_config.num_heads = 2 * group
    tiny_config.hidden_size = 16 * tiny_config.num_heads
    network = LlamaForCausalLM(tiny_config, seed=3)
    network.set_train(False)
    attention = network.model.layers[0].attention
    if replicated:
        attention._kv_index = Tensor(np.arange(tiny_config.num_heads, dtype=np.int32) // group)
        attention._core_kv_heads = tiny_config.num_heads
        network.tp_layout = SimpleNamespace(local_heads=tiny_config.num_heads, local_kv_heads=2, kv_split=False)
    rng = np.random.RandomState(10)
    ids = rng.randint(0, tiny_config.vocab_size, (3, 12))
    mask = np.ones_like(ids)
    mask[1, :3] = 0
    mask[2, :1] = 0
    eager = _decode(network, ids, mask, 5, compiled=False)
    native = _decode(network, ids, mask, 5, compiled=True)
    assert network.compiled_decode and attention.kv_cache.bound_attention is kernels.native_ops()["kv_attention_float_write"]
    kernels.set_native_kernels(False)
    try:
        op_route = _decode(network, ids, mask, 5, compiled=True)
        assert network.compiled_decode and attention.kv_cache.bound_attention is None
    finally:
        kernels.set_native_kernels(True)
        network.set_compiled(decode=True)
    scale = np.abs(eager).max()
    for what, got in (("native", native), ("MindSpore ops", op_route)):
        assert np.abs(got - eager).max() <= 1e-5 * scale, f"{what}: max diff {np.abs(got - eager).max()}"


@needs_native
@pytest.mark.parametrize("scheme", ["static", "tokens", "float"])
def test_write_variant_stores_the_new_rows_in_place_then_attends(scheme):
    """The operators compiled decode steps run: this step's keys/values land in the buffers at their
    slots (nothing else changes), and the result is the plain operator's over the updated buffers.
    Slots outside the buffers are refused before anything is written."""
    rng = np.random.RandomState(11)
    batch, kv_heads, group, capacity, dim = 2, 2, 3, 12, 16
    q, k, v, mask, key_scale, value_param = _operands(rng, batch, kv_heads, group, capacity, dim, scheme)
    _, k_more, v_more, _, _, _ = _operands(rng, batch, kv_heads, group, capacity, dim, scheme)
    k_new, v_new = k_more[:, :, :1].copy(), v_more[:, :, :1].copy()
    kv_map = (np.arange(kv_heads * group) // group).astype(np.int32)
    slots = np.stack(np.meshgrid(np.arange(batch), np.arange(kv_heads), [7], indexing="ij"), -1).astype(np.int32)
    mask4 = mask.reshape(batch, kv_heads, group, capacity)
    ops = kernels.native_ops()
    extra = {"static": [key_scale, value_param], "float": [],
             "tokens": [key_scale, value_param, codecs.TOKEN_STEPS]}[scheme]
    k_t, v_t = Tensor(k.copy()), Tensor(v.copy())
    got = ops[f"kv_attention_{scheme}_write"](Tensor(q), k_t, v_t, Tensor(mask4), Tensor(kv_map),
                                              *map(Tensor, extra), Tensor(k_new), Tensor(v_new),
                                              Tensor(slots)).asnumpy()
    k_want, v_want = k.copy(), v.copy()
    k_want[:, :, 7:8], v_want[:, :, 7:8] = k_new, v_new
    np.testing.assert_array_equal(k_t.asnumpy(), k_want)
    np.testing.assert_array_equal(v_t.asnumpy(), v_want)
    plain = ops[f"kv_attention_{scheme}"](Tensor(q), Tensor(k_want), Tensor(v_want), Tensor(mask4), Tensor(kv_map),
                                          *map(Tensor, extra)).asnumpy()
    np.testing.assert_array_equal(got, plain)
    bad = slots.copy()
    bad[1, 1, 0, 2] = capacity
    with pytest.raises(RuntimeError, match=f"GpKvAttn{scheme.capitalize()}Write"):
        ops[f"kv_attention_{scheme}_write"](Tensor(q), k_t, v_t, Tensor(mask4), Tensor(kv_map), *map(Tensor, extra),
                                            Tensor(k_new), Tensor(v_new), Tensor(bad)).asnumpy()
    np.testing.assert_array_equal(k_t.asnumpy(), k_want)
