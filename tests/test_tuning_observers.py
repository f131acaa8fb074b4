"""act_method observers (min-max, histogram, hybrid) and range_parm, alone and inside PTQ."""
import logging

import mindspore as ms
import numpy as np
import pytest

from golden_ptq import PTQ, PTQConfig
from golden_ptq.quant_math import (HistogramObserver, HybridObserver, MinMaxObserver, fake_quantize_act,
                                   make_act_observer, range_parm)
from test_ptq_toy import calibration, planted_outlier_network

I8 = ms.int8


def heavy_tailed(seed=0):
    """Student-t (2 degrees of freedom) values: a long tail that min-max spends the grid on."""
    return np.random.RandomState(seed).standard_t(2, size=(4000, 8)).astype(np.float32)


def mse(x, lo, hi, symmetric=False):
    return float(((fake_quantize_act(x, lo, hi, symmetric) - x) ** 2).mean())


@pytest.mark.parametrize("symmetric", [False, True])
def test_histogram_picks_the_range_of_least_mse(symmetric):
    x = heavy_tailed()
    minmax, hist = MinMaxObserver(), HistogramObserver(symmetric=symmetric)
    for part in np.split(x, 4):  # the histogram widens as batches arrive
        minmax.update(part)
        hist.update(part)
    m_lo, m_hi = minmax.tensor_range()
    if symmetric:
        m_lo, m_hi = -max(-m_lo, m_hi), max(-m_lo, m_hi)
    h_lo, h_hi = hist.tensor_range()
    assert h_hi < m_hi and h_lo > m_lo
    assert mse(x, h_lo, h_hi, symmetric) < 0.95 * mse(x, m_lo, m_hi, symmetric)
    # near the best shrink of the min-max range found by brute force on the raw values
    brute = min(mse(x, c * m_lo, c * m_hi, symmetric) for c in np.linspace(0.05, 1.0, 96))
    assert mse(x, h_lo, h_hi, symmetric) < 1.02 * brute


def test_hybrid_is_the_midpoint_and_range_parm_definition():
    x = heavy_tailed()
    hybrid = HybridObserver()
    hybrid.update(x)
    (h_lo, h_hi), (m_lo, m_hi) = hybrid.histogram_range(), MinMaxObserver.tensor_range(hybrid)
    np.testing.assert_allclose(hybrid.tensor_range(), ((h_lo + m_lo) / 2, (h_hi + m_hi) / 2))
    obs = MinMaxObserver()
    obs.update(np.array([[1.0, -1.0, 0.5, 10.0], [-0.5, 1.0, -1.0, 2.0]], np.float32))
    assert range_parm(obs) == pytest.approx(10.0)  # max|x| 10 over the median channel max 1
    assert [make_act_observer(m).name for m in (1, 2, 3)] == ["minmax", "histogram", "hybrid"]
    with pytest.raises(ValueError, match=r"act_method 4 is not supported; allowed: \[1, 2, 3\]"):
        make_act_observer(4)


def test_histogram_goes_stale_after_a_channel_rescale():
    hist = HistogramObserver()
    hist.update(heavy_tailed())
    hist.scale_channels(np.full(8, 0.5))
    with pytest.raises(RuntimeError, match="observe the layer again"):
        hist.tensor_range()


@pytest.mark.parametrize("act_method, observer", [(1, "minmax"), (2, "histogram"), (3, "hybrid")])
def test_ptq_logs_range_parm_per_activation_quantizer(caplog, tiny_config, act_method, observer):
    net = planted_outlier_network(tiny_config)
    ptq = PTQ(PTQConfig(act_quant_dtype=I8, act_method=act_method, anti_method="m1"))
    with caplog.at_level(logging.INFO, logger="golden_ptq"):
        ptq.apply(net, None, calibration(tiny_config))
    lines = [r.getMessage() for r in caplog.records if r.name == "golden_ptq" and "range_parm" in r.getMessage()]
    assert len(lines) == 15  # 7 Linears x 2 layers + lm_head
    assert f"use {observer} observer:model.layers.0.attention.wq.quant_input, range_parm:" in lines[0]
    assert set(ptq.range_parms) == {line.split("observer:")[1].split(".quant_input")[0] for line in lines}
    assert all(value >= 1.0 for value in ptq.range_parms.values())
    cell = net.model.layers[0].attention.wq
    assert cell.input_observer.name == observer and not getattr(cell.input_observer, "stale", False)


def test_act_method_config_errors():
    with pytest.raises(ValueError, match=r"act_method: 5 not allowed; allowed: 1 \(min-max\)"):
        PTQConfig(act_quant_dtype=I8, act_method=5)
    with pytest.raises(ValueError, match="act_method=2 chooses the static activation range"):
        PTQConfig(act_method=2)
