"""What one layer becomes: the per-layer resolution of a :class:`PTQConfig`."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class LayerQuantSpec:
    """Quantization of one target cell. ``skip_reason`` set means the layer stays float."""

    weight: bool = False
    act: bool = False
    act_dynamic: bool = False        # per-token scales computed at run time
    act_symmetric: bool = False
    weight_symmetric: bool = True
    group_size: int = 0              # 0: per output channel
    kvcache: bool = False
    kvcache_scheme: str = "static"   # int8 KV cache layout (PTQConfig.algo_args['kvcache_scheme'])
    skip_reason: Optional[str] = None

    @property
    def label(self) -> str:
        """Short name used in summaries and ``quant_desc.json``: W8A8, W8A8-dynamic, W8A16, C8, FLOAT."""
        if self.skip_reason or not (self.weight or self.kvcache):
            return "FLOAT"
        if self.kvcache:
            return "C8"
        if self.act:
            return "W8A8-dynamic" if self.act_dynamic else "W8A8"
        suffix = f"-g{self.group_size}" if self.group_size else ""
        return ("W8A16" if self.weight_symmetric else "W8A16-asym") + suffix
