"""``algo_args['calibration_inputs']``: each decoder layer calibrated on the outputs of the quantized
layers before it (``quantized``, the default: a float pass to observe, a quantized pass to feed the
next layer) or on the float network's own activations (``float``: one pass per layer)."""
import mindspore as ms
import numpy as np
import pytest

from golden_ptq import PTQ, PTQConfig
from golden_ptq.config.validation import ConfigError
from golden_ptq.networks.llama import LlamaForCausalLM
from golden_ptq.networks.structure import LlamaStructure

I8 = ms.int8


def float_wq_input_ranges(config, ids):
    """Per-channel min/max of every layer's ``wq`` input in the float network (the reference)."""
    net = LlamaForCausalLM(config, seed=0)
    hidden, inputs = LlamaStructure().layer_inputs(net, ids)
    ranges = []
    for layer in net.model.layers:
        x = layer.attention_norm(hidden).asnumpy().reshape(-1, config.hidden_size)
        ranges.append((x.min(axis=0), x.max(axis=0)))
        hidden = layer(hidden, inputs)
    return ranges


def calibrated(config, ids, inputs_mode, **kwargs):
    net = LlamaForCausalLM(config, seed=0)
    ptq = PTQ(PTQConfig(act_quant_dtype=I8, algo_args={"calibration_inputs": inputs_mode}, **kwargs))
    ptq.apply(net, None, [ids])
    return net, ptq


def test_float_inputs_observe_the_float_network_and_quantized_inputs_do_not(tiny_config):
    ids = np.random.RandomState(3).randint(0, tiny_config.vocab_size, (2, 24))
    reference = float_wq_input_ranges(tiny_config, ids)
    for mode in ("float", "quantized"):
        net, _ = calibrated(tiny_config, ids, mode)
        for index, layer in enumerate(net.model.layers):
            observer = layer.attention.wq.input_observer
            same = (np.allclose(observer.minimum, reference[index][0], rtol=1e-5, atol=1e-6)
                    and np.allclose(observer.maximum, reference[index][1], rtol=1e-5, atol=1e-6))
            # the first layer's input is the embedding either way; later ones differ by the
            # quantization error of the layers before them unless the inputs are float
            assert same == (mode == "float" or index == 0), (mode, index)


def test_float_inputs_run_each_layer_once_per_batch(tiny_config, monkeypatch):
    ids = np.random.RandomState(3).randint(0, tiny_config.vocab_size, (2, 24))
    calls = {"n": 0}
    original = LlamaStructure.run_layer

    def counting(self, layer, hidden, inputs):
        calls["n"] += 1
        return original(self, layer, hidden, inputs)

    monkeypatch.setattr(LlamaStructure, "run_layer", counting)
    runs = {}
    for mode in ("float", "quantized"):
        calls["n"] = 0
        calibrated(tiny_config, ids, mode)
        runs[mode] = calls["n"]
    assert runs == {"float": tiny_config.num_layers, "quantized": 2 * tiny_config.num_layers}


def test_float_inputs_measure_sensitivity_after_smoothing_and_cost_little_accuracy(tiny_config):
    ids = np.random.RandomState(3).randint(0, tiny_config.vocab_size, (2, 24))
    test_ids = np.random.RandomState(9).randint(0, tiny_config.vocab_size, (2, 20))
    reference = LlamaForCausalLM(tiny_config, seed=0)(test_ids).asnumpy()
    errors, sensitivity = {}, {}
    for mode in ("float", "quantized"):
        net = LlamaForCausalLM(tiny_config, seed=0)
        ptq = PTQ(PTQConfig(act_quant_dtype=I8, anti_method="m2", algo_args={"calibration_inputs": mode}),
                  measure_sensitivity=True)
        ptq.apply(net, None, [ids])
        ptq.convert(net)
        errors[mode] = np.abs(net(test_ids).asnumpy() - reference).max() / np.abs(reference).max()
        sensitivity[mode] = ptq.output_errors
    linears = [n for n, c in net.cells_and_names() if n.endswith(("wq", "wk", "wv", "wo", "w1", "w2", "w3"))]
    assert sorted(sensitivity["float"]) == sorted(linears + ["lm_head"])
    # measured on each layer's inputs after m2's rescale (the rows observed before it would give ~0.3)
    assert all(0 < e < 0.01 for e in sensitivity["float"].values()), sensitivity["float"]
    # random weights: smoothing itself costs accuracy here; the float inputs cost little more
    assert 0 < errors["float"] < 1.5 * errors["quantized"], errors


def test_calibration_inputs_names_what_is_allowed():
    with pytest.raises(ConfigError, match=r"calibration_inputs.*'floats'.*quantized.*float"):
        PTQConfig(algo_args={"calibration_inputs": "floats"})
