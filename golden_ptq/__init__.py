"""golden_ptq: post-training quantization of Llama-family LLMs on MindSpore, CPU first.

Quantize, then deploy, as in MindSpore Golden Stick::

    ptq = PTQ(PTQConfig(mode=PTQMode.QUANTIZE, act_quant_dtype=ms.int8, ...))
    ptq.apply(network, helper, dataset)
    ptq.convert(network)
    save_quantized(network, ptq, "runs/q", tokenizer=helper.create_tokenizer())
    network, ptq = load_quantized("runs/q")                 # the folder alone is enough
    export_model("runs/q", "compressed-tensors", "runs/q-ct")  # or "msmodelslim", "gguf"
"""
from golden_ptq.algorithm import PTQ, CompAlgo, RollbackSearchResult, search_rollback
from golden_ptq.config import (BackendTarget, OutliersSuppressionType, PrecisionRecovery, PTQConfig, PTQMode,
                               QuantGranularity)
from golden_ptq.deploy import load_quantized, save_quantized
from golden_ptq.export import export_model
from golden_ptq.export.import_ct import import_compressed_tensors
from golden_ptq.networks.helper import NetworkHelper

__version__ = "0.1.0"
__all__ = ["BackendTarget", "CompAlgo", "NetworkHelper", "OutliersSuppressionType", "PTQ", "PTQConfig", "PTQMode",
           "PrecisionRecovery", "QuantGranularity", "RollbackSearchResult", "export_model", "import_compressed_tensors",
           "load_quantized", "save_quantized", "search_rollback"]
