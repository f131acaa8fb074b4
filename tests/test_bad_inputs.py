"""Bad inputs, as a hostile user would give them: each gets its exact error type and a message
naming the culprit, and no error leaves the network silently changed (untouched, or raising on use).

The CLI arguments and the saved quantized folder have their own tests; these cover configs,
network yamls, HF / GGUF model descriptions, token ids, numerics and checkpoint files.
"""
import json
import os

import mindspore as ms
import numpy as np
import pytest
import yaml
from safetensors.numpy import save_file

from golden_ptq import PTQ, PTQConfig, PTQMode
from golden_ptq.algorithm.guards import NonFiniteError
from golden_ptq.config.validation import ConfigError
from golden_ptq.io.checkpoint import read_checkpoint, save_checkpoint
from golden_ptq.io.hf_config import hf_config
from golden_ptq.io.safetensors_files import CorruptFileError, SafetensorsFiles
from golden_ptq.networks.helper import NetworkHelper
from golden_ptq.networks.llama import LlamaForCausalLM
from golden_ptq.networks.token_ids import TokenIdError
from golden_ptq.quant_math import asymmetric_params, dequantize, quantize_weight, symmetric_scale

TINY = dict(vocab_size=97, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=96,
            max_position_embeddings=128)


def calibration(vocab, n=2, length=12, seed=0):
    rng = np.random.RandomState(seed)
    return [rng.randint(0, vocab, (2, length)) for _ in range(n)]


def snapshot(network):
    """Everything an error must leave as it was: the cell types and every parameter's bytes."""
    cells = [(name, type(cell).__name__) for name, cell in network.cells_and_names()]
    params = {name: p.asnumpy().copy() for name, p in network.parameters_and_names()}
    return cells, params


def assert_untouched(network, before):
    cells, params = snapshot(network)
    assert cells == before[0]
    assert sorted(params) == sorted(before[1])
    for name, value in params.items():
        np.testing.assert_array_equal(value, before[1][name], err_msg=name)


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text)
    return str(path)


# ----- PTQConfig ------------------------------------------------------------------------------------
@pytest.mark.parametrize("content, culprits", [
    ("weight_symmetric: 'false'\n", ["weight_symmetric", "'false'", "true or false"]),
    ("weight_symmetric: 0\n", ["weight_symmetric", "0", "true or false"]),
    ("opname_blacklist: 5\n", ["opname_blacklist", "5", "list"]),
    ("opname_blacklist: [w2, 3]\n", ["opname_blacklist", "entry 3"]),
    ("algo_args: {hist_bins: 2}\n", ["hist_bins", "2", "[16, 1048576]"]),
    ("algo_args: {hist_bin: 64}\n", ["hist_bin", "did you mean 'hist_bins'"]),
    ("algo_args: {smooth_alpha: 'half'}\n", ["smooth_alpha", "'half'", "number"]),
    ("algo_args: 3\n", ["algo_args", "mapping"]),
    ("weight_quant_granularity: PER_GROUP\ngroup_size: '16'\n", ["group_size", "'16'", "integer"]),
    ("group_size: -4\n", ["group_size", "-4", ">= 0"]),
    ("weight_bits: 8.0\n", ["weight_bits", "8.0", "integer"]),
    ("act_symmetric: 'no'\n", ["act_symmetric", "'no'"]),
    ("weight_symetric: true\n", ["weight_symetric", "did you mean 'weight_symmetric'"]),
    ("mode: deplyo\n", ["mode", "'deplyo'", "did you mean 'DEPLOY'"]),
    ("rollback_signal: range\n", ["rollback_signal", "'range'", "range_parm"]),
    ("anti_method: 5\n", ["anti_method", "5"]),
    ("weight_quant_dtype: int4\n", ["weight_quant_dtype", "'int4'", "int8"]),
])
def test_ptq_config_yaml_values(tmp_path, content, culprits):
    path = write(tmp_path, "bad.yaml", content)
    with pytest.raises(ConfigError) as info:
        PTQConfig.load(path)
    message = str(info.value)
    assert message.startswith(path) and "\n" not in message
    for culprit in culprits:
        assert culprit in message, message


