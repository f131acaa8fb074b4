"""msModelSlim's ``QuantConfig`` and ``Calibrator`` over golden_ptq's :class:`~golden_ptq.PTQ`.

``QuantConfig`` is translated into a :class:`~golden_ptq.PTQConfig` (``to_ptq_config``) and
``Calibrator.run()`` is ``PTQ.apply`` + ``PTQ.convert`` on the model: the same layer-wise
calibration, modules and quantized Cells as the Golden Stick style API. After ``run()`` the model
computes with int8 weights (and activations / KV cache as configured); ``save()`` writes what
:func:`golden_ptq.deploy.load_quantized` reads back.
"""
from __future__ import annotations

import os
from typing import Iterable, List, Optional, Sequence

import mindspore as ms
import numpy as np

from golden_ptq.algorithm import PTQ
from golden_ptq.config import PTQConfig, QuantGranularity
from golden_ptq.msmodelslim.calib_data import as_calibration_items
from golden_ptq.msmodelslim.anti_outlier import A_BITS, W_BITS, bound_anti_outlier, check_choice, check_device

SAVE_TYPES = ("safe_tensor", "numpy")


class QuantConfig:
    """msModelSlim quantization settings, checked against what golden_ptq supports.

    ``a_bit`` 8 (W8A8) or 16 (weight-only); ``w_bit`` 8, or 4 with ``a_bit=16`` (W4A16, per group
    with ``group_size``); ``act_method`` 1 min-max, 2 histogram, 3 hybrid; ``is_dynamic`` per-token
    activations; ``disable_names`` exact layer names kept float; ``disable_last_linear`` (default
    True, as in msModelSlim) keeps ``lm_head`` float. ``pr`` must be 1.0 and ``mm_tensor`` False
    (per-channel weights): other values are refused, not ignored.
    """

    def __init__(self, w_bit: int = 8, a_bit: int = 8, disable_names: Optional[Sequence[str]] = None,
                 dev_type: str = "cpu", dev_id: Optional[int] = None, act_method: int = 1, pr: float = 1.0,
                 w_sym: bool = True, mm_tensor: bool = False, is_dynamic: bool = False, group_size: int = 0,
                 disable_last_linear: bool = True):
        check_device("QuantConfig", dev_type, dev_id)
        check_choice("QuantConfig", "a_bit", a_bit, A_BITS)
        check_choice("QuantConfig", "w_bit", w_bit, W_BITS)
        check_choice("QuantConfig", "act_method", act_method, (1, 2, 3))
        check_choice("QuantConfig", "pr", pr, (1.0,))
        check_choice("QuantConfig", "mm_tensor", mm_tensor, (False,))
        if w_bit == 4 and a_bit != 16:
            raise ValueError("QuantConfig: w_bit=4 is weight-only (W4A16); set a_bit=16")
        if group_size and a_bit != 16:
            raise ValueError(f"QuantConfig.group_size={group_size} is for weight-only quantization; set a_bit=16")
        self.w_bit, self.a_bit, self.w_sym = w_bit, a_bit, w_sym
        self.disable_names: List[str] = list(disable_names or [])
        self.dev_type, self.dev_id = dev_type, dev_id
        self.act_method, self.pr, self.mm_tensor = act_method, pr, mm_tensor
        self.is_dynamic, self.group_size, self.disable_last_linear = is_dynamic, group_size, disable_last_linear
        self.use_kvcache_quant = False

    def kv_quant(self) -> "QuantConfig":
        """Also quantize the KV cache to int8 (``use_kvcache_quant=True``); returns self."""
        self.use_kvcache_quant = True
        return self

    def to_ptq_config(self, anti_method: Optional[str] = None, disable_level: str = "L0",
                      smooth_alpha: Optional[float] = None) -> PTQConfig:
        """The equivalent PTQConfig (QUANTIZE mode)."""
        return PTQConfig(
            weight_quant_dtype=ms.int8,
            act_quant_dtype=ms.int8 if self.a_bit == 8 else None,
            kvcache_quant_dtype=ms.int8 if self.use_kvcache_quant else None,
            weight_bits=self.w_bit,
            weight_symmetric=self.w_sym,
            weight_quant_granularity=QuantGranularity.PER_GROUP if self.group_size else QuantGranularity.PER_CHANNEL,
            group_size=self.group_size,
            act_quant_granularity=QuantGranularity.PER_TOKEN if self.is_dynamic else QuantGranularity.PER_TENSOR,
            act_method=self.act_method,
            disable_names=list(self.disable_names),
            opname_blacklist=["lm_head"] if self.disable_last_linear else [],
            anti_method=anti_method,
            disable_level=disable_level,
            algo_args={} if smooth_alpha is None else {"smooth_alpha": float(smooth_alpha)},
        )


