"""Compression algorithms: the ``CompAlgo`` base, ``PTQ``, and the rollback search."""
from golden_ptq.algorithm.comp_algo import CompAlgo
from golden_ptq.algorithm.ptq import PTQ
from golden_ptq.algorithm.rollback import RollbackSearchResult, RollbackTrial, search_rollback

__all__ = ["CompAlgo", "PTQ", "RollbackSearchResult", "RollbackTrial", "search_rollback"]