@pytest.mark.parametrize("content, culprit", [
    (bytes(range(256)) * 4, r"not a text \(UTF-8\) yaml file: byte 128 is 0x80"),
    ("- a\n- b\n", "must be a mapping"),
    ("mode: [unclosed\n", "not valid yaml at line"),
    ("42\n", "must be a mapping"),
    ("{1: 2}\n", "key 1 is not a string"),
], ids=["random_bytes", "list", "bad_syntax", "scalar", "int_key"])
def test_ptq_config_unreadable_yaml_names_the_file(tmp_path, content, culprit):
    path = write(tmp_path, "bad.yaml", content)
    with pytest.raises(ConfigError, match=culprit) as info:
        PTQConfig.load(path)
    assert str(info.value).startswith(path)


def test_ptq_config_assigned_after_construction_is_checked_by_ptq():
    config = PTQConfig()
    config.weight_symmetric = "false"
    with pytest.raises(ConfigError, match="weight_symmetric: 'false'"):
        PTQ(config)


def test_an_empty_ptq_config_yaml_is_the_default(tmp_path):
    assert PTQConfig.load(write(tmp_path, "empty.yaml", "")) == PTQConfig()


# ----- PTQ.apply: checked before the network is touched ---------------------------------------------
@pytest.fixture
def network(tiny_config):
    return LlamaForCausalLM(tiny_config, seed=0)


def test_deploy_config_refused_for_quantize(tmp_path, network, tiny_config):
    path = write(tmp_path, "ptq_config.yaml", yaml.safe_dump(dict(PTQConfig(mode=PTQMode.DEPLOY).to_dict())))
    before = snapshot(network)
    with pytest.raises(ValueError, match=r"mode DEPLOY .*save_quantized.*mode: QUANTIZE"):
        PTQ(PTQConfig.load(path)).apply(network, None, calibration(tiny_config.vocab_size))
    assert_untouched(network, before)


@pytest.mark.parametrize("bad_id, culprit", [
    (97, "token id 97"), (-1, "token id -1"), (2 ** 32, f"token id {2 ** 32}"), (2 ** 31, f"token id {2 ** 31}"),
])
def test_calibration_ids_outside_vocab(network, tiny_config, bad_id, culprit):
    data = calibration(tiny_config.vocab_size)
    data[1] = data[1].astype(np.int64)
    data[1][1, 5] = bad_id
    before = snapshot(network)
    with pytest.raises(TokenIdError) as info:
        PTQ(PTQConfig()).apply(network, None, data)
    message = str(info.value)
    assert culprit in message and "calibration row 3" in message and "vocabulary size 97" in message
    assert_untouched(network, before)


def test_calibration_ids_not_integers(network, tiny_config):
    data = [a.astype(np.float32) for a in calibration(tiny_config.vocab_size)]
    before = snapshot(network)
    with pytest.raises(ValueError, match="input_ids must be integer"):
        PTQ(PTQConfig()).apply(network, None, data)
    assert_untouched(network, before)


@pytest.mark.parametrize("data, error, culprit", [
    (None, ValueError, "needs calibration data"),
    ([], ValueError, "calibration data is empty"),
    ([np.zeros((2, 0), np.int64)], ValueError, "calibration data is empty"),
    ([{"ids": np.array([1, 2])}], ValueError, "calibration item 0 has no 'input_ids'"),
    ([np.arange(200) % 97], ValueError, "calibration row 0: 200 tokens exceed the network's max_position_embeddings 128"),
], ids=["none", "empty", "zero_length", "no_input_ids", "too_long"])
def test_calibration_data_checked_before_the_network_is_touched(network, data, error, culprit):
    before = snapshot(network)
    with pytest.raises(error, match=culprit):
        PTQ(PTQConfig()).apply(network, None, data)
    assert_untouched(network, before)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_weight_names_the_layer(network, tiny_config, value):
    weight = network.model.layers[1].attention.wk.weight
    array = weight.asnumpy()
    array[3, 5] = value
    weight.set_data(ms.Tensor(array))
    before = snapshot(network)
    with pytest.raises(NonFiniteError, match=r"layer 'model.layers.1.attention.wk'.*1 non-finite value.*\(3, 5\)"):
        PTQ(PTQConfig()).apply(network, None, calibration(tiny_config.vocab_size))
    assert_untouched(network, before)


