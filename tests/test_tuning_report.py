"""Sensitivity report: range_parm and measured output error per Linear, csv / markdown / PNG."""
import csv
import importlib.util

import mindspore as ms
import pytest

from golden_ptq import PTQ, PTQConfig
from golden_ptq.algorithm.sensitivity import bar_chart, ranked_by, sensitivity_rows, write_sensitivity_report
from test_ptq_toy import calibration, planted_outlier_network

HAS_MPL = importlib.util.find_spec("matplotlib") is not None


@pytest.fixture
def measured(tiny_config):
    net = planted_outlier_network(tiny_config)
    ptq = PTQ(PTQConfig(act_quant_dtype=ms.int8, disable_level="L2"), measure_sensitivity=True)
    ptq.apply(net, None, calibration(tiny_config))
    return ptq


def test_rows_ordered_by_either_signal(measured):
    by_range = sensitivity_rows(measured, "range_parm")
    by_error = sensitivity_rows(measured, "output_error")
    assert len(by_range) == len(by_error) == 15
    values = [r["range_parm"] for r in by_range]
    assert values == sorted(values, reverse=True)
    errors = [r["output_error"] for r in by_error]
    assert errors == sorted(errors, reverse=True) and all(0 < e < 1 for e in errors)
    assert [r["layer"] for r in by_range[:2]] == measured.rolled_back
    assert [r["float"] for r in by_range[:3]] == ["disable_level", "disable_level", ""]
    with pytest.raises(ValueError, match=r"order_by 'mse' not allowed; allowed: \['range_parm', 'output_error'\]"):
        sensitivity_rows(measured, "mse")


def test_csv_and_markdown(tmp_path, measured):
    paths = write_sensitivity_report(measured, str(tmp_path), order_by="output_error", png=False)
    with open(paths["csv"], newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 15 and set(rows[0]) == {"rank", "layer", "range_parm", "output_error", "float"}
    assert float(rows[0]["output_error"]) >= float(rows[-1]["output_error"])
    text = open(paths["markdown"]).read()
    assert "| rank | layer | range_parm | output error (rel. MSE) | kept float by |" in text
    assert "`lm_head`" in text and "png" not in paths


def test_report_needs_measurement():
    with pytest.raises(ValueError, match="measure_sensitivity=True"):
        sensitivity_rows(PTQ(PTQConfig()))  # never applied: nothing measured


def test_ranked_by_falls_back_to_the_measured_signal():
    assert ranked_by("range_parm", {"range_parm": True, "output_error": True}) == "range_parm"
    assert ranked_by("output_error", {"range_parm": True, "output_error": False}) == "range_parm"
    assert ranked_by("range_parm", {"range_parm": False, "output_error": True}) == "output_error"


def test_report_without_output_errors(tiny_config):
    net = planted_outlier_network(tiny_config)
    ptq = PTQ(PTQConfig(act_quant_dtype=ms.int8))
    ptq.apply(net, None, calibration(tiny_config))
    rows = sensitivity_rows(ptq, "output_error")  # not measured: ranked by range_parm instead
    assert [r["output_error"] for r in rows] == [None] * 15
    values = [r["range_parm"] for r in rows]
    assert values == sorted(values, reverse=True)


def png_width(path) -> int:
    with open(path, "rb") as handle:
        head = handle.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(head[16:20], "big")   # IHDR's width


@pytest.mark.skipif(not HAS_MPL, reason="optional dependency matplotlib is not installed (extra 'report')")
def test_png_bar_chart(tmp_path, measured):
    paths = write_sensitivity_report(measured, str(tmp_path))
    assert png_width(paths["png"]) == 1200   # two panels: range_parm and output error


@pytest.mark.skipif(not HAS_MPL, reason="optional dependency matplotlib is not installed (extra 'report')")
def test_png_bar_chart_without_output_errors_has_one_panel(tmp_path, tiny_config):
    net = planted_outlier_network(tiny_config)
    ptq = PTQ(PTQConfig(act_quant_dtype=ms.int8))
    ptq.apply(net, None, calibration(tiny_config))
    rows = sensitivity_rows(ptq, "range_parm")
    assert all(r["output_error"] is None for r in rows)
    bar_chart(rows, str(tmp_path / "chart.png"), "range_parm")
    assert png_width(tmp_path / "chart.png") == 700
