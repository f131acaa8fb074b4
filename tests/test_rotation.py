"""Rotation (``PTQConfig.rotation: hadamard``): Hadamard constructions, float equivalence of the
rotated network, every scheme through save / DEPLOY reload, config errors, TP and export refusals."""
import mindspore as ms
import numpy as np
import pytest

from golden_ptq import PTQ, PTQConfig, PTQMode, QuantGranularity
from golden_ptq.algorithm.modules import GPTQModule, QuantizeModule, SmoothSearchModule
from golden_ptq.algorithm.modules import rotation as rotation_module
from golden_ptq.algorithm.modules.rotation import RotatedStructure, RotationMatrices, RotationModule, rotate_network
from golden_ptq.config.model_config import LlamaConfig
from golden_ptq.config.validation import ConfigError
from golden_ptq.deploy import load_quantized, save_quantized
from golden_ptq.networks import hadamard
from golden_ptq.networks.hadamard import (OnlineHadamard, Rotation, hadamard_factors, hadamard_matrix, online_block,
                                          online_matrix, paley, random_orthogonal, random_rotation, sylvester,
                                          times_online)
from golden_ptq.networks.llama import LlamaForCausalLM
from golden_ptq.networks.structure import LlamaStructure
from golden_ptq.parallel import TPContext

I8 = ms.int8


def tiny(hidden=48, tie=False, qkv_bias=False):
    """hidden 48: head_dim 12 and residual order 48 = 12 x 4 exercise Paley's construction."""
    return LlamaConfig(vocab_size=97, hidden_size=hidden, num_layers=2, num_heads=4, num_kv_heads=2,
                       intermediate_size=96, max_position_embeddings=128, rope_theta=10000.0,
                       tie_word_embeddings=tie, rms_norm_eps=1e-5, qkv_bias=qkv_bias)


def calibration(config, n=3, length=24, seed=0):
    rng = np.random.RandomState(seed)
    return [rng.randint(0, config.vocab_size, (2, length)) for _ in range(n)]


