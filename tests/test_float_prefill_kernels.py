"""Native float kernels of the eager prefill (golden_ptq.kernels.float_prefill): each against numpy, the
attention kernel also against the MindSpore route it replaces, the Walsh-Hadamard transform inside
OnlineHadamard, and a tiny network with them on and off."""
import numpy as np
import pytest
from mindspore import Tensor, nn

from golden_ptq import kernels
from golden_ptq.kernels import float_prefill
from golden_ptq.networks import compiled, hadamard, layers, llama
from golden_ptq.networks.llama import LlamaForCausalLM

OPS = float_prefill.float_prefill_ops()
needs_native = pytest.mark.skipif(OPS is None, reason=f"float prefill kernels unavailable: {float_prefill._STATE.reason}")


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def threads(request):
    if OPS is None:
        pytest.skip(f"float prefill kernels unavailable: {float_prefill._STATE.reason}")
    float_prefill.set_float_prefill_threads(request.param)
    yield request.param
    float_prefill.set_float_prefill_threads(8)


def _prefill_isas():
    """The attention kernel's instruction sets this CPU runs (each has its own register blocking)."""
    if OPS is None:
        return []
    best = float_prefill.set_float_prefill_isa(None)
    return list(float_prefill.PREFILL_ISAS[:float_prefill.PREFILL_ISAS.index(best) + 1])


@pytest.fixture(params=_prefill_isas() or ["none"])
def prefill_isa(request):
    if OPS is None:
        pytest.skip(f"float prefill kernels unavailable: {float_prefill._STATE.reason}")
    assert float_prefill.set_float_prefill_isa(request.param) == request.param
    yield request.param
    float_prefill.set_float_prefill_isa(None)


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@needs_native
@pytest.mark.parametrize("width", [40, 64, 576])
def test_rms_norm_and_rope_match_numpy_and_the_mindspore_route(rng, width):
    """Rope: bit for bit equal to the MindSpore ops, and close to float64. The fused RMSNorm sums its
    statistics in another order: within a few float32 ulps of the MindSpore route and of float64."""
    x = rng.randn(2, 37, width).astype(np.float32)
    x[..., 3] *= 300.0   # an outlier channel, as in SmolLM2's hidden states
    w = (1 + 0.1 * rng.randn(width)).astype(np.float32)
    norm = layers.RMSNorm(width, 1e-5)
    norm.weight.set_data(Tensor(w))
    route = layers._rms_norm(Tensor(x), Tensor(w), 1e-5).asnumpy()
    x64 = x.astype(np.float64)
    want = x64 / np.sqrt((x64 ** 2).mean(-1, keepdims=True) + 1e-5) * w
    got = layers.rms_norm_eager(norm, Tensor(x)).asnumpy()
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-6)
    np.testing.assert_allclose(got, route, rtol=2e-6, atol=1e-6)
    assert got.shape == x.shape and got.dtype == np.float32

    index, sign = layers.rotate_half_index(width // 8, 8)
    cos, sin = rng.randn(2, 37, width).astype(np.float32), (rng.randn(2, 37, width) * sign).astype(np.float32)
    got = OPS["rope"](Tensor(x), Tensor(cos), Tensor(sin), Tensor(index)).asnumpy()
    np.testing.assert_array_equal(got, layers._rope(Tensor(x), Tensor(cos), Tensor(sin), Tensor(index)).asnumpy())
    np.testing.assert_allclose(got, x64 * cos + x64[..., index] * sin, rtol=1e-5, atol=1e-4)


@needs_native
@pytest.mark.parametrize("shape", [(1, 512, 1536), (3, 7, 33), (5,)])
def test_swiglu_matches_float64_in_every_instruction_set(rng, prefill_isa, shape):
    """silu(gate) * up to ~1e-6 relative of float64 per element, saturating cleanly far out (the
    MindSpore route rounds differently: close, not equal)."""
    gate = (rng.randn(*shape) * 4).astype(np.float32)
    gate.flat[0], gate.flat[-1] = -200.0, 200.0
    up = rng.randn(*shape).astype(np.float32)
    got = OPS["swiglu"](Tensor(gate), Tensor(up)).asnumpy()
    g64 = gate.astype(np.float64)
    want = g64 / (1.0 + np.exp(-g64)) * up
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-30)
    route = layers._swiglu(Tensor(gate), Tensor(up)).asnumpy()
    np.testing.assert_allclose(got, route, rtol=2e-5, atol=1e-6)


