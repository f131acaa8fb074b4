"""Streamed PTQ: quantize a model too large to hold in float, one decoder layer at a time."""
from golden_ptq.streaming.quantize import DEFAULT_SPILL_BYTES, quantize_streamed

__all__ = ["DEFAULT_SPILL_BYTES", "quantize_streamed"]
