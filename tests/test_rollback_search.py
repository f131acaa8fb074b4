"""search_rollback: the fewest layers rolled back for a target score, from one calibration.

The tiny network has planted outlier channels (so rollback matters); the score functions either
read the real logits or are monotone by construction, so the minimal L can be checked by brute force.
"""
import math

import mindspore as ms
import numpy as np
import pytest

from golden_ptq import PTQ, PTQConfig, search_rollback
from golden_ptq.deploy import load_quantized, save_quantized
from golden_ptq.networks.layers import Linear
from golden_ptq.quant_cells import QuantLinear
from test_ptq_toy import calibration, planted_outlier_network
from test_tuning_rollback import ToyHelper

I8 = ms.int8
IDS = np.random.RandomState(6).randint(0, 97, (2, 16))
N_LINEARS = 15  # 7 per decoder layer x 2, and lm_head


def calibrated(tiny_config, keep=True, **kwargs):
    net = planted_outlier_network(tiny_config)
    ptq = PTQ(PTQConfig(act_quant_dtype=I8, **kwargs), keep_float_cells=keep)
    ptq.apply(net, None, calibration(tiny_config))
    return net, ptq


def float_linears(net):
    return sorted(name for name, cell in net.cells_and_names() if type(cell) is Linear)


def quant_linears(net):
    return sorted(name for name, cell in net.cells_and_names() if isinstance(cell, QuantLinear))


def logits_error(reference):
    """A real metric: relative squared error of the logits against the float network's."""
    def score(net):
        out = net(IDS).asnumpy().astype(np.float64)
        return float(((out - reference) ** 2).sum() / (reference ** 2).sum())
    return score


def weighted_quantized(weights, calls=None):
    """A score that falls strictly with every Linear rolled back: the sum of the weights of the Linears
    still quantized in the network it is given (read from the network, not from the search)."""
    def score(net):
        if calls is not None:
            calls.append(quant_linears(net))
        return float(sum(weights[name] for name in quant_linears(net)))
    return score


def brute_force(ptq, net, score, ranking):
    """score with the first L of ranking rolled back, for every L."""
    values = []
    for level in range(len(ranking) + 1):
        ptq.restore(net, ranking)
        ptq.roll_back(net, ranking[:level])
        values.append(score(net))
    ptq.restore(net, ranking)
    return values


def test_minimal_level_for_every_target_by_brute_force(tiny_config):
    net, ptq = calibrated(tiny_config)
    ranking = ptq.sensitivity_ranking("range_parm")
    assert len(ranking) == N_LINEARS
    weights = dict(zip(sorted(ranking), np.random.RandomState(0).uniform(1.0, 2.0, N_LINEARS)))
    values = brute_force(ptq, net, weighted_quantized(weights), ranking)
    assert all(a > b for a, b in zip(values, values[1:])) and values[-1] == 0.0
    for expected in range(N_LINEARS + 1):
        ptq.restore(net, list(ptq.rolled_back))
        # a target exactly met (score <= target passes), or halfway to the next larger score
        target = values[expected] if expected % 2 else values[expected] + 0.5 * (values[expected - 1] - values[expected]) if expected else values[0] + 1.0
        calls = []
        result = search_rollback(ptq, net, weighted_quantized(weights, calls), target)
        assert result.level == expected and result.reached, (expected, result.summary())
        assert result.names == ranking[:expected] and ptq.rolled_back == ranking[:expected]
        assert float_linears(net) == sorted(ranking[:expected])
        assert result.score == values[expected]
        # one score call per trial, no level twice, each trial's network had exactly its prefix float
        assert len(calls) == len(result.trials) == len({t.level for t in result.trials})
        assert len(calls) <= 2 * math.ceil(math.log2(N_LINEARS)) + 1
        for trial, quantized in zip(result.trials, calls):
            assert trial.names == tuple(ranking[:trial.level]) and trial.score == values[trial.level]
            assert quantized == sorted(set(ranking) - set(trial.names))


def test_real_metric_trials_match_brute_force(tiny_config):
    reference = planted_outlier_network(tiny_config)(IDS).asnumpy().astype(np.float64)
    net, ptq = calibrated(tiny_config)
    ranking = ptq.sensitivity_ranking("output_error")
    values = brute_force(ptq, net, logits_error(reference), ranking)
    target = 0.5 * values[0]
    result = search_rollback(ptq, net, logits_error(reference), target, signal="output_error")
    chosen = result.level
    assert result.reached and 0 < chosen < N_LINEARS, result.summary()
    assert values[chosen] <= target < values[chosen - 1]  # passes, and one layer fewer does not
    for trial in result.trials:  # swapping in any order gives the network of that prefix, bit for bit
        assert trial.score == values[trial.level]
    assert logits_error(reference)(net) == values[chosen]