class Calibrator:
    """Calibrates ``model`` in place: ``run()`` quantizes it, ``save()`` writes the deployable form."""

    def __init__(self, model, cfg: QuantConfig, calib_data: Optional[Iterable] = None, disable_level: str = "L0",
                 measure_sensitivity: bool = False):
        if not isinstance(cfg, QuantConfig):
            raise TypeError(f"Calibrator(cfg=...) needs a QuantConfig, got {type(cfg).__name__}")
        anti = bound_anti_outlier(model)
        if anti is not None and (anti.a_bit, anti.w_bit) != (cfg.a_bit, cfg.w_bit):
            raise ValueError(f"Calibrator: AntiOutlierConfig(a_bit={anti.a_bit}, w_bit={anti.w_bit}) does not match "
                             f"QuantConfig(a_bit={cfg.a_bit}, w_bit={cfg.w_bit})")
        self.model, self.cfg, self.calib_data = model, cfg, calib_data
        self.config = cfg.to_ptq_config(anti_method=anti.anti_method if anti else None, disable_level=disable_level,
                                        smooth_alpha=anti.alpha if anti else None)
        self.ptq = PTQ(self.config, measure_sensitivity=measure_sensitivity)
        self._ran = False

    @property
    def range_parms(self):
        return self.ptq.range_parms

    @property
    def rolled_back(self) -> List[str]:
        return self.ptq.rolled_back

    def run(self) -> None:
        """Layer-wise calibration, outlier suppression (if bound), rollback, then the int8 network."""
        if self._ran:
            raise RuntimeError("Calibrator.run: already ran; the model is quantized now")
        self.ptq.apply(self.model, None, as_calibration_items(self.calib_data))
        self.ptq.convert(self.model)
        self._ran = True

    def save(self, output_path: str, save_type: Optional[Sequence[str]] = None) -> List[str]:
        """``safe_tensor``: ``model.safetensors``; ``numpy``: ``numpy/<parameter>.npy``. Both with
        ``quant_desc.json`` and the DEPLOY ``ptq_config.yaml``. Returns the written paths."""
        from golden_ptq.deploy import save_quantized

        if not self._ran:
            raise RuntimeError("Calibrator.save: call run() first")
        save_type = ["safe_tensor"] if save_type is None else list(save_type)
        for kind in save_type:
            check_choice("Calibrator.save", "save_type entry", kind, SAVE_TYPES)
        if not save_type:
            raise ValueError(f"Calibrator.save: save_type is empty; allowed entries: {list(SAVE_TYPES)}")
        extra, numpy_names = {}, []
        if "numpy" in save_type:
            for name, param in self.model.parameters_and_names():
                relative = os.path.join("numpy", f"{name}.npy")
                extra[relative] = _npy_writer(param.asnumpy())
                numpy_names.append(relative)
        checkpoint = save_quantized(self.model, self.ptq, output_path, fmt="safetensors", extra_files=extra,
                                    weights="safe_tensor" in save_type)
        folder = os.path.dirname(checkpoint)
        written = [checkpoint] if "safe_tensor" in save_type else []
        written += [os.path.join(folder, name) for name in numpy_names]
        return written


def _npy_writer(array: np.ndarray):
    def write(path: str) -> None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        np.save(path, array)
    return write
