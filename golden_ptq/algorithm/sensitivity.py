"""Per-Linear sensitivity report: range_parm and measured output error, as csv, markdown and a PNG chart.

Both signals come from a calibration run with ``PTQ(config, measure_sensitivity=True)``:

* ``range_parm``: ``max(|lo|, |hi|)`` of the activation quantizer's range over the median
  per-channel ``max|x|`` of its input (:func:`golden_ptq.quant_math.range_parm`);
* ``output_error``: ``||y_q - y_f||^2 / ||y_f||^2``, the layer's output quantized vs float (same
  smoothed float weights) on a row sample (``algo_args['search_rows']``) of its calibration inputs.

Either can order the rollback: ``PTQConfig(disable_level='Lx', rollback_signal=...)``.
"""
from __future__ import annotations

import csv
import os
from typing import Dict, List, Optional

SIGNALS = ("range_parm", "output_error")


def ranked_by(order_by: str, measured: Dict[str, bool]) -> str:
    """The signal the rows are ranked by: ``order_by`` when it was measured, else the other one (e.g.
    dynamic activations have no static range: order by what was measured)."""
    if measured[order_by]:
        return order_by
    return next(key for key in SIGNALS if key != order_by and measured[key])


def sensitivity_rows(ptq, order_by: str = "range_parm") -> List[Dict[str, object]]:
    """One row per measured Linear layer, most sensitive first by ``order_by``."""
    if order_by not in SIGNALS:
        raise ValueError(f"sensitivity report: order_by {order_by!r} not allowed; allowed: {list(SIGNALS)}")
    if not ptq.range_parms and not ptq.output_errors:
        raise ValueError("sensitivity report: nothing was measured; calibrate in QUANTIZE mode with "
                         "PTQ(config, measure_sensitivity=True)")
    ranked = ranked_by(order_by, {"range_parm": bool(ptq.range_parms), "output_error": bool(ptq.output_errors)})
    signal = ptq.range_parms if ranked == "range_parm" else ptq.output_errors
    names = sorted(set(ptq.range_parms) | set(ptq.output_errors))
    names.sort(key=lambda n: (-signal.get(n, float("-inf")), n))
    rolled = set(ptq.rolled_back)
    disabled = set(ptq.config.disable_names)
    rows = []
    for rank, name in enumerate(names, 1):
        rows.append({"rank": rank, "layer": name, "range_parm": ptq.range_parms.get(name),
                     "output_error": ptq.output_errors.get(name),
                     "float": "disable_level" if name in rolled else ("disable_names" if name in disabled else "")})
    return rows


def _fmt(value: Optional[float]) -> str:
    return "" if value is None else f"{value:.6g}"


def write_sensitivity_report(ptq, folder: str, order_by: str = "range_parm", png: bool = True) -> Dict[str, str]:
    """Write ``sensitivity.csv``, ``sensitivity.md`` and (``png=True``, needs matplotlib) ``sensitivity.png``.

    Returns the written paths by kind.
    """
    rows = sensitivity_rows(ptq, order_by)
    os.makedirs(folder, exist_ok=True)
    paths = {"csv": os.path.join(folder, "sensitivity.csv"), "markdown": os.path.join(folder, "sensitivity.md")}
    with open(paths["csv"], "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _fmt(v) if isinstance(v, float) else v for k, v in row.items()})
    lines = [f"Sensitivity of the quantized Linear layers, most sensitive first by {order_by}.", "",
             "| rank | layer | range_parm | output error (rel. MSE) | kept float by |", "|---|---|---|---|---|"]
    lines += [f"| {r['rank']} | `{r['layer']}` | {_fmt(r['range_parm'])} | {_fmt(r['output_error'])} | {r['float']} |"
              for r in rows]
    with open(paths["markdown"], "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    if png:
        paths["png"] = os.path.join(folder, "sensitivity.png")
        bar_chart(rows, paths["png"], order_by)
    return paths


def bar_chart(rows: List[Dict[str, object]], path: str, order_by: str) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ImportError("the sensitivity PNG needs matplotlib: pip install matplotlib "
                          "(or golden_ptq[report]); use png=False for csv and markdown only") from err
    names = [str(r["layer"]) for r in rows]
    colors = ["tab:red" if r["float"] else "tab:blue" for r in rows]
    # a panel per measured quantity: without output errors (the main job does not measure them) an
    # empty second panel only doubled the drawing (~1.5 s of a 240-layer chart)
    measured = {key: any(r[key] is not None for r in rows) for key in SIGNALS}
    panels = [(key, title) for key, title in (("range_parm", "range_parm"),
                                               ("output_error", "output error (relative MSE)"))
              if key == "range_parm" or measured[key]]
    fig, axes = plt.subplots(1, len(panels), figsize=(12 if len(panels) == 2 else 7, max(3.0, 0.22 * len(rows) + 1.5)),
                             sharey=True, squeeze=False)
    axes = axes[0]
    for axis, (key, title) in zip(axes, panels):
        values = [float(r[key]) if r[key] is not None else 0.0 for r in rows]
        axis.barh(range(len(rows)), values, color=colors)
        axis.set_title(title)
        if key == "output_error" and any(v > 0 for v in values):  # not measured: nothing to log-scale
            axis.set_xscale("log")
    order_by = ranked_by(order_by, measured)   # as sensitivity_rows applied it
    axes[0].set_ylim(len(rows) - 0.5, -0.5)  # the first row on top, no margins (the axes share y)
    axes[0].set_yticks(range(len(rows)))
    axes[0].set_yticklabels(names, fontsize=7)
    # in the axes' title, not a suptitle: tight_layout left a suptitle over a tall chart's titles
    axes[0].set_title(f"{panels[0][1]}\nLinear layers by {order_by} (red: kept float)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