@pytest.mark.parametrize("signal, disable_level, disable_names", [
    ("range_parm", "L0", []),
    ("output_error", "L2", ["model.layers.1.feed_forward.w2"]),
])
def test_result_equals_fresh_disable_level_run(tmp_path, tiny_config, signal, disable_level, disable_names):
    reference = planted_outlier_network(tiny_config)(IDS).asnumpy().astype(np.float64)
    kwargs = dict(rollback_signal=signal, disable_level=disable_level, disable_names=disable_names)
    net, ptq = calibrated(tiny_config, **kwargs)
    full = ptq.sensitivity_ranking(signal)
    before = int(disable_level[1:])
    assert ptq.rolled_back == full[:before] and not set(disable_names) & set(full)
    score = logits_error(reference)
    result = search_rollback(ptq, net, score, 0.5 * score(net), signal=signal)
    assert 0 < result.level < len(result.ranking), result.summary()
    assert result.already_rolled_back == full[:before] and result.ranking == full[before:]
    total = before + result.level
    assert result.disable_level == f"L{total}" and ptq.rolled_back == full[:total] == result.rolled_back
    searched = net(IDS).asnumpy()

    fresh_kwargs = dict(kwargs, disable_level=f"L{total}")
    fresh, fresh_ptq = calibrated(tiny_config, keep=False, **fresh_kwargs)
    assert fresh_ptq.rolled_back == ptq.rolled_back
    np.testing.assert_array_equal(searched, fresh(IDS).asnumpy())
    became = {r.name: r.became for r in ptq.records}
    searched_reason = f"FLOAT (rollback search L{result.level} ({signal} "
    assert sum(b.startswith(searched_reason) for b in became.values()) == result.level
    assert sum("disable_level" in b for b in became.values()) == before
    assert {n for n, b in became.items() if b.startswith("FLOAT")} == \
        {r.name for r in fresh_ptq.records if r.spec.skip_reason}

    ptq.convert(net)  # the searched set deploys: save_quantized lists it in disable_names
    save_quantized(net, ptq, str(tmp_path / "q"))
    deployed, _ = load_quantized(str(tmp_path / "q"), ToyHelper(tiny_config))
    np.testing.assert_allclose(deployed(IDS).asnumpy(), searched, atol=1e-6, rtol=0)


def test_unreachable_target_reports_and_keeps_best_tried(tiny_config):
    net, ptq = calibrated(tiny_config)
    ranking = ptq.sensitivity_ranking("range_parm")
    weights = {name: 1.0 for name in ranking}
    result = search_rollback(ptq, net, weighted_quantized(weights), -1.0)
    assert not result.reached and "NOT reached" in result.summary()
    assert [t.level for t in result.trials] == [0, 1, 2, 4, 8, N_LINEARS]
    assert result.level == N_LINEARS and float_linears(net) == sorted(ranking)

    ptq.restore(net, ranking)
    valley = lambda n: abs(N_LINEARS - len(quant_linears(n)) - 4) + 1.0  # lowest with 4 layers float
    result = search_rollback(ptq, net, valley, 0.0)
    assert not result.reached and result.level == 4 and result.score == 1.0
    assert float_linears(net) == sorted(ranking[:4]) and ptq.rolled_back == ranking[:4]

    ptq.restore(net, ranking)
    result = search_rollback(ptq, net, weighted_quantized(weights), N_LINEARS - 5.0, max_layers=3)
    assert not result.reached and [t.level for t in result.trials] == [0, 1, 2, 3] and result.level == 3


def test_roll_back_and_restore_round_trip(tiny_config):
    net, ptq = calibrated(tiny_config, disable_names=["model.layers.0.feed_forward.w2"])
    summary = ptq.summary()
    quantized = net(IDS).asnumpy()
    names = ["model.layers.1.attention.wo", "lm_head"]
    assert ptq.roll_back(net, names, reason="by hand") == names
    assert ptq.roll_back(net, names) == []  # already float: nothing to do
    assert float_linears(net) == sorted(names + ["model.layers.0.feed_forward.w2"])
    assert ptq.rolled_back == names and ptq.summary().count("FLOAT (by hand)") == 2
    assert not np.array_equal(net(IDS).asnumpy(), quantized)
    assert ptq.restore(net, names) == names and ptq.rolled_back == []
    assert ptq.summary() == summary
    np.testing.assert_array_equal(net(IDS).asnumpy(), quantized)


