"""What PTQ reports about a calibration: one record per quantizable layer, scheme counts, a summary."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional

from golden_ptq.quant_cells import LayerQuantSpec


@dataclass
class LayerRecord:
    name: str
    layer_type: str
    spec: LayerQuantSpec
    weight_bits: int = 8

    @property
    def label(self) -> str:
        label = self.spec.label
        return label.replace("W8", "W4", 1) if self.weight_bits == 4 and label.startswith("W8") else label

    @property
    def became(self) -> str:
        if self.spec.skip_reason:
            return f"FLOAT ({self.spec.skip_reason})"
        return self.label


def scheme_counts(records: List[LayerRecord]) -> Dict[str, int]:
    """How many layers became each scheme (``W8A8``, ``C8``, ``FLOAT``, ...)."""
    counts: Dict[str, int] = {}
    for r in records:
        key = "FLOAT" if r.spec.skip_reason else r.label
        counts[key] = counts.get(key, 0) + 1
    return counts


def summary_text(records: List[LayerRecord], calibration_tokens: int = 0,
                 calibration_seconds: Optional[float] = None) -> str:
    """A table of every layer and what it became, the totals, and the calibration time."""
    if not records:
        return "PTQ.summary: apply() has not run yet"
    width = max(len(r.name) for r in records)
    lines = [f"{'layer'.ljust(width)}  {'type':<10}  became", "-" * (width + 40)]
    lines += [f"{r.name.ljust(width)}  {r.layer_type:<10}  {r.became}" for r in records]
    lines.append("total: " + ", ".join(f"{k} {v}" for k, v in sorted(scheme_counts(records).items())))
    if calibration_seconds is not None:
        lines.append(f"calibration: {calibration_tokens} tokens in {calibration_seconds:.1f} s")
    return "\n".join(lines)
