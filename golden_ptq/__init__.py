"""golden_ptq: post-training quantization of Llama-family LLMs on MindSpore, CPU first.

Quantize, then deploy, as in MindSpore Golden Stick::

    ptq = PTQ(PTQConfig(mode=PTQMode.QUANTIZE, act_quant_dtype=ms.int8, ...))
    ptq.apply(network, helper, dataset)
    ptq.convert(network)
"""
from golden_ptq.algorithm import PTQ, CompAlgo, RollbackSearchResult, search_rollback
from golden_ptq.config import (BackendTarget, OutliersSuppressionType, PrecisionRecovery, PTQConfig, PTQMode,
                               QuantGranularity)
from golden_ptq.networks.helper import NetworkHelper

__version__ = "0.1.0"
__all__ = ["BackendTarget", "CompAlgo", "NetworkHelper", "OutliersSuppressionType", "PTQ", "PTQConfig", "PTQMode",
           "PrecisionRecovery", "QuantGranularity", "RollbackSearchResult", "search_rollback"]
