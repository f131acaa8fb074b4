"""What PTQ can do under tensor parallelism with the same answers as on one rank; the rest is refused.

Made TP-correct: the default pipeline (anti_method None or m1 SmoothQuant, then Quantize) with
min-max activation observers (act_method 1), W8A16 per channel or per group, W8A8 static or
dynamic, C8, int8 embedding. Refused with NotImplementedError (they would silently give each rank
different, or different-from-TP=1, parameters): anti_method m2/m3/m4/m6, histogram / hybrid
observers, rollback (disable_level) and sensitivity measurement, 4-bit weights, asymmetric
per-channel weights, SmoothQuant with replicated KV heads, and pipelines with other modules.
"""
from __future__ import annotations

from golden_ptq.config import PTQMode


def check_tp_supported(ptq, network) -> None:
    """Raise NotImplementedError naming the first setting of ``ptq`` that is not TP-correct on ``network``."""
    tp = getattr(network, "tp", None)
    if tp is None or not tp.parallel:
        return
    from golden_ptq.algorithm.modules import QuantizeModule, SmoothModule
    cfg = ptq.config
    where = f"tensor parallel size {tp.size}"
    problems = []
    method = cfg.effective_anti_method
    if method not in (None, "m1"):
        problems.append(f"anti_method {method!r} (supported: None, 'm1')")
    if cfg.act_method != 1:
        problems.append(f"act_method {cfg.act_method} (supported: 1, min-max)")
    if cfg.rollback_level or ptq.measure_sensitivity:
        problems.append("rollback (disable_level) / sensitivity measurement")
    if cfg.weight_bits != 8:
        problems.append(f"weight_bits {cfg.weight_bits} (supported: 8)")
    if cfg.weight_quant_dtype is not None and not cfg.weight_symmetric and not cfg.group_size:
        problems.append("asymmetric per-channel weights (supported: symmetric, or per group)")
    unknown = [type(m).__name__ for m in ptq.pipeline if type(m) not in (SmoothModule, QuantizeModule)]
    if unknown:
        problems.append(f"pipeline module(s) {unknown} (supported: SmoothModule, QuantizeModule)")
    smoothing = any(type(m) is SmoothModule for m in ptq.pipeline)
    if smoothing and not network.tp_layout.kv_split and cfg.mode is PTQMode.QUANTIZE:
        problems.append(f"SmoothQuant with replicated KV heads (num_kv_heads {network.config.num_kv_heads} "
                        f"is not divisible by {tp.size})")
    if problems:
        raise NotImplementedError(f"PTQ under {where} does not support: {'; '.join(problems)}. Run these on "
                                  f"one rank (TP size 1) and split the checkpoint with golden_ptq.tools.tp_checkpoint")
