"""What PTQ can do under tensor parallelism with the same answers as on one rank; the rest is refused.

Made TP-correct: anti_method None, m1 (SmoothQuant), m2 (alpha search) and m6 (flexible
smoothing), with KV heads split or replicated; every act_method (min-max, histogram, hybrid:
observers of row-parallel inputs bin every rank's channels into the whole tensor's histogram);
W8A16 per channel or per group, W8A8 static or dynamic (per-token ranges of row-parallel inputs
span the whole row), C8, int8 embedding; rollback (disable_names, disable_level by range_parm or
output_error) and sensitivity measurement (every rank ranks the same layers the same way).

Refused with NotImplementedError (they would give each rank different, or different-from-TP=1,
parameters): anti_method m3 (AWQ's scale normalisation and clip search see one shard) and m4
(its shift is computed from one shard's channel ranges), 4-bit weights, asymmetric per-channel
weights, and pipelines with modules not listed here.
"""
from __future__ import annotations

TP_ANTI_METHODS = (None, "m1", "m2", "m6")


def check_tp_supported(ptq, network) -> None:
    """Raise NotImplementedError naming the first setting of ``ptq`` that is not TP-correct on ``network``."""
    tp = getattr(network, "tp", None)
    if tp is None or not tp.parallel:
        return
    from golden_ptq.algorithm.modules import FlexSmoothModule, QuantizeModule, SmoothModule, SmoothSearchModule
    cfg = ptq.config
    where = f"tensor parallel size {tp.size}"
    problems = []
    method = cfg.effective_anti_method
    if method not in TP_ANTI_METHODS:
        problems.append(f"anti_method {method!r} (supported: {list(TP_ANTI_METHODS)})")
    if cfg.weight_bits != 8:
        problems.append(f"weight_bits {cfg.weight_bits} (supported: 8)")
    if cfg.weight_quant_dtype is not None and not cfg.weight_symmetric and not cfg.group_size:
        problems.append("asymmetric per-channel weights (supported: symmetric, or per group)")
    known = (SmoothModule, SmoothSearchModule, FlexSmoothModule, QuantizeModule)
    unknown = [type(m).__name__ for m in ptq.pipeline if type(m) not in known]
    if unknown:
        problems.append(f"pipeline module(s) {unknown} (supported: {[k.__name__ for k in known]})")
    if problems:
        raise NotImplementedError(f"PTQ under {where} does not support: {'; '.join(problems)}. Run these on "
                                  f"one rank (TP size 1) and split the checkpoint with golden_ptq.tools.tp_checkpoint")