def rel_error(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


TEST_IDS = np.random.RandomState(9).randint(0, 97, (2, 20))


# ----- constructions ----------------------------------------------------------------------------
def test_sylvester_matches_the_closed_form():
    """Reference: H[i, j] = (-1)^popcount(i & j)."""
    n = 32
    reference = np.array([[(-1) ** bin(i & j).count("1") for j in range(n)] for i in range(n)], dtype=float)
    np.testing.assert_array_equal(sylvester(n), reference)
    with pytest.raises(ValueError, match="not a power of two"):
        sylvester(12)


@pytest.mark.parametrize("order", [12, 20, 24, 44])
def test_paley_matches_legendre_reference_and_is_hadamard(order):
    q = order - 1
    legendre = [0] + [1 if pow(d, (q - 1) // 2, q) == 1 else -1 for d in range(1, q)]   # Euler's criterion
    h = paley(order)
    assert set(np.unique(h)) == {-1.0, 1.0}
    np.testing.assert_array_equal(h @ h.T, order * np.eye(order))
    np.testing.assert_array_equal(h[0], np.ones(order))
    for i in range(1, order):
        for j in range(1, order):
            expected = 1 if i == j else legendre[(j - i) % q]
            assert h[i, j] == expected
    with pytest.raises(ValueError, match="not q \\+ 1"):
        paley(16)


@pytest.mark.parametrize("n, factors", [(576, [12, 12, 4]), (1536, [12, 128]), (64, [64]), (48, [12, 4]),
                                        (36, None), (9, None)])
def test_hadamard_orders_of_smollm2_are_constructed(n, factors):
    assert hadamard_factors(n) == factors
    h = hadamard_matrix(n)
    if factors is None:
        assert h is None
    else:
        np.testing.assert_array_equal(h @ h.T, n * np.eye(n))


@pytest.mark.parametrize("n", [576, 36])
def test_random_orthogonal_is_orthogonal_seeded_and_randomised(n):
    q = random_orthogonal(n, 5)
    np.testing.assert_allclose(q @ q.T, np.eye(n), atol=1e-12)
    np.testing.assert_array_equal(q, random_orthogonal(n, 5))
    assert not np.allclose(q, random_orthogonal(n, 6))
    if n == 576:  # a randomised Hadamard: every entry +-1/sqrt(n), the rows' signs flipped
        np.testing.assert_allclose(np.abs(q), 1 / np.sqrt(n))
        signs = np.sign(q[:, 0] * hadamard_matrix(n)[:, 0])
        np.testing.assert_allclose(q, signs[:, None] * hadamard_matrix(n) / np.sqrt(n))


def test_random_orthogonal_is_the_seeded_sign_flipped_hadamard_bit_for_bit():
    """The structured construction draws and builds exactly the matrix ``D H / sqrt(n)`` (as before it)."""
    for n in (576, 64, 1536):
        signs = np.random.RandomState(11).randint(0, 2, size=n) * 2.0 - 1.0
        np.testing.assert_array_equal(random_orthogonal(n, 11), signs[:, None] * hadamard_matrix(n) / np.sqrt(n))
    config = tiny()
    rng = np.random.RandomState(4)
    q, hv = random_orthogonal(config.hidden_size, rng), random_orthogonal(config.head_dim, rng)   # q drawn first
    mats = RotationMatrices(config, 4)
    np.testing.assert_array_equal(mats.q.dense(), q)
    np.testing.assert_array_equal(mats.hv.dense(), hv)


@pytest.mark.parametrize("n, factors", [(576, [12, 12, 4]), (64, [8, 8]), (1536, [12, 8, 16]), (36, None)])
def test_structured_rotation_products_equal_the_dense_ones(n, factors, monkeypatch):
    monkeypatch.setattr(hadamard, "APPLY_ROWS", 64)       # several row blocks and a ragged last one
    monkeypatch.setattr(hadamard, "APPLY_COLUMNS", 48)
    monkeypatch.setattr(hadamard, "DENSE_ROWS", 64)
    rot = random_rotation(n, 7)
    if factors is None:   # no Hadamard matrix of order 36 here: a dense QR rotation
        assert rot.matrix is not None and rot.signs is None
    else:
        assert rot.matrix is None and [f.shape[0] for f in rot.factors] == factors
    q = rot.dense()
    np.testing.assert_allclose(q @ q.T, np.eye(n), atol=1e-12)
    rng = np.random.RandomState(0)
    x, gain = rng.randn(2, 150, n).astype(np.float32), rng.rand(n) + 0.5
    expected = (x.astype(np.float64) * gain) @ q
    assert rel_error(rot.right(x, gain), expected) < 1e-12
    assert rel_error(rot.right(x), x.astype(np.float64) @ q) < 1e-12
    np.testing.assert_array_equal(rot.right(x, gain, np.float32), rot.right(x, gain).astype(np.float32))
    y = rng.randn(n, 5, 31)
    assert rel_error(rot.left_t(y), np.einsum("ji,jab->iab", q, y)) < 1e-12
    np.testing.assert_array_equal(rot.left_t(y, np.float32), rot.left_t(y).astype(np.float32))
    with pytest.raises(ValueError, match="last axis"):
        rot.right(y)
    with pytest.raises(ValueError, match="first axis"):
        rot.left_t(x)


def test_rotation_rejects_factors_of_the_wrong_order():
    with pytest.raises(ValueError, match="do not multiply"):
        Rotation(np.ones(24), [paley(12)])
    with pytest.raises(ValueError, match="either signs and factors, or a dense matrix"):
        Rotation(np.ones(4), [sylvester(4)], matrix=np.eye(4))


@pytest.mark.parametrize("width, block", [(1536, 128), (96, 32), (48, 16), (256, 128)])
def test_online_hadamard_is_block_diagonal_and_matches_numpy(width, block):
    assert online_block(width) == block
    t = online_matrix(width)
    np.testing.assert_allclose(t @ t.T, np.eye(width), atol=1e-12)
    np.testing.assert_array_equal(t[:block, block:], 0)
    x = np.random.RandomState(0).randn(2, 3, width).astype(np.float32)
    y = OnlineHadamard(width)(ms.Tensor(x)).asnumpy()
    np.testing.assert_allclose(y, x @ t, atol=1e-5)
    assert rel_error(times_online(x), x.astype(np.float64) @ t) < 1e-12   # block by block, through its factors


# ----- float equivalence ------------------------------------------------------------------------
@pytest.mark.parametrize("hidden, tie, qkv_bias", [(48, False, False), (48, True, True), (64, True, False)])
def test_rotated_float_network_reproduces_logits(hidden, tie, qkv_bias):
    config = tiny(hidden, tie, qkv_bias)
    net = LlamaForCausalLM(config, seed=1)
    reference = net(TEST_IDS).asnumpy()
    rotate_network(net, seed=3)
    assert rel_error(net(TEST_IDS).asnumpy(), reference) < 1e-4
    layer = net.model.layers[0]
    np.testing.assert_array_equal(layer.attention_norm.weight.asnumpy(), 1.0)   # folded: x / rms(x)
    assert isinstance(layer.feed_forward.down_transform, OnlineHadamard)
    assert net.lm_head.weight is not net.model.tok_embeddings.embedding_weight
    assert net.config.tie_word_embeddings is False
    assert config.tie_word_embeddings is tie   # the caller's config object is not changed
    with pytest.raises(RuntimeError, match="already rotated"):
        rotate_network(net, seed=3)


def test_rotation_without_online_transform_reproduces_logits_and_keeps_w3_w2_smoothing(tmp_path):
    config = tiny()
    net = LlamaForCausalLM(config, seed=1)
    reference = net(TEST_IDS).asnumpy()
    ptq = PTQ(PTQConfig(act_quant_dtype=I8, rotation="hadamard", anti_method="m1",
                        algo_args={"rotation_online": False}), keep_float_cells=True)
    ptq.apply(net, None, calibration(config))
    assert net.model.layers[0].feed_forward.down_transform is None
    quantized = net(TEST_IDS).asnumpy()
    ptq.roll_back(net, [r.name for r in ptq.records if not r.spec.skip_reason])
    assert rel_error(net(TEST_IDS).asnumpy(), reference) < 1e-4   # w3 -> w2 smoothed, function kept
    ptq.restore(net, list(ptq.rolled_back))
    ptq.convert(net)
    save_quantized(net, ptq, str(tmp_path / "q"))
    deployed, _ = load_quantized(str(tmp_path / "q"))
    assert deployed.model.layers[0].feed_forward.down_transform is None
    np.testing.assert_allclose(deployed(TEST_IDS).asnumpy(), quantized, atol=1e-5, rtol=0)


def test_rotation_stopped_half_way_says_so_and_refuses_another(monkeypatch):
    net = LlamaForCausalLM(tiny(), seed=1)
    real, calls = rotation_module.rotate_layer, []

    def second_layer_fails(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise MemoryError("no room")
        return real(*args, **kwargs)

    monkeypatch.setattr(rotation_module, "rotate_layer", second_layer_fails)
    with pytest.raises(RuntimeError, match=r"stopped half way \(MemoryError: no room\).*partly rotated"):
        rotate_network(net, seed=0)
    monkeypatch.setattr(rotation_module, "rotate_layer", real)
    with pytest.raises(RuntimeError, match="already rotated"):
        rotate_network(net, seed=0)


def test_rotation_changes_the_weights_and_depends_on_the_seed():
    a, b = LlamaForCausalLM(tiny(), seed=1), LlamaForCausalLM(tiny(), seed=1)
    before = a.model.layers[0].attention.wq.weight.asnumpy()
    rotate_network(a, 0)
    rotate_network(b, 1)
    wa, wb = (n.model.layers[0].attention.wq.weight.asnumpy() for n in (a, b))
    assert not np.allclose(wa, before) and not np.allclose(wa, wb)


# ----- with quantization ------------------------------------------------------------------------
SCHEMES = {
    "a8w8_static": dict(act_quant_dtype=I8),
    "a8w8_dynamic": dict(act_quant_dtype=I8, act_quant_granularity=QuantGranularity.PER_TOKEN,
                         opname_blacklist=["lm_head"]),
    "a16w8": dict(),
    "c8": dict(weight_quant_dtype=None, kvcache_quant_dtype=I8),
    "a16w4_g16": dict(weight_bits=4, weight_quant_granularity=QuantGranularity.PER_GROUP, group_size=16,
                      weight_symmetric=False),
    "a8w8_m2_gptq": dict(act_quant_dtype=I8, anti_method="m2", precision_recovery="GPTQ",
                         algo_args={"alpha_grid": 3, "search_rows": 64}),
}


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_rotation_with_each_scheme_saves_and_deploys_the_same_logits(tmp_path, scheme):
    config = tiny(tie=scheme in ("a16w8", "a8w8_dynamic"))
    net = LlamaForCausalLM(config, seed=0)
    reference = net(TEST_IDS).asnumpy()
    ptq = PTQ(PTQConfig(rotation="hadamard", **SCHEMES[scheme]))
    ptq.apply(net, None, calibration(config))
    ptq.convert(net)
    quantized = net(TEST_IDS).asnumpy()
    assert 0 < rel_error(quantized, reference) < 0.3
    save_quantized(net, ptq, str(tmp_path / "q"))
    assert PTQConfig.load(str(tmp_path / "q" / "ptq_config.yaml")).rotation == "hadamard"
    deployed, dptq = load_quantized(str(tmp_path / "q"))
    assert isinstance(deployed.model.layers[1].feed_forward.down_transform, OnlineHadamard)
    assert isinstance(dptq.pipeline[0], RotationModule)
    np.testing.assert_allclose(deployed(TEST_IDS).asnumpy(), quantized, atol=1e-5, rtol=0)


@pytest.mark.parametrize("anti", ["m2", "m3", "m4"])   # m1: the rotation_online test; m6: m2's mapping loop (ScaleSearchModule)
def test_rotation_then_smoothing_keeps_the_float_function(anti):
    """Every layer rolled back to its float cell after calibration: the rotated and smoothed float
    network must still give the float logits (the online transform before w2 blocks smoothing
    the w3 -> w2 pair, which would otherwise change the function)."""
    config = tiny()
    net = LlamaForCausalLM(config, seed=0)
    reference = net(TEST_IDS).asnumpy()
    scheme = dict(act_quant_dtype=I8) if anti != "m3" else dict()
    ptq = PTQ(PTQConfig(rotation="hadamard", anti_method=anti, **scheme,
                        algo_args={"alpha_grid": 3, "beta_grid": 2, "awq_grid": 3, "awq_clip_grid": 2,
                                   "search_rows": 64}), keep_float_cells=True)
    ptq.apply(net, None, calibration(config))
    ptq.roll_back(net, [r.name for r in ptq.records if not r.spec.skip_reason])
    assert rel_error(net(TEST_IDS).asnumpy(), reference) < 1e-4
    assert not any(m.smooth == "feed_forward.w3" for m in RotatedStructure(LlamaStructure()).smooth_mappings)


def test_rotation_reduces_static_w8a8_error_on_planted_outlier_channels():
    """Residual-stream outliers (a few hidden channels scaled up in the embedding and in every
    writer of the residual) are what per-tensor activation quantization handles worst."""
    config = tiny(hidden=64)
    errors = {}
    for rotation in ("none", "hadamard"):
        net = LlamaForCausalLM(config, seed=0)
        scale = np.ones(64, np.float32)
        scale[[3, 17]] = 100.0
        emb = net.model.tok_embeddings.embedding_weight
        emb.set_data(ms.Tensor(emb.asnumpy() * scale))
        reference = net(TEST_IDS).asnumpy()
        ptq = PTQ(PTQConfig(act_quant_dtype=I8, rotation=rotation))
        ptq.apply(net, None, calibration(config))
        ptq.convert(net)
        errors[rotation] = rel_error(net(TEST_IDS).asnumpy(), reference)
    assert errors["hadamard"] < 0.5 * errors["none"], errors


def test_deployed_rotated_network_runs_compiled(tmp_path):
    config = tiny()
    net = LlamaForCausalLM(config, seed=0)
    ptq = PTQ(PTQConfig(act_quant_dtype=I8, rotation="hadamard"))
    ptq.apply(net, None, calibration(config))
    ptq.convert(net)
    save_quantized(net, ptq, str(tmp_path / "q"))
    deployed, _ = load_quantized(str(tmp_path / "q"))
    eager = deployed(TEST_IDS).asnumpy()
    deployed.set_compiled(decode=True, forward=True)
    np.testing.assert_allclose(deployed(TEST_IDS).asnumpy(), eager, atol=1e-4, rtol=0)
    out_eager = LlamaForCausalLM.generate(deployed, TEST_IDS[:1, :6], max_new_tokens=4)
    assert len(out_eager[0]) == 10


# ----- configuration ----------------------------------------------------------------------------
def test_config_values_round_trip_and_pipeline_order(tmp_path):
    cfg = PTQConfig(act_quant_dtype=I8, rotation="Hadamard", anti_method="m2", precision_recovery="GPTQ",
                    algo_args={"rotation_seed": 7})
    assert cfg.rotation == "hadamard" and cfg.rotation_method == "hadamard"
    path = str(tmp_path / "c.yaml")
    cfg.dump(path)
    loaded = PTQConfig.load(path)
    assert loaded.rotation == "hadamard" and loaded.arg("rotation_seed") == 7
    kinds = [type(m) for m in PTQ(loaded).pipeline]
    assert kinds == [RotationModule, SmoothSearchModule, GPTQModule, QuantizeModule]
    assert PTQ(loaded).pipeline[0].seed == 7
    assert PTQConfig().rotation == "none" and PTQConfig(rotation=None).rotation == "none"
    assert [type(m) for m in PTQ(PTQConfig()).pipeline] == [QuantizeModule]


@pytest.mark.parametrize("kwargs, message", [
    (dict(rotation="hadamrd"), r"PTQConfig.rotation: 'hadamrd' is not allowed; allowed: \['none', 'hadamard'\]"),
    (dict(rotation=True), r"PTQConfig.rotation: True is not allowed; allowed: \['none', 'hadamard'\]"),
    (dict(algo_args={"rotation_seed": -1}), r"PTQConfig.algo_args\['rotation_seed'\]: -1 is out of range"),
    (dict(algo_args={"rotation_seed": "1"}), r"PTQConfig.algo_args\['rotation_seed'\]: '1' \(str\) is not an integer"),
    (dict(algo_args={"rotation_online": "no"}), r"PTQConfig.algo_args\['rotation_online'\]: 'no' \(str\) is not a boolean"),
])
def test_bad_rotation_values_error_in_one_line(kwargs, message):
    with pytest.raises(ConfigError, match=message) as err:
        PTQConfig(**kwargs)
    assert "\n" not in str(err.value)


def test_bad_rotation_in_yaml_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("rotation: quarot\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: PTQConfig.rotation: 'quarot' is not allowed"):
        PTQConfig.load(str(path))


def test_rotation_under_tp_is_refused_naming_the_method():
    net = LlamaForCausalLM(tiny(hidden=64), seed=0, tp=TPContext(2, 0))
    for mode in (PTQMode.QUANTIZE, PTQMode.DEPLOY):
        with pytest.raises(NotImplementedError, match=r"tensor parallel size 2 does not support: method hadamard"):
            PTQ(PTQConfig(rotation="hadamard", mode=mode)).apply(net, None, [np.arange(8)])
    with pytest.raises(NotImplementedError, match="not supported under tensor parallel size 2"):
        rotate_network(net)


def test_rotating_a_quantized_network_is_refused():
    net = LlamaForCausalLM(tiny(), seed=0)
    ptq = PTQ(PTQConfig())
    ptq.apply(net, None, calibration(tiny()))
    with pytest.raises(RuntimeError, match="already holds quantized cells"):
        rotate_network(net)


def test_saving_refuses_a_pipeline_that_disagrees_with_the_rotation_config(tmp_path):
    config = tiny()
    for cfg, pipeline in ((PTQConfig(rotation="hadamard"), [QuantizeModule()]),
                          (PTQConfig(), [RotationModule(), QuantizeModule()])):
        net = LlamaForCausalLM(config, seed=0)
        ptq = PTQ(cfg, pipeline=pipeline)
        ptq.apply(net, None, calibration(config))
        ptq.convert(net)
        with pytest.raises(ValueError, match="PTQConfig.rotation is .* rotation module"):
            save_quantized(net, ptq, str(tmp_path / "q"))


def test_export_takes_an_offline_rotation_and_refuses_the_online_one(tmp_path):
    from golden_ptq.export import export_model
    from golden_ptq.export.import_ct import import_compressed_tensors
    from golden_ptq.export.saved_model import NotRepresentableError, SavedModel
    config = tiny()
    config.tie_word_embeddings = True   # rotation unties the head; the export must carry it apart
    ids = calibration(config)[0]
    for online in (True, False):
        net = LlamaForCausalLM(config, seed=0)
        ptq = PTQ(PTQConfig(rotation="hadamard", act_quant_dtype="int8", act_quant_granularity="PER_TOKEN",
                            algo_args={"rotation_online": online}))
        ptq.apply(net, None, calibration(config))
        ptq.convert(net)
        folder = str(tmp_path / f"q{online}")
        save_quantized(net, ptq, folder)
        if online:
            with pytest.raises(NotRepresentableError, match="rotation 'hadamard' and algo_args rotation_online: "
                                                            "true.*online Hadamard.*rotation_online: false"):
                SavedModel(folder)
            continue
        assert SavedModel(folder).head_is_separate
        export_model(folder, "compressed-tensors", str(tmp_path / "ct"))
        imported, _, _ = import_compressed_tensors(str(tmp_path / "ct"))
        deployed, _ = load_quantized(folder)
        np.testing.assert_array_equal(imported(ids).asnumpy(), deployed(ids).asnumpy())


@pytest.mark.slow
def test_rotated_smollm2_reproduces_float_logits(smollm2_gguf):
    from golden_ptq.networks.loaders import load_gguf
    net, _ = load_gguf(smollm2_gguf, max_position_embeddings=256)
    ids = np.random.RandomState(0).randint(0, net.config.vocab_size, (1, 32))
    reference = net(ids).asnumpy()
    rotate_network(net, seed=0)
    assert rel_error(net(ids).asnumpy(), reference) < 1e-4
