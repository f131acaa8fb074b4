"""The accuracy-method registry: declarations agree with the config's names table, lookups, errors."""
import mindspore as ms
import pytest

from golden_ptq import PTQ, PTQConfig
from golden_ptq.config import PrecisionRecovery
from golden_ptq.algorithm.modules import (AlgoModule, GPTQModule, MethodDeclaration, MethodRegistry, SmoothModule,
                                          SmoothSearchModule, default_method_registry)
from golden_ptq.algorithm.modules.base import NEEDS
from golden_ptq.config.method_names import ANTI_OUTLIER, METHOD_NAMES, PRECISION_RECOVERY, W8A8
from golden_ptq.config.ptq_config import ALGO_ARGS
from golden_ptq.config.validation import ConfigError

I8 = ms.int8
SHARED_ARGS = {"search_rows", "hist_bins"}   # read by several methods and by PTQ itself


def test_declarations_agree_with_the_config_names_table():
    declared = {d.name: d for d in default_method_registry().declarations()}
    for row in METHOD_NAMES:
        if not row.implemented:
            assert row.name not in declared
            continue
        decl = declared.pop(row.name)
        assert (decl.alias, decl.role, decl.schemes) == (row.alias, row.role, row.schemes), row.name
        assert set(decl.needs) <= set(NEEDS)
    assert not declared, f"registered but unknown to the config: {sorted(declared)}"


def test_every_algo_arg_belongs_to_a_method():
    read = {arg for d in default_method_registry().declarations() for arg in d.algo_args}
    quantize_step = {"static_scale_dtype"}   # read by the Quantize module, which every pipeline ends with
    layer_specs = {"kvcache_scheme"}         # read when each layer's scheme is resolved (algorithm.swap.layer_spec)
    driver = {"calibration_inputs"}          # read by the layer loop (algorithm.driver), whatever the methods
    unread = set(ALGO_ARGS) - read
    assert unread <= (SHARED_ARGS - {"search_rows"}) | quantize_step | layer_specs | driver   # hist_bins: act_method's
    assert read <= set(ALGO_ARGS)


def test_lookup_by_name_and_alias_and_what_it_builds():
    registry = default_method_registry()
    assert registry.module_type("m2") is registry.module_type("SMOOTH_SEARCH") is SmoothSearchModule
    assert isinstance(registry.build("gptq"), GPTQModule)
    with pytest.raises(ValueError, match=r"no method 'm9'; registered: m1 \(smooth\), m2 \(smooth_search\)"):
        registry.build("m9")
    modules = registry.pipeline(PTQConfig(act_quant_dtype=I8, anti_method="m1", precision_recovery="GPTQ"))
    assert [type(m) for m in modules] == [SmoothModule, GPTQModule]


def test_registries_are_separate_objects():
    """A registry is an object PTQ is given, not global state filled at import time."""
    class EchoSmooth(SmoothModule):
        method = MethodDeclaration(name="smooth", alias="m1", role=ANTI_OUTLIER, schemes=(W8A8,), needs=(),
                                   algo_args=(), tp=True, tp_note="as m1")

    mine = MethodRegistry([EchoSmooth])
    ptq = PTQ(PTQConfig(act_quant_dtype=I8, anti_method="m1"), methods=mine)
    assert type(ptq.pipeline[0]) is EchoSmooth
    assert default_method_registry().module_type("m1") is SmoothModule   # untouched
    with pytest.raises(ValueError, match="reuses"):
        mine.register(SmoothModule)
    with pytest.raises(TypeError, match="no MethodDeclaration"):
        mine.register(AlgoModule)
    with pytest.raises(ValueError, match="unknown needs/algo_args"):
        MethodDeclaration(name="x", alias=None, role=PRECISION_RECOVERY, schemes=(W8A8,), needs=("gradients",),
                          algo_args=(), tp=False, tp_note="")


def test_config_errors_name_the_method_and_the_allowed_ones():
    with pytest.raises(ConfigError, match=r"precision_recovery: 'adaround' is not one of \['NONE', 'GPTQ'\]"):
        PTQConfig(precision_recovery="adaround")
    with pytest.raises(ConfigError, match="precision_recovery 'gptq' works on quantized weights"):
        PTQConfig(weight_quant_dtype=None, kvcache_quant_dtype=I8, precision_recovery="GPTQ")
    assert PTQConfig(precision_recovery="GPTQ").to_dict()["precision_recovery"] == "GPTQ"
    # the enum's members are the table's precision-recovery methods
    assert {e.value for e in PrecisionRecovery if e is not PrecisionRecovery.NONE} == \
        {m.name for m in METHOD_NAMES if m.role == PRECISION_RECOVERY}


def test_declared_needs_drive_what_ptq_records():
    assert SmoothSearchModule.needs_layer_inputs and not SmoothModule.needs_layer_inputs
    assert not GPTQModule.needs_layer_inputs   # it accumulates its Gram matrices itself
