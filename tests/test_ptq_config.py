"""PTQConfig validation and its yaml round-trip; the ready configs in configs/."""
import glob
import os

import mindspore as ms
import pytest

from golden_ptq import BackendTarget, OutliersSuppressionType, PTQConfig, PTQMode, QuantGranularity

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs", "ptq")


def test_yaml_round_trip_does_not_mutate(tmp_path):
    cfg = PTQConfig(mode=PTQMode.DEPLOY, opname_blacklist=["w2", "lm_head"], act_quant_dtype=ms.int8,
                    kvcache_quant_dtype=ms.int8, outliers_suppression=OutliersSuppressionType.SMOOTH,
                    algo_args={"smooth_alpha": 0.6}, weight_only_names=["wo"])
    before = repr(cfg)
    cfg.dump(str(tmp_path / "c.yaml"))
    assert repr(cfg) == before
    loaded = PTQConfig.load(str(tmp_path / "c.yaml"))
    assert loaded == cfg and loaded.act_quant_dtype == ms.int8 and loaded.mode is PTQMode.DEPLOY
    assert "SMOOTH" in (tmp_path / "c.yaml").read_text()
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no temp file left behind


@pytest.mark.parametrize("kwargs, message", [
    (dict(backend=BackendTarget.ASCEND), "backend"),
    (dict(act_quant_dtype=ms.int8, weight_quant_dtype=None), "A8W16"),
    (dict(outliers_suppression=OutliersSuppressionType.SMOOTH), "needs act_quant_dtype=int8"),
    (dict(weight_quant_granularity=QuantGranularity.PER_GROUP), "group_size"),
    (dict(group_size=32), "needs weight_quant_granularity=PER_GROUP"),
    (dict(weight_quant_granularity=QuantGranularity.PER_TOKEN), "weight_quant_granularity"),
    (dict(act_quant_dtype=ms.int8, act_quant_granularity=QuantGranularity.PER_TOKEN, act_symmetric=False),
     "symmetric"),
    (dict(weight_quant_dtype=ms.float16), "not supported"),
    (dict(weight_quant_dtype="int4"), "'int4' is not supported"),
    (dict(mode="train"), "'train' is not one of"),
    (dict(algo_args={"alpha": 0.5}), r"unknown key 'alpha'"),
    (dict(algo_args={"smooth_alpha": 2}), r"\[0, 1\]"),
    (dict(weight_quant_dtype=None), "nothing to quantize"),
    (dict(opname_blacklist=[""]), "non-empty strings"),
    (dict(weight_only_names=["lm_head"]), r"weight_only_names \['lm_head'\]: every quantized layer is already"),
    (dict(act_quant_dtype=ms.int8, weight_only_names=[3]), "weight_only_names: entry 3"),
])
def test_invalid_combinations_name_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PTQConfig(**kwargs)


def test_unknown_yaml_field_names_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("mode: QUANTIZE\nweight_dtype: int8\n")
    with pytest.raises(ValueError, match=r"bad.yaml.*weight_dtype"):
        PTQConfig.load(str(path))


def test_ready_configs_load():
    files = sorted(glob.glob(os.path.join(CONFIGS, "*.yaml")))
    names = {os.path.basename(f) for f in files}
    assert {"a16w8.yaml", "a8w8_smooth.yaml", "c8.yaml", "a16w8_c8.yaml", "a8w8_smooth_c8.yaml"} <= names
    for file in files:
        cfg = PTQConfig.load(file)
        assert cfg.mode is PTQMode.QUANTIZE


@pytest.mark.parametrize("name", sorted(os.path.basename(f)[:-5] for f in glob.glob(os.path.join(CONFIGS, "*.yaml"))))
def test_every_shipped_config_quantizes_a_tiny_network(tiny_config, name):
    """Each shipped config's methods run end to end (here on a random network: no accuracy claim)."""
    import numpy as np
    from golden_ptq import PTQ
    from golden_ptq.deploy import packaged_quant_config
    from golden_ptq.networks.llama import LlamaForCausalLM
    net = LlamaForCausalLM(tiny_config, seed=0)
    ids = np.random.RandomState(1).randint(0, tiny_config.vocab_size, (2, 16))
    reference = net(ids).asnumpy()
    ptq = PTQ(PTQConfig.load(packaged_quant_config(name)))
    ptq.apply(net, None, [np.random.RandomState(2).randint(0, tiny_config.vocab_size, (2, 16))])
    ptq.convert(net)
    out = net(ids).asnumpy()
    assert np.isfinite(out).all() and 0 < np.abs(out - reference).max() < np.abs(reference).max()