@pytest.mark.parametrize("act_method", [1, 2])
def test_non_finite_activations_name_the_layer_and_poison_the_network(network, tiny_config, act_method):
    norm = network.model.layers[1].ffn_norm.weight  # not quantized: the NaN shows in the next layer's input
    array = norm.asnumpy()
    array[7] = np.nan
    norm.set_data(ms.Tensor(array))
    config = PTQConfig(act_quant_dtype=ms.int8, act_method=act_method)
    with pytest.raises(NonFiniteError, match=r"layer 'model.layers.1.feed_forward.w1': its calibration input "
                                             r"activations hold NaN/Inf"):
        PTQ(config).apply(network, None, calibration(tiny_config.vocab_size))
    with pytest.raises(RuntimeError, match="PTQ.apply failed on this network.*build a fresh float network"):
        network(np.array([[1, 2, 3]]))


# ----- network yaml ---------------------------------------------------------------------------------
@pytest.mark.parametrize("config, culprits", [
    ({"model": {"source": "random"}}, ["model.source 'random' needs model.config"]),
    ({"model": {"source": "ckpt", "path": "x.ckpt"}}, ["model.source 'ckpt' needs model.config"]),
    ({"model": {"source": "random", "config": {**TINY, "hidden_size": 100000, "num_layers": 200}}},
     ["model.config", "GiB in float32", "machine"]),
    ({"model": {"source": "random", "sed": 1, "config": TINY}}, ["unknown key 'sed'", "did you mean 'seed'"]),
    ({"model": {"source": "gguf", "config": TINY}}, ["(source gguf)", "unknown key 'config'"]),
    ({"model": {"source": "random", "config": {**TINY, "hiden_size": 64}}},
     ["unknown field 'hiden_size'", "did you mean 'hidden_size'"]),
    ({"model": {"source": "random", "config": {**TINY, "tie_word_embeddings": "false"}}},
     ["model.config.tie_word_embeddings", "'false'"]),
    ({"model": {"source": "random", "config": {**TINY, "hidden_size": "64"}}}, ["model.config.hidden_size", "'64'"]),
    ({"model": {"source": "random", "config": {**TINY, "num_heads": 5}}}, ["divisible by num_heads"]),
    ({"model": {"source": "random", "config": TINY}, "runtime": {"do_sample": "false"}},
     ["runtime.do_sample", "'false'"]),
    ({"model": {"source": "random", "config": TINY}, "runtime": {"seq_length": 0}}, ["runtime.seq_length", ">= 1"]),
    ({"model": {"source": "random", "config": TINY}, "runtime": {"top_p": 1.5}}, ["runtime.top_p", "1.5"]),
    ({"model": {"source": "safetensors"}}, ["model.source", "'safetensors'"]),
    ({"model": 3}, ["model", "mapping"]),
])
def test_network_config_values(tmp_path, config, culprits):
    path = write(tmp_path, "net.yaml", yaml.safe_dump(config))
    with pytest.raises(ConfigError) as info:
        NetworkHelper(path)
    message = str(info.value)
    assert message.startswith(path), message
    for culprit in culprits:
        assert culprit in message, message


def test_network_yaml_of_random_bytes(tmp_path):
    path = write(tmp_path, "net.yaml", os.urandom(64) + b"\xff\xfe")
    with pytest.raises(ConfigError, match=f"{path}: not a text"):
        NetworkHelper(path)


