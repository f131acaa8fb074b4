"""MindFormers' own LlamaForCausalLM on CPU, quantized in place by PTQ (needs the optional dependency mindformers).

One PTQ, two network families: the same weights quantized as MindFormers' network and as
golden_ptq's give the same logits; the MindFormers checkpoint reloads in DEPLOY in a new process.
"""
import dataclasses
import json
import os
import subprocess
import sys

import mindspore as ms
import numpy as np
import pytest

from golden_ptq import PTQ, OutliersSuppressionType, PTQConfig, QuantGranularity
from golden_ptq.networks.llama import LlamaForCausalLM
from golden_ptq.networks.structure import LLAMA_SMOOTH_MAPPINGS, LlamaStructure

try:
    from golden_ptq.mindformers.shims import import_mindformers
    import_mindformers()
except ImportError as err:  # the optional extra is not installed here
    pytest.skip(str(err), allow_module_level=True)

from golden_ptq.deploy import save_quantized  # noqa: E402
from golden_ptq.mindformers import export_mindformers  # noqa: E402
from golden_ptq.mindformers.helper import MFLlamaHelper  # noqa: E402
from golden_ptq.mindformers.quant_cells import MFQuantLinear, register_mindformers  # noqa: E402

I8 = ms.int8
SCHEMES = {
    "a16w8": dict(),
    "a8w8_smooth": dict(act_quant_dtype=I8, outliers_suppression=OutliersSuppressionType.SMOOTH),
    "a8w8_dynamic": dict(act_quant_dtype=I8, act_quant_granularity=QuantGranularity.PER_TOKEN),
    "c8": dict(weight_quant_dtype=None, kvcache_quant_dtype=I8),
}
CASES = [(scheme, False) for scheme in SCHEMES] + [("a8w8_smooth", True), ("a16w8", True)]
NEW_TOKENS = 16
PROMPT = 8   # prompt + new tokens stay under the row count at which the W8A8 kernels compile (per shape)


class _NormOnlyStructure(LlamaStructure):
    """golden_ptq's network smoothed only at the norms: what MindFormers' qkv_concat layers allow."""
    smooth_mappings = LLAMA_SMOOTH_MAPPINGS[:2]


def _rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.fixture(scope="module", autouse=True)
def _mindspore_op_route():
    """golden_ptq's network computes with MindSpore's ops here, as MindFormers' network does: these tests
    compare the two op for op. golden_ptq's fused native RMSNorm and SwiGLU round differently in the
    last bits, enough to flip a static activation code or a smoothing search's choice on these toy
    networks (tests/test_float_prefill_kernels.py checks those kernels)."""
    from golden_ptq.kernels.float_prefill import set_float_prefill_kernels
    set_float_prefill_kernels(False)
    yield
    set_float_prefill_kernels(True)


@pytest.fixture(scope="module")
def quantized_pairs(tmp_path_factory, request):
    """Per case: golden_ptq's quantized logits / tokens, MindFormers' in-process ones, the saved folder."""
    from golden_ptq.config.model_config import LlamaConfig
    config = LlamaConfig(vocab_size=97, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                         intermediate_size=96, max_position_embeddings=128, pad_token_id=None, eos_token_id=None)
    root = tmp_path_factory.mktemp("mindformers")
    source = LlamaForCausalLM(config, seed=0)
    arrays = {n: p.asnumpy() for n, p in source.parameters_and_names()}
    rng = np.random.RandomState(0)
    calibration = [rng.randint(0, config.vocab_size, (2, 24)) for _ in range(3)]
    ids = np.random.RandomState(9).randint(0, config.vocab_size, (2, 12))  # < 32 rows: kernels stay eager
    results = {}
    for concat in (False, True):
        export_mindformers(source, str(root / f"model_concat{concat}"), qkv_concat=concat)
    for scheme, concat in CASES:
        kwargs = SCHEMES[scheme]
        golden = LlamaForCausalLM.from_arrays(config, arrays)
        ptq = PTQ(PTQConfig(**kwargs), structure=_NormOnlyStructure() if concat else None)
        ptq.apply(golden, None, calibration)
        ptq.convert(golden)
        helper = MFLlamaHelper(str(root / f"model_concat{concat}" / "run_llama.yaml"))
        network = helper.create_network()
        mf_ptq = PTQ(PTQConfig(**kwargs))
        register_mindformers(mf_ptq.registry)
        mf_ptq.apply(network, helper, calibration)
        mf_ptq.convert(network)
        folder = str(root / f"q_{scheme}_{concat}")
        save_quantized(network, mf_ptq, folder)
        golden_folder = str(root / f"golden_{scheme}_{concat}")
        save_quantized(golden, ptq, golden_folder)
        results[(scheme, concat)] = dict(
            golden=golden(ids).asnumpy(), mf=helper.logits(network, ids), folder=folder, ptq=mf_ptq, network=network,
            golden_tokens=golden.generate(ids[:1, :PROMPT], max_new_tokens=NEW_TOKENS)[0],
            yaml=str(root / f"model_concat{concat}" / "run_llama.yaml"), golden_folder=golden_folder, config=config)
    return ids, results, root


