"""Tensor-parallel sharding in one process: layouts, sharded init and loading, split/merge, refusals.

Rank networks are built with an explicit ``TPContext(size, rank)``; nothing here communicates
(the msrun tests in test_tp_msrun.py run the collectives).
"""
import json

import mindspore as ms
import numpy as np
import pytest

from golden_ptq import PTQ, OutliersSuppressionType, PTQConfig, PTQMode
from golden_ptq.io.checkpoint import load_full_checkpoint, read_checkpoint, save_checkpoint
from golden_ptq.deploy import save_quantized
from golden_ptq.networks.llama import LlamaForCausalLM
from golden_ptq.networks.loaders import load_gguf, load_hf
from golden_ptq.parallel import TPContext
from golden_ptq.parallel.sharding import merge_states, rule_for, split_state
from golden_ptq.tools import tp_checkpoint
from test_loaders import random_weights, write_gguf, write_hf_dir, write_tokenizer

I8 = ms.int8


def state(net):
    return {name: param.asnumpy() for name, param in net.parameters_and_names()}


def rank_nets(config, size, **kwargs):
    return [LlamaForCausalLM(config, tp=TPContext(size, rank), **kwargs) for rank in range(size)]


@pytest.mark.parametrize("kv_heads", [2, 1])
def test_sharded_random_init_merges_to_tp1(tiny_config, kv_heads):
    tiny_config.num_kv_heads = kv_heads
    full = state(LlamaForCausalLM(tiny_config, seed=3))
    ranks = rank_nets(tiny_config, 2, seed=3)
    kv_split = kv_heads % 2 == 0
    assert ranks[0].tp_layout.kv_split is kv_split
    wk = ranks[1].model.layers[0].attention.wk.weight.shape
    assert tuple(wk) == ((kv_heads * 16 // 2, 64) if kv_split else (kv_heads * 16, 64))
    assert tuple(ranks[1].model.layers[0].feed_forward.w2.weight.shape) == (64, 48)
    merged = merge_states([state(n) for n in ranks], kv_split)
    assert set(merged) == set(full)
    for name in full:
        np.testing.assert_array_equal(merged[name], full[name], err_msg=name)


def test_uneven_heads_are_dealt_and_merge_to_tp1(tiny_config):
    """4 query heads on 3 ranks: 2 + 1 + 1 (SmolLM2's 9 heads on 2 ranks go 5 + 4); KV heads replicated."""
    full = state(LlamaForCausalLM(tiny_config, seed=5))
    ranks = rank_nets(tiny_config, 3, seed=5)
    assert [n.tp_layout.local_heads for n in ranks] == [2, 1, 1] and not ranks[0].tp_layout.kv_split
    assert tuple(ranks[2].model.layers[0].attention.wo.weight.shape) == (64, 16)
    assert ranks[1].tp_layout.kv_index().tolist() == [1]
    merged = merge_states([state(n) for n in ranks], False)
    for name in full:
        np.testing.assert_array_equal(merged[name], full[name], err_msg=name)


def test_indivisible_sizes_are_rejected_with_what_fits(tiny_config):
    tiny_config.intermediate_size = 100
    with pytest.raises(ValueError, match=r"intermediate_size \(100\) is not divisible by it; TP sizes up to 16 that "
                                         r"fit: \[1, 2, 4, 5, 10\]"):
        LlamaForCausalLM(tiny_config, tp=TPContext(3, 0))
    with pytest.raises(ValueError, match="more ranks than LlamaConfig.num_heads"):
        LlamaForCausalLM(tiny_config, tp=TPContext(5, 0))


def test_replicated_kv_heads_read_the_right_kv_head(tiny_config):
    tiny_config.num_kv_heads = 1
    net = LlamaForCausalLM(tiny_config, tp=TPContext(2, 1))
    assert net.tp_layout.kv_index().tolist() == [0, 0]
    tiny_config.num_heads, tiny_config.num_kv_heads, tiny_config.hidden_size = 6, 3, 96
    layout = LlamaForCausalLM(tiny_config, tp=TPContext(2, 1)).tp_layout
    assert not layout.kv_split and layout.kv_index().tolist() == [1, 2, 2]


def test_hf_and_gguf_load_each_rank_its_slice(tmp_path, tiny_config):
    source, weights = random_weights(tiny_config, seed=8)
    write_hf_dir(tmp_path, tiny_config, weights)
    hf_ranks = [load_hf(str(tmp_path), tiny_config, tp=TPContext(2, r)) for r in range(2)]
    hf_tok = write_tokenizer(tmp_path)
    tokens = [t for t, _ in sorted(hf_tok.get_vocab().items(), key=lambda kv: kv[1])]
    merges = [m if isinstance(m, str) else " ".join(m) for m in json.loads(hf_tok.to_str())["model"]["merges"]]
    tiny_config.vocab_size = len(tokens)
    _, weights = random_weights(tiny_config, seed=9)
    write_gguf(tmp_path / "m.gguf", tiny_config, weights, tokens, merges)
    gguf_ranks = [load_gguf(str(tmp_path / "m.gguf"), tp=TPContext(2, r))[0] for r in range(2)]
    for ranks, expected in ((hf_ranks, state(source)), (gguf_ranks, weights)):
        merged = merge_states([state(n) for n in ranks], True)
        for name, array in expected.items():
            np.testing.assert_array_equal(merged[name], array, err_msg=name)
    wq = hf_ranks[1].model.layers[0].attention.wq.weight.asnumpy()
    np.testing.assert_array_equal(wq, state(source)["model.layers.0.attention.wq.weight"][32:])


def quantized_tp1(config, **kwargs):
    net = LlamaForCausalLM(config, seed=0)
    ptq = PTQ(PTQConfig(**kwargs))
    rng = np.random.RandomState(0)
    ptq.apply(net, None, [rng.randint(0, config.vocab_size, (2, 16)) for _ in range(2)])
    ptq.convert(net)
    return net, ptq


@pytest.mark.parametrize("kv_scheme", ["static", "token_values"])
def test_split_then_merge_reproduces_a_quantized_checkpoint(tmp_path, tiny_config, kv_scheme):
    kwargs = dict(act_quant_dtype=I8, kvcache_quant_dtype=I8, outliers_suppression=OutliersSuppressionType.SMOOTH,
                  algo_args={"kvcache_scheme": kv_scheme})
    net, ptq = quantized_tp1(tiny_config, **kwargs)
    full = state(net)
    assert rule_for("model.layers.0.attention.wo.quant_bias", 1, True)[0] == "partial"
    parts = [split_state(full, net.tp_layout.with_rank(TPContext(2, r))) for r in range(2)]
    wo = "model.layers.0.attention.wo"
    assert parts[0][f"{wo}.weight"].shape == (64, 32) and parts[0][f"{wo}.deq_scale"].shape == (64,)
    assert not np.array_equal(parts[0][f"{wo}.quant_bias"], full[f"{wo}.quant_bias"])  # a partial sum
    merged = merge_states(parts, True)
    for name in full:
        np.testing.assert_array_equal(merged[name], full[name], err_msg=name)
    # the same through the command-line tool and the folders save_quantized writes
    save_quantized(net, ptq, str(tmp_path / "full"))
    assert tp_checkpoint.main(["split", str(tmp_path / "full"), str(tmp_path / "tp2"), "--tp-size", "2",
                               "--num-heads", "4", "--num-kv-heads", "2"]) == 0
    assert tp_checkpoint.main(["merge", str(tmp_path / "tp2"), str(tmp_path / "merged")]) == 0
    again = read_checkpoint(str(tmp_path / "merged" / "model.safetensors"))
    for name in full:
        np.testing.assert_array_equal(again[name], full[name], err_msg=name)
    assert (tmp_path / "merged" / "ptq_config.yaml").exists() and (tmp_path / "tp2" / "rank_1" / "tp_layout.json").exists()
    # a rank's DEPLOY structure accepts the full checkpoint, sliced
    deployed = LlamaForCausalLM(tiny_config, tp=TPContext(2, 1))
    dptq = PTQ(PTQConfig(mode=PTQMode.DEPLOY, **kwargs))
    dptq.apply(deployed)
    dptq.convert(deployed)
    load_full_checkpoint(str(tmp_path / "full" / "model.safetensors"), deployed)
    np.testing.assert_array_equal(deployed.model.layers[0].attention.wo.weight.asnumpy(), full[f"{wo}.weight"][:, 32:])


def test_merge_refuses_ranks_that_disagree_on_a_replicated_parameter(tiny_config):
    parts = [state(n) for n in rank_nets(tiny_config, 2, seed=1)]
    parts[1]["model.norm_out.weight"] = parts[1]["model.norm_out.weight"] + 1
    with pytest.raises(ValueError, match=r"replicated parameter 'model.norm_out.weight' differs between rank 0 "
                                         r"and rank 1"):
        merge_states(parts, True)


@pytest.mark.parametrize("kwargs, what", [
    (dict(anti_method="m3"), r"method m3 \(awq\) \(its scale normalisation"),
    (dict(act_quant_dtype=I8, anti_method="m4"), r"method m4 \(os_plus\)"),
    (dict(precision_recovery="GPTQ"), r"method gptq \(a row-parallel layer's Hessian"),
    (dict(weight_bits=4), "weight_bits 4"),
    (dict(weight_quant_granularity="PER_GROUP", group_size=20), r"group_size 20 with row-parallel shards of \[32, 48\]"),
])
def test_untested_combinations_under_tp_raise_not_implemented(tiny_config, kwargs, what):
    net = LlamaForCausalLM(tiny_config, seed=0, tp=TPContext(2, 0))
    with pytest.raises(NotImplementedError, match=f"tensor parallel size 2 does not support: {what}"):
        PTQ(PTQConfig(**kwargs)).apply(net, None, [np.arange(8)])


def test_float_checkpoint_source_loads_sharded(tmp_path, tiny_config):
    from golden_ptq.networks.helper import NetworkHelper
    net = LlamaForCausalLM(tiny_config, seed=4)
    save_checkpoint(net, str(tmp_path / "float.ckpt"))
    helper = NetworkHelper({"model": {"source": "ckpt", "path": str(tmp_path / "float.ckpt"),
                                      "config": tiny_config.to_dict()}})
    loaded = helper.create_network()
    np.testing.assert_array_equal(state(loaded)["model.layers.1.feed_forward.w2.weight"],
                                  state(net)["model.layers.1.feed_forward.w2.weight"])


def test_shard_property_answers_is_this_layer_sharded():
    from golden_ptq.networks.layers import Linear
    from golden_ptq.parallel.context import TPContext
    from golden_ptq.quant_cells import QuantLinear
    from golden_ptq.quant_cells.spec import LayerQuantSpec
    two = TPContext(size=2, rank=1)
    assert Linear(8, 8, parallel="row", tp=two).shard == "row"
    assert Linear(8, 8, parallel="column", tp=two).shard == "column"
    assert Linear(8, 8, parallel="row", tp=TPContext()).shard is None   # one rank: nothing is split
    assert Linear(8, 8).shard is None
    assert QuantLinear(Linear(8, 8, parallel="column", tp=two), LayerQuantSpec()).shard == "column"
    assert QuantLinear(Linear(8, 8, parallel="row", tp=TPContext()), LayerQuantSpec()).shard is None


def test_deploy_under_tp_refuses_only_structural_methods(tiny_config):
    """GPTQ / m2 / AWQ run while calibrating and leave ordinary quantized weights, which every rank
    slices: DEPLOY of such a folder under TP is fine. Rotation changes the network itself: refused."""
    from golden_ptq.config import PTQMode
    calibrated = PTQConfig(mode=PTQMode.DEPLOY, act_quant_dtype=ms.int8, act_quant_granularity="PER_TOKEN",
                           anti_method="m2", precision_recovery="GPTQ", opname_blacklist=["lm_head"])
    PTQ(calibrated).apply(LlamaForCausalLM(tiny_config, tp=TPContext(2, 0)))
    rotated = PTQConfig(mode=PTQMode.DEPLOY, act_quant_dtype=ms.int8, act_quant_granularity="PER_TOKEN",
                        rotation="hadamard")
    with pytest.raises(NotImplementedError, match="hadamard"):
        PTQ(rotated).apply(LlamaForCausalLM(tiny_config, tp=TPContext(2, 0)))
    quantize = PTQConfig(act_quant_dtype=ms.int8, precision_recovery="GPTQ")
    with pytest.raises(NotImplementedError, match="method gptq"):
        PTQ(quantize).apply(LlamaForCausalLM(tiny_config, tp=TPContext(2, 0)), None, [np.zeros((1, 8), np.int64)])