# ----- token ids at the network's entry points ------------------------------------------------------
@pytest.mark.parametrize("ids, culprit", [
    (np.array([[1, 97]]), "token id 97"),
    (np.array([[-1, 3]]), "token id -1"),
    (np.array([[2 ** 32, 3]], dtype=np.int64), f"token id {2 ** 32}"),
    (np.array([[2 ** 63]], dtype=np.uint64), f"token id {2 ** 63}"),
    (np.array([[1.0, 2.0]]), "must be integers, got dtype float64"),
    (np.array([[True]]), "must be integers, got dtype bool"),
])
@pytest.mark.parametrize("entry", ["forward", "prefill", "generate", "embed"])
def test_token_ids_checked_before_any_work(network, ids, culprit, entry):
    call = {"forward": lambda: network(ids), "prefill": lambda: network.prefill(ids),
            "generate": lambda: network.generate(ids, max_new_tokens=2), "embed": lambda: network.embed(ids)}[entry]
    with pytest.raises(TokenIdError) as info:
        call()
    assert culprit in str(info.value) and "vocabulary size 97" in str(info.value)
    np.testing.assert_array_equal(network.generate(np.array([[1, 2]]), max_new_tokens=1)[0][:2], [1, 2])


def test_decode_step_id_outside_vocab(network):
    network.prefill(np.array([[1, 2, 3]]))
    with pytest.raises(TokenIdError, match="token id 500"):
        network.decode_step(np.array([500]))


@pytest.mark.parametrize("kwargs, culprit", [
    (dict(do_sample=True, top_p=0.0), r"top_p must be in \(0, 1\], got 0.0"),
    (dict(do_sample=True, top_p=1.5), r"top_p must be in \(0, 1\], got 1.5"),
    (dict(do_sample=True, top_k=-2), "top_k must be an integer >= 0"),
    (dict(temperature=0.0), "temperature must be > 0"),
    (dict(max_new_tokens=2.5), "max_new_tokens must be an integer >= 0, got 2.5"),
])
def test_generate_settings(network, kwargs, culprit):
    kwargs.setdefault("max_new_tokens", 2)
    with pytest.raises(ValueError, match=culprit):
        network.generate(np.array([[1, 2]]), **kwargs)


@pytest.mark.parametrize("field, value, culprit", [
    ("rope_theta", "1e4", "LlamaConfig.rope_theta: '1e4'"),
    ("rms_norm_eps", 0.0, "LlamaConfig.rms_norm_eps: 0 is out of range"),
    ("tie_word_embeddings", "false", "LlamaConfig.tie_word_embeddings: 'false'"),
    ("num_layers", True, "LlamaConfig.num_layers must be a positive integer, got True"),
    ("max_position_embeddings", 0, "LlamaConfig.max_position_embeddings must be a positive integer"),
])
def test_llama_config_python_api_is_typed(field, value, culprit):
    from golden_ptq.config.model_config import LlamaConfig
    with pytest.raises(ValueError, match=culprit):
        LlamaConfig(**{**TINY, field: value})


def test_generate_zero_new_tokens(network, tiny_config):
    ids = np.array([[5, 6, 7]])
    assert [list(r) for r in network.generate(ids, max_new_tokens=0)] == [[5, 6, 7]]
    with pytest.raises(ValueError, match="max_new_tokens must be an integer >= 0, got -1"):
        network.generate(ids, max_new_tokens=-1)

    class Tok:  # the helper's text-level generate, without loading a real tokenizer
        pad_token_id, eos_token_id = 0, 1

        def encode(self, text):
            return [5, 6, 7]

        def decode(self, ids):
            return " ".join(map(str, ids))

    helper = NetworkHelper({"model": {"source": "random", "config": TINY}})
    helper._tokenizer = Tok()
    assert helper.generate(network, "x", max_new_tokens=0) == [""]
    assert len(helper.generate(network, "x", max_new_tokens=2)[0].split()) == 2


