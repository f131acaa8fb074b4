"""User configuration: :class:`PTQConfig` and its enums."""
from golden_ptq.config.enums import (BackendTarget, OutliersSuppressionType, PrecisionRecovery, PTQMode,
                                     QuantGranularity)
from golden_ptq.config.ptq_config import PTQConfig

__all__ = ["BackendTarget", "OutliersSuppressionType", "PTQConfig", "PTQMode", "PrecisionRecovery", "QuantGranularity"]