@pytest.mark.parametrize("scheme, concat", CASES)
def test_mindformers_network_quantized_in_place_matches_golden_ptq(quantized_pairs, scheme, concat):
    ids, results, _ = quantized_pairs
    case = results[(scheme, concat)]
    assert _rel(case["mf"], case["golden"]) < 1e-4
    if concat:  # the quantized w_qkv / w_gate_hidden checkpoint reloads into MindFormers' DEPLOY network
        helper = MFLlamaHelper(case["yaml"])
        network, _ = helper.load_quantized(case["folder"])
        np.testing.assert_array_equal(helper.logits(network, ids), case["mf"])
    quantized = [r for r in case["ptq"].records if not r.spec.skip_reason]
    if scheme == "c8":
        assert [r.layer_type for r in quantized] == ["KVCache"] * 2
    else:
        # lm_head + per layer wq/wk/wv/wo/w1/w2/w3 (or w_qkv/wo/w_gate_hidden/w2)
        linears = 1 + 2 * (4 if concat else 7)
        assert sum(r.layer_type == "Linear" for r in quantized) == linears
        assert isinstance(case["network"].model.layers[0].feed_forward.w2, MFQuantLinear)
        dtype = case["network"].model.layers[0].attention.wo.weight.dtype
        assert dtype == ms.int8


