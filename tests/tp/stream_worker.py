"""One msrun worker of test_streaming_msrun.py: TP=2 quantization of an HF folder, in memory and streamed.

    msrun --worker_num=2 ... python tests/tp/stream_worker.py WORKDIR

WORKDIR holds ``job.json`` (the float folder, PTQConfig dict) and ``calib.npy``; each rank writes
its in-memory set under ``WORKDIR/memory/rank_{r}`` and its streamed set under
``WORKDIR/streamed/rank_{r}``, and ``peak_rank{r}.json`` (peak RSS of the streamed step).
"""
import json
import os
import resource
import sys

import numpy as np


def main(workdir: str) -> None:
    from golden_ptq import PTQ, PTQConfig
    from golden_ptq.deploy import save_quantized
    from golden_ptq.networks.loaders import load_hf
    from golden_ptq.parallel import barrier, init_from_launcher
    from golden_ptq.streaming import quantize_streamed

    ctx = init_from_launcher()
    if ctx.size != 2:
        raise SystemExit(f"stream_worker: expected 2 ranks, got {ctx.size}")
    with open(os.path.join(workdir, "job.json"), encoding="utf-8") as handle:
        job = json.load(handle)
    calib = list(np.load(os.path.join(workdir, "calib.npy")))
    config = PTQConfig.from_dict(job["ptq"])
    quantize_streamed(job["source"], config, calib, os.path.join(workdir, "streamed"), progress=False)
    with open(os.path.join(workdir, f"peak_rank{ctx.rank}.json"), "w", encoding="utf-8") as handle:
        json.dump({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}, handle)
    network = load_hf(job["source"])   # this rank's slices (the launcher's communication group)
    network.set_train(False)
    ptq = PTQ(config)
    ptq.apply(network, None, calib)
    ptq.convert(network)
    save_quantized(network, ptq, os.path.join(workdir, "memory"))
    barrier(ctx)


if __name__ == "__main__":
    main(sys.argv[1])