@needs_native
def test_residual_add_equals_mindspore_add(rng):
    for shape in [(1, 512, 576), (2, 3, 5)]:
        x, y = rng.randn(*shape).astype(np.float32), rng.randn(*shape).astype(np.float32)
        got = layers.add_eager(Tensor(x), Tensor(y)).asnumpy()
        np.testing.assert_array_equal(got, x + y)


@needs_native
@pytest.mark.parametrize("shape", [(1, 512, 3, 64), (2, 7, 4, 16)])
def test_to_heads_is_the_head_transpose_in_any_head_order(rng, shape):
    batch, length, heads, dim = shape
    x = rng.randn(batch, length, heads * dim).astype(np.float32)
    op = float_prefill.to_heads_op(dim)
    for order in (np.arange(heads), np.array([heads - 1, 0, heads - 1])):
        got = op(Tensor(x), Tensor(order.astype(np.int32))).asnumpy()
        np.testing.assert_array_equal(got, x.reshape(batch, length, heads, dim).transpose(0, 2, 1, 3)[:, order])
    with pytest.raises(RuntimeError, match="GpToHeads"):
        op(Tensor(x), Tensor(np.array([heads], np.int32))).asnumpy()


def _mask(key_mask, new_tokens, kv_heads, group):
    """The MindSpore route's full-shape additive mask (as LlamaForCausalLM._layer_arrays builds it)."""
    batch, total = key_mask.shape
    query = np.arange(total - new_tokens, total)[:, None]
    allowed = (np.arange(total)[None, :] <= query)[None] & (key_mask[:, None, :] > 0)
    mask = np.where(allowed, np.float32(0.0), np.float32(llama._MASK_VALUE))[:, None, None]
    return np.ascontiguousarray(np.broadcast_to(mask, (batch, kv_heads, group, new_tokens, total))
                                .reshape(batch, kv_heads, group * new_tokens, total))