def test_bad_names_and_states(tiny_config):
    net, ptq = calibrated(tiny_config, disable_names=["model.layers.0.feed_forward.w2"])
    with pytest.raises(ValueError, match=r"cannot swap 'model.layers.9.attention.wq': it is not the name of a "
                                         r"quantized layer; quantized layers look like: model.layers.0.attention.wq"):
        ptq.roll_back(net, ["model.layers.9.attention.wq"])
    with pytest.raises(ValueError, match=r"'model.layers.0.feed_forward.w2': it was never quantized \(disable_names\)"):
        ptq.restore(net, ["model.layers.0.feed_forward.w2"])
    with pytest.raises(TypeError, match="must be a list of layer names"):
        ptq.roll_back(net, "lm_head")
    with pytest.raises(RuntimeError, match="not the cell this PTQ calibrated"):
        ptq.roll_back(planted_outlier_network(tiny_config), ["lm_head"])
    score = lambda n: 0.0
    with pytest.raises(ValueError, match=r"signal 'mse' not allowed"):
        search_rollback(ptq, net, score, 1.0, signal="mse")
    with pytest.raises(ValueError, match="target must be a number"):
        search_rollback(ptq, net, score, float("nan"))
    with pytest.raises(ValueError, match="max_layers must be None or an int >= 0"):
        search_rollback(ptq, net, score, 1.0, max_layers=-1)
    with pytest.raises(TypeError, match="score must be a callable"):
        search_rollback(ptq, net, 1.0, 1.0)
    with pytest.raises(TypeError, match="score\\(network\\) must return a number, got 'low'"):
        search_rollback(ptq, net, lambda n: "low", 1.0)
    assert ptq.rolled_back == [] and float_linears(net) == ["model.layers.0.feed_forward.w2"]

    calls = []

    def failing(n):  # a user's metric that breaks on the third trial
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return 10.0

    with pytest.raises(KeyboardInterrupt):
        search_rollback(ptq, net, failing, 1.0)
    assert ptq.rolled_back == [] and float_linears(net) == ["model.layers.0.feed_forward.w2"]  # as before

    ptq.convert(net)
    with pytest.raises(RuntimeError, match=r"convert\(\) has run and dropped the float cells"):
        search_rollback(ptq, net, score, 1.0)
    with pytest.raises(RuntimeError, match=r"convert\(\) has run"):
        ptq.roll_back(net, ["lm_head"])


@pytest.mark.parametrize("kwargs", [dict(), dict(disable_level="L2"), dict(measure=True)])
def test_search_needs_kept_float_cells(tiny_config, kwargs):
    net = planted_outlier_network(tiny_config)
    measure = kwargs.pop("measure", False)
    ptq = PTQ(PTQConfig(act_quant_dtype=I8, **kwargs), measure_sensitivity=measure)
    with pytest.raises(RuntimeError, match=r"apply\(network, helper, datasets\) has not run yet"):
        search_rollback(ptq, net, lambda n: 0.0, 1.0)
    ptq.apply(net, None, calibration(tiny_config))
    with pytest.raises(RuntimeError, match=r"create PTQ\(config, keep_float_cells=True\)"):
        search_rollback(ptq, net, lambda n: 0.0, 1.0)


def test_weight_only_ranks_by_output_error_and_no_linear_is_an_error(tiny_config):
    net = planted_outlier_network(tiny_config)
    ptq = PTQ(PTQConfig(), keep_float_cells=True)  # W8A16
    ptq.apply(net, None, calibration(tiny_config))
    result = search_rollback(ptq, net, weighted_quantized({n: 1.0 for n in quant_linears(net)}), N_LINEARS - 2.5,
                             signal="output_error")
    assert result.reached and result.level == 3 and result.names == ptq.sensitivity_ranking("output_error")[:3]

    net = planted_outlier_network(tiny_config)
    ptq = PTQ(PTQConfig(weight_quant_dtype=None, kvcache_quant_dtype=I8), keep_float_cells=True)  # C8 only
    ptq.apply(net, None, calibration(tiny_config))
    with pytest.raises(ValueError, match="no quantized Linear layer has a range_parm"):
        search_rollback(ptq, net, lambda n: 0.0, 1.0)