# ----- Hugging Face config.json and GGUF metadata ---------------------------------------------------
HF_BASE = {"model_type": "llama", "vocab_size": 97, "hidden_size": 64, "num_hidden_layers": 2,
           "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 96}


@pytest.mark.parametrize("change, culprit", [
    ({"attention_bias": True}, "attention_bias true is not supported"),
    ({"attention_bias": "false"}, "attention_bias: 'false'"),
    ({"mlp_bias": True}, "mlp_bias true is not supported"),
    ({"hidden_act": "gelu"}, "hidden_act 'gelu' is not supported"),
    ({"rope_scaling": {"type": "linear", "factor": 2.0}}, "rope_scaling"),
    ({"sliding_window": 4096}, "sliding_window 4096 is not supported"),
    ({"model_type": "qwen2", "use_sliding_window": True, "sliding_window": 4096}, "use_sliding_window true"),
    ({"head_dim": 32}, "head_dim 32 differs from hidden_size / num_attention_heads"),
    ({"partial_rotary_factor": 0.5}, "partial_rotary_factor 0.5"),
    ({"tie_word_embeddings": "yes"}, "tie_word_embeddings: 'yes'"),
    ({"hidden_size": None}, "required key 'hidden_size' is missing"),
    ({"vocab_size": None}, "required key 'vocab_size' is missing"),
    ({"intermediate_size": "96"}, "intermediate_size: '96'"),
    ({"model_type": "mistral"}, "architecture 'mistral' is not supported"),
])
def test_hf_config_features_the_network_lacks(tmp_path, change, culprit):
    cfg = {**HF_BASE, **change}
    cfg = {k: v for k, v in cfg.items() if v is not None}
    write(tmp_path, "config.json", json.dumps(cfg))
    with pytest.raises(ValueError) as info:
        hf_config(str(tmp_path))
    assert culprit in str(info.value) and str(tmp_path / "config.json") in str(info.value)
    assert not isinstance(info.value, KeyError)


def test_hf_config_not_json(tmp_path):
    write(tmp_path, "config.json", b"\x00\xff garbage")
    with pytest.raises(ConfigError, match="config.json: not a valid JSON config"):
        hf_config(str(tmp_path))


@pytest.mark.parametrize("tied, head, culprit", [
    (False, None, "tie_word_embeddings false but the weights have no lm_head.weight"),
    (True, "different", "tie_word_embeddings true but lm_head.weight differs"),
])
def test_hf_tie_setting_contradicting_the_weights(tmp_path, tiny_config, tied, head, culprit):
    from golden_ptq.networks.loaders.hf_loader import load_hf
    from test_loaders import random_weights, write_hf_dir
    tiny_config.tie_word_embeddings = False
    _, weights = random_weights(tiny_config, 0)
    if head is None:
        del weights["lm_head.weight"]
    tiny_config.tie_word_embeddings = tied
    write_hf_dir(tmp_path, tiny_config, weights)
    with pytest.raises(ValueError, match=culprit):
        load_hf(str(tmp_path))


@pytest.fixture
def gguf_file(tmp_path, tiny_config):
    from golden_ptq.io.gguf_file import GGUFFile
    from test_loaders import random_weights, write_gguf
    _, weights = random_weights(tiny_config, 0)
    tokens = ["<s>", "</s>"] + [f"t{i}" for i in range(tiny_config.vocab_size - 2)]
    write_gguf(tmp_path / "m.gguf", tiny_config, weights, tokens, [])
    return GGUFFile(str(tmp_path / "m.gguf"))


@pytest.mark.parametrize("key, value, culprit", [
    ("llama.rope.scaling.type", "linear", "'llama.rope.scaling.type' = 'linear' is not supported"),
    ("llama.attention.sliding_window", 4096, "'llama.attention.sliding_window' = 4096 is not supported"),
    ("llama.expert_count", 8, "'llama.expert_count' = 8 is not supported"),
    ("llama.rope.dimension_count", 8, "'llama.rope.dimension_count' = 8 differs"),
    ("llama.embedding_length", None, "metadata key 'llama.embedding_length' is missing"),
])
def test_gguf_features_the_network_lacks(gguf_file, key, value, culprit):
    from golden_ptq.io.gguf_file import gguf_config
    gguf_config(gguf_file)  # as written: accepted
    if value is None:
        del gguf_file.metadata[key]
    else:
        gguf_file.metadata[key] = value
    with pytest.raises(ValueError, match=culprit) as info:
        gguf_config(gguf_file)
    assert gguf_file.path in str(info.value)


def test_gguf_bias_tensor_the_network_lacks(gguf_file):
    from golden_ptq.io.gguf_file import gguf_config
    gguf_file._tensors["blk.0.attn_output.bias"] = gguf_file._tensors["output_norm.weight"]
    with pytest.raises(ValueError, match="tensor 'blk.0.attn_output.bias' is not supported"):
        gguf_config(gguf_file)


# ----- numerics -------------------------------------------------------------------------------------
@pytest.mark.parametrize("bits, symmetric, group", [(8, True, 0), (8, False, 0), (4, True, 0), (4, False, 16),
                                                    (8, True, 16)])
def test_all_zero_channel_gets_a_safe_scale(bits, symmetric, group):
    weight = np.random.RandomState(0).randn(4, 32).astype(np.float32)
    weight[2] = 0.0
    q, scale, zp = quantize_weight(weight, group, symmetric, bits)
    assert np.isfinite(scale).all() and (scale > 0).all()
    view = q.reshape(4, -1, group or 32).astype(np.float32)
    zp3 = 0.0 if zp is None else zp.reshape(4, -1, 1)
    restored = ((view - zp3) * scale.reshape(4, -1, 1)).reshape(4, 32)
    np.testing.assert_array_equal(restored[2], 0.0)


@pytest.mark.parametrize("call", [
    lambda: symmetric_scale(np.array([1.0, np.nan])),
    lambda: symmetric_scale(np.array([np.inf])),
    lambda: asymmetric_params(np.array([-np.inf]), np.array([1.0])),
    lambda: quantize_weight(np.array([[1.0, np.nan]], np.float32)),
    lambda: quantize_weight(np.array([[1.0, np.inf]], np.float32), bits=4),
    lambda: quantize_weight(np.array([[np.nan, 1.0]], np.float32), symmetric=False),
])
def test_scales_are_never_nan_or_inf(call):
    with pytest.raises(NonFiniteError, match="NaN/Inf"):
        call()


def test_extreme_but_finite_ranges_stay_finite():
    scale, zp = asymmetric_params(np.array([-3e38]), np.array([3e38]))
    assert np.isfinite(scale).all() and np.isfinite(zp).all()
    assert np.isfinite(dequantize(np.array([127], np.int8), scale, zp)).all()


def test_float16_save_refuses_overflow(tmp_path, network):
    norm = network.model.norm_out.weight
    array = norm.asnumpy()
    array[:3] = [1e5, -7e4, 65000.0]  # 65000 still fits float16 (max 65504)
    norm.set_data(ms.Tensor(array))
    path = tmp_path / "m.safetensors"
    with pytest.raises(ValueError, match=r"would turn 2 value\(s\) into inf.*first parameter 'model.norm_out.weight'"):
        save_checkpoint(network, str(path), float_dtype="float16")
    assert not path.exists() and not os.listdir(tmp_path)


# ----- checkpoint files -----------------------------------------------------------------------------
def _valid(tmp_path, ext):
    path = str(tmp_path / f"ok{ext}")
    arrays = {"a": np.arange(4096, dtype=np.float32).reshape(64, 64)}
    if ext == ".ckpt":
        ms.save_checkpoint([{"name": "a", "data": ms.Tensor(arrays["a"])}], path)
    else:
        save_file(arrays, path)
    return path


@pytest.mark.parametrize("ext", [".ckpt", ".safetensors"])
@pytest.mark.parametrize("damage, culprit", [
    ("empty", r"is empty \(0 bytes\)"), ("half", r"truncated"), ("junk", r"not a readable|not a safetensors|truncated"),
])
def test_damaged_checkpoint_names_path_and_problem(tmp_path, ext, damage, culprit):
    raw = open(_valid(tmp_path, ext), "rb").read()
    data = {"empty": b"", "half": raw[: len(raw) // 2], "junk": os.urandom(500)}[damage]
    path = write(tmp_path, f"bad{ext}", data)
    with pytest.raises(CorruptFileError, match=culprit) as info:
        read_checkpoint(path)
    assert path in str(info.value)


def test_truncated_safetensors_shard_in_a_model_folder(tmp_path):
    raw = open(_valid(tmp_path, ".safetensors"), "rb").read()
    path = write(tmp_path, "model-00001.safetensors", raw[:-10])
    with pytest.raises(CorruptFileError, match=r"model-00001.safetensors: truncated: its tensors need \d+ bytes"):
        SafetensorsFiles([path])

