"""Compression algorithms: the ``CompAlgo`` base and ``PTQ``."""
from golden_ptq.algorithm.comp_algo import CompAlgo
from golden_ptq.algorithm.ptq import PTQ

__all__ = ["CompAlgo", "PTQ"]
