"""What PTQ can do under tensor parallelism with the same answers as on one rank; the rest is refused.

Each accuracy method declares whether it is TP-correct and on which layouts
(``MethodDeclaration.tp`` / ``tp_note``, see ``golden_ptq.algorithm.modules``); the Quantize
module is. Beyond the methods, TP-correct are: every act_method (observers of row-parallel inputs
bin every rank's channels into the whole tensor's histogram); W8A16 per channel or per group
(groups that divide each rank's share of a row-parallel input), W8A8 static or dynamic
(per-token ranges of row-parallel inputs span the whole row), C8, int8 embedding; rollback
(disable_names, disable_level by range_parm or output_error) and sensitivity measurement.

Refused with NotImplementedError (they would give each rank different, or different-from-TP=1,
parameters): methods declared ``tp=False`` (in DEPLOY only those that change the network's
structure, i.e. rotation: the others leave ordinary quantized weights that each rank slices), 4-bit weights, asymmetric per-channel weights,
per-group weights whose groups straddle two ranks' input columns, and pipeline modules that
declare nothing.
"""
from __future__ import annotations


def check_tp_supported(ptq, network) -> None:
    """Raise NotImplementedError naming the first setting of ``ptq`` that is not TP-correct on ``network``."""
    tp = getattr(network, "tp", None)
    if tp is None or not tp.parallel:
        return
    from golden_ptq.algorithm.modules import QuantizeModule
    from golden_ptq.config import PTQMode
    from golden_ptq.config.method_names import ROTATION
    cfg = ptq.config
    deploy = cfg.mode is PTQMode.DEPLOY
    where = f"tensor parallel size {tp.size}"
    problems = []
    for module in ptq.pipeline:
        decl = getattr(module, "method", None)
        if type(module) is QuantizeModule or (decl is not None and decl.tp):
            continue
        if deploy and decl is not None and decl.role != ROTATION:
            continue  # calibration-time only: its result is ordinary quantized weights, which each rank slices
        if decl is not None:
            problems.append(f"method {decl.label} ({decl.tp_note})")
        else:
            problems.append(f"pipeline module {type(module).__name__} (it declares no MethodDeclaration)")
    if cfg.weight_bits != 8:
        problems.append(f"weight_bits {cfg.weight_bits} (supported: 8)")
    if cfg.weight_quant_dtype is not None and not cfg.weight_symmetric and not cfg.group_size:
        problems.append("asymmetric per-channel weights (supported: symmetric, or per group)")
    if cfg.group_size:
        widths = sorted({int(c.in_features) for _, c in network.cells_and_names()
                         if getattr(c, "parallel", None) == "row" and hasattr(c, "in_features")})
        ragged = [w for w in widths if w % cfg.group_size]
        if ragged:
            problems.append(f"group_size {cfg.group_size} with row-parallel shards of {ragged} input columns "
                            f"(a group would straddle two ranks; use a group_size dividing them)")
    if problems:
        raise NotImplementedError(f"PTQ under {where} does not support: {'; '.join(problems)}. Run these on "
                                  f"one rank (TP size 1) and split the checkpoint with golden_ptq.tools.tp_checkpoint")
