"""msModelSlim-compatible API over golden_ptq's PTQ core (CPU only).

    from golden_ptq.msmodelslim import AntiOutlier, AntiOutlierConfig, Calibrator, QuantConfig
    AntiOutlier(model, calib_data=data, cfg=AntiOutlierConfig(anti_method="m2", dev_type="cpu")).process()
    calibrator = Calibrator(model, QuantConfig(a_bit=8, w_bit=8, act_method=3).kv_quant(), calib_data=data,
                            disable_level="L0")
    calibrator.run()
    calibrator.save("runs/w8a8", save_type=["safe_tensor", "numpy"])
"""
from golden_ptq.msmodelslim.anti_outlier import AntiOutlier, AntiOutlierConfig
from golden_ptq.msmodelslim.llm_ptq_tools import Calibrator, QuantConfig

__all__ = ["AntiOutlier", "AntiOutlierConfig", "Calibrator", "QuantConfig"]
