"""msModelSlim's ``AntiOutlierConfig`` / ``AntiOutlier`` over golden_ptq's outlier-suppression modules.

``AntiOutlier(model, calib_data, cfg).process()`` validates the model, data and method and binds
the method to the model; the folds themselves are computed by the next
:class:`~golden_ptq.msmodelslim.llm_ptq_tools.Calibrator` run on that model, layer by layer, with
the quantizers they serve (m2/m4/m6 score candidates with the layer's real activation and weight
quantizers; m3 with its 4/8-bit weight quantizer). The float network is not changed by
``process()`` itself; what happens where is documented in ``golden_ptq/algorithm/modules``.
"""
from __future__ import annotations

from typing import Optional

from golden_ptq.algorithm.calibration_data import token_rows
from golden_ptq.msmodelslim.calib_data import as_calibration_items
from golden_ptq.config.method_names import find_method, normalize_anti_method

DEV_TYPES = ("cpu",)
A_BITS = (8, 16)
W_BITS = (4, 8)
_BOUND = "_golden_ptq_anti_outlier"


def check_choice(owner: str, name: str, value, allowed) -> None:
    """Raise a ValueError naming ``owner.name``, the value and the allowed ones."""
    if value not in allowed:
        raise ValueError(f"{owner}.{name}: {value!r} is not supported; allowed: {list(allowed)}")


def check_device(owner: str, dev_type: str, dev_id: Optional[int]) -> None:
    check_choice(owner, "dev_type", dev_type, DEV_TYPES)
    if dev_id is not None:
        raise ValueError(f"{owner}.dev_id: {dev_id!r} selects an NPU; golden_ptq runs on CPU (dev_type='cpu'): "
                         f"leave dev_id=None")


class AntiOutlierConfig:
    """Outlier suppression settings: ``anti_method`` m1-m6 (m5 raises NotImplementedError)."""

    def __init__(self, w_bit: int = 8, a_bit: int = 8, anti_method: str = "m2", dev_type: str = "cpu",
                 dev_id: Optional[int] = None, w_sym: bool = True, alpha: Optional[float] = None):
        check_device("AntiOutlierConfig", dev_type, dev_id)
        check_choice("AntiOutlierConfig", "a_bit", a_bit, A_BITS)
        check_choice("AntiOutlierConfig", "w_bit", w_bit, W_BITS)
        self.anti_method = normalize_anti_method(anti_method, owner="AntiOutlierConfig.anti_method")
        if self.anti_method == "m3" and a_bit != 16:
            raise ValueError("AntiOutlierConfig: anti_method 'm3' (AWQ) is for weight-only quantization; set a_bit=16")
        if self.anti_method != "m3" and a_bit != 8:
            raise ValueError(f"AntiOutlierConfig: anti_method {self.anti_method!r} "
                             f"({find_method(self.anti_method).name}) suppresses activation outliers; set a_bit=8 "
                             f"(or anti_method='m3' for a_bit=16)")
        if alpha is not None and not 0.0 <= float(alpha) <= 1.0:
            raise ValueError(f"AntiOutlierConfig.alpha must be in [0, 1], got {alpha}")
        self.w_bit, self.a_bit, self.w_sym, self.alpha = w_bit, a_bit, w_sym, alpha
        self.dev_type, self.dev_id = dev_type, dev_id

    def __repr__(self) -> str:
        return (f"AntiOutlierConfig(anti_method={self.anti_method!r}, a_bit={self.a_bit}, w_bit={self.w_bit}, "
                f"w_sym={self.w_sym}, alpha={self.alpha})")


class AntiOutlier:
    """Binds an outlier-suppression method to ``model`` for its Calibrator run (see module doc)."""

    def __init__(self, model, calib_data=None, cfg: Optional[AntiOutlierConfig] = None, norm_class_name=None):
        if not isinstance(cfg, AntiOutlierConfig):
            raise TypeError(f"AntiOutlier(cfg=...) needs an AntiOutlierConfig, got {type(cfg).__name__}")
        if norm_class_name is not None:
            raise ValueError("AntiOutlier.norm_class_name: golden_ptq finds norms from the declared smoothing "
                             "mappings (golden_ptq/networks/structure.py); leave it None")
        if not hasattr(getattr(model, "model", None), "layers"):
            raise TypeError(f"AntiOutlier: model must be a golden_ptq Llama network (model.layers), got "
                            f"{type(model).__name__}")
        self.model, self.calib_data, self.cfg = model, calib_data, cfg

    def process(self) -> None:
        token_rows(as_calibration_items(self.calib_data))  # the data must be usable: fail here, not later
        setattr(self.model, _BOUND, self.cfg)


def bound_anti_outlier(model) -> Optional[AntiOutlierConfig]:
    """The AntiOutlierConfig that ``AntiOutlier(model, ...).process()`` bound, if any."""
    return getattr(model, _BOUND, None)
