"""Export of saved quantized folders (compressed-tensors, msModelSlim layout, GGUF) and import of
compressed-tensors, checked with numpy only: structure, dtypes, shapes, bit-exact int8 codes."""
import json
import os

import numpy as np
import pytest
from mindspore import Tensor
from safetensors.numpy import load_file

from export_models import TEST_IDS, export_config, quantize_tiny, rel_error, smollm2_tokenizer
from golden_ptq.cli import main
from golden_ptq.export import NotRepresentableError, SavedModel, export_model
from golden_ptq.export.compressed_tensors import pack_int4, unpack_int4
from golden_ptq.export.import_ct import UnsupportedSchemeError, import_compressed_tensors
from golden_ptq.export.msmodelslim import int64_bits_as_float32
from golden_ptq.io.folder_set import verify_folder_set
from golden_ptq.networks.loaders.common import permute_rope_rows, unpermute_rope_rows

G32 = dict(weight_quant_granularity="PER_GROUP", group_size=32)
SCHEMES = {
    "a16w8": dict(),
    "a16w8_asym_g32": dict(weight_symmetric=False, **G32),
    "w4a16_g32": dict(weight_bits=4, **G32),
    "a8w8_smooth": dict(act_quant_dtype="int8", outliers_suppression="SMOOTH", opname_blacklist=["w2"]),
    "a8w8_dynamic": dict(act_quant_dtype="int8", act_quant_granularity="PER_TOKEN", opname_blacklist=["lm_head"]),
}


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_compressed_tensors_holds_our_codes_and_imports_back_exactly(tmp_path, tiny_config, scheme):
    _, logits = quantize_tiny(tmp_path / "q", export_config(tiny_config), **SCHEMES[scheme])
    export_model(str(tmp_path / "q"), "compressed-tensors", str(tmp_path / "ct"))
    verify_folder_set(str(tmp_path / "ct"))
    saved = SavedModel(str(tmp_path / "q"))
    tensors = load_file(str(tmp_path / "ct" / "model.safetensors"))
    quant = json.loads((tmp_path / "ct" / "config.json").read_text())["quantization_config"]
    assert quant["quant_method"] == "compressed-tensors" and len(quant["config_groups"]) == 1
    group = quant["config_groups"]["group_0"]
    layer = saved.linear("model.layers.1.attention.wo")
    module = "model.layers.1.self_attn.o_proj"
    if layer.bits == 4:
        assert group["format"] == "pack-quantized" and tensors[f"{module}.weight_packed"].dtype == np.int32
        np.testing.assert_array_equal(unpack_int4(tensors[f"{module}.weight_packed"], 64), layer.weight)
    else:
        assert tensors[f"{module}.weight"].dtype == np.int8
        np.testing.assert_array_equal(tensors[f"{module}.weight"], layer.weight)
    scale = tensors[f"{module}.weight_scale"]
    if layer.act_quantized and not layer.dynamic:  # recovered from deq_scale = input_scale * weight_scale
        assert group["input_activations"]["strategy"] == "tensor" and scale.shape == (64, 1)
        deq = scale[:, 0].astype(np.float64) * tensors[f"{module}.input_scale"][0]
        np.testing.assert_allclose(deq, layer.tensors["deq_scale"], rtol=1e-6)
        np.testing.assert_array_equal(tensors[f"{module}.input_zero_point"], layer.tensors["input_zp"].astype(np.int8))
    elif layer.dynamic:
        assert group["input_activations"] == {**group["input_activations"], "strategy": "token", "dynamic": True}
        assert "model.layers.0.self_attn.o_proj.input_scale" not in tensors
        np.testing.assert_array_equal(scale[:, 0], layer.tensors["weight_scale"])
    else:
        assert group["input_activations"] is None
        np.testing.assert_array_equal(scale.reshape(layer.tensors["weight_scale"].shape), layer.tensors["weight_scale"])
    if not layer.symmetric:
        np.testing.assert_array_equal(tensors[f"{module}.weight_zero_point"],
                                      layer.tensors["weight_zp"].astype(np.int8))
    ignored = {"a8w8_smooth": {"model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"},
               "a8w8_dynamic": {"lm_head"}}.get(scheme, set())
    assert set(quant["ignore"]) == ignored
    for name in ignored - {"lm_head"}:
        assert tensors[f"{name}.weight"].dtype == np.float32
    network, _, _ = import_compressed_tensors(str(tmp_path / "ct"))
    np.testing.assert_array_equal(network(TEST_IDS).asnumpy(), logits)