def test_deploy_in_a_new_process_reproduces_logits_and_greedy_tokens(quantized_pairs):
    ids, results, root = quantized_pairs
    script = root / "deploy.py"
    script.write_text(
        "import json, sys\n"
        "import numpy as np\n"
        "from golden_ptq.mindformers.helper import MFLlamaHelper\n"
        "jobs, ids = json.loads(sys.argv[1]), np.asarray(json.loads(sys.argv[2]))\n"
        "out = {}\n"
        "for key, (yaml_path, folder) in jobs.items():\n"
        "    helper = MFLlamaHelper(yaml_path)\n"
        "    network, _ = helper.load_quantized(folder)\n"
        f"    tokens = helper.generate_ids(network, ids[:1, :{PROMPT}], {NEW_TOKENS})[0]\n"
        "    np.save(folder + '/logits.npy', helper.logits(network, ids))\n"
        "    out[key] = tokens.tolist()\n"
        "print('TOKENS' + json.dumps(out))\n")
    deploy_cases = {key: case for key, case in results.items() if not key[1]}  # qkv_concat: in process (cost)
    jobs = {f"{s}|{c}": (case["yaml"], case["folder"]) for (s, c), case in deploy_cases.items()}
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd()] + sys.path))
    done = subprocess.run([sys.executable, str(script), json.dumps(jobs), json.dumps(ids.tolist())], env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(line for line in done.stdout.splitlines() if line.startswith("TOKENS"))
    tokens = json.loads(line[len("TOKENS"):])
    for (scheme, concat), case in deploy_cases.items():
        deployed = np.load(os.path.join(case["folder"], "logits.npy"))
        assert _rel(deployed, case["golden"]) < 1e-4, (scheme, concat)
        np.testing.assert_array_equal(deployed, case["mf"])
        assert tokens[f"{scheme}|{concat}"] == case["golden_tokens"].tolist(), (scheme, concat)
        assert len(tokens[f"{scheme}|{concat}"]) == PROMPT + NEW_TOKENS


@pytest.mark.parametrize("scheme, concat", CASES)
def test_quantized_checkpoints_cross_between_the_two_families(quantized_pairs, scheme, concat):
    """MindFormers' quantized checkpoint loads into golden_ptq's DEPLOY network, and golden_ptq's into MindFormers'."""
    from golden_ptq.config import PTQConfig as Config, PTQMode
    from golden_ptq.deploy import CONFIG_FILE, find_checkpoint
    from golden_ptq.mindformers import load_mf_checkpoint
    ids, results, _ = quantized_pairs
    case = results[(scheme, concat)]
    golden = LlamaForCausalLM(case["config"], seed=3)
    ptq = PTQ(dataclasses.replace(Config.load(os.path.join(case["folder"], CONFIG_FILE)), mode=PTQMode.DEPLOY))
    ptq.apply(golden)
    ptq.convert(golden)
    load_mf_checkpoint(find_checkpoint(case["folder"]), golden, qkv_concat=concat)
    assert _rel(golden(ids).asnumpy(), case["golden"]) < 1e-4
    if not concat:  # golden_ptq writes its own names; MindFormers' concatenated layers need save_mf_checkpoint
        helper = MFLlamaHelper(case["yaml"])
        network, _ = helper.load_quantized(case["golden_folder"])
        np.testing.assert_allclose(helper.logits(network, ids), case["golden"], rtol=0,
                                   atol=1e-5 * np.abs(case["golden"]).max())


def test_float_mindformers_network_equals_golden_ptq_network(quantized_pairs):
    ids, results, root = quantized_pairs
    from golden_ptq.mindformers import load_mindformers
    for concat in (False, True):
        yaml_path = str(root / f"model_concat{concat}" / "run_llama.yaml")
        helper = MFLlamaHelper(yaml_path)
        network = helper.create_network()
        golden = load_mindformers(yaml_path)
        np.testing.assert_allclose(helper.logits(network, ids), golden(ids).asnumpy(), atol=1e-5, rtol=0)
        expected = golden.generate(ids[:1, :PROMPT], max_new_tokens=4)[0].tolist()
        assert helper.generate_ids(network, ids[:1, :PROMPT], 4)[0].tolist() == expected
        own = network.generate(ids[:1, :PROMPT].tolist(), max_new_tokens=4, do_sample=False,
                               eos_token_id=[-1])  # MindFormers' own generate; this toy vocabulary has no EOS
        assert np.asarray(own[0]).tolist() == expected


def test_helper_refuses_what_it_cannot_do(quantized_pairs, tmp_path):
    ids, results, root = quantized_pairs
    helper = MFLlamaHelper(str(root / "model_concatFalse" / "run_llama.yaml"))
    with pytest.raises(KeyError, match="unknown spec 'nope'"):
        helper.get_spec("nope")
    assert helper.get_spec("vocab_size") == 97
    with pytest.raises(ValueError, match="processor.tokenizer needs tokenizer_file"):
        helper.create_tokenizer()
    network = helper.create_network()
    padded = np.ones((1, 5), np.int64)
    with pytest.raises(ValueError, match="rows must be unpadded"):
        from golden_ptq.mindformers.helper import _CachedDecoder
        _CachedDecoder(helper, network).prefill(padded, np.array([[0, 1, 1, 1, 1]]))


def test_sentencepiece_tokenizer_named_by_the_run_yaml(quantized_pairs, tmp_path):
    import io
    import sentencepiece
    import yaml
    from golden_ptq.eval.corpus import corpus_text
    _, _, root = quantized_pairs
    lines = corpus_text()[:100000].splitlines()
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=model, vocab_size=300,
                                             model_type="bpe", unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
                                             minloglevel=2)
    (tmp_path / "tokenizer.model").write_bytes(model.getvalue())
    with open(root / "model_concatFalse" / "run_llama.yaml", encoding="utf-8") as handle:
        data = yaml.safe_load(handle)
    data["load_checkpoint"] = str(root / "model_concatFalse" / "model.ckpt")
    data["processor"] = {"tokenizer": {"type": "LlamaTokenizer", "vocab_file": "tokenizer.model"}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(data))
    tokenizer = MFLlamaHelper(str(tmp_path / "run.yaml")).create_tokenizer()
    text = "Call me Ishmael. Some years ago"
    ids = tokenizer.encode(text)
    assert 1 < len(ids) < len(text) and max(ids) < 300
    assert tokenizer.decode(ids) == text
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.add_bos_token) == (1, 2, True)
    assert tokenizer.decode([1] + ids + [2]) == text


TUNING = {
    "m2_search": dict(act_quant_dtype=I8, anti_method="m2"),
    "m3_awq_w4_g32": dict(anti_method="m3", weight_bits=4, group_size=32,
                          weight_quant_granularity=QuantGranularity.PER_GROUP),
    "rollback_L2": dict(act_quant_dtype=I8, disable_level="L2"),
}


