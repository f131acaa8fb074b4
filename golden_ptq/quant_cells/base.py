"""Interface shared by every quantized Cell."""
from __future__ import annotations

from typing import Dict, Tuple

import numpy as np
from mindspore import Parameter, Tensor, nn

from golden_ptq.networks.layers import placeholder_tensor
from golden_ptq.quant_cells.spec import LayerQuantSpec


class QuantCell(nn.Cell):
    """A quantized stand-in for one float layer, serving calibration and deployment.

    Life cycle: built from the float cell (``QUANTIZE``) and run with ``observing = True`` while
    calibration data passes; ``quantize()`` turns the gathered statistics and float weights into
    integer parameters, after which the cell computes with them (the form that is saved and
    deployed). In ``DEPLOY`` mode ``deploy_placeholders()`` creates the same parameters empty, for a
    checkpoint to fill.
    """

    def __init__(self, spec: LayerQuantSpec):
        super().__init__()
        self.spec = spec
        self.observing = False
        self.quantized = False
        self.failure = None   # why this cell must not run (PTQ.apply stopped half way), else None

    def __call__(self, *args, **kwargs):
        if self.failure is not None:
            raise RuntimeError(self.failure)
        return super().__call__(*args, **kwargs)

    def quantize(self) -> None:
        raise NotImplementedError

    def deploy_placeholders(self) -> None:
        raise NotImplementedError

    def param_quant_types(self) -> Dict[str, str]:
        """Local parameter name -> quant type for ``quant_desc.json``."""
        raise NotImplementedError

    def _set_param(self, name: str, value: np.ndarray) -> None:
        """(Re)define parameter ``name`` with ``value``'s dtype and shape."""
        setattr(self, name, Parameter(Tensor(value), name=name, requires_grad=False))

    def _declare_param(self, name: str, shape: Tuple[int, ...], dtype, fill: float = 0.0) -> None:
        """(Re)define parameter ``name`` of ``shape`` / ``dtype`` without allocating its storage (a
        DEPLOY placeholder that a checkpoint replaces; it reads as ``fill`` if it is used before)."""
        setattr(self, name, Parameter(placeholder_tensor(shape, dtype, fill), name=name, requires_grad=False))