def test_int4_packing_order():
    codes = np.arange(-8, 8, dtype=np.int8).reshape(2, 8)
    packed = pack_int4(codes)
    assert packed.shape == (2, 1) and packed.dtype == np.int32
    assert [hex(v) for v in packed[:, 0].view(np.uint32)] == ["0x76543210", "0xfedcba98"]
    rng = np.random.RandomState(0)
    codes = rng.randint(-8, 8, (5, 64)).astype(np.int8)
    np.testing.assert_array_equal(unpack_int4(pack_int4(codes), 64), codes)


def test_rope_permutation_is_the_inverse_of_the_loaders():
    w = np.arange(8 * 16 * 3, dtype=np.float32).reshape(8 * 16 // 8, 3 * 8)[:16]
    np.testing.assert_array_equal(unpermute_rope_rows(permute_rope_rows(w, 2), 2), w)
    assert not np.array_equal(permute_rope_rows(w, 2), w)


@pytest.fixture
def g32_folder(tmp_path, tiny_config, smollm2_gguf):
    tokenizer = smollm2_tokenizer(smollm2_gguf)
    config = export_config(tiny_config, tokenizer, tie=True)
    deployed, _ = quantize_tiny(tmp_path / "g32", config, tokenizer, opname_blacklist=["lm_head"], **G32)
    return tmp_path / "g32", deployed, tokenizer


def test_gguf_q8_0_codes_are_ours_bit_for_bit(tmp_path, g32_folder):
    import gguf
    folder, deployed, tokenizer = g32_folder
    export_model(str(folder), "gguf", str(tmp_path / "gguf"))
    reader = gguf.GGUFReader(str(tmp_path / "gguf" / "model.gguf"))
    tensors = {t.name: t for t in reader.tensors}
    saved = SavedModel(str(folder))
    assert "output.weight" not in tensors  # tied, float head
    for ours, theirs, heads in (("model.layers.0.attention.wq", "blk.0.attn_q.weight", 4),
                                ("model.layers.1.attention.wk", "blk.1.attn_k.weight", 2),
                                ("model.layers.1.feed_forward.w2", "blk.1.ffn_down.weight", 0)):
        tensor = tensors[theirs]
        assert tensor.tensor_type == gguf.GGMLQuantizationType.Q8_0
        layer = saved.linear(ours)
        n, k = layer.weight.shape
        blocks = np.asarray(tensor.data).reshape(n, k // 32, 34)
        codes = blocks[:, :, 2:].copy().view(np.int8).reshape(n, k)
        scales = blocks[:, :, :2].copy().view(np.float16).reshape(n, k // 32)
        expect_codes, expect_scales = layer.weight, layer.tensors["weight_scale"].astype(np.float16)
        if heads:
            expect_codes, expect_scales = permute_rope_rows(expect_codes, heads), permute_rope_rows(expect_scales, heads)
        np.testing.assert_array_equal(codes, expect_codes)
        np.testing.assert_array_equal(scales, expect_scales)
    meta = {f.name: f for f in reader.fields.values()}
    assert meta["general.architecture"].contents() == "llama" and meta["general.file_type"].contents() == 7
    assert len(meta["tokenizer.ggml.tokens"].contents()) == tokenizer.vocab_size
    # golden_ptq's own GGUF loader reads it back: logits equal ours up to the fp16 rounding of the scales
    from golden_ptq.networks.loaders import load_gguf
    network, reloaded_tokenizer = load_gguf(str(tmp_path / "gguf" / "model.gguf"))
    ids = np.asarray([tokenizer.encode("Call me Ishmael. Some years ago")])
    error = rel_error(network(ids).asnumpy(), deployed(ids).asnumpy())
    assert 0 < error < 1e-3, error
    assert reloaded_tokenizer.encode("Call me Ishmael 1851") == tokenizer.encode("Call me Ishmael 1851")


def test_gguf_refuses_schemes_it_cannot_hold(tmp_path, tiny_config):
    quantize_tiny(tmp_path / "q", export_config(tiny_config))
    with pytest.raises(NotRepresentableError, match=r"not representable in GGUF: layer 'model.layers.0.attention.wq' "
                                                    r"is W8A16 \(per channel\)"):
        export_model(str(tmp_path / "q"), "gguf", str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_msmodelslim_w8a8_layout_and_mindie_flow(tmp_path, tiny_config):
    deployed, _ = quantize_tiny(tmp_path / "q", export_config(tiny_config), act_quant_dtype="int8",
                                kvcache_quant_dtype="int8", outliers_suppression="SMOOTH", opname_blacklist=["w2"])
    export_model(str(tmp_path / "q"), "msmodelslim", str(tmp_path / "ms"))
    out = tmp_path / "ms"
    desc = json.loads((out / "quant_model_description_w8a8.json").read_text())
    assert desc == json.loads((out / "quant_model_description.json").read_text())
    tensors = load_file(str(out / "quant_model_weight_w8a8.safetensors"))
    assert desc.pop("model_quant_type") == "W8A8" and desc.pop("kv_cache_type") == "C8"
    assert set(desc) == set(tensors)
    n_kv = tiny_config.num_kv_heads * tiny_config.head_dim
    m = "model.layers.0.self_attn.q_proj"
    expected = {".weight": (np.int8, (64, 64)), ".input_scale": (np.float16, (1,)), ".input_offset": (np.float16, (1,)),
                ".quant_bias": (np.int32, (64,)), ".deq_scale": (np.int64, (64,))}
    for suffix, (dtype, shape) in expected.items():
        assert tensors[m + suffix].dtype == dtype and tensors[m + suffix].shape == shape, suffix
        assert desc[m + suffix] == "W8A8"
    assert desc["model.layers.0.mlp.down_proj.weight"] == "FLOAT"
    assert tensors["model.layers.0.mlp.down_proj.weight"].dtype == np.float16
    assert tensors["model.layers.1.self_attn.k_proj.kv_cache_scale"].shape == (n_kv,)
    assert not tensors["model.layers.1.self_attn.v_proj.kv_cache_offset"].any()
    assert json.loads((out / "config.json").read_text())["quantize"] == "w8a8"
    # MindIE's documented W8A8 flow in numpy on the exported tensors vs our layer on its real input
    cell = deployed.model.layers[0].attention.wq
    seen = []
    cell.recorder = seen.append
    deployed(TEST_IDS)
    cell.recorder = None
    x = seen[0]
    ours = cell(Tensor(x)).asnumpy()
    w, quant_bias = tensors[m + ".weight"].astype(np.int64), tensors[m + ".quant_bias"]
    offset = np.float32(tensors[m + ".input_offset"][0])

    def mindie(scale, deq):
        xq = np.clip(np.round(x / scale) + offset, -128, 127)
        return (xq.astype(np.int64) @ w.T + quant_bias) * deq

    def error(y):
        return np.linalg.norm(y - ours) / np.linalg.norm(ours)

    # The layout stores input_scale in float16: a few activation codes round the other way. On this
    # random network that is ~0.1-0.6 % of them (error ~1e-3); with our float32 scale put back the
    # flow is ours to float rounding, so the fp16 scale is the only difference.
    stored = error(mindie(np.float32(tensors[m + ".input_scale"][0]), int64_bits_as_float32(tensors[m + ".deq_scale"])))
    assert stored < 3e-3, stored
    layer = SavedModel(str(tmp_path / "q")).linear("model.layers.0.attention.wq")
    exact = error(mindie(layer.tensors["input_scale"][0], layer.tensors["deq_scale"]))
    assert exact < 1e-6, exact
    np.testing.assert_array_equal(tensors[m + ".weight"], SavedModel(str(tmp_path / "q")).linear(
        "model.layers.0.attention.wq").weight)


def test_msmodelslim_flow_is_exact_with_float16_static_scales(tmp_path, tiny_config):
    """algo_args static_scale_dtype: float16 rounds each static input scale up to a float16 value at
    quantization time, so the layout's fp16 input_scale is our scale and MindIE's flow is our layer."""
    deployed, _ = quantize_tiny(tmp_path / "q", export_config(tiny_config), act_quant_dtype="int8",
                                outliers_suppression="SMOOTH", algo_args={"static_scale_dtype": "float16"})
    export_model(str(tmp_path / "q"), "msmodelslim", str(tmp_path / "ms"))
    tensors = load_file(str(tmp_path / "ms" / "quant_model_weight_w8a8.safetensors"))
    saved = SavedModel(str(tmp_path / "q"))
    for ours, theirs in (("model.layers.0.attention.wq", "model.layers.0.self_attn.q_proj"),
                         ("model.layers.1.feed_forward.w2", "model.layers.1.mlp.down_proj")):
        scale32 = saved.linear(ours).tensors["input_scale"]
        assert np.float16(scale32[0]) == scale32[0]
        assert tensors[theirs + ".input_scale"][0] == scale32[0]
        np.testing.assert_array_equal(int64_bits_as_float32(tensors[theirs + ".deq_scale"]),
                                      saved.linear(ours).tensors["deq_scale"])
    cell = deployed.model.layers[0].attention.wq
    seen = []
    cell.recorder = seen.append
    deployed(TEST_IDS)
    cell.recorder = None
    x, ours = seen[0], cell(Tensor(seen[0])).asnumpy()
    m = "model.layers.0.self_attn.q_proj"
    xq = np.clip(np.round(x / np.float32(tensors[m + ".input_scale"][0])) + np.float32(tensors[m + ".input_offset"][0]),
                 -128, 127)
    flow = (xq.astype(np.int64) @ tensors[m + ".weight"].astype(np.int64).T + tensors[m + ".quant_bias"]) \
        * int64_bits_as_float32(tensors[m + ".deq_scale"])
    assert rel_error(flow, ours) < 1e-6


def test_msmodelslim_weight_only_group_dequantizes_as_ours(tmp_path, tiny_config):
    quantize_tiny(tmp_path / "q", export_config(tiny_config), weight_symmetric=False, **G32)
    export_model(str(tmp_path / "q"), "msmodelslim", str(tmp_path / "ms"))
    tensors = load_file(str(tmp_path / "ms" / "quant_model_weight_w8a16.safetensors"))
    m = "model.layers.1.mlp.down_proj"
    w, scale, offset = tensors[m + ".weight"], tensors[m + ".weight_scale"], tensors[m + ".weight_offset"]
    assert w.dtype == np.int8 and scale.dtype == offset.dtype == np.float32 and scale.shape == (64, 3)
    deq = ((w.reshape(-1, 32).astype(np.float32) - offset.reshape(-1, 1)) * scale.reshape(-1, 1)).reshape(w.shape)
    ours = SavedModel(str(tmp_path / "q")).linear("model.layers.1.feed_forward.w2").dequantized_weight()
    np.testing.assert_array_equal(deq, ours)


def test_refusals_name_the_problem(tmp_path, tiny_config):
    quantize_tiny(tmp_path / "q", export_config(tiny_config), act_quant_dtype="int8", kvcache_quant_dtype="int8")
    with pytest.raises(NotRepresentableError, match="C8 KV cache .* --float-kv-cache"):
        export_model(str(tmp_path / "q"), "compressed-tensors", str(tmp_path / "ct"))
    facts = export_model(str(tmp_path / "q"), "compressed-tensors", str(tmp_path / "ct"), float_kv_cache=True)
    assert any("KV cache runs in float" in fact for fact in facts)
    config_file = tmp_path / "ct" / "config.json"
    config = json.loads(config_file.read_text())
    config["quantization_config"]["config_groups"]["group_0"]["weights"]["type"] = "float"
    config_file.write_text(json.dumps(config))
    with pytest.raises(UnsupportedSchemeError, match="weights .*'type': 'float'.* supported: int, 4 or 8 bits"):
        import_compressed_tensors(str(tmp_path / "ct"))
    quantize_tiny(tmp_path / "tv", export_config(tiny_config), act_quant_dtype="int8", kvcache_quant_dtype="int8",
                  algo_args={"kvcache_scheme": "token_values"})
    with pytest.raises(NotRepresentableError, match="msModelSlim's C8: the KV cache layout kvcache_scheme "
                                                    "'token_values' has per-token value scales.*kvcache_scheme: static"):
        export_model(str(tmp_path / "tv"), "msmodelslim", str(tmp_path / "tv_ms"))
    assert not (tmp_path / "tv_ms").exists()
    with pytest.raises(ValueError, match="is the quantized folder itself"):
        export_model(str(tmp_path / "q"), "msmodelslim", str(tmp_path / "q"))
    with pytest.raises(ValueError, match="export format 'onnx' is not one of"):
        export_model(str(tmp_path / "q"), "onnx", str(tmp_path / "x"))


def test_cli_export_and_import(tmp_path, tiny_config, capsys):
    _, logits = quantize_tiny(tmp_path / "q", export_config(tiny_config), **G32)
    assert main(["export", str(tmp_path / "q"), "--format", "gguf", "--output", str(tmp_path / "g"), "--quiet"]) == 2
    assert "the saved model has no tokenizer; a GGUF file carries one" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "q"), "--format", "compressed-tensors", "--output", str(tmp_path / "ct"),
                 "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"exported {tmp_path / 'q'} as compressed-tensors") and f"output: {tmp_path / 'ct'}" in printed
    assert os.path.isfile(tmp_path / "ct" / "README.md")
    assert main(["import", str(tmp_path / "ct"), "--output", str(tmp_path / "back"), "--quiet"]) == 0
    assert "W8A16-g32 15" in capsys.readouterr().out
    from golden_ptq.deploy import load_quantized
    np.testing.assert_array_equal(load_quantized(str(tmp_path / "back"))[0](TEST_IDS).asnumpy(), logits)
