"""``CompAlgo``: the base of compression algorithms (Golden Stick's interface)."""
from __future__ import annotations

from mindspore import nn


class CompAlgo:
    """``apply`` prepares (and, for PTQ, calibrates) a network; ``convert`` yields the deployable one."""

    def apply(self, network: nn.Cell, *args, **kwargs) -> nn.Cell:
        raise NotImplementedError

    def convert(self, network: nn.Cell, *args, **kwargs) -> nn.Cell:
        raise NotImplementedError

    def summary(self) -> str:
        """What the algorithm did to each layer."""
        raise NotImplementedError