@pytest.mark.parametrize("head_dim", [16, 48, 64, 128])
@pytest.mark.parametrize("new_tokens", [45, 6])   # a full forward, and new tokens after a history
def test_causal_attention_matches_numpy_and_the_mindspore_route(rng, threads, prefill_isa, head_dim, new_tokens):
    batch, heads, kv_heads, total = 2, 6, 2, 45
    group = heads // kv_heads
    q = (rng.randn(batch, new_tokens, heads * head_dim) * 0.3).astype(np.float32)
    k = rng.randn(batch, kv_heads, total, head_dim).astype(np.float32)
    v = rng.randn(batch, kv_heads, total, head_dim).astype(np.float32)
    key_mask = np.ones((batch, total), np.int32)
    pad = 5 if new_tokens == total else 0   # left padding: rows 0..4 of batch 1 see no key at all
    key_mask[1, :pad] = 0
    if new_tokens < total:
        key_mask[1, 3] = 0      # a masked key inside the history
    got = OPS["causal_attention"](Tensor(q), Tensor(k), Tensor(v), Tensor(key_mask)).asnumpy()

    q4 = q.reshape(batch, new_tokens, heads, head_dim).astype(np.float64)
    want = np.zeros((batch, new_tokens, heads, head_dim))
    for b in range(batch):
        for i in range(new_tokens):
            visible = (np.arange(total) <= total - new_tokens + i) & (key_mask[b] > 0)
            if not visible.any():
                continue
            for h in range(heads):
                p = _softmax(k[b, h // group][visible] @ q4[b, i, h])
                want[b, i, h] = p @ v[b, h // group][visible]
    real = np.ones((batch, new_tokens), bool)
    real[1, :pad] = False
    np.testing.assert_allclose(got.reshape(want.shape)[real], want[real], rtol=1e-4, atol=2e-5)

    route = llama._attention_core(Tensor(q), Tensor(k), Tensor(v), Tensor(_mask(key_mask, new_tokens, kv_heads, group)),
                                  kv_heads, head_dim).asnumpy()
    np.testing.assert_allclose(got, route, rtol=1e-4, atol=2e-5)   # padding rows included


@needs_native
def test_compiled_decode_binds_the_native_norm_swiglu_and_rope(tiny_config, rng):
    """Compiled decode graphs run the native RMSNorm, SwiGLU and rope where the kernels run (fewer
    operators per step), MindSpore's ops when they are off; both agree with eager decoding."""
    tiny_config.num_layers = 1
    net = LlamaForCausalLM(tiny_config, seed=5)
    ids = rng.randint(0, tiny_config.vocab_size, (2, 9))

    def decode(compiled):
        net.set_compiled(decode=compiled)
        net.compile_min_new_tokens = 0
        out = [net.prefill(ids[:, :5]).asnumpy()]
        out += [net.decode_step(ids[:, t]).asnumpy() for t in range(5, 9)]
        net.reset_cache()
        return np.stack(out)

    eager = decode(False)
    native = decode(True)
    layer = net.model.layers[0]
    bound = (net.model.norm_out.bound_kernel, layer.feed_forward.bound_swiglu, layer.attention.bound_rope)
    assert bound == (OPS["rms_norm"], OPS["swiglu"], OPS["rope"])
    float_prefill.set_float_prefill_kernels(False)
    try:
        mindspore_route = decode(True)
        assert layer.attention_norm.bound_kernel is None and layer.feed_forward.bound_swiglu is None
    finally:
        float_prefill.set_float_prefill_kernels(True)
    scale = np.abs(eager).max()
    assert np.abs(native - eager).max() <= 1e-5 * scale
    assert np.abs(mindspore_route - eager).max() <= 1e-5 * scale


def test_tiny_network_with_kernels_on_and_off(tiny_config, rng):
    """Full forward, prefill + decode and greedy generation agree with the MindSpore-op route, with
    left padding; the switches (and set_native_kernels) fall back to it."""
    net = LlamaForCausalLM(tiny_config, seed=4)
    net.set_compiled(decode=False)
    ids = rng.randint(0, tiny_config.vocab_size, (2, 40))
    mask = np.ones_like(ids)
    mask[1, :6] = 0
    prompt = ids[:, :30]

    def run():
        logits = net.logits(ids, mask).asnumpy()
        first = net.prefill(prompt, mask[:, :30]).asnumpy()
        step = net.decode_step(ids[:, 30]).asnumpy()
        tokens = net.generate(prompt, attention_mask=mask[:, :30], max_new_tokens=6)
        return logits, first, step, np.stack(tokens)

    on = run() if OPS is not None else None
    # the float products through MindSpore's MatMul too: the process's BLAS sums in another order on some
    # CPUs (OpenBLAS on an AVX2-only EPYC), and the route below (native kernels off) has MatMul
    float_prefill.set_float_prefill_kernels(False)
    kernels.set_blas_gemm(False)
    try:
        assert float_prefill.float_prefill_ops() is None
        off = run()
    finally:
        float_prefill.set_float_prefill_kernels(True)
        kernels.set_blas_gemm(True)
    kernels.set_native_kernels(False)
    try:
        assert float_prefill.float_prefill_ops() is None
        np.testing.assert_array_equal(run()[0], off[0])
    finally:
        kernels.set_native_kernels(True)
    if on is None:
        pytest.skip(f"float prefill kernels unavailable: {float_prefill._STATE.reason}")
    scale = np.abs(off[0]).max()
    for got, want in zip(on[:3], off[:3]):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * scale)
    np.testing.assert_array_equal(on[3], off[3])


@needs_native
def test_unsupported_head_dim_uses_the_mindspore_attention(rng):
    """head_dim 8 is no multiple of 16: rope and norms run natively, attention takes the
    full-shape mask route (built on demand)."""
    from golden_ptq.config.model_config import LlamaConfig
    config = LlamaConfig(vocab_size=50, hidden_size=32, num_layers=1, num_heads=4, num_kv_heads=2,
                         intermediate_size=48, max_position_embeddings=64)
    assert not float_prefill.attention_supported(config.head_dim)
    net = LlamaForCausalLM(config, seed=1)
    ids = rng.randint(0, 50, (1, 12))
    on = net.logits(ids).asnumpy()
    float_prefill.set_float_prefill_kernels(False)
    try:
        off = net.logits(ids).asnumpy()
    finally:
        float_prefill.set_float_prefill_kernels(True)
    np.testing.assert_allclose(on, off, rtol=1e-4, atol=1e-4 * np.abs(off).max())


def _butterflies_float32(x, block):
    """The FWHT's butterflies in float32, stage by stage (h = 1, 2, 4, ...), times float32(1/sqrt(block))."""
    y = x.reshape(-1, block).astype(np.float32)
    h = 1
    while h < block:
        pairs = y.reshape(-1, block // (2 * h), 2, h)
        a, b = pairs[:, :, 0], pairs[:, :, 1]
        y = np.stack([a + b, a - b], axis=2).reshape(-1, block)
        h *= 2
    return (y * np.float32(1 / np.sqrt(block))).reshape(x.shape)


@pytest.mark.parametrize("width", [1536, 48, 24])   # blocks 128, 16 and 8 (shorter than an AVX-512 vector)
@pytest.mark.parametrize("rows", [1, 7, 513])
def test_fwht_matches_the_online_hadamard_reference(rng, threads, prefill_isa, width, rows):
    """Within ~1e-7 of the float64 block Hadamard product, and the same bits as float32 butterflies
    in stage order on every instruction set (the in-vector stages do the same sums)."""
    block = hadamard.online_block(width)
    x = rng.randn(rows, width).astype(np.float32)
    x[:, 5] *= 100.0   # an outlier channel
    got = OPS["fwht"](Tensor(x), Tensor(np.array([block], np.int32))).asnumpy()
    want = hadamard.times_online(x)
    np.testing.assert_allclose(want, x.astype(np.float64) @ hadamard.online_matrix(width), rtol=1e-12, atol=1e-12)
    assert np.abs(got - want).max() <= 1e-6 * np.abs(want).max()
    np.testing.assert_array_equal(got, _butterflies_float32(x, block))
    x3 = x.reshape(1, rows, width)   # any leading shape
    np.testing.assert_array_equal(OPS["fwht"](Tensor(x3), Tensor(np.array([block], np.int32))).asnumpy(),
                                  got.reshape(x3.shape))


@needs_native
def test_fwht_rejects_a_block_that_does_not_divide_the_width(rng):
    x = Tensor(rng.randn(3, 48).astype(np.float32))
    for block in (32, 12, 0):
        with pytest.raises(RuntimeError):
            OPS["fwht"](x, Tensor(np.array([block], np.int32))).asnumpy()


@pytest.mark.parametrize("width", [1536, 96])
def test_online_hadamard_with_kernels_on_and_off(rng, prefill_isa, monkeypatch, width):
    """Eager calls take the native transform where it runs and the matmul otherwise (within 1e-6);
    a compiled graph takes the route bound before compiling."""
    cell = hadamard.OnlineHadamard(width)
    x = Tensor(rng.randn(2, 9, width).astype(np.float32))
    on = cell(x).asnumpy()
    np.testing.assert_array_equal(on, OPS["fwht"](x, cell.block_size).asnumpy())

    matmuls = []
    real_matmul = hadamard.ops.matmul
    monkeypatch.setattr(hadamard.ops, "matmul", lambda *a: matmuls.append(1) or real_matmul(*a))
    for switch in (float_prefill.set_float_prefill_kernels, kernels.set_native_kernels):
        switch(False)
        try:
            off = cell(x).asnumpy()
        finally:
            switch(True)
        np.testing.assert_allclose(on, off, rtol=0, atol=1e-6 * np.abs(off).max())
    assert len(matmuls) == 2
    monkeypatch.undo()

    class Graph(nn.Cell):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def construct(self, x):
            return self.inner(x)

    with compiled.graph_mode():
        cell.bind_kernel()
        np.testing.assert_array_equal(Graph(cell)(x).asnumpy(), on)
        float_prefill.set_float_prefill_kernels(False)
        try:
            cell.bind_kernel()
            assert cell.bound_kernel is None
            np.testing.assert_allclose(Graph(cell)(x).asnumpy(), off, rtol=0, atol=1e-6 * np.abs(off).max())
        finally:
            float_prefill.set_float_prefill_kernels(True)
