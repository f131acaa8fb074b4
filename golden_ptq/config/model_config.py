"""Shape and vocabulary settings of a Llama-family decoder."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, Optional

from golden_ptq.config.validation import check_bool, check_float


@dataclass
class LlamaConfig:
    """Hyper-parameters of :class:`~golden_ptq.networks.llama.LlamaForCausalLM`.

    Field names follow Hugging Face ``config.json`` where one exists, so an HF config maps by name.
    """

    vocab_size: int = 32000
    hidden_size: int = 4096
    num_layers: int = 32
    num_heads: int = 32
    num_kv_heads: Optional[int] = None
    intermediate_size: int = 11008
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    bos_token_id: Optional[int] = 1
    eos_token_id: Optional[int] = 2
    pad_token_id: Optional[int] = None
    extra: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.num_kv_heads is None:
            self.num_kv_heads = self.num_heads
        self.validate()

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def validate(self) -> None:
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size",
                     "max_position_embeddings"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"LlamaConfig.{name} must be a positive integer, got {value!r}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"LlamaConfig.hidden_size ({self.hidden_size}) must be divisible by "
                             f"num_heads ({self.num_heads})")
        if self.head_dim % 2:
            raise ValueError(f"LlamaConfig head_dim ({self.head_dim}) must be even for rotary embedding")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"LlamaConfig.num_heads ({self.num_heads}) must be a multiple of "
                             f"num_kv_heads ({self.num_kv_heads})")
        for name in ("rope_theta", "rms_norm_eps"):
            check_float(getattr(self, name), f"LlamaConfig.{name}", 0.0, strict_minimum=True)
        for name in ("tie_word_embeddings", "qkv_bias"):
            check_bool(getattr(self, name), f"LlamaConfig.{name}")

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Dict[str, Any]) -> "LlamaConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown LlamaConfig field(s) {unknown}; known fields: {sorted(known)}")
        return cls(**values)


def check_supported(architecture: str, supported: Iterable[str], source: str) -> None:
    supported = tuple(supported)
    if architecture not in supported:
        raise ValueError(f"{source}: architecture {architecture!r} is not supported; supported: {list(supported)}")
