"""Rollback: disable_names (exact), disable_level='Lx' by range_parm or output error, and DEPLOY of the result."""
import logging

import mindspore as ms
import numpy as np
import pytest

from golden_ptq import PTQ, PTQConfig, PTQMode
from golden_ptq.config import PTQConfig as Config
from golden_ptq.deploy import load_quantized, save_quantized
from golden_ptq.networks.layers import Linear
from golden_ptq.networks.llama import LlamaForCausalLM
from golden_ptq.quant_cells import QuantLinear
from test_ptq_toy import calibration, planted_outlier_network

I8 = ms.int8
IDS = np.random.RandomState(6).randint(0, 97, (2, 16))
LINEARS_PER_LAYER = 7


class ToyHelper:
    """What load_quantized needs from a NetworkHelper: a fresh float network (other weights)."""

    def __init__(self, config):
        self.config = config

    def create_network(self):
        return LlamaForCausalLM(self.config, seed=11)


def quantize(tiny_config, **kwargs):
    net = planted_outlier_network(tiny_config)
    ptq = PTQ(PTQConfig(act_quant_dtype=I8, **kwargs), measure_sensitivity=kwargs.pop("measure", False))
    ptq.apply(net, None, calibration(tiny_config))
    ptq.convert(net)
    return net, ptq


def test_disable_names_are_exact(tiny_config):
    net, ptq = quantize(tiny_config, disable_names=["model.layers.1.feed_forward.w2"], opname_blacklist=["lm_head"])
    assert isinstance(net.model.layers[1].feed_forward.w2, Linear)
    assert isinstance(net.model.layers[0].feed_forward.w2, QuantLinear)
    assert "FLOAT (disable_names)" in ptq.summary() and "FLOAT (opname_blacklist 'lm_head')" in ptq.summary()
    for bad in ("w2", "model.layers.9.feed_forward.w2"):
        with pytest.raises(ValueError, match=f"disable_names entry '{bad}' is not the exact name of a quantizable layer"):
            PTQ(PTQConfig(act_quant_dtype=I8, disable_names=[bad])).apply(
                LlamaForCausalLM(tiny_config, seed=0), None, calibration(tiny_config))


def test_disable_level_rolls_back_largest_range_parm_and_deploys(tmp_path, caplog, tiny_config):
    with caplog.at_level(logging.INFO, logger="golden_ptq"):
        net, ptq = quantize(tiny_config, disable_level="L3", anti_method="m1")
    ranked = sorted(ptq.range_parms, key=lambda n: (-ptq.range_parms[n], n))  # ties (wq/wk/wv) by name
    assert ptq.rolled_back == ranked[:3] and len(ptq.range_parms) == 2 * LINEARS_PER_LAYER + 1
    log = "\n".join(r.getMessage() for r in caplog.records)
    assert "disable_level=L3: rolled back 3 of 15 Linear layers by range_parm: " + ", ".join(ranked[:3]) in log
    cells = dict(net.cells_and_names())
    assert all(type(cells[name]) is Linear for name in ranked[:3])
    assert isinstance(cells[ranked[3]], QuantLinear)
    assert sum("disable_level L3" in r.became for r in ptq.records) == 3
    expected = net(IDS).asnumpy()
    save_quantized(net, ptq, str(tmp_path / "q"))
    saved = Config.load(str(tmp_path / "q" / "ptq_config.yaml"))
    assert saved.mode is PTQMode.DEPLOY and saved.disable_level == "L0" and saved.disable_names == ranked[:3]
    deployed, _ = load_quantized(str(tmp_path / "q"), ToyHelper(tiny_config))
    np.testing.assert_allclose(deployed(IDS).asnumpy(), expected, atol=1e-6, rtol=0)


def test_rollback_by_output_error_and_level_beyond_count(tiny_config):
    net, ptq = quantize(tiny_config, disable_level="L2", rollback_signal="output_error")
    errors = ptq.output_errors
    assert len(errors) == 2 * LINEARS_PER_LAYER + 1 and all(0 < e < 1 for e in errors.values())
    assert ptq.rolled_back == sorted(errors, key=lambda n: (-errors[n], n))[:2]
    net, ptq = quantize(tiny_config, disable_level="L1000", kvcache_quant_dtype=I8)
    assert len(ptq.rolled_back) == 2 * LINEARS_PER_LAYER + 1  # all of them, no error
    assert not any(isinstance(c, QuantLinear) for _, c in net.cells_and_names())
    assert np.isfinite(net(IDS).asnumpy()).all()


def test_rollback_reduces_error(tiny_config):
    reference = planted_outlier_network(tiny_config)(IDS).asnumpy()
    errors = {}
    for level in ("L0", "L3"):
        net, _ = quantize(tiny_config, disable_level=level)
        errors[level] = float(((net(IDS).asnumpy() - reference) ** 2).sum() / (reference ** 2).sum())
    assert errors["L3"] < 0.7 * errors["L0"], errors


@pytest.mark.parametrize("kwargs, message", [
    (dict(disable_level="3"), r"disable_level: '3' is not 'L<n>'"),
    (dict(disable_level="L2", mode=PTQMode.DEPLOY), "needs calibration data"),
    (dict(rollback_signal="mse"), r"rollback_signal: 'mse' is not allowed; allowed: \['range_parm', 'output_error'\]"),
    (dict(disable_names=[""]), "disable_names: entry '' .* must be non-empty strings"),
])
def test_rollback_config_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PTQConfig(act_quant_dtype=I8, **kwargs)
