"""The msModelSlim-compatible API: the guide's script flow on a toy network, and its errors."""
import logging
import os

import numpy as np
import pytest

from golden_ptq.deploy import load_quantized
from golden_ptq.msmodelslim import AntiOutlier, AntiOutlierConfig, Calibrator, QuantConfig
from golden_ptq.quant_cells import QuantKVCache, QuantLinear
from test_ptq_toy import planted_outlier_network
from test_tuning_rollback import ToyHelper


def guide_calib_data(config, n=4, length=20):
    """As the guide builds it: [input_ids [1, T], attention_mask [1, T]] per sample."""
    rng = np.random.RandomState(0)
    return [[rng.randint(0, config.vocab_size, (1, length)), np.ones((1, length), np.int64)] for _ in range(n)]


def test_guide_flow_w8a8_m2_kv_quant_rollback_and_save(tmp_path, caplog, tiny_config):
    model = planted_outlier_network(tiny_config)
    ids = np.random.RandomState(8).randint(0, tiny_config.vocab_size, (1, 16))
    data = guide_calib_data(tiny_config)
    anti_config = AntiOutlierConfig(anti_method="m2", dev_type="cpu")
    AntiOutlier(model, calib_data=data, cfg=anti_config).process()
    disable_names = ["model.layers.0.feed_forward.w2"]
    quant_config = QuantConfig(a_bit=8, w_bit=8, disable_names=disable_names, dev_type="cpu", act_method=3, pr=1.0,
                               w_sym=True, mm_tensor=False).kv_quant()
    assert quant_config.use_kvcache_quant
    calibrator = Calibrator(model, quant_config, calib_data=data, disable_level="L2")
    with caplog.at_level(logging.INFO, logger="golden_ptq"):
        calibrator.run()
    assert "use hybrid observer:model.layers.0.attention.wq.quant_input, range_parm:" in caplog.text
    assert calibrator.config.anti_method == "m2" and len(calibrator.rolled_back) == 2
    assert isinstance(model.model.layers[1].attention.wq, QuantLinear) or "model.layers.1.attention.wq" in \
        calibrator.rolled_back
    assert isinstance(model.model.layers[0].attention.kv_cache, QuantKVCache)
    assert not isinstance(model.lm_head, QuantLinear)  # disable_last_linear=True, as in msModelSlim
    expected = model(ids).asnumpy()
    calibrator.save(str(tmp_path / "out"), save_type=["safe_tensor", "numpy"])
    files = set(os.listdir(tmp_path / "out"))
    assert {"model.safetensors", "quant_desc.json", "ptq_config.yaml", "numpy"} <= files
    w = np.load(tmp_path / "out" / "numpy" / "model.layers.1.feed_forward.w1.weight.npy")
    assert w.dtype == np.int8 or "model.layers.1.feed_forward.w1" in calibrator.rolled_back
    deployed, ptq = load_quantized(str(tmp_path / "out"), ToyHelper(tiny_config))
    assert set(ptq.config.disable_names) == set(disable_names) | set(calibrator.rolled_back)
    np.testing.assert_allclose(deployed(ids).asnumpy(), expected, atol=1e-6, rtol=0)


def test_weight_only_awq_w4_and_numpy_only_save(tmp_path, tiny_config):
    model = planted_outlier_network(tiny_config)
    data = guide_calib_data(tiny_config)
    AntiOutlier(model, calib_data=data, cfg=AntiOutlierConfig(a_bit=16, w_bit=4, anti_method="m3")).process()
    calibrator = Calibrator(model, QuantConfig(a_bit=16, w_bit=4, group_size=16), calib_data=data)
    calibrator.run()
    assert calibrator.config.weight_bits == 4 and calibrator.ptq.pipeline[0].name == "awq"
    paths = calibrator.save(str(tmp_path / "w4"), save_type=["numpy"])
    assert all(p.endswith(".npy") for p in paths) and (tmp_path / "w4" / "ptq_config.yaml").exists()
    assert not (tmp_path / "w4" / "model.safetensors").exists()


@pytest.mark.parametrize("build, message", [
    (lambda: QuantConfig(a_bit=4), r"QuantConfig.a_bit: 4 is not supported; allowed: \[8, 16\]"),
    (lambda: QuantConfig(dev_type="npu"), r"QuantConfig.dev_type: 'npu' is not supported; allowed: \['cpu'\]"),
    (lambda: QuantConfig(dev_id=0), "QuantConfig.dev_id: 0 selects an NPU"),
    (lambda: QuantConfig(w_bit=2), r"QuantConfig.w_bit: 2 is not supported; allowed: \[4, 8\]"),
    (lambda: QuantConfig(act_method=4), r"QuantConfig.act_method: 4 is not supported; allowed: \[1, 2, 3\]"),
    (lambda: QuantConfig(pr=0.5), r"QuantConfig.pr: 0.5 is not supported; allowed: \[1.0\]"),
    (lambda: QuantConfig(mm_tensor=True), r"QuantConfig.mm_tensor: True is not supported; allowed: \[False\]"),
    (lambda: QuantConfig(w_bit=4), "w_bit=4 is weight-only"),
    (lambda: AntiOutlierConfig(dev_type="npu"), r"AntiOutlierConfig.dev_type: 'npu' is not supported"),
    (lambda: AntiOutlierConfig(anti_method="m9"), "AntiOutlierConfig.anti_method: 'm9' is not a known"),
    (lambda: AntiOutlierConfig(anti_method="m3"), "set a_bit=16"),
])
def test_unsupported_values_name_the_argument(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_m5_not_implemented_and_mismatched_bits(tiny_config):
    with pytest.raises(NotImplementedError, match="'m5' .*CBQ.*not implemented yet"):
        AntiOutlierConfig(anti_method="m5")
    model = planted_outlier_network(tiny_config)
    AntiOutlier(model, calib_data=guide_calib_data(tiny_config), cfg=AntiOutlierConfig(anti_method="m1")).process()
    with pytest.raises(ValueError, match=r"AntiOutlierConfig\(a_bit=8, w_bit=8\) does not match QuantConfig\(a_bit=16"):
        Calibrator(model, QuantConfig(a_bit=16), calib_data=guide_calib_data(tiny_config))
    with pytest.raises(ValueError, match="calib_data is required"):
        AntiOutlier(model, calib_data=None, cfg=AntiOutlierConfig()).process()
    with pytest.raises(ValueError, match=r"Calibrator.save.save_type entry: 'onnx' is not supported"):
        calibrator = Calibrator(planted_outlier_network(tiny_config), QuantConfig(a_bit=16),
                                calib_data=guide_calib_data(tiny_config))
        calibrator.run()
        calibrator.save("unused", save_type=["onnx"])
