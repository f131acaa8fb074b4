"""Pieces the benchmark scripts share."""
import time

from golden_ptq.eval.perplexity import perplexity


def score_perplexity(row: dict, network, tokens, seq_length: int, windows: int, fp32_ppl=None) -> float:
    """Perplexity of ``network`` on ``windows`` windows of ``tokens``, recorded into ``row``."""
    start = time.time()
    ppl = perplexity(network, tokens, seq_length, batch_size=4, max_windows=windows)
    row["eval_s"] = round(time.time() - start, 1)
    row["perplexity"] = round(ppl, 4)
    if fp32_ppl:
        row["vs_fp32"] = round(ppl / fp32_ppl, 4)
    return ppl