@pytest.mark.parametrize("name", sorted(TUNING))
def test_msmodelslim_tuning_on_the_mindformers_network(quantized_pairs, name):
    """The msModelSlim methods run through the same registry and structure: same result as golden_ptq's."""
    ids, results, root = quantized_pairs
    config = results[("a16w8", False)]["config"]
    yaml_path = str(root / "model_concatFalse" / "run_llama.yaml")
    from golden_ptq.mindformers import load_mindformers
    rng = np.random.RandomState(0)
    calibration = [rng.randint(0, config.vocab_size, (2, 24)) for _ in range(3)]
    golden = load_mindformers(yaml_path)
    ptq = PTQ(PTQConfig(**TUNING[name]))
    ptq.apply(golden, None, calibration)
    ptq.convert(golden)
    helper = MFLlamaHelper(yaml_path)
    network = helper.create_network()
    mf_ptq = PTQ(PTQConfig(**TUNING[name]))
    register_mindformers(mf_ptq.registry)
    mf_ptq.apply(network, helper, calibration)
    mf_ptq.convert(network)
    assert mf_ptq.rolled_back == ptq.rolled_back and len(ptq.rolled_back) == (2 if name == "rollback_L2" else 0)
    assert _rel(helper.logits(network, ids), golden(ids).asnumpy()) < 1e-4


@pytest.mark.parametrize("scheme", ["float", "c8", "a8w8_smooth"])
def test_incremental_decoding_equals_the_full_forward(quantized_pairs, scheme):
    """golden_ptq's KV cache stand-in gives MindFormers' network incremental decoding on CPU; with C8 it stores int8."""
    from golden_ptq.mindformers.helper import _CachedDecoder
    ids, results, root = quantized_pairs
    if scheme == "float":
        helper = MFLlamaHelper(str(root / "model_concatFalse" / "run_llama.yaml"))
        network = helper.create_network()
    else:
        helper, network = MFLlamaHelper(results[(scheme, False)]["yaml"]), results[(scheme, False)]["network"]
    full = helper.logits(network, ids)
    decoder = _CachedDecoder(helper, network)
    steps = [decoder.prefill(ids[:, :6]).asnumpy()]
    cache = network.model.layers[1].attention.kv_cache
    assert cache.cached_length() == 6
    stored = cache._history["key"].dtype  # pylint: disable=protected-access
    assert stored == (ms.int8 if scheme == "c8" else ms.float32)
    steps += [decoder.decode_step(ids[:, t]).asnumpy() for t in range(6, ids.shape[1])]
    np.testing.assert_allclose(np.stack(steps, axis=1), full[:, 5:], rtol=0, atol=1e-5 * np.abs(full).max())
    decoder.reset_cache()
    assert cache.cached_length() == 0
    np.testing.assert_array_equal(helper.logits(network, ids), full)   # the full forward is untouched


@pytest.mark.parametrize("concat", [False, True])
def test_qkv_bias_and_tied_embeddings(tmp_path, concat):
    """Qwen2-shaped attention (q/k/v biases, split from w_qkv's bias with qkv_concat) and a tied lm_head."""
    from golden_ptq.mindformers import load_mindformers
    from golden_ptq.config.model_config import LlamaConfig
    config = LlamaConfig(vocab_size=97, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                         intermediate_size=96, max_position_embeddings=128, qkv_bias=True, tie_word_embeddings=True)
    source = LlamaForCausalLM(config, seed=0)
    export_mindformers(source, str(tmp_path), qkv_concat=concat)
    yaml_path = str(tmp_path / "run_llama.yaml")
    helper = MFLlamaHelper(yaml_path)
    network = helper.create_network()
    ids = np.random.RandomState(9).randint(0, config.vocab_size, (2, 12))
    np.testing.assert_allclose(helper.logits(network, ids), source(ids).asnumpy(), atol=1e-5, rtol=0)
    kwargs = dict(act_quant_dtype=I8, kvcache_quant_dtype=I8, outliers_suppression=OutliersSuppressionType.SMOOTH)
    rng = np.random.RandomState(0)
    calibration = [rng.randint(0, config.vocab_size, (2, 24)) for _ in range(3)]
    golden = load_mindformers(yaml_path)
    ptq = PTQ(PTQConfig(**kwargs), structure=_NormOnlyStructure() if concat else None)
    ptq.apply(golden, None, calibration)
    ptq.convert(golden)
    mf_ptq = PTQ(PTQConfig(**kwargs))
    register_mindformers(mf_ptq.registry)
    mf_ptq.apply(network, helper, calibration)
    mf_ptq.convert(network)
    assert network.model.layers[0].attention.wo.weight.dtype == ms.int8
    assert _rel(helper.logits(network, ids), golden(ids).asnumpy()) < 1e-4
