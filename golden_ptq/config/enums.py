"""Enumerations of the PTQ configuration (names as in Golden Stick)."""
from enum import Enum


class PTQMode(Enum):
    QUANTIZE = "quantize"   # calibrate a float network and produce quantized parameters
    DEPLOY = "deploy"       # build the quantized structure, then load a quantized checkpoint


class BackendTarget(Enum):
    CPU = "cpu"
    ASCEND = "ascend"


class OutliersSuppressionType(Enum):
    NONE = "none"
    SMOOTH = "smooth"       # SmoothQuant: migrate activation outliers into the weights


class PrecisionRecovery(Enum):
    NONE = "none"           # round to nearest
    GPTQ = "gptq"           # GPTQ: column-by-column rounding with error compensation


class QuantGranularity(Enum):
    PER_TENSOR = "per_tensor"
    PER_CHANNEL = "per_channel"
    PER_GROUP = "per_group"
    PER_TOKEN = "per_token"
