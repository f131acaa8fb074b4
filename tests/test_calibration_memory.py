"""Calibration state stays per layer: recorders are detached, recorded rows are copies, the head's
[tokens, vocab] outputs are never computed while calibrating, measured float cells are let go."""
import mindspore as ms
import numpy as np
import pytest

from golden_ptq import PTQ, PTQConfig
from golden_ptq.algorithm import driver as driver_module
from golden_ptq.algorithm.swap import cell_at
from golden_ptq.algorithm.modules import AlgoModule, InputRecorder
from golden_ptq.algorithm.modules.base import feed_linear_input
from golden_ptq.networks.llama import LlamaForCausalLM
from golden_ptq.quant_cells import QuantLinear

I8 = ms.int8
CONFIGS = {
    "m1": dict(act_quant_dtype=I8, anti_method="m1"),
    "m2_act3": dict(act_quant_dtype=I8, anti_method="m2", act_method=3),
    "m4": dict(act_quant_dtype=I8, anti_method="m4"),
    "m3": dict(anti_method="m3"),
    "gptq": dict(act_quant_dtype=I8, precision_recovery="GPTQ"),
}


def calibration(config, n=3, length=24):
    rng = np.random.RandomState(0)
    return [rng.randint(0, config.vocab_size, (2, length)) for _ in range(n)]


def parameters(net):
    return {name: p.asnumpy().copy() for name, p in net.parameters_and_names()}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_no_recorder_stays_attached(tiny_config, name):
    """A recorder left on a cell pinned every batch it saw (~ all Linear inputs of the model)."""
    net = LlamaForCausalLM(tiny_config, seed=0)
    ptq = PTQ(PTQConfig(**CONFIGS[name]), measure_sensitivity=True)
    ptq.apply(net, None, calibration(tiny_config))
    held = [n for n, c in net.cells_and_names() if isinstance(c, QuantLinear) and c.recorder is not None]
    assert held == []


def test_recorder_keeps_copies_not_views_of_the_batch():
    batch = np.arange(40 * 6, dtype=np.float32).reshape(40, 6)
    recorder = InputRecorder(stride=3, max_rows=5)
    recorder(batch)
    recorder(batch + 1)
    assert not any(np.shares_memory(part, batch) for part in recorder.parts)
    np.testing.assert_array_equal(recorder.rows(), batch[::3][:5])


def test_head_output_is_never_computed_while_calibrating(tiny_config, monkeypatch):
    vocab = tiny_config.vocab_size
    calls = []
    construct = QuantLinear.construct

    def counting(self, x):
        if self.out_features == vocab:
            calls.append(x.shape)
        return construct(self, x)

    monkeypatch.setattr(QuantLinear, "construct", counting)
    net = LlamaForCausalLM(tiny_config, seed=0)
    ptq = PTQ(PTQConfig(act_quant_dtype=I8, act_method=3, precision_recovery="GPTQ"))
    ptq.apply(net, None, calibration(tiny_config))
    assert isinstance(net.lm_head, QuantLinear) and net.lm_head.quantized
    assert calls == []


@pytest.mark.parametrize("name", ["m1", "m2_act3", "gptq"])
def test_head_fed_without_matmul_gives_the_same_model(tiny_config, monkeypatch, name):
    """The old route (the head's full forward pass) and the feed-only route deploy identical bits."""
    net = LlamaForCausalLM(tiny_config, seed=0)
    PTQ(PTQConfig(**CONFIGS[name])).apply(net, None, calibration(tiny_config))
    fed = parameters(net)
    monkeypatch.setattr(driver_module, "feed_linear_input", lambda cell, x: cell(x))
    net = LlamaForCausalLM(tiny_config, seed=0)
    PTQ(PTQConfig(**CONFIGS[name])).apply(net, None, calibration(tiny_config))
    forward = parameters(net)
    assert sorted(fed) == sorted(forward)
    for key, value in fed.items():
        np.testing.assert_array_equal(value, forward[key], err_msg=key)


def test_feed_linear_input_matches_the_observing_forward(tiny_config):
    net = LlamaForCausalLM(tiny_config, seed=0)
    ptq = PTQ(PTQConfig(act_quant_dtype=I8))
    ptq._swap_in_quant_cells(net)  # pylint: disable=protected-access
    head = net.lm_head
    x = ms.Tensor(np.random.RandomState(3).randn(2, 5, tiny_config.hidden_size).astype(np.float32))
    head.observing = True
    head(x)
    lo, hi = head.input_observer.minimum.copy(), head.input_observer.maximum.copy()
    head.input_observer.reset()
    feed_linear_input(head, x)
    np.testing.assert_array_equal(head.input_observer.minimum, lo)
    np.testing.assert_array_equal(head.input_observer.maximum, hi)


def test_measured_float_cells_are_released_layer_by_layer(tiny_config):
    """measure_sensitivity alone (no rollback) holds a float cell only until its error is measured."""
    held = []

    class Probe(AlgoModule):
        name = "probe"

        def process(self, ctx):
            if ctx.layer is not None:
                held.append((ctx.name, sorted(n for n in ptq._float_cells if n.startswith("model.layers."))))

    tiny_config.num_layers = 3
    net = LlamaForCausalLM(tiny_config, seed=0)
    ptq = PTQ(PTQConfig(act_quant_dtype=I8), measure_sensitivity=True)
    ptq.pipeline.insert(0, Probe())
    ptq.apply(net, None, calibration(tiny_config))
    for lname, names in held:
        earlier = [n for n in names if int(n.split(".")[2]) < int(lname.split(".")[2])]
        assert earlier == [], (lname, earlier)
    assert len(ptq.output_errors) == 3 * 7 + 1   # every Linear still measured (7 a layer, and lm_head)


def test_rollback_still_has_every_float_cell(tiny_config):
    net = LlamaForCausalLM(tiny_config, seed=0)
    ptq = PTQ(PTQConfig(act_quant_dtype=I8, disable_level="L2", rollback_signal="output_error"))
    ptq.apply(net, None, calibration(tiny_config))
    assert len(ptq.rolled_back) == 2
    assert all(not isinstance(cell_at(net, n), QuantLinear) for n in ptq.rolled_back)
