"""MindFormers users: run yamls and checkpoints read and written without mindformers; with it
(optional), MindFormers' own ``LlamaForCausalLM`` built on CPU and quantized in place by PTQ.

Importing this package never imports mindformers; :mod:`golden_ptq.mindformers.helper` and
:mod:`golden_ptq.mindformers.quant_cells` do.
"""
from golden_ptq.mindformers.checkpoint_io import load_mf_checkpoint, read_mf_checkpoint, save_mf_checkpoint
from golden_ptq.mindformers.loader import export_mindformers, load_mindformers
from golden_ptq.mindformers.run_config import MFRunConfig, ffn_width, parse_run_config, read_run_config

__all__ = ["MFRunConfig", "export_mindformers", "ffn_width", "load_mf_checkpoint", "load_mindformers",
           "parse_run_config", "read_mf_checkpoint", "read_run_config", "save_mf_checkpoint"]
